//! Reductions (`shaders/reduce.wgsl`): sum and mean over all elements or chosen axes, and
//! `sum_to`, which undoes a broadcast (the backward of every broadcasting op).

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::ops;
use crate::shaders::REDUCE;
use crate::tensor::{numel, Tensor};
use ops::{pack8, reshape, strides};

/// Reduced elements per workgroup in the first pass of a split reduction.
const CHUNK: usize = 4096;

/// Input layout after dropping size-1 dims and merging neighbours of the same kind.
struct Plan {
    kept_shape: Vec<usize>,
    kept_stride: Vec<usize>,
    red_shape: Vec<usize>,
    red_stride: Vec<usize>,
}

fn plan(shape: &[usize], axes: &[usize]) -> Plan {
    let st = strides(shape);
    let mut p = Plan {
        kept_shape: vec![],
        kept_stride: vec![],
        red_shape: vec![],
        red_stride: vec![],
    };
    let mut last_kind: Option<bool> = None;
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let reduced = axes.contains(&d);
        let (sh, sd) = if reduced {
            (&mut p.red_shape, &mut p.red_stride)
        } else {
            (&mut p.kept_shape, &mut p.kept_stride)
        };
        if last_kind == Some(reduced) {
            // Row-major neighbours of the same kind merge: the outer one's stride is
            // inner size * inner stride, so one dim of their product size covers both.
            if let (Some(s), Some(t)) = (sh.last_mut(), sd.last_mut()) {
                *s *= shape[d];
                *t = st[d];
            }
        } else {
            sh.push(shape[d]);
            sd.push(st[d]);
        }
        last_kind = Some(reduced);
    }
    p
}

crate::kernel_params! {
    /// The parameter block of `reduce.wgsl`.
    pub struct ReduceParams {
        n_out: u32, n_red: u32, chunks: u32, chunk_len: u32,
        kept_rank: u32, red_rank: u32, scale: f32, _pad: u32,
        kept_shape: [u32; 8],
        kept_stride: [u32; 8],
        red_shape: [u32; 8],
        red_stride: [u32; 8],
    }
}

#[allow(clippy::too_many_arguments)]
fn dispatch_reduce(
    gpu: &Gpu,
    entry: &'static str,
    input: &Storage,
    n_out: usize,
    n_red: usize,
    chunks: usize,
    scale: f32,
    p: &Plan,
) -> Result<Storage> {
    let out = gpu.alloc(n_out * chunks, &[n_out, chunks])?;
    let chunk_len = n_red.div_ceil(chunks);
    let params = ReduceParams {
        n_out: n_out as u32,
        n_red: n_red as u32,
        chunks: chunks as u32,
        chunk_len: chunk_len as u32,
        kept_rank: p.kept_shape.len() as u32,
        red_rank: p.red_shape.len() as u32,
        scale,
        _pad: 0,
        kept_shape: pack8(&p.kept_shape),
        kept_stride: pack8(&p.kept_stride),
        red_shape: pack8(&p.red_shape),
        red_stride: pack8(&p.red_stride),
    };
    let groups = if entry == "reduce_thread4" {
        (n_out / 4).div_ceil(64)
    } else if entry == "reduce_thread" {
        n_out.div_ceil(64)
    } else {
        n_out * chunks
    };
    gpu.dispatch(
        &Kernel::new(&REDUCE, entry),
        params.as_words(),
        &[&out],
        &[input],
        gpu.grid(groups),
    )?;
    Ok(out)
}

/// Sum of `x` over sorted, unique `axes`, times `scale`; the result holds the kept dims in
/// order.
fn reduce_storage(x: &Tensor, axes: &[usize], scale: f32) -> Result<Storage> {
    let gpu = x.gpu();
    let p = plan(x.shape(), axes);
    let n_out: usize = p.kept_shape.iter().product();
    let n_red: usize = p.red_shape.iter().product();
    if x.numel() == 0 {
        return gpu.zeros(n_out, &p.kept_shape);
    }
    if n_red <= 16 || (n_out >= 4096 && n_red <= 256) {
        // A sum over the leading axes of a contiguous tensor, four outputs per invocation.
        let leading = p.kept_shape.len() == 1
            && p.kept_stride[0] == 1
            && p.red_shape.len() == 1
            && n_out.is_multiple_of(4)
            && p.red_stride[0].is_multiple_of(4);
        return dispatch_reduce(
            gpu,
            if leading {
                "reduce_thread4"
            } else {
                "reduce_thread"
            },
            x.storage(),
            n_out,
            n_red,
            1,
            scale,
            &p,
        );
    }
    let chunks = n_red.div_ceil(CHUNK);
    if chunks == 1 {
        return dispatch_reduce(gpu, "reduce_wg", x.storage(), n_out, n_red, 1, scale, &p);
    }
    let partial = dispatch_reduce(gpu, "reduce_wg", x.storage(), n_out, n_red, chunks, 1.0, &p)?;
    let p2 = Plan {
        kept_shape: vec![n_out],
        kept_stride: vec![chunks],
        red_shape: vec![chunks],
        red_stride: vec![1],
    };
    dispatch_reduce(gpu, "reduce_wg", &partial, n_out, chunks, 1, scale, &p2)
}

fn normalize_axes(op: &'static str, shape: &[usize], axes: &[usize]) -> Result<Vec<usize>> {
    let mut a = axes.to_vec();
    a.sort_unstable();
    a.dedup();
    if let Some(&bad) = a.iter().find(|&&d| d >= shape.len()) {
        return Err(Error::shape(
            op,
            format!("axis {bad} out of range for shape {shape:?}"),
        ));
    }
    Ok(a)
}

fn reduce(
    op: &'static str,
    x: &Tensor,
    axes: &[usize],
    keepdim: bool,
    mean: bool,
) -> Result<Tensor> {
    let axes = normalize_axes(op, x.shape(), axes)?;
    let count: usize = axes.iter().map(|&d| x.shape()[d]).product();
    let scale = if mean { 1.0 / count.max(1) as f32 } else { 1.0 };
    let storage = reduce_storage(x, &axes, scale)?;
    let shape: Vec<usize> = x
        .shape()
        .iter()
        .enumerate()
        .filter_map(|(d, &s)| match (axes.contains(&d), keepdim) {
            (false, _) => Some(s),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    Ok(autodiff::track(storage, &shape, &[x], || Sum {
        x_shape: x.shape().to_vec(),
        axes,
        scale,
    }))
}

/// Sum over `axes` (keeping them as size-1 dims if `keepdim`).
pub fn sum(x: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    reduce("sum", x, axes, keepdim, false)
}

/// Mean over `axes`.
pub fn mean(x: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    reduce("mean", x, axes, keepdim, true)
}

/// Sum of all elements, shape `[]`.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (0..x.rank()).collect();
    reduce("sum", x, &axes, false, false)
}

/// Mean of all elements, shape `[]`.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (0..x.rank()).collect();
    reduce("mean", x, &axes, false, true)
}

/// Sums `g` down to `shape`, which must broadcast to `g`'s shape: the gradient of a
/// broadcast.
pub fn sum_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let gs = g.shape();
    if shape.len() > gs.len() || numel(shape) == 0 && numel(gs) != 0 {
        return Err(Error::shape(
            "sum_to",
            format!("cannot reduce shape {gs:?} to {shape:?}"),
        ));
    }
    let pad = gs.len() - shape.len();
    let mut axes: Vec<usize> = (0..pad).collect();
    for (i, &s) in shape.iter().enumerate() {
        match (s, gs[pad + i]) {
            (a, b) if a == b => {}
            (1, _) => axes.push(pad + i),
            _ => {
                return Err(Error::shape(
                    "sum_to",
                    format!("cannot reduce shape {gs:?} to {shape:?}"),
                ))
            }
        }
    }
    reshape(&sum(g, &axes, true)?, shape)
}

/// Sum over `axes` times `scale` (1 for sum, 1/count for mean).
pub(crate) struct Sum {
    pub(crate) x_shape: Vec<usize>,
    pub(crate) axes: Vec<usize>,
    pub(crate) scale: f32,
}

impl Backward for Sum {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Sum {
            x_shape,
            axes,
            scale,
            ..
        } = self;
        let mut kept = x_shape.clone();
        for &a in axes {
            kept[a] = 1;
        }
        let g = ops::reshape(g, &kept)?;
        let g = if *scale != 1.0 {
            ops::mul_scalar(&g, *scale)?
        } else {
            g
        };
        Ok(vec![Some(ops::expand(&g, x_shape)?)])
    }
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn plan_merges_neighbours_and_drops_unit_dims() {
        // NCHW, per-channel reduction: kept C between reduced N and merged HW.
        let p = plan(&[2, 3, 4, 5], &[0, 2, 3]);
        assert_eq!(p.kept_shape, vec![3]);
        assert_eq!(p.kept_stride, vec![20]);
        assert_eq!(p.red_shape, vec![2, 20]);
        assert_eq!(p.red_stride, vec![60, 1]);
        let p = plan(&[1, 3, 1, 5], &[1]);
        assert_eq!(p.red_shape, vec![3]);
        assert_eq!(p.kept_shape, vec![5]);
    }
}
