//! `--resume`: what a run commits (networks, Adam moments, the policy-gradient state, epoch,
//! position in the epoch, steps, the log's length), how it commits them as one unit that a
//! kill at any instant cannot tear, and how it continues exactly where it stopped.

use std::path::Path;

use serde::Serialize;

use crate::apga::eval::Metrics;
use crate::apga::policy::PolicyState;
use crate::apga::run_dir::read_config;
use crate::apga::{trainer, RunOptions, Summary};
use crate::error::{Error, Result};
use crate::models::{DenseNet, UNet11};
use crate::nn::state;
use crate::optim::Adam;

/// Where a run stopped: everything `resume` needs besides the model checkpoints.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct TrainState {
    /// The epoch in progress (1-based) and the batches of it already done.
    pub(crate) epoch: usize,
    pub(crate) batches_done: usize,
    pub(crate) steps: usize,
    pub(crate) classifier_adam_steps: Vec<u64>,
    pub(crate) policy_adam_steps: Vec<u64>,
    /// The policy gradient's baseline, advantage scale, coverage target and step count.
    #[serde(default)]
    pub(crate) policy_state: PolicyState,
    pub(crate) best_epoch: usize,
    pub(crate) best: serde_json::Value,
    pub(crate) last: serde_json::Value,
    pub(crate) pretrained: serde_json::Value,
    /// The committed checkpoint folder, relative to the run directory.
    #[serde(default)]
    pub(crate) checkpoint: Option<String>,
    /// The length of `metrics.jsonl` at the commit (the log is cut back to it on resume).
    #[serde(default)]
    pub(crate) log_bytes: Option<u64>,
    /// The pretrained cache the run used (absolute), so that a resume from another working
    /// directory finds its converged baseline instead of training it again.
    #[serde(default)]
    pub(crate) pretrained_cache: Option<std::path::PathBuf>,
}

fn adam_tensors(
    prefix: &str,
    a: &Adam,
    out: &mut Vec<(String, Vec<f32>, Vec<usize>)>,
) -> Result<Vec<u64>> {
    let mut steps = Vec::new();
    for i in 0..a.len() {
        if let Some((m, v, step)) = a.state(i) {
            out.push((format!("{prefix}.{i}.m"), m.to_vec()?, m.shape().to_vec()));
            out.push((format!("{prefix}.{i}.v"), v.to_vec()?, v.shape().to_vec()));
            steps.push(step);
        }
    }
    Ok(steps)
}

/// Everything one commit of a run's state holds.
pub(crate) struct Snapshot<'a> {
    pub(crate) clf: &'a DenseNet,
    pub(crate) policy: Option<&'a UNet11>,
    pub(crate) adam_c: &'a Adam,
    pub(crate) adam_p: Option<&'a Adam>,
    pub(crate) pg: &'a PolicyState,
    /// The epoch to continue (1-based) and the batches of it already done.
    pub(crate) epoch: usize,
    pub(crate) batches_done: usize,
    pub(crate) steps: usize,
    pub(crate) best: &'a (Metrics, usize),
    pub(crate) last: &'a Metrics,
    pub(crate) pretrained: &'a Metrics,
    /// The length of `metrics.jsonl` that belongs to this state.
    pub(crate) log_bytes: u64,
    pub(crate) pretrained_cache: &'a Path,
}

/// The manifest's name in a run directory.
pub(crate) const MANIFEST: &str = "train_state.json";
/// Where committed checkpoints live, one folder per commit.
pub(crate) const CHECKPOINTS: &str = "checkpoints";

/// Commits the run's state as one unit: the networks and optimiser moments go into a fresh
/// `checkpoints/epochE-batchB/` (written under a temporary name, then renamed), then the
/// manifest `train_state.json` naming that folder replaces the old one atomically, and only
/// then are older folders removed. A kill at any instant leaves a manifest that names
/// complete files, so `--resume` continues bit-exactly from the last commit.
pub(crate) fn commit(run_dir: &Path, s: &Snapshot, dup: &[(String, String)]) -> Result<()> {
    let name = format!("epoch{}-batch{}", s.epoch, s.batches_done);
    let root = run_dir.join(CHECKPOINTS);
    let tmp = root.join(format!("{name}.partial"));
    let dir = root.join(&name);
    for d in [&tmp, &dir] {
        if d.exists() {
            // Left by a killed process: never the one the manifest names (its name is
            // always newer than the manifest's, see `remove_uncommitted`).
            std::fs::remove_dir_all(d).map_err(Error::io(d))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
    state::save(s.clf, &tmp.join("classifier.safetensors"), &[])?;
    if let Some(p) = s.policy {
        state::save(p, &tmp.join("policy.safetensors"), dup)?;
    }
    let mut tensors = Vec::new();
    let classifier_adam_steps = adam_tensors("classifier", s.adam_c, &mut tensors)?;
    let policy_adam_steps = match s.adam_p {
        Some(a) => adam_tensors("policy", a, &mut tensors)?,
        None => Vec::new(),
    };
    let views = tensors
        .iter()
        .map(|(k, v, shape)| {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(v),
            )
            .map(|view| (k.clone(), view))
            .map_err(|e| Error::Incomplete(format!("optimiser state {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(views, &None).map_err(|e| Error::Incomplete(e.to_string()))?;
    crate::fsio::write_atomic(&tmp.join("optimizer.safetensors"), &bytes)?;
    crate::fsio::crash_point("commit:files");
    std::fs::rename(&tmp, &dir).map_err(Error::io(&dir))?;
    crate::fsio::crash_point("commit:renamed");
    let json = |m: &Metrics| serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
    let st = TrainState {
        epoch: s.epoch,
        batches_done: s.batches_done,
        steps: s.steps,
        classifier_adam_steps,
        policy_adam_steps,
        policy_state: s.pg.clone(),
        best_epoch: s.best.1,
        best: json(&s.best.0),
        last: json(s.last),
        pretrained: json(s.pretrained),
        checkpoint: Some(format!("{CHECKPOINTS}/{name}")),
        log_bytes: Some(s.log_bytes),
        pretrained_cache: std::path::absolute(s.pretrained_cache).ok(),
    };
    let text = serde_json::to_vec_pretty(&st).map_err(|e| Error::Incomplete(e.to_string()))?;
    crate::fsio::write_atomic(&run_dir.join(MANIFEST), &text)?;
    crate::fsio::crash_point("commit:manifest");
    // The commit stands; failing to remove older folders only costs disk space.
    if let Err(e) = remove_uncommitted(run_dir, &st) {
        log::warn!("older checkpoints not removed: {e}");
    }
    Ok(())
}

/// Removes every checkpoint folder the manifest does not name (older commits, and folders a
/// killed process left half-written) and stale temporary files. Called with the run
/// directory's lock held.
pub(crate) fn remove_uncommitted(run_dir: &Path, st: &TrainState) -> Result<()> {
    let root = run_dir.join(CHECKPOINTS);
    let keep = st
        .checkpoint
        .as_deref()
        .and_then(|c| Path::new(c).file_name())
        .map(|n| n.to_os_string());
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            if Some(e.file_name()) != keep {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(Error::io(&p))?;
            }
        }
    }
    crate::fsio::remove_stale_tmp(run_dir, "");
    Ok(())
}

/// Reads a run's manifest, with the fix when it is missing or damaged.
pub(crate) fn read_manifest(run_dir: &Path) -> Result<TrainState> {
    let path = run_dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Format {
                path: path.clone(),
                detail: "missing: this run has not committed a checkpoint yet (it stopped \
                         before its first epoch ended or was interrupted); start it again \
                         with `train --config <its config.toml> --out <it> --overwrite`"
                    .into(),
            }
        } else {
            Error::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path,
        detail: format!("not a valid training state ({e}); the run cannot be resumed"),
    })
}

/// The folder holding a committed state's networks and optimiser moments, and the file
/// names inside it (runs written before commits were folders kept them in the run
/// directory as `*_latest.safetensors` and `train_state.safetensors`).
pub(crate) fn latest_files(run_dir: &Path, st: &TrainState) -> [std::path::PathBuf; 3] {
    match &st.checkpoint {
        Some(c) => {
            let d = run_dir.join(c);
            [
                d.join("classifier.safetensors"),
                d.join("policy.safetensors"),
                d.join("optimizer.safetensors"),
            ]
        }
        None => [
            run_dir.join("classifier_latest.safetensors"),
            run_dir.join("policy_latest.safetensors"),
            run_dir.join("train_state.safetensors"),
        ],
    }
}

pub(crate) fn restore_adam(
    prefix: &str,
    a: &mut Adam,
    steps: &[u64],
    file: &std::collections::BTreeMap<String, state::Entry>,
) -> Result<()> {
    for (i, &step) in steps.iter().enumerate() {
        let get = |w: &str| {
            file.get(&format!("{prefix}.{i}.{w}")).ok_or_else(|| {
                Error::Incomplete(format!("train_state.safetensors lacks {prefix}.{i}.{w}"))
            })
        };
        a.restore(i, &get("m")?.values, &get("v")?.values, step)?;
    }
    Ok(())
}

/// Continues a run from its `train_state.json`, latest checkpoints and optimiser state, exactly
/// where it stopped (same data order, same baseline b_t, same step counter).
pub fn resume(run_dir: &Path, opts: &RunOptions) -> Result<Summary> {
    let cfg = read_config(run_dir)?;
    // The run directory's lock first: the manifest read under it stays the committed one.
    let lock = crate::apga::run_dir::lock_run_dir(run_dir)?;
    let st = read_manifest(run_dir)?;
    // The committed files are complete (they were renamed into place whole); a file damaged
    // since is reported now, not after the networks are set up.
    let [clf, policy, optimizer] = latest_files(run_dir, &st);
    for f in [
        Some(clf),
        cfg.method.has_policy().then_some(policy),
        Some(optimizer),
    ]
    .into_iter()
    .flatten()
    {
        state::read(&f)?;
    }
    let opts = RunOptions {
        out: Some(run_dir.to_path_buf()),
        pretrained_cache: opts
            .pretrained_cache
            .clone()
            .or_else(|| st.pretrained_cache.clone()),
        ..opts.clone()
    };
    trainer::train_inner(cfg, &opts, Some((st, lock)))
}
