//! The resolved configuration of a training run: preset defaults, overridden by a TOML
//! `--config` file, overridden by command-line flags. Written to `config.toml` in the run.

use serde::{Deserialize, Serialize};

use crate::data::Normalize;

/// Augmentation method (the paper's Table rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// DenseNet on the original images only.
    Baseline,
    /// Random erasing / cutout, 1:1 with the original images.
    Cutout,
    /// Masks from GradCAM of the frozen baseline classifier, 1:1 with the original images.
    Gradcam,
    /// Adversarial policy gradient augmentation (Algorithm 1).
    Apga,
    /// Soft masks P * x with the classifier loss back-propagated into the segmenter.
    EndToEnd,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Cutout => "cutout",
            Method::Gradcam => "gradcam",
            Method::Apga => "apga",
            Method::EndToEnd => "end-to-end",
        }
    }
    /// Whether the method trains a segmentation policy.
    pub fn has_policy(self) -> bool {
        matches!(self, Method::Apga | Method::EndToEnd)
    }
}

/// The two readings of the policy-gradient step (see `../shared/design/apga.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PgVariant {
    /// The paper: Eq. 7, baseline updated after use (b_1 = R_1), reward in train mode.
    Paper,
    /// The authors' released script: reward in eval mode after the classifier step, baseline
    /// updated before the advantage, 100 adv BCE(P, a) + 0.1 |adv| BCE(P, 0) + 0.01 |adv|
    /// BCE(P, 1).
    ReleasedCode,
}

/// Starting configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Minutes on a 2-core machine without a GPU: 64x64 synthetic images, a small DenseNet
    /// (growth 8, blocks 2-2-2, 16 initial features) and UNet11 with 4 filters, batch 16,
    /// Adam lr 1e-3, 8 pretraining and 6 method epochs.
    Quick,
    /// The paper: DenseNet-169 and UNet11 (32 filters), 224x224, batch 25, Adam lr 1e-4 for
    /// both networks, lambda_zeros 0.1, baseline decay 0.5, ImageNet normalisation.
    Paper,
}

/// Everything a run needs, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: Preset,
    pub method: Method,
    pub pg_variant: PgVariant,
    pub data: String,
    pub body_part: String,
    pub k_shot: Option<usize>,
    pub val_fraction: f64,
    pub classes: usize,
    pub train_size: usize,
    pub val_size: usize,
    pub skip_bad_images: bool,
    pub image_size: usize,
    pub normalize: Normalize,
    pub batch_size: usize,
    /// Classifier: "densenet121|161|169|201" or "tiny" (growth 8, blocks 2-2-2).
    pub classifier_arch: String,
    /// UNet11 decoder filters (TernausNet's num_filters).
    pub policy_filters: usize,
    pub lr_classifier: f64,
    pub lr_policy: f64,
    pub lambda_zeros: f64,
    pub baseline_decay: f64,
    /// Epochs of the method phase.
    pub epochs: usize,
    /// Maximum epochs of baseline pretraining (early stopping on validation accuracy).
    pub pretrain_epochs: usize,
    /// Epochs without improvement before early stopping.
    pub patience: usize,
    pub seed: u64,
    pub classifier_weights: Option<String>,
    /// Replace the classifier head of `classifier_weights` when its class count differs
    /// (fine-tuning ImageNet weights); otherwise such a file is refused.
    #[serde(default)]
    pub replace_head: bool,
    pub segmenter_weights: Option<String>,
    /// Loader threads.
    pub workers: usize,
    /// Validation images whose masks are drawn at each evaluation.
    pub mask_samples: usize,
}

impl TrainConfig {
    pub fn preset(preset: Preset) -> TrainConfig {
        let quick = TrainConfig {
            preset,
            method: Method::Apga,
            pg_variant: PgVariant::Paper,
            data: "synthetic".into(),
            body_part: "all".into(),
            k_shot: None,
            val_fraction: 0.2,
            classes: 2,
            train_size: 400,
            val_size: 100,
            skip_bad_images: false,
            image_size: 64,
            normalize: Normalize::None,
            batch_size: 16,
            classifier_arch: "tiny".into(),
            policy_filters: 4,
            lr_classifier: 1e-3,
            lr_policy: 1e-3,
            lambda_zeros: 0.1,
            baseline_decay: 0.5,
            epochs: 6,
            pretrain_epochs: 8,
            patience: 3,
            seed: 0,
            classifier_weights: None,
            replace_head: false,
            segmenter_weights: None,
            workers: 2,
            mask_samples: 4,
        };
        match preset {
            Preset::Quick => quick,
            Preset::Paper => TrainConfig {
                image_size: 224,
                normalize: Normalize::Imagenet,
                batch_size: 25,
                classifier_arch: "densenet169".into(),
                policy_filters: 32,
                lr_classifier: 1e-4,
                lr_policy: 1e-4,
                epochs: 30,
                pretrain_epochs: 100,
                patience: 15,
                ..quick
            },
        }
    }
}
