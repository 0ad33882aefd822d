//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 convolutions of stride 1 and padding 1
//! (`shaders/conv_winograd.wgsl`, `shaders/conv_winograd4.wgsl`): the forward, the input
//! gradient (the forward with flipped, transposed weights) and the weight gradient, each as
//! transforms around 16 (36) batched GEMMs (conv1x1.wgsl's, each with its own A), over groups
//! of tiles that fit the workspace (a group may end inside an image, so large images fit
//! too).

use crate::error::Result;
use crate::gpu::Shader;
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::shaders::{CONV_WINOGRAD, CONV_WINOGRAD4};
use crate::tensor::Tensor;
use std::sync::Arc;

use super::batched::{batched_gemm, BatchedGemm};
use super::{check_groups, ConvGeom, Slice};

crate::kernel_params! {
    /// The parameter block of `conv_winograd.wgsl`.
    pub struct WinogradParams {
        tiles: u32, t0: u32, ci: u32, co: u32,
        h: u32, w: u32, th: u32, tw: u32,
        t4: u32, src_c_total: u32, src_c_off: u32, dst_c_total: u32,
        dst_c_off: u32, groups: u32, _p1: u32, _p2: u32,
    }
}

/// The output tile of a Winograd convolution: F(2x2, 3x3) (4x4 input patches, 16 GEMMs) or
/// F(4x4, 3x3) (6x6 patches, 36 GEMMs: 2.25 and 4 times fewer multiplies than im2col).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    F2,
    F4,
}

impl Tile {
    /// Output rows and columns per tile.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Elements of a transformed tile: the number of GEMMs.
    fn elems(self) -> usize {
        let a = self.m() + 2;
        a * a
    }

    fn shader(self) -> &'static Shader {
        match self {
            Tile::F2 => &CONV_WINOGRAD,
            Tile::F4 => &CONV_WINOGRAD4,
        }
    }
}

/// Tiles (m x m output blocks) of one image.
fn tiles(g: &ConvGeom, tile: Tile) -> usize {
    g.oh.div_ceil(tile.m()) * g.ow.div_ceil(tile.m())
}

/// Tiles per group: the transformed input (E ci x T4) and the GEMMs' output (E co x T4, E
/// the GEMM count) within the workspace and a binding, T4 a multiple of 4, at most the
/// batch's tiles.
fn group(gpu: &Gpu, g: &ConvGeom, tile: Tile) -> usize {
    let e = tile.elems();
    let per_tile = e * (g.ci + g.co);
    let by_workspace = gpu.workspace_bytes() / (4 * per_tile);
    let by_binding = gpu.max_binding_elems() / (e * g.ci.max(g.co));
    // The GEMM's grid has t4 / 64 workgroups along x.
    let by_grid = gpu.limits().max_compute_workgroups_per_dimension as usize * 64;
    let t4 = by_workspace.min(by_binding).min(by_grid) / 4 * 4;
    t4.min((g.n * tiles(g, tile)).div_ceil(4) * 4)
}

/// Fewest tiles per group worth the three extra dispatches.
const MIN_GROUP: usize = 16;

/// Whether the Winograd forward with `tile` applies: a 3x3 kernel, stride 1, padding 1,
/// input channels a multiple of 4 (the GEMM's vec4 loads along K), and at least 16 tiles'
/// transforms (or the whole batch's) within the workspace.
pub(super) fn winograd_fits(gpu: &Gpu, g: &ConvGeom, tile: Tile) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.oh == g.h
        && g.ow == g.w
        && g.ci > 0
        && g.co > 0
        && g.ci.is_multiple_of(4)
        // The transformed weights [E, co, ci] in one binding.
        && tile.elems() * g.co * g.ci <= gpu.max_binding_elems()
        && group(gpu, g, tile) >= MIN_GROUP.min(g.n * tiles(g, tile))
}

/// Workgroups of 64 for `count` invocations, within the adapter's grid limits.
fn grid(gpu: &Gpu, g: &ConvGeom, count: usize) -> Result<[u32; 3]> {
    let wg = gpu.grid(count.div_ceil(64));
    check_groups(gpu, "conv2d (Winograd)", g, wg)?;
    Ok(wg)
}

/// The parameter block of `g`'s tiles, the input read from channel slice `src` and the output
/// (or, for the weight gradient, the output gradient) at `dst`; the group fields
/// (`tiles`, `t0`, `t4`) are set per group by [`input_transform`].
fn tile_params(g: &ConvGeom, tile: Tile, src: Slice, dst: Slice) -> WinogradParams {
    let u = |v: usize| v as u32;
    WinogradParams {
        ci: u(g.ci),
        co: u(g.co),
        h: u(g.h),
        w: u(g.w),
        th: u(g.oh.div_ceil(tile.m())),
        tw: u(g.ow.div_ceil(tile.m())),
        src_c_total: u(src.total),
        src_c_off: u(src.off),
        dst_c_total: u(dst.total),
        dst_c_off: u(dst.off),
        ..Default::default()
    }
}

/// The batch's groups of tiles as (first tile, tiles), each within the workspace.
fn tile_groups(gpu: &Gpu, g: &ConvGeom, tile: Tile) -> impl Iterator<Item = (usize, usize)> {
    let group = group(gpu, g, tile).max(4);
    let total = g.n * tiles(g, tile);
    (0..total)
        .step_by(group)
        .map(move |t0| (t0, group.min(total - t0)))
}

/// V[e, ci, t4] = (B^T d B)[e] of the group (`t0`, `t`) of tiles of `x` (read through the
/// `prologue` if any), `p` set to that group.
fn input_transform(
    tile: Tile,
    g: &ConvGeom,
    p: &mut WinogradParams,
    (t0, t): (usize, usize),
    x: &Storage,
    prologue: Option<&Storage>,
) -> Result<Storage> {
    let gpu = x.gpu();
    let t4 = t.div_ceil(4) * 4;
    p.tiles = t as u32;
    p.t0 = t0 as u32;
    p.t4 = t4 as u32;
    let e = tile.elems();
    let v = gpu.alloc(e * g.ci * t4, &[e, g.ci, t4])?;
    gpu.dispatch(
        &Kernel::new(tile.shader(), "wino_input")
            .with(&[("PROLOGUE", prologue.is_some() as u32 as f64)]),
        p.as_words(),
        &[&v],
        &[x, prologue.unwrap_or(x)],
        grid(gpu, g, g.ci * t4)?,
    )?;
    Ok(v)
}

/// The transformed weights U[e, co, ci] = (G g G^T)[e] of the convolution `g` runs (the
/// forward's, or with `flip` the input gradient's: g read flipped and transposed from `w`,
/// which is then [g.ci, g.co, 3, 3]), cached on `w`'s buffer while `w` is unchanged.
fn transformed_weights(tile: Tile, g: &ConvGeom, w: &Tensor, flip: bool) -> Result<Arc<Storage>> {
    let gpu = w.gpu();
    let key = format!(
        "winograd{}{}/co{}/ci{}",
        tile.m(),
        if flip { "-dgrad" } else { "" },
        g.co,
        g.ci
    );
    w.storage().derived(&key, || {
        let e = tile.elems();
        let p = WinogradParams {
            ci: g.ci as u32,
            co: g.co as u32,
            ..Default::default()
        };
        let wg = grid(gpu, g, g.co * g.ci)?;
        let u = gpu.alloc(e * g.co * g.ci, &[e, g.co, g.ci])?;
        gpu.dispatch(
            &Kernel::new(tile.shader(), "wino_weights").with(&[("FLIP", flip as u32 as f64)]),
            p.as_words(),
            &[&u],
            &[w.storage()],
            wg,
        )?;
        Ok(u)
    })
}

/// `out[:, dst] = conv(x[:, src], w) + bias` by Winograd F(m x m, 3x3); with a `prologue`
/// ([scale; shift] per input channel) the input is read as relu(x * scale + shift).
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd_winograd(
    tile: Tile,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    prologue: Option<&Storage>,
) -> Result<()> {
    let u = transformed_weights(tile, g, w, false)?;
    run_winograd(tile, g, x, src, &u, bias, out, dst, prologue)
}

/// The forward of `g` from transformed weights `transformed` [E, co, ci].
#[allow(clippy::too_many_arguments)]
fn run_winograd(
    tile: Tile,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    transformed: &Storage,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
    prologue: Option<&Storage>,
) -> Result<()> {
    let gpu = transformed.gpu();
    let e = tile.elems();
    let mut p = tile_params(g, tile, src, dst);
    let zeros = gpu.shared_zeros(g.co)?;
    for (t0, t) in tile_groups(gpu, g, tile) {
        let v = input_transform(tile, g, &mut p, (t0, t), x, prologue)?;
        let t4 = p.t4 as usize;
        let m = gpu.alloc(e * g.co * t4, &[e, g.co, t4])?;
        let d = BatchedGemm {
            m: g.co,
            n: t4,
            k: g.ci,
            lda: g.ci,
            a_batch: g.co * g.ci,
            b_batch: g.ci * t4,
            b_off: 0,
            c_batch: g.co * t4,
            c_off: 0,
            imgs: e,
        };
        batched_gemm(gpu, &d, (transformed, &v, &zeros, &m), g, None)?;
        gpu.dispatch(
            &Kernel::new(tile.shader(), "wino_output"),
            p.as_words(),
            &[out],
            &[&m, bias],
            grid(gpu, g, g.co * t)?,
        )?;
    }
    Ok(())
}

/// Whether the input gradient of `g` can run as a Winograd forward (see [`winograd_fits`]).
pub(super) fn dgrad_winograd_fits(gpu: &Gpu, g: &ConvGeom, tile: Tile) -> bool {
    g.stride == 1 && g.pad == 1 && winograd_fits(gpu, &g.dgrad_as_forward(), tile)
}

/// Input gradient `out[:, dst] = conv_transpose(dy[:, src], w) + bias` of a 3x3 stride-1
/// padding-1 convolution, as the Winograd forward with the flipped, transposed weights
/// (flipped as the weight transform reads them).
#[allow(clippy::too_many_arguments)]
pub(super) fn dgrad_winograd(
    tile: Tile,
    g: &ConvGeom,
    dy: &Storage,
    src: Slice,
    w: &Tensor,
    bias: &Storage,
    out: &Storage,
    dst: Slice,
) -> Result<()> {
    let g2 = g.dgrad_as_forward();
    let u = transformed_weights(tile, &g2, w, true)?;
    run_winograd(tile, &g2, dy, src, &u, bias, out, dst, None)
}

/// Largest per-group partial sums of the Winograd weight gradient, in bytes.
const WGRAD_PARTIAL_BYTES: usize = 64 << 20;

/// Whether the Winograd weight gradient applies: the forward's conditions, output channels a
/// multiple of 4 too (its GEMMs' vec4 loads along co), and the groups' partial sums
/// [groups, E, ci, co] within 64 MiB and one binding.
pub(super) fn wgrad_winograd_fits(gpu: &Gpu, g: &ConvGeom, tile: Tile) -> bool {
    if !(g.co.is_multiple_of(4) && winograd_fits(gpu, g, tile)) {
        return false;
    }
    let partial = tile_groups(gpu, g, tile).count() * tile.elems() * g.ci * g.co;
    4 * partial <= WGRAD_PARTIAL_BYTES && partial <= gpu.max_binding_elems()
}

/// Weight gradient [co, ci, 3, 3] of a 3x3 stride-1 padding-1 convolution by Winograd
/// F(m x m, 3x3): per group of tiles, the input transform V (as the forward's, `prologue`
/// included) and the output-gradient transform W = A dY A^T, then
/// dU[grp, e] (ci x co) = V[e] (ci x T) * W[e] (T x co) by the batched GEMM; `wino_wgrad`
/// sums the groups and maps dU back to 3x3 (dg = G^T dU G). 16 (F2) or 36 (F4) multiplies
/// per tile and channel pair where the im2col GEMM does 36 (144).
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad_winograd(
    tile: Tile,
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Storage,
    src: Slice,
    dy: &Storage,
    dys: Slice,
    prologue: Option<&Storage>,
) -> Result<Tensor> {
    let e = tile.elems();
    let groups = tile_groups(gpu, g, tile).count();
    let mut p = tile_params(g, tile, src, dys);
    p.groups = groups as u32;
    let plane = g.ci * g.co;
    let du = gpu.alloc(groups * e * plane, &[groups, e, g.ci, g.co])?;
    let zeros = gpu.shared_zeros(g.ci)?;
    for (i, group) in tile_groups(gpu, g, tile).enumerate() {
        let v = input_transform(tile, g, &mut p, group, x, prologue)?;
        let t4 = p.t4 as usize;
        let w = gpu.alloc(e * t4 * g.co, &[e, t4, g.co])?;
        gpu.dispatch(
            &Kernel::new(tile.shader(), "wino_dy"),
            p.as_words(),
            &[&w],
            &[dy],
            grid(gpu, g, t4 * g.co)?,
        )?;
        let d = BatchedGemm {
            m: g.ci,
            n: g.co,
            k: t4,
            lda: t4,
            a_batch: g.ci * t4,
            b_batch: t4 * g.co,
            b_off: 0,
            c_batch: plane,
            c_off: i * e * plane,
            imgs: e,
        };
        batched_gemm(gpu, &d, (&v, &w, &zeros, &du), g, None)?;
    }
    let dw = gpu.alloc(g.co * g.ci * 9, &[g.co, g.ci, 3, 3])?;
    gpu.dispatch(
        &Kernel::new(tile.shader(), "wino_wgrad"),
        p.as_words(),
        &[&dw],
        &[&du],
        grid(gpu, g, plane)?,
    )?;
    Ok(Tensor::from_storage(
        Arc::new(dw),
        &[g.co, g.ci, g.kh, g.kw],
        false,
    ))
}
