//! Evaluation: image-level accuracy, per-class accuracy and the confusion matrix; with a
//! policy, test-time augmentation by the aiding mask (mean of the softmax on the image and on
//! the masked image) and, for synthetic data, the kept mask's IoU and coverage against the true
//! region of interest, the share of the class evidence and of the shortcut marker it keeps;
//! for MURA, study-level accuracy (mean probability per study) and Cohen's kappa. Aiding
//! images the guard refuses (almost blank or untouched) are left out of test-time
//! augmentation: those images count with their plain prediction.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::apga::policy::{aiding_mask, erase, guard_ok};
use crate::apga::step::Masking;
use crate::data::{Dataset, Loader, LoaderConfig, Preprocess, Sample};
use crate::error::Result;
use crate::models::{DenseNet, UNet11};
use crate::tensor::Tensor;
use crate::{no_grad, ops};

/// Metrics of one evaluation.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Metrics {
    pub images: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`
    pub confusion: Vec<Vec<usize>>,
    /// Accuracy of the mean softmax on the image and on the aiding-masked image.
    pub tta_accuracy: Option<f64>,
    /// MURA: accuracy of the mean probability per study, and Cohen's kappa on studies.
    pub study_accuracy: Option<f64>,
    pub study_kappa: Option<f64>,
    /// Synthetic data: IoU and coverage (|kept and ROI| / |ROI|) of the kept mask P > 0.5.
    pub mask_iou: Option<f64>,
    pub mask_coverage: Option<f64>,
    /// Share of pixels the policy keeps (1 - the erased fraction of the aiding mask).
    pub mask_kept_fraction: Option<f64>,
    /// Synthetic data: share of the class-evidence pixels the kept mask keeps.
    #[serde(default)]
    pub evidence_kept: Option<f64>,
    /// Synthetic data with a shortcut marker: share of the marker's pixels the mask keeps.
    #[serde(default)]
    pub shortcut_kept: Option<f64>,
    /// Images whose aiding mask the guard refused (plain prediction used for TTA).
    #[serde(default)]
    pub guarded: usize,
    /// AUROC of the softmax (binary: of class 1; more classes: macro one-vs-rest); `None`
    /// where a class has no image.
    #[serde(default)]
    pub auroc: Option<f64>,
    /// Binary: recall of class 1 (sensitivity) and of class 0 (specificity) at argmax.
    #[serde(default)]
    pub sensitivity: Option<f64>,
    #[serde(default)]
    pub specificity: Option<f64>,
    /// F1 of each class (one-vs-rest, at argmax).
    #[serde(default)]
    pub f1_per_class: Vec<f64>,
    /// MURA: AUROC of the mean probability per study.
    #[serde(default)]
    pub study_auroc: Option<f64>,
}

fn softmax_rows(logits: &[f32], k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(k) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0
}

pub use crate::apga::metrics::cohen_kappa;
use crate::apga::metrics::{auroc_of_probs, f1_per_class, sensitivity_specificity};

/// How an evaluation reads and masks its images.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    pub pre: Preprocess,
    pub workers: usize,
    pub batch_size: usize,
    pub masking: Masking,
    /// Leave out (and count in the log) images that cannot be read, as training does.
    pub skip_bad_images: bool,
}

/// Evaluates the classifier (eval mode) on a split, with the policy's test-time augmentation
/// and mask quality when a policy is given.
pub fn evaluate(
    clf: &DenseNet,
    policy: Option<&UNet11>,
    ds: &Dataset,
    split: &[Sample],
    opts: EvalOptions,
) -> Result<Metrics> {
    let EvalOptions {
        pre,
        workers,
        batch_size,
        masking,
        skip_bad_images,
    } = opts;
    let k = ds.classes.len();
    let cfg = LoaderConfig {
        batch_size,
        workers,
        shuffle: false,
        skip_bad_images,
        ..Default::default()
    };
    let samples = Arc::new(split.to_vec());
    let s = pre.size;
    let gpu = clf.classifier.weight.gpu().clone();
    let mut m = Metrics {
        confusion: vec![vec![0; k]; k],
        ..Default::default()
    };
    let (mut tta_correct, mut loss_sum) = (0usize, 0f64);
    let (mut inter, mut union, mut roi_px, mut kept_px, mut all_px) =
        (0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut ev_kept, mut ev_px, mut sc_kept, mut sc_px) = (0f64, 0f64, 0f64, 0f64);
    let mut guarded_flags: Vec<bool> = Vec::new();
    let mut study_probs: BTreeMap<String, (Vec<f64>, usize, usize)> = BTreeMap::new();
    let (mut all_probs, mut all_labels) = (Vec::new(), Vec::new());
    for batch in Loader::new(samples.clone(), ds.synthetic, pre, cfg) {
        let batch = batch?;
        let n = batch.len();
        if n == 0 {
            continue;
        }
        let x = Tensor::from_slice(&gpu, &batch.images, &[n, 3, s, s])?;
        let logits = no_grad(|| clf.forward(&x, false))?;
        let loss = no_grad(|| ops::cross_entropy(&logits, &batch.labels))?;
        loss_sum += loss.item()? as f64 * n as f64;
        let probs = softmax_rows(&logits.to_vec()?, k);
        let tta_probs = match policy {
            Some(p) => {
                let keep = aiding_mask(p, &x)?;
                let logits_aid = no_grad(|| clf.forward(&erase(&x, &keep, masking.fill)?, false))?;
                let pa = softmax_rows(&logits_aid.to_vec()?, k);
                // One policy forward per batch: the aiding mask 1[P > 0.5] is the kept mask,
                // read back once for the guard and every mask metric.
                let kv = keep.to_vec()?;
                guarded_flags = kv
                    .chunks(s * s)
                    .map(|img| {
                        let kept = img.iter().sum::<f32>() / img.len() as f32;
                        !guard_ok(kept, masking.guard)
                    })
                    .collect();
                m.guarded += guarded_flags.iter().filter(|g| **g).count();
                kept_px += kv.iter().map(|v| *v as f64).sum::<f64>();
                all_px += kv.len() as f64;
                if let Some(rois) = &batch.rois {
                    for (kept, r) in kv.iter().zip(rois) {
                        let (kept, inside) = (*kept > 0.5, *r > 0.5);
                        inter += (kept && inside) as u8 as f64;
                        union += (kept || inside) as u8 as f64;
                        roi_px += inside as u8 as f64;
                    }
                }
                let overlap = |truth: &Option<Vec<f32>>, hit: &mut f64, all: &mut f64| {
                    if let Some(t) = truth {
                        for (kept, t) in kv.iter().zip(t) {
                            if *t > 0.5 {
                                *all += 1.0;
                                *hit += (*kept > 0.5) as u8 as f64;
                            }
                        }
                    }
                };
                overlap(&batch.evidence, &mut ev_kept, &mut ev_px);
                overlap(&batch.shortcut, &mut sc_kept, &mut sc_px);
                Some(pa)
            }
            None => None,
        };
        all_probs.extend_from_slice(&probs);
        all_labels.extend_from_slice(&batch.labels);
        for (j, &label) in batch.labels.iter().enumerate() {
            let row = &probs[j * k..(j + 1) * k];
            let pred = argmax(row);
            m.confusion[label][pred] += 1;
            if let Some(pa) = tta_probs.as_ref().filter(|_| !guarded_flags[j]) {
                let mixed: Vec<f64> = row
                    .iter()
                    .zip(&pa[j * k..(j + 1) * k])
                    .map(|(a, b)| 0.5 * (a + b))
                    .collect();
                tta_correct += (argmax(&mixed) == label) as usize;
            } else if tta_probs.is_some() {
                tta_correct += (pred == label) as usize;
            }
            if let Some(study) = &samples[batch.indices[j]].study {
                let e = study_probs
                    .entry(study.clone())
                    .or_insert((vec![0.0; k], 0, label));
                for (acc, p) in e.0.iter_mut().zip(row) {
                    *acc += p;
                }
                e.1 += 1;
            }
        }
        m.images += n;
    }
    let correct: usize = (0..k).map(|c| m.confusion[c][c]).sum();
    m.accuracy = correct as f64 / m.images.max(1) as f64;
    m.loss = loss_sum / m.images.max(1) as f64;
    m.per_class_accuracy = (0..k)
        .map(|c| {
            let total: usize = m.confusion[c].iter().sum();
            m.confusion[c][c] as f64 / total.max(1) as f64
        })
        .collect();
    m.auroc = auroc_of_probs(&all_probs, &all_labels, k);
    if let Some((sens, spec)) = sensitivity_specificity(&m.confusion) {
        m.sensitivity = Some(sens);
        m.specificity = Some(spec);
    }
    m.f1_per_class = f1_per_class(&m.confusion);
    if policy.is_some() {
        m.tta_accuracy = Some(tta_correct as f64 / m.images.max(1) as f64);
        m.mask_kept_fraction = Some(kept_px / all_px.max(1.0));
        if roi_px > 0.0 {
            m.mask_iou = Some(inter / union.max(1.0));
            m.mask_coverage = Some(inter / roi_px);
        }
        if ev_px > 0.0 {
            m.evidence_kept = Some(ev_kept / ev_px);
        }
        if sc_px > 0.0 {
            m.shortcut_kept = Some(sc_kept / sc_px);
        }
    }
    if !study_probs.is_empty() {
        let (truth, pred): (Vec<usize>, Vec<usize>) = study_probs
            .values()
            .map(|(p, _, label)| (*label, argmax(p)))
            .unzip();
        let ok = truth.iter().zip(&pred).filter(|(a, b)| a == b).count();
        m.study_accuracy = Some(ok as f64 / truth.len() as f64);
        m.study_kappa = Some(cohen_kappa(&truth, &pred, k));
        let (mean_probs, labels): (Vec<f64>, Vec<usize>) = study_probs
            .values()
            .flat_map(|(p, n, label)| {
                p.iter()
                    .map(|v| (v / *n as f64, *label))
                    .collect::<Vec<_>>()
            })
            .unzip();
        let labels: Vec<usize> = labels.into_iter().step_by(k).collect();
        m.study_auroc = auroc_of_probs(&mean_probs, &labels, k);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::cohen_kappa;

    #[test]
    fn kappa_of_perfect_chance_and_inverse_agreement() {
        assert!((cohen_kappa(&[0, 1, 0, 1], &[0, 1, 0, 1], 2) - 1.0).abs() < 1e-12);
        assert!((cohen_kappa(&[0, 1, 0, 1], &[1, 0, 1, 0], 2) + 1.0).abs() < 1e-12);
        assert!(cohen_kappa(&[0, 0, 1, 1], &[0, 1, 0, 1], 2).abs() < 1e-12);
    }
}
