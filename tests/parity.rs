//! PyTorch parity: every CNN op's outputs and gradients against fixtures PyTorch wrote
//! (`tests/fixtures/make_fixtures.py`; committed, so no Python is needed here). Each fixture
//! holds the inputs, the output, a random upstream gradient `grad_out`, and the gradients of
//! sum(out * grad_out). Tolerances: 1e-4 absolute + 1e-4 relative for outputs and gradients
//! (float32 sums in a different order), 1e-6 relative for Adam's parameters.

mod common;

use std::collections::HashMap;

use apga_gpu::{ops, optim, Tape, Tensor};
use common::*;

struct Fixture {
    name: String,
    tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}/{k}");
                let data: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (k, (data, v.shape().to_vec()))
            })
            .collect();
        Fixture {
            name: name.into(),
            tensors,
            meta: header.metadata().clone().unwrap_or_default(),
        }
    }
    fn t(&self, k: &str) -> Tensor {
        let (v, s) = self
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("{}: no tensor {k}", self.name));
        tensor(v, s)
    }
    fn values(&self, k: &str) -> &[f32] {
        &self
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("{}: no tensor {k}", self.name))
            .0
    }
    fn has(&self, k: &str) -> bool {
        self.tensors.contains_key(k)
    }
    fn usize(&self, k: &str) -> usize {
        self.meta
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: metadata {k}", self.name))
    }

    /// Runs `f` on the named inputs under a tape, checks `out`, then backpropagates
    /// sum(out * grad_out) and checks `grad_<name>` for each name in `grads`.
    fn check(
        &self,
        inputs: &[&str],
        grads: &[&str],
        f: impl Fn(&[Tensor]) -> apga_gpu::Result<Tensor>,
    ) {
        let xs: Vec<Tensor> = inputs
            .iter()
            .map(|k| {
                let t = self.t(k);
                if grads.contains(k) {
                    t.with_grad()
                } else {
                    t
                }
            })
            .collect();
        let tape = Tape::new();
        let out = f(&xs).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let want_shape = &self.tensors["out"].1;
        let got_shape: Vec<usize> = if out.shape().is_empty() {
            vec![1]
        } else {
            out.shape().to_vec()
        };
        assert_eq!(&got_shape, want_shape, "{}: output shape", self.name);
        assert_close(
            &format!("{} out", self.name),
            &out.to_vec().unwrap(),
            self.values("out"),
            1e-4,
            1e-4,
        );
        let go = Tensor::from_slice(&gpu(), self.values("grad_out"), out.shape()).unwrap();
        let loss = ops::sum_all(&ops::mul(&out, &go).unwrap()).unwrap();
        let g = tape.backward(&loss).unwrap();
        for k in grads {
            let i = inputs
                .iter()
                .position(|x| x == k)
                .expect("grad of an input");
            let got = g
                .get(&xs[i])
                .unwrap_or_else(|| panic!("{}: no gradient for {k}", self.name))
                .to_vec()
                .unwrap();
            assert_close(
                &format!("{} grad_{k}", self.name),
                &got,
                self.values(&format!("grad_{k}")),
                1e-4,
                1e-4,
            );
        }
        println!("parity ok: {} (out + {} gradients)", self.name, grads.len());
    }
}

#[test]
fn conv2d_matches_pytorch() {
    for name in ["conv2d_3x3", "conv2d_7x7_s2", "conv2d_1x1"] {
        let f = Fixture::load(name);
        let (s, p) = (f.usize("stride"), f.usize("padding"));
        if f.has("bias") {
            f.check(&["x", "weight", "bias"], &["x", "weight", "bias"], |t| {
                ops::conv2d(&t[0], &t[1], Some(&t[2]), s, p)
            });
        } else {
            f.check(&["x", "weight"], &["x", "weight"], |t| {
                ops::conv2d(&t[0], &t[1], None, s, p)
            });
        }
    }
}

#[test]
fn conv_transpose2d_matches_pytorch() {
    let f = Fixture::load("conv_transpose2d");
    let (s, p, op) = (
        f.usize("stride"),
        f.usize("padding"),
        f.usize("output_padding"),
    );
    f.check(&["x", "weight", "bias"], &["x", "weight", "bias"], |t| {
        ops::conv_transpose2d(&t[0], &t[1], Some(&t[2]), s, p, op)
    });
}

#[test]
fn batch_norm_matches_pytorch() {
    for name in [
        "batch_norm_train",
        "batch_norm_train_relu",
        "batch_norm_eval",
        "batch_norm_eval_relu",
    ] {
        let f = Fixture::load(name);
        let cfg = ops::BatchNormConfig {
            training: f.usize("training") == 1,
            relu: f.usize("relu") == 1,
            ..Default::default()
        };
        let rm = f.t("running_mean");
        let rv = f.t("running_var");
        f.check(&["x", "weight", "bias"], &["x", "weight", "bias"], |t| {
            ops::batch_norm2d(&t[0], &t[1], &t[2], Some((&rm, &rv)), cfg)
        });
        assert_close(
            &format!("{name} running_mean"),
            &rm.to_vec().unwrap(),
            f.values("new_running_mean"),
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("{name} running_var"),
            &rv.to_vec().unwrap(),
            f.values("new_running_var"),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn pooling_matches_pytorch() {
    for name in ["max_pool2d_3_2_1", "max_pool2d_2_2_0", "avg_pool2d_2_2_0"] {
        let f = Fixture::load(name);
        let (k, s, p) = (f.usize("k"), f.usize("stride"), f.usize("padding"));
        let is_max = name.starts_with("max");
        f.check(&["x"], &["x"], |t| {
            if is_max {
                ops::max_pool2d(&t[0], k, s, p)
            } else {
                ops::avg_pool2d(&t[0], k, s, p)
            }
        });
    }
    Fixture::load("global_avg_pool2d").check(&["x"], &["x"], |t| ops::global_avg_pool2d(&t[0]));
}

#[test]
fn upsampling_matches_pytorch() {
    for name in [
        "upsample_nearest_7x7_to_20x20",
        "upsample_nearest_5x4_to_3x9",
        "upsample_bilinear_7x7_to_20x20",
        "upsample_bilinear_5x4_to_3x9",
    ] {
        let f = Fixture::load(name);
        let size = [f.usize("oh"), f.usize("ow")];
        let bilinear = f.meta["mode"] == "bilinear";
        f.check(&["x"], &["x"], |t| {
            if bilinear {
                ops::upsample_bilinear2d(&t[0], size)
            } else {
                ops::upsample_nearest2d(&t[0], size)
            }
        });
    }
}

#[test]
fn linear_and_losses_match_pytorch() {
    Fixture::load("linear").check(&["x", "weight", "bias"], &["x", "weight", "bias"], |t| {
        ops::linear(&t[0], &t[1], Some(&t[2]))
    });
    let f = Fixture::load("cross_entropy");
    let labels: Vec<usize> = f.values("labels").iter().map(|&v| v as usize).collect();
    f.check(&["logits"], &["logits"], |t| {
        ops::cross_entropy(&t[0], &labels)
    });
    Fixture::load("binary_cross_entropy").check(&["p", "target"], &["p"], |t| {
        ops::binary_cross_entropy(&t[0], &t[1])
    });
    Fixture::load("binary_cross_entropy_with_logits").check(&["z", "target"], &["z"], |t| {
        ops::binary_cross_entropy_with_logits(&t[0], &t[1])
    });
}

#[test]
fn adam_matches_torch_optim_adam() {
    // Five copies of the fixture's parameter, each given the fixture's gradient, and one that
    // never gets a gradient, with the multi-tensor kernel forced: the first four take it
    // (optim_multi.wgsl, where the adapter binds 16 storage buffers), the fifth the
    // one-parameter kernel (the default everywhere; its vec4 form, 12 values); each must
    // follow PyTorch's trajectory, and the sixth must not move. A seventh parameter holds the
    // first 11 values only (the scalar form; Adam is element-wise, so it follows the same
    // trajectory).
    let gpu = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        profile: true,
        kernel_overrides: vec![("adam".into(), "multi".into())],
        ..Default::default()
    })
    .unwrap();
    let t = |v: &[f32], shape: &[usize]| apga_gpu::Tensor::from_slice(&gpu, v, shape).unwrap();
    for name in ["adam_default", "adam_paper_wd"] {
        let f = Fixture::load(name);
        let lr: f64 = f.meta["lr"].parse().unwrap();
        let weight_decay: f64 = f.meta["weight_decay"].parse().unwrap();
        let shape = f.t("w0").shape().to_vec();
        let w0 = f.values("w0");
        let mut ws: Vec<_> = (0..6).map(|_| t(w0, &shape).with_grad()).collect();
        ws.push(t(&w0[..11], &[11]).with_grad());
        let mut adam = optim::Adam::new(
            &ws,
            optim::AdamConfig {
                lr,
                weight_decay,
                ..Default::default()
            },
        )
        .unwrap();
        for step in 1..=f.usize("steps") {
            // The fixture's gradient for this step, routed through the tape: loss = sum(w * g).
            let g = t(f.values(&format!("grad{step}")), &shape);
            let tape = Tape::new();
            let mut loss = ops::sum_all(&ops::mul(&ws[0], &g).unwrap()).unwrap();
            for w in &ws[1..5] {
                let term = ops::sum_all(&ops::mul(w, &g).unwrap()).unwrap();
                loss = ops::add(&loss, &term).unwrap();
            }
            let g11 = t(&f.values(&format!("grad{step}"))[..11], &[11]);
            let term = ops::sum_all(&ops::mul(&ws[6], &g11).unwrap()).unwrap();
            loss = ops::add(&loss, &term).unwrap();
            let grads = tape.backward(&loss).unwrap();
            adam.step(&grads).unwrap();
            let want = f.values(&format!("w{step}"));
            for (k, w) in ws[..5].iter().chain(&ws[6..]).enumerate() {
                let got = w.to_vec().unwrap();
                let len = if k < 5 { want.len() } else { 11 };
                assert_eq!(got.len(), len, "{name} step {step}: element count");
                let want = &want[..len];
                for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                    let rel = ((a - b) / b.abs().max(1e-6)).abs();
                    assert!(
                        rel <= 1e-6,
                        "{name} step {step} parameter {k} element {i}: ours {a}, torch {b}, \
                         relative {rel:e}"
                    );
                }
            }
            assert_eq!(
                ws[5].to_vec().unwrap(),
                w0,
                "a parameter without a gradient moved"
            );
        }
        println!("parity ok: {name} (5 steps within 1e-6 relative)");
    }
    let ran = gpu.profile_report().unwrap().unwrap().table(100);
    let ran_kernel = |k: &str| ran.lines().any(|l| l.trim_end().ends_with(k));
    for k in ["optim::adam", "optim::adam4"] {
        assert!(ran_kernel(k), "{k} did not run:\n{ran}");
    }
    if gpu.limits().max_storage_buffers_per_shader_stage >= 16 {
        assert!(
            ran_kernel("optim_multi::adam4"),
            "multi-tensor kernel did not run:\n{ran}"
        );
    }
}
