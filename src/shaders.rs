//! The WGSL kernels of `shaders/`, embedded at build time. Every file in that folder must be
//! listed in [`ALL`] (a test checks this), so none escapes the portability test.

use crate::gpu::Shader;

macro_rules! shader {
    ($ident:ident, $name:literal) => {
        pub static $ident: Shader = Shader {
            name: $name,
            source: include_str!(concat!("../shaders/", $name, ".wgsl")),
        };
    };
}

shader!(ELEMENTWISE, "elementwise");
shader!(REDUCE, "reduce");
shader!(MATMUL_TILED, "matmul_tiled");
shader!(MATMUL_BLOCKED, "matmul_blocked");
shader!(MATMUL_VEC4, "matmul_vec4");

/// Every shader the engine uses.
pub static ALL: &[&Shader] = &[
    &ELEMENTWISE,
    &REDUCE,
    &MATMUL_TILED,
    &MATMUL_BLOCKED,
    &MATMUL_VEC4,
];
