//! Element-wise ops (`shaders/elementwise.wgsl`): unary maths, binary arithmetic with NumPy
//! broadcasting (a per-channel `[1,C,1,1]` or per-pixel `[N,1,H,W]` mask multiplies an NCHW
//! tensor directly), comparisons against a threshold, `expand` and `where_`.

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::gpu::{autotune, Gpu, Kernel, KernelParams, Storage};
use crate::ops;
use crate::shaders::ELEMENTWISE;
use crate::tensor::{numel, Tensor};
use ops::{pack8, strides};

/// Largest rank the element-wise kernels index.
pub const MAX_RANK: usize = 8;

/// Unary ops; the scalar ones carry their operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Exp,
    Log,
    AddScalar(f32),
    MulScalar(f32),
    /// `1[x >= t]`, not differentiable (used for the policy's action `1[P >= 0.5]`).
    Ge(f32),
    /// `1[x > t]`, not differentiable.
    Gt(f32),
    /// `1[x < t]`, not differentiable.
    Lt(f32),
}

impl UnaryOp {
    fn code(self) -> (u32, f32) {
        match self {
            UnaryOp::Relu => (0, 0.0),
            UnaryOp::Sigmoid => (1, 0.0),
            UnaryOp::Exp => (2, 0.0),
            UnaryOp::Log => (3, 0.0),
            UnaryOp::AddScalar(s) => (4, s),
            UnaryOp::MulScalar(s) => (5, s),
            UnaryOp::Ge(s) => (6, s),
            UnaryOp::Gt(s) => (7, s),
            UnaryOp::Lt(s) => (8, s),
        }
    }
    fn differentiable(self) -> bool {
        !matches!(self, UnaryOp::Ge(_) | UnaryOp::Gt(_) | UnaryOp::Lt(_))
    }
}

/// Binary ops. `ReluGrad` and `SigmoidGrad` are the backward kernels of relu and sigmoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `grad * 1[v > 0]` with `(grad, v)`, v being relu's input or, equally, its output.
    ReluGrad,
    /// `grad * y * (1 - y)` with `(grad, y = sigmoid(x))`.
    SigmoidGrad,
}

impl BinaryOp {
    fn code(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::ReluGrad => 4,
            BinaryOp::SigmoidGrad => 5,
        }
    }
}

/// The broadcast shape of two shapes (NumPy rules: align trailing dims; a dim of 1 stretches).
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("shapes {a:?} and {b:?} do not broadcast"),
                ))
            }
        };
    }
    Ok(out)
}

/// Strides for reading a tensor of `shape` at every position of `out` (0 on broadcast dims).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - shape.len();
    let own = strides(shape);
    (0..out.len())
        .map(|i| {
            if i < pad || shape[i - pad] == 1 {
                0
            } else {
                own[i - pad]
            }
        })
        .collect()
}

fn check_rank(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.len() > MAX_RANK {
        return Err(Error::shape(
            op,
            format!("rank {} exceeds the maximum of {MAX_RANK}", shape.len()),
        ));
    }
    Ok(())
}

crate::kernel_params! {
    /// The parameter block of `elementwise.wgsl`: `n` outputs of rank `rank`, two scalars,
    /// the output shape and both inputs' element strides (0 = broadcast), up to 8 dims.
    pub struct ElementwiseParams {
        n: u32, rank: u32, s0: f32, s1: f32,
        shape: [u32; 8],
        stride_a: [u32; 8],
        stride_b: [u32; 8],
    }
}

/// Allocates the output and dispatches one element-wise kernel over `shape`.
fn launch(
    gpu: &Gpu,
    kernel: Kernel,
    shape: &[usize],
    scalars: [f32; 2],
    strides_ab: [&[usize]; 2],
    inputs: &[&Storage],
) -> Result<Storage> {
    let n = numel(shape);
    let out = gpu.alloc(n, shape)?;
    let params = ElementwiseParams {
        n: n as u32,
        rank: shape.len() as u32,
        s0: scalars[0],
        s1: scalars[1],
        shape: pack8(shape),
        stride_a: pack8(strides_ab[0]),
        stride_b: pack8(strides_ab[1]),
    };
    gpu.dispatch(
        &kernel,
        params.as_words(),
        &[&out],
        inputs,
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(out)
}

/// Applies a unary op element-wise.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let (code, s) = op.code();
    let constants = [("UNARY", code as f64)];
    let kernel = Kernel::new(&ELEMENTWISE, "unary").with(&constants);
    let storage = launch(
        x.gpu(),
        kernel,
        x.shape(),
        [s, 0.0],
        [&[], &[]],
        &[x.storage()],
    )?;
    if !op.differentiable() {
        return Ok(Tensor::from_storage(
            std::sync::Arc::new(storage),
            x.shape(),
            false,
        ));
    }
    let shape = x.shape().to_vec();
    // log needs its input; relu, sigmoid and exp their output (relu's mask y > 0 is x > 0).
    // Saving relu's output rather than its input lets the input (a convolution's output, in
    // UNet11) be freed at once, as PyTorch's in-place ReLU does: 40% of UNet11's activation
    // memory. A second handle to the output is made after tracking, so the closure only
    // captures the input here.
    let needs_x = matches!(op, UnaryOp::Log);
    let needs_y = matches!(op, UnaryOp::Relu | UnaryOp::Sigmoid | UnaryOp::Exp);
    if !needs_y {
        return Ok(autodiff::track(storage, &shape, &[x], || Unary {
            op,
            x: needs_x.then(|| x.clone()),
            y: None,
        }));
    }
    // The output must be saved: wrap it first, then record a node that holds it.
    let record = x.requires_grad() && autodiff::is_recording();
    let y = Tensor::from_storage(std::sync::Arc::new(storage), &shape, record);
    if record {
        autodiff::push(
            Unary {
                op,
                x: None,
                y: Some(y.detach()),
            },
            &[x],
            &y,
        );
    }
    Ok(y)
}

/// Applies a binary op element-wise with broadcasting.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = "binary op";
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    check_rank(name, &shape)?;
    let constants = [("BINARY", op.code() as f64)];
    let storage = if a.shape() == b.shape() {
        let kernel = Kernel::new(&ELEMENTWISE, "binary").with(&constants);
        launch(
            a.gpu(),
            kernel,
            &shape,
            [0.0; 2],
            [&[], &[]],
            &[a.storage(), b.storage()],
        )?
    } else {
        let kernel = Kernel::new(&ELEMENTWISE, "binary_bcast").with(&constants);
        let sa = broadcast_strides(a.shape(), &shape);
        let sb = broadcast_strides(b.shape(), &shape);
        launch(
            a.gpu(),
            kernel,
            &shape,
            [0.0; 2],
            [&sa, &sb],
            &[a.storage(), b.storage()],
        )?
    };
    Ok(autodiff::track(storage, &shape, &[a, b], || Binary {
        op,
        a: a.clone(),
        b: b.clone(),
    }))
}

/// Copies `x` broadcast to `shape` (NumPy rules).
pub fn expand(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = broadcast_shapes("expand", x.shape(), shape)?;
    if out != shape {
        return Err(Error::shape(
            "expand",
            format!("cannot expand shape {:?} to {shape:?}", x.shape()),
        ));
    }
    check_rank("expand", shape)?;
    let sx = broadcast_strides(x.shape(), shape);
    let kernel = Kernel::new(&ELEMENTWISE, "expand");
    let storage = launch(x.gpu(), kernel, shape, [0.0; 2], [&sx, &[]], &[x.storage()])?;
    Ok(autodiff::track(storage, shape, &[x], || Expand {
        x_shape: x.shape().to_vec(),
    }))
}

/// `mask != 0 ? a : b`, with all three broadcast to a common shape. Differentiable in `a`
/// and `b`; the mask is a constant.
pub fn where_(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shape = broadcast_shapes("where", mask.shape(), a.shape())?;
    let shape = broadcast_shapes("where", &shape, b.shape())?;
    let full = |t: &Tensor| -> Result<Tensor> {
        if t.shape() == shape.as_slice() {
            Ok(t.clone())
        } else {
            autodiff::no_grad(|| expand(&t.detach(), &shape))
        }
    };
    let (m, fa, fb) = (full(mask)?, full(a)?, full(b)?);
    let kernel = Kernel::new(&ELEMENTWISE, "where_select");
    let storage = launch(
        a.gpu(),
        kernel,
        &shape,
        [0.0; 2],
        [&[], &[]],
        &[m.storage(), fa.storage(), fb.storage()],
    )?;
    Ok(autodiff::track(storage, &shape, &[a, b], || Where {
        mask: m.detach(),
        a_shape: a.shape().to_vec(),
        b_shape: b.shape().to_vec(),
    }))
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Div, a, b)
}
/// `max(x, 0)`. When recorded, the tape keeps a bit mask of `x > 0` (1/32 of the output's
/// memory) instead of the output or the input, so neither is kept alive by the ReLU.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !(x.requires_grad() && autodiff::is_recording()) {
        return unary(UnaryOp::Relu, x);
    }
    let gpu = x.gpu();
    let n = x.numel();
    let words = n.div_ceil(32);
    let y = gpu.alloc(n, x.shape())?;
    let bits = gpu.alloc(words, &[words])?;
    let params = ElementwiseParams {
        n: n as u32,
        ..Default::default()
    };
    let run = |per_element: bool| {
        let (entry, groups) = if per_element {
            ("relu_mask_wg", n.div_ceil(256))
        } else {
            ("relu_mask", words.div_ceil(256))
        };
        gpu.dispatch(
            &Kernel::new(&ELEMENTWISE, entry),
            params.as_words(),
            &[&y, &bits],
            &[x.storage()],
            gpu.grid(groups),
        )
    };
    // One mask word per invocation, or one element per invocation with the words gathered by
    // workgroup atomics (coalesced on GPUs); measured per size class on GPUs. CPU drivers
    // keep the word kernel (a workgroup barrier suspends every SIMD batch of the workgroup
    // there), unless forced: `APGA_KERNELS=relu-mask=words|workgroup`.
    let key = format!("relu-mask/n{}", autotune::bucket(n));
    let family = ["words", "workgroup"];
    let cands = [("words", false), ("workgroup", true)];
    let per_element = if gpu.parallelism() > 4096 {
        autotune::choose(gpu, &key, &family, &cands, 0, run)?
    } else {
        autotune::forced(gpu, &key, &family, &cands, 0)?.unwrap_or(false)
    };
    run(per_element)?;
    let mask = Tensor::from_storage(std::sync::Arc::new(bits), &[words], false);
    Ok(autodiff::track(y, x.shape(), &[x], || ReluMask { mask }))
}

/// The gradient of `relu` from its saved bit mask.
pub(crate) fn relu_mask_backward(g: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let gpu = g.gpu();
    let n = g.numel();
    let params = ElementwiseParams {
        n: n as u32,
        ..Default::default()
    };
    let dx = gpu.alloc(n, g.shape())?;
    gpu.dispatch(
        &Kernel::new(&ELEMENTWISE, "relu_mask_bwd"),
        params.as_words(),
        &[&dx],
        &[g.storage(), mask.storage()],
        gpu.grid(n.div_ceil(256)),
    )?;
    Ok(Tensor::from_storage(
        std::sync::Arc::new(dx),
        g.shape(),
        false,
    ))
}
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Sigmoid, x)
}
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Exp, x)
}
pub fn log(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Log, x)
}
pub fn add_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    unary(UnaryOp::AddScalar(s), x)
}
pub fn mul_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    unary(UnaryOp::MulScalar(s), x)
}
pub fn neg(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::MulScalar(-1.0), x)
}
/// `1[x >= t]` as 0/1 values.
pub fn ge_scalar(x: &Tensor, t: f32) -> Result<Tensor> {
    unary(UnaryOp::Ge(t), x)
}
/// `1[x > t]` as 0/1 values.
pub fn gt_scalar(x: &Tensor, t: f32) -> Result<Tensor> {
    unary(UnaryOp::Gt(t), x)
}
/// `1[x < t]` as 0/1 values.
pub fn lt_scalar(x: &Tensor, t: f32) -> Result<Tensor> {
    unary(UnaryOp::Lt(t), x)
}

/// Element-wise binary op with broadcasting; `a`, `b` are the operands.
pub(crate) struct Binary {
    pub(crate) op: BinaryOp,
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
}

impl Backward for Binary {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let Binary { op, a, b, .. } = self;
        let ga = |g: &Tensor| -> Result<Tensor> {
            match op {
                BinaryOp::Add | BinaryOp::Sub => Ok(g.clone()),
                BinaryOp::Mul => ops::mul(g, b),
                BinaryOp::Div => ops::div(g, b),
                _ => Err(backward_kernel_error(*op)),
            }
        };
        let gb = |g: &Tensor| -> Result<Tensor> {
            match op {
                BinaryOp::Add => Ok(g.clone()),
                BinaryOp::Sub => ops::neg(g),
                BinaryOp::Mul => ops::mul(g, a),
                // d(a/b)/db = -a / b^2
                BinaryOp::Div => ops::neg(&ops::div(&ops::mul(g, a)?, &ops::mul(b, b)?)?),
                _ => Err(backward_kernel_error(*op)),
            }
        };
        Ok(vec![
            want(0)
                .then(|| ops::sum_to(&ga(g)?, a.shape()))
                .transpose()?,
            want(1)
                .then(|| ops::sum_to(&gb(g)?, b.shape()))
                .transpose()?,
        ])
    }
}

/// Element-wise unary op; `x` the input, `y` the output (each saved only if needed).
pub(crate) struct Unary {
    pub(crate) op: UnaryOp,
    pub(crate) x: Option<Tensor>,
    pub(crate) y: Option<Tensor>,
}

impl Backward for Unary {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Unary { op, x, y, .. } = self;
        let saved = |t: &Option<Tensor>| {
            t.clone()
                .ok_or_else(|| Error::Autodiff(format!("{op:?}: saved tensor missing")))
        };
        let gx = match op {
            UnaryOp::Relu => ops::binary(BinaryOp::ReluGrad, g, &saved(y)?)?,
            UnaryOp::Sigmoid => ops::binary(BinaryOp::SigmoidGrad, g, &saved(y)?)?,
            UnaryOp::Exp => ops::mul(g, &saved(y)?)?,
            UnaryOp::Log => ops::div(g, &saved(x)?)?,
            UnaryOp::AddScalar(_) => g.clone(),
            UnaryOp::MulScalar(s) => ops::mul_scalar(g, *s)?,
            UnaryOp::Ge(_) | UnaryOp::Gt(_) | UnaryOp::Lt(_) => {
                return Err(Error::Autodiff(format!("{op:?} is not differentiable")))
            }
        };
        Ok(vec![Some(gx)])
    }
}

/// ReLU recorded with a bit mask of `x > 0` (see `ops::relu`).
pub(crate) struct ReluMask {
    pub(crate) mask: Tensor,
}

impl Backward for ReluMask {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let ReluMask { mask, .. } = self;
        Ok(vec![Some(ops::elementwise::relu_mask_backward(g, mask)?)])
    }
}

/// `where(mask, a, b)`; gradient flows to `a` where the mask is set, else to `b`.
pub(crate) struct Where {
    pub(crate) mask: Tensor,
    pub(crate) a_shape: Vec<usize>,
    pub(crate) b_shape: Vec<usize>,
}

impl Backward for Where {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let Where {
            mask,
            a_shape,
            b_shape,
            ..
        } = self;
        let ga = ops::mul(g, mask)?;
        let gb = if want(1) {
            Some(ops::sub(g, &ga)?)
        } else {
            None
        };
        Ok(vec![
            want(0).then(|| ops::sum_to(&ga, a_shape)).transpose()?,
            gb.map(|gb| ops::sum_to(&gb, b_shape)).transpose()?,
        ])
    }
}

/// Broadcast of `x` to a larger shape.
pub(crate) struct Expand {
    pub(crate) x_shape: Vec<usize>,
}

impl Backward for Expand {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Expand { x_shape, .. } = self;
        Ok(vec![Some(ops::sum_to(g, x_shape)?)])
    }
}

fn backward_kernel_error(op: BinaryOp) -> Error {
    Error::Autodiff(format!(
        "{op:?} is a backward kernel and has no gradient of its own"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        assert_eq!(
            broadcast_shapes("t", &[2, 3, 4, 5], &[1, 3, 1, 1]).unwrap(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(broadcast_shapes("t", &[4, 1], &[3]).unwrap(), vec![4, 3]);
        assert_eq!(broadcast_shapes("t", &[], &[2, 2]).unwrap(), vec![2, 2]);
        assert!(broadcast_shapes("t", &[2, 3], &[4]).is_err());
        assert_eq!(
            broadcast_strides(&[1, 3, 1, 1], &[2, 3, 4, 5]),
            vec![0, 1, 0, 0]
        );
        assert_eq!(broadcast_strides(&[4, 5], &[2, 3, 4, 5]), vec![0, 0, 5, 1]);
    }
}
