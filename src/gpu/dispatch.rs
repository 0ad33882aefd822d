//! Recording and submitting work: dispatches go into one open compute pass of the current
//! batch, with their parameters in a per-submit arena; the batch is submitted when full, when
//! the host waits for a value, or on `flush`; validation errors are collected and reported.

use std::sync::Mutex;

use crate::error::{Error, Result};

use super::pipeline::{Kernel, Pipeline};
use super::{lock, Gpu, Storage};
use super::{profile, ProfileReport};

/// Size of the per-submit parameter arena; a batch is flushed when it fills.
pub(super) const PARAM_ARENA_BYTES: u64 = 1 << 20;
/// Dispatches recorded before a batch is submitted even if nobody waits for it.
pub(super) const MAX_DISPATCHES_PER_SUBMIT: u32 = 1024;

#[derive(Default)]
pub(super) struct Batch {
    // Field order matters: the pass borrows the encoder, so it must be dropped first.
    pub(super) pass: Option<wgpu::ComputePass<'static>>,
    pub(super) encoder: Option<wgpu::CommandEncoder>,
    pub(super) params: Vec<u8>,
    pub(super) dispatches: u32,
    pub(super) submits: u64,
}

impl Gpu {
    /// The batch's encoder with no compute pass open (copies and clears need that).
    pub(super) fn encoder<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::CommandEncoder {
        batch.pass = None;
        batch.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("apga batch"),
                })
        })
    }

    pub(super) fn poll_wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))
    }

    pub(super) fn take_error(&self) -> Result<()> {
        let mut errors = lock(&self.inner.errors);
        if errors.is_empty() {
            Ok(())
        } else {
            let all = errors.drain(..).collect::<Vec<_>>().join("; ");
            let hint = if all.to_lowercase().contains("memory") {
                " (the GPU ran out of memory: try a smaller --batch-size or --image-size)"
            } else {
                ""
            };
            Err(Error::Gpu(format!("{all}{hint}")))
        }
    }

    /// Submits everything recorded so far without waiting.
    pub fn flush(&self) {
        let mut batch = lock(&self.inner.batch);
        self.submit_locked(&mut batch);
    }

    /// Submits and waits until the GPU has finished; reports any error wgpu raised meanwhile.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.poll_wait()?;
        self.take_error()
    }

    pub(super) fn submit_locked(&self, batch: &mut Batch) {
        batch.pass = None;
        let mut profiled = 0;
        if let Some(mut encoder) = batch.encoder.take() {
            if !batch.params.is_empty() {
                self.inner
                    .queue
                    .write_buffer(&self.inner.params_buffer, 0, &batch.params);
            }
            if let Some(prof) = &self.inner.profiler {
                let prof = lock(prof);
                if let Some(q) = &prof.queries {
                    profiled = prof.pending.len() as u32;
                    if profiled > 0 {
                        encoder.resolve_query_set(&q.set, 0..2 * profiled, &q.resolve, 0);
                        encoder.copy_buffer_to_buffer(
                            &q.resolve,
                            0,
                            &q.readback,
                            0,
                            profiled as u64 * 16,
                        );
                    }
                }
            }
            self.inner.queue.submit([encoder.finish()]);
            batch.submits += 1;
        }
        batch.params.clear();
        batch.dispatches = 0;
        if profiled > 0 {
            self.read_timestamps(profiled);
        }
    }

    /// Waits for the submitted batch and adds its dispatches' timestamp pairs to the profile.
    pub(super) fn read_timestamps(&self, dispatches: u32) {
        let Some(prof) = &self.inner.profiler else {
            return;
        };
        let mut prof = lock(prof);
        let ticks: Option<Vec<u64>> = prof.queries.as_ref().and_then(|q| {
            let slice = q.readback.slice(0..dispatches as u64 * 16);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.poll_wait().ok()?;
            rx.recv().ok()?.ok()?;
            let ticks = slice
                .get_mapped_range()
                .ok()
                .map(|v| bytemuck::cast_slice::<u8, u64>(&v).to_vec());
            q.readback.unmap();
            ticks
        });
        match ticks {
            Some(t) => prof.add_ticks(&t),
            None => {
                log::warn!("profile: could not read the timestamps of {dispatches} dispatches");
                prof.pending.clear();
            }
        }
    }

    /// Whether per-kernel profiling is on (`GpuOptions::profile`).
    pub fn profiling(&self) -> bool {
        self.inner.profiler.is_some()
    }

    /// Per-kernel GPU time since the last [`Gpu::profile_reset`], after finishing all recorded
    /// work; `None` when profiling is off.
    pub fn profile_report(&self) -> Result<Option<ProfileReport>> {
        let Some(prof) = &self.inner.profiler else {
            return Ok(None);
        };
        self.sync()?;
        Ok(Some(lock(prof).report()))
    }

    /// Finishes recorded work and clears the per-kernel totals.
    pub fn profile_reset(&self) -> Result<()> {
        self.sync()?;
        if let Some(prof) = &self.inner.profiler {
            lock(prof).reset();
        }
        Ok(())
    }

    /// Records one dispatch of `kernel` into the current batch.
    ///
    /// `params` fills the uniform block at binding 0 (at most 256 bytes); `outputs` bind as
    /// read-write storage from binding 1, then `inputs` as read-only storage.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        outputs: &[&Storage],
        inputs: &[&Storage],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(params);
        if bytes.len() > self.inner.param_slot {
            return Err(Error::Gpu(format!(
                "kernel {} has {} bytes of parameters (max {})",
                kernel.entry,
                bytes.len(),
                self.inner.param_slot
            )));
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let max_binding = self.inner.limits.max_storage_buffer_binding_size;
        if let Some(big) = outputs
            .iter()
            .chain(inputs)
            .map(|st| st.len() as u64 * 4)
            .find(|&b| b > max_binding)
        {
            return Err(Error::Gpu(format!(
                "kernel {}::{} would bind a buffer of {:.1} MiB, but this adapter binds at most \
                 {:.1} MiB per buffer (its max_storage_buffer_binding_size); use a smaller \
                 --batch-size or --image-size",
                kernel.shader.name,
                kernel.entry,
                big as f64 / (1 << 20) as f64,
                max_binding as f64 / (1 << 20) as f64
            )));
        }
        let pipeline = self.pipeline(kernel, outputs.len(), inputs.len())?;
        for out in outputs {
            out.touch();
        }
        let mut batch = lock(&self.inner.batch);
        if batch.params.len() + self.inner.param_slot > PARAM_ARENA_BYTES as usize
            || batch.dispatches >= MAX_DISPATCHES_PER_SUBMIT
        {
            self.submit_locked(&mut batch);
        }
        let offset = batch.params.len();
        batch.params.extend_from_slice(bytes);
        batch.params.resize(offset + self.inner.param_slot, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.inner.params_buffer,
                offset: offset as u64,
                size: wgpu::BufferSize::new(self.inner.param_slot as u64),
            }),
        }];
        for (i, s) in outputs.iter().chain(inputs.iter()).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: s.buffer(),
                    offset: 0,
                    // Bind only the values, not the size class's slack, so that a buffer whose
                    // class rounds past the binding limit still binds.
                    size: wgpu::BufferSize::new((s.len().max(1) * 4) as u64),
                }),
            });
        }
        let bind_group = self
            .inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.layout,
                entries: &entries,
            });
        if let Some(prof) = &self.inner.profiler {
            let name = profile::label(kernel.shader.name, kernel.entry, kernel.constants);
            return self.dispatch_profiled(
                prof,
                &mut batch,
                name,
                &pipeline,
                &bind_group,
                workgroups,
            );
        }
        if batch.pass.is_none() {
            let encoder = self.encoder(&mut batch);
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("apga kernels"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            batch.pass = Some(pass);
        }
        if let Some(pass) = batch.pass.as_mut() {
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        batch.dispatches += 1;
        Ok(())
    }

    /// A dispatch in its own compute pass, timed by timestamps written at the pass's beginning
    /// and end, or (no timestamp queries) submitted alone and timed by the host clock.
    pub(super) fn dispatch_profiled(
        &self,
        prof: &Mutex<profile::Profiler>,
        batch: &mut Batch,
        name: String,
        pipeline: &Pipeline,
        bind_group: &wgpu::BindGroup,
        workgroups: [u32; 3],
    ) -> Result<()> {
        let timestamps = lock(prof).queries.is_some();
        if !timestamps {
            // Finish everything before, so the clock sees this dispatch alone.
            self.submit_locked(batch);
            self.poll_wait()?;
        }
        let index = lock(prof).pending.len() as u32;
        let start = std::time::Instant::now();
        {
            let guard = lock(prof);
            let writes = guard
                .queries
                .as_ref()
                .map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: &q.set,
                    beginning_of_pass_write_index: Some(2 * index),
                    end_of_pass_write_index: Some(2 * index + 1),
                });
            let encoder = self.encoder(batch);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("apga profiled kernel"),
                timestamp_writes: writes,
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        batch.dispatches += 1;
        if timestamps {
            lock(prof).pending.push(name);
        } else {
            self.submit_locked(batch);
            self.poll_wait()?;
            lock(prof).add(&name, start.elapsed());
        }
        Ok(())
    }

    /// Splits `n` workgroups over x and y so that neither exceeds the adapter's per-dimension
    /// limit. Kernels recover the linear id as `wid.x + wid.y * num_workgroups.x`.
    pub fn grid(&self, n: usize) -> [u32; 3] {
        let max = self
            .inner
            .limits
            .max_compute_workgroups_per_dimension
            .max(1) as usize;
        if n <= max {
            [n as u32, 1, 1]
        } else {
            let y = n.div_ceil(max);
            let x = n.div_ceil(y);
            [x as u32, y as u32, 1]
        }
    }

    /// Number of queue submissions so far (tests check that work is batched).
    pub fn submit_count(&self) -> u64 {
        lock(&self.inner.batch).submits
    }
}
