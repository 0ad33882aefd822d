// Adam, in place, with PyTorch's arithmetic (torch.optim.Adam, foreach or not):
//   g = grad + weight_decay * p                      (if weight_decay != 0)
//   m = m + (1 - beta1) * (g - m)                    (m.lerp_(g, 1 - beta1))
//   v = beta2 * v + (1 - beta2) * g * g
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) computed on the host.

struct Params {
    n: u32, _p0: u32, _p1: u32, _p2: u32,
    step_size: f32, beta1: f32, beta2: f32, eps: f32,
    weight_decay: f32, bc2_sqrt: f32, _p3: f32, _p4: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;

@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= P.n) {
        return;
    }
    var g = grad[i];
    if (P.weight_decay != 0.0) {
        g = g + P.weight_decay * param[i];
    }
    let mi = m[i] + (1.0 - P.beta1) * (g - m[i]);
    let vi = P.beta2 * v[i] + (1.0 - P.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] - P.step_size * mi / (sqrt(vi) / P.bc2_sqrt + P.eps);
}

// The same over four values per invocation, for parameters whose length is a multiple of 4
// (a quarter of the invocations and index arithmetic, vector loads and stores).
@group(0) @binding(1) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn adam4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= P.n / 4u) {
        return;
    }
    var g = grad4[i];
    let p = param4[i];
    if (P.weight_decay != 0.0) {
        g = g + P.weight_decay * p;
    }
    let mo = m4[i];
    let mi = mo + (1.0 - P.beta1) * (g - mo);
    let vi = P.beta2 * v4[i] + (1.0 - P.beta2) * g * g;
    m4[i] = mi;
    v4[i] = vi;
    param4[i] = p - P.step_size * mi / (sqrt(vi) / P.bc2_sqrt + vec4<f32>(P.eps));
}
