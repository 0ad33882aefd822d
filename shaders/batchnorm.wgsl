// Batch normalisation over (N, H, W) per channel, PyTorch semantics: training normalises with
// the batch mean and biased variance (two passes, for accuracy), eval with the running
// statistics; y = (x - mean) * invstd * gamma + beta, optionally followed by ReLU (the fused
// BN+ReLU that DenseNet applies everywhere; its backward recomputes the activation instead of
// saving it). The input may be a channel slice of a larger buffer (x_c_total, x_c_off).
//
// stats layout [3, C]: mean, invstd, biased variance.

struct Params {
    n: u32, c: u32, hw: u32, x_c_total: u32,
    x_c_off: u32, train: u32, relu: u32, _p0: u32,
    eps: f32, momentum: f32, _p1: f32, _p2: f32,
}

@group(0) @binding(0) var<uniform> P: Params;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;
var<workgroup> red2: array<f32, 64>;

fn x_index(n: u32, c: u32, p: u32) -> u32 {
    return (n * P.x_c_total + P.x_c_off + c) * P.hw + p;
}

fn tree_sum(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
            red2[lid] = red2[lid] + red2[lid + s];
        }
        workgroupBarrier();
    }
}

// ---- statistics (one workgroup per channel) ----
@group(0) @binding(1) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(2) var<storage, read> x_in: array<f32>;

@compute @workgroup_size(64)
fn stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x;
    let m = P.n * P.hw;
    // Nested loops over images and pixels: no division per element.
    var s = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = x_index(n, c, 0u);
        for (var p = lid.x; p < P.hw; p = p + WG) {
            s = s + x_in[base + p];
        }
    }
    red[lid.x] = s;
    red2[lid.x] = 0.0;
    workgroupBarrier();
    tree_sum(lid.x);
    let mean = red[0] / f32(m);
    workgroupBarrier();
    var q = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let base = x_index(n, c, 0u);
        for (var p = lid.x; p < P.hw; p = p + WG) {
            let d = x_in[base + p] - mean;
            q = q + d * d;
        }
    }
    red[lid.x] = q;
    workgroupBarrier();
    tree_sum(lid.x);
    if (lid.x == 0u) {
        let var_b = red[0] / f32(m);
        stats_out[c] = mean;
        stats_out[P.c + c] = 1.0 / sqrt(var_b + P.eps);
        stats_out[2u * P.c + c] = var_b;
    }
}

// ---- running-statistics update, in place (one invocation per channel) ----
// running_mean = (1 - momentum) * running_mean + momentum * mean
// running_var  = (1 - momentum) * running_var + momentum * var * M / (M - 1)  (unbiased)
@group(0) @binding(1) var<storage, read_write> run_mean: array<f32>;
@group(0) @binding(2) var<storage, read_write> run_var: array<f32>;
@group(0) @binding(3) var<storage, read> stats_in3: array<f32>;

@compute @workgroup_size(64)
fn update_running(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let m = f32(P.n * P.hw);
    let unbiased = stats_in3[2u * P.c + c] * m / (m - 1.0);
    run_mean[c] = (1.0 - P.momentum) * run_mean[c] + P.momentum * stats_in3[c];
    run_var[c] = (1.0 - P.momentum) * run_var[c] + P.momentum * unbiased;
}

// ---- eval statistics from running ones (one invocation per channel) ----
@group(0) @binding(1) var<storage, read_write> stats_eval: array<f32>;
@group(0) @binding(2) var<storage, read> rm_in: array<f32>;
@group(0) @binding(3) var<storage, read> rv_in: array<f32>;

@compute @workgroup_size(64)
fn eval_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    stats_eval[c] = rm_in[c];
    stats_eval[P.c + c] = 1.0 / sqrt(rv_in[c] + P.eps);
    stats_eval[2u * P.c + c] = rv_in[c];
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

// ---- backward, pass 1: per-channel sums (one workgroup per channel) ----
// dy_eff = dy * 1[y > 0] with ReLU fused, else dy; dbeta = sum dy_eff,
// dgamma = sum dy_eff * xhat.
@group(0) @binding(1) var<storage, read_write> dgamma_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbeta_out: array<f32>;
@group(0) @binding(3) var<storage, read> xb: array<f32>;
@group(0) @binding(4) var<storage, read> dyb: array<f32>;
@group(0) @binding(5) var<storage, read> stats_b: array<f32>;
@group(0) @binding(6) var<storage, read> gamma_b: array<f32>;
@group(0) @binding(7) var<storage, read> beta_b: array<f32>;

@compute @workgroup_size(64)
fn bwd_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x;
    let m = P.n * P.hw;
    let mean = stats_b[c];
    let invstd = stats_b[P.c + c];
    let g = gamma_b[c];
    let b = beta_b[c];
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var n = 0u; n < P.n; n = n + 1u) {
        let xbase = x_index(n, c, 0u);
        let dbase = (n * P.c + c) * P.hw;
        for (var p = lid.x; p < P.hw; p = p + WG) {
            let xhat = (xb[xbase + p] - mean) * invstd;
            var d = dyb[dbase + p];
            if (P.relu != 0u && xhat * g + b <= 0.0) {
                d = 0.0;
            }
            sdy = sdy + d;
            sdyx = sdyx + d * xhat;
        }
    }
    red[lid.x] = sdy;
    red2[lid.x] = sdyx;
    workgroupBarrier();
    tree_sum(lid.x);
    if (lid.x == 0u) {
        dbeta_out[c] = red[0];
        dgamma_out[c] = red2[0];
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
    var d = dyc[i];
    if (P.relu != 0u && xhat * g + beta_c[c] <= 0.0) {
        d = 0.0;
    }
    if (P.train != 0u) {
        let m = f32(P.n * P.hw);
        d = d - (dbeta_c[c] + xhat * dgamma_c[c]) / m;
    }
    dx_out[i] = g * invstd * d;
}

// ---- scale and shift of the normalisation, for a convolution prologue (one per channel) ----
// affine = [gamma * invstd; beta - mean * gamma * invstd]
@group(0) @binding(1) var<storage, read_write> affine_out: array<f32>;
@group(0) @binding(2) var<storage, read> stats_d: array<f32>;
@group(0) @binding(3) var<storage, read> gamma_d: array<f32>;
@group(0) @binding(4) var<storage, read> beta_d: array<f32>;

@compute @workgroup_size(64)
fn affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c) {
        return;
    }
    let scale = gamma_d[c] * stats_d[P.c + c];
    affine_out[c] = scale;
    affine_out[P.c + c] = beta_d[c] - stats_d[c] * scale;
}
