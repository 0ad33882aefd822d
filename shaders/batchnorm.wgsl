// Batch normalisation over (N, H, W) per channel, PyTorch semantics: training normalises with
// the batch mean and biased variance (two passes, for accuracy), eval with the running
// statistics; y = (x - mean) * invstd * gamma + beta, optionally followed by ReLU (the fused
// BN+ReLU that DenseNet applies everywhere; its backward recomputes the activation instead of
// saving it). The input may be a channel slice of a larger buffer (x_c_total, x_c_off).
//
// stats layout [3, C]: mean, invstd, biased variance.
//
// Where hw is a multiple of 4 (`quad`), the per-element kernels have vec4 twins (`*4`) that
// read and write four pixels per invocation: a quarter of the index arithmetic (integer
// divisions are slow on CPU drivers) and vector loads. Their lanes then count quads.

struct Params {
    n: u32, c: u32, hw: u32, x_c_total: u32,
    x_c_off: u32, train: u32, relu: u32, lanes: u32,
    eps: f32, momentum: f32, quad: u32, run: u32,
}

@group(0) @binding(0) var<uniform> P: Params;


fn x_index(n: u32, c: u32, p: u32) -> u32 {
    return (n * P.x_c_total + P.x_c_off + c) * P.hw + p;
}

// The output gradient through the fused ReLU (zero where the normalised output xhat * gamma +
// beta was not positive), shared by every backward kernel; scalar and vec4 forms.
fn relu_grad(d: f32, xhat: f32, gm: f32, bt: f32) -> f32 {
    if (P.relu != 0u && xhat * gm + bt <= 0.0) {
        return 0.0;
    }
    return d;
}

fn relu_grad4(d: vec4<f32>, xhat: vec4<f32>, gm: f32, bt: vec4<f32>) -> vec4<f32> {
    if (P.relu != 0u) {
        return select(d, vec4<f32>(0.0), xhat * gm + bt <= vec4<f32>(0.0));
    }
    return d;
}


// ---- statistics, pass 1: partial mean and M2 (one invocation per channel, image, lane) ----
// Lane j of plane (n, c) reads pixels j, j + J, j + 2J, ... (J = P.lanes <= hw), so adjacent
// invocations read adjacent values. No workgroup barriers: on CPU drivers (lavapipe) each
// barrier splits the shader into separately scheduled pieces, which made the one-workgroup-
// per-channel tree reduction cost ~1.5 ms per call even on tiny tensors.
// part layout [2, C * N * J]: mean of the lane's values, sum of squared deviations (M2).
@group(0) @binding(1) var<storage, read_write> part_out: array<f32>;
@group(0) @binding(2) var<storage, read> x_in: array<f32>;

@compute @workgroup_size(64)
fn stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    let lanes = P.lanes;
    let total = P.c * P.n * lanes;
    if (g >= total) {
        return;
    }
    let j = g % lanes;
    let cn = g / lanes;
    let base = x_index(cn % P.n, cn / P.n, 0u);
    var s = 0.0;
    var cnt = 0u;
    for (var p = j; p < P.hw; p = p + lanes) {
        s = s + x_in[base + p];
        cnt = cnt + 1u;
    }
    let mean = s / f32(max(cnt, 1u));
    var q = 0.0;
    for (var p = j; p < P.hw; p = p + lanes) {
        let d = x_in[base + p] - mean;
        q = q + d * d;
    }
    part_out[g] = mean;
    part_out[total + g] = q;
}

// Values lane j of a plane covers: every lanes-th pixel, or every lanes-th quad of 4.
fn lane_count(j: u32) -> u32 {
    if (P.quad != 0u) {
        return 4u * ((P.hw / 4u - j + P.lanes - 1u) / P.lanes);
    }
    return (P.hw - j + P.lanes - 1u) / P.lanes;
}

// ---- statistics, pass 2: the finish of every statistics path (per channel) ----
// Writes the channel's stats [mean; invstd; biased var], the prologue affine [gamma * invstd;
// beta - mean * gamma * invstd] (so that y = x * scale + shift), and, when `run`, updates the
// running statistics in place:
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var  = (1 - momentum) * running_var + momentum * var * M / (M - 1)  (unbiased)
// One kernel instead of three (combine, running update, affine): each was a dispatch per
// batch norm, ~1000 of an APGA step's dispatches. Bindings shared by every finishing kernel:
@group(0) @binding(1) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> affine_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> run_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> run_var: array<f32>;
@group(0) @binding(6) var<storage, read> gamma_f: array<f32>;
@group(0) @binding(7) var<storage, read> beta_f: array<f32>;

fn finish(c: u32, mean: f32, var_b: f32) {
    let invstd = 1.0 / sqrt(var_b + P.eps);
    stats_out[c] = mean;
    stats_out[P.c + c] = invstd;
    stats_out[2u * P.c + c] = var_b;
    let scale = gamma_f[c] * invstd;
    affine_out[c] = scale;
    affine_out[P.c + c] = beta_f[c] - mean * scale;
    if (P.run != 0u) {
        let m = f32(P.n * P.hw);
        run_mean[c] = (1.0 - P.momentum) * run_mean[c] + P.momentum * mean;
        run_var[c] = (1.0 - P.momentum) * run_var[c] + P.momentum * var_b * m / (m - 1.0);
    }
}

// Combine a channel's partials (Chan et al.'s parallel variance), serially.
@group(0) @binding(5) var<storage, read> part_in: array<f32>;

@compute @workgroup_size(64)
fn stats_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let lanes = P.lanes;
    let total = P.c * P.n * lanes;
    var cnt = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = (c * P.n + n) * lanes;
        for (var j = 0u; j < lanes; j = j + 1u) {
            let nb = f32(lane_count(j));
            let mb = part_in[base + j];
            let both = cnt + nb;
            let delta = mb - mean;
            mean = mean + delta * nb / both;
            m2 = m2 + part_in[total + base + j] + delta * delta * cnt * nb / both;
            cnt = both;
        }
    }
    finish(c, mean, m2 / cnt);
}

// ---- statistics in one pass over the channel (`direct`; one invocation per channel) ----
// For small planes (n * hw values per channel, the host bounds it), where the partials'
// dispatch costs more than it saves: two passes (mean, then squared deviations, for accuracy)
// over every image's plane, then the finish. No partial buffer, one dispatch per batch norm.
@group(0) @binding(5) var<storage, read> x_f: array<f32>;

@compute @workgroup_size(64)
fn stats_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    var s = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = x_index(n, c, 0u);
        for (var p = 0u; p < P.hw; p = p + 1u) {
            s = s + x_f[base + p];
        }
    }
    let m = f32(P.n * P.hw);
    let mean = s / m;
    var q = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = x_index(n, c, 0u);
        for (var p = 0u; p < P.hw; p = p + 1u) {
            let d = x_f[base + p] - mean;
            q = q + d * d;
        }
    }
    finish(c, mean, q / m);
}

@group(0) @binding(5) var<storage, read> x4_f: array<vec4<f32>>;

@compute @workgroup_size(64)
fn stats_direct4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let q4 = P.hw / 4u;
    var s = vec4<f32>(0.0);
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = x_index(n, c, 0u) / 4u;
        for (var p = 0u; p < q4; p = p + 1u) {
            s = s + x4_f[base + p];
        }
    }
    let m = f32(P.n * P.hw);
    let mean = (s.x + s.y + s.z + s.w) / m;
    var q = vec4<f32>(0.0);
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = x_index(n, c, 0u) / 4u;
        for (var p = 0u; p < q4; p = p + 1u) {
            let d = x4_f[base + p] - vec4<f32>(mean);
            q = q + d * d;
        }
    }
    finish(c, mean, (q.x + q.y + q.z + q.w) / m);
}

// ---- eval statistics from the running ones (one invocation per channel) ----
// Nothing reads binding 5 here (the layout declares it; the host binds gamma there); the running
// statistics are read, not updated (`run` is 0).
@compute @workgroup_size(64)
fn eval_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    finish(c, run_mean[c], run_var[c]);
}

// ---- normalise (one invocation per element of the [n, c, hw] output) ----
@group(0) @binding(1) var<storage, read_write> y_out: array<f32>;
@group(0) @binding(2) var<storage, read> xa: array<f32>;
@group(0) @binding(3) var<storage, read> stats_a: array<f32>;
@group(0) @binding(4) var<storage, read> gamma_a: array<f32>;
@group(0) @binding(5) var<storage, read> beta_a: array<f32>;

@compute @workgroup_size(256)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= P.n * P.c * P.hw) {
        return;
    }
    let n = i / (P.c * P.hw);
    let c = (i / P.hw) % P.c;
    let p = i % P.hw;
    var y = (xa[x_index(n, c, p)] - stats_a[c]) * stats_a[P.c + c] * gamma_a[c] + beta_a[c];
    if (P.relu != 0u) {
        y = max(y, 0.0);
    }
    y_out[i] = y;
}

// ---- backward, pass 1: partial per-channel sums (one invocation per channel, image, lane,
// laid out as the statistics' partials) ----
// dy_eff = dy * 1[y > 0] with ReLU fused, else dy; dbeta = sum dy_eff,
// dgamma = sum dy_eff * xhat. part layout [2, C * N * J].
@group(0) @binding(1) var<storage, read_write> bpart_out: array<f32>;
@group(0) @binding(2) var<storage, read> xb: array<f32>;
@group(0) @binding(3) var<storage, read> dyb: array<f32>;
@group(0) @binding(4) var<storage, read> stats_b: array<f32>;
@group(0) @binding(5) var<storage, read> gamma_b: array<f32>;
@group(0) @binding(6) var<storage, read> beta_b: array<f32>;

@compute @workgroup_size(64)
fn bwd_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    let lanes = P.lanes;
    let total = P.c * P.n * lanes;
    if (g >= total) {
        return;
    }
    let j = g % lanes;
    let cn = g / lanes;
    let n = cn % P.n;
    let c = cn / P.n;
    let mean = stats_b[c];
    let invstd = stats_b[P.c + c];
    let gm = gamma_b[c];
    let bt = beta_b[c];
    let xbase = x_index(n, c, 0u);
    let dbase = (n * P.c + c) * P.hw;
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var p = j; p < P.hw; p = p + lanes) {
        let xhat = (xb[xbase + p] - mean) * invstd;
        let d = relu_grad(dyb[dbase + p], xhat, gm, bt);
        sdy = sdy + d;
        sdyx = sdyx + d * xhat;
    }
    bpart_out[g] = sdy;
    bpart_out[total + g] = sdyx;
}

// ---- backward, pass 1b: sum a channel's partials ----
@group(0) @binding(1) var<storage, read_write> dgamma_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbeta_out: array<f32>;
@group(0) @binding(3) var<storage, read> bpart_in: array<f32>;

@compute @workgroup_size(64)
fn bwd_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let k = P.n * P.lanes;
    let total = P.c * k;
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var i = c * k; i < (c + 1u) * k; i = i + 1u) {
        sdy = sdy + bpart_in[i];
        sdyx = sdyx + bpart_in[total + i];
    }
    dbeta_out[c] = sdy;
    dgamma_out[c] = sdyx;
}

// ---- backward, pass 1 in one dispatch (`direct`; one invocation per channel) ----
// The partial sums and their combine in one: each invocation sums its channel's dy_eff and
// dy_eff * xhat over all images and pixels (the host bounds n * hw, as for `stats_direct`).
@group(0) @binding(3) var<storage, read> xdir: array<f32>;
@group(0) @binding(4) var<storage, read> dydir: array<f32>;
@group(0) @binding(5) var<storage, read> stats_dir: array<f32>;
@group(0) @binding(6) var<storage, read> gamma_dir: array<f32>;
@group(0) @binding(7) var<storage, read> beta_dir: array<f32>;

@compute @workgroup_size(64)
fn bwd_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let mean = stats_dir[c];
    let invstd = stats_dir[P.c + c];
    let gm = gamma_dir[c];
    let bt = beta_dir[c];
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let xbase = x_index(n, c, 0u);
        let dbase = (n * P.c + c) * P.hw;
        for (var p = 0u; p < P.hw; p = p + 1u) {
            let xhat = (xdir[xbase + p] - mean) * invstd;
            let d = relu_grad(dydir[dbase + p], xhat, gm, bt);
            sdy = sdy + d;
            sdyx = sdyx + d * xhat;
        }
    }
    dbeta_out[c] = sdy;
    dgamma_out[c] = sdyx;
}

// ---- bwd_direct's vec4 twin, with the input gradient in the same dispatch (`DX`) ----
// The channel's sums, then (with DX) its input gradient as bwd_apply4 computes it: one
// dispatch per batch norm's backward instead of two. Without DX nothing is written through
// binding 3 (the host binds a 16-byte scratch buffer to fill the slot).
override DX: bool = false;
@group(0) @binding(3) var<storage, read_write> dxd4_out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> xd4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> dyd4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> stats_dd: array<f32>;
@group(0) @binding(7) var<storage, read> gamma_dd: array<f32>;
@group(0) @binding(8) var<storage, read> beta_dd: array<f32>;

@compute @workgroup_size(64)
fn bwd_direct4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let mean = vec4<f32>(stats_dd[c]);
    let invstd = stats_dd[P.c + c];
    let gm = gamma_dd[c];
    let bt = vec4<f32>(beta_dd[c]);
    let q4 = P.hw / 4u;
    var sdy = vec4<f32>(0.0);
    var sdyx = vec4<f32>(0.0);
    for (var n = 0u; n < P.n; n = n + 1u) {
        let xbase = x_index(n, c, 0u) / 4u;
        let dbase = (n * P.c + c) * q4;
        for (var p = 0u; p < q4; p = p + 1u) {
            let xhat = (xd4[xbase + p] - mean) * invstd;
            let d = relu_grad4(dyd4[dbase + p], xhat, gm, bt);
            sdy = sdy + d;
            sdyx = sdyx + d * xhat;
        }
    }
    let db = sdy.x + sdy.y + sdy.z + sdy.w;
    let dg = sdyx.x + sdyx.y + sdyx.z + sdyx.w;
    dbeta_out[c] = db;
    dgamma_out[c] = dg;
    if (!DX) {
        return;
    }
    let m = f32(P.n * P.hw);
    for (var n = 0u; n < P.n; n = n + 1u) {
        let xbase = x_index(n, c, 0u) / 4u;
        let dbase = (n * P.c + c) * q4;
        for (var p = 0u; p < q4; p = p + 1u) {
            let xhat = (xd4[xbase + p] - mean) * invstd;
            var d = relu_grad4(dyd4[dbase + p], xhat, gm, bt);
            if (P.train != 0u) {
                d = d - (vec4<f32>(db) + xhat * dg) / m;
            }
            dxd4_out[dbase + p] = gm * invstd * d;
        }
    }
}

// ---- backward, pass 2: input gradient (one invocation per element) ----
// train: dx = gamma * invstd * (dy_eff - (dbeta + xhat * dgamma) / M)
// eval:  dx = gamma * invstd * dy_eff
@group(0) @binding(1) var<storage, read_write> dx_out: array<f32>;
@group(0) @binding(2) var<storage, read> xc: array<f32>;
@group(0) @binding(3) var<storage, read> dyc: array<f32>;
@group(0) @binding(4) var<storage, read> stats_c: array<f32>;
@group(0) @binding(5) var<storage, read> gamma_c: array<f32>;
@group(0) @binding(6) var<storage, read> beta_c: array<f32>;
@group(0) @binding(7) var<storage, read> dgamma_c: array<f32>;
@group(0) @binding(8) var<storage, read> dbeta_c: array<f32>;

@compute @workgroup_size(256)
fn bwd_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= P.n * P.c * P.hw) {
        return;
    }
    let n = i / (P.c * P.hw);
    let c = (i / P.hw) % P.c;
    let p = i % P.hw;
    let invstd = stats_c[P.c + c];
    let g = gamma_c[c];
    let xhat = (xc[x_index(n, c, p)] - stats_c[c]) * invstd;
    var d = relu_grad(dyc[i], xhat, g, beta_c[c]);
    if (P.train != 0u) {
        let m = f32(P.n * P.hw);
        d = d - (dbeta_c[c] + xhat * dgamma_c[c]) / m;
    }
    dx_out[i] = g * invstd * d;
}

// ---- vec4 twins (hw a multiple of 4; lanes count quads) ----
@group(0) @binding(2) var<storage, read> x4_in: array<vec4<f32>>;

fn hsum(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

@compute @workgroup_size(64)
fn stats_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    let lanes = P.lanes;
    let total = P.c * P.n * lanes;
    if (g >= total) {
        return;
    }
    let j = g % lanes;
    let cn = g / lanes;
    let base = x_index(cn % P.n, cn / P.n, 0u) / 4u;
    let q4 = P.hw / 4u;
    var s = vec4<f32>(0.0);
    var cnt = 0u;
    for (var p = j; p < q4; p = p + lanes) {
        s = s + x4_in[base + p];
        cnt = cnt + 4u;
    }
    let mean = hsum(s) / f32(max(cnt, 1u));
    var q = vec4<f32>(0.0);
    for (var p = j; p < q4; p = p + lanes) {
        let d = x4_in[base + p] - vec4<f32>(mean);
        q = q + d * d;
    }
    part_out[g] = mean;
    part_out[total + g] = hsum(q);
}

@group(0) @binding(1) var<storage, read_write> y4_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> xa4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    let q4 = P.hw / 4u;
    if (i >= P.n * P.c * q4) {
        return;
    }
    let plane = i / q4;
    let n = plane / P.c;
    let c = plane % P.c;
    var y = (xa4[x_index(n, c, 0u) / 4u + i % q4] - vec4<f32>(stats_a[c])) * stats_a[P.c + c]
        * gamma_a[c] + vec4<f32>(beta_a[c]);
    if (P.relu != 0u) {
        y = max(y, vec4<f32>(0.0));
    }
    y4_out[i] = y;
}

@group(0) @binding(2) var<storage, read> xb4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dyb4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn bwd_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    let lanes = P.lanes;
    let total = P.c * P.n * lanes;
    if (g >= total) {
        return;
    }
    let j = g % lanes;
    let cn = g / lanes;
    let n = cn % P.n;
    let c = cn / P.n;
    let mean = vec4<f32>(stats_b[c]);
    let invstd = stats_b[P.c + c];
    let gm = gamma_b[c];
    let bt = vec4<f32>(beta_b[c]);
    let xbase = x_index(n, c, 0u) / 4u;
    let q4 = P.hw / 4u;
    let dbase = (n * P.c + c) * q4;
    var sdy = vec4<f32>(0.0);
    var sdyx = vec4<f32>(0.0);
    for (var p = j; p < q4; p = p + lanes) {
        let xhat = (xb4[xbase + p] - mean) * invstd;
        let d = relu_grad4(dyb4[dbase + p], xhat, gm, bt);
        sdy = sdy + d;
        sdyx = sdyx + d * xhat;
    }
    bpart_out[g] = hsum(sdy);
    bpart_out[total + g] = hsum(sdyx);
}

@group(0) @binding(1) var<storage, read_write> dx4_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> xc4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dyc4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn bwd_apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    let q4 = P.hw / 4u;
    if (i >= P.n * P.c * q4) {
        return;
    }
    let plane = i / q4;
    let n = plane / P.c;
    let c = plane % P.c;
    let invstd = stats_c[P.c + c];
    let g = gamma_c[c];
    let xhat = (xc4[x_index(n, c, 0u) / 4u + i % q4] - vec4<f32>(stats_c[c])) * invstd;
    var d = relu_grad4(dyc4[i], xhat, g, vec4<f32>(beta_c[c]));
    if (P.train != 0u) {
        let m = f32(P.n * P.hw);
        d = d - (vec4<f32>(dbeta_c[c]) + xhat * dgamma_c[c]) / m;
    }
    dx4_out[i] = g * invstd * d;
}

// ---- workgroup twins of the combine passes (one workgroup of 64 per channel) ----
// The serial combines above loop over all n * lanes partials of a channel in one invocation:
// right for CPU drivers, where barriers are costly, but a long dependent chain on a GPU. Here
// each of 64 invocations merges every 64th partial, then a tree merges the 64 results.
var<workgroup> wg_cnt: array<f32, 64>;
var<workgroup> wg_a: array<f32, 64>;
var<workgroup> wg_b: array<f32, 64>;

@compute @workgroup_size(64)
fn stats_finish_wg(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x;
    let t = lid.x;
    let lanes = P.lanes;
    let k = P.n * lanes;
    let total = P.c * k;
    var cnt = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var i = t; i < k; i = i + 64u) {
        let nb = f32(lane_count(i % lanes));
        let mb = part_in[c * k + i];
        let both = cnt + nb;
        let delta = mb - mean;
        mean = mean + delta * nb / max(both, 1.0);
        m2 = m2 + part_in[total + c * k + i] + delta * delta * cnt * nb / max(both, 1.0);
        cnt = both;
    }
    wg_cnt[t] = cnt;
    wg_a[t] = mean;
    wg_b[t] = m2;
    for (var s = 32u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (t < s) {
            let na = wg_cnt[t];
            let nb = wg_cnt[t + s];
            let both = na + nb;
            if (both > 0.0) {
                let delta = wg_a[t + s] - wg_a[t];
                wg_a[t] = wg_a[t] + delta * nb / both;
                wg_b[t] = wg_b[t] + wg_b[t + s] + delta * delta * na * nb / both;
                wg_cnt[t] = both;
            }
        }
    }
    if (t == 0u && c < P.c) {
        finish(c, wg_a[0], wg_b[0] / wg_cnt[0]);
    }
}

@compute @workgroup_size(64)
fn bwd_combine_wg(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x;
    let t = lid.x;
    let k = P.n * P.lanes;
    let total = P.c * k;
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var i = t; i < k; i = i + 64u) {
        sdy = sdy + bpart_in[c * k + i];
        sdyx = sdyx + bpart_in[total + c * k + i];
    }
    wg_a[t] = sdy;
    wg_b[t] = sdyx;
    for (var s = 32u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (t < s) {
            wg_a[t] = wg_a[t] + wg_a[t + s];
            wg_b[t] = wg_b[t] + wg_b[t + s];
        }
    }
    if (t == 0u && c < P.c) {
        dbeta_out[c] = wg_a[0];
        dgamma_out[c] = wg_b[0];
    }
}
