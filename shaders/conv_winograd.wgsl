// Winograd F(2x2, 3x3) for 3x3 convolutions of stride 1 and padding 1 (Lavin & Gray 2016):
// each 2x2 block of outputs ("tile") is A^T [ sum over ci of (G g G^T) .* (B^T d B) ] A, with
// d the tile's 4x4 input patch. The sum is 16 independent GEMMs (one per element e of the
// 4x4 transformed tile) run by conv1x1.wgsl's batched GEMM: M[e] (co x T) = U[e] (co x ci) *
// V[e] (ci x T), T = the group's tiles rounded up to 4. 16 multiplies per tile and channel
// pair instead of im2col's 36.
//
//   wino_weights: U[e, co, ci] = (G g[co, ci] G^T)[e]       G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   wino_input:  V[e, ci, t]  = (B^T d[ci, t] B)[e]         B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   wino_output: y[n, co, 2ty + i, 2tx + j] = (A^T M[., co, t] A)[i, j] + bias[co]
//                                                      A^T = [1 1 1 0; 0 1 -1 -1]
// The weight gradient differentiates the same algebra: with dM = A dY A^T the gradient of M
// per tile (4x4 from the tile's 2x2 output gradient), dU[e] (ci x co, transposed) = sum over
// tiles of V[e] (ci x T) * dM[e]^T (T x co), again 16 batched GEMMs, and dg = G^T dU G:
//
//   wino_dy:    W[e, t, co] = (A dY[co, t] A^T)[e]      (dY outside the output is 0)
//   wino_wgrad: dw[co, ci] = G^T (sum over groups of dU[grp, ., ci, co]) G
//
// The input may be a channel slice of a larger buffer and read through the fused batch-norm
// + ReLU prologue (relu(x * affine[c] + affine[ci + c]); padding stays 0), and the output is
// written into a channel slice, as the other convolution kernels do.

//#include winograd

// ---- weights: one invocation per (co, ci) ----

@compute @workgroup_size(64)
fn wino_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= P.co * P.ci) {
        return;
    }
    var g: array<f32, 9>;
    for (var k = 0u; k < 9u; k = k + 1u) {
        g[k] = w_at(i, k);
    }
    // t = G g (4 x 3), row by row.
    var t: array<f32, 12>;
    for (var c = 0u; c < 3u; c = c + 1u) {
        let g0 = g[c];
        let g1 = g[3u + c];
        let g2 = g[6u + c];
        t[c] = g0;
        t[3u + c] = 0.5 * (g0 + g1 + g2);
        t[6u + c] = 0.5 * (g0 - g1 + g2);
        t[9u + c] = g2;
    }
    let plane = P.co * P.ci;
    for (var r = 0u; r < 4u; r = r + 1u) {
        let t0 = t[r * 3u];
        let t1 = t[r * 3u + 1u];
        let t2 = t[r * 3u + 2u];
        u_out[(r * 4u) * plane + i] = t0;
        u_out[(r * 4u + 1u) * plane + i] = 0.5 * (t0 + t1 + t2);
        u_out[(r * 4u + 2u) * plane + i] = 0.5 * (t0 - t1 + t2);
        u_out[(r * 4u + 3u) * plane + i] = t2;
    }
}

// ---- input: one invocation per (ci, tile) ----
@group(0) @binding(1) var<storage, read_write> v_out: array<f32>;
@group(0) @binding(2) var<storage, read> x_in: array<f32>;
@group(0) @binding(3) var<storage, read> affine: array<f32>;

@compute @workgroup_size(64)
fn wino_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= P.ci * P.t4) {
        return;
    }
    let c = i / P.t4;
    let t = i % P.t4;
    let per_img = P.th * P.tw;
    var d: array<f32, 16>;
    if (t < P.tiles) {
        let tg = P.t0 + t;
        let img = tg / per_img;
        let ty = (tg % per_img) / P.tw;
        let tx = tg % P.tw;
        let base = (img * P.src_c_total + P.src_c_off + c) * P.h * P.w;
        for (var r = 0u; r < 4u; r = r + 1u) {
            for (var q = 0u; q < 4u; q = q + 1u) {
                let y = i32(2u * ty + r) - 1;
                let x = i32(2u * tx + q) - 1;
                var v = 0.0;
                if (y >= 0 && y < i32(P.h) && x >= 0 && x < i32(P.w)) {
                    v = x_in[base + u32(y) * P.w + u32(x)];
                    if (PROLOGUE) {
                        v = max(v * affine[c] + affine[P.ci + c], 0.0);
                    }
                }
                d[r * 4u + q] = v;
            }
        }
    } else {
        for (var k = 0u; k < 16u; k = k + 1u) {
            d[k] = 0.0;
        }
    }
    // s = B^T d, then V = s B.
    var s: array<f32, 16>;
    for (var q = 0u; q < 4u; q = q + 1u) {
        s[q] = d[q] - d[8u + q];
        s[4u + q] = d[4u + q] + d[8u + q];
        s[8u + q] = d[8u + q] - d[4u + q];
        s[12u + q] = d[4u + q] - d[12u + q];
    }
    let plane = P.ci * P.t4;
    for (var r = 0u; r < 4u; r = r + 1u) {
        let s0 = s[r * 4u];
        let s1 = s[r * 4u + 1u];
        let s2 = s[r * 4u + 2u];
        let s3 = s[r * 4u + 3u];
        v_out[(r * 4u) * plane + i] = s0 - s2;
        v_out[(r * 4u + 1u) * plane + i] = s1 + s2;
        v_out[(r * 4u + 2u) * plane + i] = s2 - s1;
        v_out[(r * 4u + 3u) * plane + i] = s1 - s3;
    }
}

// ---- output: one invocation per (co, tile) ----
@group(0) @binding(1) var<storage, read_write> y_out: array<f32>;
@group(0) @binding(2) var<storage, read> m_in: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64)
fn wino_output(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    let per_img = P.th * P.tw;
    if (i >= P.co * P.tiles) {
        return;
    }
    let co = i / P.tiles;
    let t = i % P.tiles;
    let plane = P.co * P.t4;
    var m: array<f32, 16>;
    for (var e = 0u; e < 16u; e = e + 1u) {
        m[e] = m_in[e * plane + co * P.t4 + t];
    }
    // s = A^T m (2 x 4), then Y = s A (2 x 2).
    var s: array<f32, 8>;
    for (var q = 0u; q < 4u; q = q + 1u) {
        s[q] = m[q] + m[4u + q] + m[8u + q];
        s[4u + q] = m[4u + q] - m[8u + q] - m[12u + q];
    }
    let tg = P.t0 + t;
    let img = tg / per_img;
    let ty = (tg % per_img) / P.tw;
    let tx = tg % P.tw;
    let base = (img * P.dst_c_total + P.dst_c_off + co) * P.h * P.w;
    let b = bias[co];
    for (var r = 0u; r < 2u; r = r + 1u) {
        let y = 2u * ty + r;
        if (y < P.h) {
            let s0 = s[r * 4u];
            let s1 = s[r * 4u + 1u];
            let s2 = s[r * 4u + 2u];
            let s3 = s[r * 4u + 3u];
            let x0 = 2u * tx;
            y_out[base + y * P.w + x0] = s0 + s1 + s2 + b;
            if (x0 + 1u < P.w) {
                y_out[base + y * P.w + x0 + 1u] = s1 - s2 - s3 + b;
            }
        }
    }
}

// ---- weight gradient, output-gradient transform: one invocation per (tile, co) ----
// dy is read through the dst slice fields (the output gradient may be a channel slice).
@group(0) @binding(1) var<storage, read_write> w_out: array<f32>;
@group(0) @binding(2) var<storage, read> dy_in: array<f32>;

@compute @workgroup_size(64)
fn wino_dy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= P.t4 * P.co) {
        return;
    }
    let t = i / P.co;
    let co = i % P.co;
    // The tile's 2x2 output gradient [a b; c d], zero past the output's edge.
    var a = 0.0;
    var b = 0.0;
    var c = 0.0;
    var d = 0.0;
    if (t < P.tiles) {
        let per_img = P.th * P.tw;
        let tg = P.t0 + t;
        let img = tg / per_img;
        let y = 2u * ((tg % per_img) / P.tw);
        let x = 2u * (tg % P.tw);
        let base = (img * P.dst_c_total + P.dst_c_off + co) * P.h * P.w + y * P.w + x;
        a = dy_in[base];
        if (x + 1u < P.w) {
            b = dy_in[base + 1u];
        }
        if (y + 1u < P.h) {
            c = dy_in[base + P.w];
            if (x + 1u < P.w) {
                d = dy_in[base + P.w + 1u];
            }
        }
    }
    // A dY: rows [a b], [a+c b+d], [a-c b-d], [-c -d]; then each row [p q] times A^T gives
    // [p, p+q, p-q, -q].
    var r: array<vec2<f32>, 4>;
    r[0] = vec2<f32>(a, b);
    r[1] = vec2<f32>(a + c, b + d);
    r[2] = vec2<f32>(a - c, b - d);
    r[3] = vec2<f32>(-c, -d);
    let plane = P.t4 * P.co;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let p = r[k].x;
        let q = r[k].y;
        w_out[(k * 4u) * plane + i] = p;
        w_out[(k * 4u + 1u) * plane + i] = p + q;
        w_out[(k * 4u + 2u) * plane + i] = p - q;
        w_out[(k * 4u + 3u) * plane + i] = -q;
    }
}

// ---- weight gradient, inverse weight transform: one invocation per (co, ci) ----
@group(0) @binding(1) var<storage, read_write> dw_out: array<f32>;
@group(0) @binding(2) var<storage, read> du_in: array<f32>;

@compute @workgroup_size(64)
fn wino_wgrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= P.co * P.ci) {
        return;
    }
    // Adjacent invocations take adjacent output channels, so that the partials they read
    // ([groups, E, ci, co]) are adjacent too; the 9 writes per invocation go to [co, ci, 3, 3].
    let c = i / P.co;
    let co = i % P.co;
    let o9 = (co * P.ci + c) * 9u;
    let plane = P.ci * P.co;
    var du: array<f32, 16>;
    for (var e = 0u; e < 16u; e = e + 1u) {
        var s = 0.0;
        for (var grp = 0u; grp < P.groups; grp = grp + 1u) {
            s = s + du_in[(grp * 16u + e) * plane + c * P.co + co];
        }
        du[e] = s;
    }
    // s = G^T dU (3 x 4), column by column, then dg = s G (3 x 3).
    var s: array<f32, 12>;
    for (var q = 0u; q < 4u; q = q + 1u) {
        let u0 = du[q];
        let u1 = du[4u + q];
        let u2 = du[8u + q];
        let u3 = du[12u + q];
        s[q] = u0 + 0.5 * (u1 + u2);
        s[4u + q] = 0.5 * (u1 - u2);
        s[8u + q] = 0.5 * (u1 + u2) + u3;
    }
    for (var r = 0u; r < 3u; r = r + 1u) {
        let p0 = s[r * 4u];
        let p1 = s[r * 4u + 1u];
        let p2 = s[r * 4u + 2u];
        let p3 = s[r * 4u + 3u];
        dw_out[o9 + r * 3u] = p0 + 0.5 * (p1 + p2);
        dw_out[o9 + r * 3u + 1u] = 0.5 * (p1 - p2);
        dw_out[o9 + r * 3u + 2u] = 0.5 * (p1 + p2) + p3;
    }
}
