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
