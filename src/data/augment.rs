//! Augmentations the baselines need, on host batches [n, c, s, s].

use rand::{rngs::StdRng, Rng};

/// Cutout variants (see `../shared/design/apga.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cutout {
    /// The authors' released code (the `get_random_eraser` of Yu's cutout-random-erasing,
    /// probability 1): area s ~ U(0, 1) of the image, aspect ratio r ~ U(0.3, 1/0.3),
    /// w = floor(sqrt(s / r)), h = floor(sqrt(s r)) of the image side, top-left corner uniform
    /// over the whole image, all redrawn until the rectangle fits. Drawing the corner before
    /// the fit test favours small rectangles: about 15 % of the image is erased on average.
    RandomErasing,
    /// DeVries & Taylor (2017): a square of side `side`, centre uniform over the image,
    /// clipped at the borders.
    Square { side: usize },
    /// torchvision's `RandomErasing` (Zhong et al. 2020) with its defaults: with probability
    /// 0.5, up to 10 tries of an area share ~ U(0.02, 0.33) and a log-uniform aspect ratio in
    /// (0.3, 3.3), h = round(sqrt(area * r)), w = round(sqrt(area / r)), kept if h and w are
    /// below the side, corner uniform over the positions that fit; else nothing is erased.
    Torchvision,
}

/// Erases one rectangle per image to `fill` (per channel: the erased value after
/// normalisation, black by default). Returns the rectangles (y0, x0, h, w).
pub fn cutout(
    images: &mut [f32],
    n: usize,
    channels: usize,
    size: usize,
    mode: Cutout,
    fill: [f32; 3],
    rng: &mut StdRng,
) -> Vec<(usize, usize, usize, usize)> {
    let plane = size * size;
    let mut rects = Vec::with_capacity(n);
    for i in 0..n {
        let rect = match mode {
            Cutout::RandomErasing => {
                let area = plane as f64;
                // The released loop has no bound; it ends within a few tries (a zero-area
                // rectangle always fits), so the bound only guards against a broken generator.
                let mut found = (0, 0, 0, 0);
                for _ in 0..10_000 {
                    let target = rng.random_range(0.0..1.0) * area;
                    let ratio: f64 = rng.random_range(0.3..1.0 / 0.3);
                    let w = (target / ratio).sqrt() as usize;
                    let h = (target * ratio).sqrt() as usize;
                    let x0 = rng.random_range(0..size);
                    let y0 = rng.random_range(0..size);
                    if x0 + w <= size && y0 + h <= size {
                        found = (y0, x0, h, w);
                        break;
                    }
                }
                found
            }
            Cutout::Torchvision => {
                let mut found = (0, 0, 0, 0);
                if rng.random_range(0.0..1.0) < 0.5 {
                    let (lo, hi) = (0.3f64.ln(), 3.3f64.ln());
                    for _ in 0..10 {
                        let target = plane as f64 * rng.random_range(0.02..0.33);
                        let ratio = rng.random_range(lo..hi).exp();
                        let h = (target * ratio).sqrt().round() as usize;
                        let w = (target / ratio).sqrt().round() as usize;
                        if h < size && w < size {
                            let y0 = rng.random_range(0..=size - h);
                            let x0 = rng.random_range(0..=size - w);
                            found = (y0, x0, h, w);
                            break;
                        }
                    }
                }
                found
            }
            Cutout::Square { side } => {
                let cy = rng.random_range(0..size) as isize;
                let cx = rng.random_range(0..size) as isize;
                let half = (side / 2) as isize;
                let y0 = (cy - half).clamp(0, size as isize) as usize;
                let x0 = (cx - half).clamp(0, size as isize) as usize;
                let y1 = (cy - half + side as isize).clamp(0, size as isize) as usize;
                let x1 = (cx - half + side as isize).clamp(0, size as isize) as usize;
                (y0, x0, y1 - y0, x1 - x0)
            }
        };
        let (y0, x0, h, w) = rect;
        for c in 0..channels {
            let base = (i * channels + c) * plane;
            for y in y0..y0 + h {
                images[base + y * size + x0..base + y * size + x0 + w].fill(fill[c.min(2)]);
            }
        }
        rects.push(rect);
    }
    rects
}

/// Mixup (Zhang et al. 2018) of a batch [n, c, s, s] in place: image i becomes
/// `lam * x[i] + (1 - lam) * x[perm[i]]`, one `lam` for the batch (as the reference code and
/// torchvision's `v2.MixUp`); the labels mix with the same weights.
pub fn mixup(images: &mut [f32], n: usize, channels: usize, size: usize, perm: &[usize], lam: f32) {
    let len = channels * size * size;
    let original = images[..n * len].to_vec();
    for i in 0..n {
        let (a, b) = (
            &original[i * len..(i + 1) * len],
            &original[perm[i] * len..(perm[i] + 1) * len],
        );
        for (o, (x, y)) in images[i * len..(i + 1) * len]
            .iter_mut()
            .zip(a.iter().zip(b))
        {
            *o = lam * x + (1.0 - lam) * y;
        }
    }
}

/// CutMix (Yun et al. 2019) of a batch [n, c, s, s] in place, as the reference code
/// (clovaai/CutMix-PyTorch): a box of side `s * sqrt(1 - lam)` (truncated) centred uniformly,
/// clipped at the borders, is pasted from image `perm[i]` into every image i. Returns the
/// label weight of the original image: 1 - (clipped box area) / s^2.
pub fn cutmix(
    images: &mut [f32],
    n: usize,
    channels: usize,
    size: usize,
    perm: &[usize],
    lam: f32,
    rng: &mut StdRng,
) -> (f32, (usize, usize, usize, usize)) {
    let cut = ((size as f64) * (1.0 - lam as f64).sqrt()) as isize;
    let cy = rng.random_range(0..size) as isize;
    let cx = rng.random_range(0..size) as isize;
    let clip = |v: isize| v.clamp(0, size as isize) as usize;
    let (y0, y1) = (clip(cy - cut / 2), clip(cy + cut / 2));
    let (x0, x1) = (clip(cx - cut / 2), clip(cx + cut / 2));
    let plane = size * size;
    let original = images[..n * channels * plane].to_vec();
    for (i, &j) in perm.iter().enumerate().take(n) {
        for c in 0..channels {
            let dst = (i * channels + c) * plane;
            let src = (j * channels + c) * plane;
            for y in y0..y1 {
                images[dst + y * size + x0..dst + y * size + x1]
                    .copy_from_slice(&original[src + y * size + x0..src + y * size + x1]);
            }
        }
    }
    let area = ((y1 - y0) * (x1 - x0)) as f32 / plane as f32;
    (1.0 - area, (y0, x0, y1 - y0, x1 - x0))
}
