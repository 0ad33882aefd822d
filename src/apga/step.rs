//! One training step of each method, on GPU tensors. Losses, reward, baseline and advantage
//! stay on the GPU; the caller reads the returned scalars back once per step, for logging.

use crate::apga::config::{PgVariant, TrainConfig};
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

/// `x * mask` with a one-channel mask [n, 1, h, w] applied to every channel.
pub fn apply_mask(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    ops::mul(x, mask)
}

/// The policy's probabilities P = sigmoid(M_p(x)) (recorded if a tape is open).
pub fn policy_probs(policy: &UNet11, x: &Tensor) -> Result<Tensor> {
    ops::sigmoid(&policy.forward(x)?)
}

/// Keep-mask of the aiding action: 1[P > 0.5], from the current policy, no gradient.
pub fn aiding_mask(policy: &UNet11, x: &Tensor) -> Result<Tensor> {
    no_grad(|| ops::gt_scalar(&policy_probs(policy, x)?, 0.5))
}

/// State the policy gradient carries across steps: the reward baseline b_t (a GPU scalar).
#[derive(Default)]
pub struct PolicyState {
    pub baseline: Option<Tensor>,
}

fn abs(x: &Tensor) -> Result<Tensor> {
    ops::add(&ops::relu(x)?, &ops::relu(&ops::neg(x)?)?)
}

/// The policy loss for probabilities `p`, action `a` (1 = erased) and a constant `advantage`:
/// Eq. 7, `BCE(P, a) * adv + lambda_zeros * BCE(P, 0)`, or the released script's
/// `100 adv BCE(P, a) + 0.1 |adv| BCE(P, 0) + 0.01 |adv| BCE(P, 1)`. BCE(P, a) is
/// -log pi(a) of the Bernoulli policy, so a positive advantage reinforces the action taken.
pub fn policy_loss(
    p: &Tensor,
    a: &Tensor,
    advantage: &Tensor,
    cfg: &TrainConfig,
) -> Result<Tensor> {
    let zeros = Tensor::zeros(p.gpu(), p.shape())?;
    let bce_a = ops::binary_cross_entropy(p, a)?;
    let bce_0 = ops::binary_cross_entropy(p, &zeros)?;
    let adv = advantage.detach();
    if cfg.pg_variant == PgVariant::ReleasedCode {
        let ones = Tensor::full(p.gpu(), p.shape(), 1.0)?;
        let bce_1 = ops::binary_cross_entropy(p, &ones)?;
        let abs_adv = abs(&adv)?;
        ops::add(
            &ops::add(
                &ops::mul_scalar(&ops::mul(&bce_a, &adv)?, 100.0)?,
                &ops::mul_scalar(&ops::mul(&bce_0, &abs_adv)?, 0.1)?,
            )?,
            &ops::mul_scalar(&ops::mul(&bce_1, &abs_adv)?, 0.01)?,
        )
    } else {
        ops::add(
            &ops::mul(&bce_a, &adv)?,
            &ops::mul_scalar(&bce_0, cfg.lambda_zeros as f32)?,
        )
    }
}

/// One APGA step (Algorithm 1): classifier step on x; policy action a = 1[P >= 0.5] erases
/// pixels; reward R = L_adv - L_orig; policy step on Eq. 7; classifier step on the aiding
/// image 1[P' > 0.5] * x of the updated policy.
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
    // 1. L_orig and a classifier step on the original images.
    let l_orig_step = classifier_step(clf, adam_c, x, labels)?;
    // 2-3. P and the action: the pixels the policy calls important are erased.
    let tape = Tape::new();
    let p = policy_probs(policy, x)?;
    let (a, x_adv) = no_grad(|| -> Result<(Tensor, Tensor)> {
        let a = ops::ge_scalar(&p, 0.5)?;
        let keep = ops::add_scalar(&ops::neg(&a)?, 1.0)?;
        Ok((a.clone(), apply_mask(x, &keep)?))
    })?;
    // 4-5. Reward from the classifier, no gradient into it.
    let released = cfg.pg_variant == PgVariant::ReleasedCode;
    let (l_orig, l_adv) = no_grad(|| -> Result<(Tensor, Tensor)> {
        if released {
            // The released script scores both images in eval mode, after the step.
            Ok((
                classifier_loss(clf, x, labels, false)?,
                classifier_loss(clf, &x_adv, labels, false)?,
            ))
        } else {
            Ok((
                l_orig_step.clone(),
                classifier_loss(clf, &x_adv, labels, true)?,
            ))
        }
    })?;
    let reward = ops::sub(&l_adv, &l_orig)?;
    let decay = cfg.baseline_decay as f32;
    let ema = |b: &Tensor| -> Result<Tensor> {
        ops::add(
            &ops::mul_scalar(b, decay)?,
            &ops::mul_scalar(&reward, 1.0 - decay)?,
        )
    };
    let (advantage, baseline) = if released {
        // Baseline updated before the advantage (starting from 0).
        let b = match &state.baseline {
            Some(b) => ema(b)?,
            None => ops::mul_scalar(&reward, 1.0 - decay)?,
        };
        (ops::sub(&reward, &b)?, b)
    } else {
        // b_1 = R_1 (first advantage 0); b updated after use.
        let b = state.baseline.clone().unwrap_or_else(|| reward.clone());
        (ops::sub(&reward, &b)?, b)
    };
    let next_baseline = if released {
        baseline.clone()
    } else {
        ema(&baseline)?
    };
    // 6. Policy loss (Eq. 7); the advantage is a constant.
    let l_pg = policy_loss(&p, &a, &advantage.detach(), cfg)?;
    let grads = tape.backward(&l_pg)?;
    adam_p.step(&grads)?;
    state.baseline = Some(next_baseline.detach());
    // 7. The aiding action of the updated policy, and a classifier step on it.
    let keep = aiding_mask(policy, x)?;
    let l_aid = classifier_step(clf, adam_c, &apply_mask(x, &keep)?, labels)?;
    let coverage = ops::mean_all(&a)?;
    Ok(vec![
        ("l_orig", l_orig_step),
        ("l_adv", l_adv),
        ("reward", reward),
        ("baseline", baseline),
        ("advantage", advantage),
        ("l_pg", l_pg.detach()),
        ("erased_fraction", coverage),
        ("l_aid", l_aid),
    ])
}

/// End-to-end: x_soft = P * x, the classifier loss back-propagated into the segmenter, plus
/// 0.5 BCE(P, 0) + 0.6 BCE(P, 1); both networks step.
pub fn end_to_end_step(
    clf: &DenseNet,
    policy: &UNet11,
    adam_c: &mut Adam,
    adam_p: &mut Adam,
    x: &Tensor,
    labels: &[usize],
) -> Result<StepValues> {
    let l_orig = classifier_step(clf, adam_c, x, labels)?;
    let tape = Tape::new();
    let p = policy_probs(policy, x)?;
    let x_soft = apply_mask(x, &p)?;
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
    Ok(vec![
        ("l_orig", l_orig),
        ("l_soft", l_c.detach()),
        ("loss", loss.detach()),
        ("kept_fraction", kept),
    ])
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
