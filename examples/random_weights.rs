//! Writes freshly initialised (seeded, untrained) DenseNet-169 and UNet11 state dicts, for
//! trying `apga-gpu predict` and `masks` before any training:
//! `cargo run --release --example random_weights -- DIR [NUM_CLASSES]`.

use apga_gpu::models::{unet, DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::state;
use apga_gpu::{Gpu, GpuOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or("usage: random_weights DIR [NUM_CLASSES]")?,
    );
    let classes: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    std::fs::create_dir_all(&dir)?;
    let gpu = Gpu::new(GpuOptions::from_env()?)?;
    let dn = DenseNet::new(&gpu, DenseNetConfig::densenet169(classes), 0)?;
    state::save(&dn, &dir.join("densenet169_random.safetensors"), &[])?;
    let un = UNet11::new(&gpu, 32, 0)?;
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    state::save(&un, &dir.join("unet11_random.safetensors"), &dup)?;
    println!(
        "wrote {0}/densenet169_random.safetensors and {0}/unet11_random.safetensors",
        dir.display()
    );
    Ok(())
}
