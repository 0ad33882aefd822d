//! Data movement along one axis (`shaders/layout.wgsl`): concatenation, narrowing, padding
//! into a larger zero tensor, and in-place writes of a slice into a preallocated buffer (how a
//! DenseNet block writes each layer's new channels into one block buffer instead of copying
//! every previous channel at every layer).

use std::sync::Arc;

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::ops;
use crate::shaders::LAYOUT;
use crate::tensor::{numel, Tensor};

/// `shape` seen as [outer, shape[axis], inner].
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        numel(&shape[..axis]),
        shape[axis],
        numel(&shape[axis + 1..]),
    )
}

/// Contiguous runs (one per outer index) up to which [`copy_slices`] may copy them as buffer
/// copies instead of a kernel: a DenseNet at 64x64 copies 4 runs per call (one per image).
const MAX_COPIED_RUNS: usize = 64;

/// Copies `len` slices of the axis: src[o, src_off + c, i] -> dst[o, dst_off + c, i]. Either
/// one `copy_channels` dispatch, or `outer` buffer copies of `len * inner` contiguous values
/// (no dispatch; a memcpy each on CPU drivers), chosen by measurement per shape class
/// (`copy-slices/...`, forced with `APGA_KERNELS=copy-slices=kernel|copies`; without
/// autotuning: copies on CPU drivers, the kernel on GPUs, where copies end the compute pass).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_slices(
    gpu: &Gpu,
    src: &Storage,
    dst: &Storage,
    outer: usize,
    len: usize,
    inner: usize,
    (src_total, src_off): (usize, usize),
    (dst_total, dst_off): (usize, usize),
) -> Result<()> {
    let n = outer * len * inner;
    if n == 0 {
        return Ok(());
    }
    let run = len * inner;
    let copies = |by_copies: bool| -> Result<()> {
        if by_copies {
            for o in 0..outer {
                let from = (o * src_total + src_off) * inner;
                gpu.copy(src, from, dst, (o * dst_total + dst_off) * inner, run);
            }
            return Ok(());
        }
        let u = |v: usize| v as u32;
        let params = LayoutParams {
            n: u(outer),
            c: u(len),
            hw: u(inner),
            src_total: u(src_total),
            src_off: u(src_off),
            dst_total: u(dst_total),
            dst_off: u(dst_off),
            ..Default::default()
        };
        gpu.dispatch(
            &Kernel::new(&LAYOUT, "copy_channels"),
            params.as_words(),
            &[dst],
            &[src],
            gpu.grid(n.div_ceil(256)),
        )
    };
    // One contiguous run (a whole-tensor copy) needs no choice.
    if src_total == len && dst_total == len {
        gpu.copy(src, 0, dst, 0, n);
        return Ok(());
    }
    let family = ["kernel", "copies"];
    let all = [("kernel", false), ("copies", true)];
    if outer == 1 {
        // One run: a buffer copy unless the kernel is forced; nothing to measure.
        let forced = crate::gpu::autotune::forced(gpu, "copy-slices/o1", &family, &all, 1)?;
        return copies(forced.unwrap_or(true));
    }
    let key = format!(
        "copy-slices/o{}/r{}",
        crate::gpu::autotune::bucket(outer),
        crate::gpu::autotune::bucket(run)
    );
    let cands = if outer <= MAX_COPIED_RUNS {
        &all[..]
    } else {
        &all[..1]
    };
    let default = usize::from(gpu.parallelism() <= 4096);
    let by_copies = crate::gpu::autotune::choose(gpu, &key, &family, cands, default, copies)?;
    copies(by_copies)
}

/// `dst[o, dst_off + c, p] = src[o, src_off + c, p]` for `len` channels of `outer` images
/// whose rows hold `src_row` values in `src` and `dst_row` in `dst` (the longer rows padded
/// with zeros, the shorter cut): one `copy_cols` dispatch. The 1x1 convolutions of maps whose
/// pixel count is no multiple of 4 run the vec4 GEMM on rows padded this way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_cols(
    gpu: &Gpu,
    src: &Storage,
    dst: &Storage,
    outer: usize,
    len: usize,
    (src_row, src_total, src_off): (usize, usize, usize),
    (dst_row, dst_total, dst_off): (usize, usize, usize),
) -> Result<()> {
    if outer * len * dst_row == 0 {
        return Ok(());
    }
    let u = |v: usize| v as u32;
    let params = LayoutParams {
        cols: u(src_row),
        cpad: u(dst_row),
        n: u(outer),
        c: u(len),
        src_total: u(src_total),
        src_off: u(src_off),
        dst_total: u(dst_total),
        dst_off: u(dst_off),
        ..Default::default()
    };
    let wg = [dst_row.div_ceil(64) as u32, len as u32, outer as u32];
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if wg.iter().any(|&d| d > max) {
        return Err(Error::Gpu(format!(
            "copy_cols: grid {wg:?} ({outer} images x {len} channels x {dst_row} values) \
             exceeds the adapter's {max} workgroups per dimension"
        )));
    }
    gpu.dispatch(
        &Kernel::new(&LAYOUT, "copy_cols"),
        params.as_words(),
        &[dst],
        &[src],
        wg,
    )
}

fn check_axis(op: &'static str, shape: &[usize], axis: usize) -> Result<()> {
    if axis >= shape.len() {
        return Err(Error::shape(
            op,
            format!("axis {axis} out of range for shape {shape:?}"),
        ));
    }
    Ok(())
}

crate::kernel_params! {
    /// The parameter block of `layout.wgsl`: the weight copies (`relayout`, `flip_transpose`:
    /// a [rows, cols] view with strides, written as [rows, cpad]) and `copy_channels` (an
    /// [n, c, hw] block between channel slices).
    pub struct LayoutParams {
        rows: u32, cols: u32, cpad: u32, inner: u32,
        s_outer: u32, s_inner: u32, s_col: u32, outer: u32,
        n: u32, c: u32, hw: u32, src_total: u32,
        src_off: u32, dst_total: u32, dst_off: u32, _p1: u32,
    }
}

/// Concatenates tensors along `axis` (all other dims equal), like `torch.cat`.
pub fn concat(xs: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::shape("concat", "needs at least one tensor"))?;
    check_axis("concat", first.shape(), axis)?;
    let mut shape = first.shape().to_vec();
    shape[axis] = 0;
    for x in xs {
        let same_rank = x.rank() == first.rank();
        let same_dims = same_rank
            && x.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(d, (a, b))| d == axis || a == b);
        if !same_dims {
            return Err(Error::shape(
                "concat",
                format!(
                    "shapes {:?} and {:?} differ outside axis {axis}",
                    first.shape(),
                    x.shape()
                ),
            ));
        }
        shape[axis] += x.shape()[axis];
    }
    let gpu = first.gpu();
    let out = gpu.alloc(numel(&shape), &shape)?;
    let (outer, total, inner) = split(&shape, axis);
    let mut off = 0;
    for x in xs {
        let c = x.shape()[axis];
        copy_slices(
            gpu,
            x.storage(),
            &out,
            outer,
            c,
            inner,
            (c, 0),
            (total, off),
        )?;
        off += c;
    }
    let sizes: Vec<usize> = xs.iter().map(|x| x.shape()[axis]).collect();
    Ok(autodiff::track(out, &shape, xs, || Concat { axis, sizes }))
}

/// A copy of `len` entries of `axis` starting at `start`, like `torch.narrow(...).clone()`.
pub fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    check_axis("narrow", x.shape(), axis)?;
    let full = x.shape()[axis];
    if start + len > full {
        return Err(Error::shape(
            "narrow",
            format!(
                "range {start}..{} exceeds axis {axis} of shape {:?}",
                start + len,
                x.shape()
            ),
        ));
    }
    let mut shape = x.shape().to_vec();
    shape[axis] = len;
    let gpu = x.gpu();
    let out = gpu.alloc(numel(&shape), &shape)?;
    let (outer, _, inner) = split(x.shape(), axis);
    copy_slices(
        gpu,
        x.storage(),
        &out,
        outer,
        len,
        inner,
        (full, start),
        (len, 0),
    )?;
    Ok(autodiff::track(out, &shape, &[x], || Narrow {
        axis,
        start,
        full,
    }))
}

/// `x` placed at `start` along `axis` of a zero tensor whose axis has `full` entries (the
/// backward of `narrow`; also how a DenseNet block buffer starts from the block's input).
pub fn pad_axis(x: &Tensor, axis: usize, start: usize, full: usize) -> Result<Tensor> {
    check_axis("pad", x.shape(), axis)?;
    let len = x.shape()[axis];
    if start + len > full {
        return Err(Error::shape(
            "pad",
            format!("{len} entries at {start} do not fit an axis of {full}"),
        ));
    }
    let mut shape = x.shape().to_vec();
    shape[axis] = full;
    let gpu = x.gpu();
    let out = gpu.zeros(numel(&shape), &shape)?;
    let (outer, _, inner) = split(x.shape(), axis);
    copy_slices(
        gpu,
        x.storage(),
        &out,
        outer,
        len,
        inner,
        (len, 0),
        (full, start),
    )?;
    Ok(autodiff::track(out, &shape, &[x], || Pad {
        axis,
        start,
        len,
    }))
}

/// Writes `x` into `buffer` at `start` along `axis`, in place, and returns the updated buffer
/// as a new tensor sharing the storage. The entries written must not have been read through
/// an earlier handle of the buffer (a DenseNet block writes each channel range once, after the
/// layers that read only the channels before it). Gradient: the written slice goes to `x`,
/// the rest to `buffer`.
pub fn write_slice(buffer: &Tensor, x: &Tensor, axis: usize, start: usize) -> Result<Tensor> {
    check_axis("write_slice", buffer.shape(), axis)?;
    let len = x.shape().get(axis).copied().unwrap_or(0);
    let mut expect = buffer.shape().to_vec();
    expect[axis] = len;
    if x.shape() != expect.as_slice() || start + len > buffer.shape()[axis] {
        return Err(Error::shape(
            "write_slice",
            format!(
                "cannot write shape {:?} at {start} along axis {axis} of {:?}",
                x.shape(),
                buffer.shape()
            ),
        ));
    }
    let full = buffer.shape()[axis];
    let (outer, _, inner) = split(buffer.shape(), axis);
    copy_slices(
        x.gpu(),
        x.storage(),
        buffer.storage(),
        outer,
        len,
        inner,
        (len, 0),
        (full, start),
    )?;
    let record = (buffer.requires_grad() || x.requires_grad()) && autodiff::is_recording();
    let out = Tensor::from_storage(Arc::clone(buffer.storage_arc()), buffer.shape(), record);
    if record {
        autodiff::push(WriteSlice { axis, start, len }, &[buffer, x], &out);
    }
    Ok(out)
}

/// Contiguous runs up to which [`zero_slice`] clears them one by one; beyond (a slice of a
/// late axis) one broadcast multiply by a mask is fewer commands.
const MAX_CLEARED_RUNS: usize = 256;

/// `g` with the entries `start..start + len` along `axis` set to zero, as a new tensor: a
/// buffer copy and one clear per contiguous run of the slice, no kernel (the backward of a
/// write into a block buffer, once per DenseNet layer, was a broadcast multiply by a mask),
/// or that multiply where the slice has more than `MAX_CLEARED_RUNS` runs.
pub(crate) fn zero_slice(g: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let gpu = g.gpu();
    let shape = g.shape();
    let outer: usize = shape[..axis].iter().product();
    if outer > MAX_CLEARED_RUNS {
        let dim = shape[axis];
        let mut mshape = vec![1; shape.len()];
        mshape[axis] = dim;
        let mask: Vec<f32> = (0..dim)
            .map(|i| {
                if (start..start + len).contains(&i) {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        return ops::mul(g, &Tensor::from_slice(gpu, &mask, &mshape)?);
    }
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let out = gpu.alloc(g.numel(), shape)?;
    gpu.copy(g.storage(), 0, &out, 0, g.numel());
    for o in 0..outer {
        gpu.clear(&out, (o * dim + start) * inner, len * inner);
    }
    Ok(Tensor::from_storage(std::sync::Arc::new(out), shape, false))
}

/// Concatenation along `axis` of inputs with `sizes` entries each.
pub(crate) struct Concat {
    pub(crate) axis: usize,
    pub(crate) sizes: Vec<usize>,
}

impl Backward for Concat {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let Concat { axis, sizes, .. } = self;
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for (i, &len) in sizes.iter().enumerate() {
            out.push(
                want(i)
                    .then(|| ops::narrow(g, *axis, start, len))
                    .transpose()?,
            );
            start += len;
        }
        Ok(out)
    }
}

/// `len` entries at `start` copied out of an axis of `full` entries.
pub(crate) struct Narrow {
    pub(crate) axis: usize,
    pub(crate) start: usize,
    pub(crate) full: usize,
}

impl Backward for Narrow {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Narrow {
            axis, start, full, ..
        } = self;
        Ok(vec![Some(ops::pad_axis(g, *axis, *start, *full)?)])
    }
}

/// Input placed at `start` of a larger zero tensor.
pub(crate) struct Pad {
    pub(crate) axis: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Backward for Pad {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Pad {
            axis, start, len, ..
        } = self;
        Ok(vec![Some(ops::narrow(g, *axis, *start, *len)?)])
    }
}

/// Input 1 written in place into input 0 at `start` (`len` entries).
pub(crate) struct WriteSlice {
    pub(crate) axis: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Backward for WriteSlice {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let WriteSlice {
            axis, start, len, ..
        } = self;
        let gb = if want(0) {
            Some(zero_slice(g, *axis, *start, *len)?)
        } else {
            None
        };
        Ok(vec![
            gb,
            want(1)
                .then(|| ops::narrow(g, *axis, *start, *len))
                .transpose()?,
        ])
    }
}
