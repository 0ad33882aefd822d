//! CNN ops against naive CPU references: batch 1 and > 1, odd sizes, channel counts that are
//! no multiple of 4 or 8, stride 2 with odd inputs, padding > 0.

mod common;

use apga_gpu::ops;
use common::*;

#[test]
fn conv2d_matches_cpu() {
    let mut r = rng(11);
    for &(n, ci, h, w, co, k, s, p) in CONVS {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * k * k, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        for bias in [false, true] {
            let (want, shape) = cpu_conv2d(
                &x,
                [n, ci, h, w],
                &wt,
                [co, ci, k, k],
                bias.then_some(&b[..]),
                s,
                p,
            );
            let bt = tensor(&b, &[co]);
            let got = ops::conv2d(
                &tensor(&x, &[n, ci, h, w]),
                &tensor(&wt, &[co, ci, k, k]),
                bias.then_some(&bt),
                s,
                p,
            )
            .unwrap();
            assert_eq!(got.shape(), &shape);
            assert_close(
                &format!("conv2d {:?} bias {bias}", (n, ci, h, w, co, k, s, p)),
                &got.to_vec().unwrap(),
                &want,
                1e-4,
                1e-4,
            );
        }
    }
}

/// (n, ci, h, w, co, k, stride, pad, output_padding)
const TCONVS: &[ConvTCase] = &[
    (1, 3, 4, 4, 2, 3, 2, 1, 1), // UNet11 decoder geometry
    (2, 5, 3, 5, 9, 3, 2, 1, 1),
    (1, 2, 5, 4, 3, 3, 1, 1, 0),
    (2, 4, 3, 3, 3, 4, 2, 1, 0),
    (1, 1, 2, 3, 1, 3, 3, 0, 2),
];

#[test]
fn conv_transpose2d_matches_cpu() {
    let mut r = rng(12);
    for &(n, ci, h, w, co, k, s, p, op) in TCONVS {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, ci * co * k * k, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        let (want, shape) =
            cpu_conv_transpose2d(&x, [n, ci, h, w], &wt, [ci, co, k, k], Some(&b), s, p, op);
        let got = ops::conv_transpose2d(
            &tensor(&x, &[n, ci, h, w]),
            &tensor(&wt, &[ci, co, k, k]),
            Some(&tensor(&b, &[co])),
            s,
            p,
            op,
        )
        .unwrap();
        assert_eq!(got.shape(), &shape);
        assert_close(
            &format!("conv_transpose2d {:?}", (n, ci, h, w, co, k, s, p, op)),
            &got.to_vec().unwrap(),
            &want,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn conv_shape_errors_are_values() {
    let x = tensor(&[0.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]);
    let w = tensor(&[0.0; 5 * 2 * 3 * 3], &[5, 2, 3, 3]);
    let e = ops::conv2d(&x, &w, None, 1, 1).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
    let w = tensor(&[0.0; 5 * 3 * 7 * 7], &[5, 3, 7, 7]);
    assert!(
        ops::conv2d(&x, &w, None, 1, 0).is_err(),
        "kernel larger than input"
    );
    assert!(ops::conv2d(&x, &w, None, 0, 3).is_err(), "stride 0");
    let wt = tensor(&[0.0; 3 * 2 * 3 * 3], &[3, 2, 3, 3]);
    assert!(
        ops::conv_transpose2d(&x, &wt, None, 2, 1, 2).is_err(),
        "output_padding >= stride"
    );
    assert!(
        ops::conv2d(&tensor(&[0.0; 4], &[4]), &w, None, 1, 0).is_err(),
        "not NCHW"
    );
}

#[test]
fn concat_narrow_and_slices_match_cpu() {
    // Each slice copy runs as the `copy_channels` kernel or as one buffer copy per outer
    // index (`copy-slices`), each forced here; the kernel's context must have run it.
    for variant in ["kernel", "copies"] {
        let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
            kernel_overrides: vec![("copy-slices".into(), variant.into())],
            profile: true,
            ..Default::default()
        })
        .unwrap();
        let tensor = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
        let mut r = rng(13);
        let a = uniform(&mut r, 2 * 3 * 5, -1.0, 1.0);
        let b = uniform(&mut r, 2 * 2 * 5, -1.0, 1.0);
        let c = ops::concat(&[&tensor(&a, &[2, 3, 5]), &tensor(&b, &[2, 2, 5])], 1).unwrap();
        assert_eq!(c.shape(), &[2, 5, 5]);
        let cv = c.to_vec().unwrap();
        for n in 0..2 {
            assert_eq!(&cv[n * 25..n * 25 + 15], &a[n * 15..n * 15 + 15]);
            assert_eq!(&cv[n * 25 + 15..n * 25 + 25], &b[n * 10..n * 10 + 10]);
        }
        let back = ops::narrow(&c, 1, 3, 2).unwrap().to_vec().unwrap();
        assert_eq!(back, b);
        // Along the last axis: runs of one value; along the first: one contiguous run.
        let last = ops::narrow(&c, 2, 1, 3).unwrap().to_vec().unwrap();
        let want: Vec<f32> = cv.chunks(5).flat_map(|r| r[1..4].to_vec()).collect();
        assert_eq!(last, want, "{variant}");
        assert_eq!(
            ops::narrow(&c, 0, 1, 1).unwrap().to_vec().unwrap(),
            &cv[25..]
        );
        let padded = ops::pad_axis(&tensor(&b, &[2, 2, 5]), 1, 1, 4)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(&padded[0..5], &[0.0; 5]);
        assert_eq!(&padded[5..15], &b[0..10]);
        assert_eq!(&padded[15..25], &[0.0; 10]);
        assert_eq!(&padded[25..35], &b[10..20]);
        // A block buffer written in place, channel range by channel range.
        let block = ops::pad_axis(&tensor(&a, &[2, 3, 5]), 1, 0, 5).unwrap();
        let block = ops::write_slice(&block, &tensor(&b, &[2, 2, 5]), 1, 3).unwrap();
        assert_eq!(block.to_vec().unwrap(), cv, "{variant}");
        assert!(ops::concat(&[&tensor(&a, &[2, 3, 5]), &tensor(&b, &[1, 2, 10])], 1).is_err());
        assert!(ops::narrow(&c, 1, 4, 2).is_err());
        assert!(ops::write_slice(&block, &tensor(&b, &[2, 2, 5]), 1, 4).is_err());
        let ran = g.profile_report().unwrap().unwrap().table(100);
        let kernel_ran = ran.contains("layout::copy_channels");
        assert_eq!(kernel_ran, variant == "kernel", "{variant}:\n{ran}");
    }
}

#[test]
fn batch_norm_matches_cpu_in_train_and_eval() {
    let mut r = rng(14);
    for &(n, c, h, w) in &[
        (1usize, 3usize, 5usize, 7usize),
        (4, 5, 3, 3),
        (2, 13, 1, 1),
        // More pixels than reduction lanes (64), not a multiple of them.
        (3, 4, 11, 13),
        // Planes of whole quads (the vec4 kernels): 80 quads over 64 lanes, and one quad.
        (2, 3, 16, 20),
        (3, 2, 2, 2),
    ] {
        let x = uniform(&mut r, n * c * h * w, -2.0, 3.0);
        let gamma = uniform(&mut r, c, 0.5, 1.5);
        let beta = uniform(&mut r, c, -0.5, 0.5);
        let rm0 = uniform(&mut r, c, -0.2, 0.2);
        let rv0 = uniform(&mut r, c, 0.5, 1.5);
        for (training, relu) in [(true, false), (true, true), (false, false), (false, true)] {
            let rm = tensor(&rm0, &[c]);
            let rv = tensor(&rv0, &[c]);
            let cfg = ops::BatchNormConfig {
                training,
                relu,
                ..Default::default()
            };
            let got = ops::batch_norm2d(
                &tensor(&x, &[n, c, h, w]),
                &tensor(&gamma, &[c]),
                &tensor(&beta, &[c]),
                Some((&rm, &rv)),
                cfg,
            )
            .unwrap();
            let (want, wrm, wrv) = cpu_batch_norm(
                &x,
                [n, c, h, w],
                &gamma,
                &beta,
                &rm0,
                &rv0,
                training,
                0.1,
                1e-5,
                relu,
            );
            let what = format!("batch_norm {:?} train {training} relu {relu}", (n, c, h, w));
            assert_close(&what, &got.to_vec().unwrap(), &want, 1e-4, 1e-4);
            assert_close(
                &format!("{what} running mean"),
                &rm.to_vec().unwrap(),
                &wrm,
                1e-6,
                1e-5,
            );
            assert_close(
                &format!("{what} running var"),
                &rv.to_vec().unwrap(),
                &wrv,
                1e-6,
                1e-5,
            );
        }
    }
    let x = tensor(&[1.0; 3], &[1, 3, 1, 1]);
    let g = tensor(&[1.0; 3], &[3]);
    let e = ops::batch_norm2d(&x, &g, &g, None, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than one value"), "{e}");
    let eval = ops::BatchNormConfig {
        training: false,
        ..Default::default()
    };
    assert!(
        ops::batch_norm2d(&x, &g, &g, None, eval).is_err(),
        "eval needs running stats"
    );
}

#[test]
fn pooling_matches_cpu() {
    let mut r = rng(15);
    // (n, c, h, w, k, s, p): DenseNet stem 3/2/1 on odd sizes, VGG 2/2/0, transition 2/2.
    for &(n, c, h, w, k, s, p) in &[
        (1usize, 1usize, 7usize, 7usize, 3usize, 2usize, 1usize),
        (2, 3, 9, 8, 3, 2, 1),
        (2, 5, 8, 6, 2, 2, 0),
        (1, 2, 7, 5, 2, 2, 0),
        (1, 3, 6, 6, 3, 1, 1),
    ] {
        let x = uniform(&mut r, n * c * h * w, -1.0, 1.0);
        let t = tensor(&x, &[n, c, h, w]);
        let (want, shape) = cpu_pool(&x, [n, c, h, w], k, s, p, true);
        let got = ops::max_pool2d(&t, k, s, p).unwrap();
        assert_eq!(got.shape(), &shape);
        assert_close(
            &format!("max_pool {:?}", (n, c, h, w, k, s, p)),
            &got.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
        );
        let (want, _) = cpu_pool(&x, [n, c, h, w], k, s, p, false);
        let got = ops::avg_pool2d(&t, k, s, p).unwrap();
        assert_close(
            &format!("avg_pool {:?}", (n, c, h, w, k, s, p)),
            &got.to_vec().unwrap(),
            &want,
            1e-6,
            1e-5,
        );
    }
    let x = uniform(&mut r, 2 * 3 * 5 * 7, -1.0, 1.0);
    let got = ops::global_avg_pool2d(&tensor(&x, &[2, 3, 5, 7])).unwrap();
    assert_eq!(got.shape(), &[2, 3, 1, 1]);
    let want: Vec<f32> = x.chunks(35).map(|c| c.iter().sum::<f32>() / 35.0).collect();
    assert_close("global_avg_pool", &got.to_vec().unwrap(), &want, 1e-6, 1e-5);
    assert!(
        ops::max_pool2d(&tensor(&x, &[2, 3, 5, 7]), 3, 2, 2).is_err(),
        "padding > k/2"
    );
    // Ties (a ReLU's zeros): each window's gradient goes to its first valid position in scan
    // order, as PyTorch's. 3x3 windows, stride 2, padding 1 over a 5x5 plane of zeros (3x3
    // outputs; 9 outputs, an odd count, so the packed window positions end mid-word).
    let xt = tensor(&[0.0; 25], &[1, 1, 5, 5]).with_grad();
    let tape = apga_gpu::Tape::new();
    let y = ops::max_pool2d(&xt, 3, 2, 1).unwrap();
    let grads = tape.backward(&ops::sum_all(&y).unwrap()).unwrap();
    let mut want = vec![0.0f32; 25];
    for oy in 0..3usize {
        for ox in 0..3usize {
            // First valid pixel of the window starting at (2 oy - 1, 2 ox - 1).
            let (iy, ix) = ((2 * oy).saturating_sub(1), (2 * ox).saturating_sub(1));
            want[iy * 5 + ix] += 1.0;
        }
    }
    assert_close(
        "max_pool backward with ties",
        &grads.get(&xt).unwrap().to_vec().unwrap(),
        &want,
        0.0,
        0.0,
    );
}

#[test]
fn upsampling_matches_cpu() {
    let mut r = rng(16);
    // GradCAM's 7x7 -> 224x224, odd ratios up and down, one axis unchanged.
    for &(n, c, h, w, oh, ow) in &[
        (1usize, 1usize, 7usize, 7usize, 224usize, 224usize),
        (2, 3, 5, 4, 9, 11),
        (1, 2, 9, 8, 4, 3),
        (1, 1, 3, 5, 3, 10),
    ] {
        let x = uniform(&mut r, n * c * h * w, -1.0, 1.0);
        let t = tensor(&x, &[n, c, h, w]);
        for bilinear in [false, true] {
            let want = cpu_upsample(&x, [n, c, h, w], [oh, ow], bilinear);
            let got = if bilinear {
                ops::upsample_bilinear2d(&t, [oh, ow])
            } else {
                ops::upsample_nearest2d(&t, [oh, ow])
            }
            .unwrap();
            assert_eq!(got.shape(), &[n, c, oh, ow]);
            assert_close(
                &format!("upsample bilinear {bilinear} {:?}", (h, w, oh, ow)),
                &got.to_vec().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn losses_match_cpu() {
    let mut r = rng(17);
    let (rows, k) = (5, 3);
    let z = uniform(&mut r, rows * k, -3.0, 3.0);
    let labels = [0usize, 2, 1, 1, 0];
    let got = ops::cross_entropy(&tensor(&z, &[rows, k]), &labels)
        .unwrap()
        .item()
        .unwrap();
    let want: f64 = (0..rows)
        .map(|i| {
            let row = &z[i * k..(i + 1) * k];
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = m + row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
            lse - row[labels[i]] as f64
        })
        .sum::<f64>()
        / rows as f64;
    assert!(
        (got as f64 - want).abs() < 1e-5,
        "cross_entropy {got} vs {want}"
    );
    let e = ops::cross_entropy(&tensor(&z, &[rows, k]), &[0, 3, 0, 0, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 3"), "{e}");

    // Probabilities including exact 0 and 1 (the -100 clamp) and targets in [0, 1].
    let p = [0.0f32, 1.0, 0.3, 0.999, 1e-8, 0.5];
    let t = [1.0f32, 0.0, 0.3, 1.0, 0.0, 0.5];
    let got = ops::binary_cross_entropy(&tensor(&p, &[6]), &tensor(&t, &[6]))
        .unwrap()
        .item()
        .unwrap();
    let want: f64 = p
        .iter()
        .zip(&t)
        .map(|(&p, &t)| {
            -(t as f64 * (p as f64).ln().max(-100.0)
                + (1.0 - t as f64) * (1.0 - p as f64).ln().max(-100.0))
        })
        .sum::<f64>()
        / 6.0;
    assert!(
        (got as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
        "bce {got} vs {want}"
    );

    let z = [-50.0f32, -3.0, 0.0, 2.5, 40.0];
    let t = [0.0f32, 1.0, 0.5, 0.0, 1.0];
    let got = ops::binary_cross_entropy_with_logits(&tensor(&z, &[5]), &tensor(&t, &[5]))
        .unwrap()
        .item()
        .unwrap();
    let want: f64 = z
        .iter()
        .zip(&t)
        .map(|(&z, &t)| {
            let (z, t) = (z as f64, t as f64);
            z.max(0.0) - z * t + (1.0 + (-z.abs()).exp()).ln()
        })
        .sum::<f64>()
        / 5.0;
    assert!(
        (got as f64 - want).abs() < 1e-5,
        "bce_with_logits {got} vs {want}"
    );
}

#[test]
fn linear_matches_cpu() {
    let mut r = rng(18);
    let x = uniform(&mut r, 3 * 5, -1.0, 1.0);
    let w = uniform(&mut r, 4 * 5, -1.0, 1.0);
    let b = uniform(&mut r, 4, -1.0, 1.0);
    let got = ops::linear(
        &tensor(&x, &[3, 5]),
        &tensor(&w, &[4, 5]),
        Some(&tensor(&b, &[4])),
    )
    .unwrap();
    let mut want = cpu_matmul(&x, &w, 3, 4, 5, false, true);
    for (i, v) in want.iter_mut().enumerate() {
        *v += b[i % 4];
    }
    assert_close("linear", &got.to_vec().unwrap(), &want, 1e-5, 1e-5);
}

/// Batch norm's forward (output, running statistics) and backward (dx, dgamma, dbeta) on `g`.
/// Without `want_x` the input needs no gradient (dx is then empty).
fn bn_values(g: &apga_gpu::Gpu, shape: [usize; 4], relu: bool, want_x: bool) -> Vec<Vec<f32>> {
    let [n, c, h, w] = shape;
    let mut r = rng(23);
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(g, v, s).unwrap();
    let x = t(&uniform(&mut r, n * c * h * w, -2.0, 3.0), &shape);
    let x = if want_x { x.with_grad() } else { x };
    let gamma = t(&uniform(&mut r, c, 0.5, 1.5), &[c]).with_grad();
    let beta = t(&uniform(&mut r, c, -0.5, 0.5), &[c]).with_grad();
    let (rm, rv) = (t(&vec![0.1; c], &[c]), t(&vec![1.2; c], &[c]));
    let gy = t(&uniform(&mut r, n * c * h * w, -1.0, 1.0), &shape);
    let tape = apga_gpu::Tape::new();
    let cfg = ops::BatchNormConfig {
        relu,
        ..Default::default()
    };
    let y = ops::batch_norm2d(&x, &gamma, &beta, Some((&rm, &rv)), cfg).unwrap();
    let loss = ops::sum_all(&ops::mul(&y, &gy).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let mut out = vec![
        y.to_vec().unwrap(),
        rm.to_vec().unwrap(),
        rv.to_vec().unwrap(),
    ];
    for p in [&x, &gamma, &beta] {
        out.push(
            grads
                .get(p)
                .map(|g| g.to_vec().unwrap())
                .unwrap_or_default(),
        );
    }
    out
}

#[test]
fn batch_norm_sum_variants_agree() {
    // The per-channel sums of the statistics and of the backward: partials combined serially
    // (CPU drivers) or by one workgroup per channel with a tree (GPUs), and the one-pass
    // `direct` kernels (one invocation per channel; small planes), each forced here.
    let ctx = |stats: &str, combine: &str| {
        apga_gpu::Gpu::new(apga_gpu::GpuOptions {
            kernel_overrides: vec![
                ("bn-stats".into(), stats.into()),
                ("bn-bwd".into(), stats.into()),
                ("bn-combine".into(), combine.into()),
            ],
            profile: true,
            ..Default::default()
        })
        .unwrap()
    };
    let serial = ctx("partial", "serial");
    let tree = ctx("partial", "workgroup");
    let direct = ctx("direct", "serial");
    // Quads and not; more partials than 64 (n * lanes = 3 * 36) and fewer (2 * 3).
    // With and without the input gradient (the direct backward computes it in the same
    // dispatch where the planes are whole quads).
    for ((shape, relu), want_x) in [
        ([3, 5, 12, 12], false),
        ([2, 4, 3, 5], true),
        ([3, 2, 9, 11], true),
    ]
    .into_iter()
    .flat_map(|case| [(case, true), (case, false)])
    {
        let a = bn_values(&serial, shape, relu, want_x);
        assert_eq!(a[3].is_empty(), !want_x);
        for other in [&tree, &direct] {
            let b = bn_values(other, shape, relu, want_x);
            for (i, what) in ["y", "running mean", "running var", "dx", "dgamma", "dbeta"]
                .iter()
                .enumerate()
            {
                assert_close(&format!("{shape:?} {what}"), &b[i], &a[i], 1e-5, 1e-4);
            }
        }
    }
    for (g, kernels) in [
        (&serial, ["stats_finish", "bwd_combine"]),
        (&tree, ["stats_finish_wg", "bwd_combine_wg"]),
        (&direct, ["stats_direct4", "bwd_direct4 [DX=0]"]),
        (&direct, ["bwd_direct4 [DX=1]", "bwd_direct"]),
        (&direct, ["stats_direct", "bwd_apply"]),
    ] {
        let ran = g.profile_report().unwrap().unwrap().table(100);
        for k in kernels {
            let name = format!("batchnorm::{k}");
            let seen = ran.lines().any(|l| l.trim_end().ends_with(&name));
            assert!(seen, "{k} did not run:\n{ran}");
        }
    }
}

#[test]
fn fused_bn_relu_conv_matches_the_unfused_ops() {
    let mut r = rng(19);
    // x has 7 channels of which the first 5 are normalised and convolved (a block prefix).
    let (n, ct, c, h, w, co) = (2, 7, 5, 6, 5, 3);
    let x = tensor(&uniform(&mut r, n * ct * h * w, -2.0, 2.0), &[n, ct, h, w]);
    let gamma = tensor(&uniform(&mut r, c, 0.5, 1.5), &[c]);
    let beta = tensor(&uniform(&mut r, c, -0.5, 0.5), &[c]);
    for (k, s, p) in [(1, 1, 0), (3, 1, 1), (3, 2, 1)] {
        let wt = tensor(&uniform(&mut r, co * c * k * k, -0.5, 0.5), &[co, c, k, k]);
        for training in [true, false] {
            let rm1 = tensor(&[0.1; 5], &[c]);
            let rv1 = tensor(&[1.5; 5], &[c]);
            let rm2 = tensor(&[0.1; 5], &[c]);
            let rv2 = tensor(&[1.5; 5], &[c]);
            let cfg = ops::BatchNormConfig {
                training,
                ..Default::default()
            };
            let fused =
                ops::bn_relu_conv2d(&x, c, &gamma, &beta, Some((&rm1, &rv1)), cfg, &wt, s, p)
                    .unwrap();
            let slice = ops::narrow(&x, 1, 0, c).unwrap();
            let bn = ops::batch_norm2d(
                &slice,
                &gamma,
                &beta,
                Some((&rm2, &rv2)),
                ops::BatchNormConfig { relu: true, ..cfg },
            )
            .unwrap();
            let unfused = ops::conv2d(&bn, &wt, None, s, p).unwrap();
            let what = format!("bn_relu_conv k{k} s{s} train {training}");
            assert_eq!(fused.shape(), unfused.shape());
            assert_close(
                &what,
                &fused.to_vec().unwrap(),
                &unfused.to_vec().unwrap(),
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} running var"),
                &rv1.to_vec().unwrap(),
                &rv2.to_vec().unwrap(),
                1e-7,
                1e-6,
            );
        }
    }
}
