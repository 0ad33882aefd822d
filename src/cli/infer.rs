//! `apga-gpu predict` and `apga-gpu masks`.

use std::path::Path;

use crate::cli::{Arch, MasksArgs, PredictArgs};
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::models::{unet, DenseNet, DenseNetConfig, UNet11};
use crate::nn::state::{self, LoadOptions};
use crate::ops;
use crate::tensor::Tensor;

/// Images per forward pass.
const BATCH: usize = 8;

fn open_gpu(options: &GpuOptions) -> Result<Gpu> {
    Gpu::new(options.clone())
}

/// Loads a batch of images; unreadable ones are reported on stderr and left out.
fn load_batch<'a>(
    pre: &Preprocess,
    paths: &'a [std::path::PathBuf],
    failed: &mut usize,
) -> (Vec<&'a Path>, Vec<f32>) {
    let mut ok = Vec::new();
    let mut values = Vec::new();
    for p in paths {
        match pre.load(p) {
            Ok(v) => {
                ok.push(p.as_path());
                values.extend(v);
            }
            Err(e) => {
                eprintln!("error: {e}");
                *failed += 1;
            }
        }
    }
    (ok, values)
}

fn finish(failed: usize, total: usize) -> Result<()> {
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::Incomplete(format!(
            "{failed} of {total} images could not be processed (see above)"
        )))
    }
}

pub fn predict(options: &GpuOptions, args: &PredictArgs) -> Result<()> {
    crate::limits::check_image_size(args.image_size, false)
        .map_err(|e| Error::usage("predict", e))?;
    let gpu = open_gpu(options)?;
    crate::limits::check_batch_fits(BATCH, args.image_size, false, gpu.limits().max_buffer_size)
        .map_err(|e| Error::usage("predict", e))?;
    let k = args.num_classes;
    let config = match args.arch {
        Arch::Densenet121 => DenseNetConfig::densenet121(k),
        Arch::Densenet161 => DenseNetConfig::densenet161(k),
        Arch::Densenet169 => DenseNetConfig::densenet169(k),
        Arch::Densenet201 => DenseNetConfig::densenet201(k),
    };
    let net = DenseNet::new(&gpu, config, 0)?;
    state::load(&net, &args.classifier_weights, &LoadOptions::default())?;
    let pre = Preprocess {
        size: args.image_size,
        normalize: args.normalize,
    };
    let s = args.image_size;
    let mut failed = 0;
    for chunk in args.images.chunks(BATCH) {
        let (paths, values) = load_batch(&pre, chunk, &mut failed);
        if paths.is_empty() {
            continue;
        }
        let x = Tensor::from_slice(&gpu, &values, &[paths.len(), 3, s, s])?;
        let logits = crate::no_grad(|| net.forward(&x, false))?.to_vec()?;
        for (i, path) in paths.iter().enumerate() {
            let row = &logits[i * k..(i + 1) * k];
            if row.iter().any(|v| !v.is_finite()) {
                // Never printed as numbers: the network's output is not a prediction.
                eprintln!(
                    "error: {}: the classifier's logits are not finite ({row:?}); the weights \
                     or the image produce no usable prediction",
                    path.display()
                );
                failed += 1;
                continue;
            }
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
            let sum: f64 = exps.iter().sum();
            let probs: Vec<f32> = exps.iter().map(|e| (e / sum) as f32).collect();
            let (best, p) =
                probs.iter().enumerate().fold(
                    (0, f32::MIN),
                    |acc, (j, &p)| if p > acc.1 { (j, p) } else { acc },
                );
            if args.json {
                let line = serde_json::json!({
                    "image": path.display().to_string(),
                    "logits": row,
                    "probs": probs,
                });
                println!("{line}");
            } else {
                let ps: Vec<String> = probs.iter().map(|p| format!("{p:.4}")).collect();
                println!(
                    "{}\tclass {best}\tp {p:.4}\tprobs [{}]",
                    path.display(),
                    ps.join(", ")
                );
            }
        }
    }
    finish(failed, args.images.len())
}

/// One output name per input image: its file stem, or, where two inputs share a stem
/// (`a/x.png`, `b/x.png`, `x.jpg`), its whole path made into a name (`a_x_png`), so that no
/// output overwrites another.
pub(crate) fn output_stems(paths: &[std::path::PathBuf]) -> Vec<String> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "image".into())
    };
    let mut count = std::collections::HashMap::new();
    for p in paths {
        *count.entry(stem(p)).or_insert(0usize) += 1;
    }
    let mut used = std::collections::HashSet::new();
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = stem(p);
            let mut name = if count[&s] == 1 {
                s
            } else {
                let flat: String = p
                    .to_string_lossy()
                    .chars()
                    .map(|c| {
                        if c.is_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                flat.trim_matches('_').to_string()
            };
            if !used.insert(name.clone()) {
                // The same file given twice, or paths that flatten alike.
                name = format!("{name}_{i}");
                used.insert(name.clone());
            }
            name
        })
        .collect()
}

pub fn masks(options: &GpuOptions, args: &MasksArgs) -> Result<()> {
    let s = args.image_size;
    crate::limits::check_image_size(s, true).map_err(|e| Error::usage("masks", e))?;
    let gpu = open_gpu(options)?;
    crate::limits::check_batch_fits(1, s, true, gpu.limits().max_buffer_size)
        .map_err(|e| Error::usage("masks", e))?;
    let net = UNet11::new(&gpu, args.num_filters, 0)?;
    let opts = LoadOptions {
        aliases: unet::encoder_aliases(),
        ..Default::default()
    };
    state::load(&net, &args.segmenter_weights, &opts)?;
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        path: args.out.clone(),
        source,
    })?;
    let pre = Preprocess {
        size: s,
        normalize: args.normalize,
    };
    let mut failed = 0;
    let stems = output_stems(&args.images);
    for (path, stem) in args.images.iter().zip(stems) {
        let result = (|| -> Result<()> {
            let img = Preprocess::decode(path)?;
            let x = Tensor::from_slice(&gpu, &pre.tensor_values(&img), &[1, 3, s, s])?;
            let p = crate::no_grad(|| ops::sigmoid(&net.forward(&x)?))?.to_vec()?;
            if p.iter().any(|v| !v.is_finite()) {
                return Err(Error::Format {
                    path: path.clone(),
                    detail: "the policy's probabilities are not finite; no mask written \
                             (the weights or the image produce no usable output)"
                        .into(),
                });
            }
            let mask = image::GrayImage::from_fn(s as u32, s as u32, |x, y| {
                image::Luma([(p[y as usize * s + x as usize] * 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8])
            });
            let shown = pre.resized(&img);
            // Figure 2 style: the kept (important, p > 0.5) region tinted green.
            let overlay = image::RgbImage::from_fn(s as u32, s as u32, |x, y| {
                let q = shown.get_pixel(x, y).0;
                let kept = p[y as usize * s + x as usize] > 0.5;
                let c = |v: f32, tint: f32| {
                    let v = if kept { 0.6 * v + 0.4 * tint } else { v };
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                };
                image::Rgb([c(q[0], 0.0), c(q[1], 1.0), c(q[2], 0.0)])
            });
            let save =
                |img: &dyn Fn(&Path) -> image::ImageResult<()>, name: String| -> Result<()> {
                    let out = args.out.join(name);
                    img(&out).map_err(|e| Error::Format {
                        path: out.clone(),
                        detail: format!("cannot write PNG: {e}"),
                    })?;
                    println!("{}", out.display());
                    Ok(())
                };
            save(&|o| mask.save(o), format!("{stem}_mask.png"))?;
            save(&|o| overlay.save(o), format!("{stem}_overlay.png"))?;
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("error: {e}");
            failed += 1;
        }
    }
    finish(failed, args.images.len())
}
