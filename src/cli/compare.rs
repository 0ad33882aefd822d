//! `apga-gpu compare`: every method with every seed (sharing the converged baseline and the
//! policy's warm start of a seed), then the table: mean ± std over seeds per method, and the
//! per-seed paired difference against the baseline (same seed, same starting classifier).
//! Seeds run in the outer loop and the tables are rewritten after every run, so a stopped
//! comparison leaves the seeds it finished.

use std::path::{Path, PathBuf};

use crate::apga::{self, Method, RunOptions, Summary, TrainConfig};
use crate::cli::train::TrainArgs;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Comma-separated methods.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,cutout,gradcam,frozen-mask,apga"
    )]
    pub methods: Vec<Method>,
    /// Number of seeds (seed, seed + 1, ...).
    #[arg(long, default_value_t = 5, value_parser = crate::cli::ranged_u64(1, 1000))]
    pub seeds: u64,
    /// Write one self-contained `apga-gpu train` command per (method, seed) into
    /// DIR/jobs.txt, plus DIR/slurm.sh (a Slurm job array over them), instead of running them;
    /// `compare --merge DIR` then makes the tables.
    #[arg(long, value_name = "DIR")]
    pub emit_jobs: Option<PathBuf>,
    /// Make the tables from finished run directories (or folders of them, e.g. an
    /// --emit-jobs DIR), whatever machine ran them; unfinished or missing runs are listed.
    /// Tables go to --out (default: the first folder given).
    #[arg(long, value_name = "DIR", num_args = 1..)]
    pub merge: Vec<PathBuf>,
    /// MURA: one comparison per body part (comma-separated, or `all` for the seven), each in
    /// its own folder, then the paper's Table 2: one row per body part (`table2.md`).
    #[arg(long, value_delimiter = ',')]
    pub body_parts: Vec<String>,
    /// Every training option (the method and out directory are set per run).
    #[command(flatten)]
    pub train: TrainArgs,
}

/// One run of a comparison: its best evaluation (plain accuracy, the same rule for all).
#[derive(Clone)]
pub(super) struct Row {
    pub(super) method: Method,
    pub(super) seed: u64,
    values: [Option<f64>; 7],
}

/// Columns of the table: (header, CSV name).
const COLUMNS: [(&str, &str); 7] = [
    ("accuracy", "accuracy"),
    ("AUROC", "auroc"),
    ("with TTA", "tta_accuracy"),
    ("mask IoU", "mask_iou"),
    ("mask keeps", "mask_kept_fraction"),
    ("evidence kept", "evidence_kept"),
    ("marker kept", "shortcut_kept"),
];

impl Row {
    /// The run's best accuracy.
    pub(super) fn accuracy(&self) -> Option<f64> {
        self.values[0]
    }

    pub(super) fn of(method: Method, seed: u64, s: &Summary) -> Row {
        let b = &s.best;
        Row {
            method,
            seed,
            values: [
                Some(b.accuracy),
                b.auroc,
                b.tta_accuracy,
                b.mask_iou,
                b.mask_kept_fraction,
                b.evidence_kept,
                b.shortcut_kept,
            ],
        }
    }
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn pm((m, s): (f64, f64)) -> String {
    format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
}

/// compare.md, compare.csv and per_seed.csv of the rows so far.
pub(super) fn write_tables(dir: &Path, methods: &[Method], rows: &[Row]) -> Result<String> {
    let seeds: Vec<u64> = {
        let mut v: Vec<u64> = rows.iter().map(|r| r.seed).collect();
        v.sort();
        v.dedup();
        v
    };
    let stat = |m: Method, c: usize| -> Option<(f64, f64)> {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.method == m)
            .filter_map(|r| r.values[c])
            .collect();
        (!v.is_empty()).then(|| mean_std(&v))
    };
    // Paired differences of accuracy against the baseline of the same seed.
    let paired = |m: Method| -> Vec<(u64, f64)> {
        seeds
            .iter()
            .filter_map(|&s| {
                let get = |mm: Method| {
                    rows.iter()
                        .find(|r| r.method == mm && r.seed == s)
                        .and_then(|r| r.values[0])
                };
                Some((s, get(m)? - get(Method::Baseline)?))
            })
            .collect()
    };
    let best = methods
        .iter()
        .filter_map(|&m| stat(m, 0))
        .map(|s| s.0)
        .fold(f64::MIN, f64::max);
    let mut md = format!(
        "Validation accuracy and masks (%) over seeds {seeds:?}, mean ± std (sample); each run's best evaluation by plain accuracy; best accuracy in bold. Δ = paired difference against the baseline of the same seed.\n\n| method | runs |"
    );
    for (h, _) in COLUMNS {
        md += &format!(" {h} |");
    }
    md += " Δ accuracy vs baseline | Δ per seed |\n|---|---|";
    md += &"---|".repeat(COLUMNS.len() + 2);
    md += "\n";
    let mut csv = String::from("method,runs");
    for (_, c) in COLUMNS {
        csv += &format!(",{c}_mean,{c}_std");
    }
    csv += ",delta_accuracy_mean,delta_accuracy_std\n";
    for &m in methods {
        let runs = rows.iter().filter(|r| r.method == m).count();
        if runs == 0 {
            continue;
        }
        md += &format!("| {} | {runs} |", m.name());
        csv += &format!("{},{runs}", m.name());
        for c in 0..COLUMNS.len() {
            let cell = stat(m, c).map(pm).unwrap_or_else(|| "-".into());
            let cell = match stat(m, c) {
                Some(s) if c == 0 && s.0 == best => format!("**{cell}**"),
                _ => cell,
            };
            md += &format!(" {cell} |");
            csv += &stat(m, c)
                .map(|(a, b)| format!(",{a:.6},{b:.6}"))
                .unwrap_or_else(|| ",,".into());
        }
        let d = paired(m);
        if m == Method::Baseline || d.is_empty() {
            md += " - | - |\n";
            csv += ",,\n";
        } else {
            let v: Vec<f64> = d.iter().map(|x| x.1).collect();
            let (a, b) = mean_std(&v);
            let per: Vec<String> = d
                .iter()
                .map(|(s, x)| format!("{s}: {:+.1}", 100.0 * x))
                .collect();
            md += &format!(
                " {:+.1} ± {:.1} ({} of {} seeds > 0) | {} |\n",
                100.0 * a,
                100.0 * b,
                v.iter().filter(|x| **x > 0.0).count(),
                v.len(),
                per.join(", ")
            );
            csv += &format!(",{a:.6},{b:.6}\n");
        }
    }
    let mut per_seed = String::from("method,seed");
    for (_, c) in COLUMNS {
        per_seed += &format!(",{c}");
    }
    per_seed += "\n";
    for r in rows {
        per_seed += &format!("{},{}", r.method.name(), r.seed);
        for v in r.values {
            per_seed += &v.map(|x| format!(",{x:.6}")).unwrap_or_else(|| ",".into());
        }
        per_seed += "\n";
    }
    // What people look at first: mean accuracy per method with its spread over seeds.
    let bars: Vec<(String, f64, f64)> = methods
        .iter()
        .filter_map(|&m| stat(m, 0).map(|(a, b)| (m.name().to_string(), a, b)))
        .collect();
    crate::apga::plots::bar_plot(
        &dir.join("compare.png"),
        &format!("validation accuracy, mean ± std over seeds {seeds:?}"),
        &bars,
    )?;
    for (name, text) in [
        ("compare.md", &md),
        ("compare.csv", &csv),
        ("per_seed.csv", &per_seed),
    ] {
        crate::fsio::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    Ok(md)
}

/// What a comparison directory records of itself (`compare.toml`), so that `--resume`
/// continues it with the same methods, seeds and configuration whatever flags it is given.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Plan {
    pub(super) methods: Vec<Method>,
    pub(super) seeds: u64,
    pub(super) config: TrainConfig,
}

pub fn compare(
    options: &crate::gpu::GpuOptions,
    devices: &[String],
    args: &CompareArgs,
) -> Result<()> {
    if !args.body_parts.is_empty() && (args.emit_jobs.is_some() || !args.merge.is_empty()) {
        return Err(Error::usage(
            "--body-parts",
            "runs the comparisons itself; for jobs, emit one set per body part with \
             --body-part PART --emit-jobs DIR/PART",
        ));
    }
    if !args.merge.is_empty() {
        return super::jobs::merge(&args.merge, args.train.out.as_deref());
    }
    if args.methods.is_empty() || args.seeds == 0 {
        return Err(Error::usage(
            "compare",
            "needs at least one method and one seed",
        ));
    }
    if let Some(dir) = &args.emit_jobs {
        return super::jobs::emit(options, args, dir);
    }
    let dir = args
        .train
        .resume
        .clone()
        .or_else(|| args.train.out.clone())
        .unwrap_or_else(|| {
            PathBuf::from("runs").join(format!(
                "{}-compare",
                chrono::Local::now().format("%Y%m%d-%H%M%S")
            ))
        });
    if args.body_parts.is_empty() {
        compare_one(options, devices, args, &dir, None)?;
        return Ok(());
    }
    if !args.train.resolve()?.data.starts_with("mura:") {
        return Err(Error::usage(
            "--body-parts",
            "applies to MURA (--data mura:PATH)",
        ));
    }
    // The paper's Table 2: one comparison per body part, then one row each.
    let parts: Vec<String> = if args.body_parts.iter().any(|p| p == "all") {
        crate::data::dataset::BODY_PARTS
            .iter()
            .map(|p| p.to_string())
            .collect()
    } else {
        args.body_parts.clone()
    };
    let mut table = Vec::new();
    for part in &parts {
        println!("== body part {part}");
        let (methods, rows) = compare_one(options, devices, args, &dir.join(part), Some(part))?;
        table.push((part.clone(), methods, rows));
        write_table2(&dir, &table)?;
    }
    println!(
        "\n{}\n(written to {})",
        std::fs::read_to_string(dir.join("table2.md")).unwrap_or_default(),
        dir.display()
    );
    Ok(())
}

/// The paper's Table 2: accuracy (mean ± std over seeds) per body part and method.
fn write_table2(dir: &Path, table: &[(String, Vec<Method>, Vec<Row>)]) -> Result<()> {
    let mut methods: Vec<Method> = Vec::new();
    for (_, ms, _) in table {
        for m in ms {
            if !methods.contains(m) {
                methods.push(*m);
            }
        }
    }
    let mut md = String::from(
        "Validation accuracy (%) per body part, mean ± std over seeds (each run's best \
         evaluation by plain accuracy).\n\n| body part |",
    );
    for m in &methods {
        md += &format!(" {} |", m.name());
    }
    md += "\n|---|";
    md += &"---|".repeat(methods.len());
    md += "\n";
    for (part, _, rows) in table {
        md += &format!("| {part} |");
        for &m in &methods {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.method == m)
                .filter_map(|r| r.accuracy())
                .collect();
            md += &if v.is_empty() {
                " - |".to_string()
            } else {
                format!(" {} |", pm(mean_std(&v)))
            };
        }
        md += "\n";
    }
    crate::fsio::write_atomic(&dir.join("table2.md"), md.as_bytes())
}

/// One comparison (every method with every seed) in `dir`, optionally for one MURA body
/// part; returns its methods and rows.
fn compare_one(
    options: &crate::gpu::GpuOptions,
    devices: &[String],
    args: &CompareArgs,
    dir: &Path,
    body_part: Option<&str>,
) -> Result<(Vec<Method>, Vec<Row>)> {
    let resuming = args.train.resume.is_some();
    let plan_path = dir.join("compare.toml");
    let plan = if resuming {
        let text = std::fs::read_to_string(&plan_path).map_err(Error::io(&plan_path))?;
        toml::from_str::<Plan>(&text).map_err(|e| Error::Format {
            path: plan_path.clone(),
            detail: format!("not a comparison's plan ({e})"),
        })?
    } else {
        if plan_path.exists() && !args.train.overwrite {
            return Err(Error::Incomplete(format!(
                "{} already holds a comparison: continue it with `compare --resume {}`, \
                 choose another --out, or pass --overwrite to replace its runs",
                dir.display(),
                dir.display()
            )));
        }
        let mut config = args.train.resolve()?;
        if let Some(part) = body_part {
            config.body_part = part.to_string();
        }
        let plan = Plan {
            methods: args.methods.clone(),
            seeds: args.seeds,
            config,
        };
        let text = toml::to_string_pretty(&plan)
            .map_err(|e| Error::Incomplete(format!("compare.toml: {e}")))?;
        crate::fsio::write_atomic(&plan_path, text.as_bytes())?;
        plan
    };
    apga::install_interrupt_handler();
    let base = plan.config.clone();
    let jobs: Vec<(u64, Method)> = (0..plan.seeds)
        .flat_map(|i| plan.methods.iter().map(move |&m| (base.seed + i, m)))
        .collect();
    // One run of the plan on the adapter `device` (None: the caller's choice).
    let run_job = |(seed, method): (u64, Method), device: Option<&String>| -> Result<Row> {
        let cfg = TrainConfig {
            method,
            seed,
            ..base.clone()
        };
        let run = dir.join(format!("{}-seed{seed}", method.name()));
        let mut gpu = options.clone();
        if let Some(d) = device {
            gpu.device = Some(d.clone());
        }
        let opts = RunOptions {
            out: Some(run.clone()),
            quiet: args.train.quiet,
            gpu,
            pretrained_cache: args.train.pretrained_cache.clone(),
            stop_after_steps: None,
            // Resuming: a run that never committed a state starts again.
            overwrite: args.train.overwrite || resuming,
        };
        let s = if resuming && run.join("summary.json").is_file() {
            println!("{} seed {seed}: finished earlier", method.name());
            apga::read_summary(&run)?
        } else if resuming && run.join("train_state.json").is_file() {
            apga::resume(&run, &opts)?
        } else {
            apga::train(cfg, &opts)?
        };
        println!(
            "{} seed {seed}: accuracy {:.3} (converged baseline {:.3}){}",
            method.name(),
            s.best.accuracy,
            s.pretrained.accuracy,
            device
                .map(|_| format!(" on {}", s.adapter.as_deref().unwrap_or("?")))
                .unwrap_or_default()
        );
        Ok(Row::of(method, seed, &s))
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut md = String::new();
    if devices.len() <= 1 {
        for &job in &jobs {
            rows.push(run_job(job, None)?);
            md = write_tables(dir, &plan.methods, &rows)?;
        }
    } else {
        // One worker per adapter, each taking the next job of the plan; rows are tabled in
        // the plan's order as they finish. The converged baseline of a seed is trained by
        // whichever job needs it first; the cache's lock makes the other wait and load it.
        // Every listed adapter must exist before any job starts.
        for d in devices {
            crate::gpu::adapter::list(&crate::gpu::adapter::Request::resolve(Some(d))).1?;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        // Sets `failed` when a worker leaves by panicking, so the others take no new job.
        struct StopOthers<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOthers<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Row>)>();
        let mut first_error = None;
        std::thread::scope(|scope| {
            for device in devices {
                let (tx, next, failed, jobs, run_job) =
                    (tx.clone(), &next, &failed, &jobs, &run_job);
                scope.spawn(move || {
                    let _guard = StopOthers(failed);
                    loop {
                        use std::sync::atomic::Ordering::SeqCst;
                        let i = next.fetch_add(1, SeqCst);
                        if i >= jobs.len() || failed.load(SeqCst) || apga::interrupted() {
                            return;
                        }
                        let r = run_job(jobs[i], Some(device));
                        if r.is_err() {
                            failed.store(true, SeqCst);
                        }
                        if tx.send((i, r)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut done: Vec<(usize, Row)> = Vec::new();
            for (i, r) in rx {
                let written = r.and_then(|row| {
                    done.push((i, row));
                    done.sort_by_key(|(i, _)| *i);
                    rows = done.iter().map(|(_, r)| r.clone()).collect();
                    write_tables(dir, &plan.methods, &rows)
                });
                match written {
                    Ok(text) => md = text,
                    Err(e) => {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        first_error.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = first_error {
            return Err(e);
        }
        if rows.len() < jobs.len() {
            return Err(Error::Incomplete(format!(
                "{} of {} runs finished (interrupted); continue with `compare --resume {}`",
                rows.len(),
                jobs.len(),
                dir.display()
            )));
        }
    }
    println!("\n{md}\n(written to {})", dir.display());
    Ok((plan.methods, rows))
}
