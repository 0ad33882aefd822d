//! Every convolution kernel variant forced in turn against the CPU references (row strips,
//! 8x8 weight gradient, 1x1 GEMM and its subgroup variants, 1x1 on rows padded to 4, im2col +
//! GEMM, GEMM + col2im, the GEMM weight gradient and its subgroup variant, small workspaces
//! that split batches into image groups, bounds checks on and off), the profiler confirming
//! each forced kernel ran. Winograd's variants are in `tests/winograd.rs`.

mod common;

use apga_gpu::ops;
use common::*;

#[test]
fn conv1x1_gemm_path_matches_cpu() {
    // With autotuning off the 1x1 GEMM kernel is the default wherever it applies (hw and the
    // reduced channels multiples of 4), so this context exercises it deterministically; the
    // second and third contexts force the subgroup variants of the GEMM where the adapter has
    // subgroups (A shared; A and B shared), the fourth split-K (partial products along K,
    // then `splitk_sum`), the fifth rows across the lanes (few columns).
    for overrides in [
        vec![],
        vec![("gemm-batched".into(), "subgroup".into())],
        // Both operands shared through shuffles (16-row blocks).
        vec![("gemm-batched".into(), "subgroup2d".into())],
        vec![("gemm-batched".into(), "splitk".into())],
        // Rows across the lanes, where the product has fewer than 8 column pairs.
        vec![("gemm-batched".into(), "across".into())],
    ] {
        let forced = overrides.first().map(|(_, v): &(String, String)| v.clone());
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
        let want = match forced.as_deref() {
            Some("subgroup") if g.has_subgroups() => "conv1x1_subgroup::main ",
            Some("subgroup2d") if g.has_subgroups() => "conv1x1_subgroup::main2d",
            Some("splitk") => "conv1x1::splitk_sum",
            _ => "conv1x1::main",
        };
        assert!(ran.contains(want), "{want} did not run:\n{ran}");
        // Forcing one variant runs no other's kernels (split-K's reduction in particular).
        if forced.as_deref() != Some("splitk") {
            assert!(!ran.contains("splitk_sum"), "split-K ran unasked:\n{ran}");
        }
    }
}

fn conv1x1_gemm_matches_cpu_on(g: &apga_gpu::Gpu) {
    let mut r = rng(20);
    // (n, ci, h, w, co): rows and columns no multiple of 8, a single image, DenseNet-like.
    for &(n, ci, h, w, co) in &[
        (2usize, 8usize, 4usize, 6usize, 5usize),
        (1, 12, 2, 2, 9),
        (3, 4, 7, 4, 12),
        (2, 32, 8, 8, 16),
        // Long enough along K to split (2-4 splits; 52 splits unevenly as 20 + 20 + 12).
        (2, 64, 4, 4, 8),
        (1, 52, 4, 2, 6),
        // 2x2 maps: one quad per image, over 64 rows (two row groups of the `across` layout).
        (3, 8, 2, 2, 70),
        // More rows than one workgroup covers (128 in `subgroup2d`, 64 in the others).
        (1, 8, 4, 4, 140),
    ] {
        check_1x1(g, &mut r, "conv1x1 gemm", (n, ci, h, w, co));
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

/// A 1x1 convolution with bias of shape (n, ci, h, w, co): output, input gradient and weight
/// gradient against the CPU reference, on whatever kernels `g` is forced to.
fn check_1x1(
    g: &apga_gpu::Gpu,
    r: &mut rand::rngs::StdRng,
    what: &str,
    (n, ci, h, w, co): (usize, usize, usize, usize, usize),
) {
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(g, v, s).unwrap();
    let hw = h * w;
    let x = uniform(r, n * ci * hw, -1.0, 1.0);
    let wt = uniform(r, co * ci, -1.0, 1.0);
    let b = uniform(r, co, -1.0, 1.0);
    let gy = uniform(r, n * co * hw, -1.0, 1.0);
    let xt = t(&x, &[n, ci, h, w]).with_grad();
    let wtt = t(&wt, &[co, ci, 1, 1]).with_grad();
    let tape = apga_gpu::Tape::new();
    let y = ops::conv2d(&xt, &wtt, Some(&t(&b, &[co])), 1, 0).unwrap();
    let (want, _) = cpu_conv2d(&x, [n, ci, h, w], &wt, [co, ci, 1, 1], Some(&b), 1, 0);
    let case = format!("{:?}", (n, ci, h, w, co));
    let close = |part: &str, got: &[f32], want: &[f32]| {
        assert_close(&format!("{what} {part} {case}"), got, want, 1e-4, 1e-4)
    };
    close("forward", &y.to_vec().unwrap(), &want);
    let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let (dx, dw) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, 1, 1], &gy, 1, 0);
    close(
        "input grad",
        &grads.get(&xt).unwrap().to_vec().unwrap(),
        &dx,
    );
    close(
        "weight grad",
        &grads.get(&wtt).unwrap().to_vec().unwrap(),
        &dw,
    );
}

#[test]
fn conv1x1_padded_rows_variant_matches_cpu() {
    // 1x1 convolutions on maps whose pixel count is no multiple of 4 (DenseNet's 7x7 block at
    // 224x224): the batched GEMM on rows padded to a multiple of 4 (`gemm1x1pad`), forward,
    // input gradient and weight gradient forced, against the CPU reference (channel counts
    // multiples of 4 both ways, so every direction takes it); with the
    // batch-norm prologue reading a channel prefix of a wider buffer.
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: vec![
            ("conv-fwd".into(), "gemm1x1pad".into()),
            ("conv-dgrad".into(), "gemm1x1pad".into()),
            ("conv-wgrad".into(), "gemm1x1pad".into()),
        ],
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let mut r = rng(27);
    // (n, ci, h, w, co): 7x7, 3x5 and 1x1 maps (pads of 3, 1 and 3 columns), rows no
    // multiple of 8.
    for &(n, ci, h, w, co) in &[
        (2usize, 8usize, 7usize, 7usize, 12usize),
        (3, 12, 3, 5, 8),
        (2, 16, 1, 1, 20),
    ] {
        check_1x1(&g, &mut r, "padded 1x1", (n, ci, h, w, co));
    }
    check_prologue(
        &g,
        "padded 1x1 with prologue",
        &mut r,
        (2, 12, 8, 7, 7, 8),
        1,
        0,
    );
    let ran = g.profile_report().unwrap().unwrap().table(100);
    for kernel in ["layout::copy_cols", "conv1x1::main", "conv_gemm::wgrad_1x1"] {
        assert!(ran.contains(kernel), "{kernel} did not run:\n{ran}");
    }
    for kernel in ["conv2d::fwd", "conv2d::dgrad", "conv2d_wgrad"] {
        assert!(!ran.contains(kernel), "{kernel} ran:\n{ran}");
    }
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

#[test]
fn conv_weight_gradient_1x1_gemm_variant_matches_cpu() {
    // The 1x1 weight gradient read straight from the input (`wgrad_1x1`), forced, with wgpu's
    // bounds checks off (it is a trusted kernel) and on: odd channel counts of the output,
    // input channels a multiple of 4, one image and several, chunks ending inside images, and
    // through the batch-norm prologue on a channel prefix (input channels 8 of 12).
    for runtime_checks in [false, true] {
        let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
            autotune: false,
            runtime_checks,
            kernel_overrides: vec![("conv-wgrad".into(), "gemm1x1".into())],
            profile: true,
            ..Default::default()
        })
        .unwrap();
        let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
        let mut r = rng(26);
        for &(n, ci, h, w, co) in &[
            (1usize, 4usize, 2usize, 2usize, 3usize),
            (2, 8, 4, 6, 9),
            (3, 12, 5, 4, 16),
            (2, 20, 8, 8, 5),
        ] {
            let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
            let wt = uniform(&mut r, co * ci, -1.0, 1.0);
            let wtt = t(&wt, &[co, ci, 1, 1]).with_grad();
            let tape = apga_gpu::Tape::new();
            let y = ops::conv2d(&t(&x, &[n, ci, h, w]), &wtt, None, 1, 0).unwrap();
            let gy = uniform(&mut r, y.numel(), -1.0, 1.0);
            let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
            let grads = tape.backward(&loss).unwrap();
            let (_, want) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, 1, 1], &gy, 1, 0);
            assert_close(
                &format!("wgrad_1x1 {:?}", (n, ci, h, w, co)),
                &grads.get(&wtt).unwrap().to_vec().unwrap(),
                &want,
                1e-4,
                1e-4,
            );
        }
        check_prologue(
            &g,
            "wgrad_1x1 with prologue",
            &mut r,
            (2, 12, 8, 6, 4, 7),
            1,
            0,
        );
        let ran = g.profile_report().unwrap().unwrap().table(100);
        assert!(
            ran.contains("conv_gemm::wgrad_1x1 [PROLOGUE=1]")
                && ran.contains("conv_gemm::wgrad_1x1 [PROLOGUE=0]"),
            "wgrad_1x1 did not run:\n{ran}"
        );
    }
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
