//! A comparison beyond one process: `compare --emit-jobs DIR` writes one self-contained
//! `apga-gpu train` command per (method, seed) (`DIR/jobs.txt`, each with its own config file
//! in `DIR/configs/`) and a Slurm job array over them (`DIR/slurm.sh`); `compare --merge`
//! makes the tables from whatever run directories finished, listing the others. Jobs of one
//! seed share its converged baseline through the pretrained cache, which locks each entry
//! while one process trains it (the others wait, then load it).

use std::path::{Path, PathBuf};

use crate::apga::{self, Method, TrainConfig};
use crate::cli::compare::{write_tables, CompareArgs, Plan, Row};
use crate::error::{Error, Result};
use crate::gpu::GpuOptions;

/// A word for `sh`: single-quoted, with embedded quotes escaped.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(Error::io(p))
}

/// Writes the jobs of a comparison (see the module doc).
pub(super) fn emit(options: &GpuOptions, args: &CompareArgs, dir: &Path) -> Result<()> {
    if dir.join("jobs.txt").exists() && !args.train.overwrite {
        return Err(Error::Incomplete(format!(
            "{} already holds jobs: choose another folder, or pass --overwrite to replace \
             them and their runs",
            dir.display()
        )));
    }
    let base = args.train.resolve()?;
    base.validate()?;
    let dir = absolute(dir)?;
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs).map_err(Error::io(&configs))?;
    let plan = Plan {
        methods: args.methods.clone(),
        seeds: args.seeds,
        config: base.clone(),
    };
    let text =
        toml::to_string_pretty(&plan).map_err(|e| Error::Incomplete(format!("plan: {e}")))?;
    crate::fsio::write_atomic(&dir.join("compare.toml"), text.as_bytes())?;
    let exe = std::env::current_exe().map_err(|e| Error::Incomplete(e.to_string()))?;
    let cache = absolute(
        &args
            .train
            .pretrained_cache
            .clone()
            .unwrap_or_else(apga::default_pretrained_cache),
    )?;
    let mut global = String::new();
    if let Some(d) = &options.device {
        global += &format!(" --device {}", quote(d));
    }
    if !options.autotune {
        global += " --no-autotune";
    }
    let mut jobs = Vec::new();
    for i in 0..plan.seeds {
        let seed = base.seed + i;
        for &method in &plan.methods {
            let name = format!("{}-seed{seed}", method.name());
            let cfg = TrainConfig {
                method,
                seed,
                ..base.clone()
            };
            let run = dir.join(&name);
            if run.join("config.toml").exists() {
                if !args.train.overwrite {
                    return Err(Error::Incomplete(format!(
                        "{} already holds a run: choose another folder, or pass --overwrite \
                         to replace the runs of this plan",
                        run.display()
                    )));
                }
                // The old run goes, or the new job would resume it under the new plan.
                std::fs::remove_dir_all(&run).map_err(Error::io(&run))?;
            }
            let cfg_path = configs.join(format!("{name}.toml"));
            let text = toml::to_string_pretty(&cfg)
                .map_err(|e| Error::Incomplete(format!("{name}: {e}")))?;
            crate::fsio::write_atomic(&cfg_path, text.as_bytes())?;
            // A job that was stopped (preempted, requeued) continues from its last commit;
            // one that never committed starts again.
            let (exe, out, cache) = (
                quote(&exe.to_string_lossy()),
                quote(&run.to_string_lossy()),
                quote(&cache.to_string_lossy()),
            );
            jobs.push(format!(
                "if [ -f {out}/train_state.json ]; then {exe}{global} train --quiet --resume \
                 {out} --pretrained-cache {cache}; else {exe}{global} train --quiet --config {} \
                 --out {out} --pretrained-cache {cache} --overwrite; fi",
                quote(&cfg_path.to_string_lossy()),
            ));
        }
    }
    let list = dir.join("jobs.txt");
    crate::fsio::write_atomic(&list, (jobs.join("\n") + "\n").as_bytes())?;
    let slurm = format!(
        "#!/bin/bash\n\
         # A Slurm job array over {list}: one line (one run) per task.\n\
         #SBATCH --job-name=apga-compare\n\
         #SBATCH --array=1-{n}\n\
         #SBATCH --output={logs}/%a.out\n\
         set -euo pipefail\n\
         job=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" {qlist})\n\
         eval \"$job\"\n",
        list = list.display(),
        n = jobs.len(),
        logs = dir.join("logs").display(),
        qlist = quote(&list.to_string_lossy()),
    );
    std::fs::create_dir_all(dir.join("logs")).map_err(Error::io(&dir))?;
    crate::fsio::write_atomic(&dir.join("slurm.sh"), slurm.as_bytes())?;
    println!(
        "{n} jobs in {list}\n\
         on a Slurm cluster:  sbatch {slurm}\n\
         on this machine:     xargs -d '\\n' -n 1 -P 2 sh -c < {list}\n\
         then the tables:     apga-gpu compare --merge {dir}",
        n = jobs.len(),
        list = list.display(),
        slurm = dir.join("slurm.sh").display(),
        dir = dir.display(),
    );
    Ok(())
}

/// The run directories under `path`: itself if it holds a run, else its sub-folders that do.
fn runs_under(path: &Path) -> Result<Vec<PathBuf>> {
    if path.join("config.toml").is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(Error::io(path))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// Makes a comparison's tables from finished runs (see the module doc). Runs that have not
/// finished and runs a plan (`compare.toml`) lists but nobody started are named; the command
/// then fails after writing the tables of the finished ones.
pub(super) fn merge(paths: &[PathBuf], out: Option<&Path>) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    let mut seen: Vec<(Method, u64, PathBuf)> = Vec::new();
    let mut planned: Vec<(Method, u64)> = Vec::new();
    let mut plans: Vec<(PathBuf, TrainConfig)> = Vec::new();
    let mut methods: Vec<Method> = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let plan_path = path.join("compare.toml");
        if plan_path.is_file() {
            let text = std::fs::read_to_string(&plan_path).map_err(Error::io(&plan_path))?;
            let plan: Plan = toml::from_str(&text).map_err(|e| Error::Format {
                path: plan_path.clone(),
                detail: format!("not a comparison's plan ({e})"),
            })?;
            for i in 0..plan.seeds {
                for &m in &plan.methods {
                    planned.push((m, plan.config.seed + i));
                }
            }
            plans.push((path.clone(), plan.config.clone()));
            for m in plan.methods {
                if !methods.contains(&m) {
                    methods.push(m);
                }
            }
        }
        for run in runs_under(path)? {
            let cfg = apga::read_run_config(&run)?;
            if let Some((_, _, other)) = seen
                .iter()
                .find(|(m, s, _)| *m == cfg.method && *s == cfg.seed)
            {
                return Err(Error::usage(
                    "--merge",
                    format!(
                        "{} and {} are both {} seed {}",
                        other.display(),
                        run.display(),
                        cfg.method.name(),
                        cfg.seed
                    ),
                ));
            }
            seen.push((cfg.method, cfg.seed, run.clone()));
            // A run under a plan must have been trained with the plan's configuration.
            if let Some((_, base)) = plans.iter().find(|(p, _)| run.starts_with(p)) {
                let expected = TrainConfig {
                    method: cfg.method,
                    seed: cfg.seed,
                    ..base.clone()
                };
                if cfg != expected {
                    problems.push(format!(
                        "stale: {} was trained with another configuration than {}'s \
                         compare.toml; left out",
                        run.display(),
                        path.display()
                    ));
                    continue;
                }
            }
            if !methods.contains(&cfg.method) {
                methods.push(cfg.method);
            }
            match apga::read_summary(&run) {
                Ok(s) => rows.push(Row::of(cfg.method, cfg.seed, &s)),
                Err(_) => problems.push(format!(
                    "unfinished: {} ({} seed {}; resume it with `train --resume {}`)",
                    run.display(),
                    cfg.method.name(),
                    cfg.seed,
                    run.display()
                )),
            }
        }
    }
    for (m, s) in &planned {
        if !seen.iter().any(|(mm, ss, _)| mm == m && ss == s) {
            problems.push(format!("missing: {} seed {s} (never started)", m.name()));
        }
    }
    if rows.is_empty() {
        return Err(Error::Incomplete(format!(
            "no finished run under {}{}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            }
        )));
    }
    rows.sort_by_key(|r| (r.seed, methods.iter().position(|m| *m == r.method)));
    let dir = out.unwrap_or(&paths[0]).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let md = write_tables(&dir, &methods, &rows)?;
    println!("{md}\n(written to {})", dir.display());
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    Err(Error::Incomplete(format!(
        "{} of {} runs are missing or unfinished (listed above); the tables cover the {} \
         finished ones",
        problems.len(),
        problems.len() + rows.len(),
        rows.len()
    )))
}
