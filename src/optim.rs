//! Layer 5: optimisers. Adam with PyTorch's semantics and defaults, as GPU kernels that
//! update parameters and their moment estimates in place: one parameter per dispatch
//! (`shaders/optim.wgsl`, four values per invocation where the length is a multiple of 4; CPU
//! drivers' default), or four parameters per dispatch where the adapter binds 16 storage
//! buffers (`shaders/optim_multi.wgsl`, PyTorch's multi-tensor "foreach" form; GPUs' default;
//! see `benches/NOTES.md`).

use crate::autodiff::Grads;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, KernelParams};
use crate::shaders::{OPTIM, OPTIM_MULTI};
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

crate::kernel_params! {
    /// The parameter block of `optim_multi.wgsl`: one Adam step over four parameters, each
    /// with its length, first index in the dispatch, step size and bias correction.
    pub struct AdamMultiParams {
        n0: u32, n1: u32, n2: u32, n3: u32,
        start1: u32, start2: u32, start3: u32, total: u32,
        step_size0: f32, step_size1: f32, step_size2: f32, step_size3: f32,
        bc2_sqrt0: f32, bc2_sqrt1: f32, bc2_sqrt2: f32, bc2_sqrt3: f32,
        beta1: f32, beta2: f32, eps: f32, weight_decay: f32,
    }
}

/// Parameters per multi-tensor dispatch (each takes 4 storage bindings).
const GROUP: usize = 4;

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
        // (slot, gradient, step size, sqrt of the second bias correction) of every parameter
        // that received a gradient, its step counted.
        let mut todo = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter_mut().enumerate() {
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
            todo.push((i, g, (c.lr / bc1) as f32, bc2.sqrt() as f32));
        }
        let Some(gpu) = self.slots.first().map(|s| s.param.gpu().clone()) else {
            return Ok(());
        };
        // Four parameters per dispatch where the adapter binds 16 storage buffers, by default
        // on GPUs only: there one dispatch costs ~10 us of a 64x64 APGA step's ~100 ms and
        // Adam was 1053 of its dispatches (not measured on a GPU yet: none was lent since);
        // on lavapipe, where dispatches are cheap and the 16 bindings are not, it measured
        // 20-30% slower than one parameter per dispatch (benches/NOTES.md). Either is forced
        // with `APGA_KERNELS=adam=single|multi`. Updates have side effects, so the choice is
        // not measured by the autotuner.
        let cands = [("single", false), ("multi", true)];
        let default = usize::from(gpu.parallelism() > 4096);
        let multi = gpu.limits().max_storage_buffers_per_shader_stage as usize >= 4 * GROUP
            && crate::gpu::autotune::forced(&gpu, "adam", &["single", "multi"], &cands, default)?
                .unwrap_or(cands[default].1);
        let mut rest = todo.clone();
        if multi {
            // Non-empty parameters of whole quads go four to a dispatch; the others one each.
            let (quads, others): (Vec<_>, Vec<_>) = todo.iter().partition(|(i, ..)| {
                let n = self.slots[*i].param.numel();
                n > 0 && n.is_multiple_of(4)
            });
            let mut groups = quads.chunks_exact(GROUP);
            for group in &mut groups {
                self.step_group(&gpu, group)?;
            }
            rest = groups.remainder().to_vec();
            rest.extend(others);
        }
        for &(i, g, step_size, bc2_sqrt) in &rest {
            let slot = &self.slots[i];
            let n = slot.param.numel();
            let params = AdamParams {
                n: n as u32,
                step_size,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                weight_decay: c.weight_decay as f32,
                bc2_sqrt,
                ..Default::default()
            };
            // Four values per invocation where the length allows.
            let (entry, lanes) = if n.is_multiple_of(4) {
                ("adam4", n / 4)
            } else {
                ("adam", n)
            };
            gpu.dispatch(
                &Kernel::new(&OPTIM, entry),
                params.as_words(),
                &[slot.param.storage(), slot.m.storage(), slot.v.storage()],
                &[g.storage()],
                gpu.grid(lanes.div_ceil(256)),
            )?;
        }
        Ok(())
    }

    /// One dispatch of `optim_multi.wgsl` over four parameters.
    fn step_group(
        &self,
        gpu: &crate::gpu::Gpu,
        group: &[(usize, &Tensor, f32, f32)],
    ) -> Result<()> {
        let c = self.config;
        let n: Vec<usize> = group
            .iter()
            .map(|&(i, ..)| self.slots[i].param.numel())
            .collect();
        // Each parameter's range of quads starts at a multiple of 256 (one workgroup, one
        // parameter); every length is a multiple of 4.
        let span = |k: usize| (n[k] / 4).div_ceil(256) * 256;
        let total: usize = span(0) + span(1) + span(2) + n[3] / 4;
        if total > u32::MAX as usize {
            return Err(Error::shape(
                "Adam",
                format!("{total} values in one dispatch"),
            ));
        }
        let u = |v: usize| v as u32;
        let params = AdamMultiParams {
            n0: u(n[0]),
            n1: u(n[1]),
            n2: u(n[2]),
            n3: u(n[3]),
            start1: u(span(0)),
            start2: u(span(0) + span(1)),
            start3: u(span(0) + span(1) + span(2)),
            total: u(total),
            step_size0: group[0].2,
            step_size1: group[1].2,
            step_size2: group[2].2,
            step_size3: group[3].2,
            bc2_sqrt0: group[0].3,
            bc2_sqrt1: group[1].3,
            bc2_sqrt2: group[2].3,
            bc2_sqrt3: group[3].3,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            weight_decay: c.weight_decay as f32,
        };
        let outputs: Vec<&crate::gpu::Storage> = group
            .iter()
            .flat_map(|&(i, ..)| {
                let s = &self.slots[i];
                [s.param.storage(), s.m.storage(), s.v.storage()]
            })
            .collect();
        let inputs: Vec<&crate::gpu::Storage> =
            group.iter().map(|&(_, g, ..)| g.storage()).collect();
        gpu.dispatch(
            &Kernel::new(&OPTIM_MULTI, "adam4"),
            params.as_words(),
            &outputs,
            &inputs,
            gpu.grid(total.div_ceil(256)),
        )
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
