//! Upsampling (`shaders/resample.wgsl`): nearest and bilinear resizing to any output size,
//! as `torch.nn.functional.interpolate(x, size, mode, align_corners=False)`. A 2-D resize is a
//! 1-D resampling along W followed by one along H (both modes are separable).

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelParams};
use crate::ops;
use crate::shaders::RESAMPLE;
use crate::tensor::{numel, Tensor};

/// Interpolation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Bilinear,
}

crate::kernel_params! {
    /// The parameter block of `resample.wgsl`.
    pub struct ResampleParams {
        outer: u32, in_len: u32, out_len: u32, inner: u32,
        mode: u32, _p0: u32, scale: f32, _p1: f32,
    }
}

/// Resampling `in_len` entries to `out_len` along an axis with `outer` blocks before it and
/// `inner` entries after it.
fn params(
    outer: usize,
    in_len: usize,
    out_len: usize,
    inner: usize,
    mode: Interpolation,
) -> ResampleParams {
    ResampleParams {
        outer: outer as u32,
        in_len: in_len as u32,
        out_len: out_len as u32,
        inner: inner as u32,
        mode: (mode == Interpolation::Bilinear) as u32,
        scale: in_len as f32 / out_len as f32,
        ..Default::default()
    }
}

/// Resamples `axis` of `x` to `out_len` entries.
pub fn resample1d(x: &Tensor, axis: usize, out_len: usize, mode: Interpolation) -> Result<Tensor> {
    let op = "resample";
    if axis >= x.rank() {
        return Err(Error::shape(
            op,
            format!("axis {axis} out of range for {:?}", x.shape()),
        ));
    }
    let in_len = x.shape()[axis];
    if in_len == 0 || out_len == 0 {
        return Err(Error::shape(
            op,
            format!("cannot resize {in_len} entries to {out_len}"),
        ));
    }
    let outer = numel(&x.shape()[..axis]);
    let inner = numel(&x.shape()[axis + 1..]);
    let mut shape = x.shape().to_vec();
    shape[axis] = out_len;
    let gpu = x.gpu();
    let n = outer * out_len * inner;
    let out = gpu.alloc(n, &shape)?;
    gpu.dispatch(
        &Kernel::new(&RESAMPLE, "fwd"),
        params(outer, in_len, out_len, inner, mode).as_words(),
        &[&out],
        &[x.storage()],
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(autodiff::track(out, &shape, &[x], || Resample1d {
        axis,
        in_len,
        mode,
    }))
}

/// Input gradient of `resample1d`.
pub(crate) fn resample1d_backward(
    gy: &Tensor,
    axis: usize,
    in_len: usize,
    mode: Interpolation,
) -> Result<Tensor> {
    let out_len = gy.shape()[axis];
    let outer = numel(&gy.shape()[..axis]);
    let inner = numel(&gy.shape()[axis + 1..]);
    let mut shape = gy.shape().to_vec();
    shape[axis] = in_len;
    let gpu = gy.gpu();
    let n = outer * in_len * inner;
    let dx = gpu.alloc(n, &shape)?;
    gpu.dispatch(
        &Kernel::new(&RESAMPLE, "bwd"),
        params(outer, in_len, out_len, inner, mode).as_words(),
        &[&dx],
        &[gy.storage()],
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(Tensor::from_storage(std::sync::Arc::new(dx), &shape, false))
}

/// Resizes an NCHW tensor to `[oh, ow]`.
pub fn upsample2d(x: &Tensor, size: [usize; 2], mode: Interpolation) -> Result<Tensor> {
    let [_, _, h, w] = x.dims4("upsample2d")?;
    let y = if w == size[1] {
        x.clone()
    } else {
        resample1d(x, 3, size[1], mode)?
    };
    if h == size[0] {
        Ok(y)
    } else {
        resample1d(&y, 2, size[0], mode)
    }
}

/// `interpolate(x, size, mode="nearest")`.
pub fn upsample_nearest2d(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    upsample2d(x, size, Interpolation::Nearest)
}

/// `interpolate(x, size, mode="bilinear", align_corners=False)`.
pub fn upsample_bilinear2d(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    upsample2d(x, size, Interpolation::Bilinear)
}

/// 1-D resampling of `axis` from `in_len` entries.
pub(crate) struct Resample1d {
    pub(crate) axis: usize,
    pub(crate) in_len: usize,
    pub(crate) mode: ops::Interpolation,
}

impl Backward for Resample1d {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Resample1d {
            axis, in_len, mode, ..
        } = self;
        Ok(vec![Some(ops::resample::resample1d_backward(
            g, *axis, *in_len, *mode,
        )?)])
    }
}
