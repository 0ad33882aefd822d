// 2-D convolution (cross-correlation, PyTorch semantics) without a materialised im2col: the
// forward pass and the input gradient (a transposed convolution, which is also the forward
// pass of conv_transpose2d). The weight gradient is in conv2d_wgrad.wgsl.
//
// Both kernels are barrier-free and register-blocked: each invocation keeps a block of
// channels x pixels in registers and reads the weights as vec4 from a re-laid-out copy in
// which the channel it blocks over is the contiguous dimension (see layout.wgsl::relayout).
// Inputs and outputs may be channel slices of larger NCHW buffers (`*_c_total`, `*_c_off`), so
// a DenseNet layer can read the first channels of a block buffer and write its new ones.
//
// Bindings: 0 = parameters, 1 = output, 2.. = inputs.

struct Params {
    n: u32, ci: u32, h: u32, w: u32,       // input (or input gradient) [n, ci, h, w]
    co: u32, oh: u32, ow: u32, kh: u32,    // output (or output gradient) [n, co, oh, ow]
    kw: u32, stride: u32, pad: u32, cpad: u32,  // cpad: padded row length of the weight copy
    src_c_total: u32, src_c_off: u32, dst_c_total: u32, dst_c_off: u32,
    rows_per_chunk: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// Optional prologue (fwd only): the input is read as relu(x * affine[c] + affine[C + c]), the
// batch norm + ReLU that precedes every DenseNet convolution, so the normalised activations
// are never stored. `affine` holds [scale; shift] per input channel.
@group(0) @binding(5) var<storage, read> affine: array<f32>;
override PROLOGUE: bool = false;

fn load_in(index: u32, c: u32, ok: bool) -> f32 {
    let v = src[index];
    if (PROLOGUE) {
        return select(0.0, max(v * affine[c] + affine[P.ci + c], 0.0), ok);
    }
    return select(0.0, v, ok);
}

// Forward: out[n, co, oy, ox] = bias[co] + sum_{ci,ky,kx} w[co, ci, ky, kx] *
// src[n, ci, oy*s - p + ky, ox*s - p + kx]. Invocation: 8 output channels x 4 consecutive
// output columns. wt = weights as [ci*kh*kw, cpad] (cpad = co rounded up to 8, zero-filled).
@compute @workgroup_size(64)
fn fwd(@builtin(global_invocation_id) gid: vec3<u32>) {
    let owb = (P.ow + 3u) / 4u;
    let pb = gid.x;
    if (pb >= P.n * P.oh * owb) {
        return;
    }
    let n = pb / (P.oh * owb);
    let rem = pb % (P.oh * owb);
    let oy = rem / owb;
    let ox0 = (rem % owb) * 4u;
    let co0 = gid.y * 8u;
    let cq = P.cpad / 4u;
    var acc0: array<vec4<f32>, 4>;  // channels co0..co0+3, column j
    var acc1: array<vec4<f32>, 4>;  // channels co0+4..co0+7, column j
    for (var j = 0u; j < 4u; j = j + 1u) {
        acc0[j] = vec4<f32>(0.0);
        acc1[j] = vec4<f32>(0.0);
    }
    let plane = P.h * P.w;
    for (var ci = 0u; ci < P.ci; ci = ci + 1u) {
        let base = (n * P.src_c_total + P.src_c_off + ci) * plane;
        for (var ky = 0u; ky < P.kh; ky = ky + 1u) {
            let iy = i32(oy * P.stride + ky) - i32(P.pad);
            let row_ok = iy >= 0 && iy < i32(P.h);
            let row = base + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
            for (var kx = 0u; kx < P.kw; kx = kx + 1u) {
                let k = (ci * P.kh + ky) * P.kw + kx;
                let w0 = wt[k * cq + co0 / 4u];
                let w1 = wt[k * cq + co0 / 4u + 1u];
                for (var j = 0u; j < 4u; j = j + 1u) {
                    let ix = i32((ox0 + j) * P.stride + kx) - i32(P.pad);
                    let ok = row_ok && ix >= 0 && ix < i32(P.w);
                    let v = load_in(row + u32(clamp(ix, 0, i32(P.w) - 1)), ci, ok);
                    acc0[j] = fma(vec4<f32>(v), w0, acc0[j]);
                    acc1[j] = fma(vec4<f32>(v), w1, acc1[j]);
                }
            }
        }
    }
    for (var c = 0u; c < 8u; c = c + 1u) {
        let co = co0 + c;
        if (co < P.co) {
            let b = bias[co];
            let obase = ((n * P.dst_c_total + P.dst_c_off + co) * P.oh + oy) * P.ow;
            for (var j = 0u; j < 4u; j = j + 1u) {
                if (ox0 + j < P.ow) {
                    var v: f32;
                    if (c < 4u) {
                        v = acc0[j][c];
                    } else {
                        v = acc1[j][c - 4u];
                    }
                    out[obase + ox0 + j] = v + b;
                }
            }
        }
    }
}

// Forward, "strip" variant: 8 output channels x 8 consecutive output columns per invocation.
// For each (ci, ky) the input row segment the 8 columns need (7 * stride + kw values, at most
// 24: the host checks) is loaded once into registers and reused for every kx, so a 3x3 kernel
// loads 10 input values and 6 weight vectors per 192 multiply-adds instead of 24 and 6.
@compute @workgroup_size(64)
fn fwd_strip(@builtin(global_invocation_id) gid: vec3<u32>) {
    let owb = (P.ow + 7u) / 8u;
    let pb = gid.x;
    if (pb >= P.n * P.oh * owb) {
        return;
    }
    let n = pb / (P.oh * owb);
    let rem = pb % (P.oh * owb);
    let oy = rem / owb;
    let ox0 = (rem % owb) * 8u;
    let co0 = gid.y * 8u;
    let cq = P.cpad / 4u;
    let span = 7u * P.stride + P.kw;
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j = j + 1u) {
        acc0[j] = vec4<f32>(0.0);
        acc1[j] = vec4<f32>(0.0);
    }
    let plane = P.h * P.w;
    let ix0 = i32(ox0 * P.stride) - i32(P.pad);
    var strip: array<f32, 24>;
    for (var ci = 0u; ci < P.ci; ci = ci + 1u) {
        let base = (n * P.src_c_total + P.src_c_off + ci) * plane;
        for (var ky = 0u; ky < P.kh; ky = ky + 1u) {
            let iy = i32(oy * P.stride + ky) - i32(P.pad);
            let row_ok = iy >= 0 && iy < i32(P.h);
            let row = base + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
            for (var t = 0u; t < span; t = t + 1u) {
                let ix = ix0 + i32(t);
                let ok = row_ok && ix >= 0 && ix < i32(P.w);
                strip[t] = load_in(row + u32(clamp(ix, 0, i32(P.w) - 1)), ci, ok);
            }
            for (var kx = 0u; kx < P.kw; kx = kx + 1u) {
                let k = (ci * P.kh + ky) * P.kw + kx;
                let w0 = wt[k * cq + co0 / 4u];
                let w1 = wt[k * cq + co0 / 4u + 1u];
                for (var j = 0u; j < 8u; j = j + 1u) {
                    let v = strip[j * P.stride + kx];
                    acc0[j] = fma(vec4<f32>(v), w0, acc0[j]);
                    acc1[j] = fma(vec4<f32>(v), w1, acc1[j]);
                }
            }
        }
    }
    for (var c = 0u; c < 8u; c = c + 1u) {
        let co = co0 + c;
        if (co < P.co) {
            let b = bias[co];
            let obase = ((n * P.dst_c_total + P.dst_c_off + co) * P.oh + oy) * P.ow;
            for (var j = 0u; j < 8u; j = j + 1u) {
                if (ox0 + j < P.ow) {
                    var v: f32;
                    if (c < 4u) {
                        v = acc0[j][c];
                    } else {
                        v = acc1[j][c - 4u];
                    }
                    out[obase + ox0 + j] = v + b;
                }
            }
        }
    }
}

// Input gradient / transposed convolution: out[n, ci, iy, ix] = sum over (co, ky, kx) with
// oy = (iy + p - ky) / s and ox = (ix + p - kx) / s integral and in range of
// src[n, co, oy, ox] * w[co, ci, ky, kx]. Here src is the output gradient [n, co, oh, ow],
// out is [n, ci, h, w], and wt = weights as [co*kh*kw, cpad] (cpad = ci rounded up to 8).
// Invocation: 8 input channels x 4 input columns of one phase r (ix = r + s * (4b + j)), so
// that for every kx the four columns are all valid or all skipped together: with stride s
// only the taps ky = (iy + p) mod s, kx = (r + p) mod s (step s) are visited, instead of
// masking s*s - 1 of every s*s taps.
@compute @workgroup_size(64)
fn dgrad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = P.stride;
    let per_phase = (P.w + s - 1u) / s;    // columns of the widest phase
    let nb = (per_phase + 3u) / 4u;        // blocks of 4 per phase
    let row_blocks = s * nb;
    let pb = gid.x;
    if (pb >= P.n * P.h * row_blocks) {
        return;
    }
    let n = pb / (P.h * row_blocks);
    let rem = pb % (P.h * row_blocks);
    let iy = rem / row_blocks;
    let r = (rem % row_blocks) / nb;
    let b = (rem % row_blocks) % nb;
    let ix0 = r + s * 4u * b;              // first column; column j is ix0 + s * j
    let ci0 = gid.y * 8u;
    let cq = P.cpad / 4u;
    var acc0: array<vec4<f32>, 4>;
    var acc1: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        acc0[j] = vec4<f32>(0.0);
        acc1[j] = vec4<f32>(0.0);
    }
    let oplane = P.oh * P.ow;
    let ky0 = (iy + P.pad) % s;
    let kx0 = (r + P.pad) % s;
    for (var co = 0u; co < P.co; co = co + 1u) {
        let base = (n * P.src_c_total + P.src_c_off + co) * oplane;
        for (var ky = ky0; ky < P.kh; ky = ky + s) {
            let ny = i32(iy + P.pad) - i32(ky);
            let oy = ny / i32(s);
            if (ny < 0 || oy >= i32(P.oh)) {
                continue;
            }
            let row = base + u32(oy) * P.ow;
            for (var kx = kx0; kx < P.kw; kx = kx + s) {
                let k = (co * P.kh + ky) * P.kw + kx;
                let w0 = wt[k * cq + ci0 / 4u];
                let w1 = wt[k * cq + ci0 / 4u + 1u];
                // ox for column j: (ix0 + p - kx) / s + j, an exact division by the choice of kx.
                let ox0 = (i32(ix0 + P.pad) - i32(kx)) / i32(s);
                for (var j = 0u; j < 4u; j = j + 1u) {
                    let ox = ox0 + i32(j);
                    let ok = ox >= 0 && ox < i32(P.ow) && ix0 + s * j < P.w;
                    let v = select(0.0, src[row + u32(clamp(ox, 0, i32(P.ow) - 1))], ok);
                    acc0[j] = fma(vec4<f32>(v), w0, acc0[j]);
                    acc1[j] = fma(vec4<f32>(v), w1, acc1[j]);
                }
            }
        }
    }
    for (var c = 0u; c < 8u; c = c + 1u) {
        let ci = ci0 + c;
        if (ci < P.ci) {
            let obase = ((n * P.dst_c_total + P.dst_c_off + ci) * P.h + iy) * P.w;
            for (var j = 0u; j < 4u; j = j + 1u) {
                if (ix0 + s * j < P.w) {
                    var v: f32;
                    if (c < 4u) {
                        v = acc0[j][c];
                    } else {
                        v = acc1[j][c - 4u];
                    }
                    out[obase + ix0 + s * j] = v + bias[ci];
                }
            }
        }
    }
}

// Input gradient, "strip" variant for stride 1: 8 input channels x 8 consecutive input columns
// per invocation; for each (co, ky) the output-gradient row segment the 8 columns need
// (7 + kw values, at most 24: the host checks) is loaded once and reused for every kx.
// dx[ix] gets dy[ix + p - kx] * w[.., kx], i.e. strip slot j + (kw - 1 - kx).
@compute @workgroup_size(64)
fn dgrad_strip(@builtin(global_invocation_id) gid: vec3<u32>) {
    let wb = (P.w + 7u) / 8u;
    let pb = gid.x;
    if (pb >= P.n * P.h * wb) {
        return;
    }
    let n = pb / (P.h * wb);
    let rem = pb % (P.h * wb);
    let iy = rem / wb;
    let ix0 = (rem % wb) * 8u;
    let ci0 = gid.y * 8u;
    let cq = P.cpad / 4u;
    let span = 7u + P.kw;
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j = j + 1u) {
        acc0[j] = vec4<f32>(0.0);
        acc1[j] = vec4<f32>(0.0);
    }
    let oplane = P.oh * P.ow;
    // Output column of strip slot t: ix0 + p - (kw - 1) + t.
    let ox_first = i32(ix0 + P.pad) - i32(P.kw - 1u);
    var strip: array<f32, 24>;
    for (var co = 0u; co < P.co; co = co + 1u) {
        let base = (n * P.src_c_total + P.src_c_off + co) * oplane;
        for (var ky = 0u; ky < P.kh; ky = ky + 1u) {
            let oy = i32(iy + P.pad) - i32(ky);
            if (oy < 0 || oy >= i32(P.oh)) {
                continue;
            }
            let row = base + u32(oy) * P.ow;
            for (var t = 0u; t < span; t = t + 1u) {
                let ox = ox_first + i32(t);
                let ok = ox >= 0 && ox < i32(P.ow);
                strip[t] = select(0.0, src[row + u32(clamp(ox, 0, i32(P.ow) - 1))], ok);
            }
            for (var kx = 0u; kx < P.kw; kx = kx + 1u) {
                let k = (co * P.kh + ky) * P.kw + kx;
                let w0 = wt[k * cq + ci0 / 4u];
                let w1 = wt[k * cq + ci0 / 4u + 1u];
                let off = P.kw - 1u - kx;
                for (var j = 0u; j < 8u; j = j + 1u) {
                    let v = strip[j + off];
                    acc0[j] = fma(vec4<f32>(v), w0, acc0[j]);
                    acc1[j] = fma(vec4<f32>(v), w1, acc1[j]);
                }
            }
        }
    }
    for (var c = 0u; c < 8u; c = c + 1u) {
        let ci = ci0 + c;
        if (ci < P.ci) {
            let obase = ((n * P.dst_c_total + P.dst_c_off + ci) * P.h + iy) * P.w;
            for (var j = 0u; j < 8u; j = j + 1u) {
                if (ix0 + j < P.w) {
                    var v: f32;
                    if (c < 4u) {
                        v = acc0[j][c];
                    } else {
                        v = acc1[j][c - 4u];
                    }
                    out[obase + ix0 + j] = v + bias[ci];
                }
            }
        }
    }
}
