//! The run directory's files: the JSON-lines log, the step scalars read back for it, the
//! Figure-2 style mask overlays, and the finite-value check that stops a diverging run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::apga::policy::policy_probs;
use crate::apga::trainer::Ctx;
use crate::data::{Loader, LoaderConfig, Preprocess};
use crate::error::{Error, Result};
use crate::models::UNet11;
use crate::tensor::Tensor;

/// JSON-lines log of a run.
pub(crate) struct Log {
    pub(crate) file: std::fs::File,
    pub(crate) path: PathBuf,
}

impl Log {
    pub(crate) fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads the named GPU scalars of a step back in one transfer.
pub(crate) fn read_scalars(values: &[(&'static str, Tensor)]) -> Result<Vec<(&'static str, f64)>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<Tensor> = values
        .iter()
        .map(|(_, t)| crate::ops::reshape(t, &[1]))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = flat.iter().collect();
    let all = crate::ops::concat(&refs, 0)?.to_vec()?;
    Ok(values
        .iter()
        .zip(all)
        .map(|((n, _), v)| (*n, v as f64))
        .collect())
}

pub(crate) fn check_finite(what: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::Incomplete(format!(
            "{what} became {v}: training stopped; the last good checkpoint is intact (try a lower learning rate)"
        )))
    }
}

/// Writes a Figure-2 style grid (kept region tinted green) of the first validation images,
/// upscaled to at least 256 px each: `masks/<tag>.png`.
pub(crate) fn save_masks(ctx: &Ctx, policy: &UNet11, dir: &Path, tag: &str) -> Result<()> {
    let n = ctx.cfg.mask_samples.min(ctx.ds.val.len());
    if n == 0 {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let cfg = LoaderConfig {
        batch_size: n,
        shuffle: false,
        workers: 1,
        ..Default::default()
    };
    let samples = Arc::new(ctx.ds.val[..n].to_vec());
    let pre_raw = Preprocess {
        normalize: crate::data::Normalize::None,
        ..ctx.pre
    };
    let raw = Loader::new(samples.clone(), ctx.ds.synthetic, pre_raw, cfg)
        .next()
        .transpose()?;
    let net_in = Loader::new(samples, ctx.ds.synthetic, ctx.pre, cfg)
        .next()
        .transpose()?;
    let (Some(raw), Some(net_in)) = (raw, net_in) else {
        return Ok(());
    };
    let s = ctx.cfg.image_size;
    let x = ctx.batch_tensor(&net_in)?;
    let p = crate::no_grad(|| policy_probs(policy, &x))?.to_vec()?;
    let plane = s * s;
    // One grid per evaluation, each image upscaled (nearest) to at least 256 px so that the
    // mask can be judged: up to 4 per row.
    let scale = 256usize.div_ceil(s).max(1);
    let side = s * scale;
    let n = raw.len();
    let cols = n.min(4);
    let rows = n.div_ceil(cols.max(1));
    let grid = image::RgbImage::from_fn((cols * side) as u32, (rows * side) as u32, |gx, gy| {
        let (gx, gy) = (gx as usize, gy as usize);
        let j = (gy / side) * cols + gx / side;
        if j >= n {
            return image::Rgb([0, 0, 0]);
        }
        let (x, y) = ((gx % side) / scale, (gy % side) / scale);
        let img = &raw.images[j * 3 * plane..(j + 1) * 3 * plane];
        let i = y * s + x;
        let kept = p[j * plane + i] > 0.5;
        let c = |ch: usize, tint: f32| {
            let v = img[ch * plane + i];
            let v = if kept { 0.6 * v + 0.4 * tint } else { v };
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        image::Rgb([c(0, 0.0), c(1, 1.0), c(2, 0.0)])
    });
    let path = dir.join(format!("{tag}.png"));
    grid.save(&path).map_err(|e| Error::Format {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    Ok(())
}

/// The resolved configuration a run wrote to its `config.toml`.
pub(crate) fn read_config(run_dir: &Path) -> Result<crate::apga::TrainConfig> {
    let path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Format {
                path: run_dir.into(),
                detail: "not a run directory (no config.toml): give a directory that \
                         `apga-gpu train` wrote (its --out)"
                    .into(),
            }
        } else {
            Error::io(&path)(source)
        }
    })?;
    toml::from_str(&text).map_err(|e| Error::Format {
        path,
        detail: e.to_string(),
    })
}

/// What a run writes into its directory: what `--overwrite` removes, and what makes a
/// directory "hold a run".
const RUN_ENTRIES: &[&str] = &[
    "config.toml",
    "metrics.jsonl",
    "summary.json",
    crate::apga::resume::MANIFEST,
    crate::apga::resume::CHECKPOINTS,
    "train_state.safetensors",
    "classifier_best.safetensors",
    "policy_best.safetensors",
    "classifier_latest.safetensors",
    "policy_latest.safetensors",
    "masks",
    "plots",
];

/// The lock file that makes one process a run directory's only writer.
const LOCK: &str = ".lock";

/// Takes the run directory's lock (creating the directory), or says who holds it.
pub(crate) fn lock_run_dir(dir: &Path) -> Result<crate::fsio::Lock> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    crate::fsio::Lock::try_acquire(&dir.join(LOCK))?.ok_or_else(|| {
        Error::Incomplete(format!(
            "{}: another apga-gpu process is writing this run directory; wait for it to \
             finish or choose another --out",
            dir.display()
        ))
    })
}

/// Locks a directory for a new run. A directory that already holds a run is refused unless
/// `overwrite` (then the run's own files are removed; anything else in it is left alone).
pub(crate) fn prepare_new_run_dir(dir: &Path, overwrite: bool) -> Result<crate::fsio::Lock> {
    let lock = lock_run_dir(dir)?;
    let existing: Vec<String> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| RUN_ENTRIES.contains(&n.as_str()) || crate::fsio::is_tmp_name(n))
        .collect();
    if existing.is_empty() {
        return Ok(lock);
    }
    if !overwrite {
        let mut names = existing.clone();
        names.sort();
        return Err(Error::Incomplete(format!(
            "{} already holds a run ({}): continue it with `train --resume {}`, choose \
             another --out, or pass --overwrite to replace it",
            dir.display(),
            names.join(", "),
            dir.display()
        )));
    }
    // The manifest first: a kill midway then leaves no manifest naming deleted files.
    let mut existing = existing;
    existing.sort_by_key(|n| n != crate::apga::resume::MANIFEST);
    for name in existing {
        let p = dir.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(Error::io(&p))?;
    }
    Ok(lock)
}

/// Opens the log of a resumed run, cut back to the length it had at the commit being
/// resumed (the steps after it are trained, and logged, again).
pub(crate) fn reopen_log(path: &Path, committed_len: Option<u64>) -> Result<Log> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(Error::io(path))?;
    if let Some(len) = committed_len {
        let now = file.metadata().map_err(Error::io(path))?.len();
        if now < len {
            return Err(Error::Format {
                path: path.into(),
                detail: format!(
                    "{now} bytes, shorter than the {len} the training state recorded: the \
                     log was cut; the run cannot be resumed exactly"
                ),
            });
        }
        file.set_len(len).map_err(Error::io(path))?;
    }
    Ok(Log {
        file,
        path: path.into(),
    })
}

impl Log {
    /// The log's length in bytes (every line is written straight to the file).
    pub(crate) fn len(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(Error::io(&self.path))?.len())
    }
}
