//! Matrix multiplication `C = op(A) op(B)` with optional transposes, in several kernel
//! variants (`shaders/matmul_*.wgsl`). Which variant runs is decided per adapter and shape
//! class by measurement (see `autotune.rs`), because the fastest differs by an order of
//! magnitude between real GPUs and CPU drivers.

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::autotune;
use crate::gpu::{Gpu, Kernel, KernelParams, Storage};
use crate::ops;
use crate::shaders::{MATMUL_BLOCKED, MATMUL_TILED, MATMUL_VEC4};
use crate::tensor::Tensor;

/// The matmul kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// 64x64 shared-memory tiles, 4x4 per invocation, workgroup barriers.
    Tiled,
    /// Barrier-free, 4x4 per invocation, scalar loads; any shape and transposes.
    Blocked,
    /// Barrier-free, vec4 loads, 4x4 per invocation; no transposes, K and N multiples of 4.
    Vec4x4,
    /// Barrier-free, vec4 loads, 8x8 per invocation; no transposes, K and N multiples of 4.
    Vec8x8,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 4] = [
        MatmulVariant::Tiled,
        MatmulVariant::Blocked,
        MatmulVariant::Vec4x4,
        MatmulVariant::Vec8x8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::Blocked => "blocked",
            MatmulVariant::Vec4x4 => "vec4_4x4",
            MatmulVariant::Vec8x8 => "vec4_8x8",
        }
    }

    /// Whether this variant can compute the given problem.
    pub fn supports(self, d: &Dims) -> bool {
        match self {
            MatmulVariant::Tiled | MatmulVariant::Blocked => true,
            MatmulVariant::Vec4x4 | MatmulVariant::Vec8x8 => {
                !d.ta && !d.tb && d.k.is_multiple_of(4) && d.n.is_multiple_of(4)
            }
        }
    }

    fn kernel(self) -> Kernel<'static> {
        match self {
            MatmulVariant::Tiled => Kernel::new(&MATMUL_TILED, "main"),
            MatmulVariant::Blocked => Kernel::new(&MATMUL_BLOCKED, "main"),
            MatmulVariant::Vec4x4 => Kernel::new(&MATMUL_VEC4, "main_4x4"),
            MatmulVariant::Vec8x8 => Kernel::new(&MATMUL_VEC4, "main_8x8"),
        }
    }

    fn workgroups(self, d: &Dims) -> [u32; 3] {
        let (x, y) = match self {
            MatmulVariant::Tiled => (d.n.div_ceil(64), d.m.div_ceil(64)),
            MatmulVariant::Blocked => (d.n.div_ceil(4).div_ceil(8), d.m.div_ceil(4).div_ceil(8)),
            MatmulVariant::Vec4x4 => ((d.n / 4).div_ceil(8), d.m.div_ceil(4).div_ceil(8)),
            MatmulVariant::Vec8x8 => (
                (d.n / 4).div_ceil(2).div_ceil(8),
                d.m.div_ceil(8).div_ceil(8),
            ),
        };
        [x as u32, y as u32, 1]
    }
}

/// Problem size: `C[m, n] = op(A)[m, k] op(B)[k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
}

fn dims(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Dims> {
    let (&[ar, ac], &[br, bc]) = (a.shape(), b.shape()) else {
        return Err(Error::shape(
            "matmul",
            format!(
                "expects 2-D operands, got {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    };
    let (m, ka) = if ta { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if tb { (bc, br) } else { (br, bc) };
    if ka != kb {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner dimensions differ: {:?}{} x {:?}{}",
                a.shape(),
                if ta { "^T" } else { "" },
                b.shape(),
                if tb { "^T" } else { "" }
            ),
        ));
    }
    Ok(Dims {
        m,
        n,
        k: ka,
        ta,
        tb,
    })
}

fn run(gpu: &Gpu, v: MatmulVariant, d: &Dims, a: &Storage, b: &Storage, c: &Storage) -> Result<()> {
    let wg = v.workgroups(d);
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if wg[0] > max || wg[1] > max {
        return Err(Error::shape(
            "matmul",
            format!("{d:?} needs {wg:?} workgroups, the adapter allows {max} per dimension"),
        ));
    }
    let (sa_m, sa_k) = if d.ta { (1, d.m) } else { (d.k, 1) };
    let (sb_k, sb_n) = if d.tb { (1, d.k) } else { (d.n, 1) };
    let u = |v: usize| v as u32;
    let params = MatmulParams {
        m: u(d.m),
        n: u(d.n),
        k: u(d.k),
        sa_m: u(sa_m),
        sa_k: u(sa_k),
        sb_k: u(sb_k),
        sb_n: u(sb_n),
        _pad: 0,
    };
    gpu.dispatch(&v.kernel(), params.as_words(), &[c], &[a, b], wg)
}

crate::kernel_params! {
    /// The parameter block of `matmul_tiled.wgsl`, `matmul_blocked.wgsl` and
    /// `matmul_vec4.wgsl`: C[m, n] = A[m, k] B[k, n] with element strides of A and B.
    pub struct MatmulParams {
        m: u32, n: u32, k: u32, sa_m: u32,
        sa_k: u32, sb_k: u32, sb_n: u32, _pad: u32,
    }
}

/// Every matmul variant's name (what `APGA_KERNELS` may force).
const MATMUL_VARIANTS: &[&str] = &["tiled", "blocked", "vec4_4x4", "vec4_8x8"];

/// The variants that can run `d`, in default order for this adapter (the first is used when
/// autotuning is off): barrier-free ones first on CPU drivers, the tiled one first elsewhere.
pub fn candidates(gpu: &Gpu, d: &Dims) -> Vec<MatmulVariant> {
    let order: &[MatmulVariant] = if gpu.info().device_type == wgpu::DeviceType::Cpu {
        &[
            MatmulVariant::Vec8x8,
            MatmulVariant::Vec4x4,
            MatmulVariant::Blocked,
            MatmulVariant::Tiled,
        ]
    } else {
        &[
            MatmulVariant::Tiled,
            MatmulVariant::Vec8x8,
            MatmulVariant::Vec4x4,
            MatmulVariant::Blocked,
        ]
    };
    order.iter().copied().filter(|v| v.supports(d)).collect()
}

/// The autotune key of a problem: transposes, power-of-two buckets of m, n, k, and whether
/// the vec4 kernels apply.
fn shape_class(d: &Dims) -> String {
    format!(
        "matmul/{}{}/m{}/n{}/k{}/{}",
        if d.ta { 't' } else { 'n' },
        if d.tb { 't' } else { 'n' },
        autotune::bucket(d.m),
        autotune::bucket(d.n),
        autotune::bucket(d.k),
        if d.k.is_multiple_of(4) && d.n.is_multiple_of(4) {
            "v4"
        } else {
            "s"
        }
    )
}

fn finish(a: &Tensor, b: &Tensor, ta: bool, tb: bool, d: &Dims, c: Storage) -> Tensor {
    autodiff::track(c, &[d.m, d.n], &[a, b], || Matmul {
        a: a.clone(),
        b: b.clone(),
        ta,
        tb,
    })
}

/// `op(a) @ op(b)`; `ta`/`tb` transpose the stored `a`/`b`. The kernel variant is the
/// autotuned one for this adapter and shape class.
pub fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let d = dims(a, b, ta, tb)?;
    let gpu = a.gpu();
    if d.k == 0 || d.m == 0 || d.n == 0 {
        let c = gpu.zeros(d.m * d.n, &[d.m, d.n])?;
        return Ok(finish(a, b, ta, tb, &d, c));
    }
    let c = gpu.alloc(d.m * d.n, &[d.m, d.n])?;
    let named: Vec<(&'static str, MatmulVariant)> = candidates(gpu, &d)
        .into_iter()
        .map(|v| (v.name(), v))
        .collect();
    let v = autotune::choose(gpu, &shape_class(&d), MATMUL_VARIANTS, &named, 0, |v| {
        run(gpu, v, &d, a.storage(), b.storage(), &c)
    })?;
    run(gpu, v, &d, a.storage(), b.storage(), &c)?;
    Ok(finish(a, b, ta, tb, &d, c))
}

/// `a @ b`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, b, false, false)
}

/// `op(a) @ op(b)` with a given kernel variant (tests and benchmarks).
pub fn matmul_with(v: MatmulVariant, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let d = dims(a, b, ta, tb)?;
    if !v.supports(&d) {
        return Err(Error::shape(
            "matmul",
            format!("variant {} does not support {d:?}", v.name()),
        ));
    }
    let gpu = a.gpu();
    if d.k == 0 || d.m == 0 || d.n == 0 {
        let c = gpu.zeros(d.m * d.n, &[d.m, d.n])?;
        return Ok(finish(a, b, ta, tb, &d, c));
    }
    let c = gpu.alloc(d.m * d.n, &[d.m, d.n])?;
    run(gpu, v, &d, a.storage(), b.storage(), &c)?;
    Ok(finish(a, b, ta, tb, &d, c))
}

/// The variant `matmul_t` would use for these operands (running the autotuner if needed).
pub fn chosen_variant(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<MatmulVariant> {
    let d = dims(a, b, ta, tb)?;
    let gpu = a.gpu();
    let c = gpu.alloc((d.m * d.n).max(1), &[d.m, d.n])?;
    let named: Vec<(&'static str, MatmulVariant)> = candidates(gpu, &d)
        .into_iter()
        .map(|v| (v.name(), v))
        .collect();
    autotune::choose(gpu, &shape_class(&d), MATMUL_VARIANTS, &named, 0, |v| {
        run(gpu, v, &d, a.storage(), b.storage(), &c)
    })
}

/// `torch.nn.functional.linear`: `x @ w^T + b` for x `[rows, in]`, w `[out, in]`, b `[out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = matmul_t(x, w, false, true)?;
    match b {
        Some(b) => {
            if b.shape() != [y.shape()[1]] {
                return Err(Error::shape(
                    "linear",
                    format!("bias {:?} for {} outputs", b.shape(), y.shape()[1]),
                ));
            }
            ops::add(&y, b)
        }
        None => Ok(y),
    }
}

/// `op(a) @ op(b)` where `op` transposes when the flag is set.
pub(crate) struct Matmul {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) ta: bool,
    pub(crate) tb: bool,
}

impl Backward for Matmul {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let Matmul { a, b, ta, tb, .. } = self;
        // C = A' B' with A' = op(A), B' = op(B): dA' = g B'^T, dB' = A'^T g.
        let ga = if want(0) {
            Some(if *ta {
                ops::matmul_t(b, g, *tb, true)?
            } else {
                ops::matmul_t(g, b, false, !*tb)?
            })
        } else {
            None
        };
        let gb = if want(1) {
            Some(if *tb {
                ops::matmul_t(g, a, true, *ta)?
            } else {
                ops::matmul_t(a, g, !*ta, false)?
            })
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}
