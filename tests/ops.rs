//! Every op's GPU forward against a naive CPU reference on random inputs: batch 1 and > 1,
//! odd sizes, sizes that are not multiples of any workgroup or tile size, broadcasting.

mod common;

use apga_gpu::ops::{self, MatmulVariant};
use common::*;

#[test]
fn unary_ops_match_cpu() {
    let mut r = rng(1);
    // 1000 and 70_001 elements: a partial last workgroup, several hundred workgroups.
    for n in [1usize, 1000, 70_001] {
        let x = uniform(&mut r, n, -3.0, 3.0);
        let pos: Vec<f32> = x.iter().map(|v| v.abs() + 0.1).collect();
        let t = tensor(&x, &[n]);
        let tp = tensor(&pos, &[n]);
        let cases: Vec<(&str, apga_gpu::Tensor, Vec<f32>)> = vec![
            (
                "relu",
                ops::relu(&t).unwrap(),
                x.iter().map(|v| v.max(0.0)).collect(),
            ),
            (
                "sigmoid",
                ops::sigmoid(&t).unwrap(),
                x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            ),
            (
                "exp",
                ops::exp(&t).unwrap(),
                x.iter().map(|v| v.exp()).collect(),
            ),
            (
                "log",
                ops::log(&tp).unwrap(),
                pos.iter().map(|v| v.ln()).collect(),
            ),
            (
                "add_scalar",
                ops::add_scalar(&t, 1.5).unwrap(),
                x.iter().map(|v| v + 1.5).collect(),
            ),
            (
                "mul_scalar",
                ops::mul_scalar(&t, -2.0).unwrap(),
                x.iter().map(|v| v * -2.0).collect(),
            ),
            ("neg", ops::neg(&t).unwrap(), x.iter().map(|v| -v).collect()),
            (
                "ge_scalar",
                ops::ge_scalar(&t, 0.5).unwrap(),
                x.iter()
                    .map(|v| if *v >= 0.5 { 1.0 } else { 0.0 })
                    .collect(),
            ),
            (
                "gt_scalar",
                ops::gt_scalar(&t, 0.0).unwrap(),
                x.iter().map(|v| if *v > 0.0 { 1.0 } else { 0.0 }).collect(),
            ),
            (
                "lt_scalar",
                ops::lt_scalar(&t, 0.5).unwrap(),
                x.iter().map(|v| if *v < 0.5 { 1.0 } else { 0.0 }).collect(),
            ),
        ];
        for (name, got, want) in cases {
            assert_close(
                &format!("{name} n={n}"),
                &got.to_vec().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn recorded_relu_mask_variants_match_cpu() {
    // The recorded ReLU writes its output and a bit mask of x > 0 for the backward: one word
    // per invocation, or one element per invocation with the words gathered by workgroup
    // atomics (`relu-mask=workgroup`), each forced; sizes with partial words and workgroups.
    for variant in ["words", "workgroup"] {
        let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
            autotune: false,
            kernel_overrides: vec![("relu-mask".into(), variant.into())],
            profile: true,
            ..Default::default()
        })
        .unwrap();
        let mut r = rng(33);
        for n in [7usize, 1000, 1024, 70_001] {
            let x = uniform(&mut r, n, -1.0, 1.0);
            let gy = uniform(&mut r, n, -1.0, 1.0);
            let xt = apga_gpu::Tensor::from_slice(&g, &x, &[n])
                .unwrap()
                .with_grad();
            let tape = apga_gpu::Tape::new();
            let y = ops::relu(&xt).unwrap();
            let gyt = apga_gpu::Tensor::from_slice(&g, &gy, &[n]).unwrap();
            let loss = ops::sum_all(&ops::mul(&y, &gyt).unwrap()).unwrap();
            let grads = tape.backward(&loss).unwrap();
            let want: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
            assert_eq!(y.to_vec().unwrap(), want, "{variant} relu, n = {n}");
            let dx: Vec<f32> = x
                .iter()
                .zip(&gy)
                .map(|(v, d)| if *v > 0.0 { *d } else { 0.0 })
                .collect();
            let got = grads.get(&xt).unwrap().to_vec().unwrap();
            assert_eq!(got, dx, "{variant} relu gradient, n = {n}");
        }
        let ran = g.profile_report().unwrap().unwrap().table(100);
        let want = if variant == "words" {
            "elementwise::relu_mask"
        } else {
            "elementwise::relu_mask_wg"
        };
        let ran_it = ran.lines().any(|l| l.trim_end().ends_with(want));
        assert!(ran_it, "{want} did not run:\n{ran}");
    }
}

#[test]
fn threshold_is_exact_at_the_boundary() {
    // The policy's action is 1[P >= 0.5]: a probability of exactly 0.5 is erased.
    let t = tensor(&[0.49999997, 0.5, 0.50000006], &[3]);
    assert_eq!(
        ops::ge_scalar(&t, 0.5).unwrap().to_vec().unwrap(),
        vec![0.0, 1.0, 1.0]
    );
    assert_eq!(
        ops::gt_scalar(&t, 0.5).unwrap().to_vec().unwrap(),
        vec![0.0, 0.0, 1.0]
    );
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[3, 5], &[3, 5]),
        (&[2, 3, 5, 7], &[1, 3, 1, 1]), // per-channel
        (&[2, 3, 5, 7], &[2, 1, 5, 7]), // per-pixel mask
        (&[1, 3, 1, 1], &[2, 3, 5, 7]), // broadcast on the left operand
        (&[4, 1], &[1, 5]),
        (&[2, 3, 5], &[]),
        (&[7], &[2, 1, 7]),
        (&[1, 1, 1, 1, 1, 1, 2, 3], &[3]),
    ];
    let mut r = rng(2);
    for (sa, sb) in pairs {
        let a = uniform(&mut r, numel(sa), -2.0, 2.0);
        let b = away_from_zero(&mut r, numel(sb), 0.5, 2.0);
        let (ta, tb) = (tensor(&a, sa), tensor(&b, sb));
        let check = |name: &str, got: apga_gpu::Tensor, f: fn(f32, f32) -> f32| {
            let (want, shape) = cpu_binary(&a, sa, &b, sb, f);
            assert_eq!(got.shape(), shape.as_slice(), "{name} shape");
            assert_close(
                &format!("{name} {sa:?} {sb:?}"),
                &got.to_vec().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        };
        check("add", ops::add(&ta, &tb).unwrap(), |x, y| x + y);
        check("sub", ops::sub(&ta, &tb).unwrap(), |x, y| x - y);
        check("mul", ops::mul(&ta, &tb).unwrap(), |x, y| x * y);
        check("div", ops::div(&ta, &tb).unwrap(), |x, y| x / y);
    }
}

#[test]
fn mismatched_shapes_are_errors_not_panics() {
    let a = tensor(&[1.0; 6], &[2, 3]);
    let b = tensor(&[1.0; 4], &[4]);
    let e = ops::add(&a, &b).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    assert!(ops::matmul(&a, &a).is_err());
    assert!(ops::sum(&a, &[2], false).is_err());
    assert!(ops::reshape(&a, &[4]).is_err());
    assert!(ops::expand(&a, &[3, 3]).is_err());
    assert!(apga_gpu::Tensor::from_slice(&gpu(), &[1.0; 5], &[2, 3]).is_err());
    assert!(ops::matmul_with(
        MatmulVariant::Vec4x4,
        &a,
        &tensor(&[1.0; 9], &[3, 3]),
        false,
        false
    )
    .is_err());
}

#[test]
fn where_and_expand_match_cpu() {
    let mut r = rng(3);
    let mask: Vec<f32> = uniform(&mut r, 2 * 4 * 3, 0.0, 1.0)
        .into_iter()
        .map(|v| if v > 0.5 { 1.0 } else { 0.0 })
        .collect();
    let a = uniform(&mut r, 2 * 3 * 4 * 3, -1.0, 1.0);
    let b = uniform(&mut r, 2 * 3 * 4 * 3, -1.0, 1.0);
    let got = ops::where_(
        &tensor(&mask, &[2, 1, 4, 3]),
        &tensor(&a, &[2, 3, 4, 3]),
        &tensor(&b, &[2, 3, 4, 3]),
    )
    .unwrap()
    .to_vec()
    .unwrap();
    let (m_full, _) = cpu_binary(&mask, &[2, 1, 4, 3], &a, &[2, 3, 4, 3], |m, _| m);
    let want: Vec<f32> = (0..a.len())
        .map(|i| if m_full[i] != 0.0 { a[i] } else { b[i] })
        .collect();
    assert_close("where", &got, &want, 0.0, 0.0);

    let x = uniform(&mut r, 3, -1.0, 1.0);
    let got = ops::expand(&tensor(&x, &[1, 3, 1, 1]), &[2, 3, 2, 2])
        .unwrap()
        .to_vec()
        .unwrap();
    let (want, _) = cpu_binary(&x, &[1, 3, 1, 1], &[0.0; 24], &[2, 3, 2, 2], |x, _| x);
    assert_close("expand", &got, &want, 0.0, 0.0);
}

#[test]
fn reductions_match_cpu() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3, 5, 7], &[0, 2, 3]), // per-channel (batch-norm statistics)
        (&[2, 3, 5, 7], &[1]),       // per-pixel (over channels)
        (&[2, 3, 5, 7], &[0, 1, 2, 3]),
        (&[2, 3, 5, 7], &[]),
        (&[1, 64, 56, 56], &[0, 2, 3]),
        (&[3, 70_001], &[1]),   // two passes
        (&[100_003], &[0]),     // full sum over many chunks
        (&[5000, 3], &[1]),     // many short reductions: one invocation per output
        (&[7, 9, 11], &[0, 2]), // non-adjacent axes
        (&[1, 1, 1], &[1]),
        // Leading axes of a contiguous tensor, outputs a multiple of 4: the vec4 kernel.
        (&[7, 12], &[0]),
        (&[3, 5, 8], &[0, 1]),
        (&[16, 4100], &[0]),
        (&[200, 4096], &[0]),
    ];
    let mut r = rng(4);
    for (shape, axes) in cases {
        let x = uniform(&mut r, numel(shape), -1.0, 1.0);
        let t = tensor(&x, shape);
        let want = cpu_sum(&x, shape, axes);
        let n_red: usize = axes.iter().map(|&d| shape[d]).product();
        let atol = 1e-5 * (n_red as f32).sqrt().max(1.0);
        let got = ops::sum(&t, axes, true).unwrap();
        let kept: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(d, &s)| if axes.contains(&d) { 1 } else { s })
            .collect();
        assert_eq!(got.shape(), kept.as_slice());
        assert_close(
            &format!("sum {shape:?} {axes:?}"),
            &got.to_vec().unwrap(),
            &want,
            atol,
            1e-5,
        );
        let got = ops::mean(&t, axes, false).unwrap().to_vec().unwrap();
        let want_mean: Vec<f32> = want.iter().map(|v| v / n_red as f32).collect();
        assert_close(
            &format!("mean {shape:?} {axes:?}"),
            &got,
            &want_mean,
            atol,
            1e-5,
        );
    }
    let x = uniform(&mut r, 12345, -1.0, 1.0);
    let s = ops::sum_all(&tensor(&x, &[12345])).unwrap();
    assert_eq!(s.shape(), &[] as &[usize]);
    let want: f64 = x.iter().map(|v| *v as f64).sum();
    assert!((s.item().unwrap() as f64 - want).abs() < 1e-3, "sum_all");
}

fn matmul_variants_match_cpu_on(g: &apga_gpu::Gpu) {
    let mut r = rng(5);
    // Odd sizes, a 64-tile boundary, vec4-compatible sizes, a tall-skinny product.
    let sizes = [
        (1, 1, 1),
        (5, 3, 7),
        (65, 67, 33),
        (64, 64, 64),
        (12, 8, 20),
        (130, 4, 8),
        (3, 200, 4),
    ];
    for &(m, n, k) in &sizes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = uniform(&mut r, m * k, -1.0, 1.0);
            let b = uniform(&mut r, k * n, -1.0, 1.0);
            let sa = if ta { [k, m] } else { [m, k] };
            let sb = if tb { [n, k] } else { [k, n] };
            let at = apga_gpu::Tensor::from_slice(g, &a, &sa).unwrap();
            let bt = apga_gpu::Tensor::from_slice(g, &b, &sb).unwrap();
            let want = cpu_matmul(&a, &b, m, n, k, ta, tb);
            let d = ops::matmul::Dims { m, n, k, ta, tb };
            for v in MatmulVariant::ALL.into_iter().filter(|v| v.supports(&d)) {
                let got = ops::matmul_with(v, &at, &bt, ta, tb).unwrap();
                assert_eq!(got.shape(), &[m, n]);
                assert_close(
                    &format!("matmul {} {d:?}", v.name()),
                    &got.to_vec().unwrap(),
                    &want,
                    1e-4,
                    1e-4,
                );
            }
            let got = ops::matmul_t(&at, &bt, ta, tb).unwrap().to_vec().unwrap();
            assert_close(&format!("matmul auto {d:?}"), &got, &want, 1e-4, 1e-4);
        }
    }
}

/// Trusted kernels (built without wgpu's bounds checks by default) at every edge shape.
#[test]
fn matmul_every_variant_matches_cpu() {
    matmul_variants_match_cpu_on(&gpu());
}

/// The same kernels with wgpu's bounds checks forced on (`APGA_RUNTIME_CHECKS=1`).
#[test]
fn matmul_every_variant_matches_cpu_with_bounds_checks() {
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        runtime_checks: true,
        autotune: false,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("this test needs a GPU adapter: {e}"));
    assert!(g.runtime_checks());
    matmul_variants_match_cpu_on(&g);
}
