// C[M,N] = A'[M,K] * B'[K,N], where A'(m,k) = a[m*sa_m + k*sa_k] and B'(k,n) = b[k*sb_k +
// n*sb_n]: the strides express either operand transposed. Workgroup-tiled variant: a 16x16
// workgroup loads 64x16 and 16x64 tiles into shared memory and each invocation accumulates a
// 4x4 block. Usually the fastest on real GPUs; the barriers make it slow on CPU drivers.

struct Params {
    m: u32, n: u32, k: u32, sa_m: u32,
    sa_k: u32, sb_k: u32, sb_n: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

const TS: u32 = 64u;  // tile side (rows of A / columns of B per workgroup)
const BK: u32 = 16u;  // tile depth along K

var<workgroup> As: array<f32, 1024>;  // As[kk * TS + i]
var<workgroup> Bs: array<f32, 1024>;  // Bs[kk * TS + j]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * TS;
    let col0 = wid.x * TS;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < P.k; k0 = k0 + BK) {
        for (var l = 0u; l < 4u; l = l + 1u) {
            let e = tid + l * 256u;
            let i = e / BK;
            let kk = e % BK;
            let gm = row0 + i;
            let gk = k0 + kk;
            var va = 0.0;
            if (gm < P.m && gk < P.k) {
                va = a[gm * P.sa_m + gk * P.sa_k];
            }
            As[kk * TS + i] = va;
            let kb = e / TS;
            let j = e % TS;
            let gkb = k0 + kb;
            let gn = col0 + j;
            var vb = 0.0;
            if (gkb < P.k && gn < P.n) {
                vb = b[gkb * P.sb_k + gn * P.sb_n];
            }
            Bs[kb * TS + j] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                ar[i] = As[kk * TS + lid.y * 4u + i];
                br[i] = Bs[kk * TS + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = fma(ar[i], br[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x * 4u + j;
            if (r < P.m && col < P.n) {
                c[r * P.n + col] = acc[i * 4u + j];
            }
        }
    }
}
