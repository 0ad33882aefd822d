//! `apga-gpu train`.

use std::path::PathBuf;

use crate::apga::{self, Method, PgVariant, Preset, RunOptions, TrainConfig};
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
    /// Policy-gradient step: as the paper writes it, or as the authors' script does it.
    #[arg(long, value_enum)]
    pub pg_variant: Option<PgVariant>,
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
    /// Initial segmenter weights (.safetensors, UNet11 keys).
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

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Comma-separated methods.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,cutout,gradcam,apga"
    )]
    pub methods: Vec<Method>,
    /// Number of seeds (seed, seed + 1, ...).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Every training option (the method and out directory are set per run).
    #[command(flatten)]
    pub train: TrainArgs,
}

/// One run of a comparison.
struct Row {
    method: Method,
    seed: u64,
    accuracy: f64,
    tta: Option<f64>,
    iou: Option<f64>,
}

/// (mean, standard deviation)
type MeanStd = (f64, f64);

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

pub fn compare(device: Option<&str>, args: &CompareArgs) -> Result<()> {
    if args.methods.is_empty() || args.seeds == 0 {
        return Err(Error::shape(
            "compare",
            "needs at least one method and one seed",
        ));
    }
    let base = args.train.resolve()?;
    apga::install_interrupt_handler();
    let dir = args.train.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-compare",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        ))
    });
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let mut rows: Vec<Row> = Vec::new();
    for &method in &args.methods {
        for i in 0..args.seeds {
            let seed = base.seed + i;
            let cfg = TrainConfig {
                method,
                seed,
                ..base.clone()
            };
            let opts = RunOptions {
                out: Some(dir.join(format!("{}-seed{seed}", method.name()))),
                quiet: args.train.quiet,
                device: device.map(str::to_string),
                pretrained_cache: args.train.pretrained_cache.clone(),
                stop_after_steps: None,
            };
            let s = apga::train(cfg, &opts)?;
            println!(
                "{} seed {seed}: accuracy {:.3}",
                method.name(),
                s.best.accuracy
            );
            rows.push(Row {
                method,
                seed,
                accuracy: s.best.accuracy,
                tta: s.best.tta_accuracy,
                iou: s.best.mask_iou,
            });
        }
    }
    let mut per_seed = String::from("method,seed,accuracy,tta_accuracy,mask_iou\n");
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for r in &rows {
        per_seed += &format!(
            "{},{},{:.6},{},{}\n",
            r.method.name(),
            r.seed,
            r.accuracy,
            opt(r.tta),
            opt(r.iou)
        );
    }
    let stats: Vec<(Method, MeanStd, Option<MeanStd>, Option<MeanStd>)> = args
        .methods
        .iter()
        .map(|&m| {
            let of = |f: &dyn Fn(&Row) -> Option<f64>| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.method == m)
                    .filter_map(f)
                    .collect();
                (!v.is_empty()).then(|| mean_std(&v))
            };
            (
                m,
                of(&|r| Some(r.accuracy)).unwrap_or((0.0, 0.0)),
                of(&|r| r.tta),
                of(&|r| r.iou),
            )
        })
        .collect();
    let best = stats.iter().map(|s| s.1 .0).fold(f64::MIN, f64::max);
    let pm = |v: Option<MeanStd>| {
        v.map(|(m, s)| format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s))
            .unwrap_or_else(|| "-".into())
    };
    let mut md = format!(
        "Validation accuracy (%) over {} seeds, mean ± std; best in bold.\n\n| method | accuracy | with TTA | mask IoU (%) |\n|---|---|---|---|\n",
        args.seeds
    );
    let mut csv =
        String::from("method,accuracy_mean,accuracy_std,tta_mean,tta_std,iou_mean,iou_std\n");
    for (m, acc, tta, iou) in &stats {
        let a = pm(Some(*acc));
        let a = if acc.0 == best { format!("**{a}**") } else { a };
        md += &format!("| {} | {a} | {} | {} |\n", m.name(), pm(*tta), pm(*iou));
        let c = |v: Option<MeanStd>| {
            v.map(|(m, s)| format!("{m:.6},{s:.6}"))
                .unwrap_or_else(|| ",".into())
        };
        csv += &format!(
            "{},{:.6},{:.6},{},{}\n",
            m.name(),
            acc.0,
            acc.1,
            c(*tta),
            c(*iou)
        );
    }
    for (name, text) in [
        ("compare.md", &md),
        ("compare.csv", &csv),
        ("per_seed.csv", &per_seed),
    ] {
        crate::autotune::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    println!("\n{md}\n(written to {})", dir.display());
    Ok(())
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
