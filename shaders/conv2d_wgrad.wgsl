// Weight gradient of conv2d (and of conv_transpose2d, with the roles of its input and output
// gradient swapped): a GEMM-style reduction over N*OH*OW, never a loop per weight. The rows
// (n, oy) are split into chunks; each chunk writes partial sums that a reduction adds up, so
// small weight tensors with long reductions still spread over many workgroups.
//
// Bindings: 0 = parameters, 1 = partial sums [chunks, co, ci*kh*kw], 2 = input src
// [n, ci, h, w] (a channel slice: src_c_total, src_c_off), 3 = output gradient dy
// [n, co, oh, ow] (a channel slice: dst_c_total, dst_c_off).

struct Params {
    n: u32, ci: u32, h: u32, w: u32,
    co: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, cpad: u32,
    src_c_total: u32, src_c_off: u32, dst_c_total: u32, dst_c_off: u32,
    rows_per_chunk: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
// Optional prologue: the input is read as relu(x * affine[c] + affine[ci + c]) (a fused
// batch norm + ReLU before the convolution; see conv2d.wgsl).
@group(0) @binding(4) var<storage, read> affine: array<f32>;
override PROLOGUE: bool = false;

// Weight gradient: partial[chunk, co, k] = sum over the rows (n, oy) of the chunk and every
// ox of dy[n, co, oy, ox] * src[n, ci, oy*s - p + ky, ox*s - p + kx], k = (ci, ky, kx).
// Invocation: 4 output channels x 4 consecutive k; z = chunk. out is [chunks, co, ci*kh*kw].
@compute @workgroup_size(8, 8)
fn wgrad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kk = P.kh * P.kw;
    let ktot = P.ci * kk;
    let k0 = gid.x * 4u;
    let co0 = gid.y * 4u;
    if (k0 >= ktot || co0 >= P.co) {
        return;
    }
    let chunk = gid.z;
    let rows = P.n * P.oh;
    let r0 = chunk * P.rows_per_chunk;
    let r1 = min(rows, r0 + P.rows_per_chunk);
    // Per column j: input-plane offset (channel ci), kernel offsets ky, kx.
    var cbase: array<u32, 4>;
    var chan: array<u32, 4>;
    var kyj: array<i32, 4>;
    var kxj: array<i32, 4>;
    var kvalid: array<bool, 4>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let k = min(k0 + j, ktot - 1u);
        kvalid[j] = k0 + j < ktot;
        let ci = k / kk;
        cbase[j] = P.src_c_off + ci;
        chan[j] = ci;
        kyj[j] = i32((k % kk) / P.kw) - i32(P.pad);
        kxj[j] = i32(k % P.kw) - i32(P.pad);
    }
    var cob: array<u32, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        cob[i] = P.dst_c_off + min(co0 + i, P.co - 1u);
    }
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: channel co0+i, column k0+j
    for (var i = 0u; i < 4u; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    let plane = P.h * P.w;
    let oplane = P.oh * P.ow;
    for (var r = r0; r < r1; r = r + 1u) {
        let n = r / P.oh;
        let oy = r % P.oh;
        var xrow: array<u32, 4>;
        var rok: array<bool, 4>;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let iy = i32(oy * P.stride) + kyj[j];
            rok[j] = kvalid[j] && iy >= 0 && iy < i32(P.h);
            xrow[j] = (n * P.src_c_total + cbase[j]) * plane + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
        }
        var drow: array<u32, 4>;
        for (var i = 0u; i < 4u; i = i + 1u) {
            drow[i] = (n * P.dst_c_total + cob[i]) * oplane + oy * P.ow;
        }
        for (var ox = 0u; ox < P.ow; ox = ox + 1u) {
            var xv: vec4<f32>;
            for (var j = 0u; j < 4u; j = j + 1u) {
                let ix = i32(ox * P.stride) + kxj[j];
                let ok = rok[j] && ix >= 0 && ix < i32(P.w);
                var v = src[xrow[j] + u32(clamp(ix, 0, i32(P.w) - 1))];
                if (PROLOGUE) {
                    v = max(v * affine[chan[j]] + affine[P.ci + chan[j]], 0.0);
                }
                xv[j] = select(0.0, v, ok);
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i] = fma(vec4<f32>(dy[drow[i] + ox]), xv, acc[i]);
            }
        }
    }
    let obase = chunk * P.co * ktot;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let co = co0 + i;
        if (co < P.co) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                if (k0 + j < ktot) {
                    out[obase + co * ktot + k0 + j] = acc[i][j];
                }
            }
        }
    }
}

// The same reduction with 8 output channels x 8 columns per invocation: per output pixel it
// loads 8 input and 8 output-gradient values for 64 multiply-adds (the 4 x 4 kernel: 8 for 16).
@compute @workgroup_size(8, 8)
fn wgrad8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kk = P.kh * P.kw;
    let ktot = P.ci * kk;
    let k0 = gid.x * 8u;
    let co0 = gid.y * 8u;
    if (k0 >= ktot || co0 >= P.co) {
        return;
    }
    let chunk = gid.z;
    let rows = P.n * P.oh;
    let r0 = chunk * P.rows_per_chunk;
    let r1 = min(rows, r0 + P.rows_per_chunk);
    var cbase: array<u32, 8>;
    var chan: array<u32, 8>;
    var kyj: array<i32, 8>;
    var kxj: array<i32, 8>;
    var kvalid: array<bool, 8>;
    for (var j = 0u; j < 8u; j = j + 1u) {
        let k = min(k0 + j, ktot - 1u);
        kvalid[j] = k0 + j < ktot;
        let ci = k / kk;
        cbase[j] = P.src_c_off + ci;
        chan[j] = ci;
        kyj[j] = i32((k % kk) / P.kw) - i32(P.pad);
        kxj[j] = i32(k % P.kw) - i32(P.pad);
    }
    var cob: array<u32, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        cob[i] = P.dst_c_off + min(co0 + i, P.co - 1u);
    }
    var acc: array<vec4<f32>, 16>;  // acc[2 i + h][j]: channel co0 + i, column k0 + 4 h + j
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    let plane = P.h * P.w;
    let oplane = P.oh * P.ow;
    for (var r = r0; r < r1; r = r + 1u) {
        let n = r / P.oh;
        let oy = r % P.oh;
        var xrow: array<u32, 8>;
        var rok: array<bool, 8>;
        for (var j = 0u; j < 8u; j = j + 1u) {
            let iy = i32(oy * P.stride) + kyj[j];
            rok[j] = kvalid[j] && iy >= 0 && iy < i32(P.h);
            xrow[j] = (n * P.src_c_total + cbase[j]) * plane + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
        }
        var drow: array<u32, 8>;
        for (var i = 0u; i < 8u; i = i + 1u) {
            drow[i] = (n * P.dst_c_total + cob[i]) * oplane + oy * P.ow;
        }
        for (var ox = 0u; ox < P.ow; ox = ox + 1u) {
            var xv0: vec4<f32>;
            var xv1: vec4<f32>;
            for (var j = 0u; j < 8u; j = j + 1u) {
                let ix = i32(ox * P.stride) + kxj[j];
                let ok = rok[j] && ix >= 0 && ix < i32(P.w);
                var v = src[xrow[j] + u32(clamp(ix, 0, i32(P.w) - 1))];
                if (PROLOGUE) {
                    v = max(v * affine[chan[j]] + affine[P.ci + chan[j]], 0.0);
                }
                let val = select(0.0, v, ok);
                if (j < 4u) {
                    xv0[j] = val;
                } else {
                    xv1[j - 4u] = val;
                }
            }
            for (var i = 0u; i < 8u; i = i + 1u) {
                let d = vec4<f32>(dy[drow[i] + ox]);
                acc[2u * i] = fma(d, xv0, acc[2u * i]);
                acc[2u * i + 1u] = fma(d, xv1, acc[2u * i + 1u]);
            }
        }
    }
    let obase = chunk * P.co * ktot;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let co = co0 + i;
        if (co < P.co) {
            for (var j = 0u; j < 8u; j = j + 1u) {
                if (k0 + j < ktot) {
                    var v: f32;
                    if (j < 4u) {
                        v = acc[2u * i][j];
                    } else {
                        v = acc[2u * i + 1u][j - 4u];
                    }
                    out[obase + co * ktot + k0 + j] = v;
                }
            }
        }
    }
}
