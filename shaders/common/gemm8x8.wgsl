// Shared by the vec4 GEMM kernels (matmul_vec4, conv1x1, conv_gemm and their subgroup
// variants): one row of their 8 x 8 register tile's rank-4 update. `acc` holds four output
// columns of one row; `av` four consecutive entries of that row of A; b0..b3 the matching
// four rows of B (four columns each): acc + av.x * b0 + av.y * b1 + av.z * b2 + av.w * b3.
fn rank4_update(acc: vec4<f32>, av: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    var r = fma(vec4<f32>(av.x), b0, acc);
    r = fma(vec4<f32>(av.y), b1, r);
    r = fma(vec4<f32>(av.z), b2, r);
    return fma(vec4<f32>(av.w), b3, r);
}
