//! DenseNet and UNet11 against PyTorch: tiny variants with the full networks' layout and
//! state-dict keys (fixtures from `tests/fixtures/make_model_fixtures.py`) in train mode
//! (batch statistics, running-stat updates) and eval mode; the full-size networks' keys and
//! shapes against torchvision's; state-dict loading and saving, including bad files; and a
//! few training steps that must lower the loss.
//!
//! Opt-in (slow on a software driver): `cargo test --release --test models -- --ignored`
//! runs both full-size networks at 224x224 and measures DenseNet-169's peak memory; with
//! `APGA_FULL_STATE_DICTS=DIR` (written by `make_model_fixtures.py --full DIR`) it also loads
//! full-size state dicts saved by PyTorch.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use apga_gpu::models::{unet, DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::state::{self, LoadOptions};
use apga_gpu::nn::Module;
use apga_gpu::optim::{Adam, AdamConfig};
use apga_gpu::{ops, Tape, Tensor};
use common::*;

fn io(name: &str) -> BTreeMap<String, state::Entry> {
    state::read(&fixture(name)).expect("fixture")
}

fn t(e: &state::Entry) -> Tensor {
    tensor(&e.values, &e.shape)
}

/// A gradient against PyTorch's, per tensor: ||got - want|| / ||want|| <= 1e-3, with the
/// fixture's gradient far from zero (RMS >= 1e-5), so that a zero or scaled gradient fails
/// however small the tensor's values (an element-wise absolute tolerance would pass them).
fn assert_rel_norm(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut got.iter().zip(want).map(|(a, b)| (*a - *b) as f64));
    let base = norm(&mut want.iter().map(|&b| b as f64));
    let rms = base / (want.len() as f64).sqrt();
    assert!(
        rms >= 1e-5,
        "{what}: the fixture's gradient (RMS {rms:.2e}) is too small to tell a wrong one"
    );
    let rel = diff / base;
    assert!(
        rel <= 1e-3,
        "{what}: relative error {rel:.2e} (||want|| {base:.3e})"
    );
}

/// Checks `out`, `loss` and the named gradients of one mode against the fixture.
fn check_mode(
    what: &str,
    model: &dyn Module,
    f: &BTreeMap<String, state::Entry>,
    mode: &str,
    run: impl Fn() -> (Tensor, Tensor),
    atol: f32,
) {
    let tape = Tape::new();
    let (out, loss) = run();
    assert_close(
        &format!("{what} {mode} output"),
        &out.to_vec().unwrap(),
        &f[&format!("{mode}.out")].values,
        atol,
        1e-3,
    );
    assert_close(
        &format!("{what} {mode} loss"),
        &[loss.item().unwrap()],
        &f[&format!("{mode}.loss")].values,
        atol,
        1e-4,
    );
    let grads = tape.backward(&loss).unwrap();
    let mut n = 0;
    for (k, e) in f
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{mode}.grad.")))
    {
        let key = &k[mode.len() + 6..];
        let g = grads
            .get(&by_key(model, key))
            .unwrap_or_else(|| panic!("{what}: no gradient for {key}"));
        assert_rel_norm(
            &format!("{what} {mode} grad {key}"),
            &g.to_vec().unwrap(),
            &e.values,
        );
        n += 1;
    }
    assert!(n >= 8, "{what}: fixture has the gradients");
    println!("parity ok: {what} {mode} (output, loss, {n} gradients)");
}

#[test]
fn tiny_densenet_matches_torchvision_in_train_and_eval() {
    let f = io("densenet_tiny_io.safetensors");
    let labels: Vec<usize> = f["labels"].values.iter().map(|&v| v as usize).collect();
    let x = t(&f["x"]);
    for mode in ["train", "eval"] {
        let net = tiny_densenet();
        state::load(
            &net,
            &fixture("densenet_tiny_state.safetensors"),
            &LoadOptions::default(),
        )
        .unwrap();
        let training = mode == "train";
        check_mode(
            "densenet",
            &net,
            &f,
            mode,
            || {
                let logits = net.forward(&x, training).unwrap();
                let loss = ops::cross_entropy(&logits, &labels).unwrap();
                (logits, loss)
            },
            1e-4,
        );
        if training {
            // Running statistics after one training forward match PyTorch's.
            let mut n = 0;
            for (k, e) in f.iter().filter(|(k, _)| k.starts_with("train.after.")) {
                let key = &k["train.after.".len()..];
                assert_close(
                    &format!("densenet {key}"),
                    &by_key(&net, key).to_vec().unwrap(),
                    &e.values,
                    1e-5,
                    1e-4,
                );
                n += 1;
            }
            assert!(n > 10);
        }
    }
}

#[test]
fn tiny_unet11_matches_ternausnet() {
    let f = io("unet11_tiny_io.safetensors");
    let x = t(&f["x"]);
    let target = t(&f["target"]);
    // Both ways PyTorch writes a UNet11: every name (conv1.* and encoder.0.*), or
    // safetensors' save_model with one name per shared tensor.
    for file in [
        "unet11_tiny_state.safetensors",
        "unet11_tiny_save_model.safetensors",
    ] {
        let net = UNet11::new(&gpu(), 2, 1).unwrap();
        let opts = LoadOptions {
            aliases: unet::encoder_aliases(),
            ..Default::default()
        };
        state::load(&net, &fixture(file), &opts).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Train mode only: without batch norm, eval mode computes the same thing.
        check_mode(
            &format!("unet11 from {file}"),
            &net,
            &f,
            "train",
            || {
                let logits = net.forward(&x).unwrap();
                // Summed over the pixels, as the fixture's loss (reduction="sum").
                let mean = ops::binary_cross_entropy_with_logits(&logits, &target).unwrap();
                let loss = ops::mul_scalar(&mean, logits.numel() as f32).unwrap();
                (logits, loss)
            },
            1e-4,
        );
    }
}

fn train_steps(
    params: Vec<Tensor>,
    steps: usize,
    lr: f64,
    mut loss: impl FnMut() -> Tensor,
) -> Vec<f32> {
    let mut adam = Adam::new(
        &params,
        AdamConfig {
            lr,
            ..Default::default()
        },
    )
    .unwrap();
    (0..steps)
        .map(|_| {
            let tape = Tape::new();
            let l = loss();
            let v = l.item().unwrap();
            let grads = tape.backward(&l).unwrap();
            adam.step(&grads).unwrap();
            v
        })
        .collect()
}

#[test]
fn both_networks_learn_a_toy_batch() {
    let g = gpu();
    let mut r = rng(77);
    let x = tensor(&uniform(&mut r, 4 * 3 * 32 * 32, 0.0, 1.0), &[4, 3, 32, 32]);
    let net = tiny_densenet();
    let labels = [0usize, 1, 2, 1];
    let losses = train_steps(net.parameters(), 8, 1e-2, || {
        ops::cross_entropy(&net.forward(&x, true).unwrap(), &labels).unwrap()
    });
    println!("densenet losses {losses:?}");
    assert!(
        losses[7] < 0.5 * losses[0],
        "DenseNet loss should fall: {losses:?}"
    );
    let un = UNet11::new(&g, 2, 5).unwrap();
    let target = ops::gt_scalar(
        &tensor(&uniform(&mut r, 4 * 32 * 32, 0.0, 1.0), &[4, 1, 32, 32]),
        0.5,
    )
    .unwrap();
    let losses = train_steps(un.parameters(), 8, 1e-2, || {
        ops::binary_cross_entropy_with_logits(&un.forward(&x).unwrap(), &target).unwrap()
    });
    println!("unet losses {losses:?}");
    assert!(losses[7] < losses[0], "UNet11 loss should fall: {losses:?}");
}

/// Peak memory of a training step (forward + backward) of a one-block DenseNet with `layers`
/// layers, above what the inputs and weights hold.
fn block_peak(layers: usize) -> u64 {
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        ..Default::default()
    })
    .unwrap();
    let cfg = DenseNetConfig {
        growth_rate: 8,
        block_config: vec![layers],
        num_init_features: 16,
        bn_size: 4,
        num_classes: 2,
    };
    let net = DenseNet::new(&g, cfg, 0).unwrap();
    let x = Tensor::from_slice(&g, &vec![0.5; 2 * 3 * 64 * 64], &[2, 3, 64, 64]).unwrap();
    g.sync().unwrap();
    let base = g.memory().in_use;
    g.reset_peak_memory();
    let tape = Tape::new();
    let loss = ops::cross_entropy(&net.forward(&x, true).unwrap(), &[0, 1]).unwrap();
    let grads = tape.backward(&loss).unwrap();
    g.sync().unwrap();
    drop(grads);
    g.memory().peak_in_use - base
}

/// The same one-block training step built the plain way (torch.cat of all previous channels
/// before every layer, unfused BN + ReLU + conv), for comparison.
fn naive_block_peak(layers: usize) -> u64 {
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        ..Default::default()
    })
    .unwrap();
    let (growth, c0, hw) = (8, 16, 16);
    let mut r = rng(5);
    let mut w = |shape: &[usize]| {
        Tensor::from_slice(
            &g,
            &uniform(&mut r, shape.iter().product(), -0.1, 0.1),
            shape,
        )
        .unwrap()
        .with_grad()
    };
    let params: Vec<(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)> = (0..layers)
        .map(|l| {
            let c = c0 + l * growth;
            (
                w(&[c]),
                w(&[c]),
                w(&[4 * growth, c, 1, 1]),
                w(&[4 * growth]),
                w(&[4 * growth]),
                w(&[growth, 4 * growth, 3, 3]),
            )
        })
        .collect();
    let x = w(&[2, c0, hw, hw]);
    g.sync().unwrap();
    let base = g.memory().in_use;
    g.reset_peak_memory();
    let tape = Tape::new();
    let cfg = ops::BatchNormConfig {
        relu: true,
        ..Default::default()
    };
    let mut feats = vec![x.clone()];
    for (g1, b1, w1, g2, b2, w2) in &params {
        let refs: Vec<&Tensor> = feats.iter().collect();
        let cat = ops::concat(&refs, 1).unwrap();
        let t = ops::conv2d(
            &ops::batch_norm2d(&cat, g1, b1, None, cfg).unwrap(),
            w1,
            None,
            1,
            0,
        )
        .unwrap();
        let new = ops::conv2d(
            &ops::batch_norm2d(&t, g2, b2, None, cfg).unwrap(),
            w2,
            None,
            1,
            1,
        )
        .unwrap();
        feats.push(new);
    }
    let refs: Vec<&Tensor> = feats.iter().collect();
    let loss = ops::mean_all(&ops::concat(&refs, 1).unwrap()).unwrap();
    drop(feats);
    let grads = tape.backward(&loss).unwrap();
    g.sync().unwrap();
    drop(grads);
    g.memory().peak_in_use - base
}

#[test]
fn dense_block_memory_grows_linearly_with_layers() {
    let naive: Vec<u64> = [4, 8, 16].iter().map(|&l| naive_block_peak(l)).collect();
    let (n1, n2) = ((naive[1] - naive[0]) as f64, (naive[2] - naive[1]) as f64);
    println!(
        "plain concatenation, peak for 4/8/16 layers: {naive:?} bytes; increment ratio {:.2}",
        n2 / n1
    );
    assert!(
        n2 / n1 > 2.8,
        "the plain construction should show the quadratic growth: {naive:?}"
    );
    // Copying every previous channel at every layer (a plain concatenation) makes the saved
    // activations grow with L^2: doubling L would more than double the increment. The block
    // buffer and the fused BN+ReLU+conv keep it linear: equal increments per added layer.
    let p: Vec<u64> = [4, 8, 16].iter().map(|&l| block_peak(l)).collect();
    let (d1, d2) = ((p[1] - p[0]) as f64, (p[2] - p[1]) as f64);
    println!("dense block peak memory for 4/8/16 layers: {:?} bytes; increments {d1} then {d2} (ratio {:.2}, 2.0 = linear)", p, d2 / d1);
    assert!(
        d2 / d1 < 2.6,
        "peak memory grows faster than linearly: {p:?}"
    );
}

#[test]
fn unet_refuses_sides_not_multiple_of_32() {
    let un = UNet11::new(&gpu(), 2, 0).unwrap();
    let e = un
        .forward(&Tensor::zeros(&gpu(), &[1, 3, 48, 64]).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of 32") && e.contains("48"), "{e}");
}

/// Opt-in: both full-size networks at 224x224, DenseNet-169's peak memory for a training step
/// at batch 4, and (with APGA_FULL_STATE_DICTS) PyTorch-written full-size state dicts.
#[test]
#[ignore = "full-size networks take minutes on a software driver; run with --ignored"]
fn full_size_networks_at_224() {
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions::default()).unwrap();
    let dn = DenseNet::new(&g, DenseNetConfig::densenet169(2), 0).unwrap();
    let un = UNet11::new(&g, 32, 0).unwrap();
    if let Ok(dir) = std::env::var("APGA_FULL_STATE_DICTS") {
        let dir = Path::new(&dir);
        state::load(
            &dn,
            &dir.join("densenet169.safetensors"),
            &LoadOptions::default(),
        )
        .unwrap();
        let opts = LoadOptions {
            aliases: unet::encoder_aliases(),
            ..Default::default()
        };
        state::load(&un, &dir.join("unet11.safetensors"), &opts).unwrap();
        println!(
            "loaded full-size PyTorch state dicts from {}",
            dir.display()
        );
    }
    // The seeded random weights (as examples/random_weights.rs makes them) meet PyTorch's
    // values for them (tests/fixtures/make_cli_fixtures.py) unless other weights were loaded.
    let want = std::env::var("APGA_FULL_STATE_DICTS")
        .is_err()
        .then(|| io("full224_values.safetensors"));
    // x[i] = frac(i * 0.6180339887), computed in f64 as the fixture script does.
    let golden: Vec<f32> = (0..4 * 3 * 224 * 224)
        .map(|i| ((i as f64 * 0.6180339887) % 1.0) as f32)
        .collect();
    let x = Tensor::from_slice(&g, &golden, &[4, 3, 224, 224]).unwrap();
    g.sync().unwrap();
    let base = g.memory().in_use;
    g.reset_peak_memory();
    let t0 = std::time::Instant::now();
    let tape = Tape::new();
    let logits = dn.forward(&x, true).unwrap();
    let loss = ops::cross_entropy(&logits, &[0, 1, 0, 1]).unwrap();
    let grads = tape.backward(&loss).unwrap();
    g.sync().unwrap();
    let peak = g.memory().peak_in_use - base;
    if let Some(f) = &want {
        assert_close(
            "DenseNet-169 224 logits",
            &logits.to_vec().unwrap(),
            &f["logits"].values,
            1e-4,
            1e-3,
        );
        assert_close(
            "DenseNet-169 224 loss",
            &[loss.item().unwrap()],
            &f["loss"].values,
            1e-5,
            1e-4,
        );
        for key in [
            "features.conv0.weight",
            "features.denseblock4.denselayer32.conv2.weight",
            "classifier.weight",
        ] {
            // Against PyTorch in float64: no worse than 3x PyTorch's own float32 error (these
            // deep gradients cancel heavily: PyTorch f32 is 1.5-2.5 % off), or 1e-3.
            let got = grads.get(&by_key(&dn, key)).unwrap().to_vec().unwrap();
            let want = &f[&format!("grad.{key}")].values;
            let torch_err = f[&format!("f32_err.{key}")].values[0] as f64;
            let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
            let err = norm(&mut got.iter().zip(want).map(|(a, b)| (a - b) as f64))
                / norm(&mut want.iter().map(|&b| b as f64));
            println!("grad {key}: relative error {err:.2e} (PyTorch float32: {torch_err:.2e})");
            assert!(
                err <= (3.0 * torch_err).max(1e-3),
                "DenseNet-169 224 grad {key}: {err:.2e} vs PyTorch float32's {torch_err:.2e}"
            );
        }
        println!("DenseNet-169 at 224: logits, loss and 3 gradients match PyTorch (float64)");
    }
    println!(
        "DenseNet-169 batch 4 224x224 forward+backward: {:.1} s, loss {}, {} gradients, peak memory above inputs and weights {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        loss.item().unwrap(),
        grads.len(),
        peak as f64 / (1 << 20) as f64
    );
    drop(grads);
    let t0 = std::time::Instant::now();
    let m = apga_gpu::no_grad(|| un.forward(&x)).unwrap();
    assert_eq!(m.shape(), &[4, 1, 224, 224]);
    let out = m.to_vec().unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    if let Some(f) = &want {
        let every: Vec<f32> = out.iter().step_by(101).copied().collect();
        assert_close(
            "UNet11 224 output (every 101st)",
            &every,
            &f["unet_every101"].values,
            1e-4,
            1e-3,
        );
        println!("UNet11 at 224: output matches PyTorch");
    }
    println!(
        "UNet11 batch 4 224x224 forward: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn unet11_in_image_groups_matches_the_whole_batch() {
    // UNet11 runs the batch in groups of images when its largest activation would exceed the
    // adapter's largest storage binding; forced here to groups of 2 of a batch of 5, the
    // logits and every parameter gradient must equal the whole-batch pass.
    let g = gpu();
    let mut r = rng(31);
    let x = tensor(
        &uniform(&mut r, 5 * 3 * 32 * 32, -1.0, 1.0),
        &[5, 3, 32, 32],
    );
    let mut net = UNet11::new(&g, 2, 9).unwrap();
    let params = net.parameters();
    let mut run = |group: Option<usize>| {
        net.max_images_per_pass = group;
        let tape = apga_gpu::Tape::new();
        let y = net.forward(&x).unwrap();
        let loss = ops::mean_all(&ops::mul(&y, &y).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let gs: Vec<Vec<f32>> = params
            .iter()
            .map(|p| grads.get(p).unwrap().to_vec().unwrap())
            .collect();
        (y.to_vec().unwrap(), gs)
    };
    let (y_all, g_all) = run(None);
    let (y_grp, g_grp) = run(Some(2));
    assert_eq!(y_all.len(), 5 * 32 * 32);
    for (a, b) in y_all.iter().zip(&y_grp) {
        assert!((a - b).abs() <= 1e-5 + 1e-4 * a.abs(), "logits {a} vs {b}");
    }
    for (ga, gb) in g_all.iter().zip(&g_grp) {
        for (a, b) in ga.iter().zip(gb) {
            assert!(
                (a - b).abs() <= 1e-5 + 1e-3 * a.abs(),
                "gradient {a} vs {b}"
            );
        }
    }
}

/// Opt-in: a TernausNet checkpoint as the paper's released script loads it (`{"model":
/// state_dict}` with `module.` prefixes), converted by `weights/convert_ternausnet.py`, loads
/// into UNet11 and reproduces PyTorch's logits. Make the files with
/// `python3 weights/convert_ternausnet.py --self-test --keep DIR`, then
/// `APGA_TERNAUSNET_SELFTEST=DIR cargo test --release --test models -- --ignored ternausnet`.
#[test]
#[ignore = "needs APGA_TERNAUSNET_SELFTEST=DIR from weights/convert_ternausnet.py --self-test --keep DIR"]
fn converted_ternausnet_checkpoint_loads_and_matches_pytorch() {
    let dir = std::env::var("APGA_TERNAUSNET_SELFTEST")
        .expect("set APGA_TERNAUSNET_SELFTEST to the --keep folder of the converter's self-test");
    let dir = Path::new(&dir);
    let net = UNet11::new(&gpu(), 32, 0).unwrap();
    let opts = LoadOptions {
        aliases: unet::encoder_aliases(),
        ..Default::default()
    };
    let r = state::load(&net, &dir.join("TernausNet_selftest.safetensors"), &opts).unwrap();
    assert!(r.loaded >= 40, "{} tensors", r.loaded);
    let f = state::read(&dir.join("TernausNet_selftest_io.safetensors")).unwrap();
    let got = net.forward(&t(&f["x"])).unwrap().to_vec().unwrap();
    let want = &f["out"].values;
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "max |diff| {err} (scale {scale})"
    );
}
