//! The direct kernels (`shaders/conv2d.wgsl`): one output (or input-gradient) value block per
//! invocation, no materialised im2col; `strip` variants keep an 8x8 row strip in registers.

use crate::error::Result;
use crate::gpu::{Kernel, KernelParams, Storage};
use crate::shaders::CONV2D;
use crate::tensor::Tensor;

use super::weights::relayout_weight;
use super::{check_groups, round8, ConvGeom, Slice};

crate::kernel_params! {
    /// The parameter block of `conv2d.wgsl` and `conv2d_wgrad.wgsl`.
    pub struct ConvParams {
        n: u32, ci: u32, h: u32, w: u32,
        co: u32, oh: u32, ow: u32, kh: u32,
        kw: u32, stride: u32, pad: u32, cpad: u32,
        src_c_total: u32, src_c_off: u32, dst_c_total: u32, dst_c_off: u32,
        rows_per_chunk: u32, _p0: u32, _p1: u32, _p2: u32,
    }
}

/// The parameters of a direct kernel over geometry `g`: `cpad` the padded row length of the
/// weight copy, `src` / `dst` the channel slices read and written, `rows_per_chunk` the
/// weight gradient's rows per partial sum.
pub(super) fn params(
    g: &ConvGeom,
    cpad: usize,
    src: Slice,
    dst: Slice,
    rows_per_chunk: usize,
) -> ConvParams {
    let u = |v: usize| v as u32;
    ConvParams {
        n: u(g.n),
        ci: u(g.ci),
        h: u(g.h),
        w: u(g.w),
        co: u(g.co),
        oh: u(g.oh),
        ow: u(g.ow),
        kh: u(g.kh),
        kw: u(g.kw),
        stride: u(g.stride),
        pad: u(g.pad),
        cpad: u(cpad),
        src_c_total: u(src.total),
        src_c_off: u(src.off),
        dst_c_total: u(dst.total),
        dst_c_off: u(dst.off),
        rows_per_chunk: u(rows_per_chunk),
        ..Default::default()
    }
}

/// Forward kernel: `out[:, dst] = conv(src[:, src], w) + bias`; with a `prologue` ([scale;
/// shift] per input channel) the input is read as relu(x * scale + shift).
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd_direct(
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    prologue: Option<&Storage>,
    strip: bool,
) -> Result<()> {
    let gpu = w.gpu();
    let wt = relayout_weight(w, false)?;
    let cols = if strip { 8 } else { 4 };
    let pixel_blocks = g.n * g.oh * g.ow.div_ceil(cols);
    let wg = [pixel_blocks.div_ceil(64) as u32, g.co.div_ceil(8) as u32, 1];
    check_groups(gpu, "conv2d", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    gpu.dispatch(
        &Kernel::new(&CONV2D, if strip { "fwd_strip" } else { "fwd" }).with(&constants),
        params(g, round8(g.co), src, dst, 0).as_words(),
        &[out],
        &[x, &wt, bias, prologue.unwrap_or(bias)],
        wg,
    )
}

/// Input-gradient kernel: `out[:, dst] = conv_transpose(dy[:, src], w) + bias`, out being
/// [n, ci, h, w] of geometry `g`.
#[allow(clippy::too_many_arguments)]
pub(super) fn dgrad_direct(
    g: &ConvGeom,
    dy: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    strip: bool,
) -> Result<()> {
    let gpu = w.gpu();
    let wt = relayout_weight(w, true)?;
    let pixel_blocks = if strip {
        // Blocks of 8 consecutive columns (stride 1 only).
        g.n * g.h * g.w.div_ceil(8)
    } else {
        // Blocks of 4 columns of one phase (ix mod stride), `stride` phases per row.
        g.n * g.h * g.stride * g.w.div_ceil(g.stride).div_ceil(4)
    };
    let wg = [pixel_blocks.div_ceil(64) as u32, g.ci.div_ceil(8) as u32, 1];
    check_groups(gpu, "conv2d input gradient", g, wg)?;
    gpu.dispatch(
        &Kernel::new(&CONV2D, if strip { "dgrad_strip" } else { "dgrad" }),
        params(g, round8(g.ci), src, dst, 0).as_words(),
        &[out],
        &[dy, &wt, bias, bias],
        wg,
    )
}
