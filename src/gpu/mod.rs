//! Layer 1: the GPU context. One [`Gpu`] owns the wgpu device and queue, the pipeline cache,
//! the buffer pool and the command batch: dispatches are recorded into one open compute pass
//! and submitted together, and the host waits only when it asks for a value.
//!
//! Where things live: this file opens the context and answers what it is; `options.rs` how
//! it is opened; `adapter.rs` which adapter; `pipeline.rs` shaders, kernels and the pipeline
//! cache; `dispatch.rs` recording, submitting and errors; `memory.rs` storage, uploads and
//! read-back; `pool.rs` the buffer pool; `profile.rs` per-kernel timing; `autotune.rs` the
//! measured choice among kernel variants.

pub mod adapter;
pub mod autotune;
mod derived;
mod dispatch;
mod memory;
mod options;
pub mod pipeline;
pub mod pool;
pub mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
pub use adapter::{AdapterSummary, Request};
use autotune::Autotuner;
use dispatch::{Batch, PARAM_ARENA_BYTES};
pub use memory::Storage;
pub use options::GpuOptions;
pub use pipeline::{Kernel, KernelParams, Shader};
use pipeline::{Pipeline, PipelineKey};
pub use pool::PoolStats;
pub use profile::{KernelTime, ProfileReport};

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
    zero_buffer: Mutex<Option<(wgpu::Buffer, usize)>>,
    pub(crate) autotuner: Mutex<Autotuner>,
    /// Per-kernel timing when profiling is on; locked after `batch`, never before it.
    profiler: Option<Mutex<profile::Profiler>>,
    /// Pipelines built so far and the host time spent building them (shader compilation).
    compiled: Mutex<(usize, std::time::Duration)>,
    workspace_bytes: usize,
    /// Bytes of cached derived values (`derived.rs`).
    derived_bytes: std::sync::atomic::AtomicUsize,
}

/// Handle to a GPU context; cheap to clone, shared by every tensor made on it.
#[derive(Clone)]
pub struct Gpu {
    // Dropped by hand: the last handle tears the context down under `adapter::lifecycle`.
    inner: std::mem::ManuallyDrop<Arc<GpuInner>>,
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken exactly once, here, and never used afterwards.
        let inner = unsafe { std::mem::ManuallyDrop::take(&mut self.inner) };
        // Exactly one of several handles dropped at once gets the context back.
        if let Some(last) = Arc::into_inner(inner) {
            let _lifecycle = adapter::lifecycle();
            drop(last);
        }
    }
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
        let lifecycle = adapter::lifecycle();
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
        drop(lifecycle);
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
            inner: std::mem::ManuallyDrop::new(Arc::new(GpuInner {
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
                derived_bytes: Default::default(),
            })),
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

    /// Live handles to this context (each tensor and storage holds one). 1 means this is the
    /// last: dropping it closes the context and frees its device and memory.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Invocations a kernel should offer to keep this adapter busy: a CPU driver (lavapipe,
    /// llvmpipe, SwiftShader) runs a few thousand at a time across its cores, a GPU a hundred
    /// thousand or more (an H100 holds 132 x 2048 resident). Kernels that can split their
    /// reduction (weight gradients, split-K GEMM) size the split by it.
    pub fn parallelism(&self) -> usize {
        match self.inner.info.device_type {
            wgpu::DeviceType::Cpu => 4096,
            _ => 1 << 17,
        }
    }

    /// See [`GpuOptions::workspace_bytes`].
    pub fn workspace_bytes(&self) -> usize {
        self.inner.workspace_bytes
    }
}
