// Data-movement kernels: weight re-layout for the convolution kernels, and channel-slice
// copies (concatenation, its backward, DenseNet block buffers).
//
// Bindings: 0 = parameters, 1 = output, 2 = input.

struct Params {
    rows: u32, cols: u32, cpad: u32, inner: u32,
    s_outer: u32, s_inner: u32, s_col: u32, outer: u32,
    // copy_channels: [n, c, hw] block from a channel slice of src to one of dst
    n: u32, c: u32, hw: u32, src_total: u32,
    src_off: u32, dst_total: u32, dst_off: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// out[r, c] (row length cpad) = c < cols ? src[(r / inner) * s_outer + (r % inner) * s_inner
// + c * s_col] : 0. A conv weight [co, ci, kh, kw] becomes [ci*kh*kw, co padded] for the
// forward kernel and [co*kh*kw, ci padded] for the input-gradient kernel.
// Grid: x = column / 64, y = r % inner, z = r / inner (P.outer of them): no integer division
// per element (CPU drivers scalarise vector division; the flat version cost ~0.7 ms a call).
@compute @workgroup_size(64)
fn relayout(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let ri = gid.y;
    let ro = gid.z;
    if (c >= P.cpad || ri >= P.inner || ro >= P.outer) {
        return;
    }
    var v = 0.0;
    if (c < P.cols) {
        v = src[ro * P.s_outer + ri * P.s_inner + c * P.s_col];
    }
    out[(ro * P.inner + ri) * P.cpad + c] = v;
}

// out[ci, co * kk + t] = src[co, ci, kk - 1 - t] (kk = P.inner taps, P.cols = co, P.outer =
// ci, row length P.cpad >= co * kk, zero beyond): the flipped, transposed kernel with which
// the stride-1 input gradient is itself a convolution (of the output gradient, padded by
// k - 1 - pad). Grid: x = column / 64, y = ci.
@compute @workgroup_size(64)
fn flip_transpose(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let ci = gid.y;
    if (c >= P.cpad || ci >= P.outer) {
        return;
    }
    var v = 0.0;
    if (c < P.cols * P.inner) {
        let co = c / P.inner;
        let t = c - co * P.inner;
        v = src[(co * P.outer + ci) * P.inner + P.inner - 1u - t];
    }
    out[ci * P.cpad + c] = v;
}

// dst[n, dst_off + c, i] = src[n, src_off + c, i] for c < P.c, i < P.hw.
@compute @workgroup_size(256)
fn copy_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n * P.c * P.hw) {
        return;
    }
    let n = i / (P.c * P.hw);
    let rem = i % (P.c * P.hw);
    let c = rem / P.hw;
    let p = rem % P.hw;
    out[((n * P.dst_total + P.dst_off + c) * P.hw) + p] = src[((n * P.src_total + P.src_off + c) * P.hw) + p];
}
