//! A comparison run as separate jobs: `compare --emit-jobs` + running every line of its
//! `jobs.txt` + `compare --merge` gives the same table as a plain `compare`; unfinished and
//! missing runs are named and make the merge fail after writing what finished.

mod common;

use common::bin;

const TINY: &str = "image_size = 32\ntrain_size = 16\nval_size = 8\nbatch_size = 8\n\
policy_filters = 2\nepochs = 1\nwarm_start_steps = 10\npretrain_epochs = 1\n";

#[test]
fn emitted_jobs_merged_equal_a_plain_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let common_args = |out_flag: &str, out: &str| -> Vec<String> {
        [
            "--no-autotune",
            "compare",
            "--methods",
            "baseline,random-erasing",
            "--seeds",
            "2",
            "--quiet",
            "--config",
            &cfg.to_string_lossy(),
            "--pretrained-cache",
            &p("cache"),
            out_flag,
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let out = bin().args(&args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(common_args("--out", &p("plain")));
    assert!(ok, "{err}");
    let (ok, stdout, err) = run(common_args("--emit-jobs", &p("jobs")));
    assert!(ok && stdout.contains("4 jobs"), "{stdout} {err}");
    let jobs = std::fs::read_to_string(dir.path().join("jobs/jobs.txt")).unwrap();
    assert_eq!(jobs.lines().count(), 4);
    let slurm = std::fs::read_to_string(dir.path().join("jobs/slurm.sh")).unwrap();
    assert!(slurm.contains("#SBATCH --array=1-4"), "{slurm}");
    // Nothing ran yet: merging says what is missing and fails.
    let (ok, _, err) = run(vec!["compare".into(), "--merge".into(), p("jobs")]);
    assert!(!ok && err.contains("no finished run"), "{err}");
    for job in jobs.lines() {
        let st = std::process::Command::new("sh")
            .args(["-c", job])
            .env_remove("APGA_CRASH_AT")
            .status()
            .unwrap();
        assert!(st.success(), "{job}");
    }
    let (ok, _, err) = run(vec!["compare".into(), "--merge".into(), p("jobs")]);
    assert!(ok, "{err}");
    let table = |d: &str| std::fs::read_to_string(dir.path().join(d).join("compare.md")).unwrap();
    assert_eq!(table("jobs"), table("plain"));
    let per_seed =
        |d: &str| std::fs::read_to_string(dir.path().join(d).join("per_seed.csv")).unwrap();
    assert_eq!(per_seed("jobs"), per_seed("plain"));
    // The picture people look at: a PNG beside the tables.
    let png = image::open(dir.path().join("plain/compare.png")).unwrap();
    assert!(png.width() >= 300 && png.height() == 480);
    // One run unfinished: named, the others still tabled, exit status 1.
    std::fs::remove_file(dir.path().join("jobs/random-erasing-seed1/summary.json")).unwrap();
    let (ok, stdout, err) = run(vec![
        "compare".into(),
        "--merge".into(),
        p("jobs"),
        "--out".into(),
        p("partial"),
    ]);
    assert!(
        !ok && err.contains("unfinished") && err.contains("random-erasing-seed1"),
        "{err}"
    );
    assert!(stdout.contains("| random-erasing | 1 |"), "{stdout}");
}

#[test]
fn compare_runs_jobs_on_several_adapters_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let run = |device: Option<&str>, out: &str| {
        let mut cmd = bin();
        if let Some(d) = device {
            cmd.args(["--device", d]);
        }
        let o = cmd
            .args(["--no-autotune", "compare", "--methods", "baseline,cutout"])
            .args(["--seeds", "2", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--pretrained-cache")
            .arg(p("cache"))
            .arg("--out")
            .arg(p(out))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let table = |d: &str| std::fs::read_to_string(dir.path().join(d).join("per_seed.csv")).unwrap();
    run(None, "plain");
    // The same adapter twice: two workers at once, and the table as the sequential one's.
    let stdout = run(Some("0,0"), "twice");
    assert_eq!(table("twice"), table("plain"), "{stdout}");
    // Two adapters where the machine has them (CI: lavapipe on Vulkan, llvmpipe on GL).
    let listing = bin().arg("devices").output().unwrap();
    let adapters = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| {
            l.trim_start()
                .trim_start_matches('*')
                .trim()
                .starts_with(char::is_numeric)
        })
        .count();
    if adapters >= 2 {
        run(Some("0,1"), "both");
        let mut used = std::collections::HashSet::new();
        for m in ["baseline", "cutout"] {
            for seed in 0..2 {
                let s: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(dir.path().join(format!("both/{m}-seed{seed}/summary.json")))
                        .unwrap(),
                )
                .unwrap();
                used.insert(s["adapter"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(used.len(), 2, "runs used {used:?}");
    }
    // A list is for compare only.
    let out = bin().args(["--device", "0,1", "train"]).output().unwrap();
    common::assert_refused(&out, &["--device", "compare"]);
}

#[test]
fn body_parts_give_the_papers_table_two() {
    // A fake MURA tree with two body parts (a few 32x32 images per class and split).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mura");
    let mut lines = std::collections::BTreeMap::<&str, Vec<String>>::new();
    for (part, shade) in [("XR_HAND", 60u8), ("XR_ELBOW", 120u8)] {
        for split in ["train", "valid"] {
            for p in 0..6 {
                let label = if p % 2 == 0 { "positive" } else { "negative" };
                let rel =
                    format!("MURA-v1.1/{split}/{part}/patient{p:05}/study1_{label}/image1.png");
                let file = root.join(&rel);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                let v = if label == "positive" {
                    shade
                } else {
                    255 - shade
                };
                image::GrayImage::from_fn(32, 32, |x, y| {
                    image::Luma([v.wrapping_add((x ^ y) as u8)])
                })
                .save(&file)
                .unwrap();
                lines.entry(split).or_default().push(rel);
            }
        }
    }
    for (split, l) in &lines {
        std::fs::write(
            root.join(format!("MURA-v1.1/{split}_image_paths.csv")),
            l.join("\n"),
        )
        .unwrap();
    }
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out = bin()
        .args([
            "--no-autotune",
            "compare",
            "--methods",
            "baseline,cutout",
            "--seeds",
            "1",
        ])
        .args(["--quiet", "--body-parts", "hand,elbow", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(format!("mura:{}", root.display()))
        .arg("--pretrained-cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("t2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t2 = std::fs::read_to_string(dir.path().join("t2/table2.md")).unwrap();
    assert!(t2.contains("| body part | baseline | cutout |"), "{t2}");
    assert!(t2.contains("| hand |") && t2.contains("| elbow |"), "{t2}");
    for part in ["hand", "elbow"] {
        assert!(dir
            .path()
            .join("t2")
            .join(part)
            .join("compare.md")
            .is_file());
    }
    // Body parts are a MURA notion.
    let out = bin()
        .args(["compare", "--body-parts", "all"])
        .output()
        .unwrap();
    common::assert_refused(&out, &["--body-parts", "MURA"]);
}
