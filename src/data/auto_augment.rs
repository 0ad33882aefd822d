//! TrivialAugmentWide (Müller & Hutter 2021) and RandAugment (Cubuk et al. 2020) as
//! torchvision.transforms.v2 defines them for uint8 tensors: the same 14 operations, the same
//! magnitude tables and the same arithmetic (truncating casts, PIL's equalize, the 3x3
//! sharpness kernel, nearest-neighbour warps with black fill). Checked operation by operation
//! against torchvision on fixed images (`tests/fixtures/make_augment_fixtures.py`).
//!
//! The operations run on 8-bit RGB images, as torchvision's do on the PIL or uint8 images of a
//! standard pipeline: a normalised batch is mapped back to [0, 255], rounded, augmented and
//! normalised again. The warps use `imageproc`'s `warp_with` with torchvision's inverse
//! affine matrix and its grid convention (`align_corners=False`, round half to even).

use image::{Rgb, RgbImage};
use imageproc::geometric_transformations::{warp_with, Interpolation};
use rand::{rngs::StdRng, Rng};

use super::preprocess::{Normalize, IMAGENET_MEAN, IMAGENET_STD};

/// One operation of the augmentation spaces, in torchvision's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AugOp {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

impl AugOp {
    /// Every operation, in the order of torchvision's `_AUGMENTATION_SPACE` (the order of the
    /// uniform draw).
    pub const ALL: [AugOp; 14] = [
        AugOp::Identity,
        AugOp::ShearX,
        AugOp::ShearY,
        AugOp::TranslateX,
        AugOp::TranslateY,
        AugOp::Rotate,
        AugOp::Brightness,
        AugOp::Color,
        AugOp::Contrast,
        AugOp::Sharpness,
        AugOp::Posterize,
        AugOp::Solarize,
        AugOp::AutoContrast,
        AugOp::Equalize,
    ];

    /// torchvision's name of the operation.
    pub fn name(self) -> &'static str {
        match self {
            AugOp::Identity => "Identity",
            AugOp::ShearX => "ShearX",
            AugOp::ShearY => "ShearY",
            AugOp::TranslateX => "TranslateX",
            AugOp::TranslateY => "TranslateY",
            AugOp::Rotate => "Rotate",
            AugOp::Brightness => "Brightness",
            AugOp::Color => "Color",
            AugOp::Contrast => "Contrast",
            AugOp::Sharpness => "Sharpness",
            AugOp::Posterize => "Posterize",
            AugOp::Solarize => "Solarize",
            AugOp::AutoContrast => "AutoContrast",
            AugOp::Equalize => "Equalize",
        }
    }
}

/// Which of the two policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoAugment {
    /// TrivialAugmentWide: one operation per image, its magnitude bin uniform over 31.
    TrivialWide,
    /// RandAugment: `ops` operations per image at magnitude bin `magnitude` of 31 (defaults
    /// 2 and 9).
    Rand { ops: usize, magnitude: usize },
}

/// Magnitude bins of both policies (torchvision's `num_magnitude_bins` default).
pub const BINS: usize = 31;

/// `torch.linspace(start, end, steps)` in float32: the first half from the start, the
/// second from the end, as ATen computes it.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

impl AutoAugment {
    /// The operation's magnitude table and whether its sign is drawn (torchvision's
    /// `_AUGMENTATION_SPACE`, for an image of `height` x `width`); `None` for operations
    /// without a magnitude.
    pub fn magnitudes(self, op: AugOp, height: usize, width: usize) -> Option<(Vec<f32>, bool)> {
        let n = BINS;
        let wide = self == AutoAugment::TrivialWide;
        let (hi_shear, hi_rot, hi_colour, post_div) = if wide {
            (0.99, 135.0, 0.99, 6.0)
        } else {
            (0.3, 30.0, 0.9, 4.0)
        };
        let translate = |side: usize| {
            if wide {
                32.0
            } else {
                150.0 / 331.0 * side as f32
            }
        };
        Some(match op {
            AugOp::Identity | AugOp::AutoContrast | AugOp::Equalize => return None,
            AugOp::ShearX | AugOp::ShearY => (linspace(0.0, hi_shear, n), true),
            AugOp::TranslateX => (linspace(0.0, translate(width), n), true),
            AugOp::TranslateY => (linspace(0.0, translate(height), n), true),
            AugOp::Rotate => (linspace(0.0, hi_rot, n), true),
            AugOp::Brightness | AugOp::Color | AugOp::Contrast | AugOp::Sharpness => {
                (linspace(0.0, hi_colour, n), true)
            }
            // 8 - round(i / ((n - 1) / d)), rounding half to even as torch.round does.
            AugOp::Posterize => (
                (0..n)
                    .map(|i| 8.0 - (i as f32 / ((n - 1) as f32 / post_div)).round_ties_even())
                    .collect(),
                false,
            ),
            AugOp::Solarize => (linspace(1.0, 0.0, n), false),
        })
    }

    /// Draws the operations and magnitudes for one image, as the policy's `forward` does:
    /// the operation uniform over the 14, the bin uniform (TrivialAugmentWide) or fixed
    /// (RandAugment), the sign negative with probability 1/2 for signed operations.
    pub fn draw(self, height: usize, width: usize, rng: &mut StdRng) -> Vec<(AugOp, f32)> {
        let count = match self {
            AutoAugment::TrivialWide => 1,
            AutoAugment::Rand { ops, .. } => ops,
        };
        (0..count)
            .map(|_| {
                let op = AugOp::ALL[rng.random_range(0..AugOp::ALL.len())];
                let magnitude = match self.magnitudes(op, height, width) {
                    None => 0.0,
                    Some((table, signed)) => {
                        let bin = match self {
                            AutoAugment::TrivialWide => rng.random_range(0..BINS),
                            AutoAugment::Rand { magnitude, .. } => magnitude.min(BINS - 1),
                        };
                        let m = table[bin];
                        if signed && rng.random_range(0.0f32..1.0) <= 0.5 {
                            -m
                        } else {
                            m
                        }
                    }
                };
                (op, magnitude)
            })
            .collect()
    }
}

/// torchvision's `_get_inverse_affine_matrix` (float64, as Python computes it): the map from
/// output to input coordinates relative to the image centre, for a rotation by `angle`
/// degrees, translation, unit scale and shears (degrees) about `center` (centre-relative).
fn inverse_affine(center: [f64; 2], angle: f64, translate: [f64; 2], shear: [f64; 2]) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear[0].to_radians(), shear[1].to_radians());
    let (cx, cy) = (center[0], center[1]);
    let (tx, ty) = (translate[0], translate[1]);
    let a = (rot - sy).cos() / sy.cos();
    let b = -(a * sx.tan() + rot.sin());
    let c = (rot - sy).sin() / sy.cos();
    let d = rot.cos() - c * sx.tan();
    let mut m = [d, -b, 0.0, -c, a, 0.0];
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty);
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty);
    m
}

/// Nearest-neighbour warp with black fill, as torchvision's tensor `affine`: output pixel
/// centres relative to the image centre, mapped by `m` (float32, normalised by half the size
/// as `_affine_grid` does), un-normalised as `grid_sample(align_corners=False)` and rounded
/// half to even.
fn warp(img: &RgbImage, m: [f64; 6]) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let theta = m.map(|v| v as f32);
    let (hw, hh) = (0.5 * w, 0.5 * h);
    let r = [
        theta[0] / hw,
        theta[1] / hw,
        theta[2] / hw,
        theta[3] / hh,
        theta[4] / hh,
        theta[5] / hh,
    ];
    warp_with(
        img,
        move |x, y| {
            let bx = x + (1.0 - w) * 0.5;
            let by = y + (1.0 - h) * 0.5;
            let gx = bx * r[0] + by * r[1] + r[2];
            let gy = bx * r[3] + by * r[4] + r[5];
            let ix = ((gx + 1.0) * w - 1.0) / 2.0;
            let iy = ((gy + 1.0) * h - 1.0) / 2.0;
            // imageproc's nearest rounds half up; pass the already-rounded index.
            (ix.round_ties_even(), iy.round_ties_even())
        },
        Interpolation::Nearest,
        Rgb([0, 0, 0]),
    )
}

/// Grey level of each pixel as torchvision's `_rgb_to_grayscale_image` (float32,
/// `r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)`: ATen's `add` with `alpha` is a
/// fused multiply-add), floored as its uint8 colour operations do.
fn grey(img: &RgbImage) -> Vec<f32> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(f32::from);
            b.mul_add(0.114, g.mul_add(0.587, r * 0.2989)).floor()
        })
        .collect()
}

/// A factor as torchvision passes it: `1.0 + magnitude` and `1.0 - factor` computed in
/// float64 (Python floats), each rounded once to float32.
fn factor(magnitude: f32) -> (f32, f32) {
    let f = 1.0 + magnitude as f64;
    (f as f32, (1.0 - f) as f32)
}

/// `_blend` for uint8: `x.mul(ratio).add_(other, alpha=1 - ratio)`, clamped to [0, 255],
/// truncated.
fn blend(x: u8, other: f32, (ratio, rest): (f32, f32)) -> u8 {
    other.mul_add(rest, f32::from(x) * ratio).clamp(0.0, 255.0) as u8
}

/// Applies one operation with its (signed) magnitude, as torchvision's
/// `_apply_image_or_video_transform` on a uint8 image.
pub fn apply(img: &RgbImage, op: AugOp, magnitude: f32) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let m = magnitude as f64;
    match op {
        AugOp::Identity => img.clone(),
        // Shears about the top-left corner (centre [0, 0]), angle atan(magnitude).
        AugOp::ShearX | AugOp::ShearY => {
            let angle = m.atan().to_degrees();
            let shear = if op == AugOp::ShearX {
                [angle, 0.0]
            } else {
                [0.0, angle]
            };
            warp(
                img,
                inverse_affine([-w * 0.5, -h * 0.5], 0.0, [0.0, 0.0], shear),
            )
        }
        // Whole pixels, truncated toward zero (`int(magnitude)`).
        AugOp::TranslateX => warp(
            img,
            inverse_affine([0.0, 0.0], 0.0, [m.trunc(), 0.0], [0.0, 0.0]),
        ),
        AugOp::TranslateY => warp(
            img,
            inverse_affine([0.0, 0.0], 0.0, [0.0, m.trunc()], [0.0, 0.0]),
        ),
        // Counter-clockwise by `magnitude` degrees about the centre (`rotate` passes -angle
        // to the affine matrix).
        AugOp::Rotate => warp(img, inverse_affine([0.0, 0.0], -m, [0.0, 0.0], [0.0, 0.0])),
        AugOp::Brightness => {
            let (f, _) = factor(magnitude);
            map_pixels(img, |_, v| (f32::from(v) * f).clamp(0.0, 255.0) as u8)
        }
        AugOp::Color => {
            let g = grey(img);
            map_pixels(img, |i, v| blend(v, g[i], factor(magnitude)))
        }
        AugOp::Contrast => {
            let g = grey(img);
            let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len().max(1) as f64;
            map_pixels(img, |_, v| blend(v, mean as f32, factor(magnitude)))
        }
        AugOp::Sharpness => sharpness(img, factor(magnitude).1),
        AugOp::Posterize => {
            let bits = magnitude as u32;
            if bits >= 8 {
                return img.clone();
            }
            let mask = (((1u32 << bits) - 1) << (8 - bits)) as u8;
            map_pixels(img, |_, v| v & mask)
        }
        AugOp::Solarize => {
            let threshold = 255.0 * magnitude;
            map_pixels(img, |_, v| {
                if f32::from(v) >= threshold {
                    255 - v
                } else {
                    v
                }
            })
        }
        AugOp::AutoContrast => per_channel(img, |plane| {
            let (lo, hi) = plane
                .iter()
                .fold((255u8, 0u8), |(l, h), &v| (l.min(v), h.max(v)));
            if lo == hi {
                return;
            }
            let inv_scale = (f32::from(hi) - f32::from(lo)) * (1.0 / 255.0);
            for v in plane.iter_mut() {
                *v = ((f32::from(*v) - f32::from(lo)) / inv_scale).clamp(0.0, 255.0) as u8;
            }
        }),
        AugOp::Equalize => per_channel(img, equalize_plane),
    }
}

/// Maps every channel value; `f` gets the pixel's index and the value.
fn map_pixels(img: &RgbImage, f: impl Fn(usize, u8) -> u8) -> RgbImage {
    let mut out = img.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        p.0 = p.0.map(|v| f(i, v));
    }
    out
}

/// Runs `f` on each channel's plane of values.
fn per_channel(img: &RgbImage, f: impl Fn(&mut [u8])) -> RgbImage {
    let mut out = img.clone();
    let n = (img.width() * img.height()) as usize;
    for c in 0..3 {
        let mut plane: Vec<u8> = img.pixels().map(|p| p.0[c]).collect();
        f(&mut plane[..n]);
        for (p, v) in out.pixels_mut().zip(plane) {
            p.0[c] = v;
        }
    }
    out
}

/// PIL's histogram equalisation, as torchvision's `equalize_image`: the lookup table
/// (cum[k-1] + step / 2) / step with step = (pixels not at the top level) / 255; unchanged
/// when step is 0.
fn equalize_plane(plane: &mut [u8]) {
    let mut hist = [0u64; 256];
    for &v in plane.iter() {
        hist[v as usize] += 1;
    }
    let top = (0..256).rev().find(|&k| hist[k] > 0).unwrap_or(0);
    let step = (plane.len() as u64 - hist[top]) / 255;
    if step == 0 {
        return;
    }
    let mut lut = [0u8; 256];
    let mut cum = 0u64;
    for k in 1..256 {
        cum += hist[k - 1];
        lut[k] = ((cum + step / 2) / step).min(255) as u8;
    }
    for v in plane.iter_mut() {
        *v = lut[*v as usize];
    }
}

/// torchvision's `adjust_sharpness_image`: the interior blended with its blur by the kernel
/// [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (rounded half to even) with weight `rest` = 1 -
/// factor; the border rows and columns keep their values.
fn sharpness(img: &RgbImage, rest: f32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w <= 2 || h <= 2 {
        return img.clone();
    }
    let mut out = img.clone();
    let (a, b) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let mut blur = 0.0f32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let k = if dy == 1 && dx == 1 { b } else { a };
                        blur += k * f32::from(
                            img.get_pixel((x + dx - 1) as u32, (y + dy - 1) as u32).0[c],
                        );
                    }
                }
                let v = f32::from(img.get_pixel(x as u32, y as u32).0[c]);
                let blur = blur.round_ties_even();
                // `view.add_(blurred - view, alpha=1 - factor)`: a fused multiply-add.
                let o = (blur - v).mul_add(rest, v);
                out.get_pixel_mut(x as u32, y as u32).0[c] = o.clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Applies the policy to every image of a normalised batch [n, 3, s, s] in place (each image
/// its own draw): values back to [0, 1], rounded to 8 bits, augmented, normalised again.
pub fn augment_batch(
    images: &mut [f32],
    n: usize,
    size: usize,
    normalize: Normalize,
    policy: AutoAugment,
    rng: &mut StdRng,
) {
    let plane = size * size;
    let (mean, std) = match normalize {
        Normalize::Imagenet => (IMAGENET_MEAN, IMAGENET_STD),
        Normalize::None => ([0.0; 3], [1.0; 3]),
    };
    for i in 0..n {
        let chw = &mut images[i * 3 * plane..(i + 1) * 3 * plane];
        let mut img = RgbImage::new(size as u32, size as u32);
        for (k, p) in img.pixels_mut().enumerate() {
            for c in 0..3 {
                let v = chw[c * plane + k] * std[c] + mean[c];
                p.0[c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        for (op, magnitude) in policy.draw(size, size, rng) {
            img = apply(&img, op, magnitude);
        }
        for (k, p) in img.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + k] = (f32::from(p.0[c]) / 255.0 - mean[c]) / std[c];
            }
        }
    }
}
