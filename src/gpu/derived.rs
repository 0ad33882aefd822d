//! Values derived from a buffer's content, cached on the buffer until that content changes:
//! re-laid-out, flipped and Winograd-transformed convolution weights, which every forward
//! and input gradient would otherwise rebuild (APGA runs the classifier's forward three times
//! and its input gradient twice between two of its optimizer steps).
//!
//! Every write a kernel, copy or clear makes to a [`Storage`] bumps its version
//! (`Gpu::dispatch` for each output, `Gpu::copy` and `Gpu::clear` for the destination) and
//! frees the values derived from the old content; a derived value is reused only at the
//! version it was made from. Work runs in the order it is recorded, so a value made after a
//! write and looked up before the next one is always current. Cached values count against a
//! per-context budget (beyond it they are made and not kept) and are freed with their buffer.
//! While the autotuner measures candidates nothing is cached or reused, so that a variant's
//! time includes the re-layouts it needs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Result;

use super::{autotune, lock, Storage};

/// Bytes of derived values a context keeps at most.
pub const DERIVED_BUDGET_BYTES: usize = 256 << 20;

/// The derived values of one buffer and its content version.
#[derive(Default)]
pub(crate) struct DerivedCache {
    version: AtomicU64,
    values: Mutex<Vec<Derived>>,
}

struct Derived {
    key: String,
    version: u64,
    value: Arc<Storage>,
}

impl Drop for Derived {
    fn drop(&mut self) {
        let bytes = self.value.len() * 4;
        self.value
            .gpu()
            .inner
            .derived_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl DerivedCache {
    /// Marks the content as changed, and frees the values derived from the old content.
    pub(crate) fn touch(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
        let stale = std::mem::take(&mut *lock(&self.values));
        drop(stale);
    }
}

impl Storage {
    /// Marks this buffer's content as changed: values derived from it are made anew.
    pub(crate) fn touch(&self) {
        self.derived.touch();
    }

    /// The value derived from this buffer's current content under `key` (which names the
    /// derivation and its parameters): the cached one, or `make`'s, kept while the context's
    /// budget allows.
    pub(crate) fn derived(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Storage>,
    ) -> Result<Arc<Storage>> {
        if autotune::measuring() {
            return Ok(Arc::new(make()?));
        }
        let version = self.derived.version.load(Ordering::Relaxed);
        if let Some(d) = lock(&self.derived.values)
            .iter()
            .find(|d| d.key == key && d.version == version)
        {
            return Ok(d.value.clone());
        }
        // Made without the lock held: `make` may derive other values from this buffer.
        let value = Arc::new(make()?);
        let mut values = lock(&self.derived.values);
        values.retain(|d| d.key != key && d.version == version);
        let bytes = value.len() * 4;
        let total: &AtomicUsize = &self.gpu.inner.derived_bytes;
        if total.fetch_add(bytes, Ordering::Relaxed) + bytes <= DERIVED_BUDGET_BYTES {
            values.push(Derived {
                key: key.to_string(),
                version,
                value: value.clone(),
            });
        } else {
            total.fetch_sub(bytes, Ordering::Relaxed);
        }
        Ok(value)
    }
}

impl super::Gpu {
    /// Bytes of derived values (re-laid-out and transformed weights) this context keeps now.
    pub fn derived_bytes(&self) -> usize {
        self.inner.derived_bytes.load(Ordering::Relaxed)
    }
}
