//! `apga-gpu bench`: the APGA step and each of its phases, timed with a full GPU sync after
//! each phase (median over the measured steps), with images/s, peak GPU memory, the cold-start
//! cost (shader compilation and autotuning in the first step), optionally per-kernel GPU time
//! of the last step, and the same step in PyTorch (`benches/apga_step_torch.py`) when python3
//! can import torch.

use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::apga::config::TrainConfig;
use crate::apga::policy::{advantages, policy_loss};
use crate::apga::{classifier_config, step};
use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};
use crate::models::{DenseNet, UNet11};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::tensor::Tensor;
use crate::{no_grad, ops, Tape};

/// Median milliseconds of each phase and of the whole step.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub batch_size: usize,
    pub image_size: usize,
    pub classifier: String,
    pub policy_filters: usize,
    pub phases_ms: Vec<(String, f64)>,
    /// Highest GPU memory in use during each phase (last step), above inputs and weights.
    pub phases_peak_mib: Vec<(String, f64)>,
    pub step_ms: f64,
    pub images_per_s: f64,
    pub peak_memory_mib: f64,
    /// Seconds from opening the GPU context to the end of the first (warm-up) step: adapter,
    /// shader compilation, autotuning and one step.
    pub first_step_s: f64,
    /// Pipelines built and seconds spent building them, over the whole run.
    pub pipelines_built: usize,
    pub compile_s: f64,
    /// Kernel choices measured in this run (0 when the autotune cache was warm) and seconds
    /// spent measuring.
    pub autotuned: usize,
    pub autotune_s: f64,
    /// Per-kernel GPU time of the last measured step (with `profile`).
    #[serde(skip)]
    pub profile: Option<crate::gpu::ProfileReport>,
}

/// The PyTorch twin's figures for the same step.
#[derive(Debug, Clone, Serialize)]
pub struct TorchBench {
    /// e.g. "PyTorch 2.15.0 cpu (2 threads)".
    pub label: String,
    pub phases_ms: Vec<(String, f64)>,
    pub step_ms: f64,
}

/// The twin script, embedded so that an installed binary can run it.
const TORCH_TWIN: &str = include_str!("../../benches/apga_step_torch.py");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Times `steps` APGA steps (after one warm-up step) of the configuration's networks; with
/// `steps == 0` only the warm-up step runs and its times (compilation and autotuning
/// included) are reported, for peak memory and cold start at sizes where a step takes minutes.
/// With `profile`, every dispatch is timed on the GPU and the last step's per-kernel table is
/// returned (phase times then include the profiler's waits at each submit).
pub fn bench(
    cfg: &TrainConfig,
    steps: usize,
    options: &GpuOptions,
    profile: bool,
) -> Result<BenchResult> {
    let opened = Instant::now();
    let gpu = Gpu::new(GpuOptions {
        profile: profile || options.profile,
        ..options.clone()
    })?;
    let (b, s) = (cfg.batch_size, cfg.image_size);
    let clf = DenseNet::new(&gpu, classifier_config(&cfg.classifier_arch, 2)?, 0)?;
    let policy = UNet11::new(&gpu, cfg.policy_filters, 1)?;
    let mut adam_c = Adam::new(
        &clf.parameters(),
        AdamConfig {
            lr: cfg.lr_classifier,
            ..Default::default()
        },
    )?;
    let mut adam_p = Adam::new(
        &policy.parameters(),
        AdamConfig {
            lr: cfg.lr_policy,
            ..Default::default()
        },
    )?;
    let values: Vec<f32> = (0..b * 3 * s * s)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let x = Tensor::from_slice(&gpu, &values, &[b, 3, s, s])?;
    let labels: Vec<usize> = (0..b).map(|i| i % 2).collect();
    let names = [
        "classifier step",
        "policy forward",
        "adversarial forward",
        "policy step",
        "aiding step",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len() + 1];
    let mut state = step::PolicyState::default();
    // The paper's step (Eq. 7, threshold action), as the PyTorch twin runs it.
    let paper = TrainConfig {
        pg_variant: crate::apga::PgVariant::Paper,
        ..cfg.clone()
    };
    let fill = cfg.erase_value.fill(cfg.normalize);
    gpu.sync()?;
    gpu.reset_peak_memory();
    let base = gpu.memory().in_use;
    let mut first_step_s = 0.0;
    let mib = |bytes: u64| bytes.saturating_sub(base) as f64 / (1 << 20) as f64;
    let mut overall_peak = 0u64;
    let mut phase_peaks = vec![0.0; names.len()];
    for i in 0..=steps {
        if i == steps {
            gpu.profile_reset()?;
        }
        let mut t = Instant::now();
        let mut lap = |k: usize, times: &mut Vec<Vec<f64>>, t: &mut Instant| -> Result<()> {
            gpu.sync()?;
            let m = gpu.memory();
            overall_peak = overall_peak.max(m.peak_in_use);
            phase_peaks[k] = mib(m.peak_in_use);
            gpu.reset_peak_memory();
            if i > 0 || steps == 0 {
                times[k].push(t.elapsed().as_secs_f64() * 1e3);
            }
            *t = Instant::now();
            Ok(())
        };
        let start = Instant::now();
        let l_orig = step::classifier_step(&clf, &mut adam_c, &x, &labels)?;
        lap(0, &mut times, &mut t)?;
        let tape = Tape::new();
        let p = step::policy_probs(&policy, &x)?;
        lap(1, &mut times, &mut t)?;
        let a = no_grad(|| ops::ge_scalar(&p, 0.5))?;
        let x_adv = no_grad(|| step::erase(&x, &ops::add_scalar(&ops::neg(&a)?, 1.0)?, fill))?;
        let l_adv = no_grad(|| ops::cross_entropy(&clf.forward(&x_adv, false)?, &labels))?;
        lap(2, &mut times, &mut t)?;
        let reward = l_adv.item()? - l_orig.item()?;
        let adv = advantages(&[reward], &mut state, &paper);
        let l_pg = policy_loss(&p, &a, &p, &adv, 0.0, &paper)?;
        adam_p.step(&tape.backward(&l_pg)?)?;
        lap(3, &mut times, &mut t)?;
        let keep = step::aiding_mask(&policy, &x)?;
        step::classifier_step(&clf, &mut adam_c, &step::erase(&x, &keep, fill)?, &labels)?;
        lap(4, &mut times, &mut t)?;
        if i > 0 || steps == 0 {
            times[5].push(start.elapsed().as_secs_f64() * 1e3);
        }
        if i == 0 {
            first_step_s = opened.elapsed().as_secs_f64();
        }
    }
    let profile = gpu.profile_report()?;
    let (pipelines_built, compile) = gpu.compile_stats();
    let (autotuned, autotune) = crate::gpu::autotune::tuning_stats(&gpu);
    let step_ms = median(times[5].clone());
    Ok(BenchResult {
        batch_size: b,
        image_size: s,
        classifier: cfg.classifier_arch.clone(),
        policy_filters: cfg.policy_filters,
        phases_ms: names
            .iter()
            .zip(&times)
            .map(|(n, t)| (n.to_string(), median(t.clone())))
            .collect(),
        step_ms,
        images_per_s: b as f64 / (step_ms / 1e3),
        phases_peak_mib: names
            .iter()
            .zip(&phase_peaks)
            .map(|(n, m)| (n.to_string(), *m))
            .collect(),
        peak_memory_mib: mib(overall_peak.max(gpu.memory().peak_in_use)),
        first_step_s,
        pipelines_built,
        compile_s: compile.as_secs_f64(),
        autotuned,
        autotune_s: autotune.as_secs_f64(),
        profile,
    })
}

/// Runs the PyTorch twin of `bench` on the same configuration (`python` is the interpreter,
/// e.g. `python3`); `Err` says why PyTorch was not measured (not installed, script failed).
pub fn torch_bench(
    cfg: &TrainConfig,
    steps: usize,
    python: &str,
    cuda: bool,
) -> std::result::Result<TorchBench, String> {
    let script = std::env::temp_dir().join(format!("apga_step_torch_{}.py", std::process::id()));
    std::fs::write(&script, TORCH_TWIN)
        .map_err(|e| format!("writing {}: {e}", script.display()))?;
    let mut cmd = Command::new(python);
    cmd.arg(&script).args([
        "--arch",
        &cfg.classifier_arch,
        "--filters",
        &cfg.policy_filters.to_string(),
        "--batch",
        &cfg.batch_size.to_string(),
        "--size",
        &cfg.image_size.to_string(),
        "--steps",
        &steps.to_string(),
        "--lr-classifier",
        &cfg.lr_classifier.to_string(),
        "--lr-policy",
        &cfg.lr_policy.to_string(),
        "--lambda-zeros",
        &cfg.lambda_zeros.to_string(),
    ]);
    if cuda {
        cmd.arg("--cuda");
    }
    let out = cmd.output();
    let _ = std::fs::remove_file(&script);
    let out = out.map_err(|e| format!("{python} not runnable: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "PyTorch twin failed: {}",
            err.lines().last().unwrap_or("no output")
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("PyTorch twin printed no JSON: {e}"))?;
    let phases_ms = v["phases_ms"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| x.as_f64().map(|f| (k.clone(), f)))
                .collect()
        })
        .unwrap_or_default();
    Ok(TorchBench {
        label: format!(
            "PyTorch {} {} ({} threads)",
            v["torch"].as_str().unwrap_or("?"),
            v["device"].as_str().unwrap_or("?"),
            v["threads"]
        ),
        phases_ms,
        step_ms: v["step_ms"]
            .as_f64()
            .ok_or("PyTorch twin printed no step_ms")?,
    })
}
