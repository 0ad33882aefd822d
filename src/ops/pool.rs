//! Pooling (`shaders/pool.wgsl`): max and average pooling with PyTorch semantics
//! (ceil_mode = false; average with count_include_pad = true), and global average pooling.

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelParams};
use crate::ops;
use crate::shaders::POOL;
use crate::tensor::Tensor;
use ops::mean;

/// Window geometry of a pooling op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl PoolGeom {
    fn params(&self) -> PoolParams {
        let u = |v: usize| v as u32;
        PoolParams {
            planes: u(self.planes),
            h: u(self.h),
            w: u(self.w),
            oh: u(self.oh),
            ow: u(self.ow),
            k: u(self.k),
            stride: u(self.stride),
            pad: u(self.pad),
        }
    }
}

crate::kernel_params! {
    /// The parameter block of `pool.wgsl`.
    pub struct PoolParams {
        planes: u32, h: u32, w: u32, oh: u32,
        ow: u32, k: u32, stride: u32, pad: u32,
    }
}

fn geom(op: &'static str, x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<PoolGeom> {
    let [n, c, h, w] = x.dims4(op)?;
    if k == 0 || stride == 0 {
        return Err(Error::shape(
            op,
            "kernel size and stride must be at least 1",
        ));
    }
    if 2 * pad > k {
        return Err(Error::shape(
            op,
            format!("padding {pad} must be at most half the kernel size {k}"),
        ));
    }
    if h + 2 * pad < k || w + 2 * pad < k {
        return Err(Error::shape(
            op,
            format!("kernel {k} is larger than the padded input {:?}", x.shape()),
        ));
    }
    Ok(PoolGeom {
        planes: n * c,
        h,
        w,
        oh: (h + 2 * pad - k) / stride + 1,
        ow: (w + 2 * pad - k) / stride + 1,
        k,
        stride,
        pad,
    })
}

fn out_shape(x: &Tensor, g: &PoolGeom) -> [usize; 4] {
    [x.shape()[0], x.shape()[1], g.oh, g.ow]
}

/// `torch.nn.functional.max_pool2d(x, k, stride, padding)`.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let g = geom("max_pool2d", x, k, stride, padding)?;
    let gpu = x.gpu();
    let shape = out_shape(x, &g);
    if k > 16 {
        return Err(Error::shape(
            "max_pool2d",
            format!("kernel {k} is larger than 16 (window positions are saved as bytes)"),
        ));
    }
    let n = g.planes * g.oh * g.ow;
    let out = gpu.alloc(n, &shape)?;
    // Window positions of the maxima, one byte per output, four per 32-bit word.
    let words = n.div_ceil(4);
    let argmax = gpu.alloc(words, &[words])?;
    gpu.dispatch(
        &Kernel::new(&POOL, "max_fwd"),
        g.params().as_words(),
        &[&out, &argmax],
        &[x.storage()],
        gpu.grid(words.div_ceil(256)),
    )?;
    let argmax = Tensor::from_storage(std::sync::Arc::new(argmax), &[words], false);
    Ok(autodiff::track(out, &shape, &[x], || MaxPool2d {
        argmax,
        geom: g,
    }))
}

/// `torch.nn.functional.avg_pool2d(x, k, stride, padding)` (count_include_pad = true).
pub fn avg_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let g = geom("avg_pool2d", x, k, stride, padding)?;
    let gpu = x.gpu();
    let shape = out_shape(x, &g);
    let n = g.planes * g.oh * g.ow;
    let out = gpu.alloc(n, &shape)?;
    gpu.dispatch(
        &Kernel::new(&POOL, "avg_fwd"),
        g.params().as_words(),
        &[&out],
        &[x.storage()],
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(autodiff::track(out, &shape, &[x], || AvgPool2d { geom: g }))
}

/// Global average pooling to [n, c, 1, 1] (`adaptive_avg_pool2d(x, 1)`).
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    x.dims4("global_avg_pool2d")?;
    mean(x, &[2, 3], true)
}

/// Input gradient of a pooling op; `argmax` is `Some` for max pooling.
pub(crate) fn pool_backward(g: &PoolGeom, argmax: Option<&Tensor>, gy: &Tensor) -> Result<Tensor> {
    let gpu = gy.gpu();
    let n = g.planes * g.h * g.w;
    let shape = [gy.shape()[0], gy.shape()[1], g.h, g.w];
    let dx = gpu.alloc(n, &shape)?;
    match argmax {
        Some(a) => gpu.dispatch(
            &Kernel::new(&POOL, "max_bwd"),
            g.params().as_words(),
            &[&dx],
            &[gy.storage(), a.storage()],
            gpu.grid(n.div_ceil(256)),
        )?,
        None => gpu.dispatch(
            &Kernel::new(&POOL, "avg_bwd"),
            g.params().as_words(),
            &[&dx],
            &[gy.storage()],
            gpu.grid(n.div_ceil(256)),
        )?,
    }
    Ok(Tensor::from_storage(std::sync::Arc::new(dx), &shape, false))
}

/// Max pooling with the saved in-plane index of each window's maximum.
pub(crate) struct MaxPool2d {
    pub(crate) argmax: Tensor,
    pub(crate) geom: ops::pool::PoolGeom,
}

impl Backward for MaxPool2d {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let MaxPool2d { argmax, geom, .. } = self;
        Ok(vec![Some(ops::pool::pool_backward(geom, Some(argmax), g)?)])
    }
}

/// Average pooling.
pub(crate) struct AvgPool2d {
    pub(crate) geom: ops::pool::PoolGeom,
}

impl Backward for AvgPool2d {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let AvgPool2d { geom, .. } = self;
        Ok(vec![Some(ops::pool::pool_backward(geom, None, g)?)])
    }
}
