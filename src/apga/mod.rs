//! Layer 7: APGA training (Algorithm 1 of Cheng et al. 2019), the paper's baselines, and
//! evaluation. `train` runs one method: it first obtains the classifier trained to convergence
//! on the original images (early stopping on validation accuracy; cached and reused by every
//! method of a comparison), then trains with the method, evaluating after every epoch.
//!
//! A run directory holds `config.toml`, `metrics.jsonl` (one line per step and per
//! evaluation), checkpoints (latest and best, safetensors, written atomically), `masks/`
//! (Figure-2 style overlays of fixed validation images at each evaluation), `plots/` (loss,
//! reward and accuracy curves), `train_state.*` (for `--resume`) and `summary.json`.

pub mod bench;
pub mod config;
pub mod eval;
pub mod plots;
pub mod step;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use crate::data::augment::{cutout, Cutout};
use crate::data::{DataOptions, Dataset, Loader, LoaderConfig, Preprocess};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::{unet, DenseNet, DenseNetConfig, UNet11};
use crate::nn::state::{self, LoadOptions};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::tensor::Tensor;
pub use config::{Method, PgVariant, Preset, TrainConfig};
pub use eval::{evaluate, Metrics};

/// The classifier a configuration names.
pub fn classifier_config(arch: &str, classes: usize) -> Result<DenseNetConfig> {
    Ok(match arch {
        "densenet121" => DenseNetConfig::densenet121(classes),
        "densenet161" => DenseNetConfig::densenet161(classes),
        "densenet169" => DenseNetConfig::densenet169(classes),
        "densenet201" => DenseNetConfig::densenet201(classes),
        "tiny" => DenseNetConfig::new(8, &[2, 2, 2], 16, classes),
        other => {
            return Err(Error::shape(
                "classifier",
                format!("unknown architecture {other:?}: densenet121, densenet161, densenet169, densenet201 or tiny"),
            ))
        }
    })
}

/// Set by Ctrl-C (see `install_interrupt_handler`): the run saves its checkpoints after the
/// current step and stops.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes Ctrl-C stop training cleanly (checkpoint saved) instead of killing the process.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A second Ctrl-C while saving: give up at once.
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: saving a checkpoint after the current step (Ctrl-C again to quit now)"
        );
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub method: String,
    pub run_dir: PathBuf,
    pub seed: u64,
    /// The converged baseline classifier every method starts from, on validation.
    pub pretrained: Metrics,
    /// The method's classifier at its best validation epoch.
    pub best: Metrics,
    pub best_epoch: usize,
    pub final_metrics: Metrics,
    pub steps: usize,
    pub seconds: f64,
}

/// JSON-lines log of a run.
struct Log {
    file: std::fs::File,
    path: PathBuf,
}

impl Log {
    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

/// Options outside the configuration: where and how verbosely.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: Option<PathBuf>,
    pub quiet: bool,
    pub device: Option<String>,
    /// Folder of cached converged baselines (default: `runs/pretrained`).
    pub pretrained_cache: Option<PathBuf>,
    /// Behave as if Ctrl-C came after this many method steps (tests of `resume`).
    pub stop_after_steps: Option<usize>,
}

/// Where a run stopped: everything `resume` needs besides the model checkpoints.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct TrainState {
    /// The epoch in progress (1-based) and the batches of it already done.
    epoch: usize,
    batches_done: usize,
    steps: usize,
    classifier_adam_steps: Vec<u64>,
    policy_adam_steps: Vec<u64>,
    baseline: Option<f32>,
    best_epoch: usize,
    best: serde_json::Value,
    last: serde_json::Value,
    pretrained: serde_json::Value,
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
fn save_train_state(
    run_dir: &Path,
    adam_c: &Adam,
    adam_p: Option<&Adam>,
    pg: &step::PolicyState,
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
        baseline: match &pg.baseline {
            Some(b) => Some(b.item()?),
            None => None,
        },
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

fn restore_adam(
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
    let cfg_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::Format {
        path: cfg_path.clone(),
        detail: e.to_string(),
    })?;
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
    train_inner(cfg, &opts, Some(st))
}

struct Ctx {
    gpu: Gpu,
    cfg: TrainConfig,
    ds: Dataset,
    pre: Preprocess,
    quiet: bool,
}

impl Ctx {
    fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", msg.as_ref());
        }
    }

    fn loader(&self, epoch: u64) -> Loader {
        Loader::new(
            Arc::new(self.ds.train.clone()),
            self.ds.synthetic,
            self.pre,
            LoaderConfig {
                batch_size: self.cfg.batch_size,
                workers: self.cfg.workers,
                seed: self.cfg.seed,
                epoch,
                drop_last: self.ds.train.len() >= 2 * self.cfg.batch_size,
                skip_bad_images: self.cfg.skip_bad_images,
                ..Default::default()
            },
        )
    }

    fn eval(&self, clf: &DenseNet, policy: Option<&UNet11>) -> Result<Metrics> {
        evaluate(
            clf,
            policy,
            &self.ds,
            &self.ds.val,
            self.pre,
            self.cfg.workers,
            self.cfg.batch_size,
        )
    }

    fn batch_tensor(&self, b: &crate::data::Batch) -> Result<Tensor> {
        let s = self.cfg.image_size;
        Tensor::from_slice(&self.gpu, &b.images, &[b.len(), 3, s, s])
    }

    fn progress(&self, len: usize, what: String) -> indicatif::ProgressBar {
        if self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(len as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>16} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(what);
        bar
    }
}

fn adam(params: &[Tensor], lr: f64) -> Result<Adam> {
    Adam::new(
        params,
        AdamConfig {
            lr,
            ..Default::default()
        },
    )
}

/// Reads the named GPU scalars of a step back in one transfer.
fn read_scalars(values: &[(&'static str, Tensor)]) -> Result<Vec<(&'static str, f64)>> {
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

/// A key identifying the converged baseline of a configuration (same data, classifier,
/// optimiser and seed give the same classifier).
fn pretrain_key(cfg: &TrainConfig) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let fields = format!(
        "{}|{}|{:?}|{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{}|{}|{:?}",
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
        cfg.classifier_arch,
        cfg.lr_classifier,
        cfg.pretrain_epochs,
        cfg.patience,
        cfg.classifier_weights,
    );
    fields.hash(&mut h);
    cfg.seed.hash(&mut h);
    format!(
        "{}-seed{}-{:016x}",
        cfg.classifier_arch,
        cfg.seed,
        h.finish()
    )
}

/// Trains the baseline classifier to convergence (early stopping on validation accuracy), or
/// loads it from the cache.
fn pretrained_classifier(ctx: &Ctx, log: &mut Log, cache: &Path) -> Result<(DenseNet, Metrics)> {
    let cfg = &ctx.cfg;
    let clf = DenseNet::new(
        &ctx.gpu,
        classifier_config(&cfg.classifier_arch, ctx.ds.classes.len())?,
        cfg.seed,
    )?;
    let path = cache.join(format!("{}.safetensors", pretrain_key(cfg)));
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
    let tmp = cache.join(format!("{}.partial.safetensors", pretrain_key(cfg)));
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
    if tmp.is_file() {
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        state::load(&clf, &path, &LoadOptions::default())?;
    }
    let m = ctx.eval(&clf, None)?;
    ctx.say(format!(
        "converged baseline classifier: val accuracy {:.3} (saved {})",
        m.accuracy,
        path.display()
    ));
    Ok((clf, m))
}

fn check_finite(what: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::Incomplete(format!(
            "{what} became {v}: training stopped; the last good checkpoint is intact (try a lower learning rate)"
        )))
    }
}

/// Writes Figure-2 style overlays (kept region tinted) of the first validation images.
fn save_masks(ctx: &Ctx, policy: &UNet11, dir: &Path, tag: &str) -> Result<()> {
    let n = ctx.cfg.mask_samples.min(ctx.ds.val.len());
    if n == 0 {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
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
    let p = crate::no_grad(|| step::policy_probs(policy, &x))?.to_vec()?;
    let plane = s * s;
    for j in 0..raw.len() {
        let img = &raw.images[j * 3 * plane..(j + 1) * 3 * plane];
        let overlay = image::RgbImage::from_fn(s as u32, s as u32, |x, y| {
            let i = y as usize * s + x as usize;
            let kept = p[j * plane + i] > 0.5;
            let c = |ch: usize, tint: f32| {
                let v = img[ch * plane + i];
                let v = if kept { 0.6 * v + 0.4 * tint } else { v };
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            };
            image::Rgb([c(0, 0.0), c(1, 1.0), c(2, 0.0)])
        });
        let path = dir.join(format!("{tag}_val{j}.png"));
        overlay.save(&path).map_err(|e| Error::Format {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Runs one training configuration to its end.
pub fn train(cfg: TrainConfig, opts: &RunOptions) -> Result<Summary> {
    train_inner(cfg, opts, None)
}

fn train_inner(
    cfg: TrainConfig,
    opts: &RunOptions,
    resumed: Option<TrainState>,
) -> Result<Summary> {
    let start = Instant::now();
    let gpu = Gpu::new(crate::gpu::GpuOptions {
        device: opts.device.clone(),
        ..Default::default()
    })?;
    let spec: crate::data::DataSpec = cfg
        .data
        .parse()
        .map_err(|e: String| Error::shape("--data", e))?;
    let data_opts = DataOptions {
        body_part: cfg.body_part.clone(),
        k_shot: cfg.k_shot,
        val_fraction: cfg.val_fraction,
        seed: cfg.seed,
        skip_bad_images: cfg.skip_bad_images,
        synthetic_size: cfg.image_size,
        synthetic_classes: cfg.classes,
        synthetic_train: cfg.train_size,
        synthetic_val: cfg.val_size,
    };
    if cfg.batch_size < 2 {
        return Err(Error::shape(
            "train",
            "--batch-size must be at least 2 (batch norm needs it)",
        ));
    }
    if cfg.method.has_policy() && !cfg.image_size.is_multiple_of(32) {
        return Err(Error::shape(
            "train",
            format!(
                "--image-size {} must be a multiple of 32 for UNet11",
                cfg.image_size
            ),
        ));
    }
    let ds = Dataset::open(&spec, &data_opts)?;
    let run_dir = match &opts.out {
        Some(d) => d.clone(),
        None => PathBuf::from("runs").join(format!(
            "{}-{}-seed{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S"),
            cfg.method.name(),
            cfg.seed
        )),
    };
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    let log_path = run_dir.join("metrics.jsonl");
    let file = if resumed.is_some() {
        std::fs::OpenOptions::new().append(true).open(&log_path)
    } else {
        let toml =
            toml::to_string_pretty(&cfg).map_err(|e| Error::Incomplete(format!("config: {e}")))?;
        crate::autotune::write_atomic(&run_dir.join("config.toml"), toml.as_bytes())?;
        std::fs::File::create(&log_path)
    };
    let mut log = Log {
        file: file.map_err(io(&log_path))?,
        path: log_path,
    };
    let ctx = Ctx {
        gpu: gpu.clone(),
        pre: Preprocess {
            size: cfg.image_size,
            normalize: cfg.normalize,
        },
        cfg: cfg.clone(),
        ds,
        quiet: opts.quiet,
    };
    ctx.say(ctx.ds.summary());
    ctx.say(format!(
        "run {} on {} ({:?})",
        run_dir.display(),
        gpu.info().name,
        gpu.info().backend
    ));
    let cache = opts
        .pretrained_cache
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join("pretrained"));
    std::fs::create_dir_all(&cache).map_err(io(&cache))?;
    let (clf, pretrained) = pretrained_classifier(&ctx, &mut log, &cache)?;
    // The method phase.
    let policy = if cfg.method.has_policy() {
        let p = UNet11::new(&gpu, cfg.policy_filters, cfg.seed.wrapping_add(1))?;
        if let Some(w) = &cfg.segmenter_weights {
            let o = LoadOptions {
                aliases: unet::encoder_aliases(),
                ..Default::default()
            };
            state::load(&p, Path::new(w), &o)?;
        }
        Some(p)
    } else {
        None
    };
    let frozen = if cfg.method == Method::Gradcam {
        let f = DenseNet::new(
            &gpu,
            classifier_config(&cfg.classifier_arch, ctx.ds.classes.len())?,
            0,
        )?;
        state::load(
            &f,
            &cache.join(format!("{}.safetensors", pretrain_key(&cfg))),
            &LoadOptions::default(),
        )?;
        Some(f)
    } else {
        None
    };
    let mut adam_c = adam(&clf.parameters(), cfg.lr_classifier)?;
    let mut adam_p = match &policy {
        Some(p) => Some(adam(&p.parameters(), cfg.lr_policy)?),
        None => None,
    };
    let mut pg = step::PolicyState::default();
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    let mut best: (Metrics, usize) = (pretrained.clone(), 0);
    let mut pretrained = pretrained;
    let mut last = pretrained.clone();
    let mut steps = 0;
    let (mut start_epoch, mut skip) = (1, 0);
    if let Some(st) = &resumed {
        // Continue exactly where the run stopped.
        state::load(
            &clf,
            &run_dir.join("classifier_latest.safetensors"),
            &LoadOptions::default(),
        )?;
        let file = state::read(&run_dir.join("train_state.safetensors"))?;
        restore_adam("classifier", &mut adam_c, &st.classifier_adam_steps, &file)?;
        if let (Some(p), Some(ap)) = (&policy, adam_p.as_mut()) {
            let o = LoadOptions {
                aliases: unet::encoder_aliases(),
                ..Default::default()
            };
            state::load(p, &run_dir.join("policy_latest.safetensors"), &o)?;
            restore_adam("policy", ap, &st.policy_adam_steps, &file)?;
        }
        pg.baseline = st.baseline.map(|b| Tensor::scalar(&gpu, b)).transpose()?;
        let metrics = |v: &serde_json::Value| -> Metrics {
            serde_json::from_value(v.clone()).unwrap_or_default()
        };
        pretrained = metrics(&st.pretrained);
        best = (metrics(&st.best), st.best_epoch);
        last = metrics(&st.last);
        steps = st.steps;
        start_epoch = st.epoch;
        skip = st.batches_done;
        ctx.say(format!(
            "resuming at epoch {start_epoch}, batch {skip} (step {steps})"
        ));
    } else if let Some(p) = &policy {
        save_masks(&ctx, p, &run_dir.join("masks"), "epoch0")?;
    }
    for epoch in start_epoch..=cfg.epochs {
        let loader = ctx.loader(epoch as u64);
        let bar = ctx.progress(loader.len(), format!("{} {epoch}", cfg.method.name()));
        let skip_now = if epoch == start_epoch { skip } else { 0 };
        bar.inc(skip_now as u64);
        let mut batches_done = skip_now;
        for batch in loader.skip(skip_now) {
            let batch = batch?;
            if batch.len() < 2 {
                continue;
            }
            let x = ctx.batch_tensor(&batch)?;
            let y = &batch.labels;
            let values = match (cfg.method, &policy, adam_p.as_mut()) {
                (Method::Apga, Some(p), Some(ap)) => {
                    step::apga_step(&clf, p, &mut adam_c, ap, &mut pg, &x, y, &cfg)?
                }
                (Method::EndToEnd, Some(p), Some(ap)) => {
                    step::end_to_end_step(&clf, p, &mut adam_c, ap, &x, y)?
                }
                (Method::Cutout, _, _) => {
                    let mut imgs = batch.images.clone();
                    // Seeded per step, so a resumed run draws the same rectangles.
                    let mut rng = rand::rngs::StdRng::seed_from_u64(
                        cfg.seed ^ 0xc0ffee ^ (steps as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    cutout(
                        &mut imgs,
                        batch.len(),
                        3,
                        cfg.image_size,
                        Cutout::RandomErasing,
                        &mut rng,
                    );
                    let xa = Tensor::from_slice(&gpu, &imgs, x.shape())?;
                    step::mixed_step(&clf, &mut adam_c, &x, &xa, y)?
                }
                (Method::Gradcam, _, _) => {
                    let f = frozen
                        .as_ref()
                        .ok_or_else(|| Error::Incomplete("GradCAM needs the baseline".into()))?;
                    let keep = step::gradcam_masks(f, &x)?;
                    let xa = step::apply_mask(&x, &keep)?;
                    step::mixed_step(&clf, &mut adam_c, &x, &xa, y)?
                }
                _ => vec![("l_orig", step::classifier_step(&clf, &mut adam_c, &x, y)?)],
            };
            let scalars = read_scalars(&values)?;
            for (name, v) in &scalars {
                check_finite(name, *v)?;
            }
            steps += 1;
            let mut line = serde_json::Map::new();
            line.insert("phase".into(), "train".into());
            line.insert("epoch".into(), epoch.into());
            line.insert("step".into(), steps.into());
            for (name, v) in &scalars {
                line.insert((*name).into(), serde_json::json!(v));
            }
            log.write(serde_json::Value::Object(line))?;
            bar.set_message(
                scalars
                    .iter()
                    .take(3)
                    .map(|(n, v)| format!("{n} {v:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            bar.inc(1);
            batches_done += 1;
            if interrupted() || opts.stop_after_steps == Some(steps) {
                bar.finish_and_clear();
                state::save(&clf, &run_dir.join("classifier_latest.safetensors"), &[])?;
                if let Some(p) = &policy {
                    state::save(p, &run_dir.join("policy_latest.safetensors"), &dup)?;
                }
                save_train_state(
                    &run_dir,
                    &adam_c,
                    adam_p.as_ref(),
                    &pg,
                    epoch,
                    batches_done,
                    steps,
                    &best,
                    &last,
                    &pretrained,
                )?;
                return Err(Error::Incomplete(format!(
                    "interrupted at epoch {epoch}, step {steps}: latest checkpoints saved in {}",
                    run_dir.display()
                )));
            }
        }
        bar.finish_and_clear();
        let m = ctx.eval(&clf, policy.as_ref())?;
        log.write(serde_json::json!({"phase": "eval", "epoch": epoch, "step": steps, "val": m}))?;
        let mut msg = format!(
            "{} epoch {epoch:>3}: val accuracy {:.3}",
            cfg.method.name(),
            m.accuracy
        );
        if let Some(t) = m.tta_accuracy {
            msg += &format!("  with TTA {t:.3}");
        }
        if let Some(iou) = m.mask_iou {
            msg += &format!("  mask IoU {iou:.3}");
        }
        if let Some(k) = m.mask_kept_fraction {
            msg += &format!("  kept {:.0}%", 100.0 * k);
        }
        ctx.say(msg);
        state::save(&clf, &run_dir.join("classifier_latest.safetensors"), &[])?;
        if let Some(p) = &policy {
            state::save(p, &run_dir.join("policy_latest.safetensors"), &dup)?;
            save_masks(&ctx, p, &run_dir.join("masks"), &format!("epoch{epoch}"))?;
        }
        if m.accuracy > best.0.accuracy || best.1 == 0 {
            best = (m.clone(), epoch);
            state::save(&clf, &run_dir.join("classifier_best.safetensors"), &[])?;
            if let Some(p) = &policy {
                state::save(p, &run_dir.join("policy_best.safetensors"), &dup)?;
            }
        }
        last = m;
        plots::write_plots(&run_dir)?;
        save_train_state(
            &run_dir,
            &adam_c,
            adam_p.as_ref(),
            &pg,
            epoch + 1,
            0,
            steps,
            &best,
            &last,
            &pretrained,
        )?;
    }
    let summary = Summary {
        method: cfg.method.name().into(),
        run_dir: run_dir.clone(),
        seed: cfg.seed,
        pretrained,
        best: best.0,
        best_epoch: best.1,
        final_metrics: last,
        steps,
        seconds: start.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Incomplete(e.to_string()))?;
    crate::autotune::write_atomic(&run_dir.join("summary.json"), &text)?;
    Ok(summary)
}

/// Evaluates a finished run's best (or latest) checkpoints on its validation split, or on
/// another dataset given as `data`.
pub fn evaluate_run(
    run_dir: &Path,
    data: Option<&str>,
    latest: bool,
    device: Option<&str>,
) -> Result<Metrics> {
    let cfg_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let mut cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::Format {
        path: cfg_path.clone(),
        detail: e.to_string(),
    })?;
    if let Some(d) = data {
        cfg.data = d.to_string();
    }
    let gpu = Gpu::new(crate::gpu::GpuOptions {
        device: device.map(str::to_string),
        ..Default::default()
    })?;
    let spec: crate::data::DataSpec = cfg
        .data
        .parse()
        .map_err(|e: String| Error::shape("--data", e))?;
    let ds = Dataset::open(
        &spec,
        &DataOptions {
            body_part: cfg.body_part.clone(),
            k_shot: cfg.k_shot,
            val_fraction: cfg.val_fraction,
            seed: cfg.seed,
            skip_bad_images: cfg.skip_bad_images,
            synthetic_size: cfg.image_size,
            synthetic_classes: cfg.classes,
            synthetic_train: cfg.train_size,
            synthetic_val: cfg.val_size,
        },
    )?;
    let which = if latest { "latest" } else { "best" };
    let clf = DenseNet::new(
        &gpu,
        classifier_config(&cfg.classifier_arch, ds.classes.len())?,
        0,
    )?;
    state::load(
        &clf,
        &run_dir.join(format!("classifier_{which}.safetensors")),
        &LoadOptions::default(),
    )?;
    let policy = if cfg.method.has_policy() {
        let p = UNet11::new(&gpu, cfg.policy_filters, 0)?;
        let o = LoadOptions {
            aliases: unet::encoder_aliases(),
            ..Default::default()
        };
        state::load(&p, &run_dir.join(format!("policy_{which}.safetensors")), &o)?;
        Some(p)
    } else {
        None
    };
    let pre = Preprocess {
        size: cfg.image_size,
        normalize: cfg.normalize,
    };
    evaluate(
        &clf,
        policy.as_ref(),
        &ds,
        &ds.val,
        pre,
        cfg.workers,
        cfg.batch_size,
    )
}
