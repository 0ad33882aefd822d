//! Finite-difference gradient checks: for every differentiable op, the tape's gradient of
//! `sum(op(x) * r)` (random r) must match central differences, over several shapes including
//! odd sizes and sizes that are not multiples of any workgroup or tile size.
//! Every op added to the engine gets its check here.

mod common;

use apga_gpu::ops::{self, MatmulVariant};
use common::*;

/// Shapes used for element-wise ops: scalar, odd vectors and matrices, odd NCHW.
const SHAPES: &[&[usize]] = &[&[], &[7], &[3, 5], &[2, 3, 5, 7], &[1, 1, 9, 1]];

fn unary_check(
    name: &str,
    f: fn(&apga_gpu::Tensor) -> apga_gpu::Result<apga_gpu::Tensor>,
    lo: f32,
    hi: f32,
    signed: bool,
) {
    for (s, shape) in SHAPES.iter().enumerate() {
        let mut r = rng(s as u64);
        let mut x = if signed {
            away_from_zero(&mut r, numel(shape), lo, hi)
        } else {
            uniform(&mut r, numel(shape), lo, hi)
        };
        // A configuration whose true gradient is not all zero (ReLU of only negative inputs
        // would let a zero gradient pass).
        if signed && x.iter().all(|v| *v < 0.0) {
            x[0] = -x[0];
        }
        GradCheck::default().run(
            &format!("{name} {shape:?}"),
            &[(x, shape.to_vec())],
            &[true],
            |t| f(&t[0]),
        );
    }
}

#[test]
fn grad_relu() {
    // Kept at least 0.05 away from the kink so that x +- eps stays on one side.
    unary_check("relu", ops::relu, 0.05, 2.0, true);
}

#[test]
fn grad_unary_relu() {
    // The generic element-wise ReLU (`ops::unary(UnaryOp::Relu, ..)`, its own backward rule),
    // beside `ops::relu`, which saves a bit mask instead.
    unary_check(
        "unary relu",
        |x| ops::unary(ops::UnaryOp::Relu, x),
        0.05,
        2.0,
        true,
    );
}

#[test]
fn grad_sigmoid() {
    unary_check("sigmoid", ops::sigmoid, -4.0, 4.0, false);
}

#[test]
fn grad_exp() {
    unary_check("exp", ops::exp, -2.0, 2.0, false);
}

#[test]
fn grad_log() {
    unary_check("log", ops::log, 0.3, 3.0, false);
}

#[test]
fn grad_scalar_ops() {
    unary_check("add_scalar", |x| ops::add_scalar(x, 0.75), -2.0, 2.0, false);
    unary_check("mul_scalar", |x| ops::mul_scalar(x, -1.5), -2.0, 2.0, false);
    unary_check("neg", ops::neg, -2.0, 2.0, false);
}

/// Pairs of shapes for binary ops: equal, per-channel mask, per-pixel mask, row/column
/// vectors, scalar.
const PAIRS: &[(&[usize], &[usize])] = &[
    (&[3, 5], &[3, 5]),
    (&[2, 3, 5, 7], &[1, 3, 1, 1]),
    (&[2, 3, 5, 7], &[2, 1, 5, 7]),
    (&[4, 1], &[1, 5]),
    (&[2, 3, 5], &[]),
    (&[7], &[2, 1, 7]),
];

fn binary_check(
    name: &str,
    f: fn(&apga_gpu::Tensor, &apga_gpu::Tensor) -> apga_gpu::Result<apga_gpu::Tensor>,
    b_away: bool,
) {
    for (s, (sa, sb)) in PAIRS.iter().enumerate() {
        let mut r = rng(100 + s as u64);
        let a = uniform(&mut r, numel(sa), -2.0, 2.0);
        let b = if b_away {
            away_from_zero(&mut r, numel(sb), 0.5, 2.0)
        } else {
            uniform(&mut r, numel(sb), -2.0, 2.0)
        };
        GradCheck::default().run(
            &format!("{name} {sa:?} x {sb:?}"),
            &[(a, sa.to_vec()), (b, sb.to_vec())],
            &[true, true],
            |t| f(&t[0], &t[1]),
        );
    }
}

#[test]
fn grad_add() {
    binary_check("add", ops::add, false);
}

#[test]
fn grad_sub() {
    binary_check("sub", ops::sub, false);
}

#[test]
fn grad_mul() {
    binary_check("mul", ops::mul, false);
}

#[test]
fn grad_div() {
    binary_check("div", ops::div, true);
}

#[test]
fn grad_same_tensor_twice_accumulates() {
    // x * x + x: the gradient 2x + 1 arrives along three paths and must be summed.
    let mut r = rng(7);
    let x = uniform(&mut r, 11, -2.0, 2.0);
    GradCheck::default().run("x*x+x", &[(x, vec![11])], &[true], |t| {
        ops::add(&ops::mul(&t[0], &t[0])?, &t[0])
    });
}

#[test]
fn grad_where() {
    // (mask, a, b) shapes: equal; the mask broadcast; then a and b broadcast too (their
    // gradients summed back over the broadcast axes), each in a different way.
    for (s, (sm, sa, sb)) in [
        (&[3usize, 5][..], &[3usize, 5][..], &[3usize, 5][..]),
        (&[2, 1, 4, 3], &[2, 3, 4, 3], &[2, 3, 4, 3]),
        (&[2, 3, 4], &[1, 3, 1], &[2, 1, 4]),
        (&[4, 1], &[4, 5], &[5]),
        (&[3, 4], &[1], &[3, 1]),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(200 + s as u64);
        let mask: Vec<f32> = uniform(&mut r, numel(sm), 0.0, 1.0)
            .into_iter()
            .map(|v| if v > 0.5 { 1.0 } else { 0.0 })
            .collect();
        let a = uniform(&mut r, numel(sa), -2.0, 2.0);
        let b = uniform(&mut r, numel(sb), -2.0, 2.0);
        GradCheck::default().run(
            &format!("where mask {sm:?} a {sa:?} b {sb:?}"),
            &[(mask, sm.to_vec()), (a, sa.to_vec()), (b, sb.to_vec())],
            &[false, true, true],
            |t| ops::where_(&t[0], &t[1], &t[2]),
        );
    }
}

#[test]
fn grad_expand() {
    for (s, (from, to)) in [
        (&[1usize, 3, 1, 1][..], &[2usize, 3, 5, 7][..]),
        (&[5][..], &[3, 5][..]),
        (&[][..], &[4, 3][..]),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(300 + s as u64);
        let x = uniform(&mut r, numel(from), -2.0, 2.0);
        let to = to.to_vec();
        GradCheck::default().run(
            &format!("expand {from:?} -> {to:?}"),
            &[(x, from.to_vec())],
            &[true],
            |t| ops::expand(&t[0], &to),
        );
    }
}

/// (shape, axes) for reductions, including a reduction longer than one chunk (two passes)
/// and one with many short outputs (one invocation per output).
const REDUCTIONS: &[(&[usize], &[usize])] = &[
    (&[2, 3, 5, 7], &[0, 2, 3]),
    (&[2, 3, 5, 7], &[1]),
    (&[2, 3, 5, 7], &[3]),
    (&[3, 5], &[0]),
    (&[2, 4500], &[1]),
    (&[5000, 3], &[1]),
    (&[9], &[0]),
];

#[test]
fn grad_sum_axes() {
    for (s, (shape, axes)) in REDUCTIONS.iter().enumerate() {
        for keepdim in [false, true] {
            let mut r = rng(400 + s as u64);
            let x = uniform(&mut r, numel(shape), -1.0, 1.0);
            GradCheck::default().run(
                &format!("sum {shape:?} axes {axes:?} keepdim {keepdim}"),
                &[(x, shape.to_vec())],
                &[true],
                |t| ops::sum(&t[0], axes, keepdim),
            );
        }
    }
}

#[test]
fn grad_mean_axes() {
    for (s, (shape, axes)) in REDUCTIONS.iter().enumerate() {
        let mut r = rng(500 + s as u64);
        let x = uniform(&mut r, numel(shape), -1.0, 1.0);
        GradCheck::default().run(
            &format!("mean {shape:?} axes {axes:?}"),
            &[(x, shape.to_vec())],
            &[true],
            |t| ops::mean(&t[0], axes, false),
        );
    }
}

#[test]
fn grad_sum_and_mean_all() {
    for (s, shape) in [&[7usize][..], &[2, 3, 5, 7], &[3, 3000]]
        .iter()
        .enumerate()
    {
        let mut r = rng(600 + s as u64);
        let x = uniform(&mut r, numel(shape), -1.0, 1.0);
        let inputs = [(x, shape.to_vec())];
        GradCheck::default().run(&format!("sum_all {shape:?}"), &inputs, &[true], |t| {
            ops::sum_all(&t[0])
        });
        GradCheck::default().run(&format!("mean_all {shape:?}"), &inputs, &[true], |t| {
            ops::mean_all(&t[0])
        });
    }
}

#[test]
fn grad_sum_to() {
    for (s, (from, to)) in [
        (&[2usize, 3, 5, 7][..], &[1usize, 3, 1, 1][..]),
        (&[2, 3, 5, 7][..], &[2, 1, 5, 7][..]),
        (&[4, 5][..], &[5][..]),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(700 + s as u64);
        let x = uniform(&mut r, numel(from), -1.0, 1.0);
        let to = to.to_vec();
        GradCheck::default().run(
            &format!("sum_to {from:?} -> {to:?}"),
            &[(x, from.to_vec())],
            &[true],
            |t| ops::sum_to(&t[0], &to),
        );
    }
}

#[test]
fn grad_reshape() {
    let mut r = rng(800);
    let x = uniform(&mut r, 30, -1.0, 1.0);
    GradCheck::default().run(
        "reshape [2,3,5] -> [6,5]",
        &[(x, vec![2, 3, 5])],
        &[true],
        |t| {
            // Multiply after the reshape so the upstream gradient is not uniform.
            let y = ops::reshape(&t[0], &[6, 5])?;
            ops::mul(&y, &y)
        },
    );
}

/// (m, n, k) for matmul: odd, crossing a 64-wide tile, and vec4-compatible.
const MATMULS: &[(usize, usize, usize)] = &[(5, 3, 7), (1, 1, 1), (9, 12, 8), (66, 5, 3)];

fn matmul_check(variant: Option<MatmulVariant>) {
    for (s, &(m, n, k)) in MATMULS.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let dims = apga_gpu::ops::matmul::Dims { m, n, k, ta, tb };
            if variant.is_some_and(|v| !v.supports(&dims)) {
                continue;
            }
            let mut r = rng(900 + s as u64);
            let a = uniform(&mut r, m * k, -1.0, 1.0);
            let b = uniform(&mut r, k * n, -1.0, 1.0);
            let sa = if ta { vec![k, m] } else { vec![m, k] };
            let sb = if tb { vec![n, k] } else { vec![k, n] };
            GradCheck::default().run(
                &format!("matmul {variant:?} m{m} n{n} k{k} ta {ta} tb {tb}"),
                &[(a, sa), (b, sb)],
                &[true, true],
                |t| match variant {
                    Some(v) => ops::matmul_with(v, &t[0], &t[1], ta, tb),
                    None => ops::matmul_t(&t[0], &t[1], ta, tb),
                },
            );
        }
    }
}

#[test]
fn grad_matmul_autotuned() {
    matmul_check(None);
}

#[test]
fn grad_matmul_every_variant() {
    for v in MatmulVariant::ALL {
        matmul_check(Some(v));
    }
}

#[test]
fn grad_composite_mlp() {
    // A two-layer perceptron with a broadcast bias: relu(x W1^T + b1) W2^T, checked in every
    // parameter at once.
    let mut r = rng(1000);
    let x = uniform(&mut r, 4 * 5, -1.0, 1.0);
    let w1 = uniform(&mut r, 6 * 5, -1.0, 1.0);
    let b1 = uniform(&mut r, 6, -0.5, 0.5);
    let w2 = uniform(&mut r, 3 * 6, -1.0, 1.0);
    GradCheck {
        atol: 5e-3,
        ..Default::default()
    }
    .run(
        "mlp",
        &[
            (x, vec![4, 5]),
            (w1, vec![6, 5]),
            (b1, vec![6]),
            (w2, vec![3, 6]),
        ],
        &[true, true, true, true],
        |t| {
            let h = ops::relu(&ops::add(
                &ops::matmul_t(&t[0], &t[1], false, true)?,
                &t[2],
            )?)?;
            ops::matmul_t(&h, &t[3], false, true)
        },
    );
}

/// (n, ci, h, w, co, k, stride, pad): odd sizes, stride 2 on odd inputs, 1x1, 7x7 stem-like.
const CONVS: &[ConvCase] = &[
    (1, 2, 5, 5, 3, 3, 1, 1),
    (2, 3, 7, 5, 5, 3, 2, 1),
    (2, 5, 4, 3, 9, 1, 1, 0),
    (1, 3, 9, 9, 4, 7, 2, 3),
];

#[test]
fn grad_conv2d() {
    for (s, &(n, ci, h, w, co, k, st, p)) in CONVS.iter().enumerate() {
        let mut r = rng(1100 + s as u64);
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * k * k, -0.5, 0.5);
        let b = uniform(&mut r, co, -0.5, 0.5);
        GradCheck::default().run(
            &format!("conv2d {:?}", (n, ci, h, w, co, k, st, p)),
            &[
                (x, vec![n, ci, h, w]),
                (wt, vec![co, ci, k, k]),
                (b, vec![co]),
            ],
            &[true, true, true],
            |t| ops::conv2d(&t[0], &t[1], Some(&t[2]), st, p),
        );
    }
}

#[test]
fn grad_conv2d_winograd() {
    winograd_gradcheck("winograd", "conv_winograd::");
}

#[test]
fn grad_conv2d_winograd4() {
    winograd_gradcheck("winograd4", "conv_winograd4::");
}

fn winograd_gradcheck(variant: &str, shader: &str) {
    // Winograd F(2x2, 3x3) or F(4x4, 3x3) forced for all three directions (3x3, stride 1,
    // padding 1): odd sizes (partial tiles), output channels a multiple of 4 (Winograd weight
    // gradient) and not (its input gradient), several images.
    let g = apga_gpu::Gpu::new(apga_gpu::GpuOptions {
        autotune: false,
        kernel_overrides: ["conv-fwd", "conv-dgrad", "conv-wgrad"]
            .map(|d| (d.to_string(), variant.to_string()))
            .to_vec(),
        profile: true,
        ..Default::default()
    })
    .unwrap();
    for (s, &(n, ci, h, w, co)) in [
        (2usize, 4usize, 5usize, 7usize, 8usize),
        (1, 8, 6, 6, 4),
        (3, 4, 3, 4, 5),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(1300 + s as u64);
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * 9, -0.5, 0.5);
        let b = uniform(&mut r, co, -0.5, 0.5);
        GradCheck::default().run_on(
            &g,
            &format!("conv2d {variant} {:?}", (n, ci, h, w, co)),
            &[
                (x, vec![n, ci, h, w]),
                (wt, vec![co, ci, 3, 3]),
                (b, vec![co]),
            ],
            &[true, true, true],
            |t| ops::conv2d(&t[0], &t[1], Some(&t[2]), 1, 1),
        );
    }
    let ran = g.profile_report().unwrap().unwrap().table(100);
    for k in ["wino_output", "wino_dy", "wino_wgrad"] {
        let k = format!("{shader}{k}");
        assert!(ran.contains(&k), "{k} did not run:\n{ran}");
    }
}

#[test]
fn grad_conv_transpose2d() {
    // (n, ci, h, w, co, k, stride, pad, output_padding); the first is UNet11's decoder shape.
    for (s, &(n, ci, h, w, co, k, st, p, op)) in [
        (
            1usize, 3usize, 3usize, 3usize, 2usize, 3usize, 2usize, 1usize, 1usize,
        ),
        (2, 2, 3, 4, 3, 3, 1, 1, 0),
        (1, 2, 2, 3, 3, 4, 2, 1, 0),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(1200 + s as u64);
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, ci * co * k * k, -0.5, 0.5);
        let b = uniform(&mut r, co, -0.5, 0.5);
        GradCheck::default().run(
            &format!("conv_transpose2d {:?}", (n, ci, h, w, co, k, st, p, op)),
            &[
                (x, vec![n, ci, h, w]),
                (wt, vec![ci, co, k, k]),
                (b, vec![co]),
            ],
            &[true, true, true],
            |t| ops::conv_transpose2d(&t[0], &t[1], Some(&t[2]), st, p, op),
        );
    }
}

#[test]
fn grad_concat_narrow_pad() {
    let mut r = rng(1300);
    let a = uniform(&mut r, 2 * 3 * 4, -1.0, 1.0);
    let b = uniform(&mut r, 2 * 2 * 4, -1.0, 1.0);
    let inputs = [(a, vec![2, 3, 4]), (b, vec![2, 2, 4])];
    GradCheck::default().run("concat axis 1", &inputs, &[true, true], |t| {
        ops::concat(&[&t[0], &t[1]], 1)
    });
    GradCheck::default().run("narrow axis 1", &inputs[..1], &[true], |t| {
        ops::narrow(&t[0], 1, 1, 2)
    });
    GradCheck::default().run("pad axis 2", &inputs[..1], &[true], |t| {
        ops::pad_axis(&t[0], 2, 1, 7)
    });
}

#[test]
fn grad_write_slice_block_buffer() {
    // A miniature dense block: the buffer starts as the input padded to 5 channels; each
    // "layer" reads the channels written so far and writes its own.
    let mut r = rng(1400);
    let x = uniform(&mut r, 2 * 2 * 3, -1.0, 1.0);
    let w1 = uniform(&mut r, 2, -1.0, 1.0);
    let w2 = uniform(&mut r, 4, -1.0, 1.0);
    GradCheck::default().run(
        "dense block via write_slice",
        &[(x, vec![2, 2, 3]), (w1, vec![1, 2, 1]), (w2, vec![1, 4, 1])],
        &[true, true, true],
        |t| {
            let block = ops::pad_axis(&t[0], 1, 0, 5)?;
            let f1 = ops::sigmoid(&ops::sum(
                &ops::mul(&ops::narrow(&block, 1, 0, 2)?, &t[1])?,
                &[1],
                true,
            )?)?;
            let block = ops::write_slice(&block, &ops::concat(&[&f1, &f1], 1)?, 1, 2)?;
            let f2 = ops::sum(
                &ops::mul(&ops::narrow(&block, 1, 0, 4)?, &t[2])?,
                &[1],
                true,
            )?;
            ops::write_slice(&block, &f2, 1, 4)
        },
    );
}

#[test]
fn grad_write_slice_runs() {
    // The buffer's gradient is g with the written slice zeroed: by clears of its contiguous
    // runs (3 here), or by a mask multiply where there are more than 256 runs (300 here).
    for rows in [3usize, 300] {
        let mut r = rng(1401 + rows as u64);
        let buf = uniform(&mut r, rows * 4 * 2, -1.0, 1.0);
        let x = uniform(&mut r, rows * 2, -1.0, 1.0);
        GradCheck::default().run(
            &format!("write_slice over {rows} runs"),
            &[(buf, vec![rows, 4, 2]), (x, vec![rows, 1, 2])],
            &[true, true],
            |t| ops::write_slice(&ops::mul_scalar(&t[0], 1.0)?, &t[1], 1, 2),
        );
    }
}

#[test]
fn grad_batch_norm2d() {
    // (2, 2, 9, 9): more pixels than the per-channel reduction's 64 lanes.
    for (s, &(n, c, h, w)) in [
        (2usize, 3usize, 3usize, 4usize),
        (1, 2, 5, 3),
        (3, 5, 1, 1),
        (2, 2, 9, 9),
        // Planes of whole quads (the vec4 kernels), 36 quads per plane.
        (2, 2, 12, 12),
    ]
    .iter()
    .enumerate()
    {
        for (training, relu) in [(true, false), (false, false), (true, true), (false, true)] {
            let mut r = rng(1500 + s as u64);
            let x = uniform(&mut r, n * c * h * w, -2.0, 2.0);
            let gamma = uniform(&mut r, c, 0.5, 1.5);
            // With ReLU, betas far from 0 keep pre-activations away from the kink.
            let beta = if relu {
                away_from_zero(&mut r, c, 1.0, 2.0)
            } else {
                uniform(&mut r, c, -0.5, 0.5)
            };
            let rm = tensor(&uniform(&mut r, c, -0.3, 0.3), &[c]);
            let rv = tensor(&uniform(&mut r, c, 0.5, 1.5), &[c]);
            let cfg = ops::BatchNormConfig {
                training,
                relu,
                ..Default::default()
            };
            GradCheck {
                eps: 1e-3,
                atol: 3e-3,
                rtol: 2e-2,
                ..Default::default()
            }
            .run(
                &format!(
                    "batch_norm2d {:?} train {training} relu {relu}",
                    (n, c, h, w)
                ),
                &[(x, vec![n, c, h, w]), (gamma, vec![c]), (beta, vec![c])],
                &[true, true, true],
                // Training uses no running stats here, so repeated forwards stay identical.
                |t| ops::batch_norm2d(&t[0], &t[1], &t[2], (!training).then_some((&rm, &rv)), cfg),
            );
        }
    }
}

/// Distinct values 0.1 apart in random order, so a finite-difference step never changes
/// which element of a pooling window is the maximum.
fn separated(r: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    use rand::seq::SliceRandom;
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - n as f32 * 0.05).collect();
    v.shuffle(r);
    v
}

#[test]
fn grad_pooling() {
    for (s, &(n, c, h, w, k, st, p)) in [
        (1usize, 2usize, 7usize, 7usize, 3usize, 2usize, 1usize),
        (2, 1, 6, 5, 2, 2, 0),
        (1, 2, 5, 5, 3, 1, 1),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(1600 + s as u64);
        let x = separated(&mut r, n * c * h * w);
        let inputs = [(x, vec![n, c, h, w])];
        let what = format!("{:?}", (n, c, h, w, k, st, p));
        GradCheck::default().run(&format!("max_pool2d {what}"), &inputs, &[true], |t| {
            ops::max_pool2d(&t[0], k, st, p)
        });
        GradCheck::default().run(&format!("avg_pool2d {what}"), &inputs, &[true], |t| {
            ops::avg_pool2d(&t[0], k, st, p)
        });
    }
    let mut r = rng(1650);
    let x = uniform(&mut r, 2 * 3 * 4 * 5, -1.0, 1.0);
    GradCheck::default().run(
        "global_avg_pool2d",
        &[(x, vec![2, 3, 4, 5])],
        &[true],
        |t| ops::global_avg_pool2d(&t[0]),
    );
}

#[test]
fn grad_upsampling() {
    for (s, &(h, w, oh, ow)) in [
        (3usize, 3usize, 7usize, 10usize),
        (5, 4, 3, 3),
        (2, 3, 16, 5),
    ]
    .iter()
    .enumerate()
    {
        let mut r = rng(1700 + s as u64);
        let x = uniform(&mut r, 2 * h * w, -1.0, 1.0);
        let inputs = [(x, vec![1, 2, h, w])];
        GradCheck::default().run(
            &format!("upsample nearest {:?}", (h, w, oh, ow)),
            &inputs,
            &[true],
            |t| ops::upsample_nearest2d(&t[0], [oh, ow]),
        );
        GradCheck::default().run(
            &format!("upsample bilinear {:?}", (h, w, oh, ow)),
            &inputs,
            &[true],
            |t| ops::upsample_bilinear2d(&t[0], [oh, ow]),
        );
    }
}

#[test]
fn grad_losses() {
    let mut r = rng(1800);
    let z = uniform(&mut r, 4 * 3, -2.0, 2.0);
    GradCheck::default().run("cross_entropy", &[(z, vec![4, 3])], &[true], |t| {
        ops::cross_entropy(&t[0], &[2, 0, 1, 2])
    });
    let p = uniform(&mut r, 7, 0.05, 0.95);
    let target: Vec<f32> = uniform(&mut r, 7, 0.0, 1.0);
    GradCheck {
        eps: 1e-3,
        ..Default::default()
    }
    .run(
        "binary_cross_entropy",
        &[(p, vec![7]), (target.clone(), vec![7])],
        &[true, false],
        |t| ops::binary_cross_entropy(&t[0], &t[1]),
    );
    let z = uniform(&mut r, 7, -4.0, 4.0);
    GradCheck::default().run(
        "binary_cross_entropy_with_logits",
        &[(z, vec![7]), (target, vec![7])],
        &[true, false],
        |t| ops::binary_cross_entropy_with_logits(&t[0], &t[1]),
    );
}

#[test]
fn grad_linear() {
    let mut r = rng(1900);
    let x = uniform(&mut r, 3 * 5, -1.0, 1.0);
    let w = uniform(&mut r, 4 * 5, -1.0, 1.0);
    let b = uniform(&mut r, 4, -1.0, 1.0);
    GradCheck::default().run(
        "linear",
        &[(x, vec![3, 5]), (w, vec![4, 5]), (b, vec![4])],
        &[true, true, true],
        |t| ops::linear(&t[0], &t[1], Some(&t[2])),
    );
}

#[test]
fn grad_fused_bn_relu_conv2d() {
    // (n, c_total, c_in, h, w, co, k, stride, pad)
    for (s, &(n, ct, c, h, w, co, k, st, p)) in [
        (
            2usize, 5usize, 3usize, 4usize, 3usize, 4usize, 1usize, 1usize, 0usize,
        ),
        (2, 3, 3, 5, 4, 2, 3, 1, 1),
        (1, 4, 2, 5, 5, 3, 3, 2, 1),
    ]
    .iter()
    .enumerate()
    {
        for training in [true, false] {
            let mut r = rng(2000 + s as u64);
            let x = uniform(&mut r, n * ct * h * w, -2.0, 2.0);
            let gamma = uniform(&mut r, c, 0.5, 1.5);
            let beta = away_from_zero(&mut r, c, 1.0, 2.0);
            let wt = uniform(&mut r, co * c * k * k, -0.5, 0.5);
            let rm = tensor(&uniform(&mut r, c, -0.3, 0.3), &[c]);
            let rv = tensor(&uniform(&mut r, c, 0.5, 1.5), &[c]);
            let cfg = ops::BatchNormConfig {
                training,
                ..Default::default()
            };
            GradCheck {
                eps: 1e-3,
                atol: 3e-3,
                rtol: 2e-2,
                ..Default::default()
            }
            .run(
                &format!(
                    "bn_relu_conv2d {:?} train {training}",
                    (n, ct, c, h, w, co, k, st, p)
                ),
                &[
                    (x, vec![n, ct, h, w]),
                    (gamma, vec![c]),
                    (beta, vec![c]),
                    (wt, vec![co, c, k, k]),
                ],
                &[true, true, true, true],
                |t| {
                    ops::bn_relu_conv2d(
                        &t[0],
                        c,
                        &t[1],
                        &t[2],
                        (!training).then_some((&rm, &rv)),
                        cfg,
                        &t[3],
                        st,
                        p,
                    )
                },
            );
        }
    }
}
