//! Buffer pool: storage buffers are recycled by size class instead of being created and
//! destroyed for every tensor. Classes are 256-byte steps up to 4 KiB, then four classes per
//! power of two (at most 25% slack), sixteen above 16 MiB (at most 6.25%). Counters track
//! bytes in use, bytes held, and their peaks.

use std::collections::HashMap;

/// Usage every pooled buffer has: bound as storage, copied from (read-back) and to (upload).
pub const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The size class (bytes actually allocated) for a request of `bytes`.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let top = 63 - bytes.leading_zeros() as u64; // floor(log2)
                                                 // Four classes per power of two (<= 25% slack) below 16 MiB; sixteen (<= 6.25%) above,
                                                 // where the slack of a few activations would otherwise add hundreds of MB to the peak.
    let step = if top >= 24 {
        1u64 << (top - 4)
    } else {
        1u64 << (top - 2)
    };
    bytes.div_ceil(step) * step
}

/// Memory counters of the pool, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in buffers currently owned by live tensors.
    pub in_use: u64,
    /// Highest `in_use` seen since creation or the last `reset_peak`.
    pub peak_in_use: u64,
    /// Bytes of all buffers the pool has created and not released (in use + cached).
    pub held: u64,
    /// Highest `held` seen.
    pub peak_held: u64,
    /// Buffers created so far.
    pub created: u64,
    /// Requests served from the cache.
    pub reused: u64,
}

/// Free lists per size class.
#[derive(Default)]
pub struct BufferPool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

impl BufferPool {
    /// A buffer of at least `bytes` bytes (its size is `size_class(bytes)`), reused if possible.
    /// The content of a reused buffer is whatever it held before.
    pub fn take(&mut self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let class = size_class(bytes);
        let buffer = match self.free.get_mut(&class).and_then(|v| v.pop()) {
            Some(b) => {
                self.stats.reused += 1;
                b
            }
            None => {
                self.stats.created += 1;
                self.stats.held += class;
                self.stats.peak_held = self.stats.peak_held.max(self.stats.held);
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("apga tensor"),
                    size: class,
                    usage: USAGE,
                    mapped_at_creation: false,
                })
            }
        };
        self.stats.in_use += class;
        self.stats.peak_in_use = self.stats.peak_in_use.max(self.stats.in_use);
        buffer
    }

    /// Returns a buffer taken with `take`. Work already recorded that uses it still runs in
    /// order, because every later use is recorded after it on the same queue.
    pub fn give(&mut self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        self.stats.in_use = self.stats.in_use.saturating_sub(class);
        self.free.entry(class).or_default().push(buffer);
    }

    /// Destroys every cached (unused) buffer.
    pub fn release_cached(&mut self) {
        for (class, list) in self.free.drain() {
            self.stats.held = self.stats.held.saturating_sub(class * list.len() as u64);
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    pub fn reset_peak(&mut self) {
        self.stats.peak_in_use = self.stats.in_use;
        self.stats.peak_held = self.stats.held;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_bound_slack_and_are_monotone() {
        let mut prev = 0;
        for bytes in (4..200_000u64).step_by(4) {
            let c = size_class(bytes);
            assert!(c >= bytes);
            assert!(c >= prev, "classes must not shrink");
            if bytes > 4096 {
                assert!(c as f64 <= bytes as f64 * 1.25 + 4.0, "{bytes} -> {c}");
            }
            prev = c;
        }
        for bytes in [(16u64 << 20) + 1, 77_070_336, 115_605_504, 1 << 30] {
            let c = size_class(bytes);
            assert!(
                c >= bytes && c as f64 <= bytes as f64 * 1.0625,
                "{bytes} -> {c}"
            );
        }
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(4096), 4096);
        assert_eq!(size_class(4097), 5120);
    }
}
