//! The ranges every size, count and rate a user supplies must lie in, checked where the
//! value enters (command-line flags through clap, `--config` files and run configurations
//! through `TrainConfig::validate`) and before anything is allocated for it. The bounds are
//! generous for real work and keep host and GPU allocations within what a machine can hold;
//! what the adapter itself allows is checked against its limits where the network is built
//! (`check_batch_fits`).

/// Smallest and largest side of the S x S network input (UNet11 and DenseNet downsample
/// five times; 4096 is 8x MURA's usual 512 and near what a single GPU binding holds).
pub const IMAGE_SIZE: (u64, u64) = (32, 4096);
/// Classes of a classifier head or dataset (the confusion matrix is classes^2).
pub const CLASSES: (u64, u64) = (2, 1000);
/// Images per batch.
pub const BATCH_SIZE: (u64, u64) = (2, 1024);
/// Synthetic images per split.
pub const SPLIT_SIZE: (u64, u64) = (1, 1_000_000);
/// Epochs, steps and similar counters.
pub const COUNT: (u64, u64) = (0, 10_000_000);
/// Decoder width of UNet11 (TernausNet's num_filters; the paper's is 32).
pub const FILTERS: (u64, u64) = (1, 512);
/// Loader threads.
pub const WORKERS: (u64, u64) = (1, 256);
/// Seeds: written to TOML files, whose integers are signed 64-bit.
pub const SEED: (u64, u64) = (0, i64::MAX as u64 / 2);

/// `Err` naming `flag` unless `v` lies in `range` (inclusive).
pub fn check(flag: &str, v: u64, (lo, hi): (u64, u64)) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{flag} {v} is not in {lo}..={hi}"))
    }
}

/// `Err` naming `--image-size` unless `s` is in range and (for UNet11) a multiple of 32.
pub fn check_image_size(s: usize, multiple_of_32: bool) -> Result<(), String> {
    check("--image-size", s as u64, IMAGE_SIZE)?;
    if multiple_of_32 && !s.is_multiple_of(32) {
        return Err(format!(
            "--image-size {s} must be a multiple of 32 (UNet11 pools five times)"
        ));
    }
    Ok(())
}

/// Bytes of the largest activation a batch needs: UNet11's first feature map (64 channels at
/// full size) with a policy, DenseNet's first (64 channels at half size) without; `Err` naming
/// both flags when it exceeds the adapter's largest buffer (`max_buffer_size`; kernels bind
/// larger tensors in pieces, but no tensor can outgrow one buffer).
pub fn check_batch_fits(
    batch: usize,
    size: usize,
    with_policy: bool,
    max_buffer: u64,
) -> Result<(), String> {
    let side = if with_policy { size } else { size.div_ceil(2) };
    let bytes = (batch as u128) * 64 * (side as u128).pow(2) * 4;
    if bytes > max_buffer as u128 {
        return Err(format!(
            "--batch-size {batch} at --image-size {size} needs a {bytes}-byte feature map \
             ({}), more than this adapter's largest buffer ({max_buffer} bytes): lower \
             the batch size or the image size",
            if with_policy {
                "UNet11's first"
            } else {
                "DenseNet's first"
            }
        ));
    }
    Ok(())
}
