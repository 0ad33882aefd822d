// Shared by the Winograd shaders (conv_winograd.wgsl, conv_winograd4.wgsl): the parameter
// block, the flat invocation index of a 64-wide 2-D grid, and the weight read of the weight
// transform (with FLIP the input gradient's weights: g[o, c] = w[c, o] flipped, w being
// [ci', co', 3, 3] of the convolution whose input gradient this is, read in place of a
// flipped copy).

// Tiles are numbered over the batch (image-major); a dispatch covers tiles [t0, t0 + tiles).
struct Params {
    tiles: u32, t0: u32, ci: u32, co: u32,
    h: u32, w: u32, th: u32, tw: u32,
    t4: u32, src_c_total: u32, src_c_off: u32, dst_c_total: u32,
    dst_c_off: u32, groups: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
override PROLOGUE: bool = false;
override FLIP: bool = false;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid.x;
}

// The weight transform's input.
@group(0) @binding(1) var<storage, read_write> u_out: array<f32>;
@group(0) @binding(2) var<storage, read> w_in: array<f32>;

fn w_at(i: u32, k: u32) -> f32 {
    if (FLIP) {
        let o = i / P.ci;
        let c = i % P.ci;
        return w_in[(c * P.co + o) * 9u + 8u - k];
    }
    return w_in[i * 9u + k];
}
