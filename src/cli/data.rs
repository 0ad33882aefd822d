//! `apga-gpu data`: open a dataset, print its table, export samples.

use std::sync::Arc;

use crate::cli::DataCommand;
use crate::data::{Dataset, Loader, LoaderConfig, Normalize, Preprocess};
use crate::error::{Error, Result};

pub fn run(args: &DataCommand) -> Result<()> {
    let ds = Dataset::open(
        &args.data.data,
        &args.data.options(args.seed, args.image_size),
    )?;
    print!("{}", ds.summary());
    let Some(dir) = &args.export else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let pre = Preprocess {
        size: args.image_size,
        normalize: Normalize::None,
    };
    let n = args.count.min(ds.train.len());
    let samples = Arc::new(ds.train[..n].to_vec());
    let cfg = LoaderConfig {
        batch_size: n.max(1),
        shuffle: false,
        skip_bad_images: args.data.skip_bad_images,
        ..Default::default()
    };
    let s = args.image_size;
    let plane = s * s;
    for batch in Loader::new(samples, ds.synthetic, pre, cfg) {
        let batch = batch?;
        for (j, &label) in batch.labels.iter().enumerate() {
            let img = &batch.images[j * 3 * plane..(j + 1) * 3 * plane];
            let rgb = image::RgbImage::from_fn(s as u32, s as u32, |x, y| {
                let i = y as usize * s + x as usize;
                let c = |k: usize| (img[k * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
                image::Rgb([c(0), c(1), c(2)])
            });
            let name = format!("{:03}_{}", batch.indices[j], ds.classes[label]);
            let path = dir.join(format!("{name}.png"));
            save(&path, rgb.save(&path))?;
            println!("{}", path.display());
            if let Some(rois) = &batch.rois {
                let roi = &rois[j * plane..(j + 1) * plane];
                let mask = image::GrayImage::from_fn(s as u32, s as u32, |x, y| {
                    image::Luma([(roi[y as usize * s + x as usize] * 255.0) as u8])
                });
                let path = dir.join(format!("{name}_roi.png"));
                save(&path, mask.save(&path))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

fn save(path: &std::path::Path, r: image::ImageResult<()>) -> Result<()> {
    r.map_err(|e| Error::Format {
        path: path.into(),
        detail: format!("cannot write PNG: {e}"),
    })
}
