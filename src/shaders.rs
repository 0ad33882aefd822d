//! The WGSL kernels of `shaders/`, embedded at build time. Every file in that folder must be
//! listed in [`ALL`] (a test checks this), so none escapes the portability test.

use crate::gpu::Shader;

/// The fragments of `shaders/common/`, which kernels splice in with `//#include <name>`.
pub static FRAGMENTS: &[(&str, &str)] = &[
    ("gemm8x8", include_str!("../shaders/common/gemm8x8.wgsl")),
    ("winograd", include_str!("../shaders/common/winograd.wgsl")),
];

macro_rules! shader {
    ($ident:ident, $name:literal, trusted = $trusted:literal) => {
        pub static $ident: Shader = Shader {
            name: $name,
            source: include_str!(concat!("../shaders/", $name, ".wgsl")),
            fragments: FRAGMENTS,
            composed: std::sync::OnceLock::new(),
            trusted: $trusted,
        };
    };
}

// Trusted kernels run without wgpu's bounds checks unless APGA_RUNTIME_CHECKS=1; only kernels
// whose every load index is clamped into the operand (and whose operand sizes the host checks)
// are trusted.
shader!(ACCUMULATE, "accumulate", trusted = false);
shader!(ELEMENTWISE, "elementwise", trusted = false);
shader!(REDUCE, "reduce", trusted = false);
shader!(MATMUL_TILED, "matmul_tiled", trusted = true);
shader!(MATMUL_BLOCKED, "matmul_blocked", trusted = true);
shader!(MATMUL_VEC4, "matmul_vec4", trusted = true);
shader!(CONV2D, "conv2d", trusted = false);
shader!(CONV2D_WGRAD, "conv2d_wgrad", trusted = false);
shader!(CONV1X1, "conv1x1", trusted = true);
shader!(CONV1X1_SUBGROUP, "conv1x1_subgroup", trusted = true);
shader!(CONV_GEMM, "conv_gemm", trusted = true);
shader!(CONV_GEMM_SUBGROUP, "conv_gemm_subgroup", trusted = true);
shader!(CONV_WINOGRAD, "conv_winograd", trusted = false);
shader!(CONV_WINOGRAD4, "conv_winograd4", trusted = false);
shader!(LAYOUT, "layout", trusted = false);
shader!(BATCHNORM, "batchnorm", trusted = false);
shader!(POOL, "pool", trusted = false);
shader!(RESAMPLE, "resample", trusted = false);
shader!(LOSS, "loss", trusted = false);
shader!(OPTIM, "optim", trusted = false);
shader!(OPTIM_MULTI, "optim_multi", trusted = false);

/// Every shader the engine uses.
pub static ALL: &[&Shader] = &[
    &ACCUMULATE,
    &ELEMENTWISE,
    &REDUCE,
    &MATMUL_TILED,
    &MATMUL_BLOCKED,
    &MATMUL_VEC4,
    &CONV2D,
    &CONV2D_WGRAD,
    &CONV1X1,
    &CONV1X1_SUBGROUP,
    &CONV_GEMM,
    &CONV_GEMM_SUBGROUP,
    &CONV_WINOGRAD,
    &CONV_WINOGRAD4,
    &LAYOUT,
    &BATCHNORM,
    &POOL,
    &RESAMPLE,
    &LOSS,
    &OPTIM,
    &OPTIM_MULTI,
];
