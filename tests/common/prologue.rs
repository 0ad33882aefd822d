//! The fused batch-norm + ReLU + convolution against its unfused parts, for the kernel
//! variant tests.

use super::*;

/// Checks `bn_relu_conv2d` on the first `c` of `ct` channels against batch norm + ReLU on the
/// CPU-visible slice followed by the CPU convolution, on context `g` (whose kernel overrides
/// pick the variant under test).
pub fn check_prologue(
    g: &apga_gpu::Gpu,
    what: &str,
    r: &mut StdRng,
    (n, ct, c, h, w, co): (usize, usize, usize, usize, usize, usize),
    k: usize,
    pad: usize,
) {
    let t = |v: &[f32], s: &[usize]| apga_gpu::Tensor::from_slice(g, v, s).unwrap();
    let x = t(&uniform(r, n * ct * h * w, -2.0, 2.0), &[n, ct, h, w]);
    let gamma = t(&uniform(r, c, 0.5, 1.5), &[c]);
    let beta = t(&uniform(r, c, -0.5, 0.5), &[c]);
    let wt = t(&uniform(r, co * c * k * k, -0.5, 0.5), &[co, c, k, k]).with_grad();
    let cfg = ops::BatchNormConfig::default();
    let tape = apga_gpu::Tape::new();
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
    // The weight gradient reads the input through the same prologue.
    let gy = uniform(r, fused.numel(), -1.0, 1.0);
    let loss = ops::sum_all(&ops::mul(&fused, &t(&gy, fused.shape())).unwrap()).unwrap();
    let gw = tape
        .backward(&loss)
        .unwrap()
        .get(&wt)
        .unwrap()
        .to_vec()
        .unwrap();
    let (_, dw) = cpu_conv2d_grads(
        &bn.to_vec().unwrap(),
        [n, c, h, w],
        &wt.to_vec().unwrap(),
        [co, c, k, k],
        &gy,
        1,
        pad,
    );
    assert_close(&format!("{what}: weight grad"), &gw, &dw, 1e-3, 1e-4);
}
