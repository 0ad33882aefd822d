//! The command line end to end: `devices`, `predict` and `masks` on PNG (8- and 16-bit) and
//! JPEG files, JSON output, and the errors a user can provoke (a broken image, weights for a
//! different class count, an input size UNet11 cannot take).

mod common;

use std::path::Path;
use std::process::Command;

use apga_gpu::models::{unet, DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::state;
use common::gpu;

fn apga(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_apga-gpu"))
        .args(args)
        .output()
        .expect("run apga-gpu");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_images(dir: &Path) {
    let (w, h) = (48u32, 40u32);
    let grey = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
    grey.save(dir.join("xray.png")).unwrap();
    let rgb =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 6) as u8, 128]));
    rgb.save(dir.join("photo.jpg")).unwrap();
    let g16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(w, h, |x, y| image::Luma([(x * 1000 + y * 300) as u16]));
    g16.save(dir.join("grey16.png")).unwrap();
    std::fs::write(dir.join("broken.png"), b"\x89PNG\r\n\x1a\nnot an image").unwrap();
}

#[test]
fn devices_lists_and_marks_an_adapter() {
    let (ok, out, err) = apga(&["devices"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with('*')), "{out}");
    let (ok, _, err) = apga(&["--device", "no-such-gpu", "devices"]);
    assert!(!ok && err.contains("no-such-gpu"), "{err}");
    // Headless, without XDG_RUNTIME_DIR: no driver warnings about it (a private one is used).
    let out = Command::new(env!("CARGO_BIN_EXE_apga-gpu"))
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("XDG_RUNTIME_DIR"),
        "{err}"
    );
}

#[test]
fn predict_classifies_png_and_jpeg_and_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path());
    let net = DenseNet::new(&gpu(), DenseNetConfig::densenet169(3), 7).unwrap();
    let weights = dir.path().join("dn.safetensors");
    state::save(&net, &weights, &[]).unwrap();
    let w = weights.to_str().unwrap();
    let img = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let (a, b, c) = (img("xray.png"), img("photo.jpg"), img("grey16.png"));
    let (ok, out, err) = apga(&[
        "predict",
        "--classifier-weights",
        w,
        "--num-classes",
        "3",
        "--image-size",
        "32",
        &a,
        &b,
        &c,
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&a) && lines[0].contains("probs ["),
        "{out}"
    );
    let (ok, out, err) = apga(&[
        "predict",
        "--json",
        "--classifier-weights",
        w,
        "--num-classes",
        "3",
        "--image-size",
        "32",
        &b,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["image"], b.as_str());
    let probs: Vec<f64> = v["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 3);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    assert_eq!(v["logits"].as_array().unwrap().len(), 3);
    // A broken image: reported by name, the others still classified, exit status 1.
    let bad = img("broken.png");
    let (ok, out, err) = apga(&[
        "predict",
        "--classifier-weights",
        w,
        "--num-classes",
        "3",
        "--image-size",
        "32",
        &a,
        &bad,
    ]);
    assert!(
        !ok && err.contains("broken.png") && out.lines().count() == 1,
        "{out} / {err}"
    );
    // Weights for another class count.
    let (ok, _, err) = apga(&[
        "predict",
        "--classifier-weights",
        w,
        "--num-classes",
        "2",
        "--image-size",
        "32",
        &a,
    ]);
    assert!(
        !ok && err.contains("classifier.weight") && err.contains("--num-classes"),
        "{err}"
    );
    // A missing weights file.
    let (ok, _, err) = apga(&[
        "predict",
        "--classifier-weights",
        "/nonexistent.safetensors",
        "--num-classes",
        "2",
        &a,
    ]);
    assert!(!ok && err.contains("/nonexistent.safetensors"), "{err}");
}

#[test]
fn masks_writes_grey_masks_and_overlays() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path());
    let net = UNet11::new(&gpu(), 2, 3).unwrap();
    let weights = dir.path().join("unet.safetensors");
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    state::save(&net, &weights, &dup).unwrap();
    let out_dir = dir.path().join("out");
    let img = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let args = |size: &'static str, images: Vec<String>| {
        let mut v = vec![
            "masks".to_string(),
            "--segmenter-weights".into(),
            weights.to_string_lossy().into_owned(),
            "--num-filters".into(),
            "2".into(),
            "--image-size".into(),
            size.into(),
            "--out".into(),
            out_dir.to_string_lossy().into_owned(),
        ];
        v.extend(images);
        v
    };
    let a = args("64", vec![img("xray.png"), img("photo.jpg")]);
    let (ok, out, err) = apga(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    for stem in ["xray", "photo"] {
        let mask = image::open(out_dir.join(format!("{stem}_mask.png"))).unwrap();
        assert!(matches!(mask, image::DynamicImage::ImageLuma8(_)));
        assert_eq!((mask.width(), mask.height()), (64, 64));
        let overlay = image::open(out_dir.join(format!("{stem}_overlay.png"))).unwrap();
        assert!(matches!(overlay, image::DynamicImage::ImageRgb8(_)));
    }
    let a = args("48", vec![img("xray.png")]);
    let (ok, _, err) = apga(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(!ok && err.contains("multiple of 32"), "{err}");
}

#[test]
fn data_opens_all_four_sources_and_exports_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let (ok, stdout, err) = apga(&[
        "data",
        "--classes",
        "3",
        "--export",
        out.to_str().unwrap(),
        "--count",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("synthetic (3 classes")
            && stdout.contains("fracture")
            && stdout.contains("lesion"),
        "{stdout}"
    );
    for f in [
        "000_normal.png",
        "000_normal_roi.png",
        "001_fracture.png",
        "002_lesion_roi.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // folder, csv and mura sources.
    let root = dir.path().join("set");
    for class in ["a", "b"] {
        for i in 0..5 {
            let p = root.join(class).join(format!("{i}.png"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::GrayImage::from_pixel(8, 8, image::Luma([i * 20]))
                .save(&p)
                .unwrap();
        }
    }
    let (ok, stdout, err) = apga(&["data", "--data", &format!("folder:{}", root.display())]);
    assert!(
        ok && stdout.contains("total") && stdout.contains("      8        2"),
        "{stdout}{err}"
    );
    std::fs::write(
        root.join("list.csv"),
        "a/0.png,a\na/1.png,a\nb/0.png,b\nb/1.png,b,val\na/2.png,a,val\n",
    )
    .unwrap();
    let (ok, stdout, err) = apga(&[
        "data",
        "--data",
        &format!("csv:{}", root.join("list.csv").display()),
    ]);
    assert!(ok && stdout.contains("csv"), "{stdout}{err}");
    let mura = dir.path().join("mura/MURA-v1.1");
    let mut lines = vec![];
    for (i, label) in ["positive", "negative"].iter().enumerate() {
        let rel = format!("MURA-v1.1/train/XR_HAND/patient0000{i}/study1_{label}/image1.png");
        let p = dir.path().join("mura").join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(8, 8, image::Luma([9]))
            .save(&p)
            .unwrap();
        lines.push(rel);
    }
    std::fs::write(mura.join("train_image_paths.csv"), lines.join("\n")).unwrap();
    std::fs::write(mura.join("valid_image_paths.csv"), lines.join("\n")).unwrap();
    let (ok, stdout, err) = apga(&[
        "data",
        "--data",
        &format!("mura:{}", dir.path().join("mura").display()),
        "--body-part",
        "hand",
    ]);
    assert!(
        ok && stdout.contains("negative") && stdout.contains("positive"),
        "{stdout}{err}"
    );
    let (ok, _, err) = apga(&["data", "--data", "mura:/nonexistent"]);
    assert!(!ok && err.contains("/nonexistent"), "{err}");
    let (ok, _, err) = apga(&["data", "--data", "imagenet"]);
    assert!(!ok && err.contains("synthetic, mura:PATH"), "{err}");
}

#[test]
fn train_runs_end_to_end_from_the_command_line_with_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, "image_size = 32\ntrain_size = 16\nval_size = 8\nbatch_size = 8\npolicy_filters = 2\nepochs = 1\nwarm_start_steps = 20\n").unwrap();
    let out = dir.path().join("run");
    let cache = dir.path().join("cache");
    let (ok, stdout, err) = apga(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--pretrain-epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--pretrained-cache",
        cache.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("baseline (converged") && stdout.contains("apga (best"),
        "{stdout}"
    );
    let written = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        written.contains("image_size = 32") && written.contains("pretrain_epochs = 1"),
        "{written}"
    );
    assert!(out.join("summary.json").is_file());
    // An unknown key and a bad value are errors naming the file.
    std::fs::write(&cfg, "imagesize = 32\n").unwrap();
    let (ok, _, err) = apga(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(
        !ok && err.contains("tiny.toml") && err.contains("imagesize"),
        "{err}"
    );
    let (ok, _, err) = apga(&[
        "train",
        "--image-size",
        "48",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("multiple of 32"), "{err}");
}

#[test]
fn compare_writes_tables_and_eval_reads_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let cache = dir.path().join("cache");
    let common = [
        "--image-size",
        "32",
        "--train-size",
        "16",
        "--val-size",
        "8",
        "--batch-size",
        "8",
        "--policy-filters",
        "2",
        "--epochs",
        "1",
        "--pretrain-epochs",
        "1",
        "--warm-start-steps",
        "20",
        "--quiet",
    ];
    let mut args = vec![
        "compare",
        "--methods",
        "baseline,apga",
        "--seeds",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--pretrained-cache",
        cache.to_str().unwrap(),
    ];
    args.extend(common);
    let (ok, stdout, err) = apga(&args);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("| baseline |") && stdout.contains("| apga |") && stdout.contains("**"),
        "{stdout}"
    );
    let per_seed = std::fs::read_to_string(out.join("per_seed.csv")).unwrap();
    assert_eq!(per_seed.lines().count(), 5, "{per_seed}");
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert!(
        csv.starts_with("method,runs,accuracy_mean,accuracy_std"),
        "{csv}"
    );
    // eval on one of the runs reproduces its recorded best accuracy.
    let run = out.join("apga-seed0");
    let (ok, stdout, err) = apga(&["eval", "--run", run.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(m["accuracy"], summary["best"]["accuracy"]);
    assert!(m["mask_iou"].is_number() && m["tta_accuracy"].is_number());
    let (ok, _, err) = apga(&[
        "eval",
        "--run",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("config.toml"), "{err}");
}

#[test]
fn bench_times_every_phase_of_the_apga_step() {
    let small = [
        "bench",
        "--batch-size",
        "2",
        "--image-size",
        "32",
        "--policy-filters",
        "2",
        "--no-torch",
    ];
    let (ok, stdout, err) = apga(&[&small[..], &["--steps", "1", "--json"]].concat());
    assert!(ok, "{err}");
    let all: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let v = &all["ours"];
    let phases = v["phases_ms"].as_array().unwrap();
    assert_eq!(phases.len(), 5);
    assert!(phases.iter().all(|p| p[1].as_f64().unwrap() > 0.0));
    assert!(v["step_ms"].as_f64().unwrap() > 0.0 && v["peak_memory_mib"].as_f64().unwrap() > 0.0);
    assert!(v["first_step_s"].as_f64().unwrap() > 0.0);
    assert!(all["torch"].is_null());
    assert!(all["torch_error"].as_str().unwrap().contains("--no-torch"));
    // The per-kernel profile of the step, and the warm-up step alone.
    let (ok, stdout, err) = apga(&[&small[..], &["--steps", "0", "--profile"]].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("warm-up step only"), "{stdout}");
    assert!(stdout.contains("per-kernel GPU time"), "{stdout}");
    assert!(stdout.contains("conv"), "{stdout}");
    let (ok, _, err) = apga(&["bench", "--image-size", "40"]);
    assert!(!ok && err.contains("multiple of 32"), "{err}");
}

#[test]
fn predict_and_masks_values_match_pytorch() {
    // The seeded random weights of `examples/random_weights.rs` (same seeds, same networks),
    // two committed 64x64 PNGs, and what PyTorch computed for them
    // (`tests/fixtures/make_cli_fixtures.py`): DenseNet-169 probabilities and UNet11's mask.
    let dir = tempfile::tempdir().unwrap();
    let g = gpu();
    let dn = DenseNet::new(&g, DenseNetConfig::densenet169(2), 0).unwrap();
    let dn_file = dir.path().join("dn.safetensors");
    state::save(&dn, &dn_file, &[]).unwrap();
    let un = UNet11::new(&g, 32, 0).unwrap();
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    let un_file = dir.path().join("unet.safetensors");
    state::save(&un, &un_file, &dup).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let want = state::read(&fixtures.join("cli_values.safetensors")).unwrap();
    let stale = "(if the networks' initialisation changed, regenerate the fixture: see \
                 tests/fixtures/make_cli_fixtures.py)";
    for stem in ["cli_xray", "cli_photo"] {
        let img = fixtures.join(format!("{stem}.png"));
        let (ok, out, err) = apga(&[
            "predict",
            "--json",
            "--classifier-weights",
            dn_file.to_str().unwrap(),
            "--num-classes",
            "2",
            "--image-size",
            "64",
            img.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let probs: Vec<f32> = v["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        let torch = &want[&format!("{stem}.probs")].values;
        for (a, b) in probs.iter().zip(torch) {
            // PyTorch agrees to ~2e-7; a 1 % error in one channel's mean moves them 1.5e-5.
            assert!(
                (a - b).abs() <= 5e-6,
                "{stem}: probs {probs:?} vs PyTorch {torch:?} {stale}"
            );
        }
        let out_dir = dir.path().join("masks");
        let (ok, _, err) = apga(&[
            "masks",
            "--segmenter-weights",
            un_file.to_str().unwrap(),
            "--image-size",
            "64",
            "--out",
            out_dir.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let mask = image::open(out_dir.join(format!("{stem}_mask.png")))
            .unwrap()
            .to_luma8();
        let p = &want[&format!("{stem}.mask_p")].values;
        assert_eq!(mask.len(), p.len());
        // round(p * 255): equal, or one level apart where p * 255 sits on a rounding edge.
        let mut off = 0;
        for (m, q) in mask.as_raw().iter().zip(p) {
            let exact = q * 255.0;
            let d = (*m as f32 - exact.round()).abs();
            assert!(
                d <= 1.0,
                "{stem}: mask level {m} vs PyTorch {exact} {stale}"
            );
            if d > 0.0 {
                assert!((exact.fract() - 0.5).abs() < 0.01, "{stem}: {m} vs {exact}");
                off += 1;
            }
        }
        assert!(off <= p.len() / 100, "{stem}: {off} levels off");
        // The mask is not constant: the comparison says something.
        let (lo, hi) = mask
            .as_raw()
            .iter()
            .fold((255u8, 0u8), |(l, h), &m| (l.min(m), h.max(m)));
        assert!(hi > lo, "{stem}: constant mask {lo}");
    }
}
