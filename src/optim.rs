//! Layer 5: optimisers. Adam with PyTorch's semantics and defaults, as one GPU kernel per
//! parameter that updates the parameter and its moment estimates in place
//! (`shaders/optim.wgsl`).

use crate::autodiff::Grads;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelParams};
use crate::shaders::OPTIM;
use crate::tensor::Tensor;

crate::kernel_params! {
    /// The parameter block of `optim.wgsl`: one Adam step over `n` values (Eq. of Kingma &
    /// Ba with PyTorch's bias corrections folded into `step_size` and `bc2_sqrt`).
    pub struct AdamParams {
        n: u32, _p0: u32, _p1: u32, _p2: u32,
        step_size: f32, beta1: f32, beta2: f32, eps: f32,
        weight_decay: f32, bc2_sqrt: f32, _p3: f32, _p4: f32,
    }
}

/// Adam hyper-parameters (`torch.optim.Adam` defaults except the learning rate, which the
/// paper sets to 1e-4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam's, not AdamW's, weight decay).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    param: Tensor,
    m: Tensor,
    v: Tensor,
    step: u64,
}

/// Adam over a fixed list of parameters (leaf tensors that require a gradient).
pub struct Adam {
    pub config: AdamConfig,
    slots: Vec<Slot>,
}

impl Adam {
    /// Moment estimates start at zero, as in PyTorch.
    pub fn new(params: &[Tensor], config: AdamConfig) -> Result<Adam> {
        let slots = params
            .iter()
            .map(|p| {
                if !p.requires_grad() {
                    return Err(Error::Autodiff(format!(
                        "Adam: parameter {p:?} does not require a gradient"
                    )));
                }
                Ok(Slot {
                    param: p.clone(),
                    m: Tensor::zeros(p.gpu(), p.shape())?,
                    v: Tensor::zeros(p.gpu(), p.shape())?,
                    step: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Adam { config, slots })
    }

    /// One update of every parameter that received a gradient (others are skipped and keep
    /// their step count, as PyTorch skips parameters whose `.grad` is None).
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        let c = self.config;
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.param) else {
                continue;
            };
            if g.shape() != slot.param.shape() {
                return Err(Error::shape(
                    "Adam",
                    format!(
                        "gradient {:?} for parameter {:?}",
                        g.shape(),
                        slot.param.shape()
                    ),
                ));
            }
            slot.step += 1;
            let t = slot.step as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            let n = slot.param.numel();
            let params = AdamParams {
                n: n as u32,
                step_size: (c.lr / bc1) as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                weight_decay: c.weight_decay as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                ..Default::default()
            };
            let gpu = slot.param.gpu();
            gpu.dispatch(
                &Kernel::new(&OPTIM, "adam"),
                params.as_words(),
                &[slot.param.storage(), slot.m.storage(), slot.v.storage()],
                &[g.storage()],
                gpu.grid(n.div_ceil(256)),
            )?;
        }
        Ok(())
    }

    /// The parameters, in the order given.
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.slots.iter().map(|s| &s.param)
    }

    /// Restores parameter `i`'s moment estimates and step count (resuming a run).
    pub fn restore(&mut self, i: usize, m: &[f32], v: &[f32], step: u64) -> Result<()> {
        let slot = self
            .slots
            .get_mut(i)
            .ok_or_else(|| Error::Autodiff(format!("Adam has no parameter {i}")))?;
        crate::nn::assign(&slot.m, m)?;
        crate::nn::assign(&slot.v, v)?;
        slot.step = step;
        Ok(())
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// First and second moment estimates and step count of parameter `i` (for checkpoints).
    pub fn state(&self, i: usize) -> Option<(&Tensor, &Tensor, u64)> {
        self.slots.get(i).map(|s| (&s.m, &s.v, s.step))
    }
}
