//! Host-side cost of recording a DenseNet-169 forward versus the time until the GPU finishes:
//! `cargo run --release --example profile_forward -- [BATCH] [SIZE]`.

use std::time::Instant;

use apga_gpu::models::{DenseNet, DenseNetConfig};
use apga_gpu::{no_grad, Gpu, GpuOptions, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let batch = args.next().transpose()?.unwrap_or(4);
    let size = args.next().transpose()?.unwrap_or(64);
    let gpu = Gpu::new(GpuOptions::from_env()?)?;
    let net = DenseNet::new(&gpu, DenseNetConfig::densenet169(2), 0)?;
    let x = Tensor::from_slice(
        &gpu,
        &vec![0.5; batch * 3 * size * size],
        &[batch, 3, size, size],
    )?;
    for i in 0..3 {
        gpu.sync()?;
        let submits = gpu.submit_count();
        let t = Instant::now();
        let y = no_grad(|| net.forward(&x, false))?;
        let record = t.elapsed();
        gpu.sync()?;
        let total = t.elapsed();
        drop(y);
        println!(
            "forward {i}: recording {:.1} ms, until the GPU finished {:.1} ms, {} submits",
            record.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            gpu.submit_count() - submits
        );
    }
    Ok(())
}
