//! Kernel-variant choice by measurement. The first time an op meets a shape class on an
//! adapter, every valid variant is timed and the fastest is remembered, in memory and in a
//! JSON file (`$APGA_CACHE_DIR/autotune.json`, default `~/.cache/apga-gpu/`), keyed by the
//! adapter's backend, name and driver, so later processes start warm. With autotuning off
//! (`APGA_NO_AUTOTUNE=1`, `--no-autotune`) each op uses its default variant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::Gpu;

#[derive(Serialize, Deserialize, Default)]
struct CacheFile {
    version: u32,
    /// adapter key -> (op and shape class -> variant name)
    adapters: BTreeMap<String, BTreeMap<String, String>>,
}

/// Bumped whenever an op gains a variant, so that caches measured without it are re-tuned.
const CACHE_VERSION: u32 = 12;

/// Per-adapter cache of measured choices.
pub struct Autotuner {
    enabled: bool,
    /// (key prefix, variant) pairs that win over measurement and cache (tests, users).
    overrides: Vec<(String, String)>,
    adapter_key: String,
    path: Option<PathBuf>,
    choices: BTreeMap<String, String>,
    /// Choices this process made by measurement, and the time spent measuring.
    tuned: usize,
    tuning_time: Duration,
}

/// Directory of on-disk caches: `APGA_CACHE_DIR`, else the platform cache dir.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("APGA_CACHE_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => dirs::cache_dir().map(|d| d.join("apga-gpu")),
    }
}

fn read_cache(path: &Path) -> Result<CacheFile> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    let file: CacheFile = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.into(),
        detail: format!("not an autotune cache: {e}"),
    })?;
    if file.version != CACHE_VERSION {
        return Err(Error::Format {
            path: path.into(),
            detail: format!("cache version {} (expected {CACHE_VERSION})", file.version),
        });
    }
    Ok(file)
}

pub use crate::fsio::write_atomic;

impl Autotuner {
    /// Loads the choices cached for this adapter. A missing or unreadable cache starts empty
    /// (an unreadable one is reported and replaced on the next write).
    pub fn open(info: &wgpu::AdapterInfo, enabled: bool) -> Autotuner {
        let adapter_key = format!(
            "{:?}/{}/{}/{}",
            info.backend, info.name, info.driver, info.driver_info
        );
        let path = cache_dir().map(|d| d.join("autotune.json"));
        let choices = match &path {
            Some(p) if p.exists() => match read_cache(p) {
                Ok(mut f) => f.adapters.remove(&adapter_key).unwrap_or_default(),
                Err(e) => {
                    log::warn!("ignoring autotune cache: {e}");
                    BTreeMap::new()
                }
            },
            _ => BTreeMap::new(),
        };
        Autotuner {
            enabled,
            overrides: Vec::new(),
            adapter_key,
            path,
            choices,
            tuned: 0,
            tuning_time: Duration::ZERO,
        }
    }

    /// How many choices this process made by measurement and the wall time it spent on them
    /// (cold-start cost; zero when every shape class came from the on-disk cache).
    pub fn tuning_stats(&self) -> (usize, Duration) {
        (self.tuned, self.tuning_time)
    }

    /// Number of choices known for this adapter (from the cache file and this process).
    pub fn cached_choices(&self) -> usize {
        self.choices.len()
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Forces `variant` for every op and shape class whose key starts with `prefix`.
    pub fn set_overrides(&mut self, overrides: Vec<(String, String)>) {
        self.overrides = overrides;
    }

    fn forced(&self, key: &str) -> Option<&str> {
        self.overrides
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The cached choice for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.choices.get(key).map(|s| s.as_str())
    }

    /// Remembers a choice and rewrites the cache file (merging other adapters' entries).
    pub fn insert(&mut self, key: &str, variant: &str) {
        self.choices.insert(key.to_string(), variant.to_string());
        let Some(path) = self.path.clone() else {
            return;
        };
        // Processes measuring at the same time merge their choices one at a time.
        let _lock = crate::fsio::Lock::acquire(&path.with_extension("lock"), || {});
        let mut file = match read_cache(&path) {
            Ok(f) => f,
            Err(_) => CacheFile {
                version: CACHE_VERSION,
                ..Default::default()
            },
        };
        file.adapters
            .insert(self.adapter_key.clone(), self.choices.clone());
        let write = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Format {
                path: path.clone(),
                detail: e.to_string(),
            })
            .and_then(|text| write_atomic(&path, &text));
        if let Err(e) = write {
            // Said once: the choices stay in memory for this process.
            log::warn!(
                "could not save the autotune cache ({e}); kernel choices are kept for this \
                 process only (set APGA_CACHE_DIR to a writable folder)"
            );
            self.path = None;
        }
    }
}

/// Time of one run of `run`, measured by wall clock around a full GPU sync; the minimum over
/// enough repetitions to fill about 20 ms (at least 2 after one warm-up run).
pub fn measure(gpu: &Gpu, run: &mut dyn FnMut() -> Result<()>) -> Result<Duration> {
    run()?;
    gpu.sync()?;
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    let mut reps = 0;
    while reps < 2 || (total < Duration::from_millis(20) && reps < 20) {
        let t = Instant::now();
        run()?;
        gpu.sync()?;
        let dt = t.elapsed();
        best = best.min(dt);
        total += dt;
        reps += 1;
    }
    Ok(best)
}

/// Like [`measure`] for choosing a variant, with a smaller budget. The first run is timed
/// from the end of its recording (pipeline compilation happens while recording, on the host)
/// to the end of its execution, so no separate warm-up run is needed; it alone decides when it
/// is more than 1.5 times `to_beat` (the best candidate so far). Otherwise the minimum of at least
/// two runs, and of as many as fill about 20 ms (at most 10), counts: a first run can pay for
/// first touches of freshly allocated buffers, which would misjudge a variant that needs a
/// large scratch buffer (the im2col paths).
fn measure_candidate(
    gpu: &Gpu,
    run: &mut dyn FnMut() -> Result<()>,
    to_beat: Option<Duration>,
) -> Result<(Duration, Duration)> {
    gpu.sync()?;
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    for reps in 0..10 {
        let recorded = if reps == 0 {
            run()?;
            Instant::now()
        } else {
            let t = Instant::now();
            run()?;
            t
        };
        gpu.sync()?;
        let dt = recorded.elapsed();
        best = best.min(dt);
        total += dt;
        let hopeless = to_beat.is_some_and(|b| dt > b * 3 / 2);
        if (reps == 0 && hopeless) || (reps >= 1 && total >= Duration::from_millis(20)) {
            break;
        }
    }
    Ok((best, total))
}

thread_local! {
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread is measuring candidates for the autotuner now (derived values are then
/// neither cached nor reused, so that each candidate's time includes them).
pub(crate) fn measuring() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Depth of nested `choose` measurements on this thread, restored on drop (also on errors).
struct Nesting {
    outermost: bool,
}

impl Nesting {
    fn enter() -> Nesting {
        let outermost = DEPTH.with(|d| {
            let v = d.get();
            d.set(v + 1);
            v == 0
        });
        Nesting { outermost }
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// The variant `APGA_KERNELS` forces for `key`, if it forces one: that candidate, or the
/// `default` one when the forced variant is one of the op's (`family`) that this shape cannot
/// take (e.g. im2col beyond the workspace, strip on a strided convolution; logged). An error
/// when the forced name is no variant of the op at all.
pub fn forced<V: Copy>(
    gpu: &Gpu,
    key: &str,
    family: &[&str],
    candidates: &[(&'static str, V)],
    default: usize,
) -> Result<Option<V>> {
    let tuner = gpu
        .inner()
        .autotuner
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let Some(name) = tuner.forced(key) else {
        return Ok(None);
    };
    if let Some((_, v)) = candidates.iter().find(|(n, _)| *n == name) {
        return Ok(Some(*v));
    }
    if !family.contains(&name) {
        return Err(Error::Gpu(format!(
            "APGA_KERNELS forces {key} to {name:?}, which is not a variant of this op \
             ({}); fix or unset APGA_KERNELS",
            family.join(", ")
        )));
    }
    log::info!("autotune {key}: forced {name} does not apply to this shape; default used");
    Ok(candidates
        .get(default.min(candidates.len().saturating_sub(1)))
        .map(|c| c.1))
}

/// Wall time after which `choose` stops measuring further candidates for one shape class.
const TUNING_BUDGET: Duration = Duration::from_secs(2);

/// Below the budget, `choose` also stops once a class's measured runs have taken
/// `BEST_MULTIPLE` times its best candidate's time and at least `BUDGET_FLOOR`: the general kernels measured last lose by
/// 2-5x on large shapes, and measuring each of them once cost the lavapipe cold start 11 of
/// its 26 s of tuning. Replayed on that cold start's log the rule keeps every choice and
/// saves 6.7 s of measurement; small classes (under the floor) still measure everything.
const BEST_MULTIPLE: u32 = 6;
const BUDGET_FLOOR: Duration = Duration::from_millis(100);

/// The tuning time a class may spend, given its best time so far.
fn class_budget(best: Duration) -> Duration {
    TUNING_BUDGET.min(BUDGET_FLOOR.max(best * BEST_MULTIPLE))
}

/// Picks among `candidates` (name, value) for the op and shape class `key`: a forced variant
/// (`APGA_KERNELS`: an error if it is none of `family`, the op's variants for any shape; the
/// default if it is one this shape cannot take), the `default` index when autotuning is off, the
/// cached choice if there is one, else the fastest by measurement of `run` on the caller's
/// real operands.
pub fn choose<V: Copy>(
    gpu: &Gpu,
    key: &str,
    family: &[&str],
    candidates: &[(&'static str, V)],
    default: usize,
    mut run: impl FnMut(V) -> Result<()>,
) -> Result<V> {
    if candidates.is_empty() {
        return Err(Error::Gpu(format!("autotune {key}: no candidate variant")));
    }
    let default = default.min(candidates.len() - 1);
    if let Some(v) = forced(gpu, key, family, candidates, default)? {
        return Ok(v);
    }
    {
        let tuner = gpu
            .inner()
            .autotuner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Autotuning off means the defaults, not choices measured earlier and cached on disk
        // (which would make a run depend on what ran before it on this machine).
        if !tuner.enabled() || candidates.len() == 1 {
            return Ok(candidates[default].1);
        }
        if let Some(name) = tuner.get(key) {
            if let Some((_, v)) = candidates.iter().find(|(n, _)| *n == name) {
                return Ok(*v);
            }
        }
    }
    let started = Instant::now();
    // A variant may itself choose among sub-variants while it is measured (the GEMM inside
    // an im2col convolution); only the outermost choice adds to the tuning time.
    let nesting = Nesting::enter();
    let mut best: Option<(Duration, usize)> = None;
    let mut measured = Duration::ZERO;
    // Last candidates first: ops list their specialised (usually fastest) variants last, so the
    // general ones are then often dropped after a single run. Once a shape class has cost
    // its `class_budget`, the best so far is kept (huge shapes, where one run takes seconds).
    for (i, (name, v)) in candidates.iter().enumerate().rev() {
        // The class budget counts the candidates' measured runs only, not the waits for
        // earlier work or the pipelines built on a candidate's first run.
        let over_budget = |b| started.elapsed() > TUNING_BUDGET || measured > class_budget(b);
        if best.is_some_and(|(b, _)| over_budget(b)) {
            log::info!("autotune {key}: budget spent, {name} not measured");
            continue;
        }
        let (dt, spent) = measure_candidate(gpu, &mut || run(*v), best.map(|(b, _)| b))?;
        measured += spent;
        log::info!("autotune {key}: {name} {:.3} ms", dt.as_secs_f64() * 1e3);
        if best.is_none_or(|(b, _)| dt < b) {
            best = Some((dt, i));
        }
    }
    let i = best.map_or(default, |(_, i)| i);
    let mut tuner = gpu
        .inner()
        .autotuner
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    tuner.insert(key, candidates[i].0);
    tuner.tuned += 1;
    if nesting.outermost {
        tuner.tuning_time += started.elapsed();
    }
    Ok(candidates[i].1)
}

/// See [`Autotuner::tuning_stats`]: (choices measured, time spent) in this process.
pub fn tuning_stats(gpu: &Gpu) -> (usize, Duration) {
    gpu.inner()
        .autotuner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tuning_stats()
}

/// The variant cached for `key` on this context's adapter, if one was measured.
pub fn cached_choice(gpu: &Gpu, key: &str) -> Option<String> {
    gpu.inner()
        .autotuner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .map(str::to_string)
}

/// The power-of-two bucket of a dimension, for shape classes.
pub fn bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_budget_is_a_multiple_of_the_best_between_floor_and_cap() {
        let ms = Duration::from_millis;
        assert_eq!(class_budget(ms(1)), BUDGET_FLOOR);
        assert_eq!(class_budget(ms(50)), ms(300));
        assert_eq!(class_budget(ms(900)), TUNING_BUDGET);
    }
}
