// 1-D resampling along one axis of a tensor seen as [outer, len, inner], the building block of
// 2-D nearest and bilinear upsampling (`torch.nn.functional.interpolate` with a target size,
// align_corners = false): a 2-D resize is one pass along W and one along H, since both modes
// are separable. The backward is the transposed resampling, computed as a gather: each input
// position sums the output positions whose taps touch it.
//
// Source coordinate of output j, with scale = in_len / out_len (as PyTorch, in f32):
//   nearest:  min(floor(j * scale), in_len - 1)
//   bilinear: s = max((j + 0.5) * scale - 0.5, 0); taps floor(s) and min(floor(s) + 1,
//             in_len - 1) with weights 1 - frac(s) and frac(s).

struct Params {
    outer: u32, in_len: u32, out_len: u32, inner: u32,
    mode: u32, _p0: u32, scale: f32, _p1: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

struct Taps {
    i0: u32,
    i1: u32,
    w0: f32,
    w1: f32,
}

fn taps(j: u32) -> Taps {
    if (P.mode == 0u) {
        let i = min(u32(floor(f32(j) * P.scale)), P.in_len - 1u);
        return Taps(i, i, 1.0, 0.0);
    }
    let s = max((f32(j) + 0.5) * P.scale - 0.5, 0.0);
    let i0 = min(u32(s), P.in_len - 1u);
    let i1 = min(i0 + 1u, P.in_len - 1u);
    let l1 = s - f32(i0);
    return Taps(i0, i1, 1.0 - l1, l1);
}

@compute @workgroup_size(256)
fn fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.outer * P.out_len * P.inner) {
        return;
    }
    let o = i / (P.out_len * P.inner);
    let j = (i / P.inner) % P.out_len;
    let q = i % P.inner;
    let t = taps(j);
    let base = o * P.in_len * P.inner + q;
    out[i] = t.w0 * src[base + t.i0 * P.inner] + t.w1 * src[base + t.i1 * P.inner];
}

// out = input gradient [outer, in_len, inner], src = output gradient [outer, out_len, inner].
@compute @workgroup_size(256)
fn bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.outer * P.in_len * P.inner) {
        return;
    }
    let o = i / (P.in_len * P.inner);
    let s = (i / P.inner) % P.in_len;
    let q = i % P.inner;
    // Output positions whose source coordinate lies within one of s (plus a margin of 2).
    let inv = 1.0 / P.scale;
    let lo = max(i32(floor((f32(s) - 1.0) * inv)) - 2, 0);
    let hi = min(i32(ceil((f32(s) + 2.0) * inv)) + 2, i32(P.out_len) - 1);
    let base = o * P.out_len * P.inner + q;
    var acc = 0.0;
    for (var j = lo; j <= hi; j = j + 1) {
        let t = taps(u32(j));
        let g = src[base + u32(j) * P.inner];
        if (t.i0 == s) {
            acc = acc + t.w0 * g;
        }
        if (t.i1 == s) {
            acc = acc + t.w1 * g;
        }
    }
    out[i] = acc;
}
