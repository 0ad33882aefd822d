//! `apga-gpu bench`: the APGA step timed phase by phase, beside its PyTorch twin.

use crate::apga::{self, Preset, TrainConfig};
use crate::error::Result;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Networks, batch and image size of a preset (quick: small networks at 64x64, batch 16;
    /// paper: DenseNet-169 and UNet11 at 224x224, batch 25, minutes per step on a CPU driver).
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::BATCH_SIZE.0, crate::limits::BATCH_SIZE.1))]
    pub batch_size: Option<usize>,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::IMAGE_SIZE.0, crate::limits::IMAGE_SIZE.1))]
    pub image_size: Option<usize>,
    /// densenet121 | densenet161 | densenet169 | densenet201 | tiny
    #[arg(long)]
    pub classifier_arch: Option<String>,
    #[arg(long, value_parser = crate::cli::ranged(crate::limits::FILTERS.0, crate::limits::FILTERS.1))]
    pub policy_filters: Option<usize>,
    /// Measured steps (after one warm-up step); 0 reports the warm-up step alone (compilation
    /// and autotuning included), for peak memory at sizes where a step takes minutes.
    #[arg(long, default_value_t = 3, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub steps: usize,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Time every kernel on the GPU (timestamp queries where the adapter has them) and print
    /// the slowest kernels of the last step (also `APGA_PROFILE=1`).
    #[arg(long)]
    pub profile: bool,
    /// Rows of the per-kernel table.
    #[arg(long, default_value_t = 25, value_parser = crate::cli::ranged(crate::limits::COUNT.0, crate::limits::COUNT.1))]
    pub profile_top: usize,
    /// Do not run the PyTorch twin (by default it runs when the interpreter can import torch
    /// and torchvision).
    #[arg(long)]
    pub no_torch: bool,
    /// Python interpreter for the PyTorch twin.
    #[arg(long, env = "APGA_PYTHON", default_value = "python3")]
    pub python: String,
    /// Run the PyTorch twin on CUDA instead of the CPU.
    #[arg(long)]
    pub torch_cuda: bool,
}

pub fn bench(options: &crate::gpu::GpuOptions, args: &BenchArgs) -> Result<()> {
    let mut cfg = TrainConfig::preset(args.preset);
    if let Some(v) = args.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = args.image_size {
        cfg.image_size = v;
    }
    if let Some(v) = &args.classifier_arch {
        cfg.classifier_arch = v.clone();
    }
    if let Some(v) = args.policy_filters {
        cfg.policy_filters = v;
    }
    // The APGA step needs the policy: --image-size a multiple of 32.
    crate::apga::TrainConfig {
        method: crate::apga::Method::Apga,
        ..cfg.clone()
    }
    .validate()?;
    let r = apga::bench::bench(&cfg, args.steps, options, args.profile)?;
    let torch = if args.no_torch {
        Err("skipped (--no-torch)".to_string())
    } else {
        apga::bench::torch_bench(&cfg, args.steps, &args.python, args.torch_cuda)
    };
    if args.json {
        let v = serde_json::json!({
            "ours": r,
            "torch": torch.as_ref().ok(),
            "torch_error": torch.as_ref().err(),
        });
        println!("{v}");
        return Ok(());
    }
    let timed = if args.steps == 0 {
        "warm-up step only, compilation and autotuning included".to_string()
    } else {
        format!("median of {} steps", args.steps)
    };
    println!(
        "APGA step: classifier {}, UNet11 with {} filters, batch {}, {}x{} ({timed})",
        r.classifier, r.policy_filters, r.batch_size, r.image_size, r.image_size
    );
    match &torch {
        Ok(t) => println!(
            "  {:<22} {:>10} {:>10} {:>7}\n  {:<22} {:>10} {:>10}",
            "",
            "ours",
            "PyTorch",
            "ratio",
            "",
            "",
            format!("({})", t.label)
        ),
        Err(e) => println!("  PyTorch: not measured: {e}"),
    }
    let row = |name: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!(
            "  {name:<22} {ours:>7.1} ms {t:>7.1} ms {:>6.2}x",
            ours / t.max(1e-9)
        ),
        None => println!("  {name:<22} {ours:>7.1} ms"),
    };
    for (name, ms) in &r.phases_ms {
        let theirs = torch
            .as_ref()
            .ok()
            .and_then(|t| t.phases_ms.iter().find(|(n, _)| n == name).map(|(_, v)| *v));
        row(name, *ms, theirs);
    }
    row(
        "whole step",
        r.step_ms,
        torch.as_ref().ok().map(|t| t.step_ms),
    );
    println!("  {:.2} images/s", r.images_per_s);
    println!(
        "  peak GPU memory above inputs and weights: {:.1} MiB ({})",
        r.peak_memory_mib,
        r.phases_peak_mib
            .iter()
            .map(|(n, m)| format!("{n} {m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  cold start: {:.1} s from opening the GPU to the end of the first step ({} pipelines built in {:.1} s, {} kernel choices autotuned in {:.1} s)",
        r.first_step_s, r.pipelines_built, r.compile_s, r.autotuned, r.autotune_s
    );
    if let Some(p) = &r.profile {
        print!("{}", p.table(args.profile_top));
    }
    Ok(())
}
