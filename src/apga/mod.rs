//! Layer 7: APGA training (Algorithm 1 of Cheng et al. 2019), the paper's baselines, and
//! evaluation. `train` runs one method: it first obtains the classifier trained to convergence
//! on the original images (early stopping on validation accuracy; cached and reused by every
//! method of a comparison), then trains with the method, evaluating after every epoch.
//!
//! A run directory holds `config.toml`, `metrics.jsonl` (one line per step and per
//! evaluation), the best checkpoints (`classifier_best.safetensors`, `policy_best.safetensors`),
//! the latest committed state (`checkpoints/epochE-batchB/`: networks and Adam moments, named
//! by the manifest `train_state.json`, for `--resume` and `eval --latest`), `masks/`
//! (Figure-2 style overlays of fixed validation images at each evaluation), `plots/` (loss,
//! reward and accuracy curves) and `summary.json`. One process writes a run directory at a
//! time (`.lock`); a directory holding a run is only replaced with `--overwrite`.
//!
//! Where things live: `config.rs` (the resolved configuration, presets, the variants' enums),
//! `policy.rs` (the policy-gradient pieces: action, advantages, Eq. 7 and its variants, erasing,
//! the guard), `step.rs` (one step of each method), `pretrain.rs` (the converged classifier and
//! the policy's foreground warm start, cached), `trainer.rs` (the loop: setup, per-method step,
//! evaluation schedule, checkpoints), `resume.rs`, `run_dir.rs` (log, overlays), `eval.rs`
//! (metrics), `plots.rs`, `bench.rs` (`apga-gpu bench`).

pub mod bench;
pub mod config;
pub mod eval;
pub mod metrics;
pub mod plots;
pub mod policy;
mod pretrain;
mod resume;
mod run_dir;
pub mod step;
mod trainer;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::{DataOptions, Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::{unet, DenseNet, DenseNetConfig, UNet11};
use crate::nn::state::{self, LoadOptions};
pub use config::{Action, EraseValue, Method, PgVariant, Preset, Regularizer, Reward, TrainConfig};
pub use eval::{evaluate, EvalOptions, Metrics};

/// The classifier a configuration names.
pub fn classifier_config(arch: &str, classes: usize) -> Result<DenseNetConfig> {
    Ok(match arch {
        "densenet121" => DenseNetConfig::densenet121(classes),
        "densenet161" => DenseNetConfig::densenet161(classes),
        "densenet169" => DenseNetConfig::densenet169(classes),
        "densenet201" => DenseNetConfig::densenet201(classes),
        "tiny" => DenseNetConfig::new(8, &[2, 2, 2], 16, classes),
        other => {
            return Err(Error::usage(
                "--classifier-arch",
                format!("unknown architecture {other:?}: densenet121, densenet161, densenet169, densenet201 or tiny"),
            ))
        }
    })
}

/// Set by Ctrl-C (see `install_interrupt_handler`): the run saves its checkpoints after the
/// current step and stops.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes Ctrl-C stop training cleanly (checkpoint saved) instead of killing the process.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A second Ctrl-C while saving: give up at once.
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: saving a checkpoint after the current step (Ctrl-C again to quit now)"
        );
    });
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub method: String,
    pub run_dir: PathBuf,
    pub seed: u64,
    /// The converged baseline classifier every method starts from, on validation.
    pub pretrained: Metrics,
    /// The method's classifier at its best validation epoch.
    pub best: Metrics,
    pub best_epoch: usize,
    pub final_metrics: Metrics,
    pub steps: usize,
    pub seconds: f64,
    /// The adapter the run trained on ("name (backend)"); absent in older summaries.
    #[serde(default)]
    pub adapter: Option<String>,
}

/// Options outside the configuration: where and how verbosely.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: Option<PathBuf>,
    pub quiet: bool,
    /// The GPU context's options (adapter, autotuning, ...), as the caller resolved them.
    pub gpu: crate::gpu::GpuOptions,
    /// Folder of cached converged baselines (default: [`default_pretrained_cache`]).
    pub pretrained_cache: Option<PathBuf>,
    /// Behave as if Ctrl-C came after this many method steps (tests of `resume`).
    pub stop_after_steps: Option<usize>,
    /// Replace the run already in `out` (its own files; anything else is left alone).
    pub overwrite: bool,
}

/// The dataset options a configuration names.
pub fn data_options(cfg: &TrainConfig) -> DataOptions {
    DataOptions {
        body_part: cfg.body_part.clone(),
        k_shot: cfg.k_shot,
        val_fraction: cfg.val_fraction,
        seed: cfg.seed,
        skip_bad_images: cfg.skip_bad_images,
        synthetic_size: cfg.image_size,
        synthetic_classes: cfg.classes,
        synthetic_train: cfg.train_size,
        synthetic_val: cfg.val_size,
        synthetic_style: cfg.synthetic_style,
    }
}

/// Runs one training configuration to its end.
pub fn train(cfg: TrainConfig, opts: &RunOptions) -> Result<Summary> {
    trainer::train_inner(cfg, opts, None)
}

pub use resume::resume;
pub use trainer::default_pretrained_cache;

/// Reads the resolved configuration a run wrote (`config.toml`).
pub fn read_run_config(run_dir: &Path) -> Result<TrainConfig> {
    run_dir::read_config(run_dir)
}

/// Reads a finished run's `summary.json`.
pub fn read_summary(run_dir: &Path) -> Result<Summary> {
    let path = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path,
        detail: format!("not a run summary ({e})"),
    })
}

/// Evaluates a finished run's best (or latest) checkpoints on its validation split, or on
/// another dataset given as `data`.
pub fn evaluate_run(
    run_dir: &Path,
    data: Option<&str>,
    latest: bool,
    skip_bad_images: bool,
    gpu_options: &crate::gpu::GpuOptions,
) -> Result<Metrics> {
    let mut cfg = run_dir::read_config(run_dir)?;
    if let Some(d) = data {
        cfg.data = d.to_string();
    }
    cfg.skip_bad_images |= skip_bad_images;
    let gpu = Gpu::new(gpu_options.clone())?;
    let spec: crate::data::DataSpec = cfg
        .data
        .parse()
        .map_err(|e: String| Error::usage("--data", e))?;
    let ds = Dataset::open(&spec, &data_options(&cfg))?;
    let [clf_file, policy_file] = if latest {
        let st = resume::read_manifest(run_dir)?;
        let [c, p, _] = resume::latest_files(run_dir, &st);
        [c, p]
    } else {
        [
            run_dir.join("classifier_best.safetensors"),
            run_dir.join("policy_best.safetensors"),
        ]
    };
    let clf = DenseNet::new(
        &gpu,
        classifier_config(&cfg.classifier_arch, ds.classes.len())?,
        0,
    )?;
    state::load(&clf, &clf_file, &LoadOptions::default())?;
    let policy = if cfg.method.has_policy() {
        let p = UNet11::new(&gpu, cfg.policy_filters, 0)?;
        let o = LoadOptions {
            aliases: unet::encoder_aliases(),
            ..Default::default()
        };
        state::load(&p, &policy_file, &o)?;
        Some(p)
    } else {
        None
    };
    let pre = Preprocess {
        size: cfg.image_size,
        normalize: cfg.normalize,
    };
    evaluate(
        &clf,
        policy.as_ref(),
        &ds,
        &ds.val,
        EvalOptions {
            pre,
            workers: cfg.workers,
            batch_size: cfg.batch_size,
            masking: step::Masking::of(&cfg),
            skip_bad_images: cfg.skip_bad_images,
        },
    )
}
