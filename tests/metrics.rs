//! The evaluation's classification metrics against scikit-learn's values on seeded cases
//! (`tests/fixtures/make_metric_fixtures.py`: binary and 3- and 4-class, with tied scores and
//! classes never predicted): AUROC, per-class F1, sensitivity / specificity, Cohen's kappa.

use apga_gpu::apga::metrics::{
    auroc, auroc_of_probs, cohen_kappa, f1_per_class, sensitivity_specificity,
};

#[derive(serde::Deserialize)]
struct Case {
    k: usize,
    probs: Vec<f64>,
    labels: Vec<usize>,
    pred: Vec<usize>,
    auroc: f64,
    sensitivity: Option<f64>,
    specificity: Option<f64>,
    f1: Vec<f64>,
    kappa: f64,
    confusion: Vec<Vec<usize>>,
}

fn close(what: &str, a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12, "{what}: ours {a}, scikit-learn {b}");
}

#[test]
fn metrics_match_scikit_learn() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics.json");
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 5);
    for (i, c) in cases.iter().enumerate() {
        let what = |m: &str| format!("case {i} ({} classes): {m}", c.k);
        close(
            &what("AUROC"),
            auroc_of_probs(&c.probs, &c.labels, c.k).unwrap(),
            c.auroc,
        );
        let f1 = f1_per_class(&c.confusion);
        assert_eq!(f1.len(), c.f1.len());
        for (a, b) in f1.iter().zip(&c.f1) {
            close(&what("F1"), *a, *b);
        }
        close(
            &what("kappa"),
            cohen_kappa(&c.labels, &c.pred, c.k),
            c.kappa,
        );
        match (
            sensitivity_specificity(&c.confusion),
            c.sensitivity,
            c.specificity,
        ) {
            (Some((se, sp)), Some(a), Some(b)) => {
                close(&what("sensitivity"), se, a);
                close(&what("specificity"), sp, b);
            }
            (None, None, None) => assert!(c.k > 2),
            other => panic!("{}: {other:?}", what("sensitivity/specificity")),
        }
    }
}

#[test]
fn auroc_edge_cases() {
    // Perfect, inverted, all tied, and undefined (one class only).
    assert_eq!(
        auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
        Some(1.0)
    );
    assert_eq!(
        auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
        Some(0.0)
    );
    assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
    assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
}
