// C[M,N] = A[M,K] * B[K,N], neither transposed, K and N multiples of 4. Barrier-free,
// register-blocked over vec4 loads: A is read as vec4 along K, B and C as vec4 along N.
// `main_4x4`: each invocation computes 4 rows x 4 columns; `main_8x8`: 8 rows x 8 columns.
// On CPU drivers such as lavapipe, where shared memory and barriers are expensive, these are
// the fast variants; the autotuner measures which one wins on each adapter.

//#include gemm8x8

struct Params {
    m: u32, n: u32, k: u32, sa_m: u32,
    sa_k: u32, sb_k: u32, sb_n: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;

@compute @workgroup_size(8, 8)
fn main_4x4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k4 = P.k / 4u;
    let n4 = P.n / 4u;
    let row0 = gid.y * 4u;
    let cq = gid.x;  // column group of 4
    if (row0 >= P.m || cq >= n4) {
        return;
    }
    var arow: array<u32, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        arow[i] = min(row0 + i, P.m - 1u) * k4;
    }
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kq = 0u; kq < k4; kq = kq + 1u) {
        let kb = kq * 4u * n4 + cq;
        let b0 = b[kb];
        let b1 = b[kb + n4];
        let b2 = b[kb + 2u * n4];
        let b3 = b[kb + 3u * n4];
        for (var i = 0u; i < 4u; i = i + 1u) {
            let av = a[arow[i] + kq];
            acc[i] = rank4_update(acc[i], av, b0, b1, b2, b3);
        }
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (row0 + i < P.m) {
            c[(row0 + i) * n4 + cq] = acc[i];
        }
    }
}

@compute @workgroup_size(8, 8)
fn main_8x8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k4 = P.k / 4u;
    let n4 = P.n / 4u;
    let row0 = gid.y * 8u;
    let cq0 = gid.x * 2u;  // first of two column groups of 4
    if (row0 >= P.m || cq0 >= n4) {
        return;
    }
    let cq1 = min(cq0 + 1u, n4 - 1u);
    var arow: array<u32, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        arow[i] = min(row0 + i, P.m - 1u) * k4;
    }
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        acc0[i] = vec4<f32>(0.0);
        acc1[i] = vec4<f32>(0.0);
    }
    for (var kq = 0u; kq < k4; kq = kq + 1u) {
        let kb = kq * 4u * n4;
        let b00 = b[kb + cq0];
        let b10 = b[kb + n4 + cq0];
        let b20 = b[kb + 2u * n4 + cq0];
        let b30 = b[kb + 3u * n4 + cq0];
        let b01 = b[kb + cq1];
        let b11 = b[kb + n4 + cq1];
        let b21 = b[kb + 2u * n4 + cq1];
        let b31 = b[kb + 3u * n4 + cq1];
        for (var i = 0u; i < 8u; i = i + 1u) {
            let av = a[arow[i] + kq];
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
    }
    let has1 = cq0 + 1u < n4;
    for (var i = 0u; i < 8u; i = i + 1u) {
        if (row0 + i < P.m) {
            c[(row0 + i) * n4 + cq0] = acc0[i];
            if (has1) {
                c[(row0 + i) * n4 + cq0 + 1u] = acc1[i];
            }
        }
    }
}
