//! Winograd F(2x2, 3x3) and F(4x4, 3x3) forced for all three directions of every 3x3
//! stride-1 padding-1 convolution, alone, with split-K GEMMs and (F(2x2)) with the shared-operand
//! GEMM inside, against the CPU references, PyTorch's fixture and the default kernels; the
//! transformed weights cached on the weight's buffer until it is written.

mod common;

use apga_gpu::ops;
use common::*;

#[test]
fn conv_winograd_variants_match_cpu() {
    winograd_variants_match_cpu("winograd", None);
}

/// The same with the batched GEMMs split along K (`splitk_sum` adding the partial products
/// into the weight gradient's per-group slots, as on GPUs).
#[test]
fn conv_winograd_variants_match_cpu_with_split_k_gemms() {
    winograd_variants_match_cpu("winograd", Some("splitk"));
}

/// The same with the GEMM that shares both operands through subgroup shuffles (each transform
/// element its own A; folded images put two images' A in one batch of lanes, which then loads
/// A per lane).
#[test]
fn conv_winograd_variants_match_cpu_with_shared_operand_gemms() {
    winograd_variants_match_cpu("winograd", Some("subgroup2d"));
}

/// The same with F(4x4, 3x3) (`conv_winograd4.wgsl`).
#[test]
fn conv_winograd4_variants_match_cpu() {
    winograd_variants_match_cpu("winograd4", None);
}

#[test]
fn conv_winograd4_variants_match_cpu_with_split_k_gemms() {
    winograd_variants_match_cpu("winograd4", Some("splitk"));
}

fn winograd_variants_match_cpu(variant: &str, gemm: Option<&str>) {
    // Winograd F(2x2, 3x3) forward, input gradient and weight gradient, forced for every 3x3
    // stride-1 padding-1 convolution of this context (others fall back to the default): odd
    // sizes (partial 2x2 tiles), one image and several, tiles no multiple of 4, a workspace
    // small enough to split the batch into groups of tiles that cross image boundaries or end
    // inside an image, the batch-norm prologue on a channel prefix, and a DenseNet whose
    // layers write their channels into a block buffer, against the default kernels.
    let ctx = |overrides: Vec<(String, String)>| {
        apga_gpu::Gpu::new(apga_gpu::GpuOptions {
            autotune: false,
            kernel_overrides: overrides,
            profile: true,
            workspace_bytes: 48 << 10,
            ..Default::default()
        })
        .unwrap()
    };
    let mut overrides = vec![
        ("conv-fwd".into(), variant.into()),
        ("conv-dgrad".into(), variant.into()),
        ("conv-wgrad".into(), variant.into()),
    ];
    if let Some(gemm) = gemm {
        overrides.push(("gemm-batched".into(), gemm.into()));
    }
    let g = ctx(overrides);
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
    let mut r = rng(24);
    for &(n, ci, h, w, co) in &[
        (1usize, 4usize, 5usize, 7usize, 3usize),
        (3, 8, 9, 6, 5),
        (2, 12, 8, 8, 16),
        (1, 4, 1, 1, 2),
        (5, 16, 11, 13, 7),
        (2, 8, 7, 5, 12),
        // 440 tiles per image, groups of 96: groups end inside images.
        (1, 4, 40, 44, 4),
    ] {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * 9, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        let (want, _) = cpu_conv2d(&x, [n, ci, h, w], &wt, [co, ci, 3, 3], Some(&b), 1, 1);
        let xt = t(&x, &[n, ci, h, w]).with_grad();
        let wtt = t(&wt, &[co, ci, 3, 3]).with_grad();
        let tape = apga_gpu::Tape::new();
        let got = ops::conv2d(&xt, &wtt, Some(&t(&b, &[co])), 1, 1).unwrap();
        let what = format!("conv2d winograd {:?}", (n, ci, h, w, co));
        assert_close(&what, &got.to_vec().unwrap(), &want, 1e-4, 1e-4);
        // The input gradient (Winograd too where co is a multiple of 4) and the weight
        // gradient (Winograd where co is).
        let gy = uniform(&mut r, n * co * h * w, -1.0, 1.0);
        let loss = ops::sum_all(&ops::mul(&got, &t(&gy, got.shape())).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let (dx, dw) = cpu_conv2d_grads(&x, [n, ci, h, w], &wt, [co, ci, 3, 3], &gy, 1, 1);
        let gx = grads.get(&xt).unwrap().to_vec().unwrap();
        assert_close(&format!("{what} input grad"), &gx, &dx, 1e-4, 1e-4);
        let gw = grads.get(&wtt).unwrap().to_vec().unwrap();
        assert_close(&format!("{what} weight grad"), &gw, &dw, 1e-3, 1e-4);
    }
    // PyTorch's conv2d on channel counts Winograd takes (tests/fixtures/make_fixtures.py).
    let bytes = std::fs::read(fixture("conv2d_3x3_c8.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| {
        let v = st.tensor(k).unwrap();
        let vals: Vec<f32> = bytemuck::pod_collect_to_vec(v.data());
        (vals, v.shape().to_vec())
    };
    let leaf = |k: &str| {
        let (v, s) = get(k);
        t(&v, &s).with_grad()
    };
    let (x, wt, b) = (leaf("x"), leaf("weight"), leaf("bias"));
    let tape = apga_gpu::Tape::new();
    let out = ops::conv2d(&x, &wt, Some(&b), 1, 1).unwrap();
    assert_close(
        "winograd vs torch: out",
        &out.to_vec().unwrap(),
        &get("out").0,
        1e-4,
        1e-4,
    );
    let (gy, gs) = get("grad_out");
    let loss = ops::sum_all(&ops::mul(&out, &t(&gy, &gs)).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    for (name, p) in [("x", &x), ("weight", &wt), ("bias", &b)] {
        let got = grads.get(p).unwrap().to_vec().unwrap();
        let want = get(&format!("grad_{name}")).0;
        assert_close(
            &format!("winograd vs torch: grad_{name}"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
    }
    check_prologue(
        &g,
        "conv2d winograd with prologue",
        &mut r,
        (2, 10, 8, 7, 9, 3),
        3,
        1,
    );
    check_prologue(
        &g,
        "conv2d winograd with prologue, co 12",
        &mut r,
        (3, 12, 8, 6, 5, 12),
        3,
        1,
    );
    let ran = g.profile_report().unwrap().unwrap().table(100);
    let shader = if variant == "winograd4" {
        "conv_winograd4"
    } else {
        "conv_winograd"
    };
    for entry in [
        "wino_weights",
        "wino_input",
        "wino_output",
        "wino_dy",
        "wino_wgrad",
    ] {
        let k = format!("{shader}::{entry}");
        assert!(ran.contains(&k), "{k} did not run:\n{ran}");
    }
    // The input gradient's transform reads the weights flipped (no flipped copy).
    let flipped = format!("{shader}::wino_weights [FLIP=1]");
    assert!(ran.contains(&flipped), "{flipped} did not run:\n{ran}");
    assert_eq!(
        ran.contains("splitk_sum"),
        gemm == Some("splitk"),
        "split-K:\n{ran}"
    );
    // The forced GEMM ran (where the adapter has subgroups; elsewhere it names no candidate).
    if gemm == Some("subgroup2d") && g.has_subgroups() {
        assert!(ran.contains("conv1x1_subgroup::main2d"), "main2d:\n{ran}");
    }
    // A tiny DenseNet (growth convolutions write into the block buffer's channel slices)
    // gives the default kernels' logits.
    let plain = ctx(vec![]);
    let logits = |gpu: &apga_gpu::Gpu| {
        let net = tiny_densenet_on(gpu);
        let x = uniform(&mut rng(25), 2 * 3 * 32 * 32, -1.0, 1.0);
        let x = apga_gpu::Tensor::from_slice(gpu, &x, &[2, 3, 32, 32]).unwrap();
        net.forward(&x, true).unwrap().to_vec().unwrap()
    };
    assert_close(
        "densenet logits, winograd",
        &logits(&g),
        &logits(&plain),
        1e-4,
        1e-4,
    );
}

#[test]
fn derived_weights_are_reused_until_the_weights_change() {
    // Winograd's transformed weights and the flipped copy of its input gradient are cached on
    // the weight's buffer: a second forward and input gradient with the same weights reuse
    // them (one weight transform per direction in the profile), an in-place change of the
    // weights (a copy, then an Adam step) makes them anew, and dropping the weights frees them.
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: ["conv-fwd", "conv-dgrad"]
            .map(|d| (d.to_string(), "winograd4".to_string()))
            .to_vec(),
        profile: true,
        ..Default::default()
    })
    .unwrap();
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(&g, v, s).unwrap();
    let (n, ci, h, w, co) = (2usize, 8usize, 9usize, 7usize, 12usize);
    let mut r = rng(40);
    let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
    let gy = uniform(&mut r, n * co * h * w, -1.0, 1.0);
    let mut wv = uniform(&mut r, co * ci * 9, -1.0, 1.0);
    let wt = t(&wv, &[co, ci, 3, 3]).with_grad();
    let xt = t(&x, &[n, ci, h, w]).with_grad();
    // Forward and input gradient against the CPU reference for the weights `wv` now.
    let check = |wv: &[f32], what: &str| {
        let tape = apga_gpu::Tape::new();
        let y = ops::conv2d(&xt, &wt, None, 1, 1).unwrap();
        let (want, _) = cpu_conv2d(&x, [n, ci, h, w], wv, [co, ci, 3, 3], None, 1, 1);
        assert_close(what, &y.to_vec().unwrap(), &want, 1e-4, 1e-4);
        let loss = ops::sum_all(&ops::mul(&y, &t(&gy, y.shape())).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let (dx, _) = cpu_conv2d_grads(&x, [n, ci, h, w], wv, [co, ci, 3, 3], &gy, 1, 1);
        let gx = grads.get(&xt).unwrap().to_vec().unwrap();
        assert_close(&format!("{what}: input grad"), &gx, &dx, 1e-4, 1e-4);
        grads
    };
    let transforms = || {
        let table = g.profile_report().unwrap().unwrap().table(100);
        // Forward ([FLIP=0]) and input-gradient ([FLIP=1]) transforms together.
        table
            .lines()
            .filter(|l| l.contains("conv_winograd4::wino_weights"))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<usize>().ok())
            .sum::<usize>()
    };
    check(&wv, "first");
    assert_eq!(transforms(), 2, "one transform per direction");
    assert!(g.derived_bytes() > 0);
    check(&wv, "same weights");
    assert_eq!(transforms(), 2, "the second pass reuses both transforms");
    // Overwritten in place.
    wv.iter_mut().for_each(|v| *v = -0.5 * *v + 0.1);
    g.copy(
        t(&wv, &[co, ci, 3, 3]).storage(),
        0,
        wt.storage(),
        0,
        wv.len(),
    );
    let grads = check(&wv, "after a copy into the weights");
    assert_eq!(transforms(), 4, "changed weights are transformed anew");
    // Updated by an optimizer step.
    let mut adam = apga_gpu::optim::Adam::new(
        std::slice::from_ref(&wt),
        apga_gpu::optim::AdamConfig::default(),
    )
    .unwrap();
    adam.step(&grads).unwrap();
    let stepped = wt.to_vec().unwrap();
    assert_ne!(stepped, wv);
    check(&stepped, "after an Adam step");
    assert_eq!(transforms(), 6);
    drop((wt, adam));
    assert_eq!(
        g.derived_bytes(),
        0,
        "derived values outlived their weights"
    );
}
