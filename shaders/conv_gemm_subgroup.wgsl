// The weight-gradient GEMM of conv_gemm.wgsl (`wgrad_gemm`: same parameters, bindings and
// 8 output channels x 8 taps per invocation) with the output-gradient rows shared through
// subgroup shuffles, as conv1x1_subgroup.wgsl does for the forward GEMM: lane x of each 8-wide
// row of the workgroup loads output channel co0 + x and the others read it by subgroupShuffle.
// Needs the SUBGROUP feature; falls back to per-lane loads where subgroups do not line up with
// the workgroup's rows. A 1-D workgroup of 64 laid out as 8 x 8 (subgroup built-ins need 1-D
// workgroups), with the grid of conv_gemm.wgsl's @workgroup_size(8, 8).

//#include gemm8x8

struct Params {
    imgs: u32, img0: u32, ci: u32, h: u32,        // images in this call, first image, input
    w: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, kpad: u32,    // kpad: ci*kh*kw rounded up to 4
    src_c_total: u32, src_c_off: u32, co: u32, quads_per_chunk: u32,
    dy_c_total: u32, dy_c_off: u32, chunk0: u32, _p0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;

// ---- weight gradient GEMM, rows of the output gradient shared through the subgroup ----
@group(0) @binding(1) var<storage, read_write> part_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> cols4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn wgrad_gemm(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) sid: u32,
              @builtin(subgroup_size) sgs: u32) {
    let lx = li % 8u;
    let ly = li / 8u;
    let n4 = P.kpad / 4u;
    let kq0 = (wid.x * 8u + lx) * 2u;
    let co0 = (wid.y * 8u + ly) * 8u;
    // No early return: every lane takes part in the shuffles.
    let in_range = kq0 < n4 && co0 < P.co;
    let kqa = min(kq0, n4 - 1u);
    let kq1 = min(kq0 + 1u, n4 - 1u);
    let ohw = P.oh * P.ow;
    let q_img = ohw / 4u;
    let total = P.imgs * q_img;
    let q0 = wid.z * P.quads_per_chunk;
    let q1 = min(total, q0 + P.quads_per_chunk);
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    var corow: array<u32, 8>;
    for (var i = 0u; i < 8u; i = i + 1u) {
        acc0[i] = vec4<f32>(0.0);
        acc1[i] = vec4<f32>(0.0);
        corow[i] = P.dy_c_off + min(co0 + i, P.co - 1u);
    }
    let lane = li % max(sgs, 1u);
    let base = lane - lx;
    let shared_rows = subgroupAll(sgs % 8u == 0u && sid == lane);
    let my_row = P.dy_c_off + min(co0 + lx, P.co - 1u);
    // Walk (image, quad) pairs without a division per step.
    var img = q0 / max(q_img, 1u);
    var pq = q0 - img * q_img;
    for (var q = q0; q < q1; q = q + 1u) {
        let dbase = (P.img0 + img) * P.dy_c_total;
        let cb = (img * ohw + pq * 4u) * n4;
        let b00 = cols4[cb + kqa];
        let b10 = cols4[cb + n4 + kqa];
        let b20 = cols4[cb + 2u * n4 + kqa];
        let b30 = cols4[cb + 3u * n4 + kqa];
        let mine = dy4[(dbase + my_row) * q_img + pq];
        let b01 = cols4[cb + kq1];
        let b11 = cols4[cb + n4 + kq1];
        let b21 = cols4[cb + 2u * n4 + kq1];
        let b31 = cols4[cb + 3u * n4 + kq1];
        for (var i = 0u; i < 8u; i = i + 1u) {
            var av: vec4<f32>;
            if (shared_rows) {
                av = subgroupShuffle(mine, base + i);
            } else {
                av = dy4[(dbase + corow[i]) * q_img + pq];
            }
            acc0[i] = rank4_update(acc0[i], av, b00, b10, b20, b30);
            acc1[i] = rank4_update(acc1[i], av, b01, b11, b21, b31);
        }
        pq = pq + 1u;
        if (pq == q_img) {
            pq = 0u;
            img = img + 1u;
        }
    }
    if (!in_range) {
        return;
    }
    let obase = (P.chunk0 + wid.z) * P.co * n4;
    let has1 = kq0 + 1u < n4;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let co = co0 + i;
        if (co < P.co) {
            part_out[obase + co * n4 + kq0] = acc0[i];
            if (has1) {
                part_out[obase + co * n4 + kq0 + 1u] = acc1[i];
            }
        }
    }
}
