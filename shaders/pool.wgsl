// 2-D max and average pooling (PyTorch semantics, ceil_mode = false, dilation 1) over planes
// [planes = n * c, h, w] -> [planes, oh, ow]. Backward passes gather: each input pixel sums the
// gradients of the windows that cover it, so no atomics are needed when windows overlap.
//
// Max pooling ignores padded positions (PyTorch pads with -inf) and keeps the first maximum
// in scan order; it saves the winner's position in its window (ky * k + kx, one byte, four
// outputs per u32 word: a quarter of the memory of one f32 per output, an eighth of PyTorch's
// int64 indices) for the backward.
// Average pooling counts padded positions inside the padded border (count_include_pad = true).

struct Params {
    planes: u32, h: u32, w: u32, oh: u32,
    ow: u32, k: u32, stride: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

@group(0) @binding(1) var<storage, read_write> y_max: array<f32>;
@group(0) @binding(2) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(3) var<storage, read> x_max: array<f32>;

// One invocation per 4 consecutive outputs (one word of packed window positions).
@compute @workgroup_size(256)
fn max_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let word = linear_id(wid, nwg, lid);
    let total = P.planes * P.oh * P.ow;
    if (word * 4u >= total) {
        return;
    }
    var packed = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let i = word * 4u + j;
        if (i >= total) {
            break;
        }
        let plane = i / (P.oh * P.ow);
        let oy = (i / P.ow) % P.oh;
        let ox = i % P.ow;
        let base = plane * P.h * P.w;
        var best = -3.4028235e38;
        var best_t = 0u;
        var found = false;
        for (var ky = 0u; ky < P.k; ky = ky + 1u) {
            let iy = i32(oy * P.stride + ky) - i32(P.pad);
            if (iy < 0 || iy >= i32(P.h)) {
                continue;
            }
            for (var kx = 0u; kx < P.k; kx = kx + 1u) {
                let ix = i32(ox * P.stride + kx) - i32(P.pad);
                if (ix < 0 || ix >= i32(P.w)) {
                    continue;
                }
                let v = x_max[base + u32(iy) * P.w + u32(ix)];
                if (!found || v > best) {
                    best = v;
                    best_t = ky * P.k + kx;
                    found = true;
                }
            }
        }
        y_max[i] = best;
        packed = packed | (best_t << (8u * j));
    }
    argmax[word] = packed;
}

@group(0) @binding(1) var<storage, read_write> dx_max: array<f32>;
@group(0) @binding(2) var<storage, read> dy_max: array<f32>;
@group(0) @binding(3) var<storage, read> argmax_in: array<u32>;

// Range of output positions along one axis whose window covers input position i.
fn covering(i: u32, out_len: u32) -> vec2<i32> {
    let num = i32(i + P.pad);
    let lo = max(0, (num - i32(P.k) + i32(P.stride)) / i32(P.stride));
    let hi = min(i32(out_len) - 1, num / i32(P.stride));
    return vec2<i32>(lo, hi);
}

@compute @workgroup_size(256)
fn max_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.planes * P.h * P.w) {
        return;
    }
    let plane = i / (P.h * P.w);
    let iy = (i / P.w) % P.h;
    let ix = i % P.w;
    let ry = covering(iy, P.oh);
    let rx = covering(ix, P.ow);
    var s = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy = oy + 1) {
        for (var ox = rx.x; ox <= rx.y; ox = ox + 1) {
            let o = (plane * P.oh + u32(oy)) * P.ow + u32(ox);
            // This pixel's position in window (oy, ox).
            let t = (i32(iy) - (oy * i32(P.stride) - i32(P.pad))) * i32(P.k)
                + (i32(ix) - (ox * i32(P.stride) - i32(P.pad)));
            let won = (argmax_in[o / 4u] >> (8u * (o % 4u))) & 255u;
            if (u32(t) == won) {
                s = s + dy_max[o];
            }
        }
    }
    dx_max[i] = s;
}

// Divisor of a window (count_include_pad = true): the window clipped to the padded input.
fn window_size(oy: u32, ox: u32) -> f32 {
    let hs = i32(oy * P.stride) - i32(P.pad);
    let ws = i32(ox * P.stride) - i32(P.pad);
    let he = min(hs + i32(P.k), i32(P.h + P.pad));
    let we = min(ws + i32(P.k), i32(P.w + P.pad));
    return f32((he - hs) * (we - ws));
}

@group(0) @binding(1) var<storage, read_write> y_avg: array<f32>;
@group(0) @binding(2) var<storage, read> x_avg: array<f32>;

@compute @workgroup_size(256)
fn avg_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.planes * P.oh * P.ow) {
        return;
    }
    let plane = i / (P.oh * P.ow);
    let oy = (i / P.ow) % P.oh;
    let ox = i % P.ow;
    let base = plane * P.h * P.w;
    var s = 0.0;
    for (var ky = 0u; ky < P.k; ky = ky + 1u) {
        let iy = i32(oy * P.stride + ky) - i32(P.pad);
        if (iy < 0 || iy >= i32(P.h)) {
            continue;
        }
        for (var kx = 0u; kx < P.k; kx = kx + 1u) {
            let ix = i32(ox * P.stride + kx) - i32(P.pad);
            if (ix >= 0 && ix < i32(P.w)) {
                s = s + x_avg[base + u32(iy) * P.w + u32(ix)];
            }
        }
    }
    y_avg[i] = s / window_size(oy, ox);
}

@group(0) @binding(1) var<storage, read_write> dx_avg: array<f32>;
@group(0) @binding(2) var<storage, read> dy_avg: array<f32>;

@compute @workgroup_size(256)
fn avg_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.planes * P.h * P.w) {
        return;
    }
    let plane = i / (P.h * P.w);
    let iy = (i / P.w) % P.h;
    let ix = i % P.w;
    let ry = covering(iy, P.oh);
    let rx = covering(ix, P.ow);
    var s = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy = oy + 1) {
        for (var ox = rx.x; ox <= rx.y; ox = ox + 1) {
            let o = (plane * P.oh + u32(oy)) * P.ow + u32(ox);
            s = s + dy_avg[o] / window_size(u32(oy), u32(ox));
        }
    }
    dx_avg[i] = s;
}
