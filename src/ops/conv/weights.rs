//! Weight re-layouts the kernels block over (`shaders/layout.wgsl`): padded, transposed and
//! flipped copies of [co, ci, kh, kw], cached on the weight's buffer until it changes
//! (`Storage::derived`).

use crate::error::{Error, Result};
use std::sync::Arc;

use crate::gpu::{Kernel, KernelParams, Storage};
use crate::ops::layout::LayoutParams;
use crate::shaders::LAYOUT;
use crate::tensor::Tensor;

use super::round8;

/// Copies conv weights [co, ci, kh, kw] into the layout a kernel blocks over: `[ci*kh*kw,
/// round8(co)]` for `fwd` (`for_dgrad = false`) or `[co*kh*kw, round8(ci)]` for `dgrad`.
pub(super) fn relayout_weight(w: &Tensor, for_dgrad: bool) -> Result<Arc<Storage>> {
    let [co, ci, kh, kw] = w.dims4("conv weight")?;
    let kk = kh * kw;
    if for_dgrad {
        weight_copy(
            w,
            "relayout",
            [co * kk, ci, round8(ci), kk, ci * kk, 1, kk, co],
        )
    } else {
        weight_copy(
            w,
            "relayout",
            [ci * kk, co, round8(co), kk, kk, 1, ci * kk, ci],
        )
    }
}

/// One weight-copy kernel of layout.wgsl (`relayout` or `flip_transpose`) over `w`, with its
/// parameters `[rows, cols, cpad, inner, s_outer, s_inner, s_col, outer]`: a [rows, cpad]
/// result on a grid of (cpad / 64, inner, outer) workgroups (`flip_transpose`: (cpad / 64,
/// outer, 1); a plain transpose of whole quads runs as `transpose4`: (cpad / 256, rows / 4,
/// 1)). The copy is cached on `w`'s buffer while `w` is unchanged.
pub(super) fn weight_copy(w: &Tensor, entry: &'static str, p: [usize; 8]) -> Result<Arc<Storage>> {
    w.storage().derived(&format!("{entry}{p:?}"), || {
        weight_copy_uncached(w, entry, p)
    })
}

fn weight_copy_uncached(w: &Tensor, entry: &'static str, p: [usize; 8]) -> Result<Storage> {
    let [rows, _, cpad, inner, s_outer, _, s_col, outer] = p;
    let gpu = w.gpu();
    // A plain transpose with whole quads (1x1 weights) takes the vec4 kernel.
    let quads = entry == "relayout"
        && inner == 1
        && s_outer == 1
        && rows.is_multiple_of(4)
        && s_col.is_multiple_of(4)
        && cpad.is_multiple_of(4);
    let entry = if quads { "transpose4" } else { entry };
    let grid = if quads {
        [(cpad / 4).div_ceil(64) as u32, (rows / 4) as u32, 1]
    } else if entry == "flip_transpose" {
        [cpad.div_ceil(64) as u32, outer as u32, 1]
    } else {
        [cpad.div_ceil(64) as u32, inner as u32, outer as u32]
    };
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if grid.iter().any(|&v| v > max) {
        return Err(Error::shape(
            "conv weight",
            format!(
                "{:?} needs {grid:?} workgroups; the adapter allows {max} per dimension",
                w.shape()
            ),
        ));
    }
    let out = gpu.alloc(rows * cpad, &[rows, cpad])?;
    let [rows_, cols, cpad_, inner_, s_outer, s_inner, s_col, outer_] = p.map(|v| v as u32);
    let params = LayoutParams {
        rows: rows_,
        cols,
        cpad: cpad_,
        inner: inner_,
        s_outer,
        s_inner,
        s_col,
        outer: outer_,
        ..Default::default()
    };
    gpu.dispatch(
        &Kernel::new(&LAYOUT, entry),
        params.as_words(),
        &[&out],
        &[w.storage()],
        grid,
    )?;
    Ok(out)
}

/// Weights [rows, cols] copied into [rows, cpad] with zero columns after `cols`.
pub(super) fn pad_rows(w: &Tensor, rows: usize, cols: usize, cpad: usize) -> Result<Arc<Storage>> {
    weight_copy(w, "relayout", [rows, cols, cpad, 1, cols, 0, 1, rows])
}
