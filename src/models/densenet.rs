//! DenseNet (Huang et al.) exactly as torchvision defines it, under torchvision's state-dict
//! keys: the paper's classifier M_c is DenseNet-169.
//!
//! Dense blocks are memory-efficient: each block owns one preallocated buffer holding all of
//! its channels; a layer reads the channels written so far through a fused
//! batch-norm + ReLU + 1x1 convolution (nothing copied, nothing normalised stored) and writes
//! its `growth_rate` new channels into the buffer in place. Activation memory therefore grows
//! linearly with the number of layers instead of quadratically.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{BatchNorm2d, Conv2d, ConvInit, Init, Linear, Module, Named};
use crate::ops;
use crate::tensor::Tensor;

/// Shape of a DenseNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseNetConfig {
    pub growth_rate: usize,
    pub block_config: Vec<usize>,
    pub num_init_features: usize,
    pub bn_size: usize,
    pub num_classes: usize,
}

impl DenseNetConfig {
    /// DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 initial features.
    pub fn densenet121(num_classes: usize) -> Self {
        Self::new(32, &[6, 12, 24, 16], 64, num_classes)
    }
    /// DenseNet-161: growth 48, blocks (6, 12, 36, 24), 96 initial features.
    pub fn densenet161(num_classes: usize) -> Self {
        Self::new(48, &[6, 12, 36, 24], 96, num_classes)
    }
    /// DenseNet-169, the paper's classifier: growth 32, blocks (6, 12, 32, 32), 64 initial
    /// features, 1664 features into the classifier.
    pub fn densenet169(num_classes: usize) -> Self {
        Self::new(32, &[6, 12, 32, 32], 64, num_classes)
    }
    /// DenseNet-201: growth 32, blocks (6, 12, 48, 32), 64 initial features.
    pub fn densenet201(num_classes: usize) -> Self {
        Self::new(32, &[6, 12, 48, 32], 64, num_classes)
    }
    /// Any configuration with bn_size 4 (torchvision's default).
    pub fn new(growth: usize, blocks: &[usize], init_features: usize, classes: usize) -> Self {
        DenseNetConfig {
            growth_rate: growth,
            block_config: blocks.to_vec(),
            num_init_features: init_features,
            bn_size: 4,
            num_classes: classes,
        }
    }
    /// Channels entering the classifier.
    pub fn num_features(&self) -> usize {
        let mut c = self.num_init_features;
        for (i, &l) in self.block_config.iter().enumerate() {
            c += l * self.growth_rate;
            if i + 1 < self.block_config.len() {
                c /= 2;
            }
        }
        c
    }
}

struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
}

struct Transition {
    norm: BatchNorm2d,
    conv: Conv2d,
}

/// A DenseNet classifier.
pub struct DenseNet {
    pub config: DenseNetConfig,
    conv0: Conv2d,
    norm0: BatchNorm2d,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: BatchNorm2d,
    pub classifier: Linear,
}

impl DenseNet {
    /// A freshly initialised network (torchvision's scheme: Kaiming-normal convolutions, BN
    /// weight 1 and bias 0, Linear bias 0), seeded.
    pub fn new(gpu: &Gpu, config: DenseNetConfig, seed: u64) -> Result<DenseNet> {
        if config.block_config.is_empty() || config.growth_rate == 0 || config.num_classes == 0 {
            return Err(Error::shape(
                "DenseNet",
                format!("invalid configuration {config:?}"),
            ));
        }
        let mut init = Init::new(seed);
        let kn = ConvInit::KaimingNormalFanIn;
        let f = "features";
        let conv0 = Conv2d::new(
            gpu,
            &mut init,
            &format!("{f}.conv0"),
            3,
            config.num_init_features,
            7,
            2,
            3,
            false,
            kn,
        )?;
        let norm0 = BatchNorm2d::new(gpu, &format!("{f}.norm0"), config.num_init_features)?;
        let mut c = config.num_init_features;
        let (g, bn) = (config.growth_rate, config.bn_size);
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (b, &layers) in config.block_config.iter().enumerate() {
            let mut block = Vec::new();
            for l in 0..layers {
                let p = format!("{f}.denseblock{}.denselayer{}", b + 1, l + 1);
                let cin = c + l * g;
                block.push(DenseLayer {
                    norm1: BatchNorm2d::new(gpu, &format!("{p}.norm1"), cin)?,
                    conv1: Conv2d::new(
                        gpu,
                        &mut init,
                        &format!("{p}.conv1"),
                        cin,
                        bn * g,
                        1,
                        1,
                        0,
                        false,
                        kn,
                    )?,
                    norm2: BatchNorm2d::new(gpu, &format!("{p}.norm2"), bn * g)?,
                    conv2: Conv2d::new(
                        gpu,
                        &mut init,
                        &format!("{p}.conv2"),
                        bn * g,
                        g,
                        3,
                        1,
                        1,
                        false,
                        kn,
                    )?,
                });
            }
            blocks.push(block);
            c += layers * g;
            if b + 1 < config.block_config.len() {
                let p = format!("{f}.transition{}", b + 1);
                transitions.push(Transition {
                    norm: BatchNorm2d::new(gpu, &format!("{p}.norm"), c)?,
                    conv: Conv2d::new(
                        gpu,
                        &mut init,
                        &format!("{p}.conv"),
                        c,
                        c / 2,
                        1,
                        1,
                        0,
                        false,
                        kn,
                    )?,
                });
                c /= 2;
            }
        }
        let norm5 = BatchNorm2d::new(gpu, &format!("{f}.norm5"), c)?;
        let classifier = Linear::new(gpu, &mut init, "classifier", c, config.num_classes, true)?;
        Ok(DenseNet {
            config,
            conv0,
            norm0,
            blocks,
            transitions,
            norm5,
            classifier,
        })
    }

    /// The feature maps after `features.norm5` and ReLU, [n, num_features, h/32, w/32]
    /// (GradCAM's target layer). `training` selects batch statistics (and updates the running
    /// ones) or running statistics.
    pub fn features(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let [_, c, h, w] = x.dims4("DenseNet input")?;
        if c != 3 || h < 32 || w < 32 {
            return Err(Error::shape(
                "DenseNet",
                format!(
                    "expects [n, 3, h, w] images with h, w >= 32, got {:?}",
                    x.shape()
                ),
            ));
        }
        let y = self.conv0.forward(x)?;
        let y = self.norm0.forward(&y, training, true)?;
        let mut y = ops::max_pool2d(&y, 3, 2, 1)?;
        for (b, block) in self.blocks.iter().enumerate() {
            let c0 = y.shape()[1];
            let total = c0 + block.len() * self.config.growth_rate;
            // The block buffer: the block's input in the first channels, each layer's new
            // channels written after it.
            let mut buffer = ops::pad_axis(&y, 1, 0, total)?;
            for (l, layer) in block.iter().enumerate() {
                let c = c0 + l * self.config.growth_rate;
                let t = layer.norm1.relu_conv(&buffer, c, &layer.conv1, training)?;
                let new = layer
                    .norm2
                    .relu_conv(&t, t.shape()[1], &layer.conv2, training)?;
                buffer = ops::write_slice(&buffer, &new, 1, c)?;
            }
            y = buffer;
            if let Some(t) = self.transitions.get(b) {
                let z = t.norm.relu_conv(&y, y.shape()[1], &t.conv, training)?;
                y = ops::avg_pool2d(&z, 2, 2, 0)?;
            }
        }
        self.norm5.forward(&y, training, true)
    }

    /// Logits from the feature maps: global average pool, flatten, classifier.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        let pooled = ops::global_avg_pool2d(features)?;
        let n = pooled.shape()[0];
        let flat = ops::reshape(&pooled, &[n, pooled.shape()[1]])?;
        self.classifier.forward(&flat)
    }

    /// Logits [n, num_classes] of images [n, 3, h, w].
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.head(&self.features(x, training)?)
    }

    fn batch_norms(&self) -> Vec<&BatchNorm2d> {
        let mut v = vec![&self.norm0];
        for (b, block) in self.blocks.iter().enumerate() {
            for l in block {
                v.push(&l.norm1);
                v.push(&l.norm2);
            }
            if let Some(t) = self.transitions.get(b) {
                v.push(&t.norm);
            }
        }
        v.push(&self.norm5);
        v
    }
}

impl Module for DenseNet {
    fn named(&self) -> Vec<Named> {
        let mut v = self.conv0.named();
        v.extend(self.norm0.named());
        for (b, block) in self.blocks.iter().enumerate() {
            for l in block {
                v.extend(l.norm1.named());
                v.extend(l.conv1.named());
                v.extend(l.norm2.named());
                v.extend(l.conv2.named());
            }
            if let Some(t) = self.transitions.get(b) {
                v.extend(t.norm.named());
                v.extend(t.conv.named());
            }
        }
        v.extend(self.norm5.named());
        v.extend(self.classifier.named());
        v
    }

    fn batch_counters(&self) -> Vec<(String, Arc<AtomicI64>)> {
        self.batch_norms()
            .into_iter()
            .flat_map(|b| b.batch_counters())
            .collect()
    }
}
