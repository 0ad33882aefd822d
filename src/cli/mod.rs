//! Layer 9: the `apga-gpu` command line.

mod bench;
pub(crate) mod compare;
mod data;
mod eval;
mod infer;
mod jobs;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::data::Normalize;
use crate::error::{Error, Result};
use crate::gpu::adapter::{self, Request};

/// Train medical-image classifiers with Adversarial Policy Gradient Augmentation on any GPU
/// that wgpu reaches (Vulkan, Metal, DX12, GL).
#[derive(Parser, Debug)]
#[command(name = "apga-gpu", version, about)]
pub struct Cli {
    /// Adapter to use: a name substring or an index from `apga-gpu devices`
    /// (default: WGPU_ADAPTER_NAME, else the most capable adapter). `compare` takes a
    /// comma-separated list and runs its jobs on those adapters at once.
    #[arg(long, global = true, env = "APGA_DEVICE")]
    pub device: Option<String>,

    /// Use each op's default kernel variant instead of measuring (autotuning) per adapter.
    #[arg(long, global = true)]
    pub no_autotune: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List every GPU adapter wgpu sees and mark the one that would be used.
    Devices,
    /// Classify images with a DenseNet classifier: one line per image (or JSON with --json).
    Predict(PredictArgs),
    /// Train a classifier with APGA or one of the paper's baselines. With no arguments: the
    /// quick preset (64x64 synthetic radiographs, a small DenseNet and UNet11, minutes on a CPU
    /// driver), ending with baseline-vs-APGA accuracy and the mask's IoU with the true ROI.
    Train(Box<train::TrainArgs>),
    /// Evaluate a run's best (or --latest) checkpoints on its validation split or on --data:
    /// accuracy, per-class accuracy, confusion matrix, TTA accuracy and mask IoU with a policy,
    /// study-level accuracy and kappa for MURA.
    Eval(EvalArgs),
    /// Run several methods over several seeds and write the paper's kind of table (mean +- std
    /// per method, best in bold) as Markdown and CSV, plus the per-seed numbers.
    Compare(Box<compare::CompareArgs>),
    /// Time the APGA step and each of its phases (classifier step, policy forward, adversarial
    /// forward, policy step, aiding step): step time, images/s and peak GPU memory.
    Bench(bench::BenchArgs),
    /// Open a dataset, print its classes and counts per split, optionally export samples
    /// (with their ROI masks for synthetic data) as PNG files.
    Data(DataCommand),
    /// Write the policy's mask for each image: DIR/<name>_mask.png (sigmoid probability x 255)
    /// and DIR/<name>_overlay.png (the image with the kept region, p > 0.5, tinted).
    Masks(MasksArgs),
}

/// Dataset options shared by every command that reads data.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// synthetic | mura:PATH | folder:PATH | csv:FILE
    #[arg(long, default_value = "synthetic")]
    pub data: crate::data::DataSpec,
    /// MURA body part: elbow, finger, forearm, hand, humerus, shoulder, wrist or all.
    #[arg(long, default_value = "all")]
    pub body_part: String,
    /// Data read from files: N training images per class, sampled with the seed (validation
    /// untouched).
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub k_shot: Option<usize>,
    /// folder/csv without a validation split: fraction held out per class.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Skip (and count) missing or unreadable images instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Synthetic data: number of classes (normal, fracture, lesion, ...).
    #[arg(long, default_value_t = 2, value_parser = crate::cli::ranged(crate::limits::CLASSES.0, crate::limits::CLASSES.1))]
    pub classes: usize,
    /// Synthetic data: training images.
    #[arg(long, default_value_t = 400, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub train_size: usize,
    /// Synthetic data: validation images.
    #[arg(long, default_value_t = 200, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub val_size: usize,
    /// Synthetic data: share of bone density the evidence removes (1 = black gaps).
    #[arg(long, default_value_t = crate::data::synthetic::Style::headroom().evidence_strength)]
    pub evidence_strength: f32,
    /// Synthetic data: distractor bars outside the bone (with label-independent gaps).
    #[arg(long, default_value_t = crate::data::synthetic::Style::headroom().clutter, value_parser = crate::cli::ranged(0, 64))]
    pub clutter: usize,
    /// Synthetic data: probability that a marker's position follows the label in training
    /// (0 = no marker; validation markers are random).
    #[arg(long, default_value_t = crate::data::synthetic::Style::headroom().shortcut)]
    pub shortcut: f32,
}

impl DataArgs {
    pub fn options(&self, seed: u64, image_size: usize) -> crate::data::DataOptions {
        crate::data::DataOptions {
            body_part: self.body_part.clone(),
            k_shot: self.k_shot,
            val_fraction: self.val_fraction,
            seed,
            skip_bad_images: self.skip_bad_images,
            synthetic_size: image_size,
            synthetic_classes: self.classes,
            synthetic_train: self.train_size,
            synthetic_style: crate::data::synthetic::Style {
                evidence_strength: self.evidence_strength,
                clutter: self.clutter,
                shortcut: self.shortcut,
            },
            synthetic_val: self.val_size,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DataCommand {
    #[command(flatten)]
    pub data: DataArgs,
    /// Seed (synthetic images, splits, k-shot sampling).
    #[arg(long, default_value_t = 0, value_parser = crate::cli::ranged_u64(crate::limits::SEED.0, crate::limits::SEED.1))]
    pub seed: u64,
    /// Side S of the S x S images.
    #[arg(long, default_value_t = 64, value_parser = crate::cli::ranged(crate::limits::IMAGE_SIZE.0, crate::limits::IMAGE_SIZE.1))]
    pub image_size: usize,
    /// Write the first --count training samples as PNG files into this folder.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Samples to export.
    #[arg(long, default_value_t = 8, value_parser = crate::cli::ranged(crate::limits::SPLIT_SIZE.0, crate::limits::SPLIT_SIZE.1))]
    pub count: usize,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A run directory written by `apga-gpu train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Another dataset to evaluate on (default: the run's own validation split).
    #[arg(long)]
    pub data: Option<String>,
    /// Use the latest checkpoints instead of the best.
    #[arg(long)]
    pub latest: bool,
    /// Skip (and count) missing or unreadable images instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Which DenseNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Densenet121,
    Densenet161,
    Densenet169,
    Densenet201,
}

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Classifier state dict (.safetensors, torchvision DenseNet keys).
    #[arg(long)]
    pub classifier_weights: PathBuf,
    /// Number of classes of the classifier head.
    #[arg(long, value_parser = crate::cli::ranged(1, crate::limits::CLASSES.1))]
    pub num_classes: usize,
    /// Side S of the S x S network input.
    #[arg(long, default_value_t = 224, value_parser = crate::cli::ranged(crate::limits::IMAGE_SIZE.0, crate::limits::IMAGE_SIZE.1))]
    pub image_size: usize,
    /// Input normalisation after scaling to [0, 1].
    #[arg(long, value_enum, default_value_t = Normalize::Imagenet)]
    pub normalize: Normalize,
    /// DenseNet variant of the weights.
    #[arg(long, value_enum, default_value_t = Arch::Densenet169)]
    pub arch: Arch,
    /// One JSON object per line: {"image", "logits", "probs"}.
    #[arg(long)]
    pub json: bool,
    /// Images (PNG, JPEG, or any format the image crate reads).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MasksArgs {
    /// Segmenter (policy) state dict (.safetensors, TernausNet UNet11 keys).
    #[arg(long)]
    pub segmenter_weights: PathBuf,
    /// Side S of the S x S network input (a multiple of 32).
    #[arg(long, default_value_t = 224, value_parser = crate::cli::ranged(crate::limits::IMAGE_SIZE.0, crate::limits::IMAGE_SIZE.1))]
    pub image_size: usize,
    /// Input normalisation after scaling to [0, 1].
    #[arg(long, value_enum, default_value_t = Normalize::Imagenet)]
    pub normalize: Normalize,
    /// UNet11 decoder width (TernausNet's num_filters).
    #[arg(long, default_value_t = 32, value_parser = crate::cli::ranged(crate::limits::FILTERS.0, crate::limits::FILTERS.1))]
    pub num_filters: usize,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Images (PNG, JPEG, or any format the image crate reads).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Runs a parsed command line.
/// Runs a parsed command line. The GPU options are resolved here, once: the environment
/// (`GpuOptions::from_env`), then the global flags.
pub fn run(cli: Cli) -> Result<()> {
    if let Command::Devices = cli.command {
        return devices(cli.device.as_deref());
    }
    let mut gpu = crate::gpu::GpuOptions::from_env()?;
    // `--device A,B`: several adapters, for `compare` only.
    let adapters: Vec<String> = cli
        .device
        .iter()
        .flat_map(|d| d.split(','))
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if adapters.len() > 1 && !matches!(cli.command, Command::Compare(_)) {
        return Err(Error::usage(
            "--device",
            "names one adapter; a list (A,B) is for `compare`, which runs its jobs on each",
        ));
    }
    gpu.device = adapters.first().cloned();
    if cli.no_autotune {
        gpu.autotune = false;
    }
    match cli.command {
        Command::Devices => devices(cli.device.as_deref()),
        Command::Predict(args) => infer::predict(&gpu, &args),
        Command::Masks(args) => infer::masks(&gpu, &args),
        Command::Data(args) => data::run(&args),
        Command::Train(args) => train::run(&gpu, &args),
        Command::Eval(args) => eval::eval(&gpu, &args),
        Command::Compare(args) => compare::compare(&gpu, &adapters, &args),
        Command::Bench(args) => bench::bench(&gpu, &args),
    }
}

fn devices(explicit: Option<&str>) -> Result<()> {
    let request = Request::resolve(explicit);
    let (list, chosen) = adapter::list(&request);
    if list.is_empty() {
        return Err(chosen.err().unwrap_or(Error::NoAdapter {
            detail: String::new(),
        }));
    }
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|s| {
            [
                s.index.to_string(),
                format!("{:?}", s.backend),
                format!("{:?}", s.device_type),
                s.name.clone(),
                [s.driver.as_str(), s.driver_info.as_str()]
                    .iter()
                    .filter(|x| !x.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" / "),
            ]
        })
        .collect();
    let header = ["#", "backend", "type", "name", "driver"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |mark: &str, cells: [&str; 5]| {
        let mut s = format!("{mark} ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(" ", header);
    for r in &rows {
        let mark = match &chosen {
            Ok(i) if *i == r[0].parse::<usize>().unwrap_or(usize::MAX) => "*",
            _ => " ",
        };
        line(mark, [&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    match chosen {
        Ok(i) => {
            println!("\n* = used by default ({})", describe(&request));
            let _ = i;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn describe(request: &Request) -> String {
    match request {
        Request::Auto => "most capable device type; pick another with --device or \
                          WGPU_ADAPTER_NAME"
            .into(),
        Request::Named { wanted, source } => format!("{source} = {wanted:?}"),
    }
}

/// A `usize` flag's parser that refuses values outside `lo..=hi`, naming the flag (see
/// `crate::limits`).
pub(crate) fn ranged(lo: u64, hi: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(lo..=hi)
}

/// A `u64` flag's parser that refuses values outside `lo..=hi`, naming the flag.
pub(crate) fn ranged_u64(lo: u64, hi: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::<u64>::new().range(lo..=hi)
}
