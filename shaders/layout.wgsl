// Data-movement kernels: weight re-layout for the convolution kernels, and channel-slice
// copies (concatenation, its backward, DenseNet block buffers).
//
// Bindings: 0 = parameters, 1 = output, 2 = input.

struct Params {
    rows: u32, cols: u32, cpad: u32, inner: u32,
    s_outer: u32, s_inner: u32, s_col: u32, _p0: u32,
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
@compute @workgroup_size(256)
fn relayout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.rows * P.cpad) {
        return;
    }
    let r = i / P.cpad;
    let c = i % P.cpad;
    var v = 0.0;
    if (c < P.cols) {
        v = src[(r / P.inner) * P.s_outer + (r % P.inner) * P.s_inner + c * P.s_col];
    }
    out[i] = v;
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
