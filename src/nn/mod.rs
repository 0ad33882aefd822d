//! Layer 5: layers with parameters named by their PyTorch state-dict key, PyTorch's
//! initialisation, and state-dict loading and saving (`state.rs`).

pub mod init;
pub mod state;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::{self, BatchNormConfig};
use crate::tensor::Tensor;
pub use init::Init;

/// Whether a named tensor is trained (a parameter) or only tracked (a buffer: BN statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Param,
    Buffer,
}

/// A tensor under its state-dict key.
#[derive(Debug, Clone)]
pub struct Named {
    pub key: String,
    pub tensor: Tensor,
    pub kind: Kind,
}

/// Something made of named tensors (a layer or a whole network).
pub trait Module {
    /// Every parameter and buffer with its state-dict key, in a stable order.
    fn named(&self) -> Vec<Named>;

    /// The trainable parameters, in `named` order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named()
            .into_iter()
            .filter(|n| n.kind == Kind::Param)
            .map(|n| n.tensor)
            .collect()
    }

    /// BatchNorm layers' `num_batches_tracked` counters, by key (saved as int64 like PyTorch).
    fn batch_counters(&self) -> Vec<(String, Arc<AtomicI64>)> {
        Vec::new()
    }
}

/// Overwrites the values of `t` in place (loading weights keeps every handle valid, including
/// those an optimiser holds).
pub fn assign(t: &Tensor, values: &[f32]) -> Result<()> {
    if values.len() != t.numel() {
        return Err(Error::DataLength {
            len: values.len(),
            shape: t.shape().to_vec(),
            numel: t.numel(),
        });
    }
    let src = Tensor::from_slice(t.gpu(), values, t.shape())?;
    t.gpu().copy(src.storage(), 0, t.storage(), 0, values.len());
    Ok(())
}

fn param(gpu: &Gpu, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_slice(gpu, &values, shape)?.with_grad())
}

fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// How a convolution's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// PyTorch's default (kaiming_uniform with a = sqrt(5): U(+-1/sqrt(fan_in)), bias likewise).
    Default,
    /// `kaiming_normal_` (fan_in, ReLU gain), no bias change: torchvision DenseNet.
    KaimingNormalFanIn,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, bias 0: torchvision VGG.
    KaimingNormalFanOut,
}

/// `nn.Conv2d` (square kernel).
pub struct Conv2d {
    pub prefix: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        init: &mut Init,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        scheme: ConvInit,
    ) -> Result<Conv2d> {
        let shape = [cout, cin, k, k];
        let n = cout * cin * k * k;
        let fi = init::fan_in(&shape) as f32;
        let weight = match scheme {
            ConvInit::Default => init.uniform(n, 1.0 / fi.sqrt()),
            ConvInit::KaimingNormalFanIn => init.normal(n, (2.0 / fi).sqrt()),
            ConvInit::KaimingNormalFanOut => {
                init.normal(n, (2.0 / init::fan_out(&shape) as f32).sqrt())
            }
        };
        let bias = if bias {
            let values = match scheme {
                ConvInit::KaimingNormalFanOut => vec![0.0; cout],
                _ => init.uniform(cout, 1.0 / fi.sqrt()),
            };
            Some(param(gpu, values, &[cout])?)
        } else {
            None
        };
        Ok(Conv2d {
            prefix: prefix.into(),
            weight: param(gpu, weight, &shape)?,
            bias,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
    }
}

impl Module for Conv2d {
    fn named(&self) -> Vec<Named> {
        let mut v = vec![Named {
            key: key(&self.prefix, "weight"),
            tensor: self.weight.clone(),
            kind: Kind::Param,
        }];
        if let Some(b) = &self.bias {
            v.push(Named {
                key: key(&self.prefix, "bias"),
                tensor: b.clone(),
                kind: Kind::Param,
            });
        }
        v
    }
}

/// `nn.ConvTranspose2d` (square kernel), weight [in, out, k, k], PyTorch default init.
pub struct ConvTranspose2d {
    pub prefix: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
}

impl ConvTranspose2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        init: &mut Init,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        output_padding: usize,
    ) -> Result<ConvTranspose2d> {
        let shape = [cin, cout, k, k];
        let bound = 1.0 / (init::fan_in(&shape) as f32).sqrt();
        Ok(ConvTranspose2d {
            prefix: prefix.into(),
            weight: param(gpu, init.uniform(cin * cout * k * k, bound), &shape)?,
            bias: param(gpu, init.uniform(cout, bound), &[cout])?,
            stride,
            padding,
            output_padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv_transpose2d(
            x,
            &self.weight,
            Some(&self.bias),
            self.stride,
            self.padding,
            self.output_padding,
        )
    }
}

impl Module for ConvTranspose2d {
    fn named(&self) -> Vec<Named> {
        vec![
            Named {
                key: key(&self.prefix, "weight"),
                tensor: self.weight.clone(),
                kind: Kind::Param,
            },
            Named {
                key: key(&self.prefix, "bias"),
                tensor: self.bias.clone(),
                kind: Kind::Param,
            },
        ]
    }
}

/// `nn.BatchNorm2d` (momentum 0.1, eps 1e-5, weight 1, bias 0, running stats 0 and 1).
pub struct BatchNorm2d {
    pub prefix: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Arc<AtomicI64>,
}

impl BatchNorm2d {
    pub fn new(gpu: &Gpu, prefix: &str, c: usize) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            prefix: prefix.into(),
            weight: param(gpu, vec![1.0; c], &[c])?,
            bias: param(gpu, vec![0.0; c], &[c])?,
            running_mean: Tensor::zeros(gpu, &[c])?,
            running_var: Tensor::full(gpu, &[c], 1.0)?,
            num_batches_tracked: Arc::default(),
        })
    }

    fn config(&self, training: bool, relu: bool) -> BatchNormConfig {
        if training {
            self.num_batches_tracked.fetch_add(1, Ordering::Relaxed);
        }
        BatchNormConfig {
            training,
            relu,
            ..Default::default()
        }
    }

    /// Batch norm (then ReLU if `relu`), updating running statistics when training.
    pub fn forward(&self, x: &Tensor, training: bool, relu: bool) -> Result<Tensor> {
        let cfg = self.config(training, relu);
        ops::batch_norm2d(
            x,
            &self.weight,
            &self.bias,
            Some((&self.running_mean, &self.running_var)),
            cfg,
        )
    }

    /// `conv(relu(self(x[:, :c_in])))` without storing the normalised input (DenseNet).
    pub fn relu_conv(
        &self,
        x: &Tensor,
        c_in: usize,
        conv: &Conv2d,
        training: bool,
    ) -> Result<Tensor> {
        let cfg = self.config(training, true);
        ops::bn_relu_conv2d(
            x,
            c_in,
            &self.weight,
            &self.bias,
            Some((&self.running_mean, &self.running_var)),
            cfg,
            &conv.weight,
            conv.stride,
            conv.padding,
        )
    }
}

impl Module for BatchNorm2d {
    fn named(&self) -> Vec<Named> {
        let n = |name: &str, t: &Tensor, kind| Named {
            key: key(&self.prefix, name),
            tensor: t.clone(),
            kind,
        };
        vec![
            n("weight", &self.weight, Kind::Param),
            n("bias", &self.bias, Kind::Param),
            n("running_mean", &self.running_mean, Kind::Buffer),
            n("running_var", &self.running_var, Kind::Buffer),
        ]
    }
    fn batch_counters(&self) -> Vec<(String, Arc<AtomicI64>)> {
        vec![(
            key(&self.prefix, "num_batches_tracked"),
            self.num_batches_tracked.clone(),
        )]
    }
}

/// `nn.Linear`, PyTorch's default weight init; bias zero if `zero_bias` (torchvision
/// DenseNet), else PyTorch's default.
pub struct Linear {
    pub prefix: String,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(
        gpu: &Gpu,
        init: &mut Init,
        prefix: &str,
        cin: usize,
        cout: usize,
        zero_bias: bool,
    ) -> Result<Linear> {
        let bound = 1.0 / (cin as f32).sqrt();
        let bias = if zero_bias {
            vec![0.0; cout]
        } else {
            init.uniform(cout, bound)
        };
        Ok(Linear {
            prefix: prefix.into(),
            weight: param(gpu, init.uniform(cin * cout, bound), &[cout, cin])?,
            bias: param(gpu, bias, &[cout])?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, Some(&self.bias))
    }
}

impl Module for Linear {
    fn named(&self) -> Vec<Named> {
        vec![
            Named {
                key: key(&self.prefix, "weight"),
                tensor: self.weight.clone(),
                kind: Kind::Param,
            },
            Named {
                key: key(&self.prefix, "bias"),
                tensor: self.bias.clone(),
                kind: Kind::Param,
            },
        ]
    }
}
