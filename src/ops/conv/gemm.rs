//! The GEMM paths (`shaders/conv_gemm.wgsl`, on the batched GEMM of `batched.rs`): 1x1
//! convolutions as a batched GEMM (on rows padded to 4 where the pixel count is no multiple
//! of 4), im2col + GEMM forward and stride-1 input gradient, GEMM + col2im input gradient of
//! any stride, each over image groups that fit the workspace.

use crate::error::Result;
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::ops::layout::copy_cols;
use crate::shaders::CONV_GEMM;
use crate::tensor::Tensor;

use super::batched::{batched_gemm, BatchedGemm};
use super::weights::{pad_rows, weight_copy};
use super::{check_groups, round8, ConvGeom, Slice};

/// Whether a convolution is a 1x1, stride-1, unpadded one the batched-GEMM kernel can run
/// (`k` is the reduced channel count, which its vec4 loads need a multiple of 4 of).
pub(super) fn gemm_1x1(g: &ConvGeom, k: usize) -> bool {
    g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad == 0
        && (g.h * g.w).is_multiple_of(4)
        && k.is_multiple_of(4)
}

/// The batched-GEMM kernel for a 1x1 convolution: out[n][:, dst] = a (m x k, rows of `lda`) *
/// b[n][src] + bias; on rows padded to 4 ([`gemm_1x1_padded_run`]) where the pixel count is
/// no multiple of 4.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_1x1_run(
    gpu: &Gpu,
    (m, k, lda): (usize, usize, usize),
    a: &Storage,
    b: &Storage,
    src: Slice,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    g: &ConvGeom,
    prologue: Option<&Storage>,
) -> Result<()> {
    let hw = g.h * g.w;
    if !hw.is_multiple_of(4) {
        return gemm_1x1_padded_run(gpu, (m, k, lda), a, b, src, bias, out, dst, g, prologue);
    }
    let d = BatchedGemm {
        m,
        n: hw,
        k,
        lda,
        a_batch: 0,
        b_batch: src.total * hw,
        b_off: src.off * hw,
        c_batch: dst.total * hw,
        c_off: dst.off * hw,
        imgs: g.n,
    };
    batched_gemm(gpu, &d, (a, b, bias, out), g, prologue)
}

/// Whether a 1x1, stride-1, unpadded convolution whose pixel count is no multiple of 4 (7x7
/// maps) can run the batched GEMM on rows padded to a multiple of 4 ([`gemm_1x1_padded_run`]):
/// `k`, the reduced channel count, a multiple of 4, and the padded copies of input and output
/// within one storage binding.
pub(super) fn gemm_1x1_padded_fits(gpu: &Gpu, g: &ConvGeom, k: usize) -> bool {
    padded_rows_fit(gpu, g)
        && g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad == 0
        && !(g.h * g.w).is_multiple_of(4)
        && k.is_multiple_of(4)
        && k > 0
}

/// Whether the copies of a 1x1 convolution's input and output on rows padded to a multiple of
/// 4 fit one storage binding each, and `copy_cols`'s grid (channels along y, images along z)
/// the adapter's per-dimension limit.
pub(super) fn padded_rows_fit(gpu: &Gpu, g: &ConvGeom) -> bool {
    let rows = (g.h * g.w).div_ceil(4) * 4;
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    g.n * g.ci.max(g.co) * rows <= gpu.max_binding_elems() && g.ci.max(g.co).max(g.n) <= max
}

/// [`gemm_1x1_run`] for maps whose pixel count is no multiple of 4: the input's `k` channels
/// copied into rows padded to a multiple of 4 (`copy_cols`), the batched GEMM into a padded
/// output, its rows copied back into `out[:, dst]`. The padding columns only ever produce
/// padding columns of the output (K runs over channels), so they need no particular value,
/// also through the prologue.
#[allow(clippy::too_many_arguments)]
fn gemm_1x1_padded_run(
    gpu: &Gpu,
    (m, k, lda): (usize, usize, usize),
    a: &Storage,
    b: &Storage,
    src: Slice,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    g: &ConvGeom,
    prologue: Option<&Storage>,
) -> Result<()> {
    let hw = g.h * g.w;
    let hw4 = hw.div_ceil(4) * 4;
    let bp = gpu.alloc(g.n * k * hw4, &[g.n, k, hw4])?;
    copy_cols(gpu, b, &bp, g.n, k, (hw, src.total, src.off), (hw4, k, 0))?;
    let cp = gpu.alloc(g.n * m * hw4, &[g.n, m, hw4])?;
    let d = BatchedGemm {
        m,
        n: hw4,
        k,
        lda,
        a_batch: 0,
        b_batch: k * hw4,
        b_off: 0,
        c_batch: m * hw4,
        c_off: 0,
        imgs: g.n,
    };
    batched_gemm(gpu, &d, (a, &bp, bias, &cp), g, prologue)?;
    copy_cols(gpu, &cp, out, g.n, m, (hw4, m, 0), (hw, dst.total, dst.off))
}

/// Rows of the im2col buffer: ci * kh * kw rounded up to 4 (the GEMMs read vec4 rows).
pub(super) fn im2col_rows(g: &ConvGeom) -> usize {
    (g.ci * g.kh * g.kw).div_ceil(4) * 4
}

/// Whether one image's column buffer of `rows` x `pixels` fits the workspace and one storage
/// binding (larger ones would need a split over pixels; those shapes keep the direct kernels).
pub(super) fn cols_fit(gpu: &Gpu, rows: usize, pixels: usize) -> bool {
    let bytes = 4 * rows * pixels;
    bytes <= gpu.workspace_bytes() && bytes / 4 <= gpu.max_binding_elems()
}

/// Whether the im2col + GEMM path applies: vec4 rows of output pixels, one image's im2col
/// buffer within the workspace.
pub(super) fn im2col_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    (g.oh * g.ow).is_multiple_of(4) && cols_fit(gpu, im2col_rows(g), g.oh * g.ow)
}

/// Images per im2col buffer (at most the context's workspace), at least one.
pub(super) fn im2col_group(gpu: &Gpu, g: &ConvGeom) -> usize {
    (gpu.workspace_bytes() / (4 * im2col_rows(g) * g.oh * g.ow)).clamp(1, g.n)
}

/// The im2col buffer of images `img0..img0 + imgs` of `x` (channel slice `src`), as
/// [imgs, kpad, oh*ow] or, `transposed`, [imgs, oh*ow, kpad] (see conv_gemm.wgsl).
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    prologue: Option<&Storage>,
    (img0, imgs): (usize, usize),
    transposed: bool,
) -> Result<Storage> {
    let kpad = im2col_rows(g);
    let ohw = g.oh * g.ow;
    let cols = gpu.alloc(imgs * kpad * ohw, &[imgs, kpad, ohw])?;
    let params = gemm_params(g, kpad, src, (img0, imgs), Slice::whole(g.co), (0, 0));
    let params = params.as_words();
    let wg = [ohw.div_ceil(64) as u32, g.ci as u32, imgs as u32];
    check_groups(gpu, "im2col", g, wg)?;
    let constants = [
        ("PROLOGUE", prologue.is_some() as u32 as f64),
        ("TRANSPOSED", transposed as u32 as f64),
    ];
    gpu.dispatch(
        &Kernel::new(&CONV_GEMM, "im2col").with(&constants),
        params,
        &[&cols],
        &[x, prologue.unwrap_or(x)],
        wg,
    )?;
    Ok(cols)
}

crate::kernel_params! {
    /// The parameter block of `conv_gemm.wgsl` and `conv_gemm_subgroup.wgsl`.
    pub struct GemmConvParams {
        imgs: u32, img0: u32, ci: u32, h: u32,
        w: u32, oh: u32, ow: u32, kh: u32,
        kw: u32, stride: u32, pad: u32, kpad: u32,
        src_c_total: u32, src_c_off: u32, co: u32, quads_per_chunk: u32,
        dy_c_total: u32, dy_c_off: u32, chunk0: u32, _p0: u32,
    }
}

/// The parameters of the im2col / col2im / GEMM kernels for images `img0..img0 + imgs` of
/// geometry `g`: `kpad` the padded reduction length, `src` / `dys` the channel slices of the
/// input and output gradient, and the weight gradient's chunking.
pub(super) fn gemm_params(
    g: &ConvGeom,
    kpad: usize,
    src: Slice,
    (img0, imgs): (usize, usize),
    dys: Slice,
    (quads_per_chunk, chunk0): (usize, usize),
) -> GemmConvParams {
    let u = |v: usize| v as u32;
    GemmConvParams {
        imgs: u(imgs),
        img0: u(img0),
        ci: u(g.ci),
        h: u(g.h),
        w: u(g.w),
        oh: u(g.oh),
        ow: u(g.ow),
        kh: u(g.kh),
        kw: u(g.kw),
        stride: u(g.stride),
        pad: u(g.pad),
        kpad: u(kpad),
        src_c_total: u(src.total),
        src_c_off: u(src.off),
        co: u(g.co),
        quads_per_chunk: u(quads_per_chunk),
        dy_c_total: u(dys.total),
        dy_c_off: u(dys.off),
        chunk0: u(chunk0),
        _p0: 0,
    }
}

/// Forward as im2col + batched GEMM: out[i][:, dst] = W [co, kpad] * cols[i] + bias.
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd_gemm(
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    prologue: Option<&Storage>,
) -> Result<()> {
    let ktot = g.ci * g.kh * g.kw;
    let kpad = im2col_rows(g);
    let padded;
    let a = if kpad == ktot {
        w.storage()
    } else {
        padded = pad_rows(w, g.co, ktot, kpad)?;
        &padded
    };
    gemm_conv(w.gpu(), g, x, src, a, bias, out, dst, prologue)
}

/// `out[:, dst] = A * im2col(x[:, src]) + bias` per image, A being the weights as [co, kpad].
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_conv(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    a: &Storage,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    prologue: Option<&Storage>,
) -> Result<()> {
    let kpad = im2col_rows(g);
    let ohw = g.oh * g.ow;
    let group = im2col_group(gpu, g);
    for img0 in (0..g.n).step_by(group) {
        let imgs = group.min(g.n - img0);
        let cols = im2col(gpu, g, x, src, prologue, (img0, imgs), false)?;
        let d = BatchedGemm {
            m: g.co,
            n: ohw,
            k: kpad,
            lda: kpad,
            a_batch: 0,
            b_batch: kpad * ohw,
            b_off: 0,
            c_batch: dst.total * ohw,
            c_off: (img0 * dst.total + dst.off) * ohw,
            imgs,
        };
        batched_gemm(gpu, &d, (a, &cols, bias, out), g, None)?;
    }
    Ok(())
}

/// Whether the stride-1 input gradient can run as a convolution of the output gradient
/// (square kernel, padding at most k - 1, vec4 rows of input pixels).
pub(super) fn dgrad_gemm_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    g.stride == 1
        && g.kh == g.kw
        && g.pad < g.kh
        && (g.h * g.w).is_multiple_of(4)
        && cols_fit(gpu, (g.co * g.kh * g.kw).div_ceil(4) * 4, g.h * g.w)
}

/// Stride-1 input gradient as im2col + GEMM: out[:, dst] = conv(dy[:, src], flip(w)^T, pad
/// k - 1 - pad) + bias.
#[allow(clippy::too_many_arguments)]
pub(super) fn dgrad_gemm(
    g: &ConvGeom,
    dy: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
) -> Result<()> {
    let gpu = w.gpu();
    let g2 = g.dgrad_as_forward();
    let kk = g.kh * g.kw;
    let cpad = im2col_rows(&g2);
    let wf = weight_copy(w, "flip_transpose", [g.ci, g.co, cpad, kk, 0, 0, 0, g.ci])?;
    gemm_conv(gpu, &g2, dy, src, &wf, bias, out, dst, None)
}

/// Whether the input gradient can run as GEMM + col2im (any stride): vec4 rows of output
/// pixels and an output-channel count the GEMM's vec4 reduction covers exactly.
pub(super) fn col2im_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    (g.oh * g.ow).is_multiple_of(4)
        && g.co.is_multiple_of(4)
        && cols_fit(gpu, g.ci * g.kh * g.kw, g.oh * g.ow)
}

/// Input gradient as GEMM + col2im: cols[i] = W^T [ci*kh*kw, co] * dy[i][src] per image, then
/// every input pixel gathers its taps from cols (conv_gemm.wgsl `col2im`). `wt` is the weight
/// re-laid out as [ci*kh*kw, round8(co)].
#[allow(clippy::too_many_arguments)]
pub(super) fn dgrad_col2im(
    g: &ConvGeom,
    dy: &Storage,
    src: Slice,
    wt: &Storage,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
) -> Result<()> {
    let gpu = wt.gpu();
    let rows = g.ci * g.kh * g.kw;
    let ohw = g.oh * g.ow;
    let group = (gpu.workspace_bytes() / (4 * rows * ohw)).clamp(1, g.n);
    let zeros = gpu.shared_zeros(rows)?;
    for img0 in (0..g.n).step_by(group) {
        let imgs = group.min(g.n - img0);
        let cols = gpu.alloc(imgs * rows * ohw, &[imgs, rows, ohw])?;
        let d = BatchedGemm {
            m: rows,
            n: ohw,
            k: g.co,
            lda: round8(g.co),
            a_batch: 0,
            b_batch: src.total * ohw,
            b_off: (img0 * src.total + src.off) * ohw,
            c_batch: rows * ohw,
            c_off: 0,
            imgs,
        };
        batched_gemm(gpu, &d, (wt, dy, &zeros, &cols), g, None)?;
        let wg = [(g.h * g.w).div_ceil(64) as u32, g.ci as u32, imgs as u32];
        check_groups(gpu, "conv2d input gradient (col2im)", g, wg)?;
        gpu.dispatch(
            &Kernel::new(&CONV_GEMM, "col2im"),
            gemm_params(g, 0, dst, (img0, imgs), Slice::whole(g.co), (0, 0)).as_words(),
            &[out],
            &[&cols, bias],
            wg,
        )?;
    }
    Ok(())
}
