// The batched GEMM of conv1x1.wgsl (same parameters, bindings and blocking: 8 rows x 8
// columns per invocation, vec4 loads), with the rows of A shared through subgroup shuffles
// (`main`), or both A's rows and B's quads (`main2d`, below).
// In conv1x1.wgsl every invocation of an 8-wide row of the workgroup loads the same 8 vec4 of
// A per step of 4 along K; CPU drivers run such a row as one SIMD batch and load each of
// those values once per lane. Here lane x of the row loads only row row0 + x and the others
// read it with subgroupShuffle, which on a CPU driver is a register permute: a quarter of the
// loads per multiply-add instead of a half. Needs the SUBGROUP feature; where the subgroups
// do not line up with workgroup rows (size not a multiple of 8, or another invocation order)
// the kernel detects it and loads A per lane, so it is correct on any adapter.
// (No `enable subgroups;`: naga 30 accepts the subgroup built-ins without it and rejects the
// directive; wgpu checks the SUBGROUP feature when the pipeline is built.)

//#include gemm8x8

struct Params {
    m: u32, n: u32, k: u32, lda: u32,
    b_batch: u32, b_off: u32, c_batch: u32, c_off: u32,
    k_split: u32, imgs: u32, split_stride: u32, splits: u32,  // split-K (conv1x1.wgsl)
    a_batch: u32, rb: u32, fold: u32, across: u32,  // A per image; lanes (conv1x1.wgsl; not
                                                    // across; rb: 16-row blocks in main2d)
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

// A lane's 8 x 8 tile plus bias into C: rows row0.. (those < m) at quads cq0 and, where it
// exists, cq0 + 1 (`main` and `main2d` lay lanes out differently but store alike).
fn store_tile(cb: u32, row0: u32, cq0: u32, n4: u32,
              acc0: ptr<function, array<vec4<f32>, 8>>, acc1: ptr<function, array<vec4<f32>, 8>>) {
    let has1 = cq0 + 1u < n4;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let r = row0 + i;
        if (r < P.m) {
            let bv = vec4<f32>(bias[r]);
            c[cb + r * n4 + cq0] = (*acc0)[i] + bv;
            if (has1) {
                c[cb + r * n4 + cq0 + 1u] = (*acc1)[i] + bv;
            }
        }
    }
}

// A 1-D workgroup of 64 laid out as 8 x 8 (subgroup built-ins need 1-D workgroups): the same
// grid and invocation order as conv1x1.wgsl's @workgroup_size(8, 8).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) sid: u32,
        @builtin(subgroup_size) sgs: u32) {
    let lx = li % 8u;
    let ly = li / 8u;
    let k4 = P.k / 4u;
    let lda4 = P.lda / 4u;
    let n4 = P.n / 4u;
    // Rows and column pairs as conv1x1.wgsl lays them out (`rb`, `fold`).
    let pairs = (n4 + 1u) / 2u;
    let row0 = (wid.y * P.rb + ly % P.rb) * 8u;
    let pair = (wid.x * (8u / P.rb) + ly / P.rb) * 8u + lx;
    var img = wid.z;
    var cpair = pair;
    if (P.fold != 0u) {
        img = pair / pairs;
        cpair = pair % pairs;
    }
    let cq0 = cpair * 2u;
    // No early return: every lane takes part in the shuffles. Lanes past the matrix compute
    // on clamped indices and store nothing. Lanes of one 8-wide row share row0.
    let in_range = row0 < P.m && cq0 < n4 && img < P.imgs;
    img = min(img, P.imgs - 1u);
    let bb = (img * P.b_batch + P.b_off) / 4u;
    let cb = (img * P.c_batch + P.c_off) / 4u;
    let cqa = min(cq0, n4 - 1u);
    let cq1 = min(cq0 + 1u, n4 - 1u);
    // The lane that holds row row0 + i is base + i when subgroups are consecutive
    // invocations (x fastest) and a multiple of 8 wide.
    let lane = li % max(sgs, 1u);
    let base = lane - lx;
    // With one A per image and images folded into columns, a row of lanes may span two
    // images; then (anywhere in the subgroup) A is loaded per lane.
    let same_a = P.a_batch == 0u || subgroupShuffle(img, base) == img;
    let shared_rows = subgroupAll(sgs % 8u == 0u && sid == lane && same_a);
    let ab = img * (P.a_batch / 4u);
    let my_row = ab + min(row0 + lx, P.m - 1u) * lda4;
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
    for (var kq = 0u; kq < k4; kq = kq + 1u) {
        let k0 = kq * 4u;
        let kb = bb + k0 * n4;
        let b00 = load_b(kb + cqa, k0);
        let b10 = load_b(kb + n4 + cqa, k0 + 1u);
        let b20 = load_b(kb + 2u * n4 + cqa, k0 + 2u);
        let b30 = load_b(kb + 3u * n4 + cqa, k0 + 3u);
        let b01 = load_b(kb + cq1, k0);
        let b11 = load_b(kb + n4 + cq1, k0 + 1u);
        let b21 = load_b(kb + 2u * n4 + cq1, k0 + 2u);
        let b31 = load_b(kb + 3u * n4 + cq1, k0 + 3u);
        let mine = a[my_row + kq];
        for (var i = 0u; i < 8u; i = i + 1u) {
            var av: vec4<f32>;
            if (shared_rows) {
                av = subgroupShuffle(mine, base + i);
            } else {
                av = a[arow[i] + kq];
            }
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
    }
    if (!in_range) {
        return;
    }
    store_tile(cb, row0, cq0, n4, &acc0, &acc1);
}

// Both operands shared (`rb` counts 16-row blocks here): lane L of each 8-lane SIMD batch
// computes 8 rows (row half L / 4) x column pair L % 4 of a 16-row x 4-pair block of C, the
// same 8 x 8 register tile as `main`. Per step of 4 along K the batch needs 16 rows of A and
// 4 x 8 quads of B; each lane loads two of those rows and four of those quads (its pair's
// quad L / 4 at the 4 K rows) and reads the rest with subgroupShuffle: 6 vec4 loads per lane
// instead of `main`'s 9, for 8 more vec4 shuffles. On lavapipe every load whose address
// differs across lanes is a loop over the lanes, and a shuffle costs about half a load, so
// it breaks even there (benches/NOTES.md, session 6); measured per shape class. Lanes of one
// pair index share img, so folded images keep B shared; A falls back to per-lane loads where
// each image has its own A and a batch spans two images, and both operands where subgroups
// do not line up with 8-lane batches.
@compute @workgroup_size(64)
fn main2d(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_index) li: u32,
          @builtin(subgroup_invocation_id) sid: u32,
          @builtin(subgroup_size) sgs: u32) {
    let l8 = li % 8u;
    let half = l8 / 4u;
    let j = l8 % 4u;
    let batch = li / 8u;
    let k4 = P.k / 4u;
    let lda4 = P.lda / 4u;
    let n4 = P.n / 4u;
    let pairs = (n4 + 1u) / 2u;
    let rbase = (wid.y * P.rb + batch % P.rb) * 16u;
    let row0 = rbase + half * 8u;
    let pair = (wid.x * (8u / P.rb) + batch / P.rb) * 4u + j;
    var img = wid.z;
    var cpair = pair;
    if (P.fold != 0u) {
        img = pair / pairs;
        cpair = pair % pairs;
    }
    let cq0 = cpair * 2u;
    // No early return: every lane takes part in the shuffles (see `main`).
    let in_range = row0 < P.m && cq0 < n4 && img < P.imgs;
    img = min(img, P.imgs - 1u);
    let bb = (img * P.b_batch + P.b_off) / 4u;
    let cb = (img * P.c_batch + P.c_off) / 4u;
    let cqa = min(cq0, n4 - 1u);
    let cq1 = min(cq0 + 1u, n4 - 1u);
    let lane = li % max(sgs, 1u);
    let base = lane - l8;
    let lined_up = subgroupAll(sgs % 8u == 0u && sid == lane);
    // The batch's images: all one where A is shared by all images or the pairs lie in one.
    let one_img = P.a_batch == 0u || subgroupShuffle(img, base) == img;
    let shared_a = subgroupAll(lined_up && one_img);
    let ab = img * (P.a_batch / 4u);
    // Rows this lane loads for the batch: lane 2r + h holds row 8h + r (r < 4) in `lo` and
    // row 8h + 4 + r in `hi`, so row i of half h is lane 2 (i % 4) + h of lo or hi.
    let lrow = rbase + (l8 % 2u) * 8u + l8 / 2u;
    let lo_row = ab + min(lrow, P.m - 1u) * lda4;
    let hi_row = ab + min(lrow + 4u, P.m - 1u) * lda4;
    let my_q = select(cqa, cq1, half == 1u);
    let from0 = base + j;
    let from1 = base + 4u + j;
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
    for (var kq = 0u; kq < k4; kq = kq + 1u) {
        let k0 = kq * 4u;
        let kb = bb + k0 * n4;
        var b00: vec4<f32>; var b10: vec4<f32>; var b20: vec4<f32>; var b30: vec4<f32>;
        var b01: vec4<f32>; var b11: vec4<f32>; var b21: vec4<f32>; var b31: vec4<f32>;
        if (lined_up) {
            let c0 = load_b(kb + my_q, k0);
            let c1 = load_b(kb + n4 + my_q, k0 + 1u);
            let c2 = load_b(kb + 2u * n4 + my_q, k0 + 2u);
            let c3 = load_b(kb + 3u * n4 + my_q, k0 + 3u);
            b00 = subgroupShuffle(c0, from0);
            b10 = subgroupShuffle(c1, from0);
            b20 = subgroupShuffle(c2, from0);
            b30 = subgroupShuffle(c3, from0);
            b01 = subgroupShuffle(c0, from1);
            b11 = subgroupShuffle(c1, from1);
            b21 = subgroupShuffle(c2, from1);
            b31 = subgroupShuffle(c3, from1);
        } else {
            b00 = load_b(kb + cqa, k0);
            b10 = load_b(kb + n4 + cqa, k0 + 1u);
            b20 = load_b(kb + 2u * n4 + cqa, k0 + 2u);
            b30 = load_b(kb + 3u * n4 + cqa, k0 + 3u);
            b01 = load_b(kb + cq1, k0);
            b11 = load_b(kb + n4 + cq1, k0 + 1u);
            b21 = load_b(kb + 2u * n4 + cq1, k0 + 2u);
            b31 = load_b(kb + 3u * n4 + cq1, k0 + 3u);
        }
        let lo = a[lo_row + kq];
        let hi = a[hi_row + kq];
        for (var i = 0u; i < 8u; i = i + 1u) {
            var av: vec4<f32>;
            if (shared_a) {
                av = subgroupShuffle(select(lo, hi, i >= 4u), base + 2u * (i % 4u) + half);
            } else {
                av = a[arow[i] + kq];
            }
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
    }
    if (!in_range) {
        return;
    }
    store_tile(cb, row0, cq0, n4, &acc0, &acc1);
}
