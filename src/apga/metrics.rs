//! The classification metrics medical-imaging papers report beside accuracy, as scikit-learn
//! defines them (and checked against it, `tests/metrics.rs`): AUROC (binary, and the macro
//! average of one-vs-rest for more classes), sensitivity and specificity at the 0.5 threshold
//! (binary: the positive class is class 1, as MURA's "abnormal"), per-class F1, and Cohen's
//! kappa.

/// Area under the ROC curve of `scores` for the binary labels `positive`: the probability
/// that a random positive scores above a random negative, ties counting one half (the
/// Mann-Whitney U statistic over average ranks; `sklearn.metrics.roc_auc_score`). `None`
/// when one of the two classes is absent (undefined, as scikit-learn says).
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 || scores.len() != positive.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over runs of equal scores.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * order[i..=j].iter().filter(|&&o| positive[o]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// AUROC of `k`-class probabilities `probs` (row-major, one row per sample): binary, the
/// AUROC of class 1's probability; otherwise the unweighted mean over classes of one-vs-rest
/// AUROC (`roc_auc_score(..., multi_class="ovr", average="macro")`). `None` if any class has
/// no sample (or no negative).
pub fn auroc_of_probs(probs: &[f64], labels: &[usize], k: usize) -> Option<f64> {
    if k < 2 || probs.len() != labels.len() * k {
        return None;
    }
    let column = |c: usize| -> Vec<f64> { probs.chunks(k).map(|r| r[c]).collect() };
    if k == 2 {
        let pos: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        return auroc(&column(1), &pos);
    }
    let mut sum = 0.0;
    for c in 0..k {
        let pos: Vec<bool> = labels.iter().map(|&l| l == c).collect();
        sum += auroc(&column(c), &pos)?;
    }
    Some(sum / k as f64)
}

/// Per-class F1 from a confusion matrix `confusion[true][predicted]`: 2 TP / (2 TP + FP + FN),
/// 0 where a class is neither present nor predicted (scikit-learn's `zero_division=0`).
pub fn f1_per_class(confusion: &[Vec<usize>]) -> Vec<f64> {
    let k = confusion.len();
    (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let fn_: f64 = (0..k)
                .filter(|&p| p != c)
                .map(|p| confusion[c][p] as f64)
                .sum();
            let fp: f64 = (0..k)
                .filter(|&t| t != c)
                .map(|t| confusion[t][c] as f64)
                .sum();
            let d = 2.0 * tp + fp + fn_;
            if d == 0.0 {
                0.0
            } else {
                2.0 * tp / d
            }
        })
        .collect()
}

/// Binary sensitivity (recall of class 1) and specificity (recall of class 0) from a 2 x 2
/// confusion matrix, at the argmax (0.5) threshold; `None` for other class counts or a class
/// without samples.
pub fn sensitivity_specificity(confusion: &[Vec<usize>]) -> Option<(f64, f64)> {
    if confusion.len() != 2 {
        return None;
    }
    let recall = |c: usize| {
        let total: usize = confusion[c].iter().sum();
        (total > 0).then(|| confusion[c][c] as f64 / total as f64)
    };
    Some((recall(1)?, recall(0)?))
}

/// Cohen's kappa of paired labels over `k` classes.
pub fn cohen_kappa(truth: &[usize], pred: &[usize], k: usize) -> f64 {
    let n = truth.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let agree = truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / n;
    let expected: f64 = (0..k)
        .map(|c| {
            let t = truth.iter().filter(|&&x| x == c).count() as f64 / n;
            let p = pred.iter().filter(|&&x| x == c).count() as f64 / n;
            t * p
        })
        .sum();
    if (1.0 - expected).abs() < 1e-12 {
        1.0
    } else {
        (agree - expected) / (1.0 - expected)
    }
}
