//! Layer 3: ops. Each op runs its forward kernel and records on the autodiff tape what its
//! backward rule (in `autodiff.rs`) needs. Submodules group ops by kernel family, one WGSL file
//! in `shaders/` each.

pub mod conv;
pub mod elementwise;
pub mod fused;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod resample;
pub mod shape;

pub use conv::{conv2d, conv_transpose2d};
pub use elementwise::{
    add, add_scalar, binary, broadcast_shapes, div, exp, expand, ge_scalar, gt_scalar, log,
    lt_scalar, mul, mul_scalar, neg, relu, sigmoid, sub, unary, where_, BinaryOp, UnaryOp,
};
pub use fused::bn_relu_conv2d;
pub use layout::{concat, narrow, pad_axis, write_slice};
pub use loss::{
    bce_elementwise, binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
    cross_entropy_rows,
};
pub use matmul::{linear, matmul, matmul_t, matmul_with, MatmulVariant};
pub use norm::{batch_norm2d, BatchNormConfig};
pub use pool::{avg_pool2d, global_avg_pool2d, max_pool2d};
pub use reduce::{mean, mean_all, sum, sum_all, sum_to};
pub use resample::{upsample_bilinear2d, upsample_nearest2d, Interpolation};
pub use shape::reshape;

/// Packs up to 8 dims into the `array<vec4<u32>, 2>` layout the shaders read.
pub(crate) fn pack8(values: &[usize]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (o, v) in out.iter_mut().zip(values) {
        *o = *v as u32;
    }
    out
}

/// Row-major element strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
