//! Input-pipeline benchmark: images per second through decode + bilinear resize to 224x224 +
//! normalisation on the loader's worker threads (PNG files of 512x512 grey written to a
//! temporary folder first, smooth shading plus noise, about as compressible as MURA's), and through the synthetic generator at 224x224.
//! Compare with the training step's images/s to see that the loader keeps ahead of it.
//!
//! Run: `cargo bench --bench loader`.

use std::sync::Arc;
use std::time::Instant;

use apga_gpu::data::{DataOptions, DataSpec, Dataset, Loader, LoaderConfig, Normalize, Preprocess};

fn rate(name: &str, ds: &Dataset, workers: usize) {
    let pre = Preprocess {
        size: 224,
        normalize: Normalize::Imagenet,
    };
    let cfg = LoaderConfig {
        batch_size: 16,
        workers,
        prefetch: 2,
        ..Default::default()
    };
    let t = Instant::now();
    let mut n = 0;
    for b in Loader::new(Arc::new(ds.train.clone()), ds.synthetic, pre, cfg) {
        n += b.expect("batch").len();
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "{name:<44} workers {workers}: {n:>4} images in {dt:>6.2} s = {:>7.1} images/s",
        n as f64 / dt
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    for class in ["negative", "positive"] {
        let cdir = dir.path().join(class);
        std::fs::create_dir_all(&cdir).unwrap();
        for i in 0..96u32 {
            // Smooth anatomy-like shading plus sensor noise: compresses about as badly as a
            // real radiograph (a flat or repeating pattern would decode unrealistically fast).
            let img = image::GrayImage::from_fn(512, 512, |x, y| {
                let h = (x.wrapping_mul(73_856_093)
                    ^ y.wrapping_mul(19_349_663)
                    ^ i.wrapping_mul(83_492_791))
                    % 21;
                let v =
                    120.0 + 70.0 * ((x as f32 / 40.0).sin() * (y as f32 / 55.0).cos()) + h as f32
                        - 10.0;
                image::Luma([v.clamp(0.0, 255.0) as u8])
            });
            img.save(cdir.join(format!("{i}.png"))).unwrap();
        }
    }
    let folder = Dataset::open(
        &DataSpec::Folder(dir.path().into()),
        &DataOptions {
            val_fraction: 0.01,
            ..Default::default()
        },
    )
    .unwrap();
    let synthetic = Dataset::open(
        &DataSpec::Synthetic,
        &DataOptions {
            synthetic_size: 224,
            synthetic_train: 192,
            ..Default::default()
        },
    )
    .unwrap();
    println!(
        "input pipeline on {} CPU threads",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    for w in [1, 2] {
        rate("PNG 512x512 grey -> 224x224 (decode+resize)", &folder, w);
    }
    for w in [1, 2] {
        rate("synthetic radiographs at 224x224", &synthetic, w);
    }
}
