//! Losses (`shaders/loss.wgsl`), each the mean over all elements as in PyTorch's default
//! `reduction="mean"`: softmax cross-entropy with integer labels, binary cross-entropy on
//! probabilities (logs clamped at -100), and binary cross-entropy with logits.

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelParams};
use crate::ops;
use crate::shaders::LOSS;
use crate::tensor::Tensor;
use ops::mean_all;

crate::kernel_params! {
    /// The parameter block of `loss.wgsl`: `n` rows (or elements), `k` classes.
    pub struct LossParams {
        n: u32, k: u32, _p0: u32, _p1: u32,
    }
}

/// Per-row softmax cross-entropy of `logits` `[rows, k]` against integer `labels` `[rows]` given
/// as a tensor of exact integers.
pub fn cross_entropy_rows(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let op = "cross_entropy";
    let (&[rows, k], &[lr]) = (logits.shape(), labels.shape()) else {
        return Err(Error::shape(
            op,
            format!(
                "expects logits [rows, classes] and labels [rows], got {:?} and {:?}",
                logits.shape(),
                labels.shape()
            ),
        ));
    };
    if lr != rows || k == 0 {
        return Err(Error::shape(
            op,
            format!("{rows} rows of logits but {lr} labels"),
        ));
    }
    let gpu = logits.gpu();
    let loss = gpu.alloc(rows, &[rows])?;
    let probs = gpu.alloc(rows * k, &[rows, k])?;
    gpu.dispatch(
        &Kernel::new(&LOSS, "ce_fwd"),
        LossParams {
            n: rows as u32,
            k: k as u32,
            ..Default::default()
        }
        .as_words(),
        &[&loss, &probs],
        &[logits.storage(), labels.storage()],
        gpu.grid(rows.div_ceil(256)),
    )?;
    let probs = Tensor::from_storage(std::sync::Arc::new(probs), &[rows, k], false);
    Ok(autodiff::track(loss, &[rows], &[logits], || CrossEntropy {
        probs,
        labels: labels.detach(),
    }))
}

/// Mean softmax cross-entropy (`torch.nn.functional.cross_entropy`) of `logits` [rows, k]
/// against class indices. A label outside 0..k is an error naming it.
pub fn cross_entropy(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let k = logits.shape().get(1).copied().unwrap_or(0);
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= k) {
        return Err(Error::shape(
            "cross_entropy",
            format!("label {l} of row {i} is outside the {k} classes"),
        ));
    }
    let values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let labels = Tensor::from_slice(logits.gpu(), &values, &[labels.len()])?;
    mean_all(&cross_entropy_rows(logits, &labels)?)
}

fn elementwise(
    op: &'static str,
    entry: &'static str,
    x: &Tensor,
    t: &Tensor,
) -> Result<crate::gpu::Storage> {
    if x.shape() != t.shape() {
        return Err(Error::shape(
            op,
            format!("input {:?} and target {:?} differ", x.shape(), t.shape()),
        ));
    }
    let gpu = x.gpu();
    let n = x.numel();
    let out = gpu.alloc(n, x.shape())?;
    gpu.dispatch(
        &Kernel::new(&LOSS, entry),
        LossParams {
            n: n as u32,
            ..Default::default()
        }
        .as_words(),
        &[&out],
        &[x.storage(), t.storage()],
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(out)
}

/// Element-wise binary cross-entropy on probabilities `p` against `target` (a constant: no
/// gradient flows to it).
pub fn bce_elementwise(p: &Tensor, target: &Tensor) -> Result<Tensor> {
    let out = elementwise("binary_cross_entropy", "bce_fwd", p, target)?;
    Ok(autodiff::track(out, p.shape(), &[p], || Bce {
        p: p.clone(),
        target: target.detach(),
        logits: false,
    }))
}

/// Element-wise binary cross-entropy with logits `z` against `target` (a constant).
pub fn bce_with_logits_elementwise(z: &Tensor, target: &Tensor) -> Result<Tensor> {
    let out = elementwise("binary_cross_entropy_with_logits", "bcel_fwd", z, target)?;
    Ok(autodiff::track(out, z.shape(), &[z], || Bce {
        p: z.clone(),
        target: target.detach(),
        logits: true,
    }))
}

/// `torch.nn.functional.binary_cross_entropy(p, target)`: mean over all elements, logs
/// clamped at -100.
pub fn binary_cross_entropy(p: &Tensor, target: &Tensor) -> Result<Tensor> {
    mean_all(&bce_elementwise(p, target)?)
}

/// `torch.nn.functional.binary_cross_entropy_with_logits(z, target)`: mean over all elements.
pub fn binary_cross_entropy_with_logits(z: &Tensor, target: &Tensor) -> Result<Tensor> {
    mean_all(&bce_with_logits_elementwise(z, target)?)
}

/// Gradient of the per-row cross-entropy with respect to the logits.
pub(crate) fn cross_entropy_backward(
    probs: &Tensor,
    labels: &Tensor,
    gy: &Tensor,
) -> Result<Tensor> {
    let (rows, k) = (probs.shape()[0], probs.shape()[1]);
    let gpu = probs.gpu();
    let dx = gpu.alloc(rows * k, &[rows, k])?;
    gpu.dispatch(
        &Kernel::new(&LOSS, "ce_bwd"),
        LossParams {
            n: rows as u32,
            k: k as u32,
            ..Default::default()
        }
        .as_words(),
        &[&dx],
        &[gy.storage(), probs.storage(), labels.storage()],
        gpu.grid((rows * k).div_ceil(256)),
    )?;
    Ok(Tensor::from_storage(
        std::sync::Arc::new(dx),
        &[rows, k],
        false,
    ))
}

/// Gradient of the element-wise BCE (on probabilities or logits) with respect to its input.
pub(crate) fn bce_backward(
    x: &Tensor,
    target: &Tensor,
    logits: bool,
    gy: &Tensor,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let n = x.numel();
    let dx = gpu.alloc(n, x.shape())?;
    gpu.dispatch(
        &Kernel::new(&LOSS, if logits { "bcel_bwd" } else { "bce_bwd" }),
        LossParams {
            n: n as u32,
            ..Default::default()
        }
        .as_words(),
        &[&dx],
        &[x.storage(), target.storage(), gy.storage()],
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(Tensor::from_storage(
        std::sync::Arc::new(dx),
        x.shape(),
        false,
    ))
}

/// Per-row softmax cross-entropy; saved softmax and labels.
pub(crate) struct CrossEntropy {
    pub(crate) probs: Tensor,
    pub(crate) labels: Tensor,
}

impl Backward for CrossEntropy {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let CrossEntropy { probs, labels, .. } = self;
        Ok(vec![Some(ops::loss::cross_entropy_backward(
            probs, labels, g,
        )?)])
    }
}

/// Element-wise binary cross-entropy on probabilities or (if `logits`) logits.
pub(crate) struct Bce {
    pub(crate) p: Tensor,
    pub(crate) target: Tensor,
    pub(crate) logits: bool,
}

impl Backward for Bce {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Bce {
            p, target, logits, ..
        } = self;
        Ok(vec![Some(ops::loss::bce_backward(p, target, *logits, g)?)])
    }
}
