//! `--resume`: what a run saves besides its checkpoints (epoch, position in the epoch, steps,
//! Adam moments, the policy-gradient state) and how it continues exactly where it stopped.

use std::path::Path;

use serde::Serialize;

use crate::apga::eval::Metrics;
use crate::apga::policy::PolicyState;
use crate::apga::run_dir::{io, read_config};
use crate::apga::{trainer, RunOptions, Summary};
use crate::error::{Error, Result};
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

/// Writes `train_state.json` and `train_state.safetensors` (optimiser moments) atomically.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_train_state(
    run_dir: &Path,
    adam_c: &Adam,
    adam_p: Option<&Adam>,
    pg: &PolicyState,
    epoch: usize,
    batches_done: usize,
    steps: usize,
    best: &(Metrics, usize),
    last: &Metrics,
    pretrained: &Metrics,
) -> Result<()> {
    let mut tensors = Vec::new();
    let classifier_adam_steps = adam_tensors("classifier", adam_c, &mut tensors)?;
    let policy_adam_steps = match adam_p {
        Some(a) => adam_tensors("policy", a, &mut tensors)?,
        None => Vec::new(),
    };
    let json = |m: &Metrics| serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
    let st = TrainState {
        epoch,
        batches_done,
        steps,
        classifier_adam_steps,
        policy_adam_steps,
        policy_state: pg.clone(),
        best_epoch: best.1,
        best: json(&best.0),
        last: json(last),
        pretrained: json(pretrained),
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
    crate::autotune::write_atomic(&run_dir.join("train_state.safetensors"), &bytes)?;
    let text = serde_json::to_vec_pretty(&st).map_err(|e| Error::Incomplete(e.to_string()))?;
    crate::autotune::write_atomic(&run_dir.join("train_state.json"), &text)
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
    let st_path = run_dir.join("train_state.json");
    let st_text = std::fs::read_to_string(&st_path).map_err(io(&st_path))?;
    let st: TrainState = serde_json::from_str(&st_text).map_err(|e| Error::Format {
        path: st_path.clone(),
        detail: e.to_string(),
    })?;
    let opts = RunOptions {
        out: Some(run_dir.to_path_buf()),
        ..opts.clone()
    };
    trainer::train_inner(cfg, &opts, Some(st))
}
