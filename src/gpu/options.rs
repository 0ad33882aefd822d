//! How a GPU context is opened: [`GpuOptions`], plain values, and [`GpuOptions::from_env`],
//! which reads the `APGA_*` variables once for the command line and the benchmarks.

use crate::error::{Error, Result};

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
    /// `profile`. Slows a run down: it waits for the GPU at every submit.
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
