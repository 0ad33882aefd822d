//! Shape ops that move no data.

use std::sync::Arc;

use crate::autodiff::{self, Op};
use crate::error::{Error, Result};
use crate::tensor::{numel, Tensor};

/// The same values under a new shape with the same number of elements (no copy).
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if numel(shape) != x.numel() {
        return Err(Error::shape(
            "reshape",
            format!(
                "cannot view shape {:?} ({} elements) as {:?} ({} elements)",
                x.shape(),
                x.numel(),
                shape,
                numel(shape)
            ),
        ));
    }
    let record = x.requires_grad() && autodiff::is_recording();
    let out = Tensor::from_storage(Arc::clone(x.storage_arc()), shape, record);
    if record {
        autodiff::push(
            Op::Reshape {
                x_shape: x.shape().to_vec(),
            },
            &[x],
            &out,
        );
    }
    Ok(out)
}
