//! Adapter discovery and choice: `WGPU_BACKEND` limits the backends searched,
//! `WGPU_ADAPTER_NAME` or an explicit `--device` picks one by name (or list index); otherwise the
//! most capable device type wins (discrete > integrated > virtual > CPU), Vulkan first among ties.

use crate::error::{Error, Result};

/// What `apga-gpu devices` prints for one adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Position in the enumeration (usable as `--device N`).
    pub index: usize,
    pub backend: wgpu::Backend,
    pub name: String,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterSummary {
    fn of(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        AdapterSummary {
            index,
            backend: info.backend,
            name: info.name,
            device_type: info.device_type,
            driver: info.driver,
            driver_info: info.driver_info,
        }
    }
}

/// The lock held while adapters are discovered, a device is opened and a context is torn down
/// (`Gpu::new`, `list`, the last `Gpu` handle's drop): the discovery instance's GL back end has
/// one EGL context, which two threads may not make current at once (NVIDIA's driver answers
/// `BadAccess`), and NVIDIA's Vulkan and EGL share one core library in which concurrent setup
/// and teardown of several contexts hung (the engine tests, 14 in parallel, each with its own
/// context, on an H100 with driver 580.159).
pub(crate) fn lifecycle() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's instance for finding adapters (`devices`, the choice of `--device`),
/// honouring `WGPU_BACKEND` (and wgpu's other environment switches) as they were when it was
/// first asked for; used under [`lifecycle`]. Never dropped: see [`select`].
fn discovery() -> wgpu::Instance {
    static INSTANCE: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
    INSTANCE
        .get_or_init(|| {
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
        })
        .clone()
}

/// A new instance of one back end only (with wgpu's other environment switches).
fn instance_of(backend: wgpu::Backend) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::from(backend);
    wgpu::Instance::new(desc)
}

/// All adapters the instance sees, in a stable order.
pub fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 3,
        _ => 4,
    }
}

/// Where the adapter request came from, for error messages.
#[derive(Debug, Clone)]
pub enum Request {
    /// No preference: the best adapter by device type and backend.
    Auto,
    /// A name substring (case-insensitive) or a list index, with where it came from.
    Named { wanted: String, source: String },
}

impl Request {
    /// Explicit choice (a `--device` flag) first, then `WGPU_ADAPTER_NAME`, then automatic.
    pub fn resolve(explicit: Option<&str>) -> Request {
        if let Some(w) = explicit.filter(|w| !w.trim().is_empty()) {
            return Request::Named {
                wanted: w.to_string(),
                source: "--device".into(),
            };
        }
        match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(w) if !w.trim().is_empty() => Request::Named {
                wanted: w,
                source: "WGPU_ADAPTER_NAME".into(),
            },
            _ => Request::Auto,
        }
    }
}

/// Index into `adapters` of the one `request` selects.
pub fn choose(summaries: &[AdapterSummary], request: &Request) -> Result<usize> {
    if let Ok(b) = std::env::var("WGPU_BACKEND") {
        // wgpu ignores names it does not know; a typo would then read as "no driver".
        const KNOWN: &[&str] = &[
            "vulkan",
            "vk",
            "metal",
            "mtl",
            "dx12",
            "d3d12",
            "gl",
            "gles",
            "opengl",
            "webgpu",
            "primary",
            "secondary",
            "noop",
        ];
        let unknown: Vec<&str> = b
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !KNOWN.contains(&t.to_lowercase().as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::shape(
                "WGPU_BACKEND",
                format!(
                    "{b:?}: {} is not a backend name; use vulkan, metal, dx12 or gl \
                     (comma-separated), or unset it",
                    unknown.join(", ")
                ),
            ));
        }
    }
    if summaries.is_empty() {
        let detail = match std::env::var("WGPU_BACKEND") {
            Ok(b) => format!(" for WGPU_BACKEND={b}"),
            Err(_) => String::new(),
        };
        return Err(Error::NoAdapter { detail });
    }
    match request {
        Request::Auto => Ok(summaries
            .iter()
            .min_by_key(|s| (type_rank(s.device_type), backend_rank(s.backend), s.index))
            .map(|s| s.index)
            .unwrap_or(0)),
        Request::Named { wanted, source } => {
            if let Ok(i) = wanted.trim().parse::<usize>() {
                if i < summaries.len() {
                    return Ok(i);
                }
            }
            let w = wanted.to_lowercase();
            summaries
                .iter()
                .filter(|s| s.name.to_lowercase().contains(&w))
                .min_by_key(|s| (backend_rank(s.backend), s.index))
                .map(|s| s.index)
                .ok_or_else(|| Error::AdapterNotFound {
                    wanted: wanted.clone(),
                    source_of_request: source.clone(),
                    available: summaries
                        .iter()
                        .map(|s| format!("[{}] {} ({:?})", s.index, s.name, s.backend))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        }
    }
}

/// Summaries of every adapter and the index `request` would pick (`None` when there is none or
/// the request matches nothing).
pub fn list(request: &Request) -> (Vec<AdapterSummary>, Result<usize>) {
    let _lifecycle = lifecycle();
    let adapters = enumerate(&discovery());
    let summaries: Vec<_> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::of(i, a))
        .collect();
    let chosen = choose(&summaries, request);
    (summaries, chosen)
}

/// The adapter `request` selects, with its summary.
///
/// The choice is made on the shared `discovery` instance; the adapter returned comes from a
/// new instance of the chosen back end alone, which the GPU context owns. So a context never
/// holds (and, closing, never tears down) the back ends it does not use: with every back end
/// in each context's instance, two contexts closing at once on NVIDIA's driver deadlocked in
/// libEGL (seen on an H100, driver 580.159: one thread in the GL back end's `eglTerminate`,
/// another in `vkDestroyDevice`), and one shared instance for all contexts makes GL contexts
/// fight over one EGL context (`BadAccess`).
///
/// The caller holds `lifecycle`.
pub fn select(request: &Request) -> Result<(wgpu::Adapter, AdapterSummary)> {
    let adapters = enumerate(&discovery());
    let summaries: Vec<_> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::of(i, a))
        .collect();
    let i = choose(&summaries, request)?;
    let summary = summaries[i].clone();
    let want = adapters[i].get_info();
    // The same adapter in the private instance: same identity (PCI bus included), the n-th of
    // identical ones as in discovery (two identical cards without bus ids), else the same
    // position among the back end's adapters.
    let key = |g: &wgpu::AdapterInfo| {
        (
            g.backend,
            g.name.clone(),
            g.vendor,
            g.device,
            g.device_type,
            g.device_pci_bus_id.clone(),
            g.driver.clone(),
        )
    };
    let same = |a: &wgpu::Adapter| key(&a.get_info()) == key(&want);
    let twins_before = adapters[..i].iter().filter(|a| same(a)).count();
    let rank = adapters[..i]
        .iter()
        .filter(|a| a.get_info().backend == want.backend)
        .count();
    let mut own = enumerate(&instance_of(want.backend));
    let j = own
        .iter()
        .enumerate()
        .filter(|(_, a)| same(a))
        .nth(twins_before)
        .map(|(j, _)| j)
        .or_else(|| (rank < own.len()).then_some(rank))
        .ok_or_else(|| {
            crate::error::Error::Gpu(format!(
                "adapter {} ({:?}) disappeared between discovery and opening",
                want.name, want.backend
            ))
        })?;
    Ok((own.swap_remove(j), summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(index: usize, backend: wgpu::Backend, name: &str, t: wgpu::DeviceType) -> AdapterSummary {
        AdapterSummary {
            index,
            backend,
            name: name.into(),
            device_type: t,
            driver: String::new(),
            driver_info: String::new(),
        }
    }

    #[test]
    fn auto_prefers_discrete_then_vulkan() {
        use wgpu::{Backend::*, DeviceType::*};
        let list = vec![
            s(0, Gl, "llvmpipe", Cpu),
            s(1, Vulkan, "llvmpipe", Cpu),
            s(2, Vulkan, "RTX", DiscreteGpu),
        ];
        assert_eq!(choose(&list, &Request::Auto).unwrap(), 2);
        assert_eq!(choose(&list[..2], &Request::Auto).unwrap(), 1);
    }

    #[test]
    fn named_matches_substring_or_index_and_reports_misses() {
        use wgpu::{Backend::*, DeviceType::*};
        let list = vec![s(0, Gl, "llvmpipe", Cpu), s(1, Vulkan, "LLVMpipe x", Cpu)];
        let named = |w: &str| Request::Named {
            wanted: w.into(),
            source: "test".into(),
        };
        assert_eq!(choose(&list, &named("llvm")).unwrap(), 1);
        assert_eq!(choose(&list, &named("0")).unwrap(), 0);
        let err = choose(&list, &named("radeon")).unwrap_err().to_string();
        assert!(err.contains("radeon") && err.contains("llvmpipe"), "{err}");
        let none = choose(&[], &Request::Auto).unwrap_err().to_string();
        assert!(none.contains("mesa-vulkan-drivers"), "{none}");
    }
}
