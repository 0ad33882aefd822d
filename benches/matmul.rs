//! Matmul microbenchmark: every kernel variant at 256, 512 and 1024, in ms and GFLOP/s, the
//! variant the autotuner picks for this adapter, and PyTorch's time for the same sgemm on the
//! same machine (from `benches/matmul_torch.py`, when python3 with torch is installed).
//!
//! Run: `cargo bench --bench matmul` (add `-- 256` to choose sizes).

mod common;

use apga_gpu::autotune;
use apga_gpu::ops::{self, MatmulVariant};
use apga_gpu::{Gpu, GpuOptions, Tensor};

fn main() {
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![256, 512, 1024];
    }
    let gpu = match GpuOptions::from_env().and_then(Gpu::new) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let info = gpu.info();
    println!(
        "matmul on {} ({:?}, driver {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    println!(
        "bounds checks in trusted kernels: {} (APGA_RUNTIME_CHECKS=1 turns them on)",
        if gpu.runtime_checks() { "on" } else { "off" }
    );
    let torch = common::torch_ms(
        "matmul_torch.py",
        &sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    match &torch {
        Ok((label, _)) => println!("beside: {label}"),
        Err(e) => println!("beside: PyTorch not measured ({e})"),
    }
    println!();
    println!(
        "{:>6}  {:<10} {:>10} {:>9}  {:>12} {:>9}  {:>8}",
        "n", "variant", "ms", "GFLOP/s", "PyTorch ms", "GFLOP/s", "ours/pt"
    );
    for &n in &sizes {
        let flops = 2.0 * (n as f64).powi(3);
        let data: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32) / 97.0 - 0.5).collect();
        let a = Tensor::from_slice(&gpu, &data, &[n, n]).expect("upload");
        let b = Tensor::from_slice(&gpu, &data, &[n, n]).expect("upload");
        let pt = torch
            .as_ref()
            .ok()
            .and_then(|(_, m)| m.get(&n.to_string()).copied());
        let auto = ops::matmul::chosen_variant(&a, &b, false, false).expect("autotune");
        for v in MatmulVariant::ALL {
            let dt = autotune::measure(&gpu, &mut || {
                ops::matmul_with(v, &a, &b, false, false).map(|_| ())
            })
            .expect("run");
            let ms = dt.as_secs_f64() * 1e3;
            let gf = flops / dt.as_secs_f64() / 1e9;
            let (pt_ms, pt_gf, ratio) = match pt {
                Some(p) => (
                    format!("{p:.3}"),
                    format!("{:.1}", flops / (p / 1e3) / 1e9),
                    format!("{:.2}x", ms / p),
                ),
                None => ("n/a".into(), "n/a".into(), "n/a".into()),
            };
            let name = format!("{}{}", v.name(), if v == auto { "*" } else { "" });
            println!("{n:>6}  {name:<10} {ms:>10.3} {gf:>9.2}  {pt_ms:>12} {pt_gf:>9}  {ratio:>8}");
        }
    }
    println!(
        "\n* = variant the autotuner chose for this adapter and shape class (cached in {})",
        autotune::cache_dir()
            .map(|d| d.join("autotune.json").display().to_string())
            .unwrap_or_else(|| "memory only".into())
    );
}
