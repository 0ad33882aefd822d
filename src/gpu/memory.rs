//! GPU memory: [`Storage`] (a pooled buffer with its length) and the context's allocation,
//! upload, copy and read-back.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

use super::derived::DerivedCache;
use super::{lock, pool, Gpu, PoolStats};

/// A pooled GPU buffer of f32 values; returns to the pool when dropped (except the context's
/// shared zeros, which the context keeps).
pub struct Storage {
    pub(super) buffer: Option<wgpu::Buffer>,
    pub(super) len: usize,
    pub(super) gpu: Gpu,
    pub(super) pooled: bool,
    /// Values derived from the content (`derived.rs`) and the content's version.
    pub(super) derived: DerivedCache,
}

impl Storage {
    pub fn buffer(&self) -> &wgpu::Buffer {
        // Invariant: `buffer` is only `None` inside `drop`.
        self.buffer
            .as_ref()
            .expect("storage buffer present until drop")
    }
    /// Number of f32 values.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take().filter(|_| self.pooled) {
            lock(&self.gpu.inner.pool).give(b);
        }
    }
}

impl Gpu {
    /// A pooled buffer with room for `len` f32 values; its content is undefined.
    pub fn alloc(&self, len: usize, shape: &[usize]) -> Result<Storage> {
        let bytes = (len.max(1) * 4) as u64;
        let max = self.inner.limits.max_buffer_size;
        if pool::size_class(bytes) > max {
            return Err(Error::BufferTooLarge {
                bytes,
                max,
                shape: shape.to_vec(),
            });
        }
        let buffer = lock(&self.inner.pool).take(&self.inner.device, bytes);
        Ok(Storage {
            pooled: true,
            buffer: Some(buffer),
            len,
            gpu: self.clone(),
            derived: DerivedCache::default(),
        })
    }

    /// A buffer holding a copy of `data`. The copy is recorded in the current batch, so it is
    /// ordered after every dispatch recorded before it.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Storage> {
        let storage = self.alloc(data.len(), shape)?;
        if !data.is_empty() {
            let staging = self
                .inner
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("apga upload"),
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::COPY_SRC,
                });
            let mut batch = lock(&self.inner.batch);
            let enc = self.encoder(&mut batch);
            enc.copy_buffer_to_buffer(&staging, 0, storage.buffer(), 0, (data.len() * 4) as u64);
        }
        Ok(storage)
    }

    /// A zero-filled buffer of `len` values.
    pub fn zeros(&self, len: usize, shape: &[usize]) -> Result<Storage> {
        let storage = self.alloc(len, shape)?;
        let mut batch = lock(&self.inner.batch);
        let enc = self.encoder(&mut batch);
        enc.clear_buffer(storage.buffer(), 0, None);
        Ok(storage)
    }

    /// A shared buffer of at least `len` zeros that kernels only read (a missing bias). It is
    /// cleared once, not per call, so recording it does not break the open compute pass. The
    /// context keeps the bare buffer (a `Storage` there would hold the context and keep it
    /// alive forever); each call wraps it in a handle that does not return it to the pool.
    pub fn shared_zeros(&self, len: usize) -> Result<Arc<Storage>> {
        let mut z = lock(&self.inner.zero_buffer);
        let (buffer, n) = match z.as_ref().filter(|(_, n)| *n >= len) {
            Some((b, n)) => (b.clone(), *n),
            None => {
                let n = len.max(1024);
                let mut fresh = self.zeros(n, &[n])?;
                let b = fresh.buffer.take().expect("a fresh storage has its buffer");
                *z = Some((b.clone(), n));
                (b, n)
            }
        };
        Ok(Arc::new(Storage {
            buffer: Some(buffer),
            len: n,
            gpu: self.clone(),
            pooled: false,
            derived: DerivedCache::default(),
        }))
    }

    /// Copies `len` values from `src` to `dst` (both starting at element offsets).
    pub fn copy(&self, src: &Storage, src_off: usize, dst: &Storage, dst_off: usize, len: usize) {
        if len == 0 {
            return;
        }
        dst.touch();
        let mut batch = lock(&self.inner.batch);
        let enc = self.encoder(&mut batch);
        enc.copy_buffer_to_buffer(
            src.buffer(),
            (src_off * 4) as u64,
            dst.buffer(),
            (dst_off * 4) as u64,
            (len * 4) as u64,
        );
    }

    /// Sets `len` values of `dst` from element `off` on to zero (a buffer clear, no kernel).
    pub fn clear(&self, dst: &Storage, off: usize, len: usize) {
        if len == 0 {
            return;
        }
        dst.touch();
        let mut batch = lock(&self.inner.batch);
        let enc = self.encoder(&mut batch);
        enc.clear_buffer(dst.buffer(), (off * 4) as u64, Some((len * 4) as u64));
    }

    /// Reads `len` values of `storage` back to the host; submits and waits for all work
    /// recorded so far.
    pub fn read(&self, storage: &Storage, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * 4) as u64;
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("apga read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut batch = lock(&self.inner.batch);
            let enc = self.encoder(&mut batch);
            enc.copy_buffer_to_buffer(storage.buffer(), 0, &staging, 0, bytes);
            self.submit_locked(&mut batch);
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poll_wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping a read-back buffer: {e}"))),
            Err(_) => return Err(Error::Gpu("read-back callback never ran".into())),
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("read-back view: {e:?}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.take_error()?;
        Ok(out)
    }

    /// Memory counters of the buffer pool.
    pub fn memory(&self) -> PoolStats {
        lock(&self.inner.pool).stats()
    }

    /// Starts a new peak measurement from the current usage.
    pub fn reset_peak_memory(&self) {
        lock(&self.inner.pool).reset_peak();
    }

    /// Frees cached buffers no tensor uses.
    pub fn release_cached_memory(&self) {
        lock(&self.inner.pool).release_cached();
    }
}
