//! Shape ops that move no data.

use std::sync::Arc;

use crate::autodiff::{self, Backward};
use crate::error::{Error, Result};
use crate::ops;
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
            Reshape {
                x_shape: x.shape().to_vec(),
            },
            &[x],
            &out,
        );
    }
    Ok(out)
}

/// Same values, new shape.
pub(crate) struct Reshape {
    pub(crate) x_shape: Vec<usize>,
}

impl Backward for Reshape {
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let Reshape { x_shape, .. } = self;
        Ok(vec![Some(ops::reshape(g, x_shape)?)])
    }
}
