// C[M,N] = A'[M,K] * B'[K,N] with strided operands (see matmul_tiled.wgsl). Barrier-free
// register-blocked variant: each invocation computes a 4x4 block straight from global memory
// (an 8x8 workgroup covers 32x32). Indices past the edge are clamped for loads and skipped for
// stores, so any M, N, K works.

struct Params {
    m: u32, n: u32, k: u32, sa_m: u32,
    sa_k: u32, sb_k: u32, sb_n: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= P.m || col0 >= P.n) {
        return;
    }
    var arow: array<u32, 4>;
    var bcol: array<u32, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        arow[i] = min(row0 + i, P.m - 1u) * P.sa_m;
        bcol[i] = min(col0 + i, P.n - 1u) * P.sb_n;
    }
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var kk = 0u; kk < P.k; kk = kk + 1u) {
        let ak = kk * P.sa_k;
        let bk = kk * P.sb_k;
        var ar: array<f32, 4>;
        var br: array<f32, 4>;
        for (var i = 0u; i < 4u; i = i + 1u) {
            ar[i] = a[arow[i] + ak];
            br[i] = b[bk + bcol[i]];
        }
        for (var i = 0u; i < 4u; i = i + 1u) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                acc[i * 4u + j] = fma(ar[i], br[j], acc[i * 4u + j]);
            }
        }
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + j;
            if (r < P.m && col < P.n) {
                c[r * P.n + col] = acc[i * 4u + j];
            }
        }
    }
}
