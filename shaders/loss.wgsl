// Losses, element- or row-wise; the mean over elements is a reduction afterwards.
//   ce_*:   softmax cross-entropy of logits [rows, k] with integer labels (stored as exact f32)
//   bce_*:  binary cross-entropy on probabilities, logs clamped at -100 as PyTorch does
//   bcel_*: binary cross-entropy with logits, in PyTorch's numerically stable form

struct Params {
    n: u32, k: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// ---- cross-entropy forward: one invocation per row ----
@group(0) @binding(1) var<storage, read_write> ce_loss: array<f32>;
@group(0) @binding(2) var<storage, read_write> ce_prob: array<f32>;
@group(0) @binding(3) var<storage, read> ce_logits: array<f32>;
@group(0) @binding(4) var<storage, read> ce_labels: array<f32>;

@compute @workgroup_size(256)
fn ce_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear_id(wid, nwg, lid);
    if (r >= P.n) {
        return;
    }
    let base = r * P.k;
    var mx = ce_logits[base];
    for (var j = 1u; j < P.k; j = j + 1u) {
        mx = max(mx, ce_logits[base + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < P.k; j = j + 1u) {
        s = s + exp(ce_logits[base + j] - mx);
    }
    let lse = mx + log(s);
    for (var j = 0u; j < P.k; j = j + 1u) {
        ce_prob[base + j] = exp(ce_logits[base + j] - lse);
    }
    let label = min(u32(ce_labels[r]), P.k - 1u);
    ce_loss[r] = lse - ce_logits[base + label];
}

// ---- cross-entropy backward: dlogits = g[row] * (softmax - onehot) ----
@group(0) @binding(1) var<storage, read_write> ce_dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> ce_g: array<f32>;
@group(0) @binding(3) var<storage, read> ce_prob_in: array<f32>;
@group(0) @binding(4) var<storage, read> ce_labels_in: array<f32>;

@compute @workgroup_size(256)
fn ce_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n * P.k) {
        return;
    }
    let r = i / P.k;
    let j = i % P.k;
    let onehot = select(0.0, 1.0, u32(ce_labels_in[r]) == j);
    ce_dlogits[i] = ce_g[r] * (ce_prob_in[i] - onehot);
}

// ---- element-wise binary cross-entropies: out, then (p or z, t[, g]) ----
@group(0) @binding(1) var<storage, read_write> e_out: array<f32>;
@group(0) @binding(2) var<storage, read> e_x: array<f32>;
@group(0) @binding(3) var<storage, read> e_t: array<f32>;
@group(0) @binding(4) var<storage, read> e_g: array<f32>;

// -(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))
@compute @workgroup_size(256)
fn bce_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n) {
        return;
    }
    let p = e_x[i];
    let t = e_t[i];
    e_out[i] = -(t * max(log(p), -100.0) + (1.0 - t) * max(log(1.0 - p), -100.0));
}

// g * (p - t) / max(p * (1 - p), 1e-12)  (PyTorch's binary_cross_entropy_backward)
@compute @workgroup_size(256)
fn bce_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n) {
        return;
    }
    let p = e_x[i];
    e_out[i] = e_g[i] * (p - e_t[i]) / max((1.0 - p) * p, 1e-12);
}

// (1 - t) * z + m + log(exp(-m) + exp(-z - m)), m = max(-z, 0)
@compute @workgroup_size(256)
fn bcel_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n) {
        return;
    }
    let z = e_x[i];
    let m = max(-z, 0.0);
    e_out[i] = (1.0 - e_t[i]) * z + m + log(exp(-m) + exp(-z - m));
}

// g * (sigmoid(z) - t)
@compute @workgroup_size(256)
fn bcel_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n) {
        return;
    }
    let z = e_x[i];
    e_out[i] = e_g[i] * (1.0 / (1.0 + exp(-z)) - e_t[i]);
}
