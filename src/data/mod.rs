//! Layer 8: data. For now the one preprocessing definition every entry point shares.

pub mod preprocess;

pub use preprocess::{Normalize, Preprocess};
