//! `apga-gpu bench`: the APGA step and each of its phases, timed with a full GPU sync after
//! each phase (median over the measured steps), with images/s and peak GPU memory.

use std::time::Instant;

use serde::Serialize;

use crate::apga::config::TrainConfig;
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
    pub step_ms: f64,
    pub images_per_s: f64,
    pub peak_memory_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Times `steps` APGA steps (after one warm-up step) of the configuration's networks.
pub fn bench(cfg: &TrainConfig, steps: usize, device: Option<&str>) -> Result<BenchResult> {
    let gpu = Gpu::new(GpuOptions {
        device: device.map(str::to_string),
        ..Default::default()
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
    gpu.sync()?;
    gpu.reset_peak_memory();
    let base = gpu.memory().in_use;
    for i in 0..=steps {
        let mut t = Instant::now();
        let lap = |k: usize, times: &mut Vec<Vec<f64>>, t: &mut Instant| -> Result<()> {
            gpu.sync()?;
            if i > 0 {
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
        let x_adv = no_grad(|| step::apply_mask(&x, &ops::add_scalar(&ops::neg(&a)?, 1.0)?))?;
        let l_adv = no_grad(|| ops::cross_entropy(&clf.forward(&x_adv, true)?, &labels))?;
        lap(2, &mut times, &mut t)?;
        let reward = ops::sub(&l_adv, &l_orig)?;
        let b_prev = state.baseline.clone().unwrap_or_else(|| reward.clone());
        let adv = ops::sub(&reward, &b_prev)?;
        let l_pg = step::policy_loss(&p, &a, &adv, cfg)?;
        adam_p.step(&tape.backward(&l_pg)?)?;
        state.baseline = Some(reward.detach());
        lap(3, &mut times, &mut t)?;
        let keep = step::aiding_mask(&policy, &x)?;
        step::classifier_step(&clf, &mut adam_c, &step::apply_mask(&x, &keep)?, &labels)?;
        lap(4, &mut times, &mut t)?;
        if i > 0 {
            times[5].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
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
        peak_memory_mib: (gpu.memory().peak_in_use - base) as f64 / (1 << 20) as f64,
    })
}
