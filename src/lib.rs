//! apga-gpu: Adversarial Policy Gradient Augmentation (Cheng et al., MICCAI 2019) on any GPU
//! wgpu reaches, with its own tensor engine.
//!
//! Layers, each calling only the one below: [`gpu`] (device, pipelines, buffer pool, command
//! batching), [`tensor`], [`ops`] (WGSL kernels in `shaders/`), [`autodiff`] (the tape).

pub mod apga;
pub mod autodiff;
pub mod cli;
pub mod data;
pub mod error;
pub mod fsio;
pub mod gpu;
pub mod limits;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod shaders;
pub mod tensor;

pub use autodiff::{no_grad, Grads, Tape};
pub use error::{Error, Result};
/// Kernel-variant choice by measurement (part of the GPU layer).
pub use gpu::autotune;
pub use gpu::{Gpu, GpuOptions};
pub use tensor::Tensor;
