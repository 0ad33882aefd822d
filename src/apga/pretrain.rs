//! What every method starts from: the baseline classifier trained to convergence on the
//! original images, and the policy's label-free foreground warm start; both cached in the
//! pretrained folder and reused by every method of a comparison.

use std::path::Path;

use crate::apga::eval::Metrics;
use crate::apga::run_dir::{check_finite, Log};
use crate::apga::trainer::{adam, Ctx};
use crate::apga::{classifier_config, step, TrainConfig};
use crate::data::foreground::foreground_targets;
use crate::error::{Error, Result};
use crate::models::{unet, DenseNet, UNet11};
use crate::nn::state::{self, LoadOptions};
use crate::nn::Module;
use crate::tensor::Tensor;
use crate::{ops, Tape};

/// The fields every cached network depends on: the data, its split and preprocessing, the
/// batch size.
fn data_fields(cfg: &TrainConfig) -> String {
    format!(
        "{}|{}|{:?}|{}|{}|{}|{}|{}|{:?}|{}",
        cfg.data,
        cfg.body_part,
        cfg.k_shot,
        cfg.val_fraction,
        cfg.classes,
        cfg.train_size,
        cfg.val_size,
        cfg.image_size,
        cfg.normalize,
        cfg.batch_size,
    )
}

/// `name-seedS-HASH` with HASH over `fields` (and the seed).
fn cache_key(name: &str, fields: &str, seed: u64, extra: Option<String>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fields.hash(&mut h);
    if let Some(e) = extra {
        e.hash(&mut h);
    }
    seed.hash(&mut h);
    format!("{name}-seed{seed}-{:016x}", h.finish())
}

/// A key identifying the converged baseline of a configuration (same data, classifier,
/// optimiser and seed give the same classifier). `data` is the dataset's fingerprint for
/// data read from files (their list, sizes and times), so changed images are trained anew.
pub(crate) fn pretrain_key(cfg: &TrainConfig, data: Option<u64>) -> String {
    let fields = format!(
        "{}|{}|{}|{}|{}|{:?}",
        data_fields(cfg),
        cfg.classifier_arch,
        cfg.lr_classifier,
        cfg.pretrain_epochs,
        cfg.patience,
        cfg.classifier_weights,
    );
    // Synthetic data's style changes the images (absent from the key before styles existed,
    // so the classic style keeps its old keys).
    let style = (cfg.data == "synthetic" && cfg.synthetic_style != Default::default())
        .then(|| format!("{:?}", cfg.synthetic_style));
    let mut extra = match (style, data) {
        (s, None) => s,
        (s, Some(d)) => Some(format!("{}|data {d:016x}", s.unwrap_or_default())),
    };
    // A replaced head starts from other weights (only when set, so other keys stay valid).
    if cfg.replace_head {
        extra = Some(format!("{}|replace-head", extra.unwrap_or_default()));
    }
    cache_key(&cfg.classifier_arch, &fields, cfg.seed, extra)
}

/// A key identifying the foreground warm start of a configuration's policy (`data` as in
/// `pretrain_key`).
fn policy_key(cfg: &TrainConfig, data: Option<u64>) -> String {
    let mut fields = format!(
        "{}|{}|{:?}|foreground-v1",
        data_fields(cfg),
        cfg.warm_start_steps,
        cfg.synthetic_style,
    );
    if let Some(d) = data {
        fields += &format!("|data {d:016x}");
    }
    cache_key(
        &format!("unet11-{}f", cfg.policy_filters),
        &fields,
        cfg.seed,
        None,
    )
}

/// Makes this process the only one training the cache entry `key` (another run with the same
/// key waits, then loads what it saved), and removes what a killed process left of it.
fn lock_cache_entry(
    ctx: &Ctx,
    cache: &Path,
    key: &str,
    partial: &Path,
    what: &str,
) -> Result<crate::fsio::Lock> {
    let lock = crate::fsio::Lock::acquire(&cache.join(format!("{key}.lock")), || {
        ctx.say(format!(
            "waiting for another process that is training the same {what} ({key})"
        ))
    })?;
    crate::fsio::remove_stale_tmp(cache, key);
    if partial.exists() {
        std::fs::remove_file(partial).map_err(Error::io(partial))?;
    }
    remove_abandoned(cache, key);
    Ok(lock)
}

/// Removes what killed or interrupted processes left of other cache entries: a
/// `KEY.partial.safetensors` (or a temporary file) whose `KEY.lock` nobody holds.
fn remove_abandoned(cache: &Path, own_key: &str) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let key = match name.strip_suffix(".partial.safetensors") {
            Some(k) => k.to_string(),
            None if crate::fsio::is_tmp_name(&name) => match name.split_once('.') {
                Some((k, _)) => k.to_string(),
                None => continue,
            },
            None => continue,
        };
        if key == own_key {
            continue;
        }
        let lock = cache.join(format!("{key}.lock"));
        if let Ok(Some(_held)) = crate::fsio::Lock::try_acquire(&lock) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Ctrl-C during pretraining stops at once: nothing of the run exists yet to save.
fn stop_if_interrupted(phase: &str) -> Result<()> {
    if crate::apga::interrupted() {
        return Err(crate::error::Error::Incomplete(format!(
            "interrupted during {phase}: stopped before the method's first step, so there \
             is nothing to resume; the cache keeps only what finished"
        )));
    }
    Ok(())
}

/// The policy a run starts from (`--policy-init`): PyTorch's initialisation (`random`), a
/// UNet11 state dict (a file; `--segmenter-weights` is the same), or `foreground`: UNet11
/// trained label-free for `warm_start_steps` Adam steps (lr 1e-3) to output the Otsu
/// foreground of each training image with soft targets 0.1 / 0.9 (`data::foreground`), in
/// place of the paper's Carvana-pretrained TernausNet; cached like the converged classifier.
pub(crate) fn starting_policy(ctx: &Ctx, log: &mut Log, cache: &Path) -> Result<UNet11> {
    let cfg = &ctx.cfg;
    let policy = UNet11::new(&ctx.gpu, cfg.policy_filters, cfg.seed.wrapping_add(1))?;
    let aliases = LoadOptions {
        aliases: unet::encoder_aliases(),
        ..Default::default()
    };
    let init = cfg
        .segmenter_weights
        .clone()
        .unwrap_or_else(|| cfg.policy_init.clone());
    match init.as_str() {
        "random" => return Ok(policy),
        "foreground" => {}
        file => {
            let r = state::load(&policy, Path::new(file), &aliases)?;
            ctx.say(format!("policy weights from {file} ({} tensors)", r.loaded));
            return Ok(policy);
        }
    }
    let key = policy_key(cfg, ctx.data_key);
    let path = cache.join(format!("{key}.safetensors"));
    let tmp = cache.join(format!("{key}.partial.safetensors"));
    let _lock = lock_cache_entry(ctx, cache, &key, &tmp, "policy warm start")?;
    if path.is_file() {
        state::load(&policy, &path, &aliases)?;
        ctx.say(format!(
            "foreground warm start of the policy loaded from {}",
            path.display()
        ));
        return Ok(policy);
    }
    let mut opt = adam(&policy.parameters(), 1e-3)?;
    let bar = ctx.progress(cfg.warm_start_steps, "policy warm start".into());
    let (mut done, mut epoch, mut last) = (0, 0u64, 0.0);
    let s = cfg.image_size;
    while done < cfg.warm_start_steps {
        for batch in ctx.loader(2_000_000 + epoch) {
            if done >= cfg.warm_start_steps {
                break;
            }
            let batch = batch?;
            if batch.is_empty() {
                continue;
            }
            stop_if_interrupted("the policy's warm start")?;
            let x = ctx.batch_tensor(&batch)?;
            let n = batch.len();
            let t = foreground_targets(&batch.images, n, s, cfg.normalize, 0.1, 0.9);
            let t = Tensor::from_slice(&ctx.gpu, &t, &[n, 1, s, s])?;
            let tape = Tape::new();
            let loss = ops::binary_cross_entropy_with_logits(&policy.forward(&x)?, &t)?;
            let grads = tape.backward(&loss)?;
            opt.step(&grads)?;
            done += 1;
            if done % 25 == 0 || done == cfg.warm_start_steps {
                last = loss.item()? as f64;
                check_finite("policy warm-start loss", last)?;
                bar.set_message(format!("loss {last:.4}"));
            }
            bar.inc(1);
        }
        epoch += 1;
    }
    bar.finish_and_clear();
    log.write(serde_json::json!({"phase": "policy_warm_start", "steps": done, "loss": last}))?;
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    state::save(&policy, &tmp, &dup)?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    ctx.say(format!(
        "policy warm start: {done} steps on the training images' Otsu foreground, loss {last:.4} (saved {})",
        path.display()
    ));
    Ok(policy)
}

/// Trains the baseline classifier to convergence (early stopping on validation accuracy), or
/// loads it from the cache.
pub(crate) fn pretrained_classifier(
    ctx: &Ctx,
    log: &mut Log,
    cache: &Path,
) -> Result<(DenseNet, Metrics)> {
    let cfg = &ctx.cfg;
    let clf = DenseNet::new(
        &ctx.gpu,
        classifier_config(&cfg.classifier_arch, ctx.ds.classes.len())?,
        cfg.seed,
    )?;
    let key = pretrain_key(cfg, ctx.data_key);
    let path = cache.join(format!("{key}.safetensors"));
    let tmp = cache.join(format!("{key}.partial.safetensors"));
    let _lock = lock_cache_entry(ctx, cache, &key, &tmp, "converged baseline")?;
    if path.is_file() {
        state::load(&clf, &path, &LoadOptions::default())?;
        let m = ctx.eval(&clf, None)?;
        ctx.say(format!(
            "converged baseline classifier loaded from {} (val accuracy {:.3})",
            path.display(),
            m.accuracy
        ));
        return Ok((clf, m));
    }
    if let Some(w) = &cfg.classifier_weights {
        let opts = LoadOptions {
            replace_head: cfg.replace_head.then(|| "classifier.".to_string()),
            ..Default::default()
        };
        let r = state::load(&clf, Path::new(w), &opts)?;
        ctx.say(format!(
            "initial classifier weights from {w} ({} tensors, head replaced: {})",
            r.loaded,
            !r.replaced.is_empty()
        ));
    }
    let mut opt = adam(&clf.parameters(), cfg.lr_classifier)?;
    let mut best: Option<(f64, usize)> = None;
    let mut since_best = 0;
    for epoch in 0..cfg.pretrain_epochs {
        let loader = ctx.loader(1_000_000 + epoch as u64);
        let bar = ctx.progress(loader.len(), format!("pretrain {}", epoch + 1));
        let mut sum = 0.0;
        let mut n = 0;
        for batch in loader {
            let batch = batch?;
            if batch.is_empty() {
                continue;
            }
            stop_if_interrupted("pretraining")?;
            let x = ctx.batch_tensor(&batch)?;
            let loss = step::classifier_step(&clf, &mut opt, &x, &batch.labels)?.item()? as f64;
            check_finite("pretraining loss", loss)?;
            sum += loss;
            n += 1;
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let m = ctx.eval(&clf, None)?;
        log.write(serde_json::json!({"phase": "pretrain", "epoch": epoch + 1, "train_loss": sum / n.max(1) as f64, "val": m}))?;
        ctx.say(format!(
            "pretrain epoch {:>3}: train loss {:.4}  val accuracy {:.3}",
            epoch + 1,
            sum / n.max(1) as f64,
            m.accuracy
        ));
        if best.is_none_or(|(a, _)| m.accuracy > a) {
            best = Some((m.accuracy, epoch));
            state::save(&clf, &tmp, &[])?;
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                ctx.say(format!(
                    "early stop: no improvement for {} epochs",
                    cfg.patience
                ));
                break;
            }
        }
    }
    let saved = if tmp.is_file() {
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        state::load(&clf, &path, &LoadOptions::default())?;
        format!("saved {}", path.display())
    } else {
        "--pretrain-epochs 0: the initial weights, not cached".to_string()
    };
    let m = ctx.eval(&clf, None)?;
    ctx.say(format!(
        "converged baseline classifier: val accuracy {:.3} ({saved})",
        m.accuracy,
    ));
    Ok((clf, m))
}
