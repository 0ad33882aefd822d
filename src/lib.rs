//! apga-gpu: Adversarial Policy Gradient Augmentation (Cheng et al., MICCAI 2019) on any GPU
//! wgpu reaches, with its own tensor engine.
//!
//! Layers, bottom to top, each importing only those below it (no import cycle):
//! [`fsio`], [`error`], [`limits`] -> [`gpu`] (device, pipelines, buffer pool, command
//! batching, autotuning) -> [`shaders`] -> [`tensor`] -> [`autodiff`] (the tape, which knows
//! no op) -> [`ops`] (each op's forward, backward rule and WGSL kernels) -> [`nn`] -> [`optim`]
//! -> [`models`] -> [`data`], [`apga`] -> [`cli`].

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
