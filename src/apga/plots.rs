//! `plots/` of a run: loss, reward and accuracy curves as PNG, drawn from `metrics.jsonl`
//! with plotters. Text needs a TrueType font: `APGA_FONT`, or DejaVu/Liberation Sans where the
//! system has them; without one the curves are drawn without labels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// Registers a sans-serif font once; `true` if text can be drawn.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("APGA_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/Library/Fonts/Arial.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(PathBuf::from),
        );
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.into(),
        detail: format!("cannot draw the plot: {e}"),
    }
}

/// The frame every plot shares: margins, label areas, and the title where text can be drawn.
fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    text: bool,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(15)
        .x_label_area_size(if text { 35 } else { 5 })
        .y_label_area_size(if text { 60 } else { 5 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    builder
}

/// Draws line series into a PNG.
pub fn line_plot(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (x1, y0, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, y0 - pad, y1 + pad);
    let text = font_available();
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut builder = chart_builder(&root, title, text);
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| plot_err(path, e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let drawn = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied().filter(|p| p.1.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?;
        if text {
            drawn
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// Draws one bar per (name, mean, std) with a ± std error bar: `compare.png`.
pub fn bar_plot(path: &Path, title: &str, bars: &[(String, f64, f64)]) -> Result<()> {
    if bars.is_empty() {
        return Ok(());
    }
    let top = bars
        .iter()
        .map(|b| b.1 + b.2)
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.2;
    let text = font_available();
    let root = BitMapBackend::new(path, (160 + 120 * bars.len() as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut builder = chart_builder(&root, title, text);
    let n = bars.len();
    let mut chart = builder
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(|e| plot_err(path, e))?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if text {
        mesh.y_desc("accuracy");
    } else {
        mesh.y_labels(0);
    }
    mesh.draw().map_err(|e| plot_err(path, e))?;
    for (i, (name, mean, std)) in bars.iter().enumerate() {
        let x = i as f64;
        if text {
            // The method's name and its mean ± std, centred above its error bar.
            let style = ("sans-serif", 14)
                .into_text_style(&root)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            let above = (mean + std + 0.01 * top).min(top);
            for (label, y) in [
                (name.clone(), above + 0.05 * top),
                (format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * std), above),
            ] {
                chart
                    .draw_series([Text::new(label, (x + 0.5, y.min(top)), style.clone())])
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        chart
            .draw_series([Rectangle::new(
                [(x + 0.2, 0.0), (x + 0.8, *mean)],
                BLUE.mix(0.6).filled(),
            )])
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series([PathElement::new(
                vec![(x + 0.5, mean - std), (x + 0.5, mean + std)],
                BLACK.stroke_width(2),
            )])
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// Writes `plots/loss.png`, `plots/reward.png` (APGA) and `plots/accuracy.png` from a run's
/// `metrics.jsonl`.
pub fn write_plots(run_dir: &Path) -> Result<()> {
    let log = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).map_err(|source| Error::Io {
        path: log.clone(),
        source,
    })?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let series = |phase: &str,
                  x: &str,
                  key: &dyn Fn(&serde_json::Value) -> Option<f64>,
                  name: &str| Series {
        name: name.into(),
        points: lines
            .iter()
            .filter(|v| v["phase"] == phase)
            .filter_map(|v| Some((v[x].as_f64()?, key(v)?)))
            .collect(),
    };
    let field = |k: &'static str| move |v: &serde_json::Value| v[k].as_f64();
    let losses: Vec<Series> = ["l_orig", "l_adv", "l_aid", "l_aug", "l_soft", "l_pg"]
        .iter()
        .map(|k| series("train", "step", &field(k), k))
        .filter(|s| !s.points.is_empty())
        .collect();
    line_plot(&dir.join("loss.png"), "training losses", "step", &losses)?;
    let rewards: Vec<Series> = ["reward", "baseline", "advantage"]
        .iter()
        .map(|k| series("train", "step", &field(k), k))
        .filter(|s| !s.points.is_empty())
        .collect();
    if !rewards.is_empty() {
        line_plot(
            &dir.join("reward.png"),
            "reward R_t, baseline b_t, advantage",
            "step",
            &rewards,
        )?;
    }
    let val = |k: &'static str| move |v: &serde_json::Value| v["val"][k].as_f64();
    let acc: Vec<Series> = vec![
        series(
            "pretrain",
            "epoch",
            &val("accuracy"),
            "pretraining accuracy",
        ),
        series("eval", "epoch", &val("accuracy"), "accuracy"),
        series("eval", "epoch", &val("tta_accuracy"), "accuracy with TTA"),
        series("eval", "epoch", &val("mask_iou"), "mask IoU"),
    ]
    .into_iter()
    .filter(|s| !s.points.is_empty())
    .collect();
    // The converged baseline the method is measured against, as a line over the epochs.
    let mut acc = acc;
    let baseline = lines
        .iter()
        .find(|v| v["phase"] == "baseline")
        .and_then(|v| v["val"]["accuracy"].as_f64());
    let epochs = lines
        .iter()
        .filter(|v| v["phase"] == "eval" || v["phase"] == "pretrain")
        .filter_map(|v| v["epoch"].as_f64());
    let (lo, hi) = epochs.fold((f64::MAX, f64::MIN), |(a, b), e| (a.min(e), b.max(e)));
    if let (Some(b), true) = (baseline, lo <= hi) {
        acc.push(Series {
            name: "converged baseline".into(),
            points: vec![(lo, b), (hi.max(lo + 1.0), b)],
        });
    }
    line_plot(&dir.join("accuracy.png"), "validation", "epoch", &acc)
}
