//! `apga-gpu eval`: a finished run's checkpoints on its validation split or another dataset.

use crate::apga;
use crate::error::{Error, Result};

pub fn eval(options: &crate::gpu::GpuOptions, args: &crate::cli::EvalArgs) -> Result<()> {
    let m = apga::evaluate_run(
        &args.run,
        args.data.as_deref(),
        args.latest,
        args.skip_bad_images,
        options,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&m).map_err(|e| Error::Incomplete(e.to_string()))?
        );
        return Ok(());
    }
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    println!("images            {}", m.images);
    println!("loss              {:.4}", m.loss);
    println!("accuracy          {}", pct(m.accuracy));
    let per: Vec<String> = m.per_class_accuracy.iter().map(|a| pct(*a)).collect();
    println!("per class         {}", per.join("  "));
    let f1: Vec<String> = m.f1_per_class.iter().map(|v| format!("{v:.3}")).collect();
    println!("F1 per class      {}", f1.join("  "));
    if let Some(v) = m.auroc {
        println!("AUROC             {v:.3}");
    }
    if let (Some(se), Some(sp)) = (m.sensitivity, m.specificity) {
        println!("sensitivity       {}  specificity {}", pct(se), pct(sp));
    }
    println!("confusion (row = true class, column = predicted)");
    for row in &m.confusion {
        println!(
            "  {}",
            row.iter().map(|v| format!("{v:>6}")).collect::<String>()
        );
    }
    if let Some(v) = m.tta_accuracy {
        println!("accuracy with TTA {}", pct(v));
    }
    if let (Some(a), Some(k)) = (m.study_accuracy, m.study_kappa) {
        println!("study accuracy    {}  kappa {k:.3}", pct(a));
        if let Some(v) = m.study_auroc {
            println!("study AUROC       {v:.3}");
        }
    }
    if let Some(v) = m.mask_iou {
        println!(
            "mask IoU          {v:.3}  coverage {:.3}",
            m.mask_coverage.unwrap_or(0.0)
        );
    }
    if let Some(v) = m.mask_kept_fraction {
        println!("mask keeps        {}", pct(v));
    }
    if let Some(v) = m.evidence_kept {
        println!("  of the evidence {}", pct(v));
    }
    if let Some(v) = m.shortcut_kept {
        println!("  of the marker   {}", pct(v));
    }
    if m.tta_accuracy.is_some() {
        println!(
            "guarded images    {} (plain prediction used for TTA)",
            m.guarded
        );
    }
    Ok(())
}
