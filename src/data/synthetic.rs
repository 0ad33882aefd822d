//! Synthetic "radiographs": grey images with an anatomy-like structure (a bone: an elongated
//! rounded bar at a random position, angle, size and contrast, brighter at its cortical
//! edges), class evidence only inside that structure, and clutter a real radiograph has
//! outside it (a burnt-in "L" or "R" side marker, a bright rectangular label, noise,
//! vignetting). Every image comes with its ground-truth region of interest (the bone), so a
//! learned mask can be scored.
//!
//! Classes: 0 = normal; for c >= 1 the evidence is a fracture-like gap across the bone (odd c)
//! or a dark lesion-like blob inside it (even c), repeated (c + 1) / 2 times. Everything is a
//! pure function of (seed, split, index): the same seed gives the same images.
//!
//! [`Style`] makes the task harder in the ways real radiographs are (data with headroom, so a
//! baseline stays clearly below 100 %): subtle evidence (the gap or blob only attenuates the
//! bone), clutter outside the bone that looks like the evidence (splint-like bars with gaps of
//! their own, independent of the label), and an optional shortcut (a marker whose position
//! follows the label with probability p in training and is random in validation, as hospital
//! tokens in real radiographs do).

use rand::{rngs::StdRng, Rng, SeedableRng};

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticConfig {
    pub size: usize,
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    pub seed: u64,
    pub style: Style,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            size: 64,
            classes: 2,
            train: 400,
            val: 100,
            seed: 0,
            style: Style::default(),
        }
    }
}

/// How hard the task is. `Style::default()` is the classic generator (black gaps, no
/// distractors, no shortcut); `Style::headroom()` the main job's data.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Style {
    /// Share of the bone's density the evidence removes: 1 = a black gap / 0.35x blob (the
    /// classic look), 0.3 = a faint attenuation.
    pub evidence_strength: f32,
    /// Splint-like bright bars outside the bone, each with a gap like the evidence's,
    /// independent of the label.
    pub clutter: usize,
    /// Probability that the shortcut marker's position follows the label in training (0 = no
    /// marker; validation markers are always at a random class's position).
    pub shortcut: f32,
}

impl Default for Style {
    fn default() -> Self {
        Style {
            evidence_strength: 1.0,
            clutter: 0,
            shortcut: 0.0,
        }
    }
}

impl Style {
    /// The main job's data: fainter evidence (a gap that keeps 20 % of the bone's density)
    /// and two distractor bars; the quick preset's classifier converges to about 70 % on it.
    pub fn headroom() -> Style {
        Style {
            evidence_strength: 0.8,
            clutter: 2,
            shortcut: 0.0,
        }
    }
}

/// One generated image: grey values in [0, 1] and the ROI mask (1 inside the structure), both
/// `size * size`, row-major.
#[derive(Debug, Clone)]
pub struct SyntheticImage {
    pub pixels: Vec<f32>,
    pub roi: Vec<f32>,
    /// 1 where the class evidence (a gap or a blob) changed the pixel; always inside `roi`.
    pub evidence: Vec<f32>,
    /// 1 on the shortcut marker (all 0 without one); always outside `roi`.
    pub shortcut: Vec<f32>,
    pub label: usize,
}

/// Label of image `index` (balanced: cycles through the classes).
pub fn label_of(index: usize, classes: usize) -> usize {
    index % classes.max(1)
}

/// Glyph bitmaps (5 x 7) of the side markers.
const GLYPH_L: [&str; 7] = [
    "#....", "#....", "#....", "#....", "#....", "#....", "#####",
];
const GLYPH_R: [&str; 7] = [
    "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
];

struct Bone {
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
    half_len: f32,
    half_w: f32,
    contrast: f32,
}

impl Bone {
    /// Coordinates along (u) and across (v) the bone's axis.
    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            dx * self.cos + dy * self.sin,
            -dx * self.sin + dy * self.cos,
        )
    }
    /// Inside the rounded bar (a capsule).
    fn inside(&self, u: f32, v: f32) -> bool {
        let du = (u.abs() - self.half_len).max(0.0);
        du * du + v * v <= self.half_w * self.half_w
    }
}

/// Generates image `index` of `split` ("train" or "val").
pub fn generate(cfg: &SyntheticConfig, split: &str, index: usize) -> SyntheticImage {
    let split_salt: u64 = if split == "train" {
        0x7261_696e
    } else {
        0x0076_616c
    };
    let mut rng = StdRng::seed_from_u64(
        cfg.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(split_salt)
            .wrapping_add((index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)),
    );
    let s = cfg.size as f32;
    let label = label_of(index, cfg.classes);
    let bone = Bone {
        cx: s * rng.random_range(0.35..0.65),
        cy: s * rng.random_range(0.35..0.65),
        cos: 0.0,
        sin: 0.0,
        half_len: s * rng.random_range(0.25..0.36),
        half_w: s * rng.random_range(0.07..0.11),
        contrast: rng.random_range(0.45..0.8),
    };
    let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
    let bone = Bone {
        cos: angle.cos(),
        sin: angle.sin(),
        ..bone
    };
    // Evidence inside the bone: gaps (u position, tilt, width) or blobs (u, v, radius).
    let count = label.div_ceil(2);
    let mut gaps = Vec::new();
    let mut blobs = Vec::new();
    for _ in 0..count {
        let u = rng.random_range(-0.7..0.7) * bone.half_len;
        if label % 2 == 1 {
            let tilt: f32 = rng.random_range(-0.5..0.5);
            let width = (bone.half_w * rng.random_range(0.35..0.55)).max(0.8);
            gaps.push((u, tilt, width));
        } else {
            let v = rng.random_range(-0.35..0.35) * bone.half_w;
            let r = (bone.half_w * rng.random_range(0.45..0.7)).max(1.0);
            blobs.push((u, v, r));
        }
    }
    // Clutter: side marker glyph in one corner, label rectangle in another.
    let corners = [(0.06, 0.06), (0.78, 0.06), (0.06, 0.8), (0.78, 0.8)];
    let gc = rng.random_range(0..4);
    let lc = (gc + rng.random_range(1..4)) % 4;
    let glyph = if rng.random_bool(0.5) {
        &GLYPH_L
    } else {
        &GLYPH_R
    };
    let cell = (s / 40.0).max(1.0);
    let (gx, gy) = (corners[gc].0 * s, corners[gc].1 * s);
    let (lx, ly) = (corners[lc].0 * s, corners[lc].1 * s);
    let (lw, lh) = (
        s * rng.random_range(0.1..0.16),
        s * rng.random_range(0.05..0.1),
    );
    let background = rng.random_range(0.05..0.2);
    let noise = rng.random_range(0.01..0.04);
    let style = cfg.style;
    let strength = style.evidence_strength.clamp(0.0, 1.0);
    // Drawn only when the style asks for them, so the classic images stay as they were.
    let splints: Vec<(Bone, f32, f32, f32)> = (0..style.clutter)
        .map(|_| {
            let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let bar = Bone {
                cx: s * rng.random_range(0.15..0.85),
                cy: s * rng.random_range(0.15..0.85),
                cos: angle.cos(),
                sin: angle.sin(),
                half_len: s * rng.random_range(0.12..0.25),
                half_w: s * rng.random_range(0.025..0.045),
                contrast: rng.random_range(0.4..0.7),
            };
            let gap_u = rng.random_range(-0.6..0.6) * bar.half_len;
            let gap_w = (bone.half_w * rng.random_range(0.35..0.55)).max(0.8);
            // Half of the bars carry a gap, whatever the label.
            let has_gap = if rng.random_bool(0.5) { 1.0 } else { 0.0 };
            (bar, gap_u, gap_w, has_gap)
        })
        .collect();
    let marker = (style.shortcut > 0.0).then(|| {
        let k = cfg.classes.max(1);
        let follows = split == "train" && rng.random::<f32>() < style.shortcut;
        let pos = if follows {
            label
        } else {
            rng.random_range(0..k)
        };
        let side = (s / 16.0).max(2.0);
        // Marker slots along the top edge, one per class.
        let x0 = s * (0.2 + 0.6 * pos as f32 / (k.max(2) - 1) as f32) - side / 2.0;
        (x0, s * 0.03, side)
    });
    let mut pixels = vec![0f32; cfg.size * cfg.size];
    let mut roi = vec![0f32; cfg.size * cfg.size];
    let mut evidence = vec![0f32; cfg.size * cfg.size];
    let mut shortcut = vec![0f32; cfg.size * cfg.size];
    for y in 0..cfg.size {
        for x in 0..cfg.size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            // Vignetting: darker towards the corners.
            let r2 = ((fx / s - 0.5).powi(2) + (fy / s - 0.5).powi(2)) * 2.0;
            let mut v =
                background * (1.0 - 0.6 * r2) + 0.04 * ((fx * 0.13).sin() * (fy * 0.11).cos());
            let (u, w) = bone.local(fx, fy);
            if bone.inside(u, w) {
                roi[y * cfg.size + x] = 1.0;
                // Cortex brighter than the medulla.
                let edge = (w.abs() / bone.half_w).min(1.0);
                let mut b = bone.contrast * (0.75 + 0.25 * edge * edge);
                for &(gu, tilt, width) in &gaps {
                    if (u - gu - tilt * w).abs() < width * 0.5 {
                        b *= 1.0 - strength;
                        evidence[y * cfg.size + x] = 1.0;
                    }
                }
                for &(bu, bv, r) in &blobs {
                    let d2 = (u - bu).powi(2) + (w - bv).powi(2);
                    if d2 < r * r {
                        b *= 1.0 - 0.65 * strength;
                        evidence[y * cfg.size + x] = 1.0;
                    }
                }
                v += b;
            } else {
                let gxi = ((fx - gx) / cell).floor();
                let gyi = ((fy - gy) / cell).floor();
                if (0.0..5.0).contains(&gxi) && (0.0..7.0).contains(&gyi) {
                    let row = glyph[gyi as usize].as_bytes();
                    if row[gxi as usize] == b'#' {
                        v = 0.95;
                    }
                }
                if fx >= lx && fx < lx + lw && fy >= ly && fy < ly + lh {
                    v = 0.85;
                }
                for (bar, gap_u, gap_w, has_gap) in &splints {
                    let (u, w) = bar.local(fx, fy);
                    if bar.inside(u, w) {
                        let mut b = bar.contrast;
                        if (u - gap_u).abs() < gap_w * 0.5 {
                            b *= 1.0 - strength * has_gap;
                        }
                        v = v.max(background + b);
                    }
                }
                if let Some((mx, my, side)) = marker {
                    if fx >= mx && fx < mx + side && fy >= my && fy < my + side {
                        v = 1.0;
                        shortcut[y * cfg.size + x] = 1.0;
                    }
                }
            }
            v += noise * (rng.random::<f32>() * 2.0 - 1.0);
            pixels[y * cfg.size + x] = v.clamp(0.0, 1.0);
        }
    }
    SyntheticImage {
        pixels,
        roi,
        evidence,
        shortcut,
        label,
    }
}
