//! The backward passes of conv2d and conv_transpose2d. Both are made of the same three
//! directions of one convolution geometry `g` (input [n, ci, h, w], output [n, co, oh, ow]):
//! for conv2d the input gradient is `dgrad` of the output gradient and the weight gradient is
//! `wgrad(x, gy)`; for conv_transpose2d, whose forward is `dgrad`, the roles swap: the input
//! gradient is `fwd` of the output gradient and the weight gradient is `wgrad(gy, x)`.

use crate::autodiff::Backward;
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;
use ops::sum;

use super::wgrad::wgrad;
use super::{forward_full, transposed_full, ConvGeom, Slice};

/// Which op's backward `backward` computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Conv,
    Transpose,
}

fn backward(
    which: Which,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
    want: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    let gx = if want[0] {
        let (out, shape) = match which {
            Which::Conv => (
                transposed_full(g, gy.storage(), w, None)?,
                [g.n, g.ci, g.h, g.w],
            ),
            // x is the "output" [n, co, oh, ow] of the equivalent convolution, gy its "input".
            Which::Transpose => (
                forward_full(g, gy.storage(), w, None)?,
                [g.n, g.co, g.oh, g.ow],
            ),
        };
        Some(Tensor::from_storage(
            std::sync::Arc::new(out),
            &shape,
            false,
        ))
    } else {
        None
    };
    let gw = if want[1] {
        // wgrad(input of the convolution, gradient of its output).
        let (input, out_grad) = match which {
            Which::Conv => (x, gy),
            Which::Transpose => (gy, x),
        };
        Some(wgrad(
            x.gpu(),
            g,
            input.storage(),
            Slice::whole(g.ci),
            out_grad.storage(),
            Slice::whole(g.co),
            None,
        )?)
    } else {
        None
    };
    let gb = if want[2] {
        Some(sum(gy, &[0, 2, 3], false)?)
    } else {
        None
    };
    Ok([gx, gw, gb])
}

/// Backward of conv2d: gradients of (x, w, b) given the output gradient `gy`.
pub fn conv2d_backward(
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
    want: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    backward(Which::Conv, g, x, w, gy, want)
}

/// Backward of conv_transpose2d (geometry `g` as built by `conv_transpose2d`).
pub fn conv_transpose2d_backward(
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
    want: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    backward(Which::Transpose, g, x, w, gy, want)
}

/// The tape's rule for conv2d and conv_transpose2d; inputs (x, w[, b]); `geom` is the
/// geometry of the (equivalent) convolution.
pub(crate) struct ConvRule {
    pub(super) which: Which,
    pub(super) x: Tensor,
    pub(super) w: Tensor,
    pub(super) geom: ConvGeom,
}

impl Backward for ConvRule {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let want = |i: usize| needs.get(i).copied().unwrap_or(false);
        let want = [want(0), want(1), want(2)];
        Ok(backward(self.which, &self.geom, &self.x, &self.w, g, want)?.to_vec())
    }
}
