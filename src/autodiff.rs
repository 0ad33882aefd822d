//! Layer 4: reverse-mode autodiff on a tape.
//!
//! A [`Tape`] is opened before a forward pass; while it is open (and not inside [`no_grad`]),
//! every op whose inputs require a gradient appends a [`Node`]: the [`Op`] with what its
//! backward rule needs (saved tensors or just shapes). [`Tape::backward`] walks the nodes in
//! reverse, frees each node's saved tensors as soon as its rule has run, and returns the
//! gradients of the leaves. Dropping a tape without calling backward frees everything it held.
//!
//! Every differentiation rule of the library is one arm of the `match` in [`Op::backward`],
//! written with ordinary forward ops.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::ops::{self, BinaryOp, UnaryOp};
use crate::tensor::{Tensor, TensorId};

/// What a recorded op needs for its backward rule.
pub enum Op {
    /// Element-wise binary op with broadcasting; `a`, `b` are the operands.
    Binary { op: BinaryOp, a: Tensor, b: Tensor },
    /// Element-wise unary op; `x` the input, `y` the output (each saved only if needed).
    Unary {
        op: UnaryOp,
        x: Option<Tensor>,
        y: Option<Tensor>,
    },
    /// ReLU recorded with a bit mask of `x > 0` (see `ops::relu`).
    ReluMask { mask: Tensor },
    /// `where(mask, a, b)`; gradient flows to `a` where the mask is set, else to `b`.
    Where {
        mask: Tensor,
        a_shape: Vec<usize>,
        b_shape: Vec<usize>,
    },
    /// Broadcast of `x` to a larger shape.
    Expand { x_shape: Vec<usize> },
    /// Sum over `axes` times `scale` (1 for sum, 1/count for mean).
    Sum {
        x_shape: Vec<usize>,
        axes: Vec<usize>,
        scale: f32,
    },
    /// `op(a) @ op(b)` where `op` transposes when the flag is set.
    Matmul {
        a: Tensor,
        b: Tensor,
        ta: bool,
        tb: bool,
    },
    /// Same values, new shape.
    Reshape { x_shape: Vec<usize> },
    /// conv2d; inputs (x, w[, b]).
    Conv2d {
        x: Tensor,
        w: Tensor,
        geom: ops::conv::ConvGeom,
    },
    /// conv_transpose2d; inputs (x, w[, b]); `geom` is that of the equivalent convolution.
    ConvTranspose2d {
        x: Tensor,
        w: Tensor,
        geom: ops::conv::ConvGeom,
    },
    /// Concatenation along `axis` of inputs with `sizes` entries each.
    Concat { axis: usize, sizes: Vec<usize> },
    /// `len` entries at `start` copied out of an axis of `full` entries.
    Narrow {
        axis: usize,
        start: usize,
        full: usize,
    },
    /// Input placed at `start` of a larger zero tensor.
    Pad {
        axis: usize,
        start: usize,
        len: usize,
    },
    /// Batch norm (optionally with fused ReLU); inputs (x, gamma, beta).
    BatchNorm2d {
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        stats: Tensor,
        cfg: ops::BatchNormConfig,
    },
    /// Max pooling with the saved in-plane index of each window's maximum.
    MaxPool2d {
        argmax: Tensor,
        geom: ops::pool::PoolGeom,
    },
    /// Average pooling.
    AvgPool2d { geom: ops::pool::PoolGeom },
    /// 1-D resampling of `axis` from `in_len` entries.
    Resample1d {
        axis: usize,
        in_len: usize,
        mode: ops::Interpolation,
    },
    /// Per-row softmax cross-entropy; saved softmax and labels.
    CrossEntropy { probs: Tensor, labels: Tensor },
    /// Element-wise binary cross-entropy on probabilities or (if `logits`) logits.
    Bce {
        p: Tensor,
        target: Tensor,
        logits: bool,
    },
    /// Fused batch norm + ReLU + convolution on a channel prefix; inputs (x, gamma, beta, w).
    BnReluConv2d(Box<ops::fused::BnReluConv>),
    /// Input 1 written in place into input 0 at `start` (`len` entries).
    WriteSlice {
        axis: usize,
        start: usize,
        len: usize,
    },
}

/// One recorded op: its rule, the ids of its inputs (and whether each wants a gradient), and
/// the id of its output.
pub struct Node {
    op: Op,
    inputs: Vec<(TensorId, bool)>,
    out: TensorId,
}

impl Op {
    /// Gradients of the inputs (in recording order) given the gradient `g` of the output;
    /// `needs[i]` says whether input `i` wants one.
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        Ok(match self {
            Op::Binary { op, a, b } => {
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
                vec![
                    want(0)
                        .then(|| ops::sum_to(&ga(g)?, a.shape()))
                        .transpose()?,
                    want(1)
                        .then(|| ops::sum_to(&gb(g)?, b.shape()))
                        .transpose()?,
                ]
            }
            Op::Unary { op, x, y } => {
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
                vec![Some(gx)]
            }
            Op::ReluMask { mask } => {
                vec![Some(ops::elementwise::relu_mask_backward(g, mask)?)]
            }
            Op::Where {
                mask,
                a_shape,
                b_shape,
            } => {
                let ga = ops::mul(g, mask)?;
                let gb = if want(1) {
                    Some(ops::sub(g, &ga)?)
                } else {
                    None
                };
                vec![
                    want(0).then(|| ops::sum_to(&ga, a_shape)).transpose()?,
                    gb.map(|gb| ops::sum_to(&gb, b_shape)).transpose()?,
                ]
            }
            Op::Expand { x_shape } => vec![Some(ops::sum_to(g, x_shape)?)],
            Op::Sum {
                x_shape,
                axes,
                scale,
            } => {
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
                vec![Some(ops::expand(&g, x_shape)?)]
            }
            Op::Matmul { a, b, ta, tb } => {
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
                vec![ga, gb]
            }
            Op::Reshape { x_shape } => vec![Some(ops::reshape(g, x_shape)?)],
            Op::Conv2d { x, w, geom } => {
                ops::conv::conv2d_backward(geom, x, w, g, [want(0), want(1), want(2)])?.to_vec()
            }
            Op::ConvTranspose2d { x, w, geom } => {
                ops::conv::conv_transpose2d_backward(geom, x, w, g, [want(0), want(1), want(2)])?
                    .to_vec()
            }
            Op::Concat { axis, sizes } => {
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
                out
            }
            Op::BatchNorm2d {
                x,
                gamma,
                beta,
                stats,
                cfg,
            } => ops::norm::batch_norm2d_backward(x, gamma, beta, stats, cfg, g, want(0))?.to_vec(),
            Op::BnReluConv2d(saved) => saved.backward(g, [want(0), want(1), want(2), want(3)])?,
            Op::MaxPool2d { argmax, geom } => {
                vec![Some(ops::pool::pool_backward(geom, Some(argmax), g)?)]
            }
            Op::AvgPool2d { geom } => vec![Some(ops::pool::pool_backward(geom, None, g)?)],
            Op::Resample1d { axis, in_len, mode } => {
                vec![Some(ops::resample::resample1d_backward(
                    g, *axis, *in_len, *mode,
                )?)]
            }
            Op::CrossEntropy { probs, labels } => {
                vec![Some(ops::loss::cross_entropy_backward(probs, labels, g)?)]
            }
            Op::Bce { p, target, logits } => {
                vec![Some(ops::loss::bce_backward(p, target, *logits, g)?)]
            }
            Op::Narrow { axis, start, full } => {
                vec![Some(ops::pad_axis(g, *axis, *start, *full)?)]
            }
            Op::Pad { axis, start, len } => vec![Some(ops::narrow(g, *axis, *start, *len)?)],
            Op::WriteSlice { axis, start, len } => {
                let gb = if want(0) {
                    let mask = ops::layout::slice_mask(g.gpu(), g.shape(), *axis, *start, *len)?;
                    Some(ops::mul(g, &mask)?)
                } else {
                    None
                };
                vec![
                    gb,
                    want(1)
                        .then(|| ops::narrow(g, *axis, *start, *len))
                        .transpose()?,
                ]
            }
        })
    }
}

fn backward_kernel_error(op: BinaryOp) -> Error {
    Error::Autodiff(format!(
        "{op:?} is a backward kernel and has no gradient of its own"
    ))
}

type NodeList = Rc<RefCell<Vec<Node>>>;

thread_local! {
    static TAPES: RefCell<Vec<NodeList>> = const { RefCell::new(Vec::new()) };
    static NO_GRAD: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops are recorded right now (a tape is open on this thread and no `no_grad` scope
/// is active).
pub fn is_recording() -> bool {
    NO_GRAD.with(|n| n.get() == 0) && TAPES.with(|t| !t.borrow().is_empty())
}

/// Called by every differentiable op after its forward kernel: wraps the result as a tensor
/// and, if recording and any input requires a gradient, appends a node built by `op`.
pub(crate) fn track(
    storage: crate::gpu::Storage,
    shape: &[usize],
    inputs: &[&Tensor],
    op: impl FnOnce() -> Op,
) -> Tensor {
    let record = inputs.iter().any(|t| t.requires_grad()) && is_recording();
    let out = Tensor::from_storage(std::sync::Arc::new(storage), shape, record);
    if record {
        push(op(), inputs, &out);
    }
    out
}

/// Appends a node producing `out` from `inputs` to the innermost open tape.
pub(crate) fn push(op: Op, inputs: &[&Tensor], out: &Tensor) {
    let node = Node {
        op,
        inputs: inputs.iter().map(|t| (t.id(), t.requires_grad())).collect(),
        out: out.id(),
    };
    TAPES.with(|t| {
        if let Some(top) = t.borrow().last() {
            top.borrow_mut().push(node);
        }
    });
}

/// Runs `f` with recording switched off (inference, the adversarial forward, frozen nets).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Switches recording off until dropped.
pub struct NoGradGuard(());

impl NoGradGuard {
    pub fn new() -> Self {
        NO_GRAD.with(|n| n.set(n.get() + 1));
        NoGradGuard(())
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// A recording of the ops run on this thread since it was opened. Tapes nest: ops go to the
/// innermost open tape.
pub struct Tape {
    nodes: NodeList,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// Opens a tape; ops on this thread record into it until it is dropped or consumed.
    pub fn new() -> Tape {
        let nodes: NodeList = Rc::default();
        TAPES.with(|t| t.borrow_mut().push(nodes.clone()));
        Tape { nodes }
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Backward from a one-element `loss` (seed gradient 1).
    pub fn backward(self, loss: &Tensor) -> Result<Grads> {
        if loss.numel() != 1 {
            return Err(Error::Autodiff(format!(
                "backward needs a one-element loss, got shape {:?}; use backward_with for a \
                 given output gradient",
                loss.shape()
            )));
        }
        let seed = Tensor::full(loss.gpu(), loss.shape(), 1.0)?;
        self.backward_with(loss, seed)
    }

    /// Backward from `out` with upstream gradient `grad` (same shape as `out`).
    pub fn backward_with(self, out: &Tensor, grad: Tensor) -> Result<Grads> {
        if grad.shape() != out.shape() {
            return Err(Error::Autodiff(format!(
                "gradient shape {:?} does not match output shape {:?}",
                grad.shape(),
                out.shape()
            )));
        }
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        drop(self);
        let _no_grad = NoGradGuard::new();
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(out.id(), grad);
        let mut produced = std::collections::HashSet::new();
        for node in nodes.into_iter().rev() {
            produced.insert(node.out);
            // Taking the gradient out and dropping the node frees both as soon as they are
            // used.
            let Some(g) = grads.remove(&node.out) else {
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(|(_, n)| *n).collect();
            let input_grads = node.op.backward(&g, &needs)?;
            for ((id, need), gi) in node.inputs.iter().zip(input_grads) {
                let (true, Some(gi)) = (*need, gi) else {
                    continue;
                };
                let merged = match grads.remove(id) {
                    Some(prev) => ops::add(&prev, &gi)?,
                    None => gi,
                };
                grads.insert(*id, merged);
            }
        }
        grads.retain(|id, _| !produced.contains(id));
        Ok(Grads { map: grads })
    }
}

impl Drop for Tape {
    fn drop(&mut self) {
        let me = self.nodes.clone();
        TAPES.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(pos) = t.iter().rposition(|n| Rc::ptr_eq(n, &me)) {
                t.remove(pos);
            }
        });
    }
}

/// Gradients of the leaves of a backward pass, by tensor.
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    /// The gradient of `t`, if any flowed to it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
