//! The weight gradient (`shaders/conv2d_wgrad.wgsl`, `shaders/conv_gemm*.wgsl`): split-row
//! blockings of 4x4 or 8x8 output channels x columns, or transposed im2col + GEMM.

use crate::error::Result;
use crate::gpu::autotune;
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::ops::layout::copy_cols;
use crate::ops::{reshape, sum};
use crate::shaders::{CONV2D_WGRAD, CONV_GEMM, CONV_GEMM_SUBGROUP};
use crate::tensor::Tensor;

use super::direct::params;
use super::gemm::{gemm_params, im2col, im2col_group, im2col_rows, padded_rows_fit};
use super::variant::{class_key, family, wgrad_candidates, Dir, WgradKernel};
use super::winograd::{wgrad_winograd, Tile};
use super::{check_groups, ConvGeom, Slice};

/// Weight gradient [co, ci, kh, kw] of a convolution of geometry `g` from its input `x` and
/// output gradient `dy`; `prologue` as in `fwd_into`. Chosen by autotuning among two
/// blockings (4 x 4 and 8 x 8 output channels x columns per invocation), transposed im2col +
/// GEMM, the GEMM on the input for 1x1 convolutions (on rows padded to 4 where the pixel
/// count is no multiple of 4), and Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1
/// padding-1 convolutions.
pub(crate) fn wgrad(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
) -> Result<Tensor> {
    let run = |k: WgradKernel| match k {
        WgradKernel::Gemm => wgrad_gemm(gpu, g, x, src, dy, dys, prologue, false),
        WgradKernel::GemmSubgroup => wgrad_gemm(gpu, g, x, src, dy, dys, prologue, true),
        WgradKernel::Blocked4 => wgrad_blocked(gpu, g, x, src, dy, dys, prologue, 4),
        WgradKernel::Blocked8 => wgrad_blocked(gpu, g, x, src, dy, dys, prologue, 8),
        WgradKernel::Gemm1x1 => wgrad_1x1(gpu, g, x, src, dy, dys, prologue),
        WgradKernel::Gemm1x1Padded => wgrad_1x1_padded(gpu, g, x, src, dy, dys, prologue),
        WgradKernel::Winograd => wgrad_winograd(Tile::F2, gpu, g, x, src, dy, dys, prologue),
        WgradKernel::Winograd4 => wgrad_winograd(Tile::F4, gpu, g, x, src, dy, dys, prologue),
    };
    let k = autotune::choose(
        gpu,
        &class_key(Dir::Wgrad, g, prologue.is_some()),
        &family(Dir::Wgrad),
        &wgrad_candidates(gpu, g),
        0,
        |k| run(k).map(|_| ()),
    )?;
    run(k)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad_blocked(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
    block: usize,
) -> Result<Tensor> {
    let ktot = g.ci * g.kh * g.kw;
    let rows = g.n * g.oh;
    let blocks = ktot.div_ceil(block) * g.co.div_ceil(block);
    // Enough chunks to keep the adapter busy (`Gpu::parallelism`), each chunk at least one
    // row, partial sums at most 32 MiB, and at most 1024 chunks.
    let by_parallelism = gpu.parallelism().div_ceil(blocks);
    let by_memory = ((32 << 20) / (4 * g.co * ktot)).max(1);
    let chunks = by_parallelism.min(by_memory).min(rows).clamp(1, 1024);
    let rows_per_chunk = rows.div_ceil(chunks);
    let chunks = rows.div_ceil(rows_per_chunk);
    let partial = gpu.alloc(chunks * g.co * ktot, &[chunks, g.co, ktot])?;
    let wg = [
        ktot.div_ceil(block).div_ceil(8) as u32,
        g.co.div_ceil(block).div_ceil(8) as u32,
        chunks as u32,
    ];
    check_groups(gpu, "conv2d weight gradient", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    let entry = if block == 8 { "wgrad8" } else { "wgrad" };
    gpu.dispatch(
        &Kernel::new(&CONV2D_WGRAD, entry).with(&constants),
        params(g, 0, src, dys, rows_per_chunk).as_words(),
        &[&partial],
        &[x, dy, prologue.unwrap_or(dy)],
        wg,
    )?;
    let shape = [g.co, g.ci, g.kh, g.kw];
    let partial = Tensor::from_storage(std::sync::Arc::new(partial), &[chunks, g.co * ktot], false);
    if chunks == 1 {
        return reshape(&partial, &shape);
    }
    reshape(&sum(&partial, &[0], false)?, &shape)
}

/// Weight gradient as transposed im2col + GEMM (conv_gemm.wgsl `wgrad_gemm`, or with
/// `subgroup` conv_gemm_subgroup.wgsl's): partial sums over chunks of (image, pixel quad)
/// pairs, added up; the padded taps are dropped.
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad_gemm(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
    subgroup: bool,
) -> Result<Tensor> {
    let ktot = g.ci * g.kh * g.kw;
    let kpad = im2col_rows(g);
    let q_img = g.oh * g.ow / 4;
    let group = im2col_group(gpu, g);
    let blocks = (kpad / 4).div_ceil(2) * g.co.div_ceil(8);
    // Chunks per image group: enough invocations for the adapter, partial sums at most 32 MiB.
    let by_parallelism = gpu.parallelism().div_ceil(blocks);
    let by_memory = ((32 << 20) / (4 * g.co * kpad) / g.n.div_ceil(group)).max(1);
    let max_z = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let plan: Vec<(usize, usize, usize)> = (0..g.n)
        .step_by(group)
        .map(|img0| {
            let imgs = group.min(g.n - img0);
            let quads = imgs * q_img;
            // The chunks are the dispatch's z workgroups.
            let chunks = by_parallelism
                .min(by_memory)
                .min(max_z)
                .clamp(1, quads.max(1));
            let per_chunk = quads.div_ceil(chunks);
            (img0, imgs, per_chunk)
        })
        .collect();
    let chunks_of = |imgs: usize, per: usize| (imgs * q_img).div_ceil(per);
    let total_chunks: usize = plan.iter().map(|&(_, i, p)| chunks_of(i, p)).sum();
    let partial = gpu.alloc(total_chunks * g.co * kpad, &[total_chunks, g.co, kpad])?;
    let mut chunk0 = 0;
    for &(img0, imgs, per_chunk) in &plan {
        let cols = im2col(gpu, g, x, src, prologue, (img0, imgs), true)?;
        let chunks = chunks_of(imgs, per_chunk);
        let wg = [
            (kpad / 4).div_ceil(2).div_ceil(8) as u32,
            g.co.div_ceil(8).div_ceil(8) as u32,
            chunks as u32,
        ];
        check_groups(gpu, "conv2d weight gradient", g, wg)?;
        let shader = if subgroup {
            &CONV_GEMM_SUBGROUP
        } else {
            &CONV_GEMM
        };
        gpu.dispatch(
            &Kernel::new(shader, "wgrad_gemm"),
            gemm_params(g, kpad, src, (img0, imgs), dys, (per_chunk, chunk0)).as_words(),
            &[&partial],
            &[dy, &cols],
            wg,
        )?;
        chunk0 += chunks;
    }
    let partial = Tensor::from_storage(
        std::sync::Arc::new(partial),
        &[total_chunks, g.co * kpad],
        false,
    );
    let summed = if total_chunks == 1 {
        reshape(&partial, &[g.co, kpad])?
    } else {
        reshape(&sum(&partial, &[0], false)?, &[g.co, kpad])?
    };
    let shape = [g.co, g.ci, g.kh, g.kw];
    if kpad == ktot {
        reshape(&summed, &shape)
    } else {
        reshape(&crate::ops::narrow(&summed, 1, 0, ktot)?, &shape)
    }
}

/// Whether the 1x1 weight-gradient GEMM applies: a 1x1 stride-1 unpadded convolution over
/// whole pixel quads, input channels a multiple of 4 (its vec4 rows of the result).
pub(super) fn wgrad_1x1_fits(g: &ConvGeom) -> bool {
    g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad == 0
        && (g.oh * g.ow).is_multiple_of(4)
        && g.ci.is_multiple_of(4)
        && g.n > 0
        && g.ci > 0
        && g.co > 0
}

/// Whether the 1x1 weight-gradient GEMM applies on rows padded to a multiple of 4
/// ([`wgrad_1x1_padded`]): a 1x1 stride-1 unpadded convolution over maps whose pixel count is
/// no multiple of 4 (7x7), input channels a multiple of 4, the padded copies within one
/// storage binding each.
pub(super) fn wgrad_1x1_padded_fits(gpu: &Gpu, g: &ConvGeom) -> bool {
    padded_rows_fit(gpu, g)
        && g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad == 0
        && !(g.oh * g.ow).is_multiple_of(4)
        && g.ci.is_multiple_of(4)
        && g.n > 0
        && g.ci > 0
        && g.co > 0
}

/// [`wgrad_1x1`] for maps whose pixel count is no multiple of 4: the input's and the output
/// gradient's rows copied into rows padded with zeros to a multiple of 4 (`copy_cols`), then
/// the GEMM over those. A padding column's input may be nonzero through the prologue
/// (relu(shift)), but its output gradient is zero, so it adds nothing to the sums.
#[allow(clippy::too_many_arguments)]
fn wgrad_1x1_padded(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
) -> Result<Tensor> {
    let hw = g.h * g.w;
    let hw4 = hw.div_ceil(4) * 4;
    let xp = gpu.alloc(g.n * g.ci * hw4, &[g.n, g.ci, hw4])?;
    copy_cols(
        gpu,
        x,
        &xp,
        g.n,
        g.ci,
        (hw, src.total, src.off),
        (hw4, g.ci, 0),
    )?;
    let dyp = gpu.alloc(g.n * g.co * hw4, &[g.n, g.co, hw4])?;
    copy_cols(
        gpu,
        dy,
        &dyp,
        g.n,
        g.co,
        (hw, dys.total, dys.off),
        (hw4, g.co, 0),
    )?;
    let padded = ConvGeom {
        h: 1,
        w: hw4,
        oh: 1,
        ow: hw4,
        ..*g
    };
    let (xs, ys) = (Slice::whole(g.ci), Slice::whole(g.co));
    wgrad_1x1(gpu, &padded, &xp, xs, &dyp, ys, prologue)
}

/// Weight gradient [co, ci, 1, 1] of a 1x1 convolution as a GEMM reading the input directly
/// (conv_gemm.wgsl `wgrad_1x1`): no transposed im2col copy; partial sums over chunks of
/// (image, pixel quad) pairs, added up.
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad_1x1(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
) -> Result<Tensor> {
    let quads = g.n * g.oh * g.ow / 4;
    let blocks = (g.ci / 4).div_ceil(2) * g.co.div_ceil(8);
    // Enough chunks for the adapter's lanes, partial sums at most 32 MiB.
    let by_parallelism = gpu.parallelism().div_ceil(blocks);
    let by_memory = ((32 << 20) / (4 * g.co * g.ci)).max(1);
    // The chunks are the dispatch's z workgroups.
    let max_z = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let chunks = by_parallelism
        .min(by_memory)
        .min(max_z)
        .clamp(1, quads.max(1));
    let per_chunk = quads.div_ceil(chunks);
    let chunks = quads.div_ceil(per_chunk).max(1);
    let partial = gpu.alloc(chunks * g.co * g.ci, &[chunks, g.co, g.ci])?;
    let wg = [
        (g.ci / 4).div_ceil(2).div_ceil(8) as u32,
        g.co.div_ceil(8).div_ceil(8) as u32,
        chunks as u32,
    ];
    check_groups(gpu, "conv2d weight gradient", g, wg)?;
    let constants = [("PROLOGUE", prologue.is_some() as u32 as f64)];
    gpu.dispatch(
        &Kernel::new(&CONV_GEMM, "wgrad_1x1").with(&constants),
        gemm_params(g, g.ci, src, (0, g.n), dys, (per_chunk, 0)).as_words(),
        &[&partial],
        &[dy, x, prologue.unwrap_or(dy)],
        wg,
    )?;
    let partial = Tensor::from_storage(std::sync::Arc::new(partial), &[chunks, g.co * g.ci], false);
    let shape = [g.co, g.ci, 1, 1];
    if chunks == 1 {
        return reshape(&partial, &shape);
    }
    reshape(&sum(&partial, &[0], false)?, &shape)
}
