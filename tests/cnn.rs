//! CNN ops against naive CPU references: batch 1 and > 1, odd sizes, channel counts that are
//! no multiple of 4 or 8, stride 2 with odd inputs, padding > 0.

mod common;

use apga_gpu::ops;
use common::*;

/// (n, ci, h, w, co, k, stride, pad)
const CONVS: &[ConvCase] = &[
    (1, 1, 5, 5, 1, 3, 1, 1),
    (2, 3, 7, 9, 5, 3, 1, 1),
    (2, 3, 11, 9, 10, 7, 2, 3), // DenseNet stem shape, odd input
    (3, 13, 6, 5, 9, 1, 1, 0),  // bottleneck 1x1, channels no multiple of 8
    (1, 4, 9, 7, 17, 3, 2, 0),
    (2, 2, 4, 4, 3, 3, 1, 2), // padding larger than half the kernel
];

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
    let padded = ops::pad_axis(&tensor(&b, &[2, 2, 5]), 1, 1, 4)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(&padded[0..5], &[0.0; 5]);
    assert_eq!(&padded[5..15], &b[0..10]);
    // A block buffer written in place, channel range by channel range.
    let block = ops::pad_axis(&tensor(&a, &[2, 3, 5]), 1, 0, 5).unwrap();
    let block = ops::write_slice(&block, &tensor(&b, &[2, 2, 5]), 1, 3).unwrap();
    assert_eq!(block.to_vec().unwrap(), cv);
    assert!(ops::concat(&[&tensor(&a, &[2, 3, 5]), &tensor(&b, &[1, 2, 10])], 1).is_err());
    assert!(ops::narrow(&c, 1, 4, 2).is_err());
    assert!(ops::write_slice(&block, &tensor(&b, &[2, 2, 5]), 1, 4).is_err());
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

#[test]
fn conv1x1_gemm_path_matches_cpu() {
    // With autotuning off the 1x1 GEMM kernel is the default wherever it applies (hw and the
    // reduced channels multiples of 4), so this context exercises it deterministically; the
    // second context forces the subgroup variant of the GEMM where the adapter has subgroups.
    for overrides in [vec![], vec![("gemm-batched".into(), "subgroup".into())]] {
        let forced = !overrides.is_empty();
        let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
            autotune: false,
            kernel_overrides: overrides,
            profile: true,
            ..Default::default()
        })
        .unwrap();
        conv1x1_gemm_matches_cpu_on(&g);
        // The profiler saw the kernel the context was meant to run.
        let ran = g.profile_report().unwrap().unwrap().table(100);
        let want = if forced && g.has_subgroups() {
            "conv1x1_subgroup::main"
        } else {
            "conv1x1::main"
        };
        assert!(ran.contains(want), "{want} did not run:\n{ran}");
    }
}

fn conv1x1_gemm_matches_cpu_on(g: &apga_gpu::Gpu) {
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(g, v, s).unwrap();
    let mut r = rng(20);
    // (n, ci, h, w, co): rows and columns no multiple of 8, a single image, DenseNet-like.
    for &(n, ci, h, w, co) in &[
        (2usize, 8usize, 4usize, 6usize, 5usize),
        (1, 12, 2, 2, 9),
        (3, 4, 7, 4, 12),
        (2, 32, 8, 8, 16),
    ] {
        let hw = h * w;
        let x = uniform(&mut r, n * ci * hw, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        let gy = uniform(&mut r, n * co * hw, -1.0, 1.0);
        let xt = t(&x, &[n, ci, h, w]).with_grad();
        let wtt = t(&wt, &[co, ci, 1, 1]).with_grad();
        let tape = apga_gpu::Tape::new();
        let y = ops::conv2d(&xt, &wtt, Some(&t(&b, &[co])), 1, 0).unwrap();
        let (want, _) = cpu_conv2d(&x, [n, ci, h, w], &wt, [co, ci, 1, 1], Some(&b), 1, 0);
        assert_close(
            &format!("conv1x1 gemm forward {:?}", (n, ci, h, w, co)),
            &y.to_vec().unwrap(),
            &want,
            1e-4,
            1e-4,
        );
        let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let (dx, dw) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, 1, 1], &gy, 1, 0);
        assert_close(
            "conv1x1 gemm input grad",
            &grads.get(&xt).unwrap().to_vec().unwrap(),
            &dx,
            1e-4,
            1e-4,
        );
        assert_close(
            "conv1x1 weight grad",
            &grads.get(&wtt).unwrap().to_vec().unwrap(),
            &dw,
            1e-4,
            1e-4,
        );
    }
    // The fused BN+ReLU prologue on a channel prefix of a block buffer.
    check_prologue(
        g,
        "conv1x1 gemm with prologue",
        &mut r,
        (2, 12, 8, 4, 4, 6),
        1,
        0,
    );
}

#[test]
fn conv_forward_strip_variant_matches_cpu() {
    // The 8x8 row-strip forward kernel, forced for every convolution of this context.
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: vec![("conv-fwd".into(), "strip".into())],
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
    let mut r = rng(21);
    for &(n, ci, h, w, co, k, s, p) in CONVS
        .iter()
        .chain(&[(2, 4, 9, 19, 6, 3, 1, 1), (1, 8, 8, 12, 8, 1, 1, 0)])
    {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * k * k, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        let (want, _) = cpu_conv2d(&x, [n, ci, h, w], &wt, [co, ci, k, k], Some(&b), s, p);
        let got = ops::conv2d(
            &t(&x, &[n, ci, h, w]),
            &t(&wt, &[co, ci, k, k]),
            Some(&t(&b, &[co])),
            s,
            p,
        )
        .unwrap();
        assert_close(
            &format!("conv2d strip {:?}", (n, ci, h, w, co, k, s, p)),
            &got.to_vec().unwrap(),
            &want,
            1e-4,
            1e-4,
        );
    }
    // Through the batch-norm prologue, on a channel prefix.
    check_prologue(
        &g,
        "conv2d strip with prologue",
        &mut r,
        (2, 7, 5, 6, 11, 3),
        3,
        1,
    );
    // The override named a variant that ran (the profiler saw it), not a silent default.
    let ran = g.profile_report().unwrap().unwrap().table(100);
    assert!(
        ran.contains("conv2d::fwd_strip"),
        "strip did not run:\n{ran}"
    );
}

#[test]
fn conv_input_gradient_strip_variant_matches_cpu() {
    // The stride-1 row-strip input-gradient kernel, forced for every convolution of this
    // context; checked against the scatter definition of the input gradient, and through
    // conv_transpose2d's forward (which is the same kernel).
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: vec![("conv-dgrad".into(), "strip".into())],
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let mut r = rng(22);
    for &(n, ci, h, w, co, k, p) in &[
        (2usize, 3usize, 7usize, 9usize, 5usize, 3usize, 1usize),
        (1, 9, 5, 13, 4, 3, 1),
        (2, 2, 6, 6, 3, 3, 2),
        (1, 4, 8, 12, 6, 1, 0),
        (1, 3, 9, 10, 2, 7, 3),
    ] {
        check_input_gradient(&g, "dgrad strip", &mut r, (n, ci, h, w, co, k, 1, p));
    }
    check_conv_transpose(
        &g,
        "conv_transpose2d via dgrad strip",
        &mut r,
        (2, 4, 5, 7, 3),
        (1, 1, 0),
    );
    let ran = g.profile_report().unwrap().unwrap().table(100);
    assert!(
        ran.contains("conv2d::dgrad_strip"),
        "strip did not run:\n{ran}"
    );
}

/// The input gradient of conv2d on context `g` (whose overrides pick the variant under test)
/// against the CPU scatter definition, for (n, ci, h, w, co, k, stride, pad).
fn check_input_gradient(
    g: &apga_gpu::Gpu,
    what: &str,
    r: &mut rand::rngs::StdRng,
    (n, ci, h, w, co, k, s, p): ConvCase,
) {
    let t = |v: &[f32], sh: &[usize]| apga_gpu::Tensor::from_slice(g, v, sh).unwrap();
    let x = uniform(r, n * ci * h * w, -1.0, 1.0);
    let wt = uniform(r, co * ci * k * k, -1.0, 1.0);
    let xt = t(&x, &[n, ci, h, w]).with_grad();
    let tape = apga_gpu::Tape::new();
    let y = ops::conv2d(&xt, &t(&wt, &[co, ci, k, k]), None, s, p).unwrap();
    let gy = uniform(r, y.numel(), -1.0, 1.0);
    let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let (want, _) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, k, k], &gy, s, p);
    assert_close(
        &format!("{what} {:?}", (n, ci, h, w, co, k, s, p)),
        &grads.get(&xt).unwrap().to_vec().unwrap(),
        &want,
        1e-4,
        1e-4,
    );
}

/// conv_transpose2d (3x3 kernel, with bias) on context `g` against the CPU reference, for
/// input (n, ci, h, w), co output channels and (stride, padding, output padding).
fn check_conv_transpose(
    g: &apga_gpu::Gpu,
    what: &str,
    r: &mut rand::rngs::StdRng,
    (n, ci, h, w, co): (usize, usize, usize, usize, usize),
    (s, p, op): (usize, usize, usize),
) {
    let t = |v: &[f32], sh: &[usize]| apga_gpu::Tensor::from_slice(g, v, sh).unwrap();
    let x = uniform(r, n * ci * h * w, -1.0, 1.0);
    let wt = uniform(r, ci * co * 9, -1.0, 1.0);
    let b = uniform(r, co, -1.0, 1.0);
    let (want, _) =
        cpu_conv_transpose2d(&x, [n, ci, h, w], &wt, [ci, co, 3, 3], Some(&b), s, p, op);
    let got = ops::conv_transpose2d(
        &t(&x, &[n, ci, h, w]),
        &t(&wt, &[ci, co, 3, 3]),
        Some(&t(&b, &[co])),
        s,
        p,
        op,
    )
    .unwrap();
    assert_close(what, &got.to_vec().unwrap(), &want, 1e-4, 1e-4);
}

#[test]
fn conv_weight_gradient_8x8_variant_matches_cpu() {
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: vec![("conv-wgrad".into(), "wgrad8".into())],
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
    let mut r = rng(23);
    for &(n, ci, h, w, co, k, s, p) in CONVS {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * k * k, -1.0, 1.0);
        let wtt = t(&wt, &[co, ci, k, k]).with_grad();
        let tape = apga_gpu::Tape::new();
        let y = ops::conv2d(&t(&x, &[n, ci, h, w]), &wtt, None, s, p).unwrap();
        let (oh, ow) = (y.shape()[2], y.shape()[3]);
        let gy = uniform(&mut r, n * co * oh * ow, -1.0, 1.0);
        let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let (_, want) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, k, k], &gy, s, p);
        assert_close(
            &format!("wgrad8 {:?}", (n, ci, h, w, co, k, s, p)),
            &grads.get(&wtt).unwrap().to_vec().unwrap(),
            &want,
            1e-4,
            1e-4,
        );
    }
    check_wgrad_prologue(&g, "wgrad8 with prologue", &mut r);
    let ran = g.profile_report().unwrap().unwrap().table(100);
    assert!(
        ran.contains("conv2d_wgrad::wgrad8"),
        "wgrad8 did not run:\n{ran}"
    );
}

/// The weight gradient of `bn_relu_conv2d` (input read through the batch-norm prologue from
/// a channel prefix) equals that of the unfused ops, on context `g`.
fn check_wgrad_prologue(g: &apga_gpu::Gpu, what: &str, r: &mut rand::rngs::StdRng) {
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(g, v, s).unwrap();
    let (n, ct, c, h, w, co) = (2, 11, 9, 6, 6, 10);
    let x = t(&uniform(r, n * ct * h * w, -2.0, 2.0), &[n, ct, h, w]);
    let gamma = t(&uniform(r, c, 0.5, 1.5), &[c]);
    let beta = t(&uniform(r, c, -0.5, 0.5), &[c]);
    let wt = t(&uniform(r, co * c * 9, -0.5, 0.5), &[co, c, 3, 3]).with_grad();
    let cfg = ops::BatchNormConfig::default();
    let grad_of = |fused: bool| {
        let tape = apga_gpu::Tape::new();
        let y = if fused {
            ops::bn_relu_conv2d(&x, c, &gamma, &beta, None, cfg, &wt, 1, 1).unwrap()
        } else {
            let bn = ops::batch_norm2d(
                &ops::narrow(&x, 1, 0, c).unwrap(),
                &gamma,
                &beta,
                None,
                ops::BatchNormConfig { relu: true, ..cfg },
            )
            .unwrap();
            ops::conv2d(&bn, &wt, None, 1, 1).unwrap()
        };
        let g = tape.backward(&ops::sum_all(&y).unwrap()).unwrap();
        g.get(&wt).unwrap().to_vec().unwrap()
    };
    assert_close(what, &grad_of(true), &grad_of(false), 1e-4, 1e-4);
}

/// Checks `bn_relu_conv2d` on the first `c` of `ct` channels against batch norm + ReLU on the
/// CPU-visible slice followed by the CPU convolution, on context `g` (whose kernel overrides
/// pick the variant under test).
fn check_prologue(
    g: &apga_gpu::Gpu,
    what: &str,
    r: &mut rand::rngs::StdRng,
    (n, ct, c, h, w, co): (usize, usize, usize, usize, usize, usize),
    k: usize,
    pad: usize,
) {
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(g, v, s).unwrap();
    let x = t(&uniform(r, n * ct * h * w, -2.0, 2.0), &[n, ct, h, w]);
    let gamma = t(&uniform(r, c, 0.5, 1.5), &[c]);
    let beta = t(&uniform(r, c, -0.5, 0.5), &[c]);
    let wt = t(&uniform(r, co * c * k * k, -0.5, 0.5), &[co, c, k, k]);
    let cfg = ops::BatchNormConfig::default();
    let fused = ops::bn_relu_conv2d(&x, c, &gamma, &beta, None, cfg, &wt, 1, pad).unwrap();
    let relu_cfg = ops::BatchNormConfig { relu: true, ..cfg };
    let bn = ops::batch_norm2d(
        &ops::narrow(&x, 1, 0, c).unwrap(),
        &gamma,
        &beta,
        None,
        relu_cfg,
    )
    .unwrap();
    let want = cpu_conv2d(
        &bn.to_vec().unwrap(),
        [n, c, h, w],
        &wt.to_vec().unwrap(),
        [co, c, k, k],
        None,
        1,
        pad,
    )
    .0;
    assert_close(what, &fused.to_vec().unwrap(), &want, 1e-4, 1e-4);
}

#[test]
fn conv_im2col_gemm_variants_match_cpu() {
    im2col_gemm_variants_match_cpu(false, "gemm");
}

/// The same with the subgroup variant of the weight-gradient GEMM (where the adapter has
/// subgroups; elsewhere the override names no candidate and the default runs).
#[test]
fn conv_im2col_gemm_subgroup_weight_gradient_matches_cpu() {
    im2col_gemm_variants_match_cpu(false, "gemm_sg");
}

/// The same with wgpu's bounds checks on in the trusted GEMM kernels (`APGA_RUNTIME_CHECKS=1`).
#[test]
fn conv_im2col_gemm_variants_match_cpu_with_bounds_checks() {
    im2col_gemm_variants_match_cpu(true, "gemm");
}

fn im2col_gemm_variants_match_cpu(runtime_checks: bool, wgrad: &str) {
    // Forward, stride-1 input gradient and weight gradient as im2col + GEMM, forced for every
    // convolution of this context, with a workspace of 40 KiB (one image's column buffer of
    // every case fits, several images of most do not, so batches run in image groups). The
    // profiler confirms which kernels ran.
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        runtime_checks,
        autotune: false,
        kernel_overrides: vec![
            ("conv-fwd".into(), "im2col".into()),
            ("conv-wgrad".into(), wgrad.into()),
            ("conv-dgrad".into(), "im2col".into()),
            ("gemm-batched".into(), "subgroup".into()),
        ],
        workspace_bytes: 40 << 10,
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
    let mut r = rng(24);
    // (n, ci, h, w, co, k, stride, pad): output pixels a multiple of 4 (the GEMM's vec4 rows);
    // ci * k * k not a multiple of 4 (padded taps), stride 2, 7x7, 1x1 strided, co not a
    // multiple of 8.
    for &(n, ci, h, w, co, k, s, p) in &[
        (
            3usize, 3usize, 8usize, 6usize, 5usize, 3usize, 1usize, 1usize,
        ),
        (2, 4, 9, 9, 9, 3, 2, 0),
        (2, 3, 16, 16, 4, 7, 2, 3),
        (1, 8, 8, 8, 8, 1, 2, 0),
        (4, 17, 6, 6, 16, 3, 1, 1),
        (2, 5, 4, 6, 8, 3, 1, 2), // padding k - 1: the input gradient's own padding is 0
        (1, 4, 8, 8, 12, 5, 1, 2),
    ] {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * k * k, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        let wtt = t(&wt, &[co, ci, k, k]).with_grad();
        let xt = t(&x, &[n, ci, h, w]).with_grad();
        let tape = apga_gpu::Tape::new();
        let y = ops::conv2d(&xt, &wtt, Some(&t(&b, &[co])), s, p).unwrap();
        let what = format!("{:?}", (n, ci, h, w, co, k, s, p));
        let (want, _) = cpu_conv2d(&x, [n, ci, h, w], &wt, [co, ci, k, k], Some(&b), s, p);
        assert_close(
            &format!("im2col forward {what}"),
            &y.to_vec().unwrap(),
            &want,
            1e-4,
            1e-4,
        );
        let gy = uniform(&mut r, y.numel(), -1.0, 1.0);
        let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let (want_x, want_w) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, k, k], &gy, s, p);
        assert_close(
            &format!("input gradient {what}"),
            &grads.get(&xt).unwrap().to_vec().unwrap(),
            &want_x,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("GEMM weight gradient {what}"),
            &grads.get(&wtt).unwrap().to_vec().unwrap(),
            &want_w,
            1e-4,
            1e-4,
        );
    }
    // The transposed convolution's weight gradient (roles of input and gradient swapped).
    let (n, ci, h, w, co) = (2, 4, 4, 5, 3);
    let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
    let wt = uniform(&mut r, ci * co * 9, -1.0, 1.0);
    let wtt = t(&wt, &[ci, co, 3, 3]).with_grad();
    let tape = apga_gpu::Tape::new();
    let y = ops::conv_transpose2d(&t(&x, &[n, ci, h, w]), &wtt, None, 2, 1, 1).unwrap();
    let gy = uniform(&mut r, y.numel(), -1.0, 1.0);
    let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    // conv_transpose2d(x, w) is the input gradient of conv2d(., w) at its output x, so its
    // weight gradient is conv2d's weight gradient with input gy and output gradient x.
    let (oh, ow) = (y.shape()[2], y.shape()[3]);
    let (_, want_w) = cpu_conv2d_grads(&gy, [n, co, oh, ow], &wt, [ci, co, 3, 3], &x, 2, 1);
    assert_close(
        "GEMM weight gradient of conv_transpose2d",
        &grads.get(&wtt).unwrap().to_vec().unwrap(),
        &want_w,
        1e-4,
        1e-4,
    );
    // Through the batch-norm prologue, on a channel prefix (forward).
    check_prologue(
        &g,
        "im2col with prologue",
        &mut r,
        (2, 7, 5, 4, 11, 3),
        3,
        1,
    );
    check_wgrad_prologue(&g, "GEMM weight gradient with prologue", &mut r);
    let ran = g.profile_report().unwrap().unwrap().table(100);
    // The subgroup weight gradient is a candidate only where the adapter has subgroups.
    let wgrad_ran = wgrad == "gemm" || g.has_subgroups();
    for k in ["conv_gemm::im2col", "layout::flip_transpose", "conv1x1"]
        .into_iter()
        .chain(wgrad_ran.then_some("wgrad_gemm"))
    {
        assert!(ran.contains(k), "{k} did not run:\n{ran}");
    }
}

#[test]
fn conv_input_gradient_col2im_variant_matches_cpu() {
    // Input gradient as GEMM + col2im (any stride), forced, with a small workspace; checked
    // through conv2d's backward and conv_transpose2d's forward (the same direction).
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: vec![("conv-dgrad".into(), "col2im".into())],
        workspace_bytes: 40 << 10,
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let mut r = rng(25);
    for &(n, ci, h, w, co, k, s, p) in &[
        (
            3usize, 3usize, 8usize, 6usize, 8usize, 3usize, 1usize, 1usize,
        ),
        (2, 5, 9, 9, 4, 3, 2, 0),
        (2, 3, 16, 16, 4, 7, 2, 3),
        (1, 6, 8, 8, 12, 1, 2, 0),
    ] {
        check_input_gradient(
            &g,
            "col2im input gradient",
            &mut r,
            (n, ci, h, w, co, k, s, p),
        );
    }
    // UNet11's decoder up-sampling: conv_transpose2d k3 s2 p1 output_padding 1, with bias.
    check_conv_transpose(
        &g,
        "conv_transpose2d via col2im",
        &mut r,
        (2, 8, 4, 3, 5),
        (2, 1, 1),
    );
    let ran = g.profile_report().unwrap().unwrap().table(100);
    assert!(
        ran.contains("conv_gemm::col2im"),
        "col2im did not run:\n{ran}"
    );
}
