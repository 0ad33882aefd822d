//! What a user can supply does not crash the program: flags out of range, non-finite or
//! damaged weights, truncated images, degenerate datasets, outputs that would overwrite each
//! other, environment variables with typos. (Run directories, the cache and kills:
//! `tests/run_state.rs`.)

mod common;

use std::process::Output;

use apga_gpu::models::{DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::{state, Module};
use common::{assert_refused, bin, gpu};

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run apga-gpu")
}

#[test]
fn sizes_counts_and_rates_out_of_range_are_errors_naming_the_flag() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "predict",
                "--classifier-weights",
                "w",
                "--num-classes",
                "2",
                "--image-size",
                "4294967296",
                "a.png",
            ],
            &["--image-size", "32..=4096"],
        ),
        (
            &[
                "masks",
                "--segmenter-weights",
                "w",
                "--out",
                "o",
                "--image-size",
                "65536",
                "a.png",
            ],
            &["--image-size"],
        ),
        (&["train", "--image-size", "100000"], &["--image-size"]),
        (&["data", "--image-size", "0"], &["--image-size"]),
        (
            &["train", "--classes", "100000", "--train-size", "32"],
            &["--classes"],
        ),
        (
            &[
                "predict",
                "--classifier-weights",
                "w",
                "--num-classes",
                "100000",
                "a.png",
            ],
            &["--num-classes"],
        ),
        (&["train", "--seed", "18446744073709551615"], &["--seed"]),
        (&["train", "--batch-size", "1"], &["--batch-size"]),
        (&["train", "--lr-policy", "inf"], &["--lr-policy"]),
        (&["train", "--lr-classifier=-1"], &["--lr-classifier"]),
        (&["train", "--lr-policy", "NaN"], &["--lr-policy"]),
        (&["train", "--baseline-decay", "2"], &["--baseline-decay"]),
        (&["train", "--val-fraction", "1.5"], &["--val-fraction"]),
        (&["train", "--image-size", "48"], &["multiple of 32"]),
        (&["train", "--k-shot", "3"], &["--k-shot"]),
        (&["compare", "--seeds", "0"], &["--seeds"]),
        // In range, but more classes than images: every class needs training images.
        (
            &["data", "--classes", "50", "--train-size", "10"],
            &["no training images"],
        ),
        // In range, but the first feature map outgrows any buffer the adapter allows.
        (
            &["train", "--image-size", "4096", "--batch-size", "1024"],
            &["--batch-size 1024", "--image-size 4096"],
        ),
    ];
    for (args, wanted) in cases {
        let out = run(args);
        assert_refused(&out, wanted);
    }
}

#[test]
fn non_finite_or_impossible_weights_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    image::GrayImage::from_fn(40, 40, |x, y| image::Luma([(x * 3 + y) as u8]))
        .save(&img)
        .unwrap();
    let net = DenseNet::new(&gpu(), DenseNetConfig::new(4, &[1, 1], 8, 2), 1).unwrap();
    let good = dir.path().join("good.safetensors");
    state::save(&net, &good, &[]).unwrap();
    let mut entries = state::read(&good).unwrap();
    let write = |name: &str, entries: &std::collections::BTreeMap<String, state::Entry>| {
        let views: Vec<(String, safetensors::tensor::TensorView)> = entries
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        e.shape.clone(),
                        bytemuck::cast_slice(&e.values),
                    )
                    .unwrap(),
                )
            })
            .collect();
        let p = dir.path().join(name);
        std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
        p
    };
    entries.get_mut("features.conv0.weight").unwrap().values[5] = f32::NAN;
    let nan = write("nan.safetensors", &entries);
    entries.get_mut("features.conv0.weight").unwrap().values[5] = 0.1;
    entries
        .get_mut("features.norm0.running_var")
        .unwrap()
        .values[0] = -1.0;
    let negvar = write("negvar.safetensors", &entries);
    // The model keys hold, so the load accepts the file's layout; its values it refuses.
    for (file, wanted) in [
        (&nan, "features.conv0.weight: 1 of"),
        (&negvar, "features.norm0.running_var: a variance below 0"),
    ] {
        let err = state::load(&net, file, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(wanted), "{err}");
    }
    // Saving refuses non-finite values too: a diverged network never becomes a checkpoint.
    let named = net.named();
    let bias = named.iter().find(|n| n.key == "classifier.bias").unwrap();
    apga_gpu::nn::assign(&bias.tensor, &[f32::NAN, 0.0]).unwrap();
    let diverged = dir.path().join("diverged.safetensors");
    let e = state::save(&net, &diverged, &[]).unwrap_err().to_string();
    assert!(e.contains("classifier.bias") && !diverged.exists(), "{e}");
    // The CLI names the tensor and prints no probabilities.
    let big = DenseNet::new(&gpu(), DenseNetConfig::densenet121(2), 1).unwrap();
    let big_file = dir.path().join("dn121.safetensors");
    state::save(&big, &big_file, &[]).unwrap();
    let mut entries = state::read(&big_file).unwrap();
    entries.get_mut("classifier.bias").unwrap().values[1] = f32::INFINITY;
    let inf = write("inf121.safetensors", &entries);
    let out = run(&[
        "predict",
        "--arch",
        "densenet121",
        "--classifier-weights",
        inf.to_str().unwrap(),
        "--num-classes",
        "2",
        "--image-size",
        "32",
        img.to_str().unwrap(),
    ]);
    assert_refused(&out, &["classifier.bias", "not finite"]);
    assert!(out.stdout.is_empty());
    // A cut file and a PyTorch checkpoint: what they are and how to fix it.
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = state::read(&cut).unwrap_err().to_string();
    assert!(e.contains("not a complete safetensors file"), "{e}");
    let pt = dir.path().join("model.pt");
    std::fs::write(&pt, b"PK\x03\x04archive/data.pkl....").unwrap();
    let e = state::read(&pt).unwrap_err().to_string();
    assert!(
        e.contains("PyTorch checkpoint") && e.contains("convert"),
        "{e}"
    );
}

#[test]
fn truncated_jpegs_are_refused_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jpg");
    image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
    })
    .save(&full)
    .unwrap();
    let bytes = std::fs::read(&full).unwrap();
    assert!(apga_gpu::data::preprocess::jpeg_complete(&bytes));
    let half = dir.path().join("half.jpg");
    std::fs::write(&half, &bytes[..bytes.len() * 6 / 10]).unwrap();
    assert!(!apga_gpu::data::preprocess::jpeg_complete(
        &std::fs::read(&half).unwrap()
    ));
    let e = apga_gpu::data::Preprocess::decode(&half)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("half.jpg") && e.contains("truncated JPEG"),
        "{e}"
    );
    assert!(apga_gpu::data::Preprocess::decode(&full).is_ok());
    // In a dataset: an error naming the file, or skipped and counted.
    let root = dir.path().join("set");
    for (class, n) in [("a", 4), ("b", 4)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            std::fs::copy(&full, root.join(class).join(format!("{i}.jpg"))).unwrap();
        }
    }
    std::fs::copy(&half, root.join("a").join("9.jpg")).unwrap();
    let data = format!("folder:{}", root.display());
    let export = dir.path().join("export");
    let args = |skip: bool| {
        let mut a = vec![
            "data".to_string(),
            "--data".into(),
            data.clone(),
            "--val-fraction".into(),
            "0.25".into(),
            "--export".into(),
            export.to_string_lossy().into_owned(),
            "--count".into(),
            "8".into(),
        ];
        if skip {
            a.push("--skip-bad-images".into());
        }
        a
    };
    let out = bin().args(args(false)).output().unwrap();
    let exported_all = out.status.success();
    let err = String::from_utf8_lossy(&out.stderr);
    // The truncated file may land in validation (not exported); then export succeeds and
    // the training loader is what meets it. Either way nothing reads it as an image.
    if !exported_all {
        assert!(err.contains("9.jpg") && err.contains("truncated"), "{err}");
    }
    let out = bin().args(args(true)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_source_needs_two_classes_and_csv_errors_name_the_real_line() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    image::GrayImage::from_fn(32, 32, |x, _| image::Luma([x as u8]))
        .save(&img)
        .unwrap();
    let open = |csv: &str| {
        let p = dir.path().join("list.csv");
        std::fs::write(&p, csv).unwrap();
        run(&["data", "--data", &format!("csv:{}", p.display())])
    };
    // One label: refused, as a folder with one class is.
    assert_refused(
        &open("x.png,0\nx.png,0\nx.png,0\n"),
        &["1 class", "at least two"],
    );
    std::fs::create_dir_all(dir.path().join("one/only")).unwrap();
    std::fs::copy(&img, dir.path().join("one/only/x.png")).unwrap();
    let out = run(&[
        "data",
        "--data",
        &format!("folder:{}", dir.path().join("one").display()),
    ]);
    assert_refused(&out, &["two"]);
    // Empty: says so.
    assert_refused(&open(""), &["no images listed"]);
    // Line numbers count blank lines.
    assert_refused(
        &open("x.png,0\n\n\nx.png,1,test\n"),
        &["line 4", "\"test\""],
    );
    // A numeric label far beyond any class count.
    assert_refused(&open("x.png,0\nx.png,99999999\n"), &["99999999"]);
    // An absolute path inside the root is fine; a symbolic link leading out of it is not.
    let abs = img.canonicalize().unwrap();
    let a = abs.display();
    let out = open(&format!("{a},0\nx.png,1\n{a},0\nx.png,1\n{a},0\nx.png,1\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.png");
    std::fs::copy(&img, &secret).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, dir.path().join("link.png")).unwrap();
        assert_refused(
            &open("x.png,0\nlink.png,1\nx.png,0\nx.png,1\n"),
            &["link.png", "symbolic link"],
        );
    }
}

#[test]
fn masks_of_images_with_the_same_name_do_not_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["img", "imgB"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x ^ y) as u8]))
            .save(dir.path().join(sub).join("ok.png"))
            .unwrap();
    }
    let net = UNet11::new(&gpu(), 2, 3).unwrap();
    let weights = dir.path().join("unet.safetensors");
    state::save(&net, &weights, &[]).unwrap();
    let out_dir = dir.path().join("out");
    let a = dir.path().join("img/ok.png");
    let b = dir.path().join("imgB/ok.png");
    let out = run(&[
        "masks",
        "--segmenter-weights",
        weights.to_str().unwrap(),
        "--num-filters",
        "2",
        "--image-size",
        "32",
        "--out",
        out_dir.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut unique = printed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{printed:?}");
    assert_eq!(out_dir.read_dir().unwrap().count(), 4);
}

#[test]
fn environment_variables_with_typos_are_errors_not_silence() {
    let out = bin()
        .env("WGPU_BACKEND", "bogus")
        .arg("devices")
        .output()
        .unwrap();
    assert_refused(&out, &["WGPU_BACKEND", "bogus", "not a backend name"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("install"),
        "no driver advice for a typo: {err}"
    );
    // A forced kernel variant that names no candidate of the op it matches.
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .env("APGA_KERNELS", "conv-fwd=no-such-variant")
        .args([
            "bench",
            "--no-torch",
            "--steps",
            "0",
            "--batch-size",
            "2",
            "--image-size",
            "32",
        ])
        .args(["--classifier-arch", "tiny", "--policy-filters", "2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_refused(&out, &["APGA_KERNELS", "no-such-variant"]);
}
