//! The resolved configuration of a training run: preset defaults, overridden by a TOML
//! `--config` file, overridden by command-line flags. Written to `config.toml` in the run.

use serde::{Deserialize, Serialize};

use crate::data::synthetic::Style;
use crate::data::Normalize;

/// Augmentation method (the paper's Table rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// DenseNet on the original images only.
    Baseline,
    /// Random erasing / cutout, 1:1 with the original images.
    Cutout,
    /// torchvision's RandomErasing (p 0.5, scale (0.02, 0.33), ratio (0.3, 3.3)), 1:1 with
    /// the original images like the paper's cutout.
    RandomErasing,
    /// Mixup (alpha 1: lam ~ U(0, 1) per batch), 1:1 with the original images.
    Mixup,
    /// CutMix (alpha 1), 1:1 with the original images.
    Cutmix,
    /// torchvision's TrivialAugmentWide (one operation of 14, magnitude bin uniform over 31),
    /// applied in-line: the classifier trains on the augmented batch only, the standard use.
    TrivialAugment,
    /// torchvision's RandAugment (2 operations, magnitude 9 of 31), applied in-line.
    RandAugment,
    /// Masks from GradCAM of the frozen baseline classifier, 1:1 with the original images.
    Gradcam,
    /// Adversarial policy gradient augmentation (Algorithm 1).
    Apga,
    /// Soft masks P * x with the classifier loss back-propagated into the segmenter.
    EndToEnd,
    /// Ablation: the warm-start policy's mask as the aiding mask, 1:1 like APGA, with no
    /// policy gradient. Only APGA beating it shows the reinforcement learning adds something.
    FrozenMask,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Cutout => "cutout",
            Method::RandomErasing => "random-erasing",
            Method::Mixup => "mixup",
            Method::Cutmix => "cutmix",
            Method::TrivialAugment => "trivial-augment",
            Method::RandAugment => "rand-augment",
            Method::Gradcam => "gradcam",
            Method::Apga => "apga",
            Method::EndToEnd => "end-to-end",
            Method::FrozenMask => "frozen-mask",
        }
    }
    /// Whether the method uses a segmentation policy (trained or frozen).
    pub fn has_policy(self) -> bool {
        matches!(self, Method::Apga | Method::EndToEnd | Method::FrozenMask)
    }
}

/// The readings of the policy-gradient step (see `../shared/design/apga.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PgVariant {
    /// The paper exactly: Eq. 7 (BCE(P, a) adv + lambda_zeros BCE(P, 0)), the threshold
    /// action a = 1[P >= 0.5], one reward per batch, baseline updated after use (b_1 = R_1).
    /// `--action`, `--regularizer` and `--reward` do not apply.
    Paper,
    /// The authors' released script: reward R = L_adv (eval mode, after the classifier
    /// step) - L_orig (the step's train-mode loss), baseline updated before the advantage from
    /// b_1 = R_1, 100 adv BCE(P, a) + 0.1 |adv| BCE(P, 0) + 0.01 |adv| BCE(P, 1), threshold
    /// action. `--action`, `--regularizer` and `--reward` do not apply.
    ReleasedCode,
    /// The default: the paper's REINFORCE with the choices `--action`, `--regularizer` and
    /// `--reward` make (defaults measured to keep the policy alive: a sampled action per cell,
    /// a coverage target, one reward per image), the advantage normalised by the running
    /// standard deviation of the reward. Not the paper's equation; see README.
    Stable,
}

/// The adversarial action a (1 = erased) taken from P.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// a = 1[P >= 0.5] (the paper; deterministic, so it never explores).
    Threshold,
    /// a ~ Bernoulli(P_cell) per `--action-cell` x `--action-cell` cell of average-pooled P
    /// (exact REINFORCE for that cell policy; 1 = per pixel).
    Sample,
}

/// The term of the policy loss that keeps the mask from covering everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Regularizer {
    /// lambda_zeros BCE(P, 0) (Eq. 7): pulls every P down every step, whatever the reward.
    Constant,
    /// |adv| (0.1 BCE(P, 0) + 0.01 BCE(P, 1)) (the released script): vanishes with the
    /// advantage.
    AbsAdv,
    /// coverage_weight (mean P of the image - target)^2 per image, the target being the
    /// warm-start policy's mean P on its first batch: the area erased stays put, the policy
    /// gradient decides where.
    Coverage,
}

/// How the reward is credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reward {
    /// One reward per batch, R = L_adv - L_orig of the batch means (the paper).
    Batch,
    /// One reward per image, R_i = CE_i(x_adv) - CE_i(x), both in eval mode after the
    /// classifier step (each image's action only changes its own loss: less variance).
    Image,
}

/// What an erased pixel becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EraseValue {
    /// Black (raw 0), in every normalisation: (0 - mean) / std under ImageNet's (the
    /// released script's [0, 1] images erased to 0).
    Black,
    /// The ImageNet mean colour (what x * (1 - a) gives on ImageNet-normalised tensors).
    Mean,
}

impl EraseValue {
    /// The per-channel value of an erased pixel after `normalize`.
    pub fn fill(self, normalize: Normalize) -> [f32; 3] {
        use crate::data::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
        let raw = match self {
            EraseValue::Black => [0.0; 3],
            EraseValue::Mean => IMAGENET_MEAN,
        };
        match normalize {
            Normalize::Imagenet => {
                std::array::from_fn(|c| (raw[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
            }
            Normalize::None => raw,
        }
    }
}

/// Starting configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Minutes on a 2-core machine without a GPU: 64x64 synthetic images with headroom
    /// (400 + 200), a small DenseNet (growth 8, blocks 2-2-2, 16 initial features) and UNet11
    /// with 4 filters, batch 16, Adam lr 1e-3, up to 30 pretraining epochs (patience 8) and 6
    /// method epochs.
    Quick,
    /// The paper: DenseNet-169 and UNet11 (32 filters), 224x224, batch 25, Adam lr 1e-4 for
    /// both networks, lambda_zeros 0.1, baseline decay 0.5, ImageNet normalisation, Eq. 7.
    Paper,
    /// The authors' released script: the paper's sizes, `--pg-variant released-code`, Adam
    /// lr 1e-5 for both networks, [0, 1] images (no normalisation), validation every 100
    /// iterations and at each epoch end.
    Released,
}

/// Everything a run needs, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: Preset,
    pub method: Method,
    pub pg_variant: PgVariant,
    /// Stable variant only: the action, the regulariser and the reward's credit.
    #[serde(default = "default_action")]
    pub action: Action,
    /// Side of the cells of the sampled action (pixels).
    #[serde(default = "default_action_cell")]
    pub action_cell: usize,
    #[serde(default = "default_regularizer")]
    pub regularizer: Regularizer,
    /// Weight of the coverage term.
    #[serde(default = "default_coverage_weight")]
    pub coverage_weight: f64,
    #[serde(default = "default_reward")]
    pub reward: Reward,
    /// Where the policy starts: "foreground" (label-free pretraining on the training images'
    /// Otsu foreground), "random" (PyTorch's initialisation) or a UNet11 .safetensors file.
    #[serde(default = "default_policy_init")]
    pub policy_init: String,
    /// Adam steps of the foreground warm start.
    #[serde(default = "default_warm_start_steps")]
    pub warm_start_steps: usize,
    /// What erased pixels become (APGA, cutout, GradCAM, frozen mask).
    #[serde(default = "default_erase_value")]
    pub erase_value: EraseValue,
    /// The guard: an aiding image keeping less than this share of its pixels, or more than
    /// 1 - this, is not trained on nor used for test-time augmentation.
    #[serde(default = "default_guard")]
    pub guard: f64,
    /// Evaluate every this many method steps as well as at each epoch end (0: epoch ends
    /// only). The same schedule for every method.
    #[serde(default)]
    pub eval_every: usize,
    pub data: String,
    pub body_part: String,
    pub k_shot: Option<usize>,
    pub val_fraction: f64,
    pub classes: usize,
    pub train_size: usize,
    pub val_size: usize,
    /// Synthetic data: evidence strength, clutter and shortcut.
    #[serde(default)]
    pub synthetic_style: Style,
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

fn default_action() -> Action {
    Action::Threshold
}
fn default_action_cell() -> usize {
    8
}
fn default_regularizer() -> Regularizer {
    Regularizer::Constant
}
fn default_coverage_weight() -> f64 {
    10.0
}
fn default_reward() -> Reward {
    Reward::Batch
}
fn default_policy_init() -> String {
    "random".into()
}
fn default_warm_start_steps() -> usize {
    300
}
fn default_erase_value() -> EraseValue {
    EraseValue::Black
}
fn default_guard() -> f64 {
    0.01
}

impl TrainConfig {
    /// Refuses values no run can use, naming the flag.
    pub fn validate(&self) -> crate::error::Result<()> {
        fn bad(flag: &'static str, why: String) -> crate::error::Result<()> {
            Err(crate::Error::usage(flag, why))
        }
        let rate = |flag: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(flag, format!("{v} must be a finite number above 0"))
            }
        };
        use crate::limits::{self as lim, check};
        let counts = [
            ("--image-size", self.image_size, lim::IMAGE_SIZE),
            ("--batch-size", self.batch_size, lim::BATCH_SIZE),
            ("--classes", self.classes, lim::CLASSES),
            ("--train-size", self.train_size, lim::SPLIT_SIZE),
            ("--val-size", self.val_size, lim::SPLIT_SIZE),
            ("--policy-filters", self.policy_filters, lim::FILTERS),
            ("--workers", self.workers, lim::WORKERS),
            ("--epochs", self.epochs, lim::COUNT),
            ("--pretrain-epochs", self.pretrain_epochs, lim::COUNT),
            ("--patience", self.patience, lim::COUNT),
            ("--warm-start-steps", self.warm_start_steps, lim::COUNT),
            ("--eval-every", self.eval_every, lim::COUNT),
            ("--mask-samples", self.mask_samples, (0, 256)),
        ];
        for (flag, v, range) in counts {
            check(flag, v as u64, range).map_err(|e| crate::Error::usage(flag, e))?;
        }
        check("--seed", self.seed, lim::SEED).map_err(|e| crate::Error::usage("--seed", e))?;
        if let Some(k) = self.k_shot {
            check("--k-shot", k as u64, (1, lim::SPLIT_SIZE.1))
                .map_err(|e| crate::Error::usage("--k-shot", e))?;
        }
        lim::check_image_size(self.image_size, self.method.has_policy())
            .map_err(|e| crate::Error::usage("--image-size", e))?;
        if !(self.val_fraction.is_finite() && self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(
                "--val-fraction",
                format!("{} must be in (0, 1)", self.val_fraction),
            );
        }
        rate("--lr-classifier", self.lr_classifier)?;
        rate("--lr-policy", self.lr_policy)?;
        if !(self.lambda_zeros.is_finite() && self.lambda_zeros >= 0.0) {
            return bad(
                "--lambda-zeros",
                format!("{} must be finite and >= 0", self.lambda_zeros),
            );
        }
        if !(self.coverage_weight.is_finite() && self.coverage_weight >= 0.0) {
            return bad(
                "--coverage-weight",
                format!("{} must be finite and >= 0", self.coverage_weight),
            );
        }
        if !(0.0..1.0).contains(&self.baseline_decay) {
            return bad(
                "--baseline-decay",
                format!("{} must be in [0, 1)", self.baseline_decay),
            );
        }
        if !(0.0..0.5).contains(&self.guard) {
            return bad("--guard", format!("{} must be in [0, 0.5)", self.guard));
        }
        if self.action_cell == 0 || self.action_cell > self.image_size {
            return bad(
                "--action-cell",
                format!(
                    "{} must be between 1 and the image size {}",
                    self.action_cell, self.image_size
                ),
            );
        }
        let st = self.synthetic_style;
        if !(0.0..=1.0).contains(&st.evidence_strength) {
            return bad(
                "--evidence-strength",
                format!("{} must be in [0, 1]", st.evidence_strength),
            );
        }
        if !(0.0..=1.0).contains(&st.shortcut) {
            return bad("--shortcut", format!("{} must be in [0, 1]", st.shortcut));
        }
        if st.clutter > 64 {
            return bad(
                "--clutter",
                format!("{} distractors: at most 64", st.clutter),
            );
        }
        Ok(())
    }

    /// The action, regulariser and reward credit in force (the paper and released-code
    /// variants fix their own).
    pub fn pg_choices(&self) -> (Action, Regularizer, Reward) {
        match self.pg_variant {
            PgVariant::Paper => (Action::Threshold, Regularizer::Constant, Reward::Batch),
            PgVariant::ReleasedCode => (Action::Threshold, Regularizer::AbsAdv, Reward::Batch),
            PgVariant::Stable => (self.action, self.regularizer, self.reward),
        }
    }

    pub fn preset(preset: Preset) -> TrainConfig {
        let quick = TrainConfig {
            preset,
            method: Method::Apga,
            pg_variant: PgVariant::Stable,
            action: Action::Sample,
            action_cell: 8,
            regularizer: Regularizer::Coverage,
            coverage_weight: default_coverage_weight(),
            reward: Reward::Image,
            policy_init: "foreground".into(),
            warm_start_steps: default_warm_start_steps(),
            erase_value: EraseValue::Black,
            guard: default_guard(),
            eval_every: 0,
            data: "synthetic".into(),
            body_part: "all".into(),
            k_shot: None,
            val_fraction: 0.2,
            classes: 2,
            train_size: 400,
            val_size: 200,
            synthetic_style: Style::headroom(),
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
            pretrain_epochs: 30,
            patience: 8,
            seed: 0,
            classifier_weights: None,
            replace_head: false,
            segmenter_weights: None,
            workers: 2,
            mask_samples: 4,
        };
        let paper = TrainConfig {
            pg_variant: PgVariant::Paper,
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
            ..quick.clone()
        };
        match preset {
            Preset::Quick => quick,
            Preset::Paper => TrainConfig { preset, ..paper },
            Preset::Released => TrainConfig {
                preset,
                pg_variant: PgVariant::ReleasedCode,
                lr_classifier: 1e-5,
                lr_policy: 1e-5,
                normalize: Normalize::None,
                eval_every: 100,
                ..paper
            },
        }
    }
}
