//! What a user can supply does not crash the program, and no run is lost: flags out of range,
//! non-finite or damaged weights, truncated images, degenerate datasets, run directories in
//! use or already holding a run, outputs that would overwrite each other, environment
//! variables with typos, and kills at any instant (SIGKILL at timed points and at crash
//! points inside commits), after which `--resume` ends bit-identical to an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use apga_gpu::models::{DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::{state, Module};
use common::gpu;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apga-gpu"));
    c.env_remove("APGA_CRASH_AT");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run apga-gpu")
}

/// An error exit (1, or clap's 2) with a message and no panic.
fn assert_refused(out: &Output, wanted: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "exit {code:?} (want an error exit, not success or a crash): {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for w in wanted {
        assert!(err.contains(w), "message lacks {w:?}: {err}");
    }
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

// ---------------------------------------------------------------------------------------
// Run directories.

const TINY: &str = "image_size = 32\ntrain_size = 24\nval_size = 8\nbatch_size = 8\n\
policy_filters = 2\nepochs = 3\neval_every = 2\nwarm_start_steps = 10\npretrain_epochs = 1\n";

struct Tiny {
    dir: tempfile::TempDir,
}

impl Tiny {
    fn new() -> Tiny {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
        Tiny { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `train` of the tiny configuration into `out`, with a shared cache, default kernels.
    fn train(&self, out: &str, extra: &[&str]) -> Command {
        let mut c = bin();
        c.args(["--no-autotune", "train", "--quiet", "--config"])
            .arg(self.path("tiny.toml"))
            .arg("--out")
            .arg(self.path(out))
            .arg("--pretrained-cache")
            .arg(self.path("cache"))
            .args(extra);
        c
    }
    fn resume(&self, out: &str) -> Command {
        let mut c = bin();
        c.args(["--no-autotune", "train", "--quiet", "--resume"])
            .arg(self.path(out))
            .arg("--pretrained-cache")
            .arg(self.path("cache"));
        c
    }
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_run_directory_is_never_overwritten_or_shared() {
    let t = Tiny::new();
    ok(t.train("run", &[]));
    let log = std::fs::read(t.path("run/metrics.jsonl")).unwrap();
    // Again into the same directory: refused, nothing touched.
    let out = t.train("run", &[]).output().unwrap();
    assert_refused(&out, &["already holds a run", "--resume", "--overwrite"]);
    assert_eq!(std::fs::read(t.path("run/metrics.jsonl")).unwrap(), log);
    // A file of the user's own in it survives --overwrite; the run's files are replaced.
    std::fs::write(t.path("run/notes.txt"), "mine").unwrap();
    ok(t.train("run", &["--overwrite"]));
    assert_eq!(
        std::fs::read_to_string(t.path("run/notes.txt")).unwrap(),
        "mine"
    );
    // A fresh log (the converged baseline now comes from the cache: no pretraining lines).
    let fresh = std::fs::read_to_string(t.path("run/metrics.jsonl")).unwrap();
    assert!(
        !fresh.contains("\"pretrain\"") && fresh.len() < log.len(),
        "{fresh}"
    );
    assert_eq!(fresh.matches("\"phase\":\"train\"").count(), 9);
    // While another process holds the directory, a second run is refused at once.
    let lock = apga_gpu::fsio::Lock::try_acquire(&t.path("busy/.lock"))
        .unwrap()
        .unwrap();
    let out = t.train("busy", &[]).output().unwrap();
    assert_refused(&out, &["another apga-gpu process"]);
    drop(lock);
    ok(t.train("busy", &[]));
    // The finished run resumes to the same end (nothing left to train).
    let out = ok(t.resume("run"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("apga (best"));
}

#[test]
fn the_converged_baseline_cache_follows_the_data_not_its_name() {
    let t = Tiny::new();
    let root = t.path("images");
    for (class, shade) in [("a", 40u8), ("b", 200u8)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..6u32 {
            image::GrayImage::from_fn(32, 32, |x, y| {
                image::Luma([shade.wrapping_add(((x * y + i) % 17) as u8)])
            })
            .save(root.join(class).join(format!("{i}.png")))
            .unwrap();
        }
    }
    let data = format!("folder:{}", root.display());
    let train = |out: &str| {
        let out = ok(t.train(
            out,
            &["--method", "baseline", "--data", &data, "--epochs", "1"],
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quiet_run = |out: &str| {
        // --quiet hides the cache line; read the cache folder instead.
        train(out);
        let mut names: Vec<String> = std::fs::read_dir(t.path("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        names.sort();
        names
    };
    let first = quiet_run("r1");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(quiet_run("r2"), first, "same data: reused");
    // One image changes: a new converged baseline, not the old one under the same name.
    image::GrayImage::from_fn(32, 32, |_, _| image::Luma([7]))
        .save(root.join("a").join("0.png"))
        .unwrap();
    let after = quiet_run("r3");
    assert_eq!(after.len(), 2, "{after:?}");
}

/// Everything a finished run's outcome consists of, minus wall-clock times.
fn outcome(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train_state.json")).unwrap())
            .unwrap();
    let latest = dir.join(st["checkpoint"].as_str().unwrap());
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    summary["seconds"] = 0.into();
    summary["run_dir"] = "".into();
    let mut v = vec![
        ("summary".into(), summary.to_string().into_bytes()),
        (
            "checkpoint".into(),
            st["checkpoint"].to_string().into_bytes(),
        ),
    ];
    for f in [
        "metrics.jsonl",
        "classifier_best.safetensors",
        "policy_best.safetensors",
    ] {
        v.push((f.into(), std::fs::read(dir.join(f)).unwrap()));
    }
    for f in [
        "classifier.safetensors",
        "policy.safetensors",
        "optimizer.safetensors",
    ] {
        v.push((
            format!("latest/{f}"),
            std::fs::read(latest.join(f)).unwrap(),
        ));
    }
    assert_eq!(
        dir.join("checkpoints").read_dir().unwrap().count(),
        1,
        "only the committed checkpoint is left"
    );
    v
}

/// Continues a killed run until it finishes: `--resume` once it has committed a state, else
/// a fresh start over what the killed process left.
fn finish(t: &Tiny, name: &str) -> usize {
    for attempt in 1..=3 {
        let cmd = if t.path(name).join("train_state.json").is_file() {
            t.resume(name)
        } else {
            t.train(name, &["--overwrite"])
        };
        let mut cmd = cmd;
        if cmd.output().unwrap().status.success() {
            return attempt;
        }
    }
    panic!("{name}: did not finish after a kill");
}

fn assert_same(t: &Tiny, name: &str, reference: &[(String, Vec<u8>)]) {
    let got = outcome(&t.path(name));
    for ((k, a), (_, b)) in reference.iter().zip(&got) {
        assert!(a == b, "{name}: {k} differs from the uninterrupted run");
    }
}

#[test]
fn a_run_killed_at_any_instant_resumes_bit_identical() {
    let t = Tiny::new();
    ok(t.train("warm", &[])); // fills the cache: every later run starts alike
    let started = Instant::now();
    ok(t.train("full", &[]));
    let full_time = started.elapsed();
    let reference = outcome(&t.path("full"));
    // Inside commits: after the files, after the folder's rename, after the manifest, and
    // between an atomic write and its rename (a checkpoint, the manifest, the config ...).
    let points = [
        "commit:files:1",
        "commit:files:2",
        "commit:renamed:2",
        "commit:manifest:2",
        "write_atomic:1",
        "write_atomic:4",
        "write_atomic:9",
        "write_atomic:15",
    ];
    for (i, point) in points.iter().enumerate() {
        let name = format!("crash{i}");
        let out = t
            .train(&name, &[])
            .env("APGA_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{point}: the crash point was not reached"
        );
        finish(&t, &name);
        assert_same(&t, &name, &reference);
    }
    // SIGKILL at spread-out instants of the run.
    for (i, frac) in [0.15, 0.3, 0.45, 0.6, 0.75, 0.9].iter().enumerate() {
        let name = format!("kill{i}");
        let mut child = t.train(&name, &[]).spawn().unwrap();
        std::thread::sleep(full_time.mul_f64(*frac));
        let _ = child.kill();
        let _ = child.wait();
        finish(&t, &name);
        assert_same(&t, &name, &reference);
    }
    let _ = Duration::ZERO;
}

#[test]
fn ctrl_c_during_pretraining_stops_at_once() {
    // Pretraining for up to 10 000 epochs: Ctrl-C must stop it within seconds, not finish it.
    let t = Tiny::new();
    let child = t
        .train(
            "long",
            &["--pretrain-epochs", "10000", "--patience", "10000"],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "took {:?} to stop",
        stopped.elapsed()
    );
    assert_refused(&out, &["interrupted during pretraining"]);
    // Nothing half-written stays in the cache.
    let leftovers: Vec<String> = std::fs::read_dir(t.path("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| n.ends_with(".partial.safetensors")),
        "{leftovers:?}"
    );
    // The next run removes the partial file before training that entry again.
    ok(t.train("after", &[]));
    let partial = std::fs::read_dir(t.path("cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")
        })
        .count();
    assert_eq!(partial, 0);
}

#[test]
fn two_runs_sharing_a_cold_cache_train_the_baseline_once_and_agree() {
    let t = Tiny::new();
    let spawn = |out: &str| {
        t.train(out, &["--method", "baseline", "--epochs", "1"])
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    let summary = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(t.path(name).join("summary.json")).unwrap())
            .unwrap()
    };
    // Both start from the same converged baseline (the second waited for the first's).
    assert_eq!(
        summary("a")["pretrained"]["accuracy"],
        summary("b")["pretrained"]["accuracy"]
    );
    let cached = std::fs::read_dir(t.path("cache"))
        .unwrap()
        .filter(|e| {
            let n = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            n.ends_with(".safetensors")
        })
        .count();
    assert_eq!(cached, 1, "one converged baseline, no partial file");
    // Exactly one of them trained it (logged pretraining epochs); the other loaded it.
    let trained = ["a", "b"]
        .iter()
        .filter(|n| {
            std::fs::read_to_string(t.path(n).join("metrics.jsonl"))
                .unwrap()
                .contains("\"phase\":\"pretrain\"")
        })
        .count();
    assert_eq!(trained, 1);
}
