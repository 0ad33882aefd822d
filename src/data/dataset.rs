//! Datasets behind one `--data` option: `synthetic` (default), `mura:PATH`, `folder:PATH`,
//! `csv:FILE`. Every source yields train and validation splits of samples with integer labels
//! into a sorted class list; opening a dataset checks every file exists (or counts and skips it
//! with `skip_bad_images`), and every bad input is an error naming the file or line.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::data::synthetic::{label_of, SyntheticConfig};
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
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
fn is_image(path: &Path) -> bool {
    image::ImageFormat::from_path(path).is_ok()
}

/// Keeps the samples whose files exist; a missing file is an error, or counted and skipped.
fn check_files(samples: Vec<Sample>, skip: bool, skipped: &mut usize) -> Result<Vec<Sample>> {
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
fn stratified_split(samples: Vec<Sample>, fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
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

    fn synthetic(opts: &DataOptions) -> Result<Dataset> {
        let cfg = SyntheticConfig {
            size: opts.synthetic_size,
            classes: opts.synthetic_classes,
            train: opts.synthetic_train,
            val: opts.synthetic_val,
            seed: opts.seed,
            style: opts.synthetic_style,
        };
        if cfg.classes < 2 || cfg.size < 16 {
            return Err(Error::usage(
                "synthetic data",
                format!("needs at least 2 classes and images of at least 16 pixels, got {cfg:?}"),
            ));
        }
        let split = |name: &'static str, n: usize| -> Vec<Sample> {
            (0..n)
                .map(|index| Sample {
                    source: Source::Synthetic { split: name, index },
                    label: label_of(index, cfg.classes),
                    study: None,
                })
                .collect()
        };
        let mut classes = vec!["normal".to_string()];
        for c in 1..cfg.classes {
            let kind = if c % 2 == 1 { "fracture" } else { "lesion" };
            let n = c.div_ceil(2);
            classes.push(if n == 1 {
                kind.to_string()
            } else {
                format!("{kind}x{n}")
            });
        }
        Ok(Dataset {
            description: {
                let st = cfg.style;
                let style = if st == Default::default() {
                    String::new()
                } else {
                    format!(
                        ", evidence strength {}, clutter {}, shortcut {}",
                        st.evidence_strength, st.clutter, st.shortcut
                    )
                };
                format!(
                    "synthetic ({} classes, {}x{}, seed {}{style})",
                    cfg.classes, cfg.size, cfg.size, cfg.seed
                )
            },
            classes,
            train: split("train", cfg.train),
            val: split("val", cfg.val),
            synthetic: Some(cfg),
            skipped: 0,
        })
    }

    fn mura(path: &Path, opts: &DataOptions) -> Result<Dataset> {
        // PATH is the folder holding MURA-v1.1, or MURA-v1.1 itself.
        let (root, dir) = if path
            .join("MURA-v1.1")
            .join("train_image_paths.csv")
            .is_file()
        {
            (path.to_path_buf(), path.join("MURA-v1.1"))
        } else if path.join("train_image_paths.csv").is_file() {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        } else {
            return Err(bad(
                path,
                "not a MURA v1.1 folder: expected MURA-v1.1/train_image_paths.csv inside it",
            ));
        };
        let part = opts.body_part.to_lowercase();
        if part != "all" && !BODY_PARTS.contains(&part.as_str()) {
            return Err(Error::usage(
                "mura",
                format!(
                    "unknown body part {:?}; use one of {} or all",
                    opts.body_part,
                    BODY_PARTS.join(", ")
                ),
            ));
        }
        let want = format!("XR_{}", part.to_uppercase());
        let mut skipped = 0;
        let mut read = |split: &str| -> Result<Vec<Sample>> {
            let csv_path = dir.join(format!("{split}_image_paths.csv"));
            let text = std::fs::read_to_string(&csv_path).map_err(io_err(&csv_path))?;
            let mut out = Vec::new();
            // No header row: the first line is an image.
            for (i, line) in text.lines().enumerate() {
                let rel = line.trim().trim_matches('"');
                if rel.is_empty() {
                    continue;
                }
                let at = |d: String| bad(&csv_path, format!("line {}: {d}", i + 1));
                let file = resolve_within(&root, rel).map_err(at)?;
                let comps: Vec<&str> = rel.split('/').collect();
                let study_pos = comps
                    .iter()
                    .position(|c| c.ends_with("_positive") || c.ends_with("_negative"))
                    .ok_or_else(|| at(format!("no study_positive/negative folder in {rel:?}")))?;
                if part != "all" && !comps.contains(&want.as_str()) {
                    continue;
                }
                let label = usize::from(comps[study_pos].ends_with("_positive"));
                out.push(Sample {
                    source: Source::File(file),
                    label,
                    study: Some(comps[..=study_pos].join("/")),
                });
            }
            check_files(out, opts.skip_bad_images, &mut skipped)
        };
        let train = read("train")?;
        let val = read("valid")?;
        Ok(Dataset {
            description: format!("MURA v1.1 at {} ({part})", root.display()),
            classes: vec!["negative".into(), "positive".into()],
            train,
            val,
            synthetic: None,
            skipped,
        })
    }

    fn folder(path: &Path, opts: &DataOptions) -> Result<Dataset> {
        let list_classes = |dir: &Path| -> Result<Vec<String>> {
            let mut names = Vec::new();
            for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
                let e = e.map_err(io_err(dir))?;
                if e.path().is_dir() {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            names.sort();
            Ok(names)
        };
        let collect = |dir: &Path, classes: &[String]| -> Result<Vec<Sample>> {
            let mut out = Vec::new();
            for (label, class) in classes.iter().enumerate() {
                let cdir = dir.join(class);
                let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
                    .map_err(io_err(&cdir))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && is_image(p))
                    .collect();
                files.sort();
                if files.is_empty() {
                    return Err(bad(&cdir, "class folder has no images"));
                }
                out.extend(files.into_iter().map(|f| Sample {
                    source: Source::File(f),
                    label,
                    study: None,
                }));
            }
            Ok(out)
        };
        let (tdir, vdir) = (path.join("train"), path.join("val"));
        let (classes, train, val) = if tdir.is_dir() && vdir.is_dir() {
            let classes = list_classes(&tdir)?;
            let vclasses = list_classes(&vdir)?;
            if let Some(extra) = vclasses.iter().find(|c| !classes.contains(c)) {
                return Err(bad(
                    &vdir.join(extra),
                    "class folder not present under train/",
                ));
            }
            let train = collect(&tdir, &classes)?;
            let val = collect_present(&vdir, &classes)?;
            (classes, train, val)
        } else {
            let classes = list_classes(path)?;
            let all = collect(path, &classes)?;
            let (t, v) = stratified_split(all, opts.val_fraction, opts.seed);
            (classes, t, v)
        };
        if classes.len() < 2 {
            return Err(bad(path, "needs at least two class folders"));
        }
        Ok(Dataset {
            description: format!("folder {}", path.display()),
            classes,
            train,
            val,
            synthetic: None,
            skipped: 0,
        })
    }

    fn csv(path: &Path, opts: &DataOptions) -> Result<Dataset> {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read(path).map_err(io_err(path))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_slice());
        // The file's own line number of a record (the reader skips blank lines and does
        // not count them).
        let line_at = |byte: u64| {
            // A record's position is where the previous one ended: skip the blank lines.
            let mut end = (byte as usize).min(text.len());
            while end < text.len() && text[end].is_ascii_whitespace() {
                end += 1;
            }
            text[..end].iter().filter(|&&b| b == b'\n').count() + 1
        };
        let mut rows: Vec<(usize, String, String, Option<String>)> = Vec::new();
        for (i, rec) in reader.records().enumerate() {
            // The file's own line number (the reader skips blank lines).
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(i + 1, |p| line_at(p.byte()));
                bad(path, format!("line {line}: {e}"))
            })?;
            let line = rec.position().map_or(i + 1, |p| line_at(p.byte()));
            if rec.iter().all(|f| f.is_empty()) {
                continue;
            }
            if rec.len() < 2 || rec.len() > 3 {
                return Err(bad(
                    path,
                    format!(
                        "line {line}: expected path,label[,split], got {} fields",
                        rec.len()
                    ),
                ));
            }
            let (p, l) = (rec[0].to_string(), rec[1].to_string());
            if line == 1 && p.eq_ignore_ascii_case("path") && l.eq_ignore_ascii_case("label") {
                continue; // header row
            }
            if p.is_empty() || l.is_empty() {
                return Err(bad(path, format!("line {line}: empty path or label")));
            }
            rows.push((line, p, l, rec.get(2).map(|s| s.to_lowercase())));
        }
        if rows.is_empty() {
            return Err(bad(
                path,
                "no images listed (expected lines of path,label[,split])",
            ));
        }
        // Labels: all integers -> class k is "k"; otherwise class names, sorted.
        let numeric = rows.iter().all(|r| r.2.parse::<usize>().is_ok());
        let classes: Vec<String> = if numeric {
            let max = rows
                .iter()
                .filter_map(|r| r.2.parse::<usize>().ok())
                .max()
                .unwrap_or(0);
            if max as u64 >= crate::limits::CLASSES.1 {
                return Err(bad(
                    path,
                    format!(
                        "label {max}: numeric labels are class indices 0..{} at most",
                        crate::limits::CLASSES.1 - 1
                    ),
                ));
            }
            (0..=max).map(|k| k.to_string()).collect()
        } else {
            let mut names: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
            names.sort();
            names.dedup();
            names
        };
        let (mut train, mut val, mut unsplit) = (Vec::new(), Vec::new(), Vec::new());
        let mut skipped = 0;
        for (line, p, l, split) in rows {
            let file =
                resolve_within(&root, &p).map_err(|d| bad(path, format!("line {line}: {d}")))?;
            let label = classes.iter().position(|c| *c == l).ok_or_else(|| {
                bad(
                    path,
                    format!("line {line}: label {l:?} not among the classes"),
                )
            })?;
            let sample = Sample {
                source: Source::File(file),
                label,
                study: None,
            };
            match split.as_deref() {
                Some("train") => train.push(sample),
                Some("val") | Some("valid") | Some("validation") => val.push(sample),
                None | Some("") => unsplit.push(sample),
                Some(other) => {
                    return Err(bad(
                        path,
                        format!("line {line}: split {other:?} is not train or val"),
                    ))
                }
            }
        }
        if !unsplit.is_empty() {
            let (t, v) = stratified_split(unsplit, opts.val_fraction, opts.seed);
            train.extend(t);
            val.extend(v);
        }
        let train = check_files(train, opts.skip_bad_images, &mut skipped)?;
        let val = check_files(val, opts.skip_bad_images, &mut skipped)?;
        Ok(Dataset {
            description: format!("csv {}", path.display()),
            classes,
            train,
            val,
            synthetic: None,
            skipped,
        })
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

fn collect_present(dir: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        if !cdir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(io_err(&cdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| Sample {
            source: Source::File(f),
            label,
            study: None,
        }));
    }
    Ok(out)
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
