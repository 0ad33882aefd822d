//! CNN-kernel microbenchmarks: each convolution direction (forward, input gradient, weight
//! gradient), the UNet11 transposed convolution and batch norm, on the shapes DenseNet-169 and
//! UNet11 use (batch 4), in ms and GFLOP/s (GB/s for batch norm), beside PyTorch doing the same
//! work on the same machine (`benches/cnn_torch.py`, when python3 with torch is installed).
//!
//! Run: `cargo bench --bench cnn` (add a substring to run only matching cases).

mod common;

use apga_gpu::autotune;
use apga_gpu::ops::conv::{ConvGeom, Dir};
use apga_gpu::ops::{self, BatchNormConfig};
use apga_gpu::{Gpu, GpuOptions, Result, Tensor};

fn rand_tensor(gpu: &Gpu, shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503));
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_slice(gpu, &data, shape).expect("upload")
}

struct Row {
    case: String,
    ms: f64,
    work: f64,
    unit: &'static str,
    kernel: String,
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let gpu = match GpuOptions::from_env().and_then(Gpu::new) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let info = gpu.info();
    println!(
        "CNN kernels on {} ({:?}, driver {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    let torch = common::torch_ms("cnn_torch.py", &[]);
    match &torch {
        Ok((label, _)) => println!("beside: {label}"),
        Err(e) => println!("beside: PyTorch not measured ({e})"),
    }
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    let mut rows: Vec<Row> = Vec::new();
    let mut time = |case: String,
                    work: f64,
                    unit: &'static str,
                    kernel: &dyn Fn() -> String,
                    f: &mut dyn FnMut() -> Result<()>| {
        let dt = autotune::measure(&gpu, f).expect("run");
        rows.push(Row {
            case,
            ms: dt.as_secs_f64() * 1e3,
            work,
            unit,
            kernel: kernel(),
        });
    };

    let convs = [
        ("conv3x3_128_32_28", (4, 128, 28, 28, 32, 3, 1, 1)),
        ("conv1x1_256_128_28", (4, 256, 28, 28, 128, 1, 1, 0)),
        // DenseNet-169's block-4 bottleneck at 224x224 input: 7x7 maps (rows padded to 52).
        ("conv1x1_1024_128_7", (4, 1024, 7, 7, 128, 1, 1, 0)),
        ("conv7x7s2_3_64_128", (4, 3, 128, 128, 64, 7, 2, 3)),
        ("conv3x3_256_256_56", (4, 256, 56, 56, 256, 3, 1, 1)),
    ];
    for (name, (n, ci, h, w, co, k, s, p)) in convs {
        if !wanted(name) {
            continue;
        }
        let x = rand_tensor(&gpu, &[n, ci, h, w], 1);
        let wt = rand_tensor(&gpu, &[co, ci, k, k], 2);
        let y = ops::conv2d(&x, &wt, None, s, p).expect("conv");
        let g = ConvGeom {
            n,
            ci,
            h,
            w,
            co,
            oh: y.shape()[2],
            ow: y.shape()[3],
            kh: k,
            kw: k,
            stride: s,
            pad: p,
        };
        let gy = rand_tensor(&gpu, y.shape(), 3);
        let flops = 2.0 * g.macs() as f64;
        let kf = || ops::conv::kernel_name(&gpu, &g, Dir::Fwd, false);
        let kd = || ops::conv::kernel_name(&gpu, &g, Dir::Dgrad, false);
        let kw = || ops::conv::kernel_name(&gpu, &g, Dir::Wgrad, false);
        time(
            format!("{name}/forward"),
            flops,
            "GFLOP/s",
            &kf,
            &mut || ops::conv2d(&x, &wt, None, s, p).map(|_| ()),
        );
        time(
            format!("{name}/input_grad"),
            flops,
            "GFLOP/s",
            &kd,
            &mut || ops::conv::conv2d_backward(&g, &x, &wt, &gy, [true, false, false]).map(|_| ()),
        );
        time(
            format!("{name}/weight_grad"),
            flops,
            "GFLOP/s",
            &kw,
            &mut || ops::conv::conv2d_backward(&g, &x, &wt, &gy, [false, true, false]).map(|_| ()),
        );
    }
    let name = "convT3x3s2_512_256_14";
    if wanted(name) {
        let x = rand_tensor(&gpu, &[4, 512, 14, 14], 4);
        let wt = rand_tensor(&gpu, &[512, 256, 3, 3], 5);
        let y = ops::conv_transpose2d(&x, &wt, None, 2, 1, 1).expect("conv_transpose");
        let gy = rand_tensor(&gpu, y.shape(), 6);
        let g = ConvGeom {
            n: 4,
            ci: 256,
            h: 28,
            w: 28,
            co: 512,
            oh: 14,
            ow: 14,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        };
        let flops = 2.0 * g.macs() as f64;
        time(
            format!("{name}/forward"),
            flops,
            "GFLOP/s",
            &|| ops::conv::kernel_name(&gpu, &g, Dir::Dgrad, false),
            &mut || ops::conv_transpose2d(&x, &wt, None, 2, 1, 1).map(|_| ()),
        );
        time(
            format!("{name}/input_grad"),
            flops,
            "GFLOP/s",
            &|| ops::conv::kernel_name(&gpu, &g, Dir::Fwd, false),
            &mut || {
                ops::conv::conv_transpose2d_backward(&g, &x, &wt, &gy, [true, false, false])
                    .map(|_| ())
            },
        );
        time(
            format!("{name}/weight_grad"),
            flops,
            "GFLOP/s",
            &|| ops::conv::kernel_name(&gpu, &g, Dir::Wgrad, false),
            &mut || {
                ops::conv::conv_transpose2d_backward(&g, &x, &wt, &gy, [false, true, false])
                    .map(|_| ())
            },
        );
    }
    let name = "bn_256_56";
    if wanted(name) {
        let x = rand_tensor(&gpu, &[4, 256, 56, 56], 7);
        let gamma = Tensor::full(&gpu, &[256], 1.0).unwrap();
        let beta = Tensor::zeros(&gpu, &[256]).unwrap();
        let rm = Tensor::zeros(&gpu, &[256]).unwrap();
        let rv = Tensor::full(&gpu, &[256], 1.0).unwrap();
        let cfg = BatchNormConfig::default();
        let bytes = (x.numel() * 4) as f64;
        // Forward reads x twice for the statistics, once to normalise, and writes y.
        time(
            format!("{name}/forward"),
            4.0 * bytes,
            "GB/s",
            &|| "batchnorm stats_partial + stats_finish + apply".to_string(),
            &mut || ops::batch_norm2d(&x, &gamma, &beta, Some((&rm, &rv)), cfg).map(|_| ()),
        );
        let stats = ops::batch_norm2d(&x, &gamma, &beta, None, cfg).unwrap();
        drop(stats);
        let gy = rand_tensor(&gpu, x.shape(), 8);
        let stats = {
            // Batch statistics as the forward kernel leaves them, for the backward alone.
            let mut v = vec![0f32; 3 * 256];
            v[256..512].fill(1.0);
            v[512..].fill(1.0);
            Tensor::from_slice(&gpu, &v, &[3, 256]).unwrap()
        };
        // Backward reads x and dy twice (sums, then the input gradient) and writes dx.
        time(
            format!("{name}/backward"),
            5.0 * bytes,
            "GB/s",
            &|| "batchnorm bwd_partial + bwd_combine + bwd_apply".to_string(),
            &mut || {
                ops::norm::batch_norm2d_backward(&x, &gamma, &beta, &stats, &cfg, &gy, true)
                    .map(|_| ())
            },
        );
    }

    println!();
    println!(
        "{:<34} {:>10} {:>9}  {:>11} {:>9}  {:>8}          kernel",
        "case (batch 4)", "ms", "rate", "PyTorch ms", "rate", "pt/ours"
    );
    for r in &rows {
        let scale = 1e9; // GFLOP/s or GB/s
        let rate = r.work / (r.ms / 1e3) / scale;
        let pt = torch
            .as_ref()
            .ok()
            .and_then(|(_, m)| m.get(&r.case).copied());
        let (pt_ms, pt_rate, ratio) = match pt {
            Some(p) => (
                format!("{p:.3}"),
                format!("{:.1}", r.work / (p / 1e3) / scale),
                format!("{:.1}%", 100.0 * p / r.ms),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "{:<34} {:>10.3} {:>9.2}  {:>11} {:>9}  {:>8}   {:<7} {}",
            r.case, r.ms, rate, pt_ms, pt_rate, ratio, r.unit, r.kernel
        );
    }
    println!("\npt/ours = PyTorch time / our time (100% = parity). kernel = the variant run (autotuned where several apply).");
}
