//! CNN ops against naive CPU references: batch 1 and > 1, odd sizes, channel counts that are
//! no multiple of 4 or 8, stride 2 with odd inputs, padding > 0.

mod common;

use apga_gpu::ops;
use common::*;

/// (n, ci, h, w, co, k, stride, pad)
const CONVS: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 5, 5, 1, 3, 1, 1),
    (2, 3, 7, 9, 5, 3, 1, 1),
    (2, 3, 11, 9, 10, 7, 2, 3),  // DenseNet stem shape, odd input
    (3, 13, 6, 5, 9, 1, 1, 0),   // bottleneck 1x1, channels no multiple of 8
    (1, 4, 9, 7, 17, 3, 2, 0),
    (2, 2, 4, 4, 3, 3, 1, 2),    // padding larger than half the kernel
];

#[test]
fn conv2d_matches_cpu() {
    let mut r = rng(11);
    for &(n, ci, h, w, co, k, s, p) in CONVS {
        let x = uniform(&mut r, n * ci * h * w, -1.0, 1.0);
        let wt = uniform(&mut r, co * ci * k * k, -1.0, 1.0);
        let b = uniform(&mut r, co, -1.0, 1.0);
        for bias in [false, true] {
            let (want, shape) = cpu_conv2d(&x, [n, ci, h, w], &wt, [co, ci, k, k], bias.then_some(&b[..]), s, p);
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
            assert_close(&format!("conv2d {:?} bias {bias}", (n, ci, h, w, co, k, s, p)), &got.to_vec().unwrap(), &want, 1e-4, 1e-4);
        }
    }
}

/// (n, ci, h, w, co, k, stride, pad, output_padding)
const TCONVS: &[(usize, usize, usize, usize, usize, usize, usize, usize, usize)] = &[
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
        let (want, shape) = cpu_conv_transpose2d(&x, [n, ci, h, w], &wt, [ci, co, k, k], Some(&b), s, p, op);
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
        assert_close(&format!("conv_transpose2d {:?}", (n, ci, h, w, co, k, s, p, op)), &got.to_vec().unwrap(), &want, 1e-4, 1e-4);
    }
}

#[test]
fn conv_shape_errors_are_values() {
    let x = tensor(&[0.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]);
    let w = tensor(&[0.0; 5 * 2 * 3 * 3], &[5, 2, 3, 3]);
    let e = ops::conv2d(&x, &w, None, 1, 1).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
    let w = tensor(&[0.0; 5 * 3 * 7 * 7], &[5, 3, 7, 7]);
    assert!(ops::conv2d(&x, &w, None, 1, 0).is_err(), "kernel larger than input");
    assert!(ops::conv2d(&x, &w, None, 0, 3).is_err(), "stride 0");
    let wt = tensor(&[0.0; 3 * 2 * 3 * 3], &[3, 2, 3, 3]);
    assert!(ops::conv_transpose2d(&x, &wt, None, 2, 1, 2).is_err(), "output_padding >= stride");
    assert!(ops::conv2d(&tensor(&[0.0; 4], &[4]), &w, None, 1, 0).is_err(), "not NCHW");
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
    let padded = ops::pad_axis(&tensor(&b, &[2, 2, 5]), 1, 1, 4).unwrap().to_vec().unwrap();
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
