//! Label-free foreground targets for the policy's warm start (in place of the paper's
//! Carvana-pretrained TernausNet): each image's grey level is blurred (Gaussian, sigma =
//! size / 64, at least 1 pixel) and split at its Otsu threshold; the brighter side is the
//! foreground. Targets are soft (`lo` / `hi`, e.g. 0.1 / 0.9) so that the warm-started policy's
//! logits stay small enough for the policy gradient to move the mask's edges.
//! Blur and threshold come from `imageproc`.

use image::{GrayImage, Luma};

use crate::data::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::Normalize;

/// The foreground of one grey image (`size * size` values in [0, 1]): 1 inside, 0 outside.
pub fn otsu_foreground(grey: &[f32], size: usize) -> Vec<f32> {
    let s = size as u32;
    let img = GrayImage::from_fn(s, s, |x, y| {
        let v = grey[y as usize * size + x as usize];
        Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    let sigma = (size as f32 / 64.0).max(1.0);
    let blurred = imageproc::filter::gaussian_blur_f32(&img, sigma);
    let level = imageproc::contrast::otsu_level(&blurred);
    blurred
        .pixels()
        .map(|p| (p.0[0] > level) as u8 as f32)
        .collect()
}

/// Soft foreground targets [n, 1, s, s] for a batch of preprocessed images [n, 3, s, s]
/// (channel 0 is un-normalised back to [0, 1] first).
pub fn foreground_targets(
    images: &[f32],
    n: usize,
    size: usize,
    normalize: Normalize,
    lo: f32,
    hi: f32,
) -> Vec<f32> {
    let plane = size * size;
    let mut out = Vec::with_capacity(n * plane);
    for i in 0..n {
        let c0 = &images[i * 3 * plane..i * 3 * plane + plane];
        let grey: Vec<f32> = c0
            .iter()
            .map(|&v| match normalize {
                Normalize::Imagenet => v * IMAGENET_STD[0] + IMAGENET_MEAN[0],
                Normalize::None => v,
            })
            .collect();
        out.extend(
            otsu_foreground(&grey, size)
                .into_iter()
                .map(|f| if f > 0.5 { hi } else { lo }),
        );
    }
    out
}
