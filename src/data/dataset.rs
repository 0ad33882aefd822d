//! Datasets behind one `--data` option: `synthetic` (default), `mura:PATH`, `folder:PATH`,
//! `csv:FILE`. Every source yields train and validation splits of samples with integer labels
//! into a sorted class list; opening a dataset checks every file exists (or counts and skips it
//! with `skip_bad_images`), and every bad input is an error naming the file or line.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::data::synthetic::SyntheticConfig;
use crate::error::{Error, Result};

/// Where a sample's pixels come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// Image `index` of the synthetic generator's split.
    Synthetic {
        split: &'static str,
        index: usize,
    },
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub source: Source,
    pub label: usize,
    /// MURA study (patient/study folder), for study-level evaluation.
    pub study: Option<String>,
}

/// A dataset's two splits and its classes.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What was opened, for logs and run configs.
    pub description: String,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// Set for the synthetic source (its images are generated, not read).
    pub synthetic: Option<SyntheticConfig>,
    /// Files skipped because they were missing (with `skip_bad_images`).
    pub skipped: usize,
}

/// The parsed `--data` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Synthetic,
    Mura(PathBuf),
    Folder(PathBuf),
    Csv(PathBuf),
}

impl std::str::FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, path) = s.split_once(':').unwrap_or((s, ""));
        let need = |p: &str| -> std::result::Result<PathBuf, String> {
            if p.is_empty() {
                Err(format!(
                    "--data {kind}: needs a path, e.g. {kind}:/data/set"
                ))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match kind {
            "synthetic" if path.is_empty() => Ok(DataSpec::Synthetic),
            "mura" => Ok(DataSpec::Mura(need(path)?)),
            "folder" => Ok(DataSpec::Folder(need(path)?)),
            "csv" => Ok(DataSpec::Csv(need(path)?)),
            _ => Err(format!(
                "unknown --data {s:?}: use synthetic, mura:PATH, folder:PATH or csv:FILE"
            )),
        }
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSpec::Synthetic => write!(f, "synthetic"),
            DataSpec::Mura(p) => write!(f, "mura:{}", p.display()),
            DataSpec::Folder(p) => write!(f, "folder:{}", p.display()),
            DataSpec::Csv(p) => write!(f, "csv:{}", p.display()),
        }
    }
}

/// MURA's seven body parts.
pub const BODY_PARTS: [&str; 7] = [
    "elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist",
];

/// Options of the dataset sources.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// MURA body part (`all` for every one).
    pub body_part: String,
    /// MURA: this many training images per class, sampled with the seed.
    pub k_shot: Option<usize>,
    /// folder/csv without a validation split: fraction held out, stratified by class.
    pub val_fraction: f64,
    pub seed: u64,
    /// Skip (and count) missing or unreadable images instead of stopping.
    pub skip_bad_images: bool,
    /// Synthetic generator: image side, classes, split sizes.
    pub synthetic_size: usize,
    pub synthetic_classes: usize,
    pub synthetic_train: usize,
    pub synthetic_val: usize,
    pub synthetic_style: crate::data::synthetic::Style,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            body_part: "all".into(),
            k_shot: None,
            val_fraction: 0.2,
            seed: 0,
            skip_bad_images: false,
            synthetic_size: 64,
            synthetic_classes: 2,
            synthetic_train: 400,
            synthetic_val: 100,
            synthetic_style: Default::default(),
        }
    }
}

pub(super) fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.into(),
        detail: detail.into(),
    }
}

/// A path with `.` and `..` resolved lexically (no file system access); `None` when `..`
/// climbs above its start.
fn lexical(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Some(out)
}

/// `root.join(rel)` resolved lexically (both made absolute first, so an absolute path inside a
/// relative root is accepted); a path or `..` that leaves `root` is refused, and so is an
/// existing file whose real location (symbolic links followed) lies outside the real root.
pub fn resolve_within(root: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let escapes = || format!("path {rel:?} escapes the dataset root {}", root.display());
    let root_abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let root_norm = lexical(&root_abs).ok_or_else(escapes)?;
    let p = Path::new(rel);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root_norm.join(p)
    };
    let out = lexical(&joined).ok_or_else(escapes)?;
    if !out.starts_with(&root_norm) {
        return Err(escapes());
    }
    if let (Ok(real_root), Ok(real)) = (root.canonicalize(), out.canonicalize()) {
        if !real.starts_with(&real_root) {
            return Err(format!(
                "path {rel:?} leads outside the dataset root {} through a symbolic link (to {})",
                root.display(),
                real.display()
            ));
        }
    }
    // Relative roots give relative paths, as before (messages show what the user wrote).
    if root.is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            if let Ok(r) = out.strip_prefix(&cwd) {
                return Ok(r.to_path_buf());
            }
        }
    }
    Ok(out)
}

/// Whether a file name looks like an image the `image` crate reads.
pub(super) fn is_image(path: &Path) -> bool {
    image::ImageFormat::from_path(path).is_ok()
}

/// Keeps the samples whose files exist; a missing file is an error, or counted and skipped.
pub(super) fn check_files(
    samples: Vec<Sample>,
    skip: bool,
    skipped: &mut usize,
) -> Result<Vec<Sample>> {
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        if let Source::File(p) = &s.source {
            if !p.is_file() {
                if skip {
                    log::warn!("skipping missing image {}", p.display());
                    *skipped += 1;
                    continue;
                }
                return Err(bad(p, "image listed in the dataset does not exist"));
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// A seeded split that keeps each class's proportion: `fraction` of every class goes to val.
pub(super) fn stratified_split(
    samples: Vec<Sample>,
    fraction: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut by_class: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    for s in samples {
        by_class.entry(s.label).or_default().push(s);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5711_7000);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut v) in by_class {
        v.shuffle(&mut rng);
        let n_val = ((v.len() as f64) * fraction).round() as usize;
        let n_val = n_val.min(v.len().saturating_sub(1));
        val.extend(v.drain(..n_val));
        train.extend(v);
    }
    (train, val)
}

impl Dataset {
    /// Opens the dataset `spec` describes.
    pub fn open(spec: &DataSpec, opts: &DataOptions) -> Result<Dataset> {
        if !(0.0..1.0).contains(&opts.val_fraction) {
            return Err(Error::usage(
                "dataset",
                format!("--val-fraction {} must be in [0, 1)", opts.val_fraction),
            ));
        }
        let ds = match spec {
            DataSpec::Synthetic => Self::synthetic(opts)?,
            DataSpec::Mura(p) => Self::mura(p, opts)?,
            DataSpec::Folder(p) => Self::folder(p, opts)?,
            DataSpec::Csv(p) => Self::csv(p, opts)?,
        };
        let mut ds = ds;
        if let Some(k) = opts.k_shot {
            if ds.synthetic.is_some() {
                return Err(Error::usage(
                    "--k-shot",
                    "applies to data read from files; for synthetic data set --train-size",
                ));
            }
            ds.train = k_shot(ds.train, k, ds.classes.len(), opts.seed)?;
        }
        ds.check_classes()?;
        Ok(ds)
    }

    /// The rules every source obeys: 2 to `limits::CLASSES` classes, every class with at
    /// least one training image, neither split empty.
    fn check_classes(&self) -> Result<()> {
        let k = self.classes.len();
        if k < 2 {
            return Err(Error::usage(
                "dataset",
                format!(
                    "{}: {k} class{} ({}); a classifier needs at least two",
                    self.description,
                    if k == 1 { "" } else { "es" },
                    self.classes.join(", ")
                ),
            ));
        }
        if k as u64 > crate::limits::CLASSES.1 {
            return Err(Error::usage(
                "dataset",
                format!(
                    "{}: {k} classes, more than {}",
                    self.description,
                    crate::limits::CLASSES.1
                ),
            ));
        }
        let counts = self.counts(&self.train);
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(Error::usage(
                "dataset",
                format!(
                    "{}: class {:?} has no training images",
                    self.description, self.classes[c]
                ),
            ));
        }
        for (name, split) in [("train", &self.train), ("val", &self.val)] {
            if split.is_empty() {
                return Err(Error::usage(
                    "dataset",
                    format!("{}: the {name} split is empty", self.description),
                ));
            }
        }
        Ok(())
    }

    /// Images per class in a split.
    pub fn counts(&self, split: &[Sample]) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for s in split {
            if let Some(x) = c.get_mut(s.label) {
                *x += 1;
            }
        }
        c
    }

    /// The per-split, per-class table printed when a dataset is opened.
    /// A fingerprint of the data itself: the classes and, for every sample of both splits,
    /// its label and its file's path, size and modification time (synthetic samples: their
    /// index, the generator's settings being in the configuration). Caches keyed by it are
    /// not reused after images change, appear or go.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.classes.hash(&mut h);
        for (split, samples) in [("train", &self.train), ("val", &self.val)] {
            split.hash(&mut h);
            for s in samples {
                s.label.hash(&mut h);
                match &s.source {
                    Source::File(p) => {
                        p.hash(&mut h);
                        if let Ok(m) = std::fs::metadata(p) {
                            m.len().hash(&mut h);
                            if let Ok(t) = m.modified() {
                                t.hash(&mut h);
                            }
                        }
                    }
                    Source::Synthetic { split, index } => (split, index).hash(&mut h),
                }
            }
        }
        h.finish()
    }

    pub fn summary(&self) -> String {
        let mut out = format!("dataset: {}\n", self.description);
        let width = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(5)
            .max(5);
        out.push_str(&format!(
            "  {:<width$}  {:>7}  {:>7}\n",
            "class", "train", "val"
        ));
        let (t, v) = (self.counts(&self.train), self.counts(&self.val));
        for (k, c) in self.classes.iter().enumerate() {
            let pct = |n: usize, total: usize| 100.0 * n as f64 / total.max(1) as f64;
            out.push_str(&format!(
                "  {c:<width$}  {:>7}  {:>7}   ({:.0}% / {:.0}%)\n",
                t[k],
                v[k],
                pct(t[k], self.train.len()),
                pct(v[k], self.val.len())
            ));
        }
        out.push_str(&format!(
            "  {:<width$}  {:>7}  {:>7}\n",
            "total",
            self.train.len(),
            self.val.len()
        ));
        if self.skipped > 0 {
            out.push_str(&format!("  skipped {} missing images\n", self.skipped));
        }
        out
    }
}

/// `k` samples per class, drawn with the seed (the paper's k-shot training sets).
pub fn k_shot(samples: Vec<Sample>, k: usize, classes: usize, seed: u64) -> Result<Vec<Sample>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b5f_7368);
    let mut out = Vec::new();
    for c in 0..classes {
        let mut of_c: Vec<Sample> = samples.iter().filter(|s| s.label == c).cloned().collect();
        if of_c.len() < k {
            return Err(Error::usage(
                "k-shot",
                format!(
                    "--k-shot {k} exceeds the {} training images of class {c}",
                    of_c.len()
                ),
            ));
        }
        of_c.shuffle(&mut rng);
        out.extend(of_c.into_iter().take(k));
    }
    Ok(out)
}
