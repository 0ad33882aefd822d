//! Per-kernel GPU time (`APGA_PROFILE=1`, `apga-gpu bench --profile`).
//!
//! With the adapter's TIMESTAMP_QUERY feature every dispatch gets its own compute pass whose
//! beginning and end write a timestamp; the query set is resolved at each submit and read back
//! (profiling therefore waits for the GPU at every submit, which a normal run never does).
//! Without timestamps each dispatch is submitted alone and timed by the host clock around a
//! full wait, which adds the submit latency to every entry; the report says which clock it
//! used.

use std::collections::HashMap;
use std::time::Duration;

/// Queries per set: two per dispatch, and a batch never holds more than this many dispatches.
pub(crate) const MAX_PROFILED_DISPATCHES: u32 = 1024;

/// What was measured for one kernel (shader, entry point and specialisation constants).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub kernel: String,
    pub dispatches: u64,
    pub total: Duration,
}

/// Totals since the last [`crate::gpu::Gpu::profile_reset`].
#[derive(Debug, Clone, Default)]
pub struct ProfileReport {
    /// `"timestamp queries"` or `"host clock around each dispatch"`.
    pub clock: &'static str,
    /// Slowest first.
    pub kernels: Vec<KernelTime>,
}

impl ProfileReport {
    pub fn total(&self) -> Duration {
        self.kernels.iter().map(|k| k.total).sum()
    }

    /// A table of the `top` slowest kernels with their share of the total.
    pub fn table(&self, top: usize) -> String {
        let total = self.total().as_secs_f64().max(1e-12);
        let mut s = format!(
            "per-kernel GPU time ({}), {} kernels, {:.1} ms in all\n",
            self.clock,
            self.kernels.len(),
            total * 1e3
        );
        s += &format!(
            "  {:>9} {:>6} {:>6} {:>9}  kernel\n",
            "ms", "share", "calls", "ms/call"
        );
        for k in self.kernels.iter().take(top) {
            let ms = k.total.as_secs_f64() * 1e3;
            s += &format!(
                "  {:>9.2} {:>5.1}% {:>6} {:>9.3}  {}\n",
                ms,
                100.0 * k.total.as_secs_f64() / total,
                k.dispatches,
                ms / k.dispatches.max(1) as f64,
                k.kernel
            );
        }
        if self.kernels.len() > top {
            let rest: Duration = self.kernels.iter().skip(top).map(|k| k.total).sum();
            s += &format!(
                "  {:>9.2} {:>5.1}%  ({} more kernels)\n",
                rest.as_secs_f64() * 1e3,
                100.0 * rest.as_secs_f64() / total,
                self.kernels.len() - top
            );
        }
        s
    }
}

/// Profiler state kept by the GPU context.
pub(crate) struct Profiler {
    /// `None` when the adapter has no timestamp queries (host-clock fallback).
    pub queries: Option<Queries>,
    /// Labels of the dispatches recorded in the open batch, in query order.
    pub pending: Vec<String>,
    totals: HashMap<String, (u64, Duration)>,
}

pub(crate) struct Queries {
    pub set: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    pub period_ns: f64,
}

impl Profiler {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, timestamps: bool) -> Profiler {
        let queries = timestamps.then(|| {
            let count = 2 * MAX_PROFILED_DISPATCHES;
            let bytes = count as u64 * 8;
            Queries {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("apga profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                }),
                resolve: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("apga profile resolve"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("apga profile read-back"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                period_ns: queue.get_timestamp_period() as f64,
            }
        });
        Profiler {
            queries,
            pending: Vec::new(),
            totals: HashMap::new(),
        }
    }

    pub fn add(&mut self, label: &str, dt: Duration) {
        let e = self.totals.entry(label.to_string()).or_default();
        e.0 += 1;
        e.1 += dt;
    }

    /// Adds the durations of the pending dispatches from resolved timestamps (pairs of
    /// begin/end ticks in query order).
    pub fn add_ticks(&mut self, ticks: &[u64]) {
        let period = self.queries.as_ref().map_or(1.0, |q| q.period_ns);
        let pending = std::mem::take(&mut self.pending);
        for (label, pair) in pending.iter().zip(ticks.chunks_exact(2)) {
            let ns = pair[1].saturating_sub(pair[0]) as f64 * period;
            self.add(label, Duration::from_nanos(ns as u64));
        }
    }

    pub fn reset(&mut self) {
        self.totals.clear();
    }

    pub fn report(&self) -> ProfileReport {
        let mut kernels: Vec<KernelTime> = self
            .totals
            .iter()
            .map(|(k, (n, t))| KernelTime {
                kernel: k.clone(),
                dispatches: *n,
                total: *t,
            })
            .collect();
        kernels.sort_by(|a, b| b.total.cmp(&a.total).then(a.kernel.cmp(&b.kernel)));
        ProfileReport {
            clock: if self.queries.is_some() {
                "timestamp queries"
            } else {
                "host clock around each dispatch"
            },
            kernels,
        }
    }
}

/// The name a dispatch is reported under: `shader::entry` plus its specialisation constants.
pub(crate) fn label(shader: &str, entry: &str, constants: &[(&str, f64)]) -> String {
    if constants.is_empty() {
        format!("{shader}::{entry}")
    } else {
        let c: Vec<String> = constants.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{shader}::{entry} [{}]", c.join(","))
    }
}
