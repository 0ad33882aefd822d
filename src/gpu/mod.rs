//! Layer 1: the GPU context. One [`Gpu`] owns the wgpu device and queue, the pipeline cache,
//! the buffer pool and the command batch: dispatches are recorded into one open compute pass
//! and submitted together, and the host waits only when it asks for a value.

pub mod adapter;
pub mod autotune;
pub mod pool;
pub mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
pub use adapter::{AdapterSummary, Request};
use autotune::Autotuner;
pub use pool::PoolStats;
pub use profile::{KernelTime, ProfileReport};

/// A WGSL source file from `shaders/`, embedded in the binary.
#[derive(Debug)]
pub struct Shader {
    /// File stem, used as the cache key and in error messages.
    pub name: &'static str,
    pub source: &'static str,
    /// Every storage index of every entry point is proven in bounds (clamped or guarded by
    /// sizes the host validates, and exercised at edge shapes by the tests), so the module may
    /// be built without wgpu's per-access bounds checks unless `runtime_checks` is set.
    pub trusted: bool,
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

/// Options for opening a GPU context.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Adapter name substring or list index (`--device`); `None` uses `WGPU_ADAPTER_NAME` or
    /// the best adapter.
    pub device: Option<String>,
    /// Choose kernel variants by measurement (cached on disk); `false` uses the defaults.
    pub autotune: bool,
    /// Keep wgpu's bounds checks on storage accesses in every kernel, trusted ones included
    /// (`APGA_RUNTIME_CHECKS=1`). Off by default: trusted kernels run without them.
    pub runtime_checks: bool,
    /// Kernel variants forced per autotune key prefix, e.g. `("conv-fwd/k3", "strip")`
    /// (`APGA_KERNELS=conv-fwd/k3=strip,matmul=tiled`).
    pub kernel_overrides: Vec<(String, String)>,
    /// Time every dispatch on the GPU and keep per-kernel totals (`APGA_PROFILE=1`); see
    /// [`profile`]. Slows a run down: it waits for the GPU at every submit.
    pub profile: bool,
    /// Largest scratch buffer (bytes) a kernel path may materialise, e.g. the im2col buffer of
    /// the GEMM convolutions; bigger batches are processed in several pieces
    /// (`APGA_WORKSPACE_MB`, default 64 MiB), as cuDNN's workspace limit.
    pub workspace_bytes: usize,
}

impl Default for GpuOptions {
    /// Plain defaults (best adapter, autotuning on, no checks, no profiling, 64 MiB
    /// workspace); nothing is read from the environment (see [`GpuOptions::from_env`]).
    fn default() -> Self {
        GpuOptions {
            device: None,
            autotune: true,
            runtime_checks: false,
            kernel_overrides: Vec::new(),
            profile: false,
            workspace_bytes: 64 << 20,
        }
    }
}

impl GpuOptions {
    /// The defaults with what the environment sets: `APGA_NO_AUTOTUNE`, `APGA_RUNTIME_CHECKS`,
    /// `APGA_KERNELS`, `APGA_PROFILE`, `APGA_WORKSPACE_MB` (read once, by the command line
    /// or a benchmark; library code takes the options as a value). Malformed values are
    /// errors naming the variable.
    pub fn from_env() -> Result<GpuOptions> {
        let mut o = GpuOptions {
            autotune: !env_flag("APGA_NO_AUTOTUNE"),
            runtime_checks: env_flag("APGA_RUNTIME_CHECKS"),
            profile: env_flag("APGA_PROFILE"),
            ..Default::default()
        };
        if let Ok(v) = std::env::var("APGA_KERNELS") {
            for kv in v.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
                let Some((k, name)) = kv.split_once('=') else {
                    return Err(Error::usage(
                        "APGA_KERNELS",
                        format!("{kv:?} is not KEY_PREFIX=VARIANT (e.g. conv-fwd=strip)"),
                    ));
                };
                o.kernel_overrides
                    .push((k.trim().to_string(), name.trim().to_string()));
            }
        }
        if let Ok(v) = std::env::var("APGA_WORKSPACE_MB") {
            match v.trim().parse::<usize>() {
                Ok(mb) if (1..=1 << 20).contains(&mb) => o.workspace_bytes = mb << 20,
                _ => {
                    return Err(Error::usage(
                        "APGA_WORKSPACE_MB",
                        format!("{v:?} is not a size in MiB between 1 and 1048576"),
                    ))
                }
            }
        }
        Ok(o)
    }
}

/// Whether an environment variable is set to something other than empty or `0`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Binding layout convention of every kernel: binding 0 is a uniform parameter block,
/// bindings 1..=n_out are read-write storage outputs, then come read-only storage inputs.
#[derive(Hash, PartialEq, Eq, Clone, Debug)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
    n_out: usize,
    n_in: usize,
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Size of the per-submit parameter arena; a batch is flushed when it fills.
const PARAM_ARENA_BYTES: u64 = 1 << 20;
/// Dispatches recorded before a batch is submitted even if nobody waits for it.
const MAX_DISPATCHES_PER_SUBMIT: u32 = 1024;

#[derive(Default)]
struct Batch {
    // Field order matters: the pass borrows the encoder, so it must be dropped first.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    dispatches: u32,
    submits: u64,
}

pub(crate) struct GpuInner {
    summary: AdapterSummary,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    device: wgpu::Device,
    queue: wgpu::Queue,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    pool: Mutex<pool::BufferPool>,
    batch: Mutex<Batch>,
    params_buffer: wgpu::Buffer,
    param_slot: usize,
    errors: Arc<Mutex<Vec<String>>>,
    runtime_checks: bool,
    /// A read-only buffer of zeros shared by kernels that need "no bias" (grown on demand).
    zero_buffer: Mutex<Option<Arc<Storage>>>,
    pub(crate) autotuner: Mutex<Autotuner>,
    /// Per-kernel timing when profiling is on; locked after `batch`, never before it.
    profiler: Option<Mutex<profile::Profiler>>,
    /// Pipelines built so far and the host time spent building them (shader compilation).
    compiled: Mutex<(usize, std::time::Duration)>,
    workspace_bytes: usize,
}

/// Handle to a GPU context; cheap to clone, shared by every tensor made on it.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gpu({} / {:?})",
            self.inner.info.name, self.inner.info.backend
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held leaves consistent data here (plain maps and counters).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gpu {
    /// Opens the adapter chosen by `options` with the adapter's own limits.
    pub fn new(options: GpuOptions) -> Result<Gpu> {
        let request = Request::resolve(options.device.as_deref());
        let (adapter, summary) = adapter::select(&request)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamps for the profiler; subgroup operations for the kernels that have a
        // subgroup variant (chosen by the autotuner, never required).
        let features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("apga-gpu"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            detail: e.to_string(),
        })?;
        // wgpu's default handler panics; errors are collected and returned at the next sync.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            lock(&sink).push(e.to_string());
        }));
        let param_slot = (limits.min_uniform_buffer_offset_alignment as usize).max(256);
        let params_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("apga params arena"),
            size: PARAM_ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let profiler = options.profile.then(|| {
            Mutex::new(profile::Profiler::new(
                &device,
                &queue,
                features.contains(wgpu::Features::TIMESTAMP_QUERY),
            ))
        });
        let mut autotuner = Autotuner::open(&info, options.autotune);
        autotuner.set_overrides(options.kernel_overrides.clone());
        log::info!(
            "using adapter {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                summary,
                info,
                limits,
                features,
                device,
                queue,
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                pool: Mutex::default(),
                batch: Mutex::default(),
                params_buffer,
                param_slot,
                errors,
                runtime_checks: options.runtime_checks,
                zero_buffer: Mutex::default(),
                autotuner: Mutex::new(autotuner),
                profiler,
                compiled: Mutex::default(),
                workspace_bytes: options.workspace_bytes.max(1),
            }),
        })
    }

    /// One context per process, opened with default options on first use. Tests and the CLI
    /// share it so that shaders are compiled once.
    pub fn shared() -> Result<Gpu> {
        static SHARED: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Gpu::new(GpuOptions::default()).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| Error::Gpu(format!("could not open the shared GPU context: {e}")))
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }
    pub fn summary(&self) -> &AdapterSummary {
        &self.inner.summary
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }
    /// Whether the device has subgroup operations (kernels with a subgroup variant offer it
    /// to the autotuner only then).
    pub fn has_subgroups(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SUBGROUP)
    }
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    /// Whether trusted kernels keep wgpu's bounds checks in this context.
    pub fn runtime_checks(&self) -> bool {
        self.inner.runtime_checks
    }
    pub(crate) fn inner(&self) -> &GpuInner {
        &self.inner
    }

    /// Largest storage binding, in f32 elements.
    pub fn max_binding_elems(&self) -> usize {
        (self.inner.limits.max_storage_buffer_binding_size / 4) as usize
    }

    /// See [`GpuOptions::workspace_bytes`].
    pub fn workspace_bytes(&self) -> usize {
        self.inner.workspace_bytes
    }

    /// Memory counters of the buffer pool.
    pub fn memory(&self) -> PoolStats {
        lock(&self.inner.pool).stats()
    }

    /// Starts a new peak measurement from the current usage.
    pub fn reset_peak_memory(&self) {
        lock(&self.inner.pool).reset_peak();
    }

    /// Frees cached buffers no tensor uses.
    pub fn release_cached_memory(&self) {
        lock(&self.inner.pool).release_cached();
    }

    /// Pipelines built by this context and the host time their creation took (shader
    /// compilation: the driver compiles each pipeline when it is created).
    pub fn compile_stats(&self) -> (usize, std::time::Duration) {
        *lock(&self.inner.compiled)
    }

    /// Number of queue submissions so far (tests check that work is batched).
    pub fn submit_count(&self) -> u64 {
        lock(&self.inner.batch).submits
    }

    /// A pooled buffer with room for `len` f32 values; its content is undefined.
    pub fn alloc(&self, len: usize, shape: &[usize]) -> Result<Storage> {
        let bytes = (len.max(1) * 4) as u64;
        let max = self.inner.limits.max_buffer_size;
        if pool::size_class(bytes) > max {
            return Err(Error::BufferTooLarge {
                bytes,
                max,
                shape: shape.to_vec(),
            });
        }
        let buffer = lock(&self.inner.pool).take(&self.inner.device, bytes);
        Ok(Storage {
            buffer: Some(buffer),
            len,
            gpu: self.clone(),
        })
    }

    /// A buffer holding a copy of `data`. The copy is recorded in the current batch, so it is
    /// ordered after every dispatch recorded before it.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Storage> {
        let storage = self.alloc(data.len(), shape)?;
        if !data.is_empty() {
            let staging = self
                .inner
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("apga upload"),
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::COPY_SRC,
                });
            let mut batch = lock(&self.inner.batch);
            let enc = self.encoder(&mut batch);
            enc.copy_buffer_to_buffer(&staging, 0, storage.buffer(), 0, (data.len() * 4) as u64);
        }
        Ok(storage)
    }

    /// A zero-filled buffer of `len` values.
    pub fn zeros(&self, len: usize, shape: &[usize]) -> Result<Storage> {
        let storage = self.alloc(len, shape)?;
        let mut batch = lock(&self.inner.batch);
        let enc = self.encoder(&mut batch);
        enc.clear_buffer(storage.buffer(), 0, None);
        Ok(storage)
    }

    /// A shared buffer of at least `len` zeros that kernels only read (a missing bias). It is
    /// cleared once, not per call, so recording it does not break the open compute pass.
    pub fn shared_zeros(&self, len: usize) -> Result<Arc<Storage>> {
        let mut z = lock(&self.inner.zero_buffer);
        if let Some(b) = z.as_ref().filter(|b| b.len() >= len) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.zeros(len.max(1024), &[len])?);
        *z = Some(b.clone());
        Ok(b)
    }

    /// Copies `len` values from `src` to `dst` (both starting at element offsets).
    pub fn copy(&self, src: &Storage, src_off: usize, dst: &Storage, dst_off: usize, len: usize) {
        if len == 0 {
            return;
        }
        let mut batch = lock(&self.inner.batch);
        let enc = self.encoder(&mut batch);
        enc.copy_buffer_to_buffer(
            src.buffer(),
            (src_off * 4) as u64,
            dst.buffer(),
            (dst_off * 4) as u64,
            (len * 4) as u64,
        );
    }

    /// The batch's encoder with no compute pass open (copies and clears need that).
    fn encoder<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::CommandEncoder {
        batch.pass = None;
        batch.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("apga batch"),
                })
        })
    }

    /// Reads `len` values of `storage` back to the host; submits and waits for all work
    /// recorded so far.
    pub fn read(&self, storage: &Storage, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * 4) as u64;
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("apga read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut batch = lock(&self.inner.batch);
            let enc = self.encoder(&mut batch);
            enc.copy_buffer_to_buffer(storage.buffer(), 0, &staging, 0, bytes);
            self.submit_locked(&mut batch);
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poll_wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping a read-back buffer: {e}"))),
            Err(_) => return Err(Error::Gpu("read-back callback never ran".into())),
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("read-back view: {e:?}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.take_error()?;
        Ok(out)
    }

    fn poll_wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))
    }

    fn take_error(&self) -> Result<()> {
        let mut errors = lock(&self.inner.errors);
        if errors.is_empty() {
            Ok(())
        } else {
            let all = errors.drain(..).collect::<Vec<_>>().join("; ");
            let hint = if all.to_lowercase().contains("memory") {
                " (the GPU ran out of memory: try a smaller --batch-size or --image-size)"
            } else {
                ""
            };
            Err(Error::Gpu(format!("{all}{hint}")))
        }
    }

    /// Submits everything recorded so far without waiting.
    pub fn flush(&self) {
        let mut batch = lock(&self.inner.batch);
        self.submit_locked(&mut batch);
    }

    /// Submits and waits until the GPU has finished; reports any error wgpu raised meanwhile.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.poll_wait()?;
        self.take_error()
    }

    fn submit_locked(&self, batch: &mut Batch) {
        batch.pass = None;
        let mut profiled = 0;
        if let Some(mut encoder) = batch.encoder.take() {
            if !batch.params.is_empty() {
                self.inner
                    .queue
                    .write_buffer(&self.inner.params_buffer, 0, &batch.params);
            }
            if let Some(prof) = &self.inner.profiler {
                let prof = lock(prof);
                if let Some(q) = &prof.queries {
                    profiled = prof.pending.len() as u32;
                    if profiled > 0 {
                        encoder.resolve_query_set(&q.set, 0..2 * profiled, &q.resolve, 0);
                        encoder.copy_buffer_to_buffer(
                            &q.resolve,
                            0,
                            &q.readback,
                            0,
                            profiled as u64 * 16,
                        );
                    }
                }
            }
            self.inner.queue.submit([encoder.finish()]);
            batch.submits += 1;
        }
        batch.params.clear();
        batch.dispatches = 0;
        if profiled > 0 {
            self.read_timestamps(profiled);
        }
    }

    /// Waits for the submitted batch and adds its dispatches' timestamp pairs to the profile.
    fn read_timestamps(&self, dispatches: u32) {
        let Some(prof) = &self.inner.profiler else {
            return;
        };
        let mut prof = lock(prof);
        let ticks: Option<Vec<u64>> = prof.queries.as_ref().and_then(|q| {
            let slice = q.readback.slice(0..dispatches as u64 * 16);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.poll_wait().ok()?;
            rx.recv().ok()?.ok()?;
            let ticks = slice
                .get_mapped_range()
                .ok()
                .map(|v| bytemuck::cast_slice::<u8, u64>(&v).to_vec());
            q.readback.unmap();
            ticks
        });
        match ticks {
            Some(t) => prof.add_ticks(&t),
            None => {
                log::warn!("profile: could not read the timestamps of {dispatches} dispatches");
                prof.pending.clear();
            }
        }
    }

    /// Whether per-kernel profiling is on (`GpuOptions::profile`).
    pub fn profiling(&self) -> bool {
        self.inner.profiler.is_some()
    }

    /// Per-kernel GPU time since the last [`Gpu::profile_reset`], after finishing all recorded
    /// work; `None` when profiling is off.
    pub fn profile_report(&self) -> Result<Option<ProfileReport>> {
        let Some(prof) = &self.inner.profiler else {
            return Ok(None);
        };
        self.sync()?;
        Ok(Some(lock(prof).report()))
    }

    /// Finishes recorded work and clears the per-kernel totals.
    pub fn profile_reset(&self) -> Result<()> {
        self.sync()?;
        if let Some(prof) = &self.inner.profiler {
            lock(prof).reset();
        }
        Ok(())
    }

    fn pipeline(&self, kernel: &Kernel, n_out: usize, n_in: usize) -> Result<Arc<Pipeline>> {
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
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = lock(&self.inner.modules);
            modules
                .entry(kernel.shader.name)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.shader.name),
                        source: wgpu::ShaderSource::Wgsl(kernel.shader.source.into()),
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

    /// Records one dispatch of `kernel` into the current batch.
    ///
    /// `params` fills the uniform block at binding 0 (at most 256 bytes); `outputs` bind as
    /// read-write storage from binding 1, then `inputs` as read-only storage.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        outputs: &[&Storage],
        inputs: &[&Storage],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(params);
        if bytes.len() > self.inner.param_slot {
            return Err(Error::Gpu(format!(
                "kernel {} has {} bytes of parameters (max {})",
                kernel.entry,
                bytes.len(),
                self.inner.param_slot
            )));
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let max_binding = self.inner.limits.max_storage_buffer_binding_size;
        if let Some(big) = outputs
            .iter()
            .chain(inputs)
            .map(|st| st.len() as u64 * 4)
            .find(|&b| b > max_binding)
        {
            return Err(Error::Gpu(format!(
                "kernel {}::{} would bind a buffer of {:.1} MiB, but this adapter binds at most \
                 {:.1} MiB per buffer (its max_storage_buffer_binding_size); use a smaller \
                 --batch-size or --image-size",
                kernel.shader.name,
                kernel.entry,
                big as f64 / (1 << 20) as f64,
                max_binding as f64 / (1 << 20) as f64
            )));
        }
        let pipeline = self.pipeline(kernel, outputs.len(), inputs.len())?;
        let mut batch = lock(&self.inner.batch);
        if batch.params.len() + self.inner.param_slot > PARAM_ARENA_BYTES as usize
            || batch.dispatches >= MAX_DISPATCHES_PER_SUBMIT
        {
            self.submit_locked(&mut batch);
        }
        let offset = batch.params.len();
        batch.params.extend_from_slice(bytes);
        batch.params.resize(offset + self.inner.param_slot, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.inner.params_buffer,
                offset: offset as u64,
                size: wgpu::BufferSize::new(self.inner.param_slot as u64),
            }),
        }];
        for (i, s) in outputs.iter().chain(inputs.iter()).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: s.buffer(),
                    offset: 0,
                    // Bind only the values, not the size class's slack, so that a buffer whose
                    // class rounds past the binding limit still binds.
                    size: wgpu::BufferSize::new((s.len().max(1) * 4) as u64),
                }),
            });
        }
        let bind_group = self
            .inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.layout,
                entries: &entries,
            });
        if let Some(prof) = &self.inner.profiler {
            let name = profile::label(kernel.shader.name, kernel.entry, kernel.constants);
            return self.dispatch_profiled(
                prof,
                &mut batch,
                name,
                &pipeline,
                &bind_group,
                workgroups,
            );
        }
        if batch.pass.is_none() {
            let encoder = self.encoder(&mut batch);
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("apga kernels"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            batch.pass = Some(pass);
        }
        if let Some(pass) = batch.pass.as_mut() {
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        batch.dispatches += 1;
        Ok(())
    }

    /// A dispatch in its own compute pass, timed by timestamps written at the pass's beginning
    /// and end, or (no timestamp queries) submitted alone and timed by the host clock.
    fn dispatch_profiled(
        &self,
        prof: &Mutex<profile::Profiler>,
        batch: &mut Batch,
        name: String,
        pipeline: &Pipeline,
        bind_group: &wgpu::BindGroup,
        workgroups: [u32; 3],
    ) -> Result<()> {
        let timestamps = lock(prof).queries.is_some();
        if !timestamps {
            // Finish everything before, so the clock sees this dispatch alone.
            self.submit_locked(batch);
            self.poll_wait()?;
        }
        let index = lock(prof).pending.len() as u32;
        let start = std::time::Instant::now();
        {
            let guard = lock(prof);
            let writes = guard
                .queries
                .as_ref()
                .map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: &q.set,
                    beginning_of_pass_write_index: Some(2 * index),
                    end_of_pass_write_index: Some(2 * index + 1),
                });
            let encoder = self.encoder(batch);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("apga profiled kernel"),
                timestamp_writes: writes,
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        batch.dispatches += 1;
        if timestamps {
            lock(prof).pending.push(name);
        } else {
            self.submit_locked(batch);
            self.poll_wait()?;
            lock(prof).add(&name, start.elapsed());
        }
        Ok(())
    }

    /// Splits `n` workgroups over x and y so that neither exceeds the adapter's per-dimension
    /// limit. Kernels recover the linear id as `wid.x + wid.y * num_workgroups.x`.
    pub fn grid(&self, n: usize) -> [u32; 3] {
        let max = self
            .inner
            .limits
            .max_compute_workgroups_per_dimension
            .max(1) as usize;
        if n <= max {
            [n as u32, 1, 1]
        } else {
            let y = n.div_ceil(max);
            let x = n.div_ceil(y);
            [x as u32, y as u32, 1]
        }
    }
}

/// A pooled GPU buffer of f32 values; returns to the pool when dropped.
pub struct Storage {
    buffer: Option<wgpu::Buffer>,
    len: usize,
    gpu: Gpu,
}

impl Storage {
    pub fn buffer(&self) -> &wgpu::Buffer {
        // Invariant: `buffer` is only `None` inside `drop`.
        self.buffer
            .as_ref()
            .expect("storage buffer present until drop")
    }
    /// Number of f32 values.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            lock(&self.gpu.inner.pool).give(b);
        }
    }
}
