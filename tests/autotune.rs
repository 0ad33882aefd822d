//! The autotuner measures once per adapter and shape class, writes its choice to the on-disk
//! cache, and a new context (a second process) reuses it without measuring again. Its own test
//! binary, because it points APGA_CACHE_DIR at a temporary directory.

use apga_gpu::ops::{self, MatmulVariant};
use apga_gpu::{Gpu, GpuOptions, Tensor};

#[test]
fn choice_is_measured_once_cached_on_disk_and_reused() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var("APGA_CACHE_DIR", dir.path());
    let open = || {
        Gpu::new(GpuOptions {
            autotune: true,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("this test needs a GPU adapter: {e}"))
    };
    let g = open();
    let a = Tensor::from_slice(&g, &vec![0.5; 96 * 80], &[96, 80]).unwrap();
    let b = Tensor::from_slice(&g, &vec![0.25; 80 * 64], &[80, 64]).unwrap();
    let chosen = ops::matmul::chosen_variant(&a, &b, false, false).unwrap();
    let path = dir.path().join("autotune.json");
    let text = std::fs::read_to_string(&path).expect("cache file written");
    assert!(text.contains("matmul/nn/m128/n64/k128/v4"), "{text}");
    assert!(text.contains(chosen.name()), "{text}");
    let c = ops::matmul(&a, &b).unwrap().to_vec().unwrap();
    assert!(c.iter().all(|&v| (v - 10.0).abs() < 1e-4));

    // A second context reads the file: the choice comes back without measuring. Overwrite
    // the cached name with another valid variant to prove the file is what decides.
    let other = if chosen == MatmulVariant::Blocked {
        MatmulVariant::Tiled
    } else {
        MatmulVariant::Blocked
    };
    std::fs::write(&path, text.replace(chosen.name(), other.name())).unwrap();
    let g2 = open();
    let a2 = Tensor::from_slice(&g2, &vec![0.5; 96 * 80], &[96, 80]).unwrap();
    let b2 = Tensor::from_slice(&g2, &vec![0.25; 80 * 64], &[80, 64]).unwrap();
    assert_eq!(
        ops::matmul::chosen_variant(&a2, &b2, false, false).unwrap(),
        other
    );

    // A corrupt cache is ignored (reported in the log), not fatal.
    std::fs::write(&path, "{ not json").unwrap();
    let g3 = open();
    let a3 = Tensor::from_slice(&g3, &[1.0; 4], &[2, 2]).unwrap();
    assert_eq!(
        ops::matmul(&a3, &a3).unwrap().to_vec().unwrap(),
        vec![2.0; 4]
    );
}
