// Convolution as matrix products over an explicit im2col buffer. The direct kernels of
// conv2d.wgsl gather 6-8 input values per 32 multiply-adds; a GEMM over vec4 rows reaches
// 3-4x their rate on CPU drivers, which pays for writing the im2col buffer once.
//
// - `im2col`: cols[img, r, p] (or, TRANSPOSED, cols[img, p, r]) = the input value under tap
//   r = (ci, ky, kx) of output pixel p = (oy, ox), zero where the tap falls in the padding and
//   for the rows ktot <= r < kpad that pad r to a multiple of 4. With PROLOGUE the input is
//   read as relu(x * affine[ci] + affine[C + ci]) (DenseNet's batch norm + ReLU), so the
//   normalised activations are never stored. The forward pass feeds the [r, p] layout to the
//   batched GEMM of conv1x1.wgsl (out = W[co, kpad] * cols[img]).
// - `wgrad_gemm`: the weight gradient dW[co, r] = sum over images and pixels of
//   dy[img, co, p] * cols[img, p, r] (TRANSPOSED layout), 8 output channels x 8 taps per
//   invocation over vec4 loads, as matmul_vec4.wgsl's main_8x8. The (image, pixel quad) range
//   is split into chunks that write partial sums [chunk, co, kpad], added up afterwards.
//
// Bindings: 0 = parameters, 1 = output, 2.. = inputs.

//#include gemm8x8

struct Params {
    imgs: u32, img0: u32, ci: u32, h: u32,        // images in this call, first image, input
    w: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, kpad: u32,    // kpad: ci*kh*kw rounded up to 4
    src_c_total: u32, src_c_off: u32, co: u32, quads_per_chunk: u32,
    dy_c_total: u32, dy_c_off: u32, chunk0: u32, _p0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;

// ---- im2col: one invocation per (output pixel, input channel, image) ----
@group(0) @binding(1) var<storage, read_write> cols_out: array<f32>;
@group(0) @binding(2) var<storage, read> x_in: array<f32>;
@group(0) @binding(3) var<storage, read> affine: array<f32>;
override PROLOGUE: bool = false;
override TRANSPOSED: bool = false;

fn cols_index(img: u32, r: u32, p: u32, ohw: u32) -> u32 {
    if (TRANSPOSED) {
        return (img * ohw + p) * P.kpad + r;
    }
    return (img * P.kpad + r) * ohw + p;
}

@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ohw = P.oh * P.ow;
    let p = gid.x;
    let ci = gid.y;
    let img = gid.z;
    if (p >= ohw || ci >= P.ci || img >= P.imgs) {
        return;
    }
    let oy = p / P.ow;
    let ox = p - oy * P.ow;
    let plane = ((P.img0 + img) * P.src_c_total + P.src_c_off + ci) * P.h * P.w;
    var scale = 1.0;
    var shift = 0.0;
    if (PROLOGUE) {
        scale = affine[ci];
        shift = affine[P.ci + ci];
    }
    let iy0 = i32(oy * P.stride) - i32(P.pad);
    let ix0 = i32(ox * P.stride) - i32(P.pad);
    var r = ci * P.kh * P.kw;
    for (var ky = 0u; ky < P.kh; ky = ky + 1u) {
        let iy = iy0 + i32(ky);
        let row_ok = iy >= 0 && iy < i32(P.h);
        let row = plane + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
        for (var kx = 0u; kx < P.kw; kx = kx + 1u) {
            let ix = ix0 + i32(kx);
            let ok = row_ok && ix >= 0 && ix < i32(P.w);
            var v = x_in[row + u32(clamp(ix, 0, i32(P.w) - 1))];
            if (PROLOGUE) {
                v = max(v * scale + shift, 0.0);
            }
            cols_out[cols_index(img, r, p, ohw)] = select(0.0, v, ok);
            r = r + 1u;
        }
    }
    if (ci == 0u) {
        for (var rp = P.ci * P.kh * P.kw; rp < P.kpad; rp = rp + 1u) {
            cols_out[cols_index(img, rp, p, ohw)] = 0.0;
        }
    }
}

// ---- weight gradient GEMM: 8 output channels x 8 taps (two vec4) per invocation ----
@group(0) @binding(1) var<storage, read_write> part_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> cols4: array<vec4<f32>>;

@compute @workgroup_size(8, 8)
fn wgrad_gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n4 = P.kpad / 4u;
    let kq0 = gid.x * 2u;
    let co0 = gid.y * 8u;
    if (kq0 >= n4 || co0 >= P.co) {
        return;
    }
    let kq1 = min(kq0 + 1u, n4 - 1u);
    let ohw = P.oh * P.ow;
    let q_img = ohw / 4u;
    let total = P.imgs * q_img;
    let q0 = gid.z * P.quads_per_chunk;
    let q1 = min(total, q0 + P.quads_per_chunk);
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    var corow: array<u32, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        acc0[i] = vec4<f32>(0.0);
        acc1[i] = vec4<f32>(0.0);
        corow[i] = P.dy_c_off + min(co0 + i, P.co - 1u);
    }
    // Walk (image, quad) pairs without a division per step.
    var img = q0 / max(q_img, 1u);
    var pq = q0 - img * q_img;
    for (var q = q0; q < q1; q = q + 1u) {
        let dbase = (P.img0 + img) * P.dy_c_total;
        let cb = (img * ohw + pq * 4u) * n4;
        let b00 = cols4[cb + kq0];
        let b10 = cols4[cb + n4 + kq0];
        let b20 = cols4[cb + 2u * n4 + kq0];
        let b30 = cols4[cb + 3u * n4 + kq0];
        let b01 = cols4[cb + kq1];
        let b11 = cols4[cb + n4 + kq1];
        let b21 = cols4[cb + 2u * n4 + kq1];
        let b31 = cols4[cb + 3u * n4 + kq1];
        for (var i = 0u; i < 8u; i = i + 1u) {
            let av = dy4[(dbase + corow[i]) * q_img + pq];
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
        pq = pq + 1u;
        if (pq == q_img) {
            pq = 0u;
            img = img + 1u;
        }
    }
    let obase = (P.chunk0 + gid.z) * P.co * n4;
    let has1 = kq0 + 1u < n4;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let co = co0 + i;
        if (co < P.co) {
            part_out[obase + co * n4 + kq0] = acc0[i];
            if (has1) {
                part_out[obase + co * n4 + kq0 + 1u] = acc1[i];
            }
        }
    }
}

// ---- col2im: the input gradient from the GEMM cols = W^T * dy (rows r = (ci, ky, kx), one
// column per output pixel): dx[img, ci, y, x] = bias[ci] + sum over the taps (ky, kx) that
// reach (y, x) from an output pixel, i.e. oy = (y + pad - ky) / stride integral and in range
// (likewise ox), of cols[img, r, oy * ow + ox]. One invocation per input pixel; dx may be a
// channel slice (src_c_total, src_c_off name the destination here). Works for any stride,
// which the stride-1 im2col path of the input gradient does not. ----
@group(0) @binding(1) var<storage, read_write> dx_out: array<f32>;
@group(0) @binding(2) var<storage, read> cols_in: array<f32>;
@group(0) @binding(3) var<storage, read> bias_in: array<f32>;

@compute @workgroup_size(64)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hw = P.h * P.w;
    let p = gid.x;
    let ci = gid.y;
    let img = gid.z;
    if (p >= hw || ci >= P.ci || img >= P.imgs) {
        return;
    }
    let y = p / P.w;
    let x = p - y * P.w;
    let ohw = P.oh * P.ow;
    let rows = P.ci * P.kh * P.kw;
    let base = img * rows * ohw;
    var acc = bias_in[ci];
    for (var ky = 0u; ky < P.kh; ky = ky + 1u) {
        let ty = i32(y + P.pad) - i32(ky);
        if (ty < 0 || u32(ty) % P.stride != 0u) {
            continue;
        }
        let oy = u32(ty) / P.stride;
        if (oy >= P.oh) {
            continue;
        }
        for (var kx = 0u; kx < P.kw; kx = kx + 1u) {
            let tx = i32(x + P.pad) - i32(kx);
            if (tx < 0 || u32(tx) % P.stride != 0u) {
                continue;
            }
            let ox = u32(tx) / P.stride;
            if (ox >= P.ow) {
                continue;
            }
            let r = (ci * P.kh + ky) * P.kw + kx;
            acc = acc + cols_in[base + r * ohw + oy * P.ow + ox];
        }
    }
    dx_out[((P.img0 + img) * P.src_c_total + P.src_c_off + ci) * hw + p] = acc;
}

// ---- 1x1 weight gradient straight from the input: dW[co, ci] = sum over images and pixels
// of dy[img, co, p] * x[img, ci, p] (x through the prologue), for 1x1 stride-1 unpadded
// convolutions with whole pixel quads. No transposed im2col copy: each pixel quad's 8 input
// channels are loaded as vec4 along pixels and transposed in registers into the operands of
// wgrad_gemm's rank-4 update; 8 output channels x 8 input channels per invocation, chunks of
// (image, quad) pairs writing partial sums [chunk, co, ci] (kpad = ci). ----
@group(0) @binding(1) var<storage, read_write> part1_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy1: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x1: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> affine1: array<f32>;

fn load_x1(index: u32, c: u32) -> vec4<f32> {
    let v = x1[index];
    if (PROLOGUE) {
        return max(v * affine1[c] + vec4<f32>(affine1[P.ci + c]), vec4<f32>(0.0));
    }
    return v;
}

@compute @workgroup_size(8, 8)
fn wgrad_1x1(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n4 = P.kpad / 4u;
    let kq0 = gid.x * 2u;
    let co0 = gid.y * 8u;
    if (kq0 >= n4 || co0 >= P.co) {
        return;
    }
    let kq1 = min(kq0 + 1u, n4 - 1u);
    let q_img = (P.oh * P.ow) / 4u;
    let total = P.imgs * q_img;
    let q0 = gid.z * P.quads_per_chunk;
    let q1 = min(total, q0 + P.quads_per_chunk);
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    var corow: array<u32, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        acc0[i] = vec4<f32>(0.0);
        acc1[i] = vec4<f32>(0.0);
        corow[i] = P.dy_c_off + min(co0 + i, P.co - 1u);
    }
    let c0 = kq0 * 4u;
    let c1 = kq1 * 4u;
    var img = q0 / max(q_img, 1u);
    var pq = q0 - img * q_img;
    for (var q = q0; q < q1; q = q + 1u) {
        let dbase = (P.img0 + img) * P.dy_c_total;
        let xb = ((P.img0 + img) * P.src_c_total + P.src_c_off) * q_img + pq;
        let x0 = load_x1(xb + c0 * q_img, c0);
        let x1v = load_x1(xb + (c0 + 1u) * q_img, c0 + 1u);
        let x2 = load_x1(xb + (c0 + 2u) * q_img, c0 + 2u);
        let x3 = load_x1(xb + (c0 + 3u) * q_img, c0 + 3u);
        let y0 = load_x1(xb + c1 * q_img, c1);
        let y1 = load_x1(xb + (c1 + 1u) * q_img, c1 + 1u);
        let y2 = load_x1(xb + (c1 + 2u) * q_img, c1 + 2u);
        let y3 = load_x1(xb + (c1 + 3u) * q_img, c1 + 3u);
        // Pixel j's four channels: the rows of wgrad_gemm's transposed columns.
        let b00 = vec4<f32>(x0.x, x1v.x, x2.x, x3.x);
        let b10 = vec4<f32>(x0.y, x1v.y, x2.y, x3.y);
        let b20 = vec4<f32>(x0.z, x1v.z, x2.z, x3.z);
        let b30 = vec4<f32>(x0.w, x1v.w, x2.w, x3.w);
        let b01 = vec4<f32>(y0.x, y1.x, y2.x, y3.x);
        let b11 = vec4<f32>(y0.y, y1.y, y2.y, y3.y);
        let b21 = vec4<f32>(y0.z, y1.z, y2.z, y3.z);
        let b31 = vec4<f32>(y0.w, y1.w, y2.w, y3.w);
        for (var i = 0u; i < 8u; i = i + 1u) {
            let av = dy1[(dbase + corow[i]) * q_img + pq];
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
        pq = pq + 1u;
        if (pq == q_img) {
            pq = 0u;
            img = img + 1u;
        }
    }
    let obase = (P.chunk0 + gid.z) * P.co * n4;
    let has1 = kq0 + 1u < n4;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let co = co0 + i;
        if (co < P.co) {
            part1_out[obase + co * n4 + kq0] = acc0[i];
            if (has1) {
                part1_out[obase + co * n4 + kq0 + 1u] = acc1[i];
            }
        }
    }
}
