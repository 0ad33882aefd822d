//! Convolutions (`shaders/conv2d.wgsl`, `shaders/conv2d_wgrad.wgsl`): conv2d and
//! conv_transpose2d with PyTorch semantics (NCHW, weights [out, in, kh, kw] for conv2d and
//! [in, out, kh, kw] for conv_transpose2d), without a materialised im2col.
//!
//! Three kernels serve both ops: `fwd` (conv2d forward; conv_transpose2d's input gradient),
//! `dgrad` (conv2d's input gradient; conv_transpose2d's forward) and `wgrad` (the weight
//! gradient of both, with the roles of input and output gradient swapped for the transpose).

use crate::autodiff::{self, Op};
use crate::autotune;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Storage};
use crate::ops::{reshape, sum};
use crate::shaders::{CONV1X1, CONV2D, CONV2D_WGRAD, LAYOUT};
use crate::tensor::Tensor;

/// Geometry of a convolution: input [n, ci, h, w], output [n, co, oh, ow], kernel kh x kw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    /// Multiply-adds of the forward pass (each direction costs the same).
    pub fn macs(&self) -> usize {
        self.n * self.co * self.oh * self.ow * self.ci * self.kh * self.kw
    }
}

/// A channel slice of an NCHW buffer: channels `off..off + c` of `total`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slice {
    pub total: usize,
    pub off: usize,
}

impl Slice {
    pub fn whole(c: usize) -> Slice {
        Slice { total: c, off: 0 }
    }
}

fn round8(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// Copies conv weights [co, ci, kh, kw] into the layout a kernel blocks over: `[ci*kh*kw,
/// round8(co)]` for `fwd` (`for_dgrad = false`) or `[co*kh*kw, round8(ci)]` for `dgrad`.
fn relayout_weight(w: &Tensor, for_dgrad: bool) -> Result<Storage> {
    let [co, ci, kh, kw] = w.dims4("conv weight")?;
    let kk = kh * kw;
    let (rows, cols, inner, s_outer, s_inner, s_col) = if for_dgrad {
        (co * kk, ci, kk, ci * kk, 1, kk)
    } else {
        (ci * kk, co, kk, kk, 1, ci * kk)
    };
    let cpad = round8(cols);
    let gpu = w.gpu();
    let out = gpu.alloc(rows * cpad, &[rows, cpad])?;
    let params = [rows, cols, cpad, inner, s_outer, s_inner, s_col, 0]
        .into_iter()
        .chain([0; 8])
        .map(|v| v as u32)
        .collect::<Vec<_>>();
    gpu.dispatch(
        &Kernel::new(&LAYOUT, "relayout"),
        &params,
        &[&out],
        &[w.storage()],
        gpu.grid((rows * cpad).div_ceil(256)),
    )?;
    Ok(out)
}

fn params(g: &ConvGeom, cpad: usize, src: Slice, dst: Slice, rows_per_chunk: usize) -> [u32; 20] {
    [
        g.n,
        g.ci,
        g.h,
        g.w,
        g.co,
        g.oh,
        g.ow,
        g.kh,
        g.kw,
        g.stride,
        g.pad,
        cpad,
        src.total,
        src.off,
        dst.total,
        dst.off,
        rows_per_chunk,
        0,
        0,
        0,
    ]
    .map(|v| v as u32)
}

fn check_groups(gpu: &Gpu, op: &'static str, g: &ConvGeom, wg: [u32; 3]) -> Result<()> {
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if wg.iter().any(|&v| v > max) {
        return Err(Error::shape(
            op,
            format!("{g:?} needs {wg:?} workgroups; the adapter allows {max} per dimension"),
        ));
    }
    Ok(())
}

/// The bias storage, or zeros when the layer has none (the kernels always read one).
fn bias_storage(gpu: &Gpu, bias: Option<&Tensor>, c: usize) -> Result<std::sync::Arc<Storage>> {
    match bias {
        Some(b) => Ok(b.storage_arc().clone()),
        None => gpu.shared_zeros(c),
    }
}

/// Forward kernel: `out[:, dst] = conv(src[:, src], w) + bias`; with a `prologue` ([scale;
/// shift] per input channel) the input is read as relu(x * scale + shift).
#[allow(clippy::too_many_arguments)]
fn fwd_direct(
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
        &params(g, round8(g.co), src, dst, 0),
        &[out],
        &[x, &wt, bias, prologue.unwrap_or(bias)],
        wg,
    )
}

/// Input-gradient kernel: `out[:, dst] = conv_transpose(dy[:, src], w) + bias`, out being
/// [n, ci, h, w] of geometry `g`.
#[allow(clippy::too_many_arguments)]
fn dgrad_direct(
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
        &params(g, round8(g.ci), src, dst, 0),
        &[out],
        &[dy, &wt, bias, bias],
        wg,
    )
}

/// Weight gradient [co, ci, kh, kw] of a convolution of geometry `g` from its input `x` and
/// output gradient `dy`; `prologue` as in `fwd_into`. Two blockings (4 x 4 and 8 x 8 output
/// channels x columns per invocation) are chosen between by autotuning.
pub(crate) fn wgrad(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
) -> Result<Tensor> {
    let run = |block: usize| wgrad_blocked(gpu, g, x, src, dy, dys, prologue, block);
    let cands = [("wgrad4", 4usize), ("wgrad8", 8usize)];
    let key = format!(
        "conv-wgrad/k{}s{}/ci{}/co{}/hw{}/n{}/{}",
        g.kh,
        g.stride,
        autotune::bucket(g.ci),
        autotune::bucket(g.co),
        autotune::bucket(g.oh * g.ow),
        autotune::bucket(g.n),
        if prologue.is_some() {
            "prologue"
        } else {
            "plain"
        }
    );
    let block = autotune::choose(gpu, &key, &cands, 0, |b| run(b).map(|_| ()))?;
    run(block)
}

#[allow(clippy::too_many_arguments)]
fn wgrad_blocked(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
    block: usize,
) -> Result<Tensor> {
    let ktot = g.ci * g.kh * g.kw;
    let rows = g.n * g.oh;
    let blocks = ktot.div_ceil(block) * g.co.div_ceil(block);
    // Enough chunks to give ~4096 invocations, each chunk at least one row, partial sums at
    // most 32 MiB, and at most 1024 chunks.
    let by_parallelism = 4096usize.div_ceil(blocks);
    let by_memory = ((32 << 20) / (4 * g.co * ktot)).max(1);
    let chunks = by_parallelism.min(by_memory).min(rows).clamp(1, 1024);
    let rows_per_chunk = rows.div_ceil(chunks);
    let chunks = rows.div_ceil(rows_per_chunk);
    let partial = gpu.alloc(chunks * g.co * ktot, &[chunks, g.co, ktot])?;
    let wg = [
        ktot.div_ceil(block).div_ceil(8) as u32,
        g.co.div_ceil(block).div_ceil(8) as u32,
        chunks as u32,
    ];
    check_groups(gpu, "conv2d weight gradient", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    let entry = if block == 8 { "wgrad8" } else { "wgrad" };
    gpu.dispatch(
        &Kernel::new(&CONV2D_WGRAD, entry).with(&constants),
        &params(g, 0, src, dys, rows_per_chunk),
        &[&partial],
        &[x, dy, prologue.unwrap_or(dy)],
        wg,
    )?;
    let shape = [g.co, g.ci, g.kh, g.kw];
    let partial = Tensor::from_storage(std::sync::Arc::new(partial), &[chunks, g.co * ktot], false);
    if chunks == 1 {
        return reshape(&partial, &shape);
    }
    reshape(&sum(&partial, &[0], false)?, &shape)
}

/// The convolution direction of geometry `g` over whole tensors: [n, co, oh, ow] from the
/// input `x` [n, ci, h, w] (conv2d's forward, conv_transpose2d's input gradient).
fn forward_full(g: &ConvGeom, x: &Storage, w: &Tensor, b: Option<&Tensor>) -> Result<Storage> {
    let gpu = w.gpu();
    let out = gpu.alloc(g.n * g.co * g.oh * g.ow, &[g.n, g.co, g.oh, g.ow])?;
    let bias = bias_storage(gpu, b, g.co)?;
    fwd_into(
        g,
        x,
        Slice::whole(g.ci),
        w,
        &bias,
        &out,
        Slice::whole(g.co),
        None,
    )?;
    Ok(out)
}

/// The transposed direction: [n, ci, h, w] from `y` [n, co, oh, ow] (conv2d's input
/// gradient, conv_transpose2d's forward).
fn transposed_full(g: &ConvGeom, y: &Storage, w: &Tensor, b: Option<&Tensor>) -> Result<Storage> {
    let gpu = w.gpu();
    let out = gpu.alloc(g.n * g.ci * g.h * g.w, &[g.n, g.ci, g.h, g.w])?;
    let bias = bias_storage(gpu, b, g.ci)?;
    dgrad_into(g, y, Slice::whole(g.co), w, &bias, &out, Slice::whole(g.ci))?;
    Ok(out)
}

fn check_bias(op: &'static str, bias: Option<&Tensor>, c: usize) -> Result<()> {
    match bias {
        Some(b) if b.shape() != [c] => Err(Error::shape(
            op,
            format!("bias has shape {:?}, expected [{c}]", b.shape()),
        )),
        _ => Ok(()),
    }
}

/// Output side of a convolution, or an error when the kernel does not fit.
fn conv_out(op: &'static str, size: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
    if stride == 0 {
        return Err(Error::shape(op, "stride must be at least 1"));
    }
    if size + 2 * pad < k {
        return Err(Error::shape(
            op,
            format!("kernel {k} is larger than the padded input {size} + 2 * {pad}"),
        ));
    }
    Ok((size + 2 * pad - k) / stride + 1)
}

/// 2-D convolution, `torch.nn.functional.conv2d(x, w, b, stride, padding)`: x [n, ci, h, w],
/// w [co, ci, kh, kw], b [co].
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let op = "conv2d";
    let [n, ci, h, wd] = x.dims4(op)?;
    let [co, wci, kh, kw] = w.dims4(op)?;
    if wci != ci {
        return Err(Error::shape(
            op,
            format!(
                "input has {ci} channels, weight {:?} expects {wci}",
                w.shape()
            ),
        ));
    }
    check_bias(op, b, co)?;
    let g = ConvGeom {
        n,
        ci,
        h,
        w: wd,
        co,
        oh: conv_out(op, h, kh, stride, padding)?,
        ow: conv_out(op, wd, kw, stride, padding)?,
        kh,
        kw,
        stride,
        pad: padding,
    };
    let out_shape = [n, co, g.oh, g.ow];
    let out = forward_full(&g, x.storage(), w, b)?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(autodiff::track(out, &out_shape, &inputs, || Op::Conv2d {
        x: x.clone(),
        w: w.clone(),
        geom: g,
    }))
}

/// Transposed 2-D convolution, `torch.nn.functional.conv_transpose2d(x, w, b, stride,
/// padding, output_padding)`: x [n, ci, h, w], w [ci, co, kh, kw], b [co]; output side
/// (h - 1) * stride - 2 * padding + kh + output_padding.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    let op = "conv_transpose2d";
    let [n, ci, h, wd] = x.dims4(op)?;
    let [wci, co, kh, kw] = w.dims4(op)?;
    if wci != ci {
        return Err(Error::shape(
            op,
            format!(
                "input has {ci} channels, weight {:?} expects {wci}",
                w.shape()
            ),
        ));
    }
    check_bias(op, b, co)?;
    if stride == 0 || output_padding >= stride {
        return Err(Error::shape(
            op,
            format!("output_padding {output_padding} must be smaller than stride {stride}"),
        ));
    }
    let side = |s: usize, k: usize| -> Result<usize> {
        ((s - 1) * stride + k + output_padding)
            .checked_sub(2 * padding)
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::shape(op, format!("padding {padding} leaves no output")))
    };
    let (oh, ow) = (side(h, kh)?, side(wd, kw)?);
    // As a convolution, the transposed conv's output is the conv's input and vice versa.
    let g = ConvGeom {
        n,
        ci: co,
        h: oh,
        w: ow,
        co: ci,
        oh: h,
        ow: wd,
        kh,
        kw,
        stride,
        pad: padding,
    };
    if conv_out(op, oh, kh, stride, padding)? != h || conv_out(op, ow, kw, stride, padding)? != wd {
        return Err(Error::shape(op, format!("inconsistent geometry {g:?}")));
    }
    let out_shape = [n, co, oh, ow];
    let out = transposed_full(&g, x.storage(), w, b)?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(autodiff::track(out, &out_shape, &inputs, || {
        Op::ConvTranspose2d {
            x: x.clone(),
            w: w.clone(),
            geom: g,
        }
    }))
}

/// Backward of conv2d: gradients of (x, w, b) given the output gradient `gy`.
pub fn conv2d_backward(
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
    want: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    let gpu = x.gpu();
    let gx = if want[0] {
        let out = transposed_full(g, gy.storage(), w, None)?;
        Some(Tensor::from_storage(
            std::sync::Arc::new(out),
            &[g.n, g.ci, g.h, g.w],
            false,
        ))
    } else {
        None
    };
    let gw = if want[1] {
        Some(wgrad(
            gpu,
            g,
            x.storage(),
            Slice::whole(g.ci),
            gy.storage(),
            Slice::whole(g.co),
            None,
        )?)
    } else {
        None
    };
    let gb = if want[2] {
        Some(sum(gy, &[0, 2, 3], false)?)
    } else {
        None
    };
    Ok([gx, gw, gb])
}

/// Backward of conv_transpose2d (geometry `g` as built by `conv_transpose2d`).
pub fn conv_transpose2d_backward(
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
    want: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    let gpu = x.gpu();
    // x is the "output" [n, g.co, g.oh, g.ow] of the equivalent convolution, gy its "input".
    let gx = if want[0] {
        let out = forward_full(g, gy.storage(), w, None)?;
        Some(Tensor::from_storage(
            std::sync::Arc::new(out),
            &[g.n, g.co, g.oh, g.ow],
            false,
        ))
    } else {
        None
    };
    let gw = if want[1] {
        Some(wgrad(
            gpu,
            g,
            gy.storage(),
            Slice::whole(g.ci),
            x.storage(),
            Slice::whole(g.co),
            None,
        )?)
    } else {
        None
    };
    let gb = if want[2] {
        Some(sum(gy, &[0, 2, 3], false)?)
    } else {
        None
    };
    Ok([gx, gw, gb])
}

/// Whether a convolution is a 1x1, stride-1, unpadded one the batched-GEMM kernel can run
/// (`k` is the reduced channel count, which its vec4 loads need a multiple of 4 of).
fn gemm_1x1(g: &ConvGeom, k: usize) -> bool {
    g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad == 0
        && (g.h * g.w).is_multiple_of(4)
        && k.is_multiple_of(4)
}

/// The batched-GEMM kernel: out[n][:, dst] = a (m x k, rows of `lda`) * b[n][src] + bias.
#[allow(clippy::too_many_arguments)]
fn gemm_1x1_run(
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
    let params = [
        m,
        hw,
        k,
        lda,
        src.total * hw,
        src.off * hw,
        dst.total * hw,
        dst.off * hw,
        0,
        0,
        0,
        0,
    ]
    .map(|v| v as u32);
    let wg = [
        (hw / 4).div_ceil(2).div_ceil(8) as u32,
        m.div_ceil(8).div_ceil(8) as u32,
        g.n as u32,
    ];
    check_groups(gpu, "conv1x1", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    gpu.dispatch(
        &Kernel::new(&CONV1X1, "main").with(&constants),
        &params,
        &[out],
        &[a, b, bias, prologue.unwrap_or(bias)],
        wg,
    )
}

/// The kernels a convolution can run on; chosen per adapter and shape class by measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKernel {
    Direct,
    Strip,
    Gemm1x1,
}

/// Whether the strip variant's register window (7 * stride + kw values) fits its 24 slots.
fn strip_fits(g: &ConvGeom) -> bool {
    7 * g.stride + g.kw <= 24
}

fn candidates(g: &ConvGeom, gemm: bool, strip: bool) -> Vec<(&'static str, ConvKernel)> {
    let mut v = vec![("direct", ConvKernel::Direct)];
    if strip && strip_fits(g) {
        v.push(("strip", ConvKernel::Strip));
    }
    if gemm {
        v.push(("gemm1x1", ConvKernel::Gemm1x1));
    }
    v
}

fn class_key(dir: &str, g: &ConvGeom, prologue: bool) -> String {
    format!(
        "conv-{dir}/k{}s{}/ci{}/co{}/hw{}/n{}/{}",
        g.kh,
        g.stride,
        autotune::bucket(g.ci),
        autotune::bucket(g.co),
        autotune::bucket(g.h * g.w),
        autotune::bucket(g.n),
        if prologue { "prologue" } else { "plain" }
    )
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
    let gemm = gemm_1x1(g, g.ci);
    let run = |k: ConvKernel| match k {
        ConvKernel::Direct => fwd_direct(g, x, src, w, bias, out, dst, prologue, false),
        ConvKernel::Strip => fwd_direct(g, x, src, w, bias, out, dst, prologue, true),
        ConvKernel::Gemm1x1 => gemm_1x1_run(
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
    };
    let cands = candidates(g, gemm, true);
    if cands.len() == 1 {
        return run(ConvKernel::Direct);
    }
    // Without measurements: the GEMM where it applies, else the direct kernel.
    let default = if gemm { cands.len() - 1 } else { 0 };
    let k = autotune::choose(
        gpu,
        &class_key("fwd", g, prologue.is_some()),
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
    let gemm = gemm_1x1(g, g.co);
    let strip = g.stride == 1 && 7 + g.kw <= 24;
    let cands = candidates(g, gemm, strip);
    if cands.len() == 1 {
        return dgrad_direct(g, dy, src, w, bias, out, dst, false);
    }
    // A = w^T as [ci, round8(co)], the forward kernel's weight layout (for the 1x1 GEMM).
    let wt = if gemm {
        Some(relayout_weight(w, false)?)
    } else {
        None
    };
    let run = |k: ConvKernel| match (k, &wt) {
        (ConvKernel::Direct, _) | (ConvKernel::Gemm1x1, None) => {
            dgrad_direct(g, dy, src, w, bias, out, dst, false)
        }
        (ConvKernel::Strip, _) => dgrad_direct(g, dy, src, w, bias, out, dst, true),
        (ConvKernel::Gemm1x1, Some(wt)) => gemm_1x1_run(
            gpu,
            (g.ci, g.co, round8(g.co)),
            wt,
            dy,
            src,
            bias,
            out,
            dst,
            g,
            None,
        ),
    };
    let default = if gemm { cands.len() - 1 } else { 0 };
    let k = autotune::choose(gpu, &class_key("dgrad", g, false), &cands, default, run)?;
    run(k)
}

/// The kernel a convolution direction ("fwd" or "dgrad") of geometry `g` runs with: the
/// autotuner's choice where several apply (after the first call), else the only one.
pub fn kernel_name(gpu: &Gpu, g: &ConvGeom, dir: &str, prologue: bool) -> String {
    let k = if dir == "fwd" { g.ci } else { g.co };
    let gemm = gemm_1x1(g, k);
    let direct = if dir == "fwd" {
        "conv2d.fwd (direct, 8x4)"
    } else {
        "conv2d.dgrad (direct)"
    };
    let several = gemm
        || if dir == "fwd" {
            strip_fits(g)
        } else {
            g.stride == 1 && 7 + g.kw <= 24
        };
    if !several {
        return direct.into();
    }
    match autotune::cached_choice(gpu, &class_key(dir, g, prologue)).as_deref() {
        Some("gemm1x1") => "conv1x1 (batched GEMM)".into(),
        Some("strip") if dir == "fwd" => "conv2d.fwd_strip (8x8, row strip)".into(),
        Some("strip") => "conv2d.dgrad_strip (8x8, row strip)".into(),
        Some(_) => direct.into(),
        None if gemm => "conv1x1 (batched GEMM, default)".into(),
        None => format!("{direct}, default"),
    }
}

/// The weight-gradient blocking the autotuner chose for `g` (after the first call).
pub fn wgrad_kernel_name(gpu: &Gpu, g: &ConvGeom, prologue: bool) -> String {
    let key = format!(
        "conv-wgrad/k{}s{}/ci{}/co{}/hw{}/n{}/{}",
        g.kh,
        g.stride,
        autotune::bucket(g.ci),
        autotune::bucket(g.co),
        autotune::bucket(g.oh * g.ow),
        autotune::bucket(g.n),
        if prologue { "prologue" } else { "plain" }
    );
    match autotune::cached_choice(gpu, &key).as_deref() {
        Some("wgrad8") => "conv2d_wgrad (8x8, split rows)".into(),
        _ => "conv2d_wgrad (4x4, split rows)".into(),
    }
}
