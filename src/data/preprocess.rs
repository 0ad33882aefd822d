//! The one preprocessing definition used by training, `predict` and `masks`: decode any
//! format the `image` crate reads (8- or 16-bit, grey or colour), replicate grey to 3 channels,
//! resize to S x S (bilinear; untouched if already S x S), scale to [0, 1], then ImageNet
//! mean/std normalisation unless disabled.

use std::path::Path;

use image::{imageops::FilterType, DynamicImage, Rgb32FImage};

use crate::error::{Error, Result};

/// ImageNet channel means and standard deviations (torchvision's).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Normalisation after scaling to [0, 1].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// (x - mean) / std with ImageNet's statistics (for ImageNet-pretrained networks).
    Imagenet,
    /// Values stay in [0, 1] (the authors' released code).
    None,
}

/// True when a JPEG's last scan (after its last start-of-scan marker FF DA) is followed by
/// the end-of-image marker FF D9. Inside entropy-coded data every FF byte is followed by 00
/// or a restart marker, so FF D9 there can only be the real end; an embedded thumbnail's
/// EOI comes before the main image's scan and does not count.
pub fn jpeg_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i + 2..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Image preprocessing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocess {
    pub size: usize,
    pub normalize: Normalize,
}

impl Preprocess {
    /// Decodes an image file. A JPEG whose entropy-coded data stops before its end-of-image
    /// marker (a truncated download or copy) is refused, as PIL refuses it: the decoder
    /// would otherwise fill the missing rows with flat grey and train on them.
    pub fn decode(path: &Path) -> Result<DynamicImage> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::decode_bytes(&bytes, path)
    }

    /// As `decode`, from the file's bytes (`path` names it in errors).
    pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
        let format = image::guess_format(bytes).ok();
        if format == Some(image::ImageFormat::Jpeg) && !jpeg_complete(bytes) {
            return Err(Error::Format {
                path: path.into(),
                detail: "truncated JPEG: the image data stops before its end-of-image marker \
                         (copy or download the file again, or skip such files with \
                         --skip-bad-images)"
                    .into(),
            });
        }
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| Error::Io {
                path: path.into(),
                source,
            })?;
        reader.decode().map_err(|e| Error::Format {
            path: path.into(),
            detail: format!("cannot decode image: {e}"),
        })
    }

    /// The image as RGB in [0, 1], resized to size x size.
    pub fn resized(&self, img: &DynamicImage) -> Rgb32FImage {
        let rgb = img.to_rgb32f();
        let s = self.size as u32;
        if rgb.width() == s && rgb.height() == s {
            rgb
        } else {
            image::imageops::resize(&rgb, s, s, FilterType::Triangle)
        }
    }

    /// CHW values [3, size, size] of a decoded image.
    pub fn tensor_values(&self, img: &DynamicImage) -> Vec<f32> {
        let rgb = self.resized(img);
        let plane = self.size * self.size;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                let v = p.0[c].clamp(0.0, 1.0);
                out[c * plane + i] = match self.normalize {
                    Normalize::Imagenet => (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
                    Normalize::None => v,
                };
            }
        }
        out
    }

    /// Decodes and preprocesses one file to [3, size, size] values.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        if self.size == 0 {
            return Err(Error::Format {
                path: path.into(),
                detail: "image size must be at least 1".into(),
            });
        }
        Ok(self.tensor_values(&Self::decode(path)?))
    }
}
