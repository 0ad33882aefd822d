// Winograd F(4x4, 3x3) for 3x3 convolutions of stride 1 and padding 1 (Lavin & Gray 2016,
// interpolation points 0, 1, -1, 2, -2 and infinity): conv_winograd.wgsl's scheme with 4x4
// output tiles read from 6x6 input patches, so 36 GEMMs (one per element e of the 6x6
// transformed tile) and 36 multiplies per tile and channel pair where F(2x2, 3x3) does 64
// (16 per 2x2 tile) and im2col 144. Same parameters, bindings, layouts and prologue; each
// 2-D transform is its 1-D transform applied to the columns, then to the rows.
//
//   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
//          0 4 0 -5 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
//
//   wino_weights: U[e, co, ci] = (G g G^T)[e]
//   wino_input:   V[e, ci, t]  = (B^T d B)[e]
//   wino_output:  y tile = A^T M A + bias
//   wino_dy:      W[e, t, co]  = (A dY A^T)[e]        (weight gradient)
//   wino_wgrad:   dw = G^T (sum over groups of dU) G   (weight gradient)

//#include winograd

// The 1-D transforms.
fn g_t(v0: f32, v1: f32, v2: f32) -> array<f32, 6> {
    let a = -(v0 + v2) / 6.0;
    let b = v0 / 24.0 + v2 / 6.0;
    return array<f32, 6>(0.25 * v0, a - v1 / 6.0, a + v1 / 6.0, b + v1 / 12.0, b - v1 / 12.0, v2);
}

fn bt_t(d: array<f32, 6>) -> array<f32, 6> {
    return array<f32, 6>(
        4.0 * d[0] - 5.0 * d[2] + d[4],
        d[3] + d[4] - 4.0 * (d[1] + d[2]),
        d[4] - d[3] + 4.0 * (d[1] - d[2]),
        d[4] - d[2] + 2.0 * (d[3] - d[1]),
        d[4] - d[2] - 2.0 * (d[3] - d[1]),
        4.0 * d[1] - 5.0 * d[3] + d[5],
    );
}

fn at_t(m: array<f32, 6>) -> vec4<f32> {
    let p = m[1] + m[2];
    let q = m[1] - m[2];
    let r = m[3] + m[4];
    let s = m[3] - m[4];
    return vec4<f32>(m[0] + p + r, q + 2.0 * s, p + 4.0 * r, q + 8.0 * s + m[5]);
}

fn a_t(w: vec4<f32>) -> array<f32, 6> {
    let e = w.x + w.z;
    let o = w.y + w.w;
    let e4 = w.x + 4.0 * w.z;
    let o8 = 2.0 * w.y + 8.0 * w.w;
    return array<f32, 6>(w.x, e + o, e - o, e4 + o8, e4 - o8, w.w);
}

fn gt_t(v: array<f32, 6>) -> vec3<f32> {
    let p = v[1] + v[2];
    let r = v[3] + v[4];
    return vec3<f32>(
        0.25 * v[0] - p / 6.0 + r / 24.0,
        (v[2] - v[1]) / 6.0 + (v[3] - v[4]) / 12.0,
        (r - p) / 6.0 + v[5],
    );
}

// ---- weights: one invocation per (co, ci) ----

@compute @workgroup_size(64)
fn wino_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= P.co * P.ci) {
        return;
    }
    // t = G g (6 x 3), column by column.
    var t: array<array<f32, 3>, 6>;
    for (var c = 0u; c < 3u; c = c + 1u) {
        let col = g_t(w_at(i, c), w_at(i, 3u + c), w_at(i, 6u + c));
        for (var r = 0u; r < 6u; r = r + 1u) {
            t[r][c] = col[r];
        }
    }
    let plane = P.co * P.ci;
    for (var r = 0u; r < 6u; r = r + 1u) {
        let row = g_t(t[r][0], t[r][1], t[r][2]);
        for (var q = 0u; q < 6u; q = q + 1u) {
            u_out[(r * 6u + q) * plane + i] = row[q];
        }
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
    // s = B^T d, column by column, with d read straight from the input.
    var s: array<array<f32, 6>, 6>;
    var scale = 1.0;
    var shift = 0.0;
    if (PROLOGUE) {
        scale = affine[c];
        shift = affine[P.ci + c];
    }
    let tg = P.t0 + t;
    let img = tg / per_img;
    let y0 = i32(4u * ((tg % per_img) / P.tw)) - 1;
    let x0 = i32(4u * (tg % P.tw)) - 1;
    let base = (img * P.src_c_total + P.src_c_off + c) * P.h * P.w;
    for (var q = 0u; q < 6u; q = q + 1u) {
        var d: array<f32, 6>;
        let x = x0 + i32(q);
        for (var r = 0u; r < 6u; r = r + 1u) {
            let y = y0 + i32(r);
            var v = 0.0;
            if (t < P.tiles && y >= 0 && y < i32(P.h) && x >= 0 && x < i32(P.w)) {
                v = x_in[base + u32(y) * P.w + u32(x)];
                if (PROLOGUE) {
                    v = max(v * scale + shift, 0.0);
                }
            }
            d[r] = v;
        }
        let col = bt_t(d);
        for (var r = 0u; r < 6u; r = r + 1u) {
            s[r][q] = col[r];
        }
    }
    let plane = P.ci * P.t4;
    for (var r = 0u; r < 6u; r = r + 1u) {
        let row = bt_t(s[r]);
        for (var q = 0u; q < 6u; q = q + 1u) {
            v_out[(r * 6u + q) * plane + i] = row[q];
        }
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
    if (i >= P.co * P.tiles) {
        return;
    }
    let co = i / P.tiles;
    let t = i % P.tiles;
    let plane = P.co * P.t4;
    let at = co * P.t4 + t;
    // s = A^T m (4 x 6), column by column.
    var s: array<array<f32, 6>, 4>;
    for (var q = 0u; q < 6u; q = q + 1u) {
        var col: array<f32, 6>;
        for (var r = 0u; r < 6u; r = r + 1u) {
            col[r] = m_in[(r * 6u + q) * plane + at];
        }
        let o = at_t(col);
        s[0][q] = o.x;
        s[1][q] = o.y;
        s[2][q] = o.z;
        s[3][q] = o.w;
    }
    let per_img = P.th * P.tw;
    let tg = P.t0 + t;
    let img = tg / per_img;
    let y0 = 4u * ((tg % per_img) / P.tw);
    let x0 = 4u * (tg % P.tw);
    let base = (img * P.dst_c_total + P.dst_c_off + co) * P.h * P.w;
    let b = bias[co];
    for (var r = 0u; r < 4u; r = r + 1u) {
        let y = y0 + r;
        if (y < P.h) {
            let o = at_t(s[r]) + vec4<f32>(b);
            for (var j = 0u; j < 4u; j = j + 1u) {
                if (x0 + j < P.w) {
                    y_out[base + y * P.w + x0 + j] = o[j];
                }
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
    let per_img = P.th * P.tw;
    let tg = P.t0 + t;
    let img = tg / per_img;
    let y0 = 4u * ((tg % per_img) / P.tw);
    let x0 = 4u * (tg % P.tw);
    let base = (img * P.dst_c_total + P.dst_c_off + co) * P.h * P.w;
    // r = A dY (6 x 4), column by column; dY is 0 past the output's edge.
    var r: array<array<f32, 4>, 6>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        var col = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k = k + 1u) {
            if (t < P.tiles && y0 + k < P.h && x0 + j < P.w) {
                col[k] = dy_in[base + (y0 + k) * P.w + x0 + j];
            }
        }
        let a = a_t(col);
        for (var k = 0u; k < 6u; k = k + 1u) {
            r[k][j] = a[k];
        }
    }
    let plane = P.t4 * P.co;
    for (var k = 0u; k < 6u; k = k + 1u) {
        let row = a_t(vec4<f32>(r[k][0], r[k][1], r[k][2], r[k][3]));
        for (var q = 0u; q < 6u; q = q + 1u) {
            w_out[(k * 6u + q) * plane + i] = row[q];
        }
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
    // s = G^T dU (3 x 6), column by column, summing the groups' partials as they are read.
    var s: array<array<f32, 6>, 3>;
    for (var q = 0u; q < 6u; q = q + 1u) {
        var col: array<f32, 6>;
        for (var r = 0u; r < 6u; r = r + 1u) {
            var v = 0.0;
            for (var grp = 0u; grp < P.groups; grp = grp + 1u) {
                v = v + du_in[(grp * 36u + r * 6u + q) * plane + c * P.co + co];
            }
            col[r] = v;
        }
        let o = gt_t(col);
        s[0][q] = o.x;
        s[1][q] = o.y;
        s[2][q] = o.z;
    }
    for (var r = 0u; r < 3u; r = r + 1u) {
        let o = gt_t(s[r]);
        dw_out[o9 + r * 3u] = o.x;
        dw_out[o9 + r * 3u + 1u] = o.y;
        dw_out[o9 + r * 3u + 2u] = o.z;
    }
}
