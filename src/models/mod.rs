//! Layer 6: the paper's two networks.

pub mod densenet;
pub mod unet;

pub use densenet::{DenseNet, DenseNetConfig};
pub use unet::UNet11;
