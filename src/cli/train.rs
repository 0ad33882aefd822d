//! `apga-gpu train`.

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
    #[arg(long)]
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
    #[arg(long)]
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
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Synthetic data: share of bone density the evidence removes (1 = black gaps).
    #[arg(long)]
    pub evidence_strength: Option<f32>,
    /// Synthetic data: distractor bars outside the bone, with label-independent gaps.
    #[arg(long)]
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
    /// MURA: N training images per class.
    #[arg(long)]
    pub k_shot: Option<usize>,
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Synthetic data: classes, training and validation images.
    #[arg(long)]
    pub classes: Option<usize>,
    #[arg(long)]
    pub train_size: Option<usize>,
    #[arg(long)]
    pub val_size: Option<usize>,
    #[arg(long)]
    pub skip_bad_images: bool,
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, value_enum)]
    pub normalize: Option<Normalize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// densenet121 | densenet161 | densenet169 | densenet201 | tiny
    #[arg(long)]
    pub classifier_arch: Option<String>,
    /// UNet11 decoder filters.
    #[arg(long)]
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
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Maximum epochs of baseline pretraining.
    #[arg(long)]
    pub pretrain_epochs: Option<usize>,
    #[arg(long)]
    pub patience: Option<usize>,
    #[arg(long)]
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
    #[arg(long)]
    pub workers: Option<usize>,
    /// Folder of cached converged baseline classifiers (default runs/pretrained).
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

pub fn run(device: Option<&str>, args: &TrainArgs) -> Result<()> {
    let cfg = args.resolve()?;
    apga::install_interrupt_handler();
    let opts = RunOptions {
        out: args.out.clone(),
        quiet: args.quiet,
        device: device.map(str::to_string),
        pretrained_cache: args.pretrained_cache.clone(),
        stop_after_steps: None,
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

pub fn eval(device: Option<&str>, args: &crate::cli::EvalArgs) -> Result<()> {
    let m = apga::evaluate_run(&args.run, args.data.as_deref(), args.latest, device)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&m).map_err(|e| Error::Incomplete(e.to_string()))?
        );
        return Ok(());
    }
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    println!("images            {}", m.images);
    println!("loss              {:.4}", m.loss);
    println!("accuracy          {}", pct(m.accuracy));
    let per: Vec<String> = m.per_class_accuracy.iter().map(|a| pct(*a)).collect();
    println!("per class         {}", per.join("  "));
    println!("confusion (row = true class, column = predicted)");
    for row in &m.confusion {
        println!(
            "  {}",
            row.iter().map(|v| format!("{v:>6}")).collect::<String>()
        );
    }
    if let Some(v) = m.tta_accuracy {
        println!("accuracy with TTA {}", pct(v));
    }
    if let (Some(a), Some(k)) = (m.study_accuracy, m.study_kappa) {
        println!("study accuracy    {}  kappa {k:.3}", pct(a));
    }
    if let Some(v) = m.mask_iou {
        println!(
            "mask IoU          {v:.3}  coverage {:.3}",
            m.mask_coverage.unwrap_or(0.0)
        );
    }
    if let Some(v) = m.mask_kept_fraction {
        println!("mask keeps        {}", pct(v));
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Networks, batch and image size of a preset (quick: small networks at 64x64, batch 16;
    /// paper: DenseNet-169 and UNet11 at 224x224, batch 25, minutes per step on a CPU driver).
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub image_size: Option<usize>,
    /// densenet121 | densenet161 | densenet169 | densenet201 | tiny
    #[arg(long)]
    pub classifier_arch: Option<String>,
    #[arg(long)]
    pub policy_filters: Option<usize>,
    /// Measured steps (after one warm-up step); 0 reports the warm-up step alone (compilation
    /// and autotuning included), for peak memory at sizes where a step takes minutes.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Time every kernel on the GPU (timestamp queries where the adapter has them) and print
    /// the slowest kernels of the last step (also `APGA_PROFILE=1`).
    #[arg(long)]
    pub profile: bool,
    /// Rows of the per-kernel table.
    #[arg(long, default_value_t = 25)]
    pub profile_top: usize,
    /// Do not run the PyTorch twin (by default it runs when the interpreter can import torch
    /// and torchvision).
    #[arg(long)]
    pub no_torch: bool,
    /// Python interpreter for the PyTorch twin.
    #[arg(long, env = "APGA_PYTHON", default_value = "python3")]
    pub python: String,
    /// Run the PyTorch twin on CUDA instead of the CPU.
    #[arg(long)]
    pub torch_cuda: bool,
}

pub fn bench(device: Option<&str>, args: &BenchArgs) -> Result<()> {
    let mut cfg = TrainConfig::preset(args.preset);
    if let Some(v) = args.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = args.image_size {
        cfg.image_size = v;
    }
    if let Some(v) = &args.classifier_arch {
        cfg.classifier_arch = v.clone();
    }
    if let Some(v) = args.policy_filters {
        cfg.policy_filters = v;
    }
    if cfg.batch_size < 2 || !cfg.image_size.is_multiple_of(32) {
        return Err(Error::shape(
            "bench",
            "needs --batch-size >= 2 and --image-size a multiple of 32",
        ));
    }
    let r = apga::bench::bench(&cfg, args.steps, device, args.profile)?;
    let torch = if args.no_torch {
        Err("skipped (--no-torch)".to_string())
    } else {
        apga::bench::torch_bench(&cfg, args.steps, &args.python, args.torch_cuda)
    };
    if args.json {
        let v = serde_json::json!({
            "ours": r,
            "torch": torch.as_ref().ok(),
            "torch_error": torch.as_ref().err(),
        });
        println!("{v}");
        return Ok(());
    }
    let timed = if args.steps == 0 {
        "warm-up step only, compilation and autotuning included".to_string()
    } else {
        format!("median of {} steps", args.steps)
    };
    println!(
        "APGA step: classifier {}, UNet11 with {} filters, batch {}, {}x{} ({timed})",
        r.classifier, r.policy_filters, r.batch_size, r.image_size, r.image_size
    );
    match &torch {
        Ok(t) => println!(
            "  {:<22} {:>10} {:>10} {:>7}\n  {:<22} {:>10} {:>10}",
            "",
            "ours",
            "PyTorch",
            "ratio",
            "",
            "",
            format!("({})", t.label)
        ),
        Err(e) => println!("  PyTorch: not measured: {e}"),
    }
    let row = |name: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!(
            "  {name:<22} {ours:>7.1} ms {t:>7.1} ms {:>6.2}x",
            ours / t.max(1e-9)
        ),
        None => println!("  {name:<22} {ours:>7.1} ms"),
    };
    for (name, ms) in &r.phases_ms {
        let theirs = torch
            .as_ref()
            .ok()
            .and_then(|t| t.phases_ms.iter().find(|(n, _)| n == name).map(|(_, v)| *v));
        row(name, *ms, theirs);
    }
    row(
        "whole step",
        r.step_ms,
        torch.as_ref().ok().map(|t| t.step_ms),
    );
    println!("  {:.2} images/s", r.images_per_s);
    println!(
        "  peak GPU memory above inputs and weights: {:.1} MiB ({})",
        r.peak_memory_mib,
        r.phases_peak_mib
            .iter()
            .map(|(n, m)| format!("{n} {m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  cold start: {:.1} s from opening the GPU to the end of the first step ({} pipelines built in {:.1} s, {} kernel choices autotuned in {:.1} s)",
        r.first_step_s, r.pipelines_built, r.compile_s, r.autotuned, r.autotune_s
    );
    if let Some(p) = &r.profile {
        print!("{}", p.table(args.profile_top));
    }
    Ok(())
}
