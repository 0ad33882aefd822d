// 1x1 convolution with stride 1 and no padding as a batched matrix product, per image n:
//   out[n] (M x N) = A (M x K) * B[n] (K x N)  (+ bias per row)
// with N = h * w pixels. Forward: A = weights [co, ci], B[n] = input [ci, hw] (optionally read
// through the batch-norm + ReLU prologue, per row k: relu(b * affine[k] + affine[K + k])).
// Input gradient: A = weights transposed [ci, co] (a re-laid-out copy), B[n] = output
// gradient [co, hw]. Barrier-free, 8 rows x 8 columns per invocation over vec4 loads, as
// matmul_vec4.wgsl's main_8x8 (the fastest matmul on CPU drivers). Requires K and N to be
// multiples of 4 and the batch strides and offsets to be multiples of 4; the host checks.
//
// Split-K (`k_split` > 0, for adapters with far more lanes than the product has 8x8 blocks):
// z = image + imgs * split (z = split where images are folded into columns); split s sums
// K rows [s k_split, (s + 1) k_split) into its own
// partial product at c + s * split_stride (bias in split 0 only), and `splitk_sum` adds the
// `splits` partials into the output.

//#include gemm8x8

struct Params {
    m: u32, n: u32, k: u32, lda: u32,           // lda: row length of A (elements)
    b_batch: u32, b_off: u32, c_batch: u32, c_off: u32,   // element strides / offsets
    k_split: u32, imgs: u32, split_stride: u32, splits: u32,  // split-K (conv1x1.wgsl)
    a_batch: u32, rb: u32, fold: u32, across: u32,  // A of image i at i * a_batch; lanes (below)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> affine: array<f32>;
override PROLOGUE: bool = false;

fn load_b(index: u32, k: u32) -> vec4<f32> {
    let v = b[index];
    if (PROLOGUE) {
        return max(v * affine[k] + vec4<f32>(affine[P.k + k]), vec4<f32>(0.0));
    }
    return v;
}

// Lane layout: each 8-wide row of the workgroup (one SIMD batch on CPU drivers) covers 8 rows
// of C (8 x `rb` rows per workgroup, rb = 1, 2, 4 or 8: no idle rows when m is 8, 16 or 32)
// and 8 column pairs; the rest of the workgroup's rows cover further column pairs. With
// `fold` the column pairs of all images form one index, so small images (a DenseNet's 4x4
// and 2x2 maps: 2 and 1 pairs per image) fill the lanes instead of leaving 6 or 7 of 8 idle;
// z then counts only the K splits. Shared with conv1x1_subgroup.wgsl (except `across`).
@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let k4 = P.k / 4u;
    let lda4 = P.lda / 4u;
    let n4 = P.n / 4u;
    let pairs = (n4 + 1u) / 2u;
    var row0 = (wid.y * P.rb + lid.y % P.rb) * 8u;
    var pair = (wid.x * (8u / P.rb) + lid.y / P.rb) * 8u + lid.x;
    if (P.across != 0u) {
        // Rows across the 8-wide rows of the workgroup, column pairs down it: for products
        // with fewer than 8 column pairs in all (1x1 convolutions on 2x2 maps), where the
        // layout above would leave most lanes of every SIMD batch idle; here whole batches
        // are idle instead, and return at once.
        row0 = (wid.y * 8u + lid.x) * 8u;
        pair = wid.x * 8u + lid.y;
    }
    var img = wid.z % P.imgs;
    var split = wid.z / P.imgs;
    var cpair = pair;
    if (P.fold != 0u) {
        img = pair / pairs;
        cpair = pair % pairs;
        split = wid.z;
    }
    let cq0 = cpair * 2u;
    if (row0 >= P.m || cq0 >= n4 || img >= P.imgs) {
        return;
    }
    let bb = (img * P.b_batch + P.b_off) / 4u;
    let cb = (img * P.c_batch + P.c_off + split * P.split_stride) / 4u;
    var kq_begin = 0u;
    var kq_end = k4;
    if (P.k_split > 0u) {
        kq_begin = split * (P.k_split / 4u);
        kq_end = min(k4, kq_begin + P.k_split / 4u);
    }
    let cq1 = min(cq0 + 1u, n4 - 1u);
    let ab = img * (P.a_batch / 4u);
    var arow: array<u32, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        arow[i] = ab + min(row0 + i, P.m - 1u) * lda4;
    }
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        acc0[i] = vec4<f32>(0.0);
        acc1[i] = vec4<f32>(0.0);
    }
    for (var kq = kq_begin; kq < kq_end; kq = kq + 1u) {
        let k0 = kq * 4u;
        let kb = bb + k0 * n4;
        let b00 = load_b(kb + cq0, k0);
        let b10 = load_b(kb + n4 + cq0, k0 + 1u);
        let b20 = load_b(kb + 2u * n4 + cq0, k0 + 2u);
        let b30 = load_b(kb + 3u * n4 + cq0, k0 + 3u);
        let b01 = load_b(kb + cq1, k0);
        let b11 = load_b(kb + n4 + cq1, k0 + 1u);
        let b21 = load_b(kb + 2u * n4 + cq1, k0 + 2u);
        let b31 = load_b(kb + 3u * n4 + cq1, k0 + 3u);
        for (var i = 0u; i < 8u; i = i + 1u) {
            let av = a[arow[i] + kq];
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
    }
    let has1 = cq0 + 1u < n4;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let r = row0 + i;
        if (r < P.m) {
            let bv = vec4<f32>(select(0.0, bias[r], split == 0u));
            c[cb + r * n4 + cq0] = acc0[i] + bv;
            if (has1) {
                c[cb + r * n4 + cq0 + 1u] = acc1[i] + bv;
            }
        }
    }
}

// Split-K reduction: out[img][r, q] = sum over s of partial[s][img][r, q] (vec4 q), the output
// placed by c_batch / c_off as `main` places it; the partials (bound as `a`) are contiguous
// [splits, imgs, m, n].
@compute @workgroup_size(64)
fn splitk_sum(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let n4 = P.n / 4u;
    let per_img = P.m * n4;
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= P.imgs * per_img) {
        return;
    }
    let img = i / per_img;
    let rq = i % per_img;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < P.splits; s = s + 1u) {
        acc = acc + a[s * (P.split_stride / 4u) + i];
    }
    c[(img * P.c_batch + P.c_off) / 4u + rq] = acc;
}
