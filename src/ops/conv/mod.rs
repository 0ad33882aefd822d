//! Convolutions (`shaders/conv2d.wgsl`, `shaders/conv2d_wgrad.wgsl`): conv2d and
//! conv_transpose2d with PyTorch semantics (NCHW, weights [out, in, kh, kw] for conv2d and
//! [in, out, kh, kw] for conv_transpose2d), without a materialised im2col.
//!
//! Three kernels serve both ops: `fwd` (conv2d forward; conv_transpose2d's input gradient),
//! `dgrad` (conv2d's input gradient; conv_transpose2d's forward) and `wgrad` (the weight
//! gradient of both, with the roles of input and output gradient swapped for the transpose).
//!
//! Filed by concept: this file holds the geometry and the public ops; `backward.rs` their
//! gradients; `direct.rs`, `gemm.rs` and `wgrad.rs` the kernel strategies; `weights.rs` the
//! weight re-layouts; `variant.rs` the choice among strategies (candidates, autotune key,
//! profiler names).

use crate::autodiff;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Storage};
use crate::tensor::Tensor;

mod backward;
mod batched;
mod direct;
mod gemm;
mod variant;
mod weights;
mod wgrad;
mod winograd;

pub use backward::{conv2d_backward, conv_transpose2d_backward};
pub use batched::BatchedGemmParams;
pub use direct::ConvParams;
pub use gemm::GemmConvParams;
pub(crate) use variant::{dgrad_into, fwd_into};
pub use variant::{kernel_name, Dir};
pub(crate) use wgrad::wgrad;
pub use winograd::WinogradParams;

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

    /// The stride-1 input gradient as a forward convolution: conv2d's input gradient is
    /// conv(dy, flip(w)^T) with padding k - 1 - pad, from [n, co, oh, ow] to [n, ci, h, w]
    /// (the im2col and Winograd input-gradient paths).
    pub(crate) fn dgrad_as_forward(&self) -> ConvGeom {
        ConvGeom {
            n: self.n,
            ci: self.co,
            h: self.oh,
            w: self.ow,
            co: self.ci,
            oh: self.h,
            ow: self.w,
            kh: self.kh,
            kw: self.kw,
            stride: 1,
            pad: self.kh.saturating_sub(1 + self.pad),
        }
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

pub(super) fn round8(c: usize) -> usize {
    c.div_ceil(8) * 8
}

pub(super) fn check_groups(gpu: &Gpu, op: &'static str, g: &ConvGeom, wg: [u32; 3]) -> Result<()> {
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
pub(super) fn bias_storage(
    gpu: &Gpu,
    bias: Option<&Tensor>,
    c: usize,
) -> Result<std::sync::Arc<Storage>> {
    match bias {
        Some(b) => Ok(b.storage_arc().clone()),
        None => gpu.shared_zeros(c),
    }
}

/// The convolution direction of geometry `g` over whole tensors: [n, co, oh, ow] from the
/// input `x` [n, ci, h, w] (conv2d's forward, conv_transpose2d's input gradient).
pub(super) fn forward_full(
    g: &ConvGeom,
    x: &Storage,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Storage> {
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
pub(super) fn transposed_full(
    g: &ConvGeom,
    y: &Storage,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Storage> {
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

/// The weight's input channels `wci` match the input's `ci`, and the bias has `co` entries.
fn check_operands(
    op: &'static str,
    ci: usize,
    wci: usize,
    w: &Tensor,
    b: Option<&Tensor>,
    co: usize,
) -> Result<()> {
    if wci != ci {
        return Err(Error::shape(
            op,
            format!(
                "input has {ci} channels, weight {:?} expects {wci}",
                w.shape()
            ),
        ));
    }
    check_bias(op, b, co)
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
/// w `[co, ci, kh, kw]`, b `[co]`.
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
    check_operands(op, ci, wci, w, b, co)?;
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
    Ok(autodiff::track(out, &out_shape, &inputs, || {
        backward::ConvRule {
            which: backward::Which::Conv,
            x: x.clone(),
            w: w.clone(),
            geom: g,
        }
    }))
}

/// Transposed 2-D convolution, `torch.nn.functional.conv_transpose2d(x, w, b, stride,
/// padding, output_padding)`: x `[n, ci, h, w]`, w `[ci, co, kh, kw]`, b `[co]`; output side
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
    check_operands(op, ci, wci, w, b, co)?;
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
        backward::ConvRule {
            which: backward::Which::Transpose,
            x: x.clone(),
            w: w.clone(),
            geom: g,
        }
    }))
}
