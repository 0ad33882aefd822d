//! Kernels and their compute pipelines: a [`Shader`] (WGSL from `shaders/`), a [`Kernel`]
//! (entry point and override constants), and the cache of pipelines built from them, with the
//! binding layout every kernel follows.

use std::sync::Arc;

use crate::error::{Error, Result};

use super::{lock, Gpu};

/// A WGSL source file from `shaders/`, embedded in the binary, with the shared fragments it
/// includes (`//#include <name>` lines, replaced by `shaders/common/<name>.wgsl`).
#[derive(Debug)]
pub struct Shader {
    /// File stem, used as the cache key and in error messages.
    pub name: &'static str,
    /// The file as written.
    pub source: &'static str,
    /// Every fragment a shader may include: (name, WGSL).
    pub fragments: &'static [(&'static str, &'static str)],
    /// The source with its includes spliced in, composed on first use.
    pub composed: std::sync::OnceLock<std::result::Result<String, String>>,
    /// Every storage index of every entry point is proven in bounds (clamped or guarded by
    /// sizes the host validates, and exercised at edge shapes by the tests), so the module may
    /// be built without wgpu's per-access bounds checks unless `runtime_checks` is set.
    pub trusted: bool,
}

impl Shader {
    /// The WGSL naga and the driver see: `source` with each `//#include <name>` line replaced
    /// by that fragment (each fragment at most once); an unknown name is an error.
    pub fn wgsl(&self) -> Result<&str> {
        self.composed
            .get_or_init(|| compose(self.source, self.fragments))
            .as_deref()
            .map_err(|e| Error::Gpu(format!("shaders/{}.wgsl: {e}", self.name)))
    }
}

/// Splices fragments into `source` at its `//#include <name>` lines.
pub fn compose(source: &str, fragments: &[(&str, &str)]) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut done = Vec::new();
    for line in source.lines() {
        match line.trim().strip_prefix("//#include ") {
            Some(name) => {
                let name = name.trim();
                let (_, text) = fragments
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or_else(|| format!("includes unknown fragment {name:?}"))?;
                if !done.contains(&name) {
                    out.push_str(text);
                    done.push(name);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// A kernel's uniform parameter block as a Rust value: a `#[repr(C)]` plain struct whose
/// fields mirror the shader's `Params` by name, order and offset (declared with
/// [`kernel_params!`](crate::kernel_params); `tests/shaders.rs` checks each against naga's
/// layout of the shader, so reordering one side fails a test instead of a kernel).
pub trait KernelParams: bytemuck::Pod {
    /// Field names in declaration order, with their byte offsets.
    const FIELDS: &'static [(&'static str, usize)];

    /// The block as the 32-bit words `Gpu::dispatch` uploads.
    fn as_words(&self) -> &[u32] {
        bytemuck::cast_slice(std::slice::from_ref(self))
    }
}

/// Declares a kernel parameter struct (all fields 4-byte scalars) and its [`KernelParams`]
/// field table: `kernel_params! { pub struct ConvParams { n: u32, ci: u32, ... } }`.
#[macro_export]
macro_rules! kernel_params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $(pub $field: $ty),*
        }
        impl $crate::gpu::KernelParams for $name {
            const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field))),*];
        }
    };
}

/// One entry point of a shader plus its pipeline-overridable constants (the specialisation).
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'a> {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub constants: &'a [(&'static str, f64)],
}

impl<'a> Kernel<'a> {
    pub const fn new(shader: &'static Shader, entry: &'static str) -> Kernel<'static> {
        Kernel {
            shader,
            entry,
            constants: &[],
        }
    }
    pub fn with(self, constants: &'a [(&'static str, f64)]) -> Kernel<'a> {
        Kernel { constants, ..self }
    }
}

/// Binding layout convention of every kernel: binding 0 is a uniform parameter block,
/// bindings 1..=n_out are read-write storage outputs, then come read-only storage inputs.
#[derive(Hash, PartialEq, Eq, Clone, Debug)]
pub(super) struct PipelineKey {
    pub(super) shader: &'static str,
    pub(super) entry: &'static str,
    pub(super) constants: Vec<(&'static str, u64)>,
    pub(super) n_out: usize,
    pub(super) n_in: usize,
}

pub(super) struct Pipeline {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
}

impl Gpu {
    pub(super) fn pipeline(
        &self,
        kernel: &Kernel,
        n_out: usize,
        n_in: usize,
    ) -> Result<Arc<Pipeline>> {
        let key = PipelineKey {
            shader: kernel.shader.name,
            entry: kernel.entry,
            constants: kernel
                .constants
                .iter()
                .map(|(k, v)| (*k, v.to_bits()))
                .collect(),
            n_out,
            n_in,
        };
        if let Some(p) = lock(&self.inner.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let started = std::time::Instant::now();
        let wgsl = kernel.shader.wgsl()?;
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = lock(&self.inner.modules);
            modules
                .entry(kernel.shader.name)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.shader.name),
                        source: wgpu::ShaderSource::Wgsl(wgsl.into()),
                    };
                    if kernel.shader.trusted && !self.inner.runtime_checks {
                        // SAFETY: a trusted shader clamps or guards every storage index by
                        // sizes the host has validated against the bound buffers (see
                        // `Shader::trusted`); its tests run with the checks on and off.
                        unsafe {
                            device.create_shader_module_trusted(
                                desc,
                                wgpu::ShaderRuntimeChecks::unchecked(),
                            )
                        }
                    } else {
                        device.create_shader_module(desc)
                    }
                })
                .clone()
        };
        let buffer_entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![buffer_entry(0, wgpu::BufferBindingType::Uniform)];
        for i in 0..n_out + n_in {
            let read_only = i >= n_out;
            entries.push(buffer_entry(
                1 + i as u32,
                wgpu::BufferBindingType::Storage { read_only },
            ));
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(kernel.entry),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: kernel.constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building kernel {}::{} {:?}: {e}",
                kernel.shader.name, kernel.entry, kernel.constants
            )));
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        lock(&self.inner.pipelines).insert(key, p.clone());
        let mut compiled = lock(&self.inner.compiled);
        compiled.0 += 1;
        compiled.1 += started.elapsed();
        Ok(p)
    }

    /// Pipelines built by this context and the host time their creation took (shader
    /// compilation: the driver compiles each pipeline when it is created).
    pub fn compile_stats(&self) -> (usize, std::time::Duration) {
        *lock(&self.inner.compiled)
    }
}
