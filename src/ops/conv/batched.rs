//! The batched GEMM every GEMM path of the convolutions runs (`shaders/conv1x1.wgsl`,
//! `shaders/conv1x1_subgroup.wgsl`): per image (or Winograd transform element) `c = a * b +
//! bias`, its lane layouts (row blocks, images folded into columns, rows across lanes, both
//! operands shared through subgroup shuffles), split-K, and the autotuned choice among them.

use crate::error::Result;
use crate::gpu::autotune;
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::shaders::{CONV1X1, CONV1X1_SUBGROUP};

use super::{check_groups, ConvGeom};

/// One call of the batched GEMM kernel (conv1x1.wgsl): for each of `imgs` images i,
/// `c[i] (m x n) = a[i] (m x k, rows of lda) * b[i] (k x n) + bias`, where a[i] starts at
/// element `i * a_batch` (0: one A for all), b[i] at `i * b_batch + b_off` and c[i] at
/// `i * c_batch + c_off` (all multiples of 4).
pub(super) struct BatchedGemm {
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) lda: usize,
    pub(super) a_batch: usize,
    pub(super) b_batch: usize,
    pub(super) b_off: usize,
    pub(super) c_batch: usize,
    pub(super) c_off: usize,
    pub(super) imgs: usize,
}

pub(super) fn batched_gemm(
    gpu: &Gpu,
    d: &BatchedGemm,
    (a, b, bias, out): (&Storage, &Storage, &Storage, &Storage),
    g: &ConvGeom,
    prologue: Option<&Storage>,
) -> Result<()> {
    let u = |v: usize| v as u32;
    let params = BatchedGemmParams {
        m: u(d.m),
        n: u(d.n),
        k: u(d.k),
        lda: u(d.lda),
        b_batch: u(d.b_batch),
        b_off: u(d.b_off),
        c_batch: u(d.c_batch),
        c_off: u(d.c_off),
        k_split: 0,
        imgs: u(d.imgs),
        split_stride: 0,
        splits: 1,
        a_batch: u(d.a_batch),
        rb: u(row_blocks(d.m)),
        fold: u32::from(folds(d)),
        ..Default::default()
    };
    let wg = gemm_grid(d, 1);
    check_groups(gpu, "conv (batched GEMM)", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    let run = |kernel: Variant| match kernel {
        Variant::Plain(shader) => gpu.dispatch(
            &Kernel::new(shader, "main").with(&constants),
            params.as_words(),
            &[out],
            &[a, b, bias, prologue.unwrap_or(bias)],
            wg,
        ),
        Variant::Across => {
            let (cols, z) = gemm_cols(d);
            let wg = [cols.div_ceil(8) as u32, d.m.div_ceil(64) as u32, z as u32];
            check_groups(gpu, "conv (batched GEMM)", g, wg)?;
            let p = BatchedGemmParams {
                across: 1,
                ..params
            };
            gpu.dispatch(
                &Kernel::new(&CONV1X1, "main").with(&constants),
                p.as_words(),
                &[out],
                &[a, b, bias, prologue.unwrap_or(bias)],
                wg,
            )
        }
        Variant::Shared2d => {
            let (cols, z) = gemm_cols(d);
            let rb = row_blocks2d(d.m);
            let wg = [
                cols.div_ceil(4 * (8 / rb)) as u32,
                d.m.div_ceil(16 * rb) as u32,
                z as u32,
            ];
            // Its workgroups cover half the columns of the others' where m <= 8 or m > 64;
            // where that passes the per-dimension limit the others' grid still fits (checked
            // above), the subgroup kernel runs instead, so the candidate never fails a shape.
            let max = gpu.limits().max_compute_workgroups_per_dimension;
            if wg.iter().any(|&n| n > max) {
                return gpu.dispatch(
                    &Kernel::new(&CONV1X1_SUBGROUP, "main").with(&constants),
                    params.as_words(),
                    &[out],
                    &[a, b, bias, prologue.unwrap_or(bias)],
                    gemm_grid(d, 1),
                );
            }
            let p = BatchedGemmParams {
                rb: rb as u32,
                ..params
            };
            gpu.dispatch(
                &Kernel::new(&CONV1X1_SUBGROUP, "main2d").with(&constants),
                p.as_words(),
                &[out],
                &[a, b, bias, prologue.unwrap_or(bias)],
                wg,
            )
        }
        Variant::SplitK(k_split) => split_k(
            gpu,
            d,
            params,
            k_split,
            (a, b, bias, out),
            &constants,
            prologue,
        ),
    };
    let mut cands = vec![("vec4", Variant::Plain(&CONV1X1))];
    if gpu.has_subgroups() {
        cands.push(("subgroup", Variant::Plain(&CONV1X1_SUBGROUP)));
        cands.push(("subgroup2d", Variant::Shared2d));
    }
    // Few column pairs in all (1x1 convolutions on 2x2 and 4x4 maps, up to 4 images: at most
    // 8 pairs): rows across the lanes. Decided on the shape class's buckets, so that a cached
    // choice is always among the candidates.
    if d.a_batch == 0 && autotune::bucket(d.n) <= 16 && autotune::bucket(d.imgs) <= 4 {
        cands.push(("across", Variant::Across));
    }
    let key = format!(
        "gemm-batched/m{}/n{}/k{}/i{}",
        autotune::bucket(d.m),
        autotune::bucket(d.n),
        autotune::bucket(d.k),
        autotune::bucket(d.imgs)
    );
    let family = ["vec4", "subgroup", "subgroup2d", "across", "splitk"];
    if let Some(ks) = split_k_rows(gpu, d) {
        let split = ("splitk", Variant::SplitK(ks));
        // CPU drivers run a few thousand invocations at a time, so splitting the reduction
        // never paid there (measured: it only lengthened the cold start's autotuning); it is
        // offered to the autotuner on GPUs, and anywhere when forced.
        if gpu.parallelism() > 4096 {
            cands.push(split);
        } else {
            let mut all = cands.clone();
            all.push(split);
            if let Some(v) = autotune::forced(gpu, &key, &family, &all, 0)? {
                return run(v);
            }
        }
    }
    if cands.len() == 1 {
        return run(cands[0].1);
    }
    // The 16 GEMMs of a Winograd convolution on a CPU driver take the subgroup kernel where
    // there is one (the autotuner's choice for 16 of their 28 shape classes), else the plain
    // one, unmeasured: measuring them cost the cold start 0.7 s, past its 30 s budget, for no
    // step time measurably gained (4.21-4.49 s against 4.26-4.31 s on lavapipe). `subgroup2d`
    // in their place measured the same (step GPU time 2109-2187 against 2138-2196 ms).
    if d.a_batch > 0 && gpu.parallelism() <= 4096 {
        let i = cands.iter().position(|c| c.0 == "subgroup").unwrap_or(0);
        let v = autotune::forced(gpu, &key, &family, &cands, i)?;
        return run(v.unwrap_or(cands[i].1));
    }
    let kernel = autotune::choose(gpu, &key, &family, &cands, 0, run)?;
    run(kernel)
}

/// Row blocks of 8 per workgroup of the batched GEMM (`rb` in conv1x1.wgsl): the smallest
/// power of two covering m, at most 8, so that m of 8, 16 or 32 leaves no lanes idle.
fn row_blocks(m: usize) -> usize {
    m.div_ceil(8).next_power_of_two().min(8)
}

/// Row blocks of 16 per workgroup of the both-operands-shared kernel (`main2d` in
/// conv1x1_subgroup.wgsl): the smallest power of two covering m, at most 8.
fn row_blocks2d(m: usize) -> usize {
    m.div_ceil(16).next_power_of_two().min(8)
}

/// Whether the batched GEMM folds its images into the column index (`fold`): only when an
/// image has fewer than 8 column pairs (a row of lanes would be partly idle). Larger images
/// keep one per z: their lanes are full anyway, x stays within the per-dimension workgroup
/// limit for any batch, and where each image has its own A (Winograd's transform elements) a
/// row of lanes spanning two images would load A per lane instead of sharing it.
fn folds(d: &BatchedGemm) -> bool {
    (d.n / 4).div_ceil(2) < 8
}

/// The batched GEMM's column pairs along the grid's x (of all images where they are folded
/// into one index) and its images along z (1 where folded).
fn gemm_cols(d: &BatchedGemm) -> (usize, usize) {
    let pairs = (d.n / 4).div_ceil(2);
    if folds(d) {
        (pairs * d.imgs, 1)
    } else {
        (pairs, d.imgs)
    }
}

/// The batched GEMM's workgroups for `splits` splits of K: column pairs (of all images where
/// they are folded into one index) by row blocks by images (unfolded) and splits.
fn gemm_grid(d: &BatchedGemm, splits: usize) -> [u32; 3] {
    let rb = row_blocks(d.m);
    let (cols, z) = gemm_cols(d);
    let z = z * splits;
    [
        cols.div_ceil(8 * (8 / rb)) as u32,
        d.m.div_ceil(8 * rb) as u32,
        z as u32,
    ]
}

/// A batched-GEMM kernel: the whole reduction per invocation, or split along K.
#[derive(Clone, Copy)]
enum Variant {
    Plain(&'static crate::gpu::Shader),
    /// conv1x1.wgsl with rows across the lanes (`across`), for products with few columns.
    Across,
    /// conv1x1_subgroup.wgsl's `main2d`: both operands shared through subgroup shuffles.
    Shared2d,
    /// K rows per split (a multiple of 4).
    SplitK(usize),
}

/// K rows per split when splitting pays: the product has fewer 8x8 blocks than the adapter
/// has lanes to run (`Gpu::parallelism`) and K is long enough to split into slices of at
/// least 16 rows; the partial products stay under 64 MiB. `None` otherwise.
fn split_k_rows(gpu: &Gpu, d: &BatchedGemm) -> Option<usize> {
    let blocks = (d.n / 4).div_ceil(2) * d.m.div_ceil(8) * d.imgs;
    let per_split = d.imgs * d.m * d.n * 4;
    let by_memory = (64 << 20) / per_split.max(1);
    // The split dispatch's z is splits (images folded into x) or images x splits, within the
    // adapter's per-dimension limit; the bound assumes the latter.
    let by_grid = gpu.limits().max_compute_workgroups_per_dimension as usize / d.imgs.max(1);
    let splits = (gpu.parallelism() / blocks.max(1))
        .min(d.k / 16)
        .min(by_memory)
        .min(by_grid)
        .min(64);
    if splits < 2 {
        return None;
    }
    // Rows per split rounded up to 4; the last split may be shorter.
    let rows = d.k.div_ceil(splits).div_ceil(4) * 4;
    (d.k.div_ceil(rows) >= 2).then_some(rows)
}

/// Split-K: each split's partial product into a scratch buffer, then `splitk_sum` adds them
/// into the output where the plain kernel would have written it.
fn split_k(
    gpu: &Gpu,
    d: &BatchedGemm,
    params: BatchedGemmParams,
    k_split: usize,
    (a, b, bias, out): (&Storage, &Storage, &Storage, &Storage),
    constants: &[(&'static str, f64)],
    prologue: Option<&Storage>,
) -> Result<()> {
    let splits = d.k.div_ceil(k_split);
    let stride = d.imgs * d.m * d.n;
    let partial = gpu.alloc(splits * stride, &[splits, stride])?;
    let u = |v: usize| v as u32;
    let p = BatchedGemmParams {
        c_batch: u(d.m * d.n),
        c_off: 0,
        k_split: u(k_split),
        split_stride: u(stride),
        splits: u(splits),
        ..params
    };
    let wg = gemm_grid(d, splits);
    gpu.dispatch(
        &Kernel::new(&CONV1X1, "main").with(constants),
        p.as_words(),
        &[&partial],
        &[a, b, bias, prologue.unwrap_or(bias)],
        wg,
    )?;
    let sum = BatchedGemmParams {
        splits: u(splits),
        split_stride: u(stride),
        ..params
    };
    gpu.dispatch(
        &Kernel::new(&CONV1X1, "splitk_sum"),
        sum.as_words(),
        &[out],
        &[&partial],
        gpu.grid((stride / 4).div_ceil(64)),
    )
}

crate::kernel_params! {
    /// The parameter block of `conv1x1.wgsl` and `conv1x1_subgroup.wgsl` (the batched GEMM).
    pub struct BatchedGemmParams {
        m: u32, n: u32, k: u32, lda: u32,
        b_batch: u32, b_off: u32, c_batch: u32, c_off: u32,
        k_split: u32, imgs: u32, split_stride: u32, splits: u32,
        a_batch: u32, rb: u32, fold: u32, across: u32,
    }
}
