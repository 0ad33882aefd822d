//! The four dataset sources behind `--data`: the synthetic generator, MURA v1.1 (its CSVs and
//! study folders), a folder of class folders (with or without train/val), and a CSV of
//! `path,label[,split]`. Each builds a [`Dataset`]; `Dataset::open` then applies the rules
//! every source shares (classes, k-shot, non-empty splits).

use crate::data::synthetic::{label_of, SyntheticConfig};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

use super::dataset::{bad, check_files, is_image, resolve_within, stratified_split, BODY_PARTS};
use super::{DataOptions, Dataset, Sample, Source};

impl Dataset {
    pub(super) fn synthetic(opts: &DataOptions) -> Result<Dataset> {
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

    pub(super) fn mura(path: &Path, opts: &DataOptions) -> Result<Dataset> {
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
            let text = std::fs::read_to_string(&csv_path).map_err(Error::io(&csv_path))?;
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

    pub(super) fn folder(path: &Path, opts: &DataOptions) -> Result<Dataset> {
        let list_classes = |dir: &Path| -> Result<Vec<String>> {
            let mut names = Vec::new();
            for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
                let e = e.map_err(Error::io(dir))?;
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
                    .map_err(Error::io(&cdir))?
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

    pub(super) fn csv(path: &Path, opts: &DataOptions) -> Result<Dataset> {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read(path).map_err(Error::io(path))?;
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
}

fn collect_present(dir: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        if !cdir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(Error::io(&cdir))?
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
