//! The policy-gradient pieces of Algorithm 1: the adversarial action taken from P, the reward
//! baseline and advantage, the policy loss (Eq. 7 and its variants), erasing and the guard.
//! `step.rs` strings them into one training step.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::apga::config::{Action, PgVariant, Regularizer, TrainConfig};
use crate::error::Result;
use crate::models::UNet11;
use crate::tensor::Tensor;
use crate::{no_grad, ops};

/// State the policy gradient carries across steps (saved in `train_state.json` for resume).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PolicyState {
    /// The reward baseline b_t (moving average of past rewards, decay `baseline_decay`).
    pub baseline: Option<f32>,
    /// Moving average of the squared advantage (stable variant: the advantage's scale).
    #[serde(default)]
    pub advantage_var: Option<f32>,
    /// Coverage regulariser: the mean P the policy keeps to (the warm start's first batch).
    #[serde(default)]
    pub coverage_target: Option<f32>,
    /// Policy steps taken (seeds the sampled actions, so a resumed run draws the same).
    #[serde(default)]
    pub steps: u64,
}

/// The policy's probabilities P = sigmoid(M_p(x)) (recorded if a tape is open).
pub fn policy_probs(policy: &UNet11, x: &Tensor) -> Result<Tensor> {
    ops::sigmoid(&policy.forward(x)?)
}

/// `x` where `keep` [n, 1, h, w] is 1, the per-channel `fill` elsewhere: x keep + f (1 - keep)
/// (kept pixels exact). `fill` is what an erased pixel becomes after normalisation
/// (`EraseValue::fill`).
pub fn erase(x: &Tensor, keep: &Tensor, fill: [f32; 3]) -> Result<Tensor> {
    if fill == [0.0; 3] {
        return ops::mul(x, keep);
    }
    let f = Tensor::from_slice(x.gpu(), &fill, &[1, 3, 1, 1])?;
    let erased = ops::add_scalar(&ops::neg(keep)?, 1.0)?;
    ops::add(&ops::mul(x, keep)?, &ops::mul(&f, &erased)?)
}

/// Keep-mask of the aiding action: 1[P > 0.5] from the current policy, no gradient.
pub fn aiding_mask(policy: &UNet11, x: &Tensor) -> Result<Tensor> {
    no_grad(|| ops::gt_scalar(&policy_probs(policy, x)?, 0.5))
}

/// Share of pixels each image of a [n, 1, h, w] mask keeps (read back to the host).
pub fn kept_per_image(keep: &Tensor) -> Result<Vec<f32>> {
    no_grad(|| ops::mean(keep, &[1, 2, 3], false))?.to_vec()
}

/// The guard: whether an aiding image keeping `kept` of its pixels is usable (neither almost
/// blank nor almost untouched; `guard` = 0.01 refuses < 1 % and > 99 %).
pub fn guard_ok(kept: f32, guard: f64) -> bool {
    let g = guard as f32;
    kept >= g && kept <= 1.0 - g
}

/// The images of a batch the guard lets through, as (images [m, ...], labels); `None` when
/// fewer than two remain (batch norm needs two).
pub fn guarded_subset(
    x: &Tensor,
    labels: &[usize],
    kept: &[f32],
    guard: f64,
) -> Result<Option<(Tensor, Vec<usize>)>> {
    let ok: Vec<usize> = (0..labels.len())
        .filter(|&i| guard_ok(kept[i], guard))
        .collect();
    if ok.len() < 2 {
        return Ok(None);
    }
    if ok.len() == labels.len() {
        return Ok(Some((x.clone(), labels.to_vec())));
    }
    let parts: Vec<Tensor> = ok
        .iter()
        .map(|&i| ops::narrow(x, 0, i, 1))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = parts.iter().collect();
    Ok(Some((
        ops::concat(&refs, 0)?,
        ok.iter().map(|&i| labels[i]).collect(),
    )))
}

/// The adversarial action of one step.
pub struct Taken {
    /// The probabilities the action was drawn from (P, or P average-pooled per cell).
    pub probs: Tensor,
    /// The action (1 = erased), the shape of `probs`.
    pub action: Tensor,
    /// The erase mask at image resolution [n, 1, h, w].
    pub erased: Tensor,
}

/// Takes the action from P [n, 1, h, w]: the threshold 1[P >= 0.5], or a ~ Bernoulli(P_cell)
/// per `cell` x `cell` cell of average-pooled P, with uniforms from a generator seeded by
/// (seed, step).
pub fn take_action(p: &Tensor, action: Action, cell: usize, seed: u64, step: u64) -> Result<Taken> {
    let [_, _, h, w] = p.dims4("action")?;
    match action {
        Action::Threshold => {
            let a = no_grad(|| ops::ge_scalar(&p.detach(), 0.5))?;
            Ok(Taken {
                probs: p.clone(),
                action: a.clone(),
                erased: a,
            })
        }
        Action::Sample => {
            let g = cell.max(1);
            let pc = if g == 1 {
                p.clone()
            } else {
                ops::avg_pool2d(p, g, g, 0)?
            };
            // a = 1[u < P_cell] with u uniform, drawn on the host and uploaded: no read-back
            // of P in the middle of the step. (P - u > 0 has exactly the sign of P > u.)
            let mut rng = StdRng::seed_from_u64(
                seed ^ 0x5eed_ac71 ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let u: Vec<f32> = (0..pc.numel()).map(|_| rng.random::<f32>()).collect();
            let u = Tensor::from_slice(p.gpu(), &u, pc.shape())?;
            let a = no_grad(|| ops::gt_scalar(&ops::sub(&pc.detach(), &u)?, 0.0))?;
            let erased = if g == 1 {
                a.clone()
            } else {
                ops::upsample_nearest2d(&a, [h, w])?
            };
            Ok(Taken {
                probs: pc,
                action: a,
                erased,
            })
        }
    }
}

/// Advantages of one step's rewards and the state's update.
///
/// - paper: A = R - b with b_1 = R_1, then b <- d b + (1 - d) R (b updated after use);
/// - released-code: b <- d b + (1 - d) R first (b_1 = R_1), then A = R - b;
/// - stable: per-image rewards R_i, A_i = (R_i - b) / s with b the moving average of the
///   batch-mean reward (b_1 = mean R_1) and s^2 the moving average of mean_i (R_i - b)^2,
///   updated with this step's rewards before dividing, so |A_i| stays bounded.
pub fn advantages(rewards: &[f32], state: &mut PolicyState, cfg: &TrainConfig) -> Vec<f32> {
    let d = cfg.baseline_decay as f32;
    let mean = rewards.iter().sum::<f32>() / rewards.len().max(1) as f32;
    match cfg.pg_variant {
        PgVariant::Paper => {
            let b = state.baseline.unwrap_or(mean);
            state.baseline = Some(d * b + (1.0 - d) * mean);
            rewards.iter().map(|r| r - b).collect()
        }
        PgVariant::ReleasedCode => {
            let b = match state.baseline {
                Some(b) => d * b + (1.0 - d) * mean,
                None => mean,
            };
            state.baseline = Some(b);
            rewards.iter().map(|r| r - b).collect()
        }
        PgVariant::Stable => {
            let b = state.baseline.unwrap_or(mean);
            let a: Vec<f32> = rewards.iter().map(|r| r - b).collect();
            let sq = a.iter().map(|v| v * v).sum::<f32>() / a.len().max(1) as f32;
            let var = match state.advantage_var {
                Some(v) => d * v + (1.0 - d) * sq,
                None => sq,
            };
            state.advantage_var = Some(var);
            state.baseline = Some(d * b + (1.0 - d) * mean);
            let s = var.sqrt() + 1e-8;
            a.iter().map(|v| v / s).collect()
        }
    }
}

/// The policy loss on the action's probabilities `probs` and action `a` (1 = erased), with
/// constant advantages `adv` (`[1]` for one reward per batch, `[n]` for one per image) and the
/// full-resolution P `p` for the regulariser:
///
/// - Eq. 7 (paper, `Regularizer::Constant`): BCE(P, a) adv + lambda_zeros BCE(P, 0);
/// - released-code: 100 adv BCE(P, a) + 0.1 |adv| BCE(P, 0) + 0.01 |adv| BCE(P, 1);
/// - stable: mean_i adv_i BCE_i(P, a) + the chosen regulariser (coverage:
///   coverage_weight mean_i (mean P_i - target)^2).
///
/// BCE(P, a) is -log pi(a) of the Bernoulli policy, so a positive advantage reinforces the
/// action taken (tests/apga.rs checks the sign of every variant).
pub fn policy_loss(
    probs: &Tensor,
    a: &Tensor,
    p: &Tensor,
    adv: &[f32],
    coverage_target: f32,
    cfg: &TrainConfig,
) -> Result<Tensor> {
    let gpu = p.gpu();
    let (_, regularizer, _) = cfg.pg_choices();
    let n = probs.shape()[0];
    // The policy-gradient term: mean over images of adv_i * (mean BCE of image i).
    let bce_img = ops::mean(&ops::bce_elementwise(probs, a)?, &[1, 2, 3], false)?;
    let adv_t = if adv.len() == n {
        Tensor::from_slice(gpu, adv, &[n])?
    } else {
        Tensor::full(gpu, &[n], adv.first().copied().unwrap_or(0.0))?
    };
    let scale = if cfg.pg_variant == PgVariant::ReleasedCode {
        100.0
    } else {
        1.0
    };
    let pg = ops::mul_scalar(&ops::mean_all(&ops::mul(&bce_img, &adv_t)?)?, scale)?;
    let abs_adv = adv.iter().map(|v| v.abs()).sum::<f32>() / adv.len().max(1) as f32;
    let zeros = || Tensor::zeros(gpu, p.shape());
    let reg = match regularizer {
        Regularizer::Constant => ops::mul_scalar(
            &ops::binary_cross_entropy(p, &zeros()?)?,
            cfg.lambda_zeros as f32,
        )?,
        Regularizer::AbsAdv => {
            let ones = Tensor::full(gpu, p.shape(), 1.0)?;
            ops::add(
                &ops::mul_scalar(&ops::binary_cross_entropy(p, &zeros()?)?, 0.1 * abs_adv)?,
                &ops::mul_scalar(&ops::binary_cross_entropy(p, &ones)?, 0.01 * abs_adv)?,
            )?
        }
        Regularizer::Coverage => {
            let dev = ops::add_scalar(&ops::mean(p, &[1, 2, 3], false)?, -coverage_target)?;
            ops::mul_scalar(
                &ops::mean_all(&ops::mul(&dev, &dev)?)?,
                cfg.coverage_weight as f32,
            )?
        }
    };
    ops::add(&pg, &reg)
}
