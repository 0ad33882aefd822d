// Adam over four parameters in one dispatch (the multi-tensor, "foreach" form): the same
// arithmetic as optim.wgsl's `adam4`, per parameter k with its own length n_k (a multiple of
// 4), step size and bias correction (parameters may have taken different numbers of steps).
// Invocation i updates the four values 4 (i - start_k) .. of the parameter k whose range of
// quads [start_k, start_k + n_k / 4) holds it; each start is a multiple of 256, so a
// workgroup works on one parameter only and the choice of parameter is uniform across it.
// WGSL has no portable array of storage bindings, so the four parameters are four sets of
// bindings (16 storage buffers; the host uses this kernel only where the adapter allows them).

struct Params {
    n0: u32, n1: u32, n2: u32, n3: u32,
    start1: u32, start2: u32, start3: u32, total: u32,
    step_size0: f32, step_size1: f32, step_size2: f32, step_size3: f32,
    bc2_sqrt0: f32, bc2_sqrt1: f32, bc2_sqrt2: f32, bc2_sqrt3: f32,
    beta1: f32, beta2: f32, eps: f32, weight_decay: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> param0: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> m0: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> param1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> m1: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> v1: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> param2: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> m2: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> v2: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> param3: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> m3: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> v3: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read> grad0: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> grad1: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> grad2: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> grad3: array<vec4<f32>>;

struct Moments {
    p: vec4<f32>,
    m: vec4<f32>,
    v: vec4<f32>,
}

// One Adam update of four values (p, m, v) with gradient g.
fn update(p: vec4<f32>, m: vec4<f32>, v: vec4<f32>, grad: vec4<f32>, step_size: f32,
          bc2_sqrt: f32) -> Moments {
    var g = grad;
    if (P.weight_decay != 0.0) {
        g = g + P.weight_decay * p;
    }
    let mi = m + (1.0 - P.beta1) * (g - m);
    let vi = P.beta2 * v + (1.0 - P.beta2) * g * g;
    return Moments(p - step_size * mi / (sqrt(vi) / bc2_sqrt + vec4<f32>(P.eps)), mi, vi);
}

@compute @workgroup_size(256)
fn adam4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= P.total) {
        return;
    }
    if (i < P.start1) {
        let j = i;
        if (j >= P.n0 / 4u) {
            return;
        }
        let r = update(param0[j], m0[j], v0[j], grad0[j], P.step_size0, P.bc2_sqrt0);
        param0[j] = r.p;
        m0[j] = r.m;
        v0[j] = r.v;
    } else if (i < P.start2) {
        let j = i - P.start1;
        if (j >= P.n1 / 4u) {
            return;
        }
        let r = update(param1[j], m1[j], v1[j], grad1[j], P.step_size1, P.bc2_sqrt1);
        param1[j] = r.p;
        m1[j] = r.m;
        v1[j] = r.v;
    } else if (i < P.start3) {
        let j = i - P.start2;
        if (j >= P.n2 / 4u) {
            return;
        }
        let r = update(param2[j], m2[j], v2[j], grad2[j], P.step_size2, P.bc2_sqrt2);
        param2[j] = r.p;
        m2[j] = r.m;
        v2[j] = r.v;
    } else {
        let j = i - P.start3;
        if (j >= P.n3 / 4u) {
            return;
        }
        let r = update(param3[j], m3[j], v3[j], grad3[j], P.step_size3, P.bc2_sqrt3);
        param3[j] = r.p;
        m3[j] = r.m;
        v3[j] = r.v;
    }
}
