//! Fused ops that save memory or passes.
//!
//! `bn_relu_conv2d` is DenseNet's `norm -> relu -> conv` on the first channels of a block
//! buffer: the convolution reads the block through a batch-norm + ReLU prologue, so neither the
//! copied input slice nor the normalised activations are ever stored. Its backward recomputes
//! them from the block (the "memory-efficient DenseNet" technique, Pleiss et al. 2017), which
//! makes the activation memory of a dense block linear in its number of layers.

use std::sync::Arc;

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::Storage;
use crate::ops;
use crate::tensor::Tensor;
use ops::conv::{dgrad_into, fwd_into, wgrad, ConvGeom, Slice};
use ops::norm::{backward_raw, batch_stats, params};
use ops::{pad_axis, BatchNormConfig};

/// Saved state of one `bn_relu_conv2d`.
pub struct BnReluConv {
    x: Tensor,
    c_in: usize,
    gamma: Tensor,
    beta: Tensor,
    w: Tensor,
    stats: Arc<Storage>,
    affine: Arc<Storage>,
    cfg: BatchNormConfig,
    geom: ConvGeom,
}

/// `conv2d(relu(batch_norm(x[:, :c_in])), w, stride, padding)` (no conv bias), with `x` of
/// shape [n, c_total, h, w] of which the first `c_in` channels are used; the batch norm has
/// weight `gamma`, bias `beta` and optional running statistics, and is in training or eval
/// mode per `cfg` (its `relu` flag is ignored: the ReLU is always applied).
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_conv2d(
    x: &Tensor,
    c_in: usize,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    cfg: BatchNormConfig,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let op = "bn_relu_conv2d";
    let [n, c_total, h, wd] = x.dims4(op)?;
    let [co, wci, kh, kw] = w.dims4(op)?;
    if c_in == 0 || c_in > c_total || wci != c_in {
        return Err(Error::shape(
            op,
            format!(
                "{c_in} input channels of {:?} with weight {:?}",
                x.shape(),
                w.shape()
            ),
        ));
    }
    for (name, t) in [("weight", gamma), ("bias", beta)] {
        if t.shape() != [c_in] {
            return Err(Error::shape(
                op,
                format!("norm {name} {:?}, expected [{c_in}]", t.shape()),
            ));
        }
    }
    if stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::shape(
            op,
            format!("kernel {kh}x{kw} stride {stride} on {:?}", x.shape()),
        ));
    }
    if cfg.training && n * h * wd < 2 {
        return Err(Error::shape(
            op,
            "training needs more than one value per channel",
        ));
    }
    let cfg = BatchNormConfig { relu: true, ..cfg };
    let geom = ConvGeom {
        n,
        ci: c_in,
        h,
        w: wd,
        co,
        oh: (h + 2 * padding - kh) / stride + 1,
        ow: (wd + 2 * padding - kw) / stride + 1,
        kh,
        kw,
        stride,
        pad: padding,
    };
    let gpu = x.gpu();
    let p = params(n, c_in, h * wd, c_total, &cfg);
    let (stats, affine) = batch_stats(gpu, x.storage(), &p, gamma, beta, running, &cfg)?;
    let shape = [n, co, geom.oh, geom.ow];
    let out = gpu.alloc(n * co * geom.oh * geom.ow, &shape)?;
    let zeros = gpu.shared_zeros(co)?;
    let src = Slice {
        total: c_total,
        off: 0,
    };
    fwd_into(
        &geom,
        x.storage(),
        src,
        w,
        &zeros,
        &out,
        Slice::whole(co),
        Some(&affine),
    )?;
    Ok(autodiff::track(out, &shape, &[x, gamma, beta, w], || {
        BnReluConv {
            x: x.clone(),
            c_in,
            gamma: gamma.clone(),
            beta: beta.clone(),
            w: w.clone(),
            stats: Arc::new(stats),
            affine: Arc::new(affine),
            cfg,
            geom,
        }
    }))
}

impl BnReluConv {
    /// Gradients of (x, gamma, beta, w) given the output gradient `gy`.
    pub(crate) fn backward(&self, gy: &Tensor, want: [bool; 4]) -> Result<Vec<Option<Tensor>>> {
        let g = &self.geom;
        let gpu = gy.gpu();
        let [n, c_total, h, wd] = self.x.dims4("bn_relu_conv2d backward")?;
        let src = Slice {
            total: c_total,
            off: 0,
        };
        let gw = if want[3] {
            Some(wgrad(
                gpu,
                g,
                self.x.storage(),
                src,
                gy.storage(),
                Slice::whole(g.co),
                Some(&self.affine),
            )?)
        } else {
            None
        };
        if !(want[0] || want[1] || want[2]) {
            return Ok(vec![None, None, None, gw]);
        }
        // Gradient of the normalised-and-rectified input, then back through BN + ReLU, which
        // recomputes the activations from the block.
        let c = self.c_in;
        let dxp = gpu.alloc(n * c * h * wd, &[n, c, h, wd])?;
        let zeros = gpu.shared_zeros(c)?;
        dgrad_into(
            g,
            gy.storage(),
            Slice::whole(g.co),
            &self.w,
            &zeros,
            &dxp,
            Slice::whole(c),
        )?;
        let p = params(n, c, h * wd, c_total, &self.cfg);
        let (dx, dgamma, dbeta) = backward_raw(
            gpu,
            self.x.storage(),
            &p,
            &self.stats,
            &self.gamma,
            &self.beta,
            &dxp,
            want[0],
        )?;
        let gx = match dx {
            Some(dx) => {
                let dx = Tensor::from_storage(Arc::new(dx), &[n, c, h, wd], false);
                Some(if c == c_total {
                    dx
                } else {
                    pad_axis(&dx, 1, 0, c_total)?
                })
            }
            None => None,
        };
        let wrap = |s| Tensor::from_storage(Arc::new(s), &[c], false);
        Ok(vec![gx, Some(wrap(dgamma)), Some(wrap(dbeta)), gw])
    }
}

impl Backward for BnReluConv {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let saved = self;
        BnReluConv::backward(saved, g, [want(0), want(1), want(2), want(3)])
    }
}
