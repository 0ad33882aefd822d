//! Seeded mutation fuzzing of every reader of user files: the safetensors reader (and the
//! load into a model), image decoding with preprocessing, and the CSV dataset reader. Over
//! 100 000 mutated inputs (bit flips, interesting bytes, length fields overwritten with
//! random integers, truncation, insertion, duplication), each must end in `Ok` or an `Err`,
//! never a panic. The seeds are fixed, so a failure reproduces; `APGA_FUZZ_ITERS` scales
//! the count (e.g. 10x for a longer local run).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use apga_gpu::data::{DataOptions, DataSpec, Dataset, Normalize, Preprocess};
use apga_gpu::models::{DenseNet, DenseNetConfig};
use apga_gpu::nn::state;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn iters(base: usize) -> usize {
    let scale: f64 = std::env::var("APGA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((base as f64) * scale).round() as usize
}

/// One to four random mutations of `seed`.
fn mutate(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0u8, 0xFF, 0x7F, 0x80, 0x01, b',', b'\n', b'"'][rng.random_range(0..8)];
            }
            2 if len >= 8 => {
                // A length or offset field: a random (often huge) little-endian integer.
                let i = rng.random_range(0..len - 7);
                let x: u64 = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => rng.random_range(0..1u64 << 32),
                    _ => rng.random_range(0..4096),
                };
                let w = [1usize, 2, 4, 8][rng.random_range(0..4)];
                v[i..i + w].copy_from_slice(&x.to_le_bytes()[..w]);
            }
            3 if len > 0 => v.truncate(rng.random_range(0..len)),
            4 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, ins);
            }
            5 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len.min(a + 64));
                let chunk = v[a..=b].to_vec();
                let at = rng.random_range(0..=len);
                v.splice(at..at, chunk);
            }
            _ if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len);
                v.drain(a..=b);
            }
            _ => v.push(rng.random()),
        }
    }
    v
}

/// Runs `f` on `n` mutations of the seeds; returns (inputs, accepted), panicking with the
/// first input that panicked (its bytes saved beside the test's temp files).
fn fuzz(
    what: &str,
    seeds: &[Vec<u8>],
    n: usize,
    seed: u64,
    mut f: impl FnMut(&[u8]) -> bool,
) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..n {
        let input = mutate(&seeds[i % seeds.len()], &mut rng);
        match catch_unwind(AssertUnwindSafe(|| f(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(e) => {
                std::panic::set_hook(hook);
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let path = std::env::temp_dir().join(format!("apga-fuzz-{what}-{i}.bin"));
                let _ = std::fs::write(&path, &input);
                panic!(
                    "{what}: input {i} panicked ({msg}); saved to {}",
                    path.display()
                );
            }
        }
    }
    std::panic::set_hook(hook);
    println!("{what}: {n} mutated inputs, {accepted} accepted, 0 panics");
    (n, accepted)
}

#[test]
fn readers_of_user_files_never_panic_on_100k_mutated_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0;
    // Safetensors: a real checkpoint of a small DenseNet (f32 weights, i64 counters) and a
    // hand-made file with f16 / bf16 / f64 tensors.
    let gpu = common::gpu();
    let net = DenseNet::new(&gpu, DenseNetConfig::new(2, &[1], 4, 2), 1).unwrap();
    let ckpt = dir.path().join("net.safetensors");
    state::save(&net, &ckpt, &[]).unwrap();
    let mixed = {
        let f16 = [0x3C00u16, 0xC000, 0x7C00, 0x0001];
        let bf16 = [0x3F80u16, 0xFF80];
        let f64s = [1.5f64, -2.0];
        safetensors::serialize(
            [
                (
                    "a",
                    safetensors::Dtype::F16,
                    vec![4],
                    bytemuck::cast_slice(&f16).to_vec(),
                ),
                (
                    "b",
                    safetensors::Dtype::BF16,
                    vec![2],
                    bytemuck::cast_slice(&bf16).to_vec(),
                ),
                (
                    "c",
                    safetensors::Dtype::F64,
                    vec![2, 1],
                    bytemuck::cast_slice(&f64s).to_vec(),
                ),
            ]
            .iter()
            .map(|(k, d, s, b)| {
                (
                    k.to_string(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            }),
            &None,
        )
        .unwrap()
    };
    let seeds = vec![std::fs::read(&ckpt).unwrap(), mixed];
    let p = Path::new("fuzz.safetensors");
    let mut loads = 0;
    let (n, _) = fuzz("safetensors", &seeds, iters(40_000), 1, |b| {
        match state::read_bytes(b, p) {
            Ok(entries) => {
                // Every 8th parsed file also goes into the model (the whole load path).
                loads += 1;
                if loads % 8 == 0 {
                    let _ = state::load_entries(&net, &entries, &Default::default());
                }
                true
            }
            Err(_) => false,
        }
    });
    total += n;
    // Images: PNG (grey 8/16-bit, RGB) and JPEG, decoded and preprocessed to 64x64.
    let mut img_seeds = Vec::new();
    let mut enc = |img: image::DynamicImage, fmt: image::ImageFormat| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        img_seeds.push(buf.into_inner());
    };
    let grey = image::GrayImage::from_fn(24, 20, |x, y| image::Luma([(x * 9 + y * 5) as u8]));
    let rgb = image::RgbImage::from_fn(20, 24, |x, y| {
        image::Rgb([(x * 11) as u8, (y * 7) as u8, 60])
    });
    let g16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(16, 16, |x, y| image::Luma([(x * 4000 + y * 300) as u16]));
    enc(grey.clone().into(), image::ImageFormat::Png);
    enc(rgb.clone().into(), image::ImageFormat::Png);
    enc(g16.into(), image::ImageFormat::Png);
    enc(rgb.into(), image::ImageFormat::Jpeg);
    enc(grey.into(), image::ImageFormat::Jpeg);
    let pre = Preprocess {
        size: 64,
        normalize: Normalize::Imagenet,
    };
    let (n, _) = fuzz(
        "image",
        &img_seeds,
        iters(40_000),
        2,
        |b| match Preprocess::decode_bytes(b, Path::new("fuzz.img")) {
            Ok(img) => {
                let v = pre.tensor_values(&img);
                assert_eq!(v.len(), 3 * 64 * 64);
                true
            }
            Err(_) => false,
        },
    );
    total += n;
    // CSV datasets: header, splits, quoted fields, class names and numeric labels.
    let img_dir = dir.path().join("csv");
    std::fs::create_dir_all(&img_dir).unwrap();
    for name in ["a.png", "b.png", "c.png"] {
        std::fs::copy(&ckpt, img_dir.join(name)).unwrap(); // existence is what the reader checks
    }
    let csv_seeds: Vec<Vec<u8>> = [
        "path,label\na.png,0\nb.png,1\nc.png,0\na.png,1\nb.png,0\nc.png,1\n",
        "a.png,normal,train\nb.png,fracture,train\nc.png,normal,val\na.png,fracture,val\n",
        "\"a.png\",\"x\"\n\nb.png,y\n\"c.png\",x,\na.png,y\nb.png,x\nc.png,y\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let csv_path = img_dir.join("list.csv");
    let spec = DataSpec::Csv(csv_path.clone());
    let opts = DataOptions {
        val_fraction: 0.3,
        ..Default::default()
    };
    let (n, _) = fuzz("csv", &csv_seeds, iters(25_000), 3, |b| {
        std::fs::write(&csv_path, b).unwrap();
        Dataset::open(&spec, &opts).is_ok()
    });
    total += n;
    assert!(
        total >= iters(105_000),
        "{total} inputs: fewer than the 100 000 the suite promises"
    );
}
