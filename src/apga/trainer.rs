//! The training loop of one run: GPU and data setup, the run directory, the starting
//! networks (converged classifier, warm-started policy), resume, the per-method step,
//! evaluation on a schedule shared by every method (every `eval_every` steps and at each
//! epoch end; the best checkpoint is chosen by plain accuracy for every method), checkpoints
//! and plots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;

use crate::apga::eval::{evaluate, EvalOptions, Metrics};
use crate::apga::pretrain::{pretrained_classifier, starting_policy};
use crate::apga::resume::{
    commit, latest_files, remove_uncommitted, restore_adam, Snapshot, TrainState,
};
use crate::apga::run_dir::{
    check_finite, lock_run_dir, prepare_new_run_dir, read_scalars, reopen_log, save_masks, Log,
};
use crate::apga::step::{self, Masking, PolicyState, StepValues};
use crate::apga::{classifier_config, data_options, interrupted, plots, pretrain};
use crate::apga::{Method, RunOptions, Summary, TrainConfig};
use crate::data::augment::{cutout, Cutout};
use crate::data::{Dataset, Loader, LoaderConfig, Preprocess};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::{unet, DenseNet, UNet11};
use crate::nn::state::{self, LoadOptions};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::tensor::Tensor;

/// What every phase of a run shares: the GPU, the configuration, the data.
pub(crate) struct Ctx {
    pub(crate) gpu: Gpu,
    pub(crate) cfg: TrainConfig,
    pub(crate) ds: Dataset,
    pub(crate) pre: Preprocess,
    pub(crate) quiet: bool,
    /// The data's fingerprint for data read from files (None: synthetic), in cache keys.
    pub(crate) data_key: Option<u64>,
}

impl Ctx {
    pub(crate) fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", msg.as_ref());
        }
    }

    pub(crate) fn loader(&self, epoch: u64) -> Loader {
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

    pub(crate) fn eval(&self, clf: &DenseNet, policy: Option<&UNet11>) -> Result<Metrics> {
        evaluate(
            clf,
            policy,
            &self.ds,
            &self.ds.val,
            EvalOptions {
                pre: self.pre,
                workers: self.cfg.workers,
                batch_size: self.cfg.batch_size,
                masking: Masking::of(&self.cfg),
                skip_bad_images: self.cfg.skip_bad_images,
            },
        )
    }

    pub(crate) fn batch_tensor(&self, b: &crate::data::Batch) -> Result<Tensor> {
        let s = self.cfg.image_size;
        Tensor::from_slice(&self.gpu, &b.images, &[b.len(), 3, s, s])
    }

    pub(crate) fn progress(&self, len: usize, what: String) -> indicatif::ProgressBar {
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

pub(crate) fn adam(params: &[Tensor], lr: f64) -> Result<Adam> {
    Adam::new(
        params,
        AdamConfig {
            lr,
            ..Default::default()
        },
    )
}

/// The networks and optimisers of the method phase.
struct Nets {
    clf: DenseNet,
    policy: Option<UNet11>,
    frozen: Option<DenseNet>,
    adam_c: Adam,
    adam_p: Option<Adam>,
}

/// One step of the configured method on a batch.
fn method_step(
    ctx: &Ctx,
    nets: &mut Nets,
    pg: &mut PolicyState,
    batch: &crate::data::Batch,
    x: &Tensor,
    steps: usize,
) -> Result<StepValues> {
    let cfg = &ctx.cfg;
    let y = &batch.labels;
    let masking = Masking::of(cfg);
    let Nets {
        clf,
        policy,
        frozen,
        adam_c,
        adam_p,
    } = nets;
    Ok(match (cfg.method, policy.as_ref(), adam_p.as_mut()) {
        (Method::Apga, Some(p), Some(ap)) => step::apga_step(clf, p, adam_c, ap, pg, x, y, cfg)?,
        (Method::EndToEnd, Some(p), Some(ap)) => {
            step::end_to_end_step(clf, p, adam_c, ap, x, y, masking)?
        }
        (Method::FrozenMask, Some(p), _) => step::frozen_mask_step(clf, p, adam_c, x, y, masking)?,
        (Method::Cutout | Method::RandomErasing, _, _) => {
            let mode = if cfg.method == Method::Cutout {
                Cutout::RandomErasing
            } else {
                Cutout::Torchvision
            };
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
                mode,
                masking.fill,
                &mut rng,
            );
            let xa = Tensor::from_slice(&ctx.gpu, &imgs, x.shape())?;
            step::mixed_step(clf, adam_c, x, &xa, y)?
        }
        (Method::Mixup | Method::Cutmix, _, _) => {
            use rand::seq::SliceRandom;
            // Seeded per step, so a resumed run draws the same mix.
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                cfg.seed ^ 0x313c ^ (steps as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let n = batch.len();
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut rng);
            // Beta(1, 1) is uniform.
            let lam: f32 = rand::Rng::random_range(&mut rng, 0.0..1.0);
            let mut imgs = batch.images.clone();
            let lam = if cfg.method == Method::Mixup {
                crate::data::augment::mixup(&mut imgs, n, 3, cfg.image_size, &perm, lam);
                lam
            } else {
                crate::data::augment::cutmix(&mut imgs, n, 3, cfg.image_size, &perm, lam, &mut rng)
                    .0
            };
            let xm = Tensor::from_slice(&ctx.gpu, &imgs, x.shape())?;
            step::mixed_label_step(clf, adam_c, x, &xm, y, &perm, lam)?
        }
        (Method::TrivialAugment | Method::RandAugment, _, _) => {
            use crate::data::auto_augment::{augment_batch, AutoAugment};
            let policy = if cfg.method == Method::TrivialAugment {
                AutoAugment::TrivialWide
            } else {
                AutoAugment::Rand {
                    ops: 2,
                    magnitude: 9,
                }
            };
            // Seeded per step, so a resumed run draws the same operations.
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                cfg.seed ^ 0x7a17 ^ (steps as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let mut imgs = batch.images.clone();
            augment_batch(
                &mut imgs,
                batch.len(),
                cfg.image_size,
                cfg.normalize,
                policy,
                &mut rng,
            );
            let xa = Tensor::from_slice(&ctx.gpu, &imgs, x.shape())?;
            vec![("l_aug", step::classifier_step(clf, adam_c, &xa, y)?)]
        }
        (Method::Gradcam, _, _) => {
            let f = frozen
                .as_ref()
                .ok_or_else(|| Error::Incomplete("GradCAM needs the baseline".into()))?;
            let keep = step::gradcam_masks(f, x)?;
            let xa = step::erase(x, &keep, masking.fill)?;
            step::mixed_step(clf, adam_c, x, &xa, y)?
        }
        _ => vec![("l_orig", step::classifier_step(clf, adam_c, x, y)?)],
    })
}

/// One evaluation line of the log and the console.
fn describe(cfg: &TrainConfig, tag: &str, m: &Metrics, erased_in_training: Option<f64>) -> String {
    let mut msg = format!(
        "{} {tag}: val accuracy {:.3}",
        cfg.method.name(),
        m.accuracy
    );
    if let Some(t) = m.tta_accuracy {
        msg += &format!("  TTA {t:.3}");
    }
    if let Some(e) = erased_in_training {
        msg += &format!("  action erases {:.0}%", 100.0 * e);
    }
    // What the aiding mask 1[P > 0.5] keeps: its share of all pixels, then (synthetic data)
    // of the class evidence and of the shortcut marker, and its IoU with the true ROI.
    if let Some(k) = m.mask_kept_fraction {
        msg += &format!("  mask keeps {:.0}% of pixels", 100.0 * k);
        if let Some(e) = m.evidence_kept {
            msg += &format!(", {:.0}% of evidence", 100.0 * e);
        }
        if let Some(e) = m.shortcut_kept {
            msg += &format!(", {:.0}% of marker", 100.0 * e);
        }
    }
    if let Some(iou) = m.mask_iou {
        msg += &format!("  IoU {iou:.3}");
    }
    if m.tta_accuracy.is_some() && m.guarded > 0 {
        msg += &format!("  guarded {}", m.guarded);
    }
    msg
}

/// The weight files a configuration names exist and are complete safetensors files (read
/// before pretraining, which can take hours, rather than after it).
fn check_input_files(cfg: &TrainConfig) -> Result<()> {
    let policy_file = cfg
        .segmenter_weights
        .clone()
        .or_else(|| {
            (!matches!(cfg.policy_init.as_str(), "random" | "foreground"))
                .then(|| cfg.policy_init.clone())
        })
        .filter(|_| cfg.method.has_policy());
    for f in cfg.classifier_weights.iter().chain(policy_file.iter()) {
        state::read(std::path::Path::new(f))?;
    }
    Ok(())
}

/// Where converged baselines and warm starts are cached unless `--pretrained-cache` says
/// otherwise: `pretrained/` in the user's cache folder (`$APGA_CACHE_DIR`, default
/// `~/.cache/apga-gpu`, beside the autotune cache), so that a run started from any directory
/// finds them; `runs/pretrained` where the machine has no cache folder.
pub fn default_pretrained_cache() -> PathBuf {
    crate::gpu::autotune::cache_dir()
        .map(|d| d.join("pretrained"))
        .unwrap_or_else(|| PathBuf::from("runs").join("pretrained"))
}

pub(crate) fn train_inner(
    cfg: TrainConfig,
    opts: &RunOptions,
    resumed: Option<(TrainState, crate::fsio::Lock)>,
) -> Result<Summary> {
    let (resumed, held) = match resumed {
        Some((st, lock)) => (Some(st), Some(lock)),
        None => (None, None),
    };
    let start = Instant::now();
    // Everything a user supplied is checked before anything is allocated or trained.
    cfg.validate()?;
    let spec: crate::data::DataSpec = cfg
        .data
        .parse()
        .map_err(|e: String| Error::usage("--data", e))?;
    check_input_files(&cfg)?;
    let gpu = Gpu::new(opts.gpu.clone())?;
    crate::limits::check_batch_fits(
        cfg.batch_size,
        cfg.image_size,
        cfg.method.has_policy(),
        gpu.limits().max_buffer_size,
    )
    .map_err(|e| Error::usage("train", e))?;
    let ds = Dataset::open(&spec, &data_options(&cfg))?;
    let run_dir = match &opts.out {
        Some(d) => d.clone(),
        None => PathBuf::from("runs").join(format!(
            "{}-{}-seed{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S"),
            cfg.method.name(),
            cfg.seed
        )),
    };
    let log_path = run_dir.join("metrics.jsonl");
    let (_lock, mut log) = match &resumed {
        Some(st) => {
            // The lock `resume` took before it read the manifest (no other process can have
            // committed since).
            let lock = match held {
                Some(l) => l,
                None => lock_run_dir(&run_dir)?,
            };
            remove_uncommitted(&run_dir, st)?;
            (lock, reopen_log(&log_path, st.log_bytes)?)
        }
        None => {
            let lock = prepare_new_run_dir(&run_dir, opts.overwrite)?;
            let toml = toml::to_string_pretty(&cfg)
                .map_err(|e| Error::Incomplete(format!("config: {e}")))?;
            crate::fsio::write_atomic(&run_dir.join("config.toml"), toml.as_bytes())?;
            let file = std::fs::File::create(&log_path).map_err(Error::io(&log_path))?;
            (
                lock,
                Log {
                    file,
                    path: log_path,
                },
            )
        }
    };
    let ctx = Ctx {
        gpu: gpu.clone(),
        pre: Preprocess {
            size: cfg.image_size,
            normalize: cfg.normalize,
        },
        cfg: cfg.clone(),
        data_key: ds.synthetic.is_none().then(|| ds.fingerprint()),
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
        .unwrap_or_else(default_pretrained_cache);
    std::fs::create_dir_all(&cache).map_err(Error::io(&cache))?;
    let (clf, pretrained) = pretrained_classifier(&ctx, &mut log, &cache)?;
    if resumed.is_none() {
        // The reference every method is measured against (plots draw it as a line).
        log.write(serde_json::json!({"phase": "baseline", "val": pretrained}))?;
    }
    // The method phase.
    let policy = if cfg.method.has_policy() {
        Some(starting_policy(&ctx, &mut log, &cache)?)
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
            &cache.join(format!(
                "{}.safetensors",
                pretrain::pretrain_key(&cfg, ctx.data_key)
            )),
            &LoadOptions::default(),
        )?;
        Some(f)
    } else {
        None
    };
    let trains_policy = matches!(cfg.method, Method::Apga | Method::EndToEnd);
    let adam_c = adam(&clf.parameters(), cfg.lr_classifier)?;
    let adam_p = match (&policy, trains_policy) {
        (Some(p), true) => Some(adam(&p.parameters(), cfg.lr_policy)?),
        _ => None,
    };
    let mut nets = Nets {
        clf,
        policy,
        frozen,
        adam_c,
        adam_p,
    };
    let mut pg = PolicyState::default();
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
        let [clf_file, policy_file, optimizer_file] = latest_files(&run_dir, st);
        state::load(&nets.clf, &clf_file, &LoadOptions::default())?;
        let file = state::read(&optimizer_file)?;
        restore_adam(
            "classifier",
            &mut nets.adam_c,
            &st.classifier_adam_steps,
            &file,
        )?;
        if let Some(p) = &nets.policy {
            let o = LoadOptions {
                aliases: unet::encoder_aliases(),
                ..Default::default()
            };
            state::load(p, &policy_file, &o)?;
        }
        if let Some(ap) = nets.adam_p.as_mut() {
            restore_adam("policy", ap, &st.policy_adam_steps, &file)?;
        }
        pg = st.policy_state.clone();
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
    } else if let Some(p) = &nets.policy {
        save_masks(&ctx, p, &run_dir.join("masks"), "epoch0")?;
        // The starting policy's mask, before any method step.
        let m = ctx.eval(&nets.clf, Some(p))?;
        log.write(serde_json::json!({"phase": "eval", "epoch": 0, "step": 0, "val": m}))?;
        ctx.say(describe(&cfg, "start   ", &m, None));
    }
    // The best evaluation so far (plain accuracy, the same rule for every method).
    let keep_best =
        |nets: &Nets, m: &Metrics, epoch: usize, best: &mut (Metrics, usize)| -> Result<()> {
            if m.accuracy > best.0.accuracy || best.1 == 0 {
                *best = (m.clone(), epoch);
                state::save(&nets.clf, &run_dir.join("classifier_best.safetensors"), &[])?;
                if let Some(p) = &nets.policy {
                    state::save(p, &run_dir.join("policy_best.safetensors"), &dup)?;
                }
            }
            Ok(())
        };
    // Commits the run's state (see `resume::commit`): the epoch to continue and the
    // batches of it done.
    let commit_state = |nets: &Nets,
                        pg: &PolicyState,
                        epoch: usize,
                        batches_done: usize,
                        steps: usize,
                        best: &(Metrics, usize),
                        last: &Metrics,
                        pretrained: &Metrics,
                        log: &Log|
     -> Result<()> {
        let snapshot = Snapshot {
            clf: &nets.clf,
            policy: nets.policy.as_ref(),
            adam_c: &nets.adam_c,
            adam_p: nets.adam_p.as_ref(),
            pg,
            epoch,
            batches_done,
            steps,
            best,
            last,
            pretrained,
            log_bytes: log.len()?,
            pretrained_cache: &cache,
        };
        commit(&run_dir, &snapshot, &dup)
    };
    for epoch in start_epoch..=cfg.epochs {
        let loader = ctx.loader(epoch as u64);
        let n_batches = loader.len();
        let bar = ctx.progress(n_batches, format!("{} {epoch}", cfg.method.name()));
        let skip_now = if epoch == start_epoch { skip } else { 0 };
        bar.inc(skip_now as u64);
        let mut batches_done = skip_now;
        let (mut erased_sum, mut erased_n) = (0.0, 0usize);
        for batch in loader.skip(skip_now) {
            let batch = batch?;
            if batch.len() < 2 {
                continue;
            }
            let x = ctx.batch_tensor(&batch)?;
            let values = method_step(&ctx, &mut nets, &mut pg, &batch, &x, steps)?;
            let scalars = read_scalars(&values)?;
            for (name, v) in &scalars {
                check_finite(name, *v)?;
                if *name == "erased_fraction" {
                    erased_sum += v;
                    erased_n += 1;
                }
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
            // Mid-epoch evaluations (the released script's every-100-iterations schedule),
            // before a stop is honoured, so that the commit below includes them.
            if cfg.eval_every > 0 && steps % cfg.eval_every == 0 && batches_done < n_batches {
                let m = ctx.eval(&nets.clf, nets.policy.as_ref())?;
                log.write(
                    serde_json::json!({"phase": "eval", "epoch": epoch, "step": steps, "val": m}),
                )?;
                keep_best(&nets, &m, epoch, &mut best)?;
            }
            if interrupted() || opts.stop_after_steps == Some(steps) {
                bar.finish_and_clear();
                commit_state(
                    &nets,
                    &pg,
                    epoch,
                    batches_done,
                    steps,
                    &best,
                    &last,
                    &pretrained,
                    &log,
                )?;
                return Err(Error::Incomplete(format!(
                    "interrupted at epoch {epoch}, step {steps}: latest checkpoints saved in {}",
                    run_dir.display()
                )));
            }
        }
        bar.finish_and_clear();
        let m = ctx.eval(&nets.clf, nets.policy.as_ref())?;
        log.write(serde_json::json!({"phase": "eval", "epoch": epoch, "step": steps, "val": m}))?;
        let erased = (erased_n > 0).then(|| erased_sum / erased_n as f64);
        ctx.say(describe(&cfg, &format!("epoch {epoch:>3}"), &m, erased));
        if let Some(p) = &nets.policy {
            save_masks(&ctx, p, &run_dir.join("masks"), &format!("epoch{epoch}"))?;
        }
        keep_best(&nets, &m, epoch, &mut best)?;
        last = m;
        plots::write_plots(&run_dir)?;
        commit_state(
            &nets,
            &pg,
            epoch + 1,
            0,
            steps,
            &best,
            &last,
            &pretrained,
            &log,
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
        adapter: Some(format!(
            "{} ({:?})",
            ctx.gpu.info().name,
            ctx.gpu.info().backend
        )),
    };
    let text = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Incomplete(e.to_string()))?;
    crate::fsio::write_atomic(&run_dir.join("summary.json"), &text)?;
    Ok(summary)
}
