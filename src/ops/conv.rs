//! Convolutions (`shaders/conv2d.wgsl`, `shaders/conv2d_wgrad.wgsl`): conv2d and
//! conv_transpose2d with PyTorch semantics (NCHW, weights [out, in, kh, kw] for conv2d and
//! [in, out, kh, kw] for conv_transpose2d), without a materialised im2col.
//!
//! Three kernels serve both ops: `fwd` (conv2d forward; conv_transpose2d's input gradient),
//! `dgrad` (conv2d's input gradient; conv_transpose2d's forward) and `wgrad` (the weight
//! gradient of both, with the roles of input and output gradient swapped for the transpose).

use crate::autodiff::{self, Op};
use crate::error::{Error, Result};
use crate::gpu::autotune;
use crate::gpu::{Gpu, Kernel, Storage};
use crate::ops::{reshape, sum};
use crate::shaders::{
    CONV1X1, CONV1X1_SUBGROUP, CONV2D, CONV2D_WGRAD, CONV_GEMM, CONV_GEMM_SUBGROUP, LAYOUT,
};
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
    if for_dgrad {
        weight_copy(
            w,
            "relayout",
            [co * kk, ci, round8(ci), kk, ci * kk, 1, kk, co],
        )
    } else {
        weight_copy(
            w,
            "relayout",
            [ci * kk, co, round8(co), kk, kk, 1, ci * kk, ci],
        )
    }
}

/// One weight-copy kernel of layout.wgsl (`relayout` or `flip_transpose`) over `w`, with its
/// parameters `[rows, cols, cpad, inner, s_outer, s_inner, s_col, outer]`: a [rows, cpad]
/// result on a grid of (cpad / 64, inner, outer) workgroups (`flip_transpose`: (cpad / 64,
/// outer, 1)).
fn weight_copy(w: &Tensor, entry: &'static str, p: [usize; 8]) -> Result<Storage> {
    let [rows, _, cpad, inner, _, _, _, outer] = p;
    let gpu = w.gpu();
    let grid = if entry == "flip_transpose" {
        [cpad.div_ceil(64) as u32, outer as u32, 1]
    } else {
        [cpad.div_ceil(64) as u32, inner as u32, outer as u32]
    };
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if grid.iter().any(|&v| v > max) {
        return Err(Error::shape(
            "conv weight",
            format!(
                "{:?} needs {grid:?} workgroups; the adapter allows {max} per dimension",
                w.shape()
            ),
        ));
    }
    let out = gpu.alloc(rows * cpad, &[rows, cpad])?;
    let params: Vec<u32> = p.into_iter().chain([0; 8]).map(|v| v as u32).collect();
    gpu.dispatch(
        &Kernel::new(&LAYOUT, entry),
        &params,
        &[&out],
        &[w.storage()],
        grid,
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
    // block 0: the im2col GEMM; 1: its subgroup variant; 4, 8: the direct blockings.
    let run = |block: usize| {
        if block <= 1 {
            wgrad_gemm(gpu, g, x, src, dy, dys, prologue, block == 1)
        } else {
            wgrad_blocked(gpu, g, x, src, dy, dys, prologue, block)
        }
    };
    let mut cands = vec![("wgrad4", 4usize), ("wgrad8", 8usize)];
    if im2col_fits(gpu, g) {
        cands.push(("gemm", 0));
        if gpu.has_subgroups() {
            cands.push(("gemm_sg", 1));
        }
    }
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
    let block = autotune::choose(gpu, &key, WGRAD_VARIANTS, &cands, 0, |b| run(b).map(|_| ()))?;
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

/// One call of the batched GEMM kernel (conv1x1.wgsl): for each of `imgs` images i,
/// `c[i] (m x n) = a (m x k, rows of lda) * b[i] (k x n) + bias`, where b[i] starts at element
/// `i * b_batch + b_off` and c[i] at `i * c_batch + c_off` (all multiples of 4).
struct BatchedGemm {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    b_batch: usize,
    b_off: usize,
    c_batch: usize,
    c_off: usize,
    imgs: usize,
}

fn batched_gemm(
    gpu: &Gpu,
    d: &BatchedGemm,
    (a, b, bias, out): (&Storage, &Storage, &Storage, &Storage),
    g: &ConvGeom,
    prologue: Option<&Storage>,
) -> Result<()> {
    let params = [
        d.m, d.n, d.k, d.lda, d.b_batch, d.b_off, d.c_batch, d.c_off, 0, 0, 0, 0,
    ]
    .map(|v| v as u32);
    let wg = [
        (d.n / 4).div_ceil(2).div_ceil(8) as u32,
        d.m.div_ceil(8).div_ceil(8) as u32,
        d.imgs as u32,
    ];
    check_groups(gpu, "conv (batched GEMM)", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    let run = |shader: &'static crate::gpu::Shader| {
        gpu.dispatch(
            &Kernel::new(shader, "main").with(&constants),
            &params,
            &[out],
            &[a, b, bias, prologue.unwrap_or(bias)],
            wg,
        )
    };
    if !gpu.has_subgroups() {
        return run(&CONV1X1);
    }
    let key = format!(
        "gemm-batched/m{}/n{}/k{}/i{}",
        autotune::bucket(d.m),
        autotune::bucket(d.n),
        autotune::bucket(d.k),
        autotune::bucket(d.imgs)
    );
    let cands = [("vec4", &CONV1X1), ("subgroup", &CONV1X1_SUBGROUP)];
    let shader = autotune::choose(gpu, &key, &["vec4", "subgroup"], &cands, 0, run)?;
    run(shader)
}

/// The batched-GEMM kernel for a 1x1 convolution: out[n][:, dst] = a (m x k, rows of `lda`) *
/// b[n][src] + bias.
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
    let d = BatchedGemm {
        m,
        n: hw,
        k,
        lda,
        b_batch: src.total * hw,
        b_off: src.off * hw,
        c_batch: dst.total * hw,
        c_off: dst.off * hw,
        imgs: g.n,
    };
    batched_gemm(gpu, &d, (a, b, bias, out), g, prologue)
}

/// Rows of the im2col buffer: ci * kh * kw rounded up to 4 (the GEMMs read vec4 rows).
fn im2col_rows(g: &ConvGeom) -> usize {
    (g.ci * g.kh * g.kw).div_ceil(4) * 4
}

/// Whether one image's column buffer of `rows` x `pixels` fits the workspace and one storage
/// binding (larger ones would need a split over pixels; those shapes keep the direct kernels).
fn cols_fit(gpu: &Gpu, rows: usize, pixels: usize) -> bool {
    let bytes = 4 * rows * pixels;
    bytes <= gpu.workspace_bytes() && bytes / 4 <= gpu.max_binding_elems()
}

/// Whether the im2col + GEMM path applies: vec4 rows of output pixels, one image's im2col
/// buffer within the workspace.
fn im2col_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    (g.oh * g.ow).is_multiple_of(4) && cols_fit(gpu, im2col_rows(g), g.oh * g.ow)
}

/// Images per im2col buffer (at most the context's workspace), at least one.
fn im2col_group(gpu: &Gpu, g: &ConvGeom) -> usize {
    (gpu.workspace_bytes() / (4 * im2col_rows(g) * g.oh * g.ow)).clamp(1, g.n)
}

/// The im2col buffer of images `img0..img0 + imgs` of `x` (channel slice `src`), as
/// [imgs, kpad, oh*ow] or, `transposed`, [imgs, oh*ow, kpad] (see conv_gemm.wgsl).
#[allow(clippy::too_many_arguments)]
fn im2col(
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
    let wg = [ohw.div_ceil(64) as u32, g.ci as u32, imgs as u32];
    check_groups(gpu, "im2col", g, wg)?;
    let constants = [
        ("PROLOGUE", prologue.is_some() as u32 as f64),
        ("TRANSPOSED", transposed as u32 as f64),
    ];
    gpu.dispatch(
        &Kernel::new(&CONV_GEMM, "im2col").with(&constants),
        &params,
        &[&cols],
        &[x, prologue.unwrap_or(x)],
        wg,
    )?;
    Ok(cols)
}

/// The parameter block of conv_gemm.wgsl.
fn gemm_params(
    g: &ConvGeom,
    kpad: usize,
    src: Slice,
    (img0, imgs): (usize, usize),
    dys: Slice,
    (quads_per_chunk, chunk0): (usize, usize),
) -> [u32; 20] {
    [
        imgs,
        img0,
        g.ci,
        g.h,
        g.w,
        g.oh,
        g.ow,
        g.kh,
        g.kw,
        g.stride,
        g.pad,
        kpad,
        src.total,
        src.off,
        g.co,
        quads_per_chunk,
        dys.total,
        dys.off,
        chunk0,
        0,
    ]
    .map(|v| v as u32)
}

/// Forward as im2col + batched GEMM: out[i][:, dst] = W [co, kpad] * cols[i] + bias.
#[allow(clippy::too_many_arguments)]
fn fwd_gemm(
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
fn gemm_conv(
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
fn dgrad_gemm_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    g.stride == 1
        && g.kh == g.kw
        && g.pad < g.kh
        && (g.h * g.w).is_multiple_of(4)
        && cols_fit(gpu, (g.co * g.kh * g.kw).div_ceil(4) * 4, g.h * g.w)
}

/// Stride-1 input gradient as im2col + GEMM: out[:, dst] = conv(dy[:, src], flip(w)^T, pad
/// k - 1 - pad) + bias.
#[allow(clippy::too_many_arguments)]
fn dgrad_gemm(
    g: &ConvGeom,
    dy: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
) -> Result<()> {
    let gpu = w.gpu();
    let g2 = ConvGeom {
        n: g.n,
        ci: g.co,
        h: g.oh,
        w: g.ow,
        co: g.ci,
        oh: g.h,
        ow: g.w,
        kh: g.kh,
        kw: g.kw,
        stride: 1,
        pad: g.kh - 1 - g.pad,
    };
    let kk = g.kh * g.kw;
    let cpad = im2col_rows(&g2);
    let wf = weight_copy(w, "flip_transpose", [g.ci, g.co, cpad, kk, 0, 0, 0, g.ci])?;
    gemm_conv(gpu, &g2, dy, src, &wf, bias, out, dst, None)
}

/// Whether the input gradient can run as GEMM + col2im (any stride): vec4 rows of output
/// pixels and an output-channel count the GEMM's vec4 reduction covers exactly.
fn col2im_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    (g.oh * g.ow).is_multiple_of(4)
        && g.co.is_multiple_of(4)
        && cols_fit(gpu, g.ci * g.kh * g.kw, g.oh * g.ow)
}

/// Input gradient as GEMM + col2im: cols[i] = W^T [ci*kh*kw, co] * dy[i][src] per image, then
/// every input pixel gathers its taps from cols (conv_gemm.wgsl `col2im`). `wt` is the weight
/// re-laid out as [ci*kh*kw, round8(co)].
#[allow(clippy::too_many_arguments)]
fn dgrad_col2im(
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
            &gemm_params(g, 0, dst, (img0, imgs), Slice::whole(g.co), (0, 0)),
            &[out],
            &[&cols, bias],
            wg,
        )?;
    }
    Ok(())
}

/// Weights [rows, cols] copied into [rows, cpad] with zero columns after `cols`.
fn pad_rows(w: &Tensor, rows: usize, cols: usize, cpad: usize) -> Result<Storage> {
    weight_copy(w, "relayout", [rows, cols, cpad, 1, cols, 0, 1, rows])
}

/// Weight gradient as transposed im2col + GEMM (conv_gemm.wgsl `wgrad_gemm`, or with
/// `subgroup` conv_gemm_subgroup.wgsl's): partial sums over chunks of (image, pixel quad)
/// pairs, added up; the padded taps are dropped.
#[allow(clippy::too_many_arguments)]
fn wgrad_gemm(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
    subgroup: bool,
) -> Result<Tensor> {
    let ktot = g.ci * g.kh * g.kw;
    let kpad = im2col_rows(g);
    let q_img = g.oh * g.ow / 4;
    let group = im2col_group(gpu, g);
    let blocks = (kpad / 4).div_ceil(2) * g.co.div_ceil(8);
    // Chunks per image group: ~4096 invocations in all, partial sums at most 32 MiB.
    let by_parallelism = 4096usize.div_ceil(blocks);
    let by_memory = ((32 << 20) / (4 * g.co * kpad) / g.n.div_ceil(group)).max(1);
    let plan: Vec<(usize, usize, usize)> = (0..g.n)
        .step_by(group)
        .map(|img0| {
            let imgs = group.min(g.n - img0);
            let quads = imgs * q_img;
            let chunks = by_parallelism.min(by_memory).clamp(1, quads.max(1));
            let per_chunk = quads.div_ceil(chunks);
            (img0, imgs, per_chunk)
        })
        .collect();
    let chunks_of = |imgs: usize, per: usize| (imgs * q_img).div_ceil(per);
    let total_chunks: usize = plan.iter().map(|&(_, i, p)| chunks_of(i, p)).sum();
    let partial = gpu.alloc(total_chunks * g.co * kpad, &[total_chunks, g.co, kpad])?;
    let mut chunk0 = 0;
    for &(img0, imgs, per_chunk) in &plan {
        let cols = im2col(gpu, g, x, src, prologue, (img0, imgs), true)?;
        let chunks = chunks_of(imgs, per_chunk);
        let wg = [
            (kpad / 4).div_ceil(2).div_ceil(8) as u32,
            g.co.div_ceil(8).div_ceil(8) as u32,
            chunks as u32,
        ];
        check_groups(gpu, "conv2d weight gradient", g, wg)?;
        let shader = if subgroup {
            &CONV_GEMM_SUBGROUP
        } else {
            &CONV_GEMM
        };
        gpu.dispatch(
            &Kernel::new(shader, "wgrad_gemm"),
            &gemm_params(g, kpad, src, (img0, imgs), dys, (per_chunk, chunk0)),
            &[&partial],
            &[dy, &cols],
            wg,
        )?;
        chunk0 += chunks;
    }
    let partial = Tensor::from_storage(
        std::sync::Arc::new(partial),
        &[total_chunks, g.co * kpad],
        false,
    );
    let summed = if total_chunks == 1 {
        reshape(&partial, &[g.co, kpad])?
    } else {
        reshape(&sum(&partial, &[0], false)?, &[g.co, kpad])?
    };
    let shape = [g.co, g.ci, g.kh, g.kw];
    if kpad == ktot {
        reshape(&summed, &shape)
    } else {
        reshape(&crate::ops::narrow(&summed, 1, 0, ktot)?, &shape)
    }
}

/// The kernels a convolution can run on; chosen per adapter and shape class by measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKernel {
    Direct,
    Strip,
    Gemm1x1,
    Im2col,
    Col2im,
}

/// Whether the strip variant's register window (7 * stride + kw values) fits its 24 slots.
fn strip_fits(g: &ConvGeom) -> bool {
    7 * g.stride + g.kw <= 24
}

/// Every variant name of the forward and input-gradient convolutions (what `APGA_KERNELS`
/// may force), whatever a given shape offers.
const CONV_VARIANTS: &[&str] = &["direct", "strip", "gemm1x1", "im2col", "col2im"];
/// Every variant name of the weight-gradient convolution.
const WGRAD_VARIANTS: &[&str] = &["wgrad4", "wgrad8", "gemm", "gemm_sg"];

fn candidates(
    g: &ConvGeom,
    gemm: bool,
    strip: bool,
    im2col: bool,
    col2im: bool,
) -> Vec<(&'static str, ConvKernel)> {
    let mut v = vec![("direct", ConvKernel::Direct)];
    if strip && strip_fits(g) {
        v.push(("strip", ConvKernel::Strip));
    }
    if gemm {
        v.push(("gemm1x1", ConvKernel::Gemm1x1));
    } else if im2col {
        v.push(("im2col", ConvKernel::Im2col));
    }
    if col2im && !gemm {
        v.push(("col2im", ConvKernel::Col2im));
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
        ConvKernel::Im2col => fwd_gemm(g, x, src, w, bias, out, dst, prologue),
        // col2im is an input-gradient variant; the forward never offers it.
        ConvKernel::Col2im => fwd_direct(g, x, src, w, bias, out, dst, prologue, false),
    };
    let cands = candidates(g, gemm, true, im2col_fits(gpu, g), false);
    if cands.len() == 1 {
        return run(ConvKernel::Direct);
    }
    // Without measurements: the GEMM where it applies, else the direct kernel.
    let default = if gemm { cands.len() - 1 } else { 0 };
    let k = autotune::choose(
        gpu,
        &class_key("fwd", g, prologue.is_some()),
        CONV_VARIANTS,
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
    let cands = candidates(g, gemm, strip, dgrad_gemm_fits(gpu, g), col2im_fits(gpu, g));
    if cands.len() == 1 {
        return dgrad_direct(g, dy, src, w, bias, out, dst, false);
    }
    // The 1x1 GEMM and col2im read A = w^T as [ci, round8(co)] (the forward kernel's weight
    // layout), re-laid out only when one of them runs, not before the choice.
    let run = |k: ConvKernel| match k {
        ConvKernel::Im2col => dgrad_gemm(g, dy, src, w, bias, out, dst),
        ConvKernel::Col2im => dgrad_col2im(g, dy, src, &relayout_weight(w, false)?, bias, out, dst),
        ConvKernel::Direct => dgrad_direct(g, dy, src, w, bias, out, dst, false),
        ConvKernel::Strip => dgrad_direct(g, dy, src, w, bias, out, dst, true),
        ConvKernel::Gemm1x1 => gemm_1x1_run(
            gpu,
            (g.ci, g.co, round8(g.co)),
            &relayout_weight(w, false)?,
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
    let k = autotune::choose(
        gpu,
        &class_key("dgrad", g, false),
        CONV_VARIANTS,
        &cands,
        default,
        run,
    )?;
    run(k)
}

/// The kernel a convolution direction ("fwd" or "dgrad") of geometry `g` runs with: the
/// autotuner's choice where several apply (after the first call), else the only one.
pub fn kernel_name(gpu: &Gpu, g: &ConvGeom, dir: &str, prologue: bool) -> String {
    let fwd = dir == "fwd";
    let cands = if fwd {
        candidates(g, gemm_1x1(g, g.ci), true, im2col_fits(gpu, g), false)
    } else {
        candidates(
            g,
            gemm_1x1(g, g.co),
            g.stride == 1 && 7 + g.kw <= 24,
            dgrad_gemm_fits(gpu, g),
            col2im_fits(gpu, g),
        )
    };
    let direct = if fwd {
        "conv2d.fwd (direct, 8x4)"
    } else {
        "conv2d.dgrad (direct)"
    };
    if cands.len() == 1 {
        return direct.into();
    }
    match autotune::cached_choice(gpu, &class_key(dir, g, prologue)).as_deref() {
        Some("gemm1x1") => "conv1x1 (batched GEMM)".into(),
        Some("im2col") => "conv_gemm.im2col + batched GEMM".into(),
        Some("col2im") => "batched GEMM + conv_gemm.col2im".into(),
        Some("strip") if fwd => "conv2d.fwd_strip (8x8, row strip)".into(),
        Some("strip") => "conv2d.dgrad_strip (8x8, row strip)".into(),
        Some(_) => direct.into(),
        None if gemm_1x1(g, if fwd { g.ci } else { g.co }) => {
            "conv1x1 (batched GEMM, default)".into()
        }
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
        Some("gemm") => "conv_gemm.wgrad_gemm (im2col^T + GEMM)".into(),
        Some("gemm_sg") => "conv_gemm_subgroup.wgrad_gemm (im2col^T + GEMM)".into(),
        _ => "conv2d_wgrad (4x4, split rows)".into(),
    }
}
