//! APGA training: the sign of the policy gradient on a toy problem, what one step changes,
//! determinism, and end-to-end `apga-gpu train` runs of every method on tiny synthetic data.

mod common;

use apga_gpu::apga::{self, step, Method, PgVariant, Preset, RunOptions, TrainConfig};
use apga_gpu::models::{DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::Module;
use apga_gpu::optim::{Adam, AdamConfig};
use apga_gpu::{ops, Tape, Tensor};
use common::*;

/// One Adam step of the policy loss on free logits z (P = sigmoid(z)); returns P before and
/// after.
fn policy_update(z0: &[f32], advantage: f32, lambda: f64) -> (Vec<f32>, Vec<f32>) {
    let g = gpu();
    let z = tensor(z0, &[1, 1, 1, z0.len()]).with_grad();
    let cfg = TrainConfig {
        lambda_zeros: lambda,
        ..TrainConfig::preset(Preset::Quick)
    };
    let mut adam = Adam::new(
        std::slice::from_ref(&z),
        AdamConfig {
            lr: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    let before = ops::sigmoid(&z).unwrap().to_vec().unwrap();
    let tape = Tape::new();
    let p = ops::sigmoid(&z).unwrap();
    let a = ops::ge_scalar(&p.detach(), 0.5).unwrap();
    let adv = Tensor::scalar(&g, advantage).unwrap();
    let loss = step::policy_loss(&p, &a, &adv, &cfg).unwrap();
    adam.step(&tape.backward(&loss).unwrap()).unwrap();
    (before, ops::sigmoid(&z).unwrap().to_vec().unwrap())
}

#[test]
fn policy_gradient_sign() {
    // apga.md's sign check: BCE(P, a) is -log pi(a), so a positive advantage raises P where it
    // was already >= 0.5 (the erased region is reinforced) and lowers it elsewhere; a negative
    // advantage does the opposite; lambda_zeros alone pulls every P toward 0.
    let z0 = [2.0, 0.3, -0.3, -2.0];
    let (b, a) = policy_update(&z0, 1.0, 0.0);
    assert!(
        a[0] > b[0] && a[1] > b[1] && a[2] < b[2] && a[3] < b[3],
        "positive advantage: {b:?} -> {a:?}"
    );
    let (b, a) = policy_update(&z0, -1.0, 0.0);
    assert!(
        a[0] < b[0] && a[1] < b[1] && a[2] > b[2] && a[3] > b[3],
        "negative advantage: {b:?} -> {a:?}"
    );
    let (b, a) = policy_update(&z0, 0.0, 0.1);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x < y),
        "lambda_zeros pulls toward 0: {b:?} -> {a:?}"
    );
}

fn tiny_nets() -> (DenseNet, UNet11) {
    let g = gpu();
    (
        DenseNet::new(&g, DenseNetConfig::new(4, &[2, 2], 8, 2), 1).unwrap(),
        UNet11::new(&g, 2, 2).unwrap(),
    )
}

fn snapshot(m: &dyn Module) -> Vec<Vec<f32>> {
    m.parameters().iter().map(|t| t.to_vec().unwrap()).collect()
}

#[test]
fn one_apga_step_updates_both_networks_and_the_baseline() {
    for variant in [PgVariant::Paper, PgVariant::ReleasedCode] {
        let (clf, policy) = tiny_nets();
        let cfg = TrainConfig {
            pg_variant: variant,
            ..TrainConfig::preset(Preset::Quick)
        };
        let mut ac = Adam::new(
            &clf.parameters(),
            AdamConfig {
                lr: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let mut ap = Adam::new(
            &policy.parameters(),
            AdamConfig {
                lr: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let mut r = rng(3);
        let x = tensor(&uniform(&mut r, 4 * 3 * 32 * 32, 0.0, 1.0), &[4, 3, 32, 32]);
        let (c0, p0) = (snapshot(&clf), snapshot(&policy));
        let mut state = step::PolicyState::default();
        let v = step::apga_step(
            &clf,
            &policy,
            &mut ac,
            &mut ap,
            &mut state,
            &x,
            &[0, 1, 0, 1],
            &cfg,
        )
        .unwrap();
        let get = |n: &str| v.iter().find(|(k, _)| *k == n).unwrap().1.item().unwrap();
        let (c1, p1) = (snapshot(&clf), snapshot(&policy));
        assert!(
            c0.iter().zip(&c1).filter(|(a, b)| a != b).count() > c0.len() / 2,
            "{variant:?}: classifier stepped"
        );
        assert!(
            p0.iter().zip(&p1).any(|(a, b)| a != b),
            "{variant:?}: policy stepped"
        );
        assert!(
            (get("reward") - (get("l_adv") - get("l_orig"))).abs() < 1e-5
                || variant == PgVariant::ReleasedCode
        );
        match variant {
            // b_1 = R_1: the first advantage is 0, so only lambda_zeros moves the policy.
            PgVariant::Paper => {
                assert_eq!(get("advantage"), 0.0);
                assert_eq!(get("baseline"), get("reward"));
            }
            // b = 0.5 * 0 + 0.5 * R before the advantage: adv = R / 2.
            PgVariant::ReleasedCode => {
                assert!((get("advantage") - 0.5 * get("reward")).abs() < 1e-6)
            }
        }
        let b = state.baseline.as_ref().unwrap().item().unwrap();
        assert!(b.is_finite());
    }
}

fn tiny_config(method: Method, seed: u64) -> TrainConfig {
    TrainConfig {
        method,
        image_size: 32,
        train_size: 24,
        val_size: 8,
        batch_size: 8,
        classifier_arch: "tiny".into(),
        policy_filters: 2,
        epochs: 1,
        pretrain_epochs: 2,
        patience: 1,
        seed,
        workers: 1,
        mask_samples: 2,
        ..TrainConfig::preset(Preset::Quick)
    }
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let opts = RunOptions {
            out: Some(dir.path().join(name)),
            quiet: true,
            pretrained_cache: Some(dir.path().join(format!("cache-{name}"))),
            ..Default::default()
        };
        let s = apga::train(tiny_config(Method::Apga, 5), &opts).unwrap();
        let log = std::fs::read_to_string(dir.path().join(name).join("metrics.jsonl")).unwrap();
        (s.final_metrics.accuracy, s.final_metrics.mask_iou, log)
    };
    let (a, b) = (run("a"), run("b"));
    assert_eq!(a, b, "same seed, same metrics and log");
}

#[test]
fn every_method_trains_end_to_end_and_leaves_a_complete_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for method in [
        Method::Baseline,
        Method::Cutout,
        Method::Gradcam,
        Method::Apga,
        Method::EndToEnd,
    ] {
        let out = dir.path().join(method.name());
        let opts = RunOptions {
            out: Some(out.clone()),
            quiet: true,
            pretrained_cache: Some(cache.clone()),
            ..Default::default()
        };
        let s = apga::train(tiny_config(method, 1), &opts)
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        assert_eq!(s.method, method.name());
        for f in [
            "config.toml",
            "metrics.jsonl",
            "summary.json",
            "classifier_latest.safetensors",
            "classifier_best.safetensors",
        ] {
            assert!(out.join(f).is_file(), "{method:?}: {f}");
        }
        if method.has_policy() {
            assert!(out.join("policy_latest.safetensors").is_file());
            assert!(out.join("masks").read_dir().unwrap().count() >= 2);
            assert!(s.final_metrics.mask_iou.is_some() && s.final_metrics.tta_accuracy.is_some());
        }
        let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert!(
            log.lines().any(|l| l.contains("\"phase\":\"train\"")),
            "{method:?}: step lines"
        );
        assert!(
            log.lines().any(|l| l.contains("\"phase\":\"eval\"")),
            "{method:?}: eval lines"
        );
        if method == Method::Apga {
            assert!(out.join("plots/reward.png").is_file());
            for key in [
                "l_orig",
                "l_adv",
                "reward",
                "baseline",
                "advantage",
                "erased_fraction",
            ] {
                assert!(log.contains(key), "{key}");
            }
        }
        // The config written is the one resolved, and parses back.
        let cfg: TrainConfig =
            toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
        assert_eq!(cfg, tiny_config(method, 1));
    }
    // The converged baseline was trained once and reused by the other methods.
    assert_eq!(cache.read_dir().unwrap().count(), 1);
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    for method in [Method::Apga, Method::Cutout] {
        let cfg = TrainConfig {
            epochs: 2,
            ..tiny_config(method, 7)
        };
        let opts = |name: &str, stop: Option<usize>| RunOptions {
            out: Some(dir.path().join(format!("{}-{name}", method.name()))),
            quiet: true,
            pretrained_cache: Some(dir.path().join(format!("cache-{}-{name}", method.name()))),
            stop_after_steps: stop,
            ..Default::default()
        };
        let full = apga::train(cfg.clone(), &opts("full", None)).unwrap();
        // Stopped mid-epoch 2 (3 batches per epoch), then resumed.
        let e = apga::train(cfg.clone(), &opts("cut", Some(4)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("interrupted at epoch 2"), "{e}");
        let resumed = apga::resume(
            &dir.path().join(format!("{}-cut", method.name())),
            &opts("cut", None),
        )
        .unwrap();
        assert_eq!(resumed.steps, full.steps);
        let lines = |name: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(
                dir.path()
                    .join(format!("{}-{name}", method.name()))
                    .join("metrics.jsonl"),
            )
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["phase"] == "train")
            .collect()
        };
        let (a, b) = (lines("full"), lines("cut"));
        assert_eq!(a.len(), b.len(), "{method:?}: same steps logged");
        // Tolerance: 1e-6 relative on every logged loss (the GPU work is identical, so in
        // practice the values are bit-identical).
        for (x, y) in a.iter().zip(&b) {
            for (k, v) in x.as_object().unwrap() {
                if let (Some(p), Some(q)) = (v.as_f64(), y[k].as_f64()) {
                    assert!(
                        (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                        "{method:?} step {}: {k} {p} vs {q}",
                        x["step"]
                    );
                }
            }
        }
        assert_eq!(full.final_metrics.accuracy, resumed.final_metrics.accuracy);
        assert_eq!(full.final_metrics.mask_iou, resumed.final_metrics.mask_iou);
    }
}
