//! `apga-gpu train`: the options of a run (preset, then `--config`, then flags) and its
//! result table.

use std::path::PathBuf;

use crate::apga::{
    self, Action, EraseValue, Method, PgVariant, Preset, Regularizer, Reward, RunOptions,
    TrainConfig,
};
use crate::data::Normalize;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Starting configuration (flags and --config override it).
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// TOML file with any configuration keys (as in a run's config.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory (default runs/<date-time>-<method>-seed<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only errors and the final result.
    #[arg(long)]
    pub quiet: bool,
    /// Replace the run already in --out (its own files; other files are left alone).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue a stopped run (its config.toml, latest checkpoints and train_state) exactly
    /// where it stopped; configuration flags are ignored.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Policy-gradient step: stable (default: the choices below), paper (Eq. 7 exactly) or
    /// released-code (the authors' script).
    #[arg(long, value_enum)]
    pub pg_variant: Option<PgVariant>,
    /// Stable variant: the adversarial action: threshold 1[P >= 0.5] (the paper) or sample
    /// a ~ Bernoulli(P) per --action-cell cell.
    #[arg(long, value_enum)]
    pub action: Option<Action>,
    /// Side in pixels of the sampled action's cells (1 = per pixel).
    #[arg(long, value_parser = crate::cli::ranged(1, crate::limits::IMAGE_SIZE.1))]
    pub action_cell: Option<usize>,
    /// Stable variant: constant lambda_zeros BCE(P, 0) (Eq. 7), abs-adv (the released
    /// script's |adv|-scaled terms) or coverage (the warm start's erased area kept).
    #[arg(long, value_enum)]
    pub regularizer: Option<Regularizer>,
    /// Weight of the coverage regulariser.
    #[arg(long)]
    pub coverage_weight: Option<f64>,
    /// Stable variant: one reward per batch (the paper) or per image.
    #[arg(long, value_enum)]
    pub reward: Option<Reward>,
    /// Starting policy: foreground (label-free warm start on the training images' Otsu
    /// foreground, cached), random (PyTorch's initialisation) or a UNet11 .safetensors file
    /// (e.g. the paper's Carvana TernausNet converted by weights/convert_ternausnet.py).
    #[arg(long)]
    pub policy_init: Option<String>,
    /// Adam steps of the foreground warm start.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub warm_start_steps: Option<usize>,
    /// What erased pixels become, for APGA, cutout, GradCAM and the frozen mask: black (raw
    /// 0 in every normalisation, as the released script's [0, 1] images) or mean (the
    /// ImageNet mean colour, what x * (1 - a) gives on normalised tensors).
    #[arg(long, value_enum)]
    pub erase_value: Option<EraseValue>,
    /// Aiding images keeping less than this share of pixels (or more than 1 - it) are not
    /// trained on nor used for test-time augmentation.
    #[arg(long)]
    pub guard: Option<f64>,
    /// Also evaluate every N method steps (0: at epoch ends only), for every method alike.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub eval_every: Option<usize>,
    /// Synthetic data: share of bone density the evidence removes (1 = black gaps).
    #[arg(long)]
    pub evidence_strength: Option<f32>,
    /// Synthetic data: distractor bars outside the bone, with label-independent gaps.
    #[arg(long, value_parser = crate::cli::ranged(0, 64))]
    pub clutter: Option<usize>,
    /// Synthetic data: probability that the marker's position follows the label in training
    /// (0 = no marker; validation markers are random).
    #[arg(long)]
    pub shortcut: Option<f32>,
    /// synthetic | mura:PATH | folder:PATH | csv:FILE
    #[arg(long)]
    pub data: Option<String>,
    /// MURA body part: elbow, finger, forearm, hand, humerus, shoulder, wrist or all.
    #[arg(long)]
    pub body_part: Option<String>,
    /// Data read from files: N training images per class (sampled with the seed).
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub k_shot: Option<usize>,
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Synthetic data: classes, training and validation images.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::CLASSES.0, crate::limits::CLASSES.1))]
    pub classes: Option<usize>,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub train_size: Option<usize>,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub val_size: Option<usize>,
    #[arg(long)]
    pub skip_bad_images: bool,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::IMAGE_SIZE.0, crate::limits::IMAGE_SIZE.1))]
    pub image_size: Option<usize>,
    #[arg(long, value_enum)]
    pub normalize: Option<Normalize>,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::BATCH_SIZE.0, crate::limits::BATCH_SIZE.1))]
    pub batch_size: Option<usize>,
    /// densenet121 | densenet161 | densenet169 | densenet201 | tiny
    #[arg(long)]
    pub classifier_arch: Option<String>,
    /// UNet11 decoder filters.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::FILTERS.0, crate::limits::FILTERS.1))]
    pub policy_filters: Option<usize>,
    #[arg(long)]
    pub lr_classifier: Option<f64>,
    #[arg(long)]
    pub lr_policy: Option<f64>,
    /// Weight of BCE(P, 0) in the policy loss (Eq. 7).
    #[arg(long)]
    pub lambda_zeros: Option<f64>,
    /// Decay of the reward baseline's moving average.
    #[arg(long)]
    pub baseline_decay: Option<f64>,
    /// Epochs of the method phase.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub epochs: Option<usize>,
    /// Maximum epochs of baseline pretraining.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub pretrain_epochs: Option<usize>,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub patience: Option<usize>,
    #[arg(long, value_parser = crate::cli::ranged_u64(crate::limits::SEED.0, crate::limits::SEED.1))]
    pub seed: Option<u64>,
    /// Initial classifier weights (.safetensors; a head of another class count is replaced).
    #[arg(long)]
    pub classifier_weights: Option<String>,
    /// Replace a --classifier-weights head of another class count (e.g. ImageNet's 1000).
    #[arg(long)]
    pub replace_head: bool,
    /// Initial segmenter weights (.safetensors, UNet11 keys); the same as --policy-init FILE.
    #[arg(long)]
    pub segmenter_weights: Option<String>,
    /// Data-loading threads.
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::WORKERS.0, crate::limits::WORKERS.1))]
    pub workers: Option<usize>,
    /// Folder of cached converged baselines and policy warm starts (default: pretrained/ in
    /// the user's cache folder, $APGA_CACHE_DIR or ~/.cache/apga-gpu).
    #[arg(long)]
    pub pretrained_cache: Option<PathBuf>,
}

impl TrainArgs {
    /// Preset, then the --config file, then flags.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::preset(self.preset);
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            // Keys the file leaves out keep the preset's values.
            let mut base =
                toml::Value::try_from(&cfg).map_err(|e| Error::Incomplete(e.to_string()))?;
            let file: toml::Value = toml::from_str(&text).map_err(|e| Error::Format {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if let (Some(b), Some(f)) = (base.as_table_mut(), file.as_table()) {
                for (k, v) in f {
                    if !b.contains_key(k) {
                        return Err(Error::Format {
                            path: path.clone(),
                            detail: format!("unknown key {k:?}"),
                        });
                    }
                    b.insert(k.clone(), v.clone());
                }
            }
            cfg = base
                .try_into()
                .map_err(|e: toml::de::Error| Error::Format {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { cfg.$f = v.clone(); } )* };
        }
        set!(
            method,
            pg_variant,
            data,
            body_part,
            val_fraction,
            classes,
            train_size,
            val_size
        );
        set!(
            image_size,
            normalize,
            batch_size,
            classifier_arch,
            policy_filters,
            lr_classifier
        );
        set!(
            action,
            action_cell,
            regularizer,
            coverage_weight,
            reward,
            policy_init,
            warm_start_steps
        );
        set!(erase_value, guard, eval_every);
        if let Some(v) = self.evidence_strength {
            cfg.synthetic_style.evidence_strength = v;
        }
        if let Some(v) = self.clutter {
            cfg.synthetic_style.clutter = v;
        }
        if let Some(v) = self.shortcut {
            cfg.synthetic_style.shortcut = v;
        }
        set!(
            lr_policy,
            lambda_zeros,
            baseline_decay,
            epochs,
            pretrain_epochs,
            patience,
            seed,
            workers
        );
        if self.k_shot.is_some() {
            cfg.k_shot = self.k_shot;
        }
        if self.classifier_weights.is_some() {
            cfg.classifier_weights = self.classifier_weights.clone();
        }
        if self.segmenter_weights.is_some() {
            cfg.segmenter_weights = self.segmenter_weights.clone();
        }
        if self.skip_bad_images {
            cfg.skip_bad_images = true;
        }
        if self.replace_head {
            cfg.replace_head = true;
        }
        Ok(cfg)
    }
}

pub fn run(options: &crate::gpu::GpuOptions, args: &TrainArgs) -> Result<()> {
    let cfg = args.resolve()?;
    apga::install_interrupt_handler();
    let opts = RunOptions {
        out: args.out.clone(),
        quiet: args.quiet,
        gpu: options.clone(),
        pretrained_cache: args.pretrained_cache.clone(),
        stop_after_steps: None,
        overwrite: args.overwrite,
    };
    let s = match &args.resume {
        Some(dir) => apga::resume(dir, &opts)?,
        None => apga::train(cfg, &opts)?,
    };
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    let opt = |v: Option<f64>| v.map(pct).unwrap_or_else(|| "-".into());
    println!();
    println!(
        "result ({} seed {}, {} steps, {:.0} s; run {})",
        s.method,
        s.seed,
        s.steps,
        s.seconds,
        s.run_dir.display()
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "classifier on validation", "accuracy", "with TTA", "mask IoU"
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "baseline (converged, no augment.)",
        pct(s.pretrained.accuracy),
        "-",
        "-"
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        format!("{} (best, epoch {})", s.method, s.best_epoch),
        pct(s.best.accuracy),
        opt(s.best.tta_accuracy),
        opt(s.best.mask_iou)
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        format!("{} (last epoch)", s.method),
        pct(s.final_metrics.accuracy),
        opt(s.final_metrics.tta_accuracy),
        opt(s.final_metrics.mask_iou)
    );
    Ok(())
}
