//! One training step of each method, on GPU tensors. Losses, reward, baseline and advantage
//! stay on the GPU; the caller reads the returned scalars back once per step, for logging.

use crate::apga::config::{PgVariant, Reward, TrainConfig};
use crate::apga::policy::{
    advantages, guard_ok, guarded_subset, kept_per_image, policy_loss, take_action,
};
pub use crate::apga::policy::{aiding_mask, erase, policy_probs, PolicyState};
use crate::error::Result;
use crate::models::{DenseNet, UNet11};
use crate::optim::Adam;
use crate::tensor::Tensor;
use crate::{no_grad, ops, Tape};

/// Named GPU scalars of one step (read back together for the log).
pub type StepValues = Vec<(&'static str, Tensor)>;

/// `L_c`: mean softmax cross-entropy of the classifier on `x` (Eq. 1 of the paper).
fn classifier_loss(clf: &DenseNet, x: &Tensor, labels: &[usize], training: bool) -> Result<Tensor> {
    ops::cross_entropy(&clf.forward(x, training)?, labels)
}

/// One Adam step of the classifier on `x`; returns the loss before the step (detached).
pub fn classifier_step(
    clf: &DenseNet,
    adam: &mut Adam,
    x: &Tensor,
    labels: &[usize],
) -> Result<Tensor> {
    let tape = Tape::new();
    let loss = classifier_loss(clf, x, labels, true)?;
    let grads = tape.backward(&loss)?;
    adam.step(&grads)?;
    Ok(loss.detach())
}

/// How erased pixels and the guard are handled in a step (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Masking {
    /// What an erased pixel becomes, per channel, after normalisation.
    pub fill: [f32; 3],
    /// The guard's bound (see `policy::guard_ok`).
    pub guard: f64,
}

impl Masking {
    pub fn of(cfg: &TrainConfig) -> Masking {
        Masking {
            fill: cfg.erase_value.fill(cfg.normalize),
            guard: cfg.guard,
        }
    }
}

/// A classifier step on the aiding images `erase(x, keep)` the guard lets through; returns
/// (loss or None when fewer than two images passed, number of images guarded out).
pub fn aiding_step(
    clf: &DenseNet,
    adam: &mut Adam,
    x: &Tensor,
    keep: &Tensor,
    labels: &[usize],
    masking: Masking,
) -> Result<(Option<Tensor>, usize)> {
    let kept = kept_per_image(keep)?;
    let guarded = kept
        .iter()
        .filter(|&&k| !guard_ok(k, masking.guard))
        .count();
    let x_aid = no_grad(|| erase(x, keep, masking.fill))?;
    Ok(
        match guarded_subset(&x_aid, labels, &kept, masking.guard)? {
            Some((xa, ya)) => (Some(classifier_step(clf, adam, &xa, &ya)?), guarded),
            None => (None, guarded),
        },
    )
}

/// Per-image cross-entropy of the classifier in eval mode (the running statistics stay).
fn eval_losses(clf: &DenseNet, x: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let y = Tensor::from_slice(x.gpu(), &y, &[labels.len()])?;
    ops::cross_entropy_rows(&clf.forward(x, false)?, &y)
}

/// One APGA step (Algorithm 1): classifier step on x; the policy's action a erases pixels
/// (the threshold 1[P >= 0.5] or a sampled one); reward R = L_adv - L_orig with the classifier
/// in eval mode (its running statistics untouched); policy step on the policy loss; classifier
/// step on the aiding images 1[P' > 0.5] x of the updated policy, past the guard.
#[allow(clippy::too_many_arguments)]
pub fn apga_step(
    clf: &DenseNet,
    policy: &UNet11,
    adam_c: &mut Adam,
    adam_p: &mut Adam,
    state: &mut PolicyState,
    x: &Tensor,
    labels: &[usize],
    cfg: &TrainConfig,
) -> Result<StepValues> {
    let masking = Masking::of(cfg);
    let (action, _, reward_kind) = cfg.pg_choices();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    // 1. L_orig and a classifier step on the original images.
    let l_orig_step = classifier_step(clf, adam_c, x, labels)?;
    // 2-3. P and the action: the pixels the policy calls important are erased.
    let tape = Tape::new();
    let p = policy_probs(policy, x)?;
    let taken = take_action(&p, action, cfg.action_cell, cfg.seed, state.steps)?;
    state.steps += 1;
    let x_adv = no_grad(|| {
        erase(
            x,
            &ops::add_scalar(&ops::neg(&taken.erased)?, 1.0)?,
            masking.fill,
        )
    })?;
    // 4-5. Reward from the classifier in eval mode, no gradient into it. The paper and the
    // released script take L_orig from the step (train mode, before it); the stable variant
    // scores both images the same way, after the step. One read-back for both.
    let (l_adv, rewards) = no_grad(|| -> Result<(f32, Vec<f32>)> {
        let n = labels.len();
        let adv_rows = eval_losses(clf, &x_adv, labels)?;
        let from_step = cfg.pg_variant != PgVariant::Stable;
        let reference = if from_step {
            ops::reshape(&l_orig_step, &[1])?
        } else {
            eval_losses(clf, x, labels)?
        };
        let both = ops::concat(&[&adv_rows, &reference], 0)?.to_vec()?;
        let (adv_rows, orig) = both.split_at(n);
        let l_adv = mean(adv_rows);
        Ok(match reward_kind {
            Reward::Image if !from_step => (
                l_adv,
                adv_rows.iter().zip(orig).map(|(a, o)| a - o).collect(),
            ),
            _ => (l_adv, vec![l_adv - mean(orig)]),
        })
    })?;
    let baseline = state.baseline;
    let adv = advantages(&rewards, state, cfg);
    if state.coverage_target.is_none() {
        state.coverage_target = Some(no_grad(|| ops::mean_all(&p.detach()))?.item()?);
    }
    // 6. The policy loss; the advantage is a constant.
    let l_pg = policy_loss(
        &taken.probs,
        &taken.action,
        &p,
        &adv,
        state.coverage_target.unwrap_or(0.0),
        cfg,
    )?;
    let grads = tape.backward(&l_pg)?;
    adam_p.step(&grads)?;
    // 7. The aiding action of the updated policy, and a classifier step on it.
    let keep = aiding_mask(policy, x)?;
    let (l_aid, guarded) = aiding_step(clf, adam_c, x, &keep, labels, masking)?;
    let g = x.gpu();
    let mut out = vec![
        ("l_orig", l_orig_step),
        ("l_adv", Tensor::scalar(g, l_adv)?),
        ("reward", Tensor::scalar(g, mean(&rewards))?),
        (
            "baseline",
            Tensor::scalar(g, baseline.unwrap_or(mean(&rewards)))?,
        ),
        ("advantage", Tensor::scalar(g, mean(&adv))?),
        (
            "advantage_abs",
            Tensor::scalar(g, mean(&adv.iter().map(|a| a.abs()).collect::<Vec<_>>()))?,
        ),
        ("l_pg", l_pg.detach()),
        ("erased_fraction", ops::mean_all(&taken.erased)?),
        ("aid_kept_fraction", ops::mean_all(&keep)?),
        ("guarded", Tensor::scalar(g, guarded as f32)?),
    ];
    if let Some(l) = l_aid {
        out.push(("l_aid", l));
    }
    Ok(out)
}

/// The frozen-mask ablation: a classifier step on x, then one on the aiding images of the
/// (untrained) policy, past the guard.
#[allow(clippy::too_many_arguments)]
pub fn frozen_mask_step(
    clf: &DenseNet,
    policy: &UNet11,
    adam_c: &mut Adam,
    x: &Tensor,
    labels: &[usize],
    masking: Masking,
) -> Result<StepValues> {
    let l_orig = classifier_step(clf, adam_c, x, labels)?;
    let keep = aiding_mask(policy, x)?;
    let (l_aid, guarded) = aiding_step(clf, adam_c, x, &keep, labels, masking)?;
    let mut out = vec![
        ("l_orig", l_orig),
        ("aid_kept_fraction", ops::mean_all(&keep)?),
        ("guarded", Tensor::scalar(x.gpu(), guarded as f32)?),
    ];
    if let Some(l) = l_aid {
        out.push(("l_aid", l));
    }
    Ok(out)
}

/// End-to-end: x_soft = P * x, the classifier loss back-propagated into the segmenter, plus
/// 0.5 BCE(P, 0) + 0.6 BCE(P, 1); both networks step; then, as the released script does, a
/// classifier step on the thresholded mask's images (past the guard).
pub fn end_to_end_step(
    clf: &DenseNet,
    policy: &UNet11,
    adam_c: &mut Adam,
    adam_p: &mut Adam,
    x: &Tensor,
    labels: &[usize],
    masking: Masking,
) -> Result<StepValues> {
    let l_orig = classifier_step(clf, adam_c, x, labels)?;
    let tape = Tape::new();
    let p = policy_probs(policy, x)?;
    let x_soft = ops::mul(x, &p)?;
    let l_c = classifier_loss(clf, &x_soft, labels, true)?;
    let zeros = Tensor::zeros(x.gpu(), p.shape())?;
    let ones = Tensor::full(x.gpu(), p.shape(), 1.0)?;
    let reg = ops::add(
        &ops::mul_scalar(&ops::binary_cross_entropy(&p, &zeros)?, 0.5)?,
        &ops::mul_scalar(&ops::binary_cross_entropy(&p, &ones)?, 0.6)?,
    )?;
    let loss = ops::add(&l_c, &reg)?;
    let grads = tape.backward(&loss)?;
    adam_c.step(&grads)?;
    adam_p.step(&grads)?;
    let kept = no_grad(|| ops::mean_all(&ops::gt_scalar(&p, 0.5)?))?;
    let keep = aiding_mask(policy, x)?;
    let (l_aid, guarded) = aiding_step(clf, adam_c, x, &keep, labels, masking)?;
    let mut out = vec![
        ("l_orig", l_orig),
        ("l_soft", l_c.detach()),
        ("loss", loss.detach()),
        ("kept_fraction", kept),
        ("guarded", Tensor::scalar(x.gpu(), guarded as f32)?),
    ];
    if let Some(l) = l_aid {
        out.push(("l_aid", l));
    }
    Ok(out)
}

/// A classifier step on the original batch, then one on `augmented` (the 1:1 mix of the
/// cutout and GradCAM baselines).
pub fn mixed_step(
    clf: &DenseNet,
    adam: &mut Adam,
    x: &Tensor,
    augmented: &Tensor,
    labels: &[usize],
) -> Result<StepValues> {
    let l_orig = classifier_step(clf, adam, x, labels)?;
    let l_aug = classifier_step(clf, adam, augmented, labels)?;
    Ok(vec![("l_orig", l_orig), ("l_aug", l_aug)])
}

/// A classifier step on the original batch, then one on a mixed batch (mixup, cutmix) whose
/// image i carries label `labels[i]` with weight `lam` and `labels[perm[i]]` with `1 - lam`:
/// loss = `lam CE(z, y) + (1 - lam) CE(z, y[perm])` (the soft-target cross-entropy of the mixed
/// labels, as the reference implementations compute it).
pub fn mixed_label_step(
    clf: &DenseNet,
    adam: &mut Adam,
    x: &Tensor,
    mixed: &Tensor,
    labels: &[usize],
    perm: &[usize],
    lam: f32,
) -> Result<StepValues> {
    let l_orig = classifier_step(clf, adam, x, labels)?;
    let other: Vec<usize> = perm.iter().map(|&j| labels[j]).collect();
    let tape = Tape::new();
    let logits = clf.forward(mixed, true)?;
    let a = ops::mul_scalar(&ops::cross_entropy(&logits, labels)?, lam)?;
    let b = ops::mul_scalar(&ops::cross_entropy(&logits, &other)?, 1.0 - lam)?;
    let loss = ops::add(&a, &b)?;
    let grads = tape.backward(&loss)?;
    adam.step(&grads)?;
    Ok(vec![("l_orig", l_orig), ("l_aug", loss.detach())])
}

/// GradCAM keep-masks [n, 1, h, w] from a frozen classifier: target layer features.norm5
/// after ReLU; weights = spatial mean of d(top-1 score)/d(features); cam = ReLU(sum_c w_c
/// features_c), bilinearly upsampled to the input, min-max normalised per image; mask =
/// cam > 0.5.
pub fn gradcam_masks(frozen: &DenseNet, x: &Tensor) -> Result<Tensor> {
    let [n, _, h, w] = x.dims4("gradcam")?;
    let features = no_grad(|| frozen.features(x, false))?.with_grad();
    let tape = Tape::new();
    let logits = frozen.head(&features)?;
    let values = logits.to_vec()?;
    let k = logits.shape()[1];
    let onehot: Vec<f32> = (0..n)
        .flat_map(|i| {
            let row = &values[i * k..(i + 1) * k];
            let top = row
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
                .0;
            (0..k).map(move |j| if j == top { 1.0 } else { 0.0 })
        })
        .collect();
    let onehot = Tensor::from_slice(x.gpu(), &onehot, &[n, k])?;
    let score = ops::sum_all(&ops::mul(&logits, &onehot)?)?;
    let grads = tape.backward(&score)?;
    let g = grads.get(&features).ok_or_else(|| {
        crate::Error::Autodiff("GradCAM: no gradient reached the features".into())
    })?;
    no_grad(|| -> Result<Tensor> {
        let weights = ops::mean(g, &[2, 3], true)?;
        let cam = ops::relu(&ops::sum(
            &ops::mul(&features.detach(), &weights)?,
            &[1],
            true,
        )?)?;
        let cam = ops::upsample_bilinear2d(&cam, [h, w])?;
        // Min-max per image on the host (n * h * w values), then the threshold.
        let mut v = cam.to_vec()?;
        for img in v.chunks_mut(h * w) {
            let (lo, hi) = img
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let span = (hi - lo).max(1e-12);
            for p in img.iter_mut() {
                *p = if (*p - lo) / span > 0.5 { 1.0 } else { 0.0 };
            }
        }
        Tensor::from_slice(x.gpu(), &v, &[n, 1, h, w])
    })
}
