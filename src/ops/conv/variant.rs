//! Which kernel a convolution direction runs: the candidates a shape offers, the autotune key
//! of its shape class, the choice (measured, cached or forced), and the names the profiler and
//! the benchmarks print.

use crate::error::Result;
use crate::gpu::autotune;
use crate::gpu::{Gpu, Storage};
use crate::tensor::Tensor;

use super::direct::{dgrad_direct, fwd_direct};
use super::gemm::{
    col2im_fits, dgrad_col2im, dgrad_gemm, dgrad_gemm_fits, fwd_gemm, gemm_1x1,
    gemm_1x1_padded_fits, gemm_1x1_run, im2col_fits,
};
use super::weights::relayout_weight;
use super::wgrad::{wgrad_1x1_fits, wgrad_1x1_padded_fits};
use super::winograd::{
    dgrad_winograd, dgrad_winograd_fits, fwd_winograd, wgrad_winograd_fits, winograd_fits, Tile,
};
use super::{round8, ConvGeom, Slice};

/// A convolution direction: the three kernels every convolution op is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// conv2d's forward, conv_transpose2d's input gradient.
    Fwd,
    /// conv2d's input gradient, conv_transpose2d's forward.
    Dgrad,
    /// The weight gradient of both.
    Wgrad,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::Fwd => "fwd",
            Dir::Dgrad => "dgrad",
            Dir::Wgrad => "wgrad",
        }
    }
}

/// The autotune key of a direction's shape class (the one format for all three; the cache
/// file's keys): kernel, stride, padding, bucketed channels, pixels (the output's for `Wgrad`,
/// the input's otherwise) and batch, and whether a batch-norm prologue is fused in. Padding is
/// part of it since Winograd takes padding 1 only: a 3x3 layer without padding would otherwise
/// share, and overwrite, the cached choice of a padded one.
///
/// Pixel counts that are no multiple of 4 are marked (`o`): the 1x1 GEMMs take whole rows of
/// quads and the padded ones the others, so a 7x7 and an 8x8 map (one bucket) must not share
/// a cached choice that only one of them can run.
pub(super) fn class_key(dir: Dir, g: &ConvGeom, prologue: bool) -> String {
    let pixels = if dir == Dir::Wgrad {
        g.oh * g.ow
    } else {
        g.h * g.w
    };
    format!(
        "conv-{}/k{}s{}p{}/ci{}/co{}/hw{}{}/n{}/{}",
        dir.name(),
        g.kh,
        g.stride,
        g.pad,
        autotune::bucket(g.ci),
        autotune::bucket(g.co),
        autotune::bucket(pixels),
        if pixels.is_multiple_of(4) { "" } else { "o" },
        autotune::bucket(g.n),
        if prologue { "prologue" } else { "plain" }
    )
}

/// The kernels of the forward and input-gradient directions; chosen per adapter and shape
/// class by measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConvKernel {
    Direct,
    Strip,
    Gemm1x1,
    /// The 1x1 GEMM on rows padded to a multiple of 4 (maps of 7x7 and other odd sizes).
    Gemm1x1Padded,
    Im2col,
    Col2im,
    /// Winograd F(2x2, 3x3).
    Winograd,
    /// Winograd F(4x4, 3x3).
    Winograd4,
}

impl ConvKernel {
    const ALL: [ConvKernel; 8] = [
        ConvKernel::Direct,
        ConvKernel::Strip,
        ConvKernel::Gemm1x1,
        ConvKernel::Gemm1x1Padded,
        ConvKernel::Im2col,
        ConvKernel::Col2im,
        ConvKernel::Winograd,
        ConvKernel::Winograd4,
    ];

    /// The name in the autotune cache and in `APGA_KERNELS`.
    pub(super) fn name(self) -> &'static str {
        match self {
            ConvKernel::Direct => "direct",
            ConvKernel::Strip => "strip",
            ConvKernel::Gemm1x1 => "gemm1x1",
            ConvKernel::Gemm1x1Padded => "gemm1x1pad",
            ConvKernel::Im2col => "im2col",
            ConvKernel::Col2im => "col2im",
            ConvKernel::Winograd => "winograd",
            ConvKernel::Winograd4 => "winograd4",
        }
    }

    /// What the profiler and the benchmarks call it, per direction.
    fn label(self, dir: Dir) -> &'static str {
        match (self, dir) {
            (ConvKernel::Direct, Dir::Fwd) => "conv2d.fwd (direct, 8x4)",
            (ConvKernel::Direct, _) => "conv2d.dgrad (direct)",
            (ConvKernel::Strip, Dir::Fwd) => "conv2d.fwd_strip (8x8, row strip)",
            (ConvKernel::Strip, _) => "conv2d.dgrad_strip (8x8, row strip)",
            (ConvKernel::Gemm1x1, _) => "conv1x1 (batched GEMM)",
            (ConvKernel::Gemm1x1Padded, _) => "layout.copy_cols + conv1x1 (rows padded to 4)",
            (ConvKernel::Im2col, _) => "conv_gemm.im2col + batched GEMM",
            (ConvKernel::Col2im, _) => "batched GEMM + conv_gemm.col2im",
            (ConvKernel::Winograd, _) => "conv_winograd F(2x2,3x3) + 16 batched GEMMs",
            (ConvKernel::Winograd4, _) => "conv_winograd4 F(4x4,3x3) + 36 batched GEMMs",
        }
    }
}

/// The weight-gradient kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WgradKernel {
    /// Split rows, 4 x 4 output channels x columns per invocation.
    Blocked4,
    /// Split rows, 8 x 8.
    Blocked8,
    /// Transposed im2col + GEMM.
    Gemm,
    /// The same with the subgroup GEMM.
    GemmSubgroup,
    /// 1x1 convolutions: the GEMM on the input itself (no transposed im2col).
    Gemm1x1,
    /// The same on rows padded to a multiple of 4 (maps of 7x7 and other odd sizes).
    Gemm1x1Padded,
    /// Winograd F(2x2, 3x3): transforms around 16 batched GEMMs over tiles.
    Winograd,
    /// Winograd F(4x4, 3x3): 36 batched GEMMs.
    Winograd4,
}

impl WgradKernel {
    const ALL: [WgradKernel; 8] = [
        WgradKernel::Blocked4,
        WgradKernel::Blocked8,
        WgradKernel::Gemm,
        WgradKernel::GemmSubgroup,
        WgradKernel::Gemm1x1,
        WgradKernel::Gemm1x1Padded,
        WgradKernel::Winograd,
        WgradKernel::Winograd4,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            WgradKernel::Blocked4 => "wgrad4",
            WgradKernel::Blocked8 => "wgrad8",
            WgradKernel::Gemm => "gemm",
            WgradKernel::GemmSubgroup => "gemm_sg",
            WgradKernel::Gemm1x1 => "gemm1x1",
            WgradKernel::Gemm1x1Padded => "gemm1x1pad",
            WgradKernel::Winograd => "winograd",
            WgradKernel::Winograd4 => "winograd4",
        }
    }

    fn label(self) -> &'static str {
        match self {
            WgradKernel::Blocked4 => "conv2d_wgrad (4x4, split rows)",
            WgradKernel::Blocked8 => "conv2d_wgrad (8x8, split rows)",
            WgradKernel::Gemm => "conv_gemm.wgrad_gemm (im2col^T + GEMM)",
            WgradKernel::GemmSubgroup => "conv_gemm_subgroup.wgrad_gemm (im2col^T + GEMM)",
            WgradKernel::Gemm1x1 => "conv_gemm.wgrad_1x1 (GEMM on the input)",
            WgradKernel::Gemm1x1Padded => {
                "layout.copy_cols + conv_gemm.wgrad_1x1 (rows padded to 4)"
            }
            WgradKernel::Winograd => "conv_winograd F(2x2,3x3) wgrad + 16 batched GEMMs",
            WgradKernel::Winograd4 => "conv_winograd4 F(4x4,3x3) wgrad + 36 batched GEMMs",
        }
    }
}

/// Names of every variant of a direction (what `APGA_KERNELS` may force), whatever a given
/// shape offers.
pub(super) fn family(dir: Dir) -> Vec<&'static str> {
    match dir {
        Dir::Wgrad => WgradKernel::ALL.iter().map(|k| k.name()).collect(),
        _ => ConvKernel::ALL.iter().map(|k| k.name()).collect(),
    }
}

/// The forward's candidates for `g`: direct, the row strip where its register window
/// (7 * stride + kw values) fits its 24 slots, the 1x1 GEMM (on rows padded to 4 where the
/// pixel count is no multiple of 4) or else im2col + GEMM, and Winograd F(2x2, 3x3) and
/// F(4x4, 3x3) for 3x3 stride-1 padding-1 convolutions.
pub(super) fn fwd_candidates(gpu: &Gpu, g: &ConvGeom) -> Vec<(&'static str, ConvKernel)> {
    let mut v = vec![ConvKernel::Direct];
    if 7 * g.stride + g.kw <= 24 {
        v.push(ConvKernel::Strip);
    }
    if gemm_1x1(g, g.ci) {
        v.push(ConvKernel::Gemm1x1);
    } else if gemm_1x1_padded_fits(gpu, g, g.ci) {
        v.push(ConvKernel::Gemm1x1Padded);
    } else if im2col_fits(gpu, g) {
        v.push(ConvKernel::Im2col);
    }
    for (tile, k) in WINOGRAD {
        if winograd_fits(gpu, g, tile) {
            v.push(k);
        }
    }
    v.into_iter().map(|k| (k.name(), k)).collect()
}

/// The input gradient's candidates: direct, the row strip (stride 1 only), and the 1x1 GEMM
/// (on padded rows as in the forward), or else the stride-1 im2col + GEMM and GEMM + col2im
/// where they fit, and Winograd for 3x3 stride-1 padding-1 convolutions.
pub(super) fn dgrad_candidates(gpu: &Gpu, g: &ConvGeom) -> Vec<(&'static str, ConvKernel)> {
    let mut v = vec![ConvKernel::Direct];
    if g.stride == 1 && 7 + g.kw <= 24 {
        v.push(ConvKernel::Strip);
    }
    if gemm_1x1(g, g.co) {
        v.push(ConvKernel::Gemm1x1);
    } else if gemm_1x1_padded_fits(gpu, g, g.co) {
        v.push(ConvKernel::Gemm1x1Padded);
    } else {
        if dgrad_gemm_fits(gpu, g) {
            v.push(ConvKernel::Im2col);
        }
        if col2im_fits(gpu, g) {
            v.push(ConvKernel::Col2im);
        }
    }
    for (tile, k) in WINOGRAD {
        if dgrad_winograd_fits(gpu, g, tile) {
            v.push(k);
        }
    }
    v.into_iter().map(|k| (k.name(), k)).collect()
}

/// The Winograd variants of the forward and input-gradient directions.
const WINOGRAD: [(Tile, ConvKernel); 2] = [
    (Tile::F2, ConvKernel::Winograd),
    (Tile::F4, ConvKernel::Winograd4),
];

/// The weight gradient's candidates: both blockings, the GEMMs where one image's columns
/// fit the workspace, the GEMM on the input for 1x1 convolutions (on rows padded to 4 where
/// the pixel count is no multiple of 4), and Winograd for 3x3 stride-1 padding-1
/// convolutions.
pub(super) fn wgrad_candidates(gpu: &Gpu, g: &ConvGeom) -> Vec<(&'static str, WgradKernel)> {
    let mut v = vec![WgradKernel::Blocked4, WgradKernel::Blocked8];
    if im2col_fits(gpu, g) {
        v.push(WgradKernel::Gemm);
        if gpu.has_subgroups() {
            v.push(WgradKernel::GemmSubgroup);
        }
    }
    if wgrad_1x1_fits(g) {
        v.push(WgradKernel::Gemm1x1);
    } else if wgrad_1x1_padded_fits(gpu, g) {
        v.push(WgradKernel::Gemm1x1Padded);
    }
    for (tile, k) in [
        (Tile::F2, WgradKernel::Winograd),
        (Tile::F4, WgradKernel::Winograd4),
    ] {
        if wgrad_winograd_fits(gpu, g, tile) {
            v.push(k);
        }
    }
    v.into_iter().map(|k| (k.name(), k)).collect()
}

/// The choice without measurements: the 1x1 GEMM where it applies, else the direct kernel.
fn default_of(cands: &[(&'static str, ConvKernel)]) -> usize {
    cands
        .iter()
        .position(|(_, k)| *k == ConvKernel::Gemm1x1)
        .unwrap_or(0)
}

/// Forward of a convolution: `out[:, dst] = conv(src[:, src], w) + bias`; with a `prologue`
/// ([scale; shift] per input channel) the input is read as relu(x * scale + shift).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fwd_into(
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    prologue: Option<&Storage>,
) -> Result<()> {
    let gpu = w.gpu();
    let run = |k: ConvKernel| match k {
        ConvKernel::Direct => fwd_direct(g, x, src, w, bias, out, dst, prologue, false),
        ConvKernel::Strip => fwd_direct(g, x, src, w, bias, out, dst, prologue, true),
        ConvKernel::Gemm1x1 | ConvKernel::Gemm1x1Padded => gemm_1x1_run(
            gpu,
            (g.co, g.ci, g.ci),
            w.storage(),
            x,
            src,
            bias,
            out,
            dst,
            g,
            prologue,
        ),
        ConvKernel::Im2col => fwd_gemm(g, x, src, w, bias, out, dst, prologue),
        ConvKernel::Winograd => fwd_winograd(Tile::F2, g, x, src, w, bias, out, dst, prologue),
        ConvKernel::Winograd4 => fwd_winograd(Tile::F4, g, x, src, w, bias, out, dst, prologue),
        // col2im is an input-gradient variant; the forward never offers it.
        ConvKernel::Col2im => fwd_direct(g, x, src, w, bias, out, dst, prologue, false),
    };
    let cands = fwd_candidates(gpu, g);
    if cands.len() == 1 {
        return run(ConvKernel::Direct);
    }
    let default = default_of(&cands);
    let k = autotune::choose(
        gpu,
        &class_key(Dir::Fwd, g, prologue.is_some()),
        &family(Dir::Fwd),
        &cands,
        default,
        run,
    )?;
    run(k)
}

/// Input-gradient kernel: `out[:, dst] = conv_transpose(dy[:, src], w) + bias`, out being
/// [n, ci, h, w] of geometry `g`.
pub(crate) fn dgrad_into(
    g: &ConvGeom,
    dy: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
) -> Result<()> {
    let gpu = w.gpu();
    let cands = dgrad_candidates(gpu, g);
    if cands.len() == 1 {
        return dgrad_direct(g, dy, src, w, bias, out, dst, false);
    }
    // The 1x1 GEMMs (plain and on padded rows) and col2im read A = w^T as [ci, round8(co)]
    // (the forward kernel's weight layout), re-laid out only when one of them runs, not
    // before the choice.
    let run = |k: ConvKernel| match k {
        ConvKernel::Im2col => dgrad_gemm(g, dy, src, w, bias, out, dst),
        ConvKernel::Col2im => {
            dgrad_col2im(g, dy, src, &*relayout_weight(w, false)?, bias, out, dst)
        }
        ConvKernel::Direct => dgrad_direct(g, dy, src, w, bias, out, dst, false),
        ConvKernel::Strip => dgrad_direct(g, dy, src, w, bias, out, dst, true),
        ConvKernel::Winograd => dgrad_winograd(Tile::F2, g, dy, src, w, bias, out, dst),
        ConvKernel::Winograd4 => dgrad_winograd(Tile::F4, g, dy, src, w, bias, out, dst),
        ConvKernel::Gemm1x1 | ConvKernel::Gemm1x1Padded => gemm_1x1_run(
            gpu,
            (g.ci, g.co, round8(g.co)),
            &*relayout_weight(w, false)?,
            dy,
            src,
            bias,
            out,
            dst,
            g,
            None,
        ),
    };
    let default = default_of(&cands);
    let k = autotune::choose(
        gpu,
        &class_key(Dir::Dgrad, g, false),
        &family(Dir::Dgrad),
        &cands,
        default,
        run,
    )?;
    run(k)
}

/// The kernel a convolution direction of geometry `g` runs with (for the benchmarks'
/// tables): a variant forced by `APGA_KERNELS`, else the autotuner's choice where several
/// apply (after the first call), the default before, the only one otherwise.
pub fn kernel_name(gpu: &Gpu, g: &ConvGeom, dir: Dir, prologue: bool) -> String {
    let key = class_key(dir, g, prologue);
    if dir == Dir::Wgrad {
        let cands = wgrad_candidates(gpu, g);
        let forced = autotune::forced(gpu, &key, &family(dir), &cands, 0)
            .ok()
            .flatten();
        let chosen = autotune::cached_choice(gpu, &key);
        let k = forced
            .or_else(|| {
                WgradKernel::ALL
                    .into_iter()
                    .find(|k| Some(k.name()) == chosen.as_deref())
            })
            .unwrap_or(WgradKernel::Blocked4);
        return k.label().into();
    }
    let cands = if dir == Dir::Fwd {
        fwd_candidates(gpu, g)
    } else {
        dgrad_candidates(gpu, g)
    };
    if cands.len() == 1 {
        return ConvKernel::Direct.label(dir).into();
    }
    let default = default_of(&cands);
    if let Ok(Some(k)) = autotune::forced(gpu, &key, &family(dir), &cands, default) {
        return k.label(dir).into();
    }
    let chosen = autotune::cached_choice(gpu, &key);
    match cands.iter().find(|(n, _)| Some(*n) == chosen.as_deref()) {
        Some((_, k)) => k.label(dir).into(),
        None if cands.iter().any(|(_, k)| *k == ConvKernel::Gemm1x1) => {
            "conv1x1 (batched GEMM, default)".into()
        }
        None => format!("{}, default", ConvKernel::Direct.label(dir)),
    }
}
