//! State dicts in `.safetensors` files, under PyTorch's keys, so that weights move between this
//! project and PyTorch unchanged.
//!
//! Loading is strict by default: every missing key, unexpected key and shape mismatch is
//! reported by name in one error. Prefixes such as `module.` (DataParallel) or `unet.` are
//! stripped, aliases (TernausNet's `encoder.N.*`) are accepted, and a classifier head with a
//! different class count is replaced only when asked. Saving writes through a temporary file
//! and a rename, so a crash never leaves a corrupt checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::nn::{assign, Module};

/// One tensor read from a file, converted to f32.
#[derive(Debug, Clone)]
pub struct Entry {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Reads every tensor of a `.safetensors` file. F32, F64, F16, BF16 and integer tensors are
/// converted to f32 (integers are BatchNorm's `num_batches_tracked`).
pub fn read(path: &Path) -> Result<BTreeMap<String, Entry>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    read_bytes(&bytes, path)
}

/// As `read`, from the file's bytes (`path` names it in errors).
pub fn read_bytes(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Entry>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Format {
        path: path.into(),
        detail: not_safetensors(bytes, &e.to_string()),
    })?;
    let mut out = BTreeMap::new();
    for (key, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => {
                return Err(Error::Format {
                    path: path.into(),
                    detail: format!("tensor {key:?} has dtype {other:?}; expected a float type"),
                })
            }
        };
        out.insert(
            key,
            Entry {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Why a file is not a safetensors file, with the fix: PyTorch's own checkpoints (zip or
/// pickle) must be converted first, and a cut file must be copied again.
fn not_safetensors(bytes: &[u8], err: &str) -> String {
    let pytorch = bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80);
    if pytorch {
        format!(
            "a PyTorch checkpoint (.pt/.pth), not a safetensors file ({err}): convert it with \
             weights/convert_torchvision.py (DenseNet) or \
             weights/convert_ternausnet.py (TernausNet UNet11)"
        )
    } else if bytes.len() < 8 {
        format!(
            "not a safetensors file: {} bytes, shorter than its 8-byte header length",
            bytes.len()
        )
    } else {
        format!(
            "not a complete safetensors file ({err}): the file is cut short or of another \
             format; copy or download it again (PyTorch .pt files must be converted: see \
             weights/)"
        )
    }
}

/// The problem with a tensor's values, if any: non-finite values anywhere, negative values
/// in a batch norm's running variance (its square root would be NaN).
fn bad_values(key: &str, values: &[f32]) -> Option<String> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let n = values.iter().filter(|v| !v.is_finite()).count();
        return Some(format!(
            "{key}: {n} of {} values are not finite (the first, at index {i}, is {})",
            values.len(),
            values[i]
        ));
    }
    if key.ends_with("running_var") {
        if let Some(i) = values.iter().position(|v| *v < 0.0) {
            return Some(format!(
                "{key}: a variance below 0 ({} at index {i})",
                values[i]
            ));
        }
    }
    None
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        31 => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// How to match a file's keys to a model's.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Tolerate missing and unexpected keys (shape mismatches are still errors).
    pub non_strict: bool,
    /// Key prefix of a classification head (e.g. `classifier.`) whose tensors are left at their
    /// fresh initialisation when their shape differs (a different class count).
    pub replace_head: Option<String>,
    /// Alternative names: file key prefix -> model key prefix (e.g. `encoder.0.` -> `conv1.`).
    pub aliases: Vec<(String, String)>,
}

/// Prefixes that wrappers add to every key.
const WRAPPER_PREFIXES: &[&str] = &["module.", "unet.", "model."];

fn normalise(key: &str, aliases: &[(String, String)]) -> String {
    let mut k = key;
    while let Some(p) = WRAPPER_PREFIXES.iter().find(|p| k.starts_with(*p)) {
        k = &k[p.len()..];
    }
    for (from, to) in aliases {
        if let Some(rest) = k.strip_prefix(from.as_str()) {
            return format!("{to}{rest}");
        }
    }
    k.to_string()
}

/// What a load did, for logging.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Head tensors left freshly initialised because their shape differed.
    pub replaced: Vec<String>,
    /// Keys ignored (non-strict loads only).
    pub unexpected: Vec<String>,
    pub missing: Vec<String>,
}

/// Loads a state-dict file into `model` (values copied into the existing tensors).
pub fn load(model: &dyn Module, path: &Path, options: &LoadOptions) -> Result<LoadReport> {
    let file = read(path)?;
    load_entries(model, &file, options).map_err(|detail| Error::Format {
        path: path.into(),
        detail,
    })
}

/// As `load`, from entries already read; errors are the text of the message.
pub fn load_entries(
    model: &dyn Module,
    file: &BTreeMap<String, Entry>,
    options: &LoadOptions,
) -> std::result::Result<LoadReport, String> {
    let mut by_key: BTreeMap<String, &Entry> = BTreeMap::new();
    for (k, e) in file {
        // An alias and its canonical name may both be present (PyTorch saves a shared module
        // under both); the canonical one wins.
        let n = normalise(k, &options.aliases);
        if normalise(k, &[]) == n || !by_key.contains_key(&n) {
            by_key.insert(n, e);
        }
    }
    let named = model.named();
    let counters = model.batch_counters();
    let expected: BTreeSet<&str> = named
        .iter()
        .map(|n| n.key.as_str())
        .chain(counters.iter().map(|(k, _)| k.as_str()))
        .collect();
    let mut report = LoadReport::default();
    let mut mismatched = Vec::new();
    let mut bad = Vec::new();
    for n in &named {
        let Some(e) = by_key.get(&n.key) else {
            report.missing.push(n.key.clone());
            continue;
        };
        if e.shape != n.tensor.shape() {
            let head = options
                .replace_head
                .as_deref()
                .is_some_and(|h| n.key.starts_with(h));
            if head {
                report.replaced.push(n.key.clone());
            } else {
                mismatched.push(format!(
                    "{}: file {:?}, model {:?}",
                    n.key,
                    e.shape,
                    n.tensor.shape()
                ));
            }
            continue;
        }
        if let Some(p) = bad_values(&n.key, &e.values) {
            bad.push(p);
            continue;
        }
        assign(&n.tensor, &e.values).map_err(|err| format!("{}: {err}", n.key))?;
        report.loaded += 1;
    }
    for (k, counter) in &counters {
        // Optional, as in PyTorch, where old checkpoints lack num_batches_tracked.
        if let Some(e) = by_key.get(k) {
            counter.store(
                e.values.first().copied().unwrap_or(0.0) as i64,
                Ordering::Relaxed,
            );
        }
    }
    report.unexpected = by_key
        .keys()
        .filter(|k| !expected.contains(k.as_str()))
        .cloned()
        .collect();
    let mut problems = Vec::new();
    if !bad.is_empty() {
        problems.push(format!(
            "values unusable ({}): the file is damaged or was saved from a diverged run",
            bad.join("; ")
        ));
    }
    if !mismatched.is_empty() {
        problems.push(format!("shape mismatch: {}", mismatched.join("; ")));
    }
    if !options.non_strict {
        if !report.missing.is_empty() {
            problems.push(format!("missing keys: {}", report.missing.join(", ")));
        }
        if !report.unexpected.is_empty() {
            problems.push(format!("unexpected keys: {}", report.unexpected.join(", ")));
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        let hint = if mismatched.iter().any(|m| m.starts_with("classifier.")) {
            " (a different class count: check --num-classes, or when fine-tuning pass --replace-head)"
        } else {
            ""
        };
        Err(format!(
            "state dict does not fit the model: {}{hint}",
            problems.join("; ")
        ))
    }
}

/// Saves `model` as a state dict (f32 tensors, int64 `num_batches_tracked`), plus the same
/// tensors under each `(canonical prefix, alias prefix)` of `duplicate_as`, as PyTorch does for
/// modules registered under two names. Atomic: written to a temporary file, then renamed.
pub fn save(model: &dyn Module, path: &Path, duplicate_as: &[(String, String)]) -> Result<()> {
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for n in model.named() {
        let values = n.tensor.to_vec()?;
        if let Some(p) = bad_values(&n.key, &values) {
            // A diverged network never replaces a good checkpoint.
            return Err(Error::Incomplete(format!(
                "not saving {}: {p}; training diverged and the last good checkpoint is \
                 intact (try a lower learning rate)",
                path.display()
            )));
        }
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        for (from, to) in duplicate_as {
            if let Some(rest) = n.key.strip_prefix(from.as_str()) {
                data.push((
                    format!("{to}{rest}"),
                    Dtype::F32,
                    n.tensor.shape().to_vec(),
                    bytes.clone(),
                ));
            }
        }
        data.push((n.key, Dtype::F32, n.tensor.shape().to_vec(), bytes));
    }
    for (k, c) in model.batch_counters() {
        data.push((
            k,
            Dtype::I64,
            vec![],
            c.load(Ordering::Relaxed).to_le_bytes().to_vec(),
        ));
    }
    let views = data
        .iter()
        .map(|(k, dt, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Format {
                    path: path.into(),
                    detail: format!("{k}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &None).map_err(|e| Error::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}
