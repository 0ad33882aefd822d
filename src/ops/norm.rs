//! Batch normalisation (`shaders/batchnorm.wgsl`), `torch.nn.functional.batch_norm` for NCHW
//! input, with an optional fused ReLU.

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::ops;
use crate::shaders::BATCHNORM;
use crate::tensor::Tensor;

/// Settings of one batch-norm call (PyTorch defaults: momentum 0.1, eps 1e-5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Normalise with batch statistics (and update the running ones) instead of the running
    /// statistics.
    pub training: bool,
    pub momentum: f32,
    pub eps: f32,
    /// Apply ReLU to the output in the same kernel (DenseNet's norm + relu).
    pub relu: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            relu: false,
        }
    }
}

crate::kernel_params! {
    /// The parameter block of `batchnorm.wgsl`.
    pub struct BnParams {
        n: u32, c: u32, hw: u32, x_c_total: u32,
        x_c_off: u32, train: u32, relu: u32, lanes: u32,
        eps: f32, momentum: f32, quad: u32, run: u32,
    }
}

/// The batch-norm kernels' parameters: `c` channels of an [n, c_total, hw] buffer.
pub(crate) fn params(
    n: usize,
    c: usize,
    hw: usize,
    c_total: usize,
    cfg: &BatchNormConfig,
) -> BnParams {
    BnParams {
        n: n as u32,
        c: c as u32,
        hw: hw as u32,
        x_c_total: c_total as u32,
        train: cfg.training as u32,
        relu: cfg.relu as u32,
        lanes: reduction_lanes(hw) as u32,
        quad: hw.is_multiple_of(4) as u32,
        eps: cfg.eps,
        momentum: cfg.momentum,
        ..Default::default()
    }
}

/// Lanes per (image, channel) plane of the barrier-free per-channel reductions: each lane
/// sums every `lanes`-th pixel (every `lanes`-th quad of 4 where hw is a multiple of 4), and a
/// second pass combines the `n * lanes` partials.
fn reduction_lanes(hw: usize) -> usize {
    if hw.is_multiple_of(4) {
        (hw / 4).clamp(1, 64)
    } else {
        hw.clamp(1, 64)
    }
}

/// The kernel `entry`, or its vec4 twin (`entry4`) where the planes are whole quads.
fn entry(p: &BnParams, scalar: &'static str, quad: &'static str) -> Kernel<'static> {
    Kernel::new(&BATCHNORM, if p.quad != 0 { quad } else { scalar })
}

/// The per-channel combine of the partials: `serial` (one invocation loops over a channel's
/// n * lanes partials; CPU drivers, where barriers are costly) or `workgroup` (64
/// invocations and a tree; GPUs). Forced with `APGA_KERNELS=bn-combine=serial|workgroup`.
fn combine(
    gpu: &Gpu,
    p: &BnParams,
    serial: &'static str,
    wg: &'static str,
) -> Result<(Kernel<'static>, [u32; 3])> {
    let key = format!(
        "bn-combine/c{}/k{}",
        crate::gpu::autotune::bucket(p.c as usize),
        crate::gpu::autotune::bucket((p.n * p.lanes) as usize)
    );
    let default = usize::from(gpu.parallelism() > 4096);
    let cands = [("serial", false), ("workgroup", true)];
    // Not measured: the choice follows the adapter kind unless forced.
    let workgroup =
        crate::gpu::autotune::forced(gpu, &key, &["serial", "workgroup"], &cands, default)?
            .unwrap_or(cands[default].1);
    let c = p.c as usize;
    Ok(if workgroup {
        (Kernel::new(&BATCHNORM, wg), [c as u32, 1, 1])
    } else {
        (
            Kernel::new(&BATCHNORM, serial),
            [c.div_ceil(64) as u32, 1, 1],
        )
    })
}

/// Workgroups of 256 for the per-element kernels (one invocation per value or quad).
fn element_grid(gpu: &Gpu, p: &BnParams) -> [u32; 3] {
    let per = if p.quad != 0 { 4 } else { 1 };
    gpu.grid(((p.n * p.c * p.hw) as usize / per).div_ceil(256))
}

/// Workgroups of 64 for one invocation per (channel, image, lane), and the partial count.
fn partial_grid(gpu: &Gpu, p: &BnParams) -> ([u32; 3], usize) {
    let parts = (p.n * p.c * p.lanes) as usize;
    (gpu.grid(parts.div_ceil(64)), parts)
}

/// `batch_norm(x, running_mean, running_var, gamma, beta, training, momentum, eps)`, then ReLU
/// if `cfg.relu`. In training the running statistics, if given, are updated in place (running
/// variance unbiased, as PyTorch); in eval they are required.
pub fn batch_norm2d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    cfg: BatchNormConfig,
) -> Result<Tensor> {
    let op = "batch_norm2d";
    let [n, c, h, w] = x.dims4(op)?;
    for (name, t) in [("weight", gamma), ("bias", beta)].into_iter().chain(
        running
            .iter()
            .flat_map(|(m, v)| [("running_mean", *m), ("running_var", *v)]),
    ) {
        if t.shape() != [c] {
            return Err(Error::shape(
                op,
                format!("{name} has shape {:?}, expected [{c}]", t.shape()),
            ));
        }
    }
    let hw = h * w;
    if cfg.training && n * hw < 2 {
        return Err(Error::shape(
            op,
            format!(
                "training needs more than one value per channel, got input {:?}",
                x.shape()
            ),
        ));
    }
    let gpu = x.gpu();
    let p = params(n, c, hw, c, &cfg);
    let (stats, _affine) = batch_stats(gpu, x.storage(), &p, gamma, beta, running, &cfg)?;
    let out = gpu.alloc(x.numel(), x.shape())?;
    gpu.dispatch(
        &entry(&p, "apply", "apply4"),
        p.as_words(),
        &[&out],
        &[x.storage(), &stats, gamma.storage(), beta.storage()],
        element_grid(gpu, &p),
    )?;
    let stats = Tensor::from_storage(std::sync::Arc::new(stats), &[3, c], false);
    Ok(autodiff::track(out, x.shape(), &[x, gamma, beta], || {
        BatchNorm2d {
            x: x.clone(),
            gamma: gamma.clone(),
            beta: beta.clone(),
            stats,
            cfg,
        }
    }))
}

/// Values per channel up to which the one-invocation-per-channel (`direct`) statistics and
/// backward sums are candidates: a loop that long per invocation costs less than a second
/// dispatch on CPU drivers, and DenseNet's maps at 64x64 (4 x 2x2 to 4 x 16x16) are all below.
const DIRECT_MAX: usize = 4096;

/// Whether the per-channel sums of `p` run `direct` (one dispatch, one invocation per channel)
/// rather than as partials and a combine: measured per shape class (`bn-stats/...`,
/// `bn-bwd/...`; forced with `APGA_KERNELS=bn-stats=direct|partial`), `run(direct)` doing the
/// work without side effects. Default where not measured: direct on CPU drivers, partials on
/// GPUs, whose thousands of lanes a per-channel loop would leave idle.
fn choose_direct(
    gpu: &Gpu,
    op: &str,
    p: &BnParams,
    run: impl FnMut(bool) -> Result<()>,
) -> Result<bool> {
    let m = (p.n * p.hw) as usize;
    // Whole quads or not: different kernels on each side, so different classes.
    let key = format!(
        "{op}/c{}/m{}/q{}",
        crate::gpu::autotune::bucket(p.c as usize),
        crate::gpu::autotune::bucket(m),
        p.quad
    );
    let all = [("partial", false), ("direct", true)];
    let cands = if m <= DIRECT_MAX { &all[..] } else { &all[..1] };
    let default = usize::from(gpu.parallelism() <= 4096);
    crate::gpu::autotune::choose(gpu, &key, &["partial", "direct"], cands, default, run)
}

/// Per-channel statistics [mean; invstd; biased var] and the normalisation's affine [scale;
/// shift] (`bn(x) = x * scale + shift`, for a convolution prologue) of the input described by
/// `p`: batch statistics in training (updating `running` in place), the running ones in eval.
pub(crate) fn batch_stats(
    gpu: &Gpu,
    x: &Storage,
    p: &BnParams,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    cfg: &BatchNormConfig,
) -> Result<(Storage, Storage)> {
    let c = p.c as usize;
    let stats = gpu.alloc(3 * c, &[3, c])?;
    let affine = gpu.alloc(2 * c, &[2, c])?;
    if cfg.training {
        // Without running statistics the finish still binds two (unwritten) buffers.
        let scratch;
        let (rm, rv) = match running {
            Some((m, v)) => (m.storage(), v.storage()),
            None => {
                scratch = (gpu.alloc(c, &[c])?, gpu.alloc(c, &[c])?);
                (&scratch.0, &scratch.1)
            }
        };
        let outs = [&stats, &affine, rm, rv];
        let probe = BnParams { run: 0, ..*p };
        let direct = choose_direct(gpu, "bn-stats", p, |d| {
            train_stats(gpu, x, &probe, gamma, beta, outs, d)
        })?;
        let real = BnParams {
            run: running.is_some() as u32,
            ..*p
        };
        train_stats(gpu, x, &real, gamma, beta, outs, direct)?;
    } else {
        let (rm, rv) = running.ok_or_else(|| {
            Error::shape(
                "batch_norm2d",
                "eval mode needs running_mean and running_var",
            )
        })?;
        let p = BnParams { run: 0, ..*p };
        // Binding 5 (the partials in training) is unused; gamma stands in.
        gpu.dispatch(
            &Kernel::new(&BATCHNORM, "eval_stats"),
            p.as_words(),
            &[&stats, &affine, rm.storage(), rv.storage()],
            &[gamma.storage(), gamma.storage(), beta.storage()],
            [c.div_ceil(64) as u32, 1, 1],
        )?;
    }
    Ok((stats, affine))
}

/// Batch statistics into `outs` = [stats, affine, running mean, running var] (the running
/// ones updated only when `p.run`): one `stats_direct` dispatch, or partials and a finish.
fn train_stats(
    gpu: &Gpu,
    x: &Storage,
    p: &BnParams,
    gamma: &Tensor,
    beta: &Tensor,
    outs: [&Storage; 4],
    direct: bool,
) -> Result<()> {
    let c = p.c as usize;
    if direct {
        return gpu.dispatch(
            &entry(p, "stats_direct", "stats_direct4"),
            p.as_words(),
            &outs,
            &[x, gamma.storage(), beta.storage()],
            [c.div_ceil(64) as u32, 1, 1],
        );
    }
    let (grid, parts) = partial_grid(gpu, p);
    let part = gpu.alloc(2 * parts, &[2, parts])?;
    gpu.dispatch(
        &entry(p, "stats_partial", "stats_partial4"),
        p.as_words(),
        &[&part],
        &[x],
        grid,
    )?;
    let (kernel, groups) = combine(gpu, p, "stats_finish", "stats_finish_wg")?;
    gpu.dispatch(
        &kernel,
        p.as_words(),
        &outs,
        &[&part, gamma.storage(), beta.storage()],
        groups,
    )
}

/// Backward kernels on raw storage: (dx for the `c` channels, dgamma, dbeta), where `dy` is
/// the gradient of the (ReLU'd, if `cfg.relu`) output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_raw(
    gpu: &Gpu,
    x: &Storage,
    p: &BnParams,
    stats: &Storage,
    gamma: &Tensor,
    beta: &Tensor,
    dy: &Storage,
    want_x: bool,
) -> Result<(Option<Storage>, Storage, Storage)> {
    let (n, c, hw) = (p.n as usize, p.c as usize, p.hw as usize);
    let dgamma = gpu.alloc(c, &[c])?;
    let dbeta = gpu.alloc(c, &[c])?;
    let dx = if want_x {
        Some(gpu.alloc(n * c * hw, &[n, c, hw])?)
    } else {
        None
    };
    let ins = [x, dy, stats, gamma.storage(), beta.storage()];
    // The sums and, if wanted, the input gradient: one `bwd_direct4` dispatch with `DX` where
    // the channel's values are few whole quads, else the sums (direct, or partials and their
    // combine) and `bwd_apply`.
    let run = |direct: bool| -> Result<()> {
        let one_invocation = [c.div_ceil(64) as u32, 1, 1];
        if direct && p.quad != 0 {
            // Without an input gradient the kernel writes nothing through binding 3, which the
            // pipeline layout still declares: a 16-byte scratch buffer fills the slot.
            let scratch;
            let out = match &dx {
                Some(dx) => dx,
                None => {
                    scratch = gpu.alloc(4, &[4])?;
                    &scratch
                }
            };
            let dx_flag = [("DX", dx.is_some() as u32 as f64)];
            return gpu.dispatch(
                &Kernel::new(&BATCHNORM, "bwd_direct4").with(&dx_flag),
                p.as_words(),
                &[&dgamma, &dbeta, out],
                &ins,
                one_invocation,
            );
        }
        if direct {
            gpu.dispatch(
                &Kernel::new(&BATCHNORM, "bwd_direct"),
                p.as_words(),
                &[&dgamma, &dbeta],
                &ins,
                one_invocation,
            )?;
        } else {
            let (grid, parts) = partial_grid(gpu, p);
            let part = gpu.alloc(2 * parts, &[2, parts])?;
            gpu.dispatch(
                &entry(p, "bwd_partial", "bwd_partial4"),
                p.as_words(),
                &[&part],
                &ins,
                grid,
            )?;
            let (kernel, groups) = combine(gpu, p, "bwd_combine", "bwd_combine_wg")?;
            gpu.dispatch(&kernel, p.as_words(), &[&dgamma, &dbeta], &[&part], groups)?;
        }
        let Some(dx) = &dx else {
            return Ok(());
        };
        gpu.dispatch(
            &entry(p, "bwd_apply", "bwd_apply4"),
            p.as_words(),
            &[dx],
            &[
                x,
                dy,
                stats,
                gamma.storage(),
                beta.storage(),
                &dgamma,
                &dbeta,
            ],
            element_grid(gpu, p),
        )
    };
    // With the input gradient or without: the direct kernel does more work with it.
    let op = format!("bn-bwd/x{}", u8::from(want_x));
    let direct = choose_direct(gpu, &op, p, run)?;
    run(direct)?;
    Ok((dx, dgamma, dbeta))
}

/// Gradients of (x, gamma, beta) of `batch_norm2d` given the output gradient `gy`.
pub fn batch_norm2d_backward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &Tensor,
    cfg: &BatchNormConfig,
    gy: &Tensor,
    want_x: bool,
) -> Result<[Option<Tensor>; 3]> {
    let gpu: &Gpu = x.gpu();
    let [n, c, h, w] = x.dims4("batch_norm2d backward")?;
    let p = params(n, c, h * w, c, cfg);
    let (dx, dgamma, dbeta) = backward_raw(
        gpu,
        x.storage(),
        &p,
        stats.storage(),
        gamma,
        beta,
        gy.storage(),
        want_x,
    )?;
    let dx = dx.map(|d| Tensor::from_storage(std::sync::Arc::new(d), x.shape(), false));
    let wrap = |s| Tensor::from_storage(std::sync::Arc::new(s), &[c], false);
    Ok([dx, Some(wrap(dgamma)), Some(wrap(dbeta))])
}

/// Batch norm (optionally with fused ReLU); inputs (x, gamma, beta).
pub(crate) struct BatchNorm2d {
    pub(crate) x: Tensor,
    pub(crate) gamma: Tensor,
    pub(crate) beta: Tensor,
    pub(crate) stats: Tensor,
    pub(crate) cfg: ops::BatchNormConfig,
}

impl Backward for BatchNorm2d {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let BatchNorm2d {
            x,
            gamma,
            beta,
            stats,
            cfg,
            ..
        } = self;
        Ok(ops::norm::batch_norm2d_backward(x, gamma, beta, stats, cfg, g, want(0))?.to_vec())
    }
}
