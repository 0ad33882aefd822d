// Gradient accumulation of the autodiff tape: out = a + b over two tensors of the same shape
// (no broadcasting: a tensor's gradients all have its shape). Kept apart from the
// element-wise ops so that the tape depends on the tensor layer only.
//
// Bindings follow the engine's convention: 0 = parameters, 1 = output, then the inputs.
// Linear element id = (workgroup_id.x + workgroup_id.y * num_workgroups.x) * 256 + local id.

struct Params {
    n: u32,     // number of elements
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

@compute @workgroup_size(256)
fn add2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i < P.n) {
        out[i] = a[i] + b[i];
    }
}
