//! Layer 4: reverse-mode autodiff on a tape.
//!
//! A [`Tape`] is opened before a forward pass; while it is open (and not inside [`no_grad`]),
//! every op whose inputs require a gradient appends a [`Node`]: its [`Backward`] rule with
//! what the rule needs (saved tensors or just shapes). [`Tape::backward`] walks the nodes in
//! reverse, frees each node's saved tensors as soon as its rule has run, adds up the
//! gradients reaching a tensor (`Tensor::add_same_shape`), and returns those of the leaves.
//! Dropping a tape without calling backward frees everything it held.
//!
//! The tape knows no op: each op's rule lives beside its forward in `src/ops/` (written with
//! ordinary forward ops), so imports run one way, ops -> autodiff -> tensor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// A recorded op's backward rule, with what it saved for it (tensors or just shapes). Each op
/// defines its rule beside its forward (`src/ops/*.rs`); the tape only walks.
pub trait Backward {
    /// Gradients of the inputs (in recording order) given the gradient `g` of the output;
    /// `needs[i]` says whether input `i` wants one.
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

/// One recorded op: its rule, the ids of its inputs (and whether each wants a gradient), and
/// the id of its output.
pub struct Node {
    rule: Box<dyn Backward>,
    inputs: Vec<(TensorId, bool)>,
    out: TensorId,
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
pub(crate) fn track<B: Backward + 'static>(
    storage: crate::gpu::Storage,
    shape: &[usize],
    inputs: &[&Tensor],
    rule: impl FnOnce() -> B,
) -> Tensor {
    let record = inputs.iter().any(|t| t.requires_grad()) && is_recording();
    let out = Tensor::from_storage(std::sync::Arc::new(storage), shape, record);
    if record {
        push(rule(), inputs, &out);
    }
    out
}

/// Appends a node producing `out` from `inputs` to the innermost open tape.
pub(crate) fn push(rule: impl Backward + 'static, inputs: &[&Tensor], out: &Tensor) {
    let node = Node {
        rule: Box::new(rule),
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
            let input_grads = node.rule.backward(&g, &needs)?;
            for ((id, need), gi) in node.inputs.iter().zip(input_grads) {
                let (true, Some(gi)) = (*need, gi) else {
                    continue;
                };
                let merged = match grads.remove(id) {
                    Some(prev) => prev.add_same_shape(&gi)?,
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
