// Element-wise kernels: unary ops, binary ops (same shape or broadcast), broadcast copy
// (expand) and three-way select (where). The op is a pipeline-overridable constant, so each
// op is its own specialised pipeline with no branch at run time.
//
// Bindings follow the engine's convention: 0 = parameters, 1 = output, then the inputs.
// Linear element id = (workgroup_id.x + workgroup_id.y * num_workgroups.x) * 256 + local id.

struct Params {
    n: u32,        // number of output elements
    rank: u32,     // number of dims of the output (broadcast entries only)
    s0: f32,       // scalar operand (unary scalar ops)
    s1: f32,
    shape: array<vec4<u32>, 2>,     // output shape, up to 8 dims
    stride_a: array<vec4<u32>, 2>,  // per-dim element strides of input a (0 = broadcast)
    stride_b: array<vec4<u32>, 2>,  // per-dim element strides of input b (0 = broadcast)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;

// Unary: 0 relu, 1 sigmoid, 2 exp, 3 log, 4 x + s0, 5 x * s0, 6 x >= s0, 7 x > s0, 8 x < s0.
override UNARY: u32 = 0u;
// Binary: 0 add, 1 sub, 2 mul, 3 div, 4 relu backward (a = grad, b = x),
// 5 sigmoid backward (a = grad, b = sigmoid output).
override BINARY: u32 = 0u;

fn unary_op(x: f32) -> f32 {
    switch UNARY {
        case 0u: { return max(x, 0.0); }
        case 1u: { return 1.0 / (1.0 + exp(-x)); }
        case 2u: { return exp(x); }
        case 3u: { return log(x); }
        case 4u: { return x + P.s0; }
        case 5u: { return x * P.s0; }
        case 6u: { return select(0.0, 1.0, x >= P.s0); }
        case 7u: { return select(0.0, 1.0, x > P.s0); }
        case 8u: { return select(0.0, 1.0, x < P.s0); }
        default: { return x; }
    }
}

fn binary_op(x: f32, y: f32) -> f32 {
    switch BINARY {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return select(0.0, x, y > 0.0); }
        case 5u: { return x * y * (1.0 - y); }
        default: { return x; }
    }
}

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// Offsets into a and b of output element i, from the output shape and the input strides.
fn bcast_offsets(i: u32) -> vec2<u32> {
    var rem = i;
    var oa = 0u;
    var ob = 0u;
    for (var d = i32(P.rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let size = P.shape[q][r];
        let x = rem % size;
        rem = rem / size;
        oa = oa + x * P.stride_a[q][r];
        ob = ob + x * P.stride_b[q][r];
    }
    return vec2<u32>(oa, ob);
}

@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i < P.n) {
        out[i] = unary_op(a[i]);
    }
}

@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i < P.n) {
        out[i] = binary_op(a[i], b[i]);
    }
}

@compute @workgroup_size(256)
fn binary_bcast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i < P.n) {
        let o = bcast_offsets(i);
        out[i] = binary_op(a[o.x], b[o.y]);
    }
}

// out = a broadcast to the output shape (stride_a holds a's strides, 0 on broadcast dims).
@compute @workgroup_size(256)
fn expand(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i < P.n) {
        out[i] = a[bcast_offsets(i).x];
    }
}

// out = a != 0 ? b : c, all of the output's shape.
@compute @workgroup_size(256)
fn where_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i < P.n) {
        out[i] = select(c[i], b[i], a[i] != 0.0);
    }
}

// ReLU that keeps only what its backward needs: y = max(x, 0), and bit j of mask word w is
// 1[x > 0] of element 32 w + j (one invocation per word). The mask is 1/32 of the memory of
// saving y or x, so a ReLU output that nothing else keeps (UNet11's encoder outputs, which
// the skip concatenations copy) is freed during the forward pass.
@group(0) @binding(2) var<storage, read_write> relu_bits: array<u32>;
@group(0) @binding(3) var<storage, read> relu_x: array<f32>;

@compute @workgroup_size(256)
fn relu_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let w = linear_id(wid, nwg, lid);
    if (w * 32u >= P.n) {
        return;
    }
    var bits = 0u;
    for (var j = 0u; j < 32u; j = j + 1u) {
        let i = w * 32u + j;
        if (i >= P.n) {
            break;
        }
        let v = relu_x[i];
        let on = v > 0.0;
        out[i] = select(0.0, v, on);
        bits = bits | select(0u, 1u << j, on);
    }
    relu_bits[w] = bits;
}

// `relu_mask` with one element per invocation: loads and stores coalesced across lanes (on
// GPUs the word-per-invocation kernel above reads 32 consecutive values per lane, lanes 128
// bytes apart). A workgroup's 256 elements are 8 mask words, gathered with workgroup atomics
// and written by the first 8 lanes. Grid: ceil(n / 256) workgroups.
var<workgroup> relu_words: array<atomic<u32>, 8>;

@compute @workgroup_size(256)
fn relu_mask_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (lid.x < 8u) {
        atomicStore(&relu_words[lid.x], 0u);
    }
    workgroupBarrier();
    if (i < P.n) {
        let v = relu_x[i];
        let on = v > 0.0;
        out[i] = select(0.0, v, on);
        if (on) {
            atomicOr(&relu_words[lid.x / 32u], 1u << (lid.x % 32u));
        }
    }
    workgroupBarrier();
    let w = (wid.x + wid.y * nwg.x) * 8u + lid.x;
    if (lid.x < 8u && w * 32u < P.n) {
        relu_bits[w] = atomicLoad(&relu_words[lid.x]);
    }
}

// ReLU backward from the mask: dx = grad where the bit is set (a = grad, bits = the mask).
@group(0) @binding(3) var<storage, read> relu_bits_in: array<u32>;

@compute @workgroup_size(256)
fn relu_mask_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= P.n) {
        return;
    }
    let on = ((relu_bits_in[i / 32u] >> (i % 32u)) & 1u) != 0u;
    out[i] = select(0.0, a[i], on);
}
