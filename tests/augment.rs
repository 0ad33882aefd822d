//! TrivialAugmentWide and RandAugment against torchvision.transforms.v2
//! (`tests/fixtures/make_augment_fixtures.py`): every operation on a colour 24x32 image and a
//! grey 32x32 one at several signed magnitudes (bit for bit), both policies' magnitude tables, and the
//! policies' draws.

use std::collections::HashMap;

use apga_gpu::data::auto_augment::{apply, augment_batch, AugOp, AutoAugment, BINS};
use apga_gpu::data::Normalize;
use image::RgbImage;
use rand::SeedableRng;

mod common;

#[derive(serde::Deserialize)]
struct Case {
    key: String,
    image: String,
    op: String,
    magnitude: f32,
}

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    tables: HashMap<String, Vec<f32>>,
}

fn fixture() -> (Fixture, HashMap<String, RgbImage>) {
    let meta: Fixture =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("augment.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(common::fixture("augment.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut images = HashMap::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::U8, "{name}");
        let (h, w) = (view.shape()[1], view.shape()[2]);
        let chw = view.data();
        let mut img = RgbImage::new(w as u32, h as u32);
        for (k, p) in img.pixels_mut().enumerate() {
            p.0 = [chw[k], chw[h * w + k], chw[2 * h * w + k]];
        }
        images.insert(name, img);
    }
    (meta, images)
}

fn op_named(name: &str) -> AugOp {
    *AugOp::ALL
        .iter()
        .find(|o| o.name() == name)
        .unwrap_or_else(|| panic!("no operation {name}"))
}

#[test]
fn every_operation_matches_torchvision() {
    let (fx, images) = fixture();
    assert_eq!(fx.cases.len(), 144);
    let mut seen = std::collections::HashSet::new();
    for case in &fx.cases {
        let op = op_named(&case.op);
        seen.insert(case.op.clone());
        let input = &images[&format!("input_{}", case.image)];
        let want = &images[&case.key];
        let got = apply(input, op, case.magnitude);
        assert_eq!(got.dimensions(), want.dimensions());
        let pixels = (want.width() * want.height()) as usize;
        let mut differ = 0usize;
        let mut worst = 0i32;
        for (g, w) in got.pixels().zip(want.pixels()) {
            let d = (0..3)
                .map(|c| (g.0[c] as i32 - w.0[c] as i32).abs())
                .max()
                .unwrap();
            if d > 0 {
                differ += 1;
                worst = worst.max(d);
            }
        }
        let what = format!(
            "{} {} magnitude {}: {differ} of {pixels} pixels differ (by up to {worst})",
            case.image, case.op, case.magnitude
        );
        // Bit for bit: the warps follow torchvision's float32 grid and round half to even,
        // the colour operations its float64 factors and fused multiply-adds.
        assert_eq!(differ, 0, "{what}");
    }
    assert_eq!(seen.len(), AugOp::ALL.len(), "every operation has a case");
}

#[test]
fn magnitude_tables_are_torchvisions() {
    let (fx, _) = fixture();
    let mut checked = 0;
    for (key, want) in &fx.tables {
        let mut parts = key.split('_');
        let policy = match parts.next().unwrap() {
            "ta" => AutoAugment::TrivialWide,
            _ => AutoAugment::Rand {
                ops: 2,
                magnitude: 9,
            },
        };
        let op = op_named(parts.next().unwrap());
        let (h, w) = parts.next().unwrap().split_once('x').unwrap();
        let (table, _) = policy
            .magnitudes(op, h.parse().unwrap(), w.parse().unwrap())
            .unwrap_or_else(|| panic!("{key}: no table"));
        assert_eq!(table.len(), BINS);
        for (i, (a, b)) in table.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{key}[{i}]: {a} vs {b}"
            );
        }
        checked += 1;
    }
    // 11 operations with a magnitude, two policies, two image sizes.
    assert_eq!(checked, 44);
}

#[test]
fn policies_draw_as_torchvision() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut per_op = HashMap::new();
    let mut negative = 0usize;
    let mut signed = 0usize;
    let draws = 28_000;
    for _ in 0..draws {
        let d = AutoAugment::TrivialWide.draw(64, 64, &mut rng);
        assert_eq!(d.len(), 1);
        let (op, m) = d[0];
        *per_op.entry(op.name()).or_insert(0usize) += 1;
        if let Some((table, true)) = AutoAugment::TrivialWide.magnitudes(op, 64, 64) {
            signed += 1;
            negative += (m < 0.0) as usize;
            assert!(
                table.iter().any(|t| (t - m.abs()).abs() < 1e-6),
                "{op:?} {m}"
            );
        }
    }
    // Uniform over 14 operations: 2000 each, 4.5 standard deviations of slack.
    for op in AugOp::ALL {
        let n = per_op[op.name()];
        assert!((1800..=2200).contains(&n), "{op:?} drawn {n} times");
    }
    let share = negative as f64 / signed as f64;
    assert!((share - 0.5).abs() < 0.02, "negative share {share}");
    // RandAugment: two operations, each at bin 9 of its table.
    let ra = AutoAugment::Rand {
        ops: 2,
        magnitude: 9,
    };
    for _ in 0..500 {
        let d = ra.draw(64, 64, &mut rng);
        assert_eq!(d.len(), 2);
        for (op, m) in d {
            match ra.magnitudes(op, 64, 64) {
                None => assert_eq!(m, 0.0),
                Some((table, _)) => assert_eq!(m.abs(), table[9], "{op:?}"),
            }
        }
    }
}

#[test]
fn batches_are_augmented_image_by_image_between_normalisations() {
    // An 8-bit grid survives the round trip through ImageNet normalisation exactly, so the
    // batch equals the operations applied to each 8-bit image with the same draws.
    let (n, s) = (3usize, 16usize);
    let (mean, std) = (
        apga_gpu::data::preprocess::IMAGENET_MEAN,
        apga_gpu::data::preprocess::IMAGENET_STD,
    );
    let plane = s * s;
    let mut raw = vec![0u8; n * 3 * plane];
    for (i, v) in raw.iter_mut().enumerate() {
        *v = ((i * 37 + i / 7) % 256) as u8;
    }
    let mut batch: Vec<f32> = raw
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / plane) % 3;
            (v as f32 / 255.0 - mean[c]) / std[c]
        })
        .collect();
    let policy = AutoAugment::Rand {
        ops: 2,
        magnitude: 9,
    };
    augment_batch(
        &mut batch,
        n,
        s,
        Normalize::Imagenet,
        policy,
        &mut rand::rngs::StdRng::seed_from_u64(9),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut changed = 0;
    for i in 0..n {
        let mut img = RgbImage::new(s as u32, s as u32);
        for (k, p) in img.pixels_mut().enumerate() {
            for c in 0..3 {
                p.0[c] = raw[(i * 3 + c) * plane + k];
            }
        }
        let before = img.clone();
        for (op, m) in policy.draw(s, s, &mut rng) {
            img = apply(&img, op, m);
        }
        changed += (img != before) as usize;
        for (k, p) in img.pixels().enumerate() {
            for c in 0..3 {
                let want = (p.0[c] as f32 / 255.0 - mean[c]) / std[c];
                let got = batch[(i * 3 + c) * plane + k];
                assert!((got - want).abs() < 1e-6, "image {i} channel {c} pixel {k}");
            }
        }
    }
    assert!(changed > 0, "no image changed");
}
