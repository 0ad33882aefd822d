//! No run is lost: run directories in use or already holding a run, the converged-baseline
//! cache (keyed by the data, shared safely), Ctrl-C during pretraining, and kills at any
//! instant (SIGKILL at timed points and at crash points inside commits), after which
//! `--resume` ends bit-identical to an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{assert_refused, bin};

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
