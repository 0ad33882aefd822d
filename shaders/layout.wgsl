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

// `relayout` for a plain transpose (inner = 1, s_outer = 1; rows, s_col and cpad multiples of
// 4): out[r, c] = src[c * s_col + r], a 4 x 4 block per invocation over vec4 loads and
// stores, where `relayout` gathers every value per lane (CPU drivers). A 1x1 convolution's
// weights [co, ci] become [ci, co padded] this way, for its input gradient's GEMM.
// Grid: x = column quad / 64, y = row quad.
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> src4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn transpose4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let cq = gid.x;
    let rq = gid.y;
    if (cq * 4u >= P.cpad || rq * 4u >= P.rows) {
        return;
    }
    var m: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let c = cq * 4u + j;
        m[j] = vec4<f32>(0.0);
        if (c < P.cols) {
            m[j] = src4[(c * P.s_col) / 4u + rq];
        }
    }
    let row4 = P.cpad / 4u;
    out4[(rq * 4u) * row4 + cq] = vec4<f32>(m[0].x, m[1].x, m[2].x, m[3].x);
    out4[(rq * 4u + 1u) * row4 + cq] = vec4<f32>(m[0].y, m[1].y, m[2].y, m[3].y);
    out4[(rq * 4u + 2u) * row4 + cq] = vec4<f32>(m[0].z, m[1].z, m[2].z, m[3].z);
    out4[(rq * 4u + 3u) * row4 + cq] = vec4<f32>(m[0].w, m[1].w, m[2].w, m[3].w);
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

// dst[n, dst_off + c, p] = p < cols ? src[n, src_off + c, p] : 0 for p < cpad, where src rows
// hold `cols` values and dst rows `cpad`: `copy_channels` between row lengths. The 1x1
// convolutions of maps whose pixel count is no multiple of 4 (DenseNet's 7x7 block at 224x224)
// pad their rows to a multiple of 4 for the vec4 GEMM and copy the result's rows back.
// Grid: x = pixel / 64, y = channel, z = image (no division per element).
@compute @workgroup_size(64)
fn copy_cols(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = gid.x;
    let c = gid.y;
    let n = gid.z;
    if (p >= P.cpad || c >= P.c || n >= P.n) {
        return;
    }
    var v = 0.0;
    if (p < P.cols) {
        v = src[(n * P.src_total + P.src_off + c) * P.cols + p];
    }
    out[(n * P.dst_total + P.dst_off + c) * P.cpad + p] = v;
}
