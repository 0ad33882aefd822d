//! Helpers shared by the integration tests: the GPU context, seeded random data, CPU
//! reference implementations, and the finite-difference gradient-check harness.
#![allow(dead_code)]

use apga_gpu::{ops, Gpu, Result, Tape, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

mod prologue;
#[allow(unused_imports)]
pub use prologue::check_prologue;

/// The shared GPU context. A machine without an adapter fails here with the message that
/// names the fix (a GPU driver, or `apt-get install mesa-vulkan-drivers`); nothing is skipped.
pub fn gpu() -> Gpu {
    match Gpu::shared() {
        Ok(g) => g,
        Err(e) => panic!("these tests need a GPU adapter: {e}"),
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [lo, hi).
pub fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `n` values with |x| in [lo, hi) and a random sign (keeps inputs away from kinks and poles).
pub fn away_from_zero(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = rng.random_range(lo..hi);
            if rng.random_bool(0.5) {
                v
            } else {
                -v
            }
        })
        .collect()
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&gpu(), data, shape).expect("upload")
}

/// Asserts |a - b| <= atol + rtol * max(|a|, |b|) element-wise, naming the first mismatch.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = approx::relative_eq!(*g, *w, epsilon = atol, max_relative = rtol)
            || (g.is_nan() && w.is_nan())
            || (g.is_infinite() && g == w);
        assert!(
            ok,
            "{what}: element {i}: got {g}, want {w} (atol {atol}, rtol {rtol})"
        );
    }
}

// ---------- CPU references ----------

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Index into a (possibly broadcast) operand of the element at multi-index `idx` of `out`.
fn bcast_index(idx: &[usize], shape: &[usize]) -> usize {
    let pad = idx.len() - shape.len();
    let st = row_major_strides(shape);
    shape
        .iter()
        .enumerate()
        .map(|(d, &s)| if s == 1 { 0 } else { idx[pad + d] * st[d] })
        .sum()
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    ops::broadcast_shapes("test", a, b).expect("broadcastable")
}

/// NumPy-style broadcast binary op on the CPU.
pub fn cpu_binary(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    f: impl Fn(f32, f32) -> f32,
) -> (Vec<f32>, Vec<usize>) {
    let out = broadcast_shape(sa, sb);
    let v = (0..numel(&out))
        .map(|i| {
            let idx = unravel(i, &out);
            f(a[bcast_index(&idx, sa)], b[bcast_index(&idx, sb)])
        })
        .collect();
    (v, out)
}

/// Sum over `axes` (keepdim layout) on the CPU, in f64.
pub fn cpu_sum(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(d, &s)| if axes.contains(&d) { 1 } else { s })
        .collect();
    let mut acc = vec![0f64; numel(&kept)];
    let kst = row_major_strides(&kept);
    for (i, v) in x.iter().enumerate() {
        let idx = unravel(i, shape);
        let o: usize = idx
            .iter()
            .enumerate()
            .map(|(d, &j)| if axes.contains(&d) { 0 } else { j * kst[d] })
            .sum();
        acc[o] += *v as f64;
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// `op(a) @ op(b)` on the CPU in f64; `a` is stored [m,k] or [k,m] (ta), `b` [k,n] or [n,k].
pub fn cpu_matmul(
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

// ---------- finite-difference gradient check ----------

/// Settings of one gradient check.
pub struct GradCheck {
    /// Central-difference step.
    pub eps: f32,
    pub atol: f32,
    pub rtol: f32,
    /// At most this many coordinates per input are perturbed (a seeded random subset beyond).
    pub max_coords: usize,
    /// Per input, over the checked coordinates: ||tape - finite difference|| / ||finite
    /// difference|| must stay below this. Unlike the per-element test's absolute floor, it
    /// scales with the gradient, so a zero (or wrong-sign, or wrongly scaled) gradient fails
    /// however small the true one is.
    pub norm_rtol: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-2,
            atol: 2e-3,
            rtol: 1e-2,
            max_coords: 40,
            norm_rtol: 5e-2,
        }
    }
}

impl GradCheck {
    /// Checks the tape's gradients of `f` against central finite differences.
    ///
    /// The op sits mid-graph: the loss is `sum(f(inputs) * r)` for a fixed random `r`, so the
    /// op's backward receives a random upstream gradient, and the loss's own ops (mul, sum)
    /// are exercised too. `wrt[i]` says whether input `i` is checked (and requires a grad).
    /// Numerical losses are evaluated on the host in f64 from the op's GPU output.
    pub fn run(
        &self,
        name: &str,
        inputs: &[(Vec<f32>, Vec<usize>)],
        wrt: &[bool],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        self.run_on(&gpu(), name, inputs, wrt, f)
    }

    /// [`GradCheck::run`] on the context `g` (one whose kernel choices are forced, say).
    pub fn run_on(
        &self,
        g: &Gpu,
        name: &str,
        inputs: &[(Vec<f32>, Vec<usize>)],
        wrt: &[bool],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        let make = |vals: &[(Vec<f32>, Vec<usize>)], grad: bool| -> Vec<Tensor> {
            vals.iter()
                .zip(wrt)
                .map(|((v, s), w)| {
                    let t = Tensor::from_slice(g, v, s).expect("upload");
                    if grad && *w {
                        t.with_grad()
                    } else {
                        t
                    }
                })
                .collect()
        };
        // Analytic gradients through the tape.
        let xs = make(inputs, true);
        let tape = Tape::new();
        let y = f(&xs).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
        let mut r_rng = rng(0x5eed ^ y.numel() as u64);
        let r = uniform(&mut r_rng, y.numel(), -1.0, 1.0);
        let rt = Tensor::from_slice(g, &r, y.shape()).expect("upload r");
        let loss = ops::sum_all(&ops::mul(&y, &rt).expect("mul")).expect("sum");
        let grads = tape
            .backward(&loss)
            .unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
        let loss_of = |vals: &[(Vec<f32>, Vec<usize>)]| -> f64 {
            let ts = make(vals, false);
            let out = f(&ts).expect("forward").to_vec().expect("read");
            out.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let mut checked = 0;
        for (i, ((vals, shape), w)) in inputs.iter().zip(wrt).enumerate() {
            if !*w {
                continue;
            }
            let analytic = grads
                .get(&xs[i])
                .unwrap_or_else(|| panic!("{name}: no gradient reached input {i}"))
                .to_vec()
                .expect("read grad");
            assert_eq!(
                analytic.len(),
                vals.len(),
                "{name}: grad {i} shape {shape:?}"
            );
            let mut coords: Vec<usize> = (0..vals.len()).collect();
            if coords.len() > self.max_coords {
                let mut cr = rng(i as u64 + 17);
                coords = (0..self.max_coords)
                    .map(|_| cr.random_range(0..vals.len()))
                    .collect();
            }
            let (mut diff2, mut num2) = (0f64, 0f64);
            for &j in &coords {
                let mut plus = inputs.to_vec();
                plus[i].0[j] += self.eps;
                let mut minus = inputs.to_vec();
                minus[i].0[j] -= self.eps;
                let numeric = ((loss_of(&plus) - loss_of(&minus)) / (2.0 * self.eps as f64)) as f32;
                let a = analytic[j];
                diff2 += (a as f64 - numeric as f64).powi(2);
                num2 += (numeric as f64).powi(2);
                let ok =
                    approx::relative_eq!(a, numeric, epsilon = self.atol, max_relative = self.rtol);
                assert!(
                    ok,
                    "{name}: d loss / d input{i}[{j}] (shape {shape:?}): tape {a}, finite \
                     difference {numeric}"
                );
                checked += 1;
            }
            assert!(
                num2 > 0.0,
                "{name}: input {i}: every finite difference is 0 (pick a configuration whose \
                 gradient is not zero)"
            );
            let rel = (diff2 / num2).sqrt();
            assert!(
                rel <= self.norm_rtol,
                "{name}: input {i} (shape {shape:?}): ||tape - finite difference|| / ||finite \
                 difference|| = {rel:.3e} > {:.1e} (|fd| = {:.3e})",
                self.norm_rtol,
                num2.sqrt()
            );
        }
        println!("gradcheck ok: {name} ({checked} coordinates)");
    }
}

/// conv2d on the CPU in f64: x [n, ci, h, w], w [co, ci, kh, kw], optional bias.
#[allow(clippy::too_many_arguments)]
pub fn cpu_conv2d(
    x: &[f32],
    [n, ci, h, wd]: [usize; 4],
    w: &[f32],
    [co, _, kh, kw]: [usize; 4],
    b: Option<&[f32]>,
    stride: usize,
    pad: usize,
) -> (Vec<f32>, [usize; 4]) {
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (wd + 2 * pad - kw) / stride + 1;
    let mut out = vec![0f32; n * co * oh * ow];
    for b_ in 0..n {
        for o in 0..co {
            for y in 0..oh {
                for x_ in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[o] as f64);
                    for c in 0..ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * stride + ky) as isize - pad as isize;
                                let ix = (x_ * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((b_ * ci + c) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((o * ci + c) * kh + ky) * kw + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b_ * co + o) * oh + y) * ow + x_] = s as f32;
                }
            }
        }
    }
    (out, [n, co, oh, ow])
}

/// conv_transpose2d on the CPU (scatter form, the definition): x [n, ci, h, w],
/// w [ci, co, kh, kw].
#[allow(clippy::too_many_arguments)]
pub fn cpu_conv_transpose2d(
    x: &[f32],
    [n, ci, h, wd]: [usize; 4],
    w: &[f32],
    [_, co, kh, kw]: [usize; 4],
    b: Option<&[f32]>,
    stride: usize,
    pad: usize,
    out_pad: usize,
) -> (Vec<f32>, [usize; 4]) {
    let oh = (h - 1) * stride + kh + out_pad - 2 * pad;
    let ow = (wd - 1) * stride + kw + out_pad - 2 * pad;
    let mut acc = vec![0f64; n * co * oh * ow];
    for b_ in 0..n {
        for c in 0..ci {
            for y in 0..h {
                for x_ in 0..wd {
                    let xv = x[((b_ * ci + c) * h + y) * wd + x_] as f64;
                    for o in 0..co {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let oy = (y * stride + ky) as isize - pad as isize;
                                let ox = (x_ * stride + kx) as isize - pad as isize;
                                if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                    continue;
                                }
                                let wv = w[((c * co + o) * kh + ky) * kw + kx] as f64;
                                acc[((b_ * co + o) * oh + oy as usize) * ow + ox as usize] +=
                                    xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = b {
        for (i, v) in acc.iter_mut().enumerate() {
            *v += b[(i / (oh * ow)) % co] as f64;
        }
    }
    (acc.into_iter().map(|v| v as f32).collect(), [n, co, oh, ow])
}

/// Batch norm on the CPU (f64). Training: batch statistics and updated running ones
/// (unbiased variance); eval: running statistics. Returns (y, new running mean, new running var).
#[allow(clippy::too_many_arguments)]
pub fn cpu_batch_norm(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    gamma: &[f32],
    beta: &[f32],
    rm: &[f32],
    rv: &[f32],
    training: bool,
    momentum: f64,
    eps: f64,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hw = h * w;
    let m = (n * hw) as f64;
    let mut y = vec![0f32; x.len()];
    let (mut nrm, mut nrv) = (rm.to_vec(), rv.to_vec());
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|b| (0..hw).map(move |p| (b, p)))
            .map(|(b, p)| x[(b * c + ch) * hw + p] as f64)
            .collect();
        let (mean, var) = if training {
            let mean = vals.iter().sum::<f64>() / m;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            nrm[ch] = ((1.0 - momentum) * rm[ch] as f64 + momentum * mean) as f32;
            nrv[ch] = ((1.0 - momentum) * rv[ch] as f64 + momentum * var * m / (m - 1.0)) as f32;
            (mean, var)
        } else {
            (rm[ch] as f64, rv[ch] as f64)
        };
        for b in 0..n {
            for p in 0..hw {
                let i = (b * c + ch) * hw + p;
                let mut v =
                    (x[i] as f64 - mean) / (var + eps).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                if relu {
                    v = v.max(0.0);
                }
                y[i] = v as f32;
            }
        }
    }
    (y, nrm, nrv)
}

/// Max (is_max) or average pooling on the CPU, PyTorch semantics.
pub fn cpu_pool(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    k: usize,
    s: usize,
    p: usize,
    is_max: bool,
) -> (Vec<f32>, [usize; 4]) {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let mut out = vec![0f32; n * c * oh * ow];
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f32::NEG_INFINITY;
                let mut sum = 0f64;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * s + ky) as isize - p as isize;
                        let ix = (ox * s + kx) as isize - p as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x[pl * h * w + iy as usize * w + ix as usize];
                        best = best.max(v);
                        sum += v as f64;
                    }
                }
                let hs = (oy * s) as isize - p as isize;
                let ws = (ox * s) as isize - p as isize;
                let he = (hs + k as isize).min((h + p) as isize);
                let we = (ws + k as isize).min((w + p) as isize);
                let div = ((he - hs) * (we - ws)) as f64;
                out[(pl * oh + oy) * ow + ox] = if is_max { best } else { (sum / div) as f32 };
            }
        }
    }
    (out, [n, c, oh, ow])
}

/// `interpolate(x, size, mode, align_corners=False)` on the CPU, following PyTorch's
/// formulas (source coordinates in f32).
pub fn cpu_upsample(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    [oh, ow]: [usize; 2],
    bilinear: bool,
) -> Vec<f32> {
    let taps = |j: usize, in_len: usize, out_len: usize| -> (usize, usize, f32, f32) {
        let scale = in_len as f32 / out_len as f32;
        if !bilinear {
            let i = ((j as f32 * scale).floor() as usize).min(in_len - 1);
            return (i, i, 1.0, 0.0);
        }
        let s = ((j as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let l1 = s - i0 as f32;
        (i0, i1, 1.0 - l1, l1)
    };
    let mut out = vec![0f32; n * c * oh * ow];
    for pl in 0..n * c {
        for y in 0..oh {
            let (y0, y1, a0, a1) = taps(y, h, oh);
            for x_ in 0..ow {
                let (x0, x1, b0, b1) = taps(x_, w, ow);
                let v = |yy: usize, xx: usize| x[pl * h * w + yy * w + xx] as f64;
                let r = a0 as f64 * (b0 as f64 * v(y0, x0) + b1 as f64 * v(y0, x1))
                    + a1 as f64 * (b0 as f64 * v(y1, x0) + b1 as f64 * v(y1, x1));
                out[(pl * oh + y) * ow + x_] = r as f32;
            }
        }
    }
    out
}

/// A convolution case: (n, ci, h, w, co, k, stride, pad).
pub type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);
/// A transposed-convolution case: (n, ci, h, w, co, k, stride, pad, output_padding).
pub type ConvTCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// Input and weight gradients of conv2d on the CPU (f64), the scatter definition: for upstream
/// gradient `gy` [n, co, oh, ow], returns (dx [n, ci, h, w], dw [co, ci, k, k]).
#[allow(clippy::too_many_arguments)]
pub fn cpu_conv2d_grads(
    x: &[f32],
    [n, ci, h, w]: [usize; 4],
    wt: &[f32],
    [co, _, k, _]: [usize; 4],
    gy: &[f32],
    stride: usize,
    pad: usize,
) -> (Vec<f32>, Vec<f32>) {
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    let mut dx = vec![0f64; n * ci * h * w];
    let mut dw = vec![0f64; co * ci * k * k];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let gv = gy[((b * co + o) * oh + oy) * ow + ox] as f64;
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let xi = ((b * ci + c) * h + iy as usize) * w + ix as usize;
                                let wi = ((o * ci + c) * k + ky) * k + kx;
                                dx[xi] += gv * wt[wi] as f64;
                                dw[wi] += gv * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(dx), f(dw))
}

/// Convolution cases shared by the CPU-reference tests: (n, ci, h, w, co, k, stride, pad).
pub const CONVS: &[ConvCase] = &[
    (1, 1, 5, 5, 1, 3, 1, 1),
    (2, 3, 7, 9, 5, 3, 1, 1),
    (2, 3, 11, 9, 10, 7, 2, 3), // DenseNet stem shape, odd input
    (3, 13, 6, 5, 9, 1, 1, 0),  // bottleneck 1x1, channels no multiple of 8
    (1, 4, 9, 7, 17, 3, 2, 0),
    (2, 2, 4, 4, 3, 3, 1, 2), // padding larger than half the kernel
];

/// The `apga-gpu` binary of this build, with the crash-point hook cleared.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_apga-gpu"));
    c.env_remove("APGA_CRASH_AT");
    c
}

/// An error exit (1, or clap's 2) with a message and no panic.
pub fn assert_refused(out: &std::process::Output, wanted: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "exit {code:?} (want an error exit, not success or a crash): {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for w in wanted {
        assert!(err.contains(w), "message lacks {w:?}: {err}");
    }
}

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A model's tensor by its state-dict key.
pub fn by_key(model: &dyn apga_gpu::nn::Module, key: &str) -> Tensor {
    model
        .named()
        .into_iter()
        .find(|n| n.key == key)
        .unwrap_or_else(|| panic!("model has no {key}"))
        .tensor
}

/// The tiny torchvision DenseNet of the model fixtures (growth 4, blocks 2-3, 8 initial
/// features, bottleneck 2, 3 classes).
pub fn tiny_densenet() -> apga_gpu::models::DenseNet {
    tiny_densenet_on(&gpu())
}

/// [`tiny_densenet`] on the context `g`.
pub fn tiny_densenet_on(g: &apga_gpu::Gpu) -> apga_gpu::models::DenseNet {
    let cfg = apga_gpu::models::DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 3],
        num_init_features: 8,
        bn_size: 2,
        num_classes: 3,
    };
    apga_gpu::models::DenseNet::new(g, cfg, 1).expect("densenet")
}
