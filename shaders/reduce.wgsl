// Sum over a chosen set of axes, times a scale (1 for sum, 1/count for mean).
//
// The host merges adjacent axes and describes the input as "kept" dims (one output element
// per multi-index) and "reduced" dims, each with its element strides in the input. Large
// reductions are split into `chunks` partial sums per output (first pass) that a second
// dispatch of the same kernel adds up, so that a full sum still spreads over many workgroups.
//
// Bindings: 0 = parameters, 1 = output [n_out * chunks], 2 = input.

struct Params {
    n_out: u32,      // number of outputs (product of kept dims)
    n_red: u32,      // number of reduced elements per output
    chunks: u32,     // partial sums per output (1 = single pass)
    chunk_len: u32,  // reduced elements per chunk
    kept_rank: u32,
    red_rank: u32,
    scale: f32,
    _pad: u32,
    kept_shape: array<vec4<u32>, 2>,
    kept_stride: array<vec4<u32>, 2>,
    red_shape: array<vec4<u32>, 2>,
    red_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// One merged dim (the common case, e.g. the partial sums of a weight gradient): no division
// per element, which CPU drivers scalarise.
fn kept_offset(o: u32) -> u32 {
    if (P.kept_rank == 1u) {
        return o * P.kept_stride[0][0];
    }
    var rem = o;
    var off = 0u;
    for (var d = i32(P.kept_rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let size = P.kept_shape[q][r];
        off = off + (rem % size) * P.kept_stride[q][r];
        rem = rem / size;
    }
    return off;
}

fn red_offset(j: u32) -> u32 {
    if (P.red_rank == 1u) {
        return j * P.red_stride[0][0];
    }
    var rem = j;
    var off = 0u;
    for (var d = i32(P.red_rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let size = P.red_shape[q][r];
        off = off + (rem % size) * P.red_stride[q][r];
        rem = rem / size;
    }
    return off;
}

// One workgroup of 64 per (output, chunk): strided partial sums, then a tree in shared memory.
@compute @workgroup_size(64)
fn reduce_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    let valid = g < P.n_out * P.chunks;
    var acc = 0.0;
    if (valid) {
        let o = g / P.chunks;
        let chunk = g % P.chunks;
        let base = kept_offset(o);
        let start = chunk * P.chunk_len;
        let end = min(P.n_red, start + P.chunk_len);
        for (var j = start + lid.x; j < end; j = j + WG) {
            acc = acc + x[base + red_offset(j)];
        }
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid.x < s) {
            partial[lid.x] = partial[lid.x] + partial[lid.x + s];
        }
        workgroupBarrier();
    }
    if (valid && lid.x == 0u) {
        out[g] = partial[0] * P.scale;
    }
}

// One invocation per output (many outputs, short reductions); `chunks` must be 1.
@compute @workgroup_size(64)
fn reduce_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (o < P.n_out) {
        let base = kept_offset(o);
        var acc = 0.0;
        for (var j = 0u; j < P.n_red; j = j + 1u) {
            acc = acc + x[base + red_offset(j)];
        }
        out[o] = acc * P.scale;
    }
}

// `reduce_thread` for the common sum over leading axes of a contiguous tensor (the partial
// sums of a weight gradient, [n_red, n_out]): one kept and one reduced dim, the kept one
// unit-strided, n_out and the reduced stride multiples of 4. Four outputs per invocation
// over vec4 loads (a quarter of the per-lane gathers of CPU drivers).
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn reduce_thread4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (o < P.n_out / 4u) {
        let step = P.red_stride[0][0] / 4u;
        var acc = vec4<f32>(0.0);
        for (var j = 0u; j < P.n_red; j = j + 1u) {
            acc = acc + x4[o + j * step];
        }
        out4[o] = acc * P.scale;
    }
}
