//! Layer 2: a tensor is an f32 buffer on the GPU plus a row-major (NCHW) shape. Tensors are
//! immutable values; cloning one is cheap (shared storage). Every tensor has a unique id that
//! the autodiff tape uses to route gradients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, KernelParams, Storage};

crate::kernel_params! {
    /// The parameter block of `accumulate.wgsl`.
    pub struct AccumulateParams {
        n: u32, _pad0: u32, _pad1: u32, _pad2: u32,
    }
}

/// Identity of a tensor for the autodiff tape.
pub type TensorId = u64;

fn next_id() -> TensorId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Inner {
    id: TensorId,
    shape: Vec<usize>,
    storage: Arc<Storage>,
    requires_grad: bool,
}

/// An f32 tensor on the GPU.
#[derive(Clone)]
pub struct Tensor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(id {}, shape {:?}{})",
            self.id(),
            self.shape(),
            if self.requires_grad() { ", grad" } else { "" }
        )
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Wraps storage as a tensor with a fresh id.
    pub(crate) fn from_storage(
        storage: Arc<Storage>,
        shape: &[usize],
        requires_grad: bool,
    ) -> Self {
        Tensor {
            inner: Arc::new(Inner {
                id: next_id(),
                shape: shape.to_vec(),
                storage,
                requires_grad,
            }),
        }
    }

    /// Uploads host data in row-major order.
    pub fn from_slice(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape);
        if data.len() != n {
            return Err(Error::DataLength {
                len: data.len(),
                shape: shape.to_vec(),
                numel: n,
            });
        }
        let storage = gpu.upload(data, shape)?;
        Ok(Tensor::from_storage(Arc::new(storage), shape, false))
    }

    /// A tensor of zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let storage = gpu.zeros(numel(shape), shape)?;
        Ok(Tensor::from_storage(Arc::new(storage), shape, false))
    }

    /// A tensor filled with `value`.
    pub fn full(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
        if value == 0.0 {
            return Tensor::zeros(gpu, shape);
        }
        Tensor::from_slice(gpu, &vec![value; numel(shape)], shape)
    }

    /// A one-element tensor of shape `[]`.
    pub fn scalar(gpu: &Gpu, value: f32) -> Result<Tensor> {
        Tensor::from_slice(gpu, &[value], &[])
    }

    /// Copies the values back to the host (waits for the GPU).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.gpu().read(&self.inner.storage, self.numel())
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("needs one element, tensor has shape {:?}", self.shape()),
            ));
        }
        Ok(self.to_vec()?[0])
    }

    pub fn id(&self) -> TensorId {
        self.inner.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.inner.shape
    }
    pub fn rank(&self) -> usize {
        self.inner.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.inner.shape)
    }
    pub fn gpu(&self) -> &Gpu {
        self.inner.storage.gpu()
    }
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }
    pub(crate) fn storage_arc(&self) -> &Arc<Storage> {
        &self.inner.storage
    }
    /// Whether gradients flow to this tensor (a parameter, or computed from one on a tape).
    pub fn requires_grad(&self) -> bool {
        self.inner.requires_grad
    }

    /// The same values as a new leaf that requires a gradient (a trainable parameter or an
    /// input whose gradient is wanted). The returned tensor has its own id.
    pub fn with_grad(&self) -> Tensor {
        Tensor::from_storage(self.inner.storage.clone(), self.shape(), true)
    }

    /// The same values cut off from the tape: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        Tensor::from_storage(self.inner.storage.clone(), self.shape(), false)
    }

    /// `self + other` for two tensors of the same shape (the autodiff tape's gradient
    /// accumulation; no broadcasting, no recording). Its own small kernel
    /// (`shaders/accumulate.wgsl`), so that the tape needs nothing from the ops layer.
    pub fn add_same_shape(&self, other: &Tensor) -> Result<Tensor> {
        if self.shape() != other.shape() {
            return Err(Error::shape(
                "accumulate",
                format!("shapes {:?} and {:?} differ", self.shape(), other.shape()),
            ));
        }
        let gpu = self.gpu();
        let n = self.numel();
        let out = gpu.alloc(n, self.shape())?;
        gpu.dispatch(
            &crate::gpu::Kernel::new(&crate::shaders::ACCUMULATE, "add2"),
            AccumulateParams {
                n: n as u32,
                ..Default::default()
            }
            .as_words(),
            &[&out],
            &[self.storage(), other.storage()],
            gpu.grid(n.div_ceil(256)),
        )?;
        Ok(Tensor::from_storage(Arc::new(out), self.shape(), false))
    }

    /// Dimensions as `[N, C, H, W]`, or a shape error naming `op`.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        match *self.shape() {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::shape(
                op,
                format!("expects an NCHW tensor, got shape {:?}", self.shape()),
            )),
        }
    }
}
