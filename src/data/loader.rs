//! Batches on worker threads: decoding, resizing (or generating, for synthetic data) run on
//! `workers` threads ahead of the consumer, each with a bounded queue, so the GPU never waits
//! on the host and memory stays bounded. Batch `b` is built by worker `b % workers` and read
//! from that worker's queue, so batches arrive in order and the same seed and epoch always give
//! the same batches.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::data::dataset::{Sample, Source};
use crate::data::preprocess::{Normalize, Preprocess, IMAGENET_MEAN, IMAGENET_STD};
use crate::data::synthetic::{generate, SyntheticConfig};
use crate::error::{Error, Result};

/// One batch, host side: images [n, 3, s, s], labels, and for synthetic data the ROI masks
/// [n, 1, s, s].
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    pub rois: Option<Vec<f32>>,
    /// Synthetic data: where the class evidence is, [n, s, s] (see `SyntheticImage`).
    pub evidence: Option<Vec<f32>>,
    /// Synthetic data: where the shortcut marker is, [n, s, s].
    pub shortcut: Option<Vec<f32>>,
    /// Positions of the samples in the split.
    pub indices: Vec<usize>,
    /// Unreadable images left out of this batch (with `skip_bad_images`).
    pub skipped: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// How batches are drawn.
#[derive(Debug, Clone, Copy)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// Shuffle with (seed, epoch); otherwise the split's order.
    pub shuffle: bool,
    pub seed: u64,
    pub epoch: u64,
    /// Leave out a last batch smaller than `batch_size`.
    pub drop_last: bool,
    pub skip_bad_images: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 16,
            workers: 2,
            prefetch: 2,
            shuffle: true,
            seed: 0,
            epoch: 0,
            drop_last: false,
            skip_bad_images: false,
        }
    }
}

/// Ground-truth masks of a synthetic sample, each [s, s].
pub struct Truth {
    pub roi: Vec<f32>,
    pub evidence: Vec<f32>,
    pub shortcut: Vec<f32>,
}

/// Preprocessed values of one sample: ([3, s, s], the ground truth of synthetic data).
pub fn load_sample(
    sample: &Sample,
    pre: &Preprocess,
    synthetic: Option<&SyntheticConfig>,
) -> Result<(Vec<f32>, Option<Truth>)> {
    match &sample.source {
        Source::File(p) => Ok((pre.load(p)?, None)),
        Source::Synthetic { split, index } => {
            let cfg = synthetic.ok_or_else(|| {
                Error::Incomplete("synthetic sample without a generator configuration".into())
            })?;
            // Generated directly at the requested size: no resampling.
            let cfg = SyntheticConfig {
                size: pre.size,
                ..*cfg
            };
            let img = generate(&cfg, split, *index);
            let plane = pre.size * pre.size;
            let mut out = vec![0f32; 3 * plane];
            for c in 0..3 {
                for (o, v) in out[c * plane..(c + 1) * plane].iter_mut().zip(&img.pixels) {
                    *o = match pre.normalize {
                        Normalize::Imagenet => (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
                        Normalize::None => *v,
                    };
                }
            }
            Ok((
                out,
                Some(Truth {
                    roi: img.roi,
                    evidence: img.evidence,
                    shortcut: img.shortcut,
                }),
            ))
        }
    }
}

/// An ordered stream of batches of one split.
pub struct Loader {
    queues: Vec<Receiver<Result<Batch>>>,
    next: usize,
    total: usize,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    pub fn new(
        samples: Arc<Vec<Sample>>,
        synthetic: Option<SyntheticConfig>,
        pre: Preprocess,
        cfg: LoaderConfig,
    ) -> Loader {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        if cfg.shuffle {
            let mut rng =
                StdRng::seed_from_u64(cfg.seed ^ cfg.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            order.shuffle(&mut rng);
        }
        let bs = cfg.batch_size.max(1);
        let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(|c| c.to_vec()).collect();
        if cfg.drop_last && batches.last().is_some_and(|b| b.len() < bs) {
            batches.pop();
        }
        let total = batches.len();
        let batches = Arc::new(batches);
        let n_workers = cfg.workers.clamp(1, total.max(1));
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for w in 0..n_workers {
            let (tx, rx) = sync_channel::<Result<Batch>>(cfg.prefetch.max(1));
            queues.push(rx);
            let (samples, batches) = (samples.clone(), batches.clone());
            workers.push(std::thread::spawn(move || {
                for b in (w..batches.len()).step_by(n_workers) {
                    let result = build(
                        &samples,
                        &batches[b],
                        &pre,
                        synthetic.as_ref(),
                        cfg.skip_bad_images,
                    );
                    let failed = result.is_err();
                    // A closed queue means the consumer is gone: stop quietly.
                    if tx.send(result).is_err() || failed {
                        return;
                    }
                }
            }));
        }
        Loader {
            queues,
            next: 0,
            total,
            workers,
        }
    }

    /// Number of batches this loader yields.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

fn build(
    samples: &[Sample],
    idx: &[usize],
    pre: &Preprocess,
    synthetic: Option<&SyntheticConfig>,
    skip: bool,
) -> Result<Batch> {
    // The batch's pixels, allocated fallibly: an error naming the size, not an abort.
    let values = idx.len() * 3 * pre.size * pre.size;
    let mut images = Vec::new();
    images.try_reserve_exact(values).map_err(|e| {
        Error::Incomplete(format!(
            "a batch of {n} images of {s}x{s} needs {mib} MiB of host memory, which could \
             not be allocated ({e}): lower --batch-size or --image-size",
            n = idx.len(),
            s = pre.size,
            mib = (values * 4) >> 20
        ))
    })?;
    let mut batch = Batch {
        images,
        labels: Vec::new(),
        rois: None,
        evidence: None,
        shortcut: None,
        indices: Vec::new(),
        skipped: 0,
    };
    for &i in idx {
        match load_sample(&samples[i], pre, synthetic) {
            Ok((img, truth)) => {
                batch.images.extend(img);
                if let Some(t) = truth {
                    batch.rois.get_or_insert_with(Vec::new).extend(t.roi);
                    batch
                        .evidence
                        .get_or_insert_with(Vec::new)
                        .extend(t.evidence);
                    batch
                        .shortcut
                        .get_or_insert_with(Vec::new)
                        .extend(t.shortcut);
                }
                batch.labels.push(samples[i].label);
                batch.indices.push(i);
            }
            Err(e) if skip => {
                log::warn!("skipping unreadable image: {e}");
                batch.skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        let q = &self.queues[self.next % self.queues.len()];
        self.next += 1;
        match q.recv() {
            Ok(r) => Some(r),
            Err(_) => Some(Err(Error::Incomplete(
                "a data-loading worker stopped unexpectedly".into(),
            ))),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the queues unblocks workers waiting to send; then they exit.
        self.queues.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
