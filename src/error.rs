//! Errors as values, with the context a user needs to fix the cause (which adapter, which op,
//! which shape, which file).

use std::path::PathBuf;

/// The fix printed whenever no GPU adapter can be found.
pub const NO_ADAPTER_FIX: &str = "install a GPU driver (Vulkan, Metal or DX12); on a machine \
without a GPU, install a software Vulkan driver such as Mesa's lavapipe \
(`apt-get install mesa-vulkan-drivers` on Debian/Ubuntu)";

/// Every failure the library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// wgpu found no adapter at all (or none for the backends `WGPU_BACKEND` allows).
    #[error("no GPU adapter found{detail}: {fix}", fix = NO_ADAPTER_FIX)]
    NoAdapter { detail: String },

    /// An adapter was asked for by name or index and none matched.
    #[error("no adapter matches {wanted:?} (from {source_of_request}); available: {available}")]
    AdapterNotFound {
        wanted: String,
        source_of_request: String,
        available: String,
    },

    /// The adapter refused to open a device.
    #[error("could not open a device on adapter {adapter:?}: {detail}")]
    RequestDevice { adapter: String, detail: String },

    /// A validation or out-of-memory error reported by wgpu.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// A buffer larger than the adapter allows.
    #[error(
        "a buffer of {bytes} bytes (shape {shape:?}) exceeds the adapter's limit of {max} bytes"
    )]
    BufferTooLarge {
        bytes: u64,
        max: u64,
        shape: Vec<usize>,
    },

    /// A command-line flag, configuration key or environment variable with a value that
    /// cannot be used (`what` names it).
    #[error("{what}: {detail}")]
    Usage { what: String, detail: String },

    /// Operands whose shapes do not fit the op.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// Host data whose length does not match the requested shape.
    #[error("{len} values cannot fill a tensor of shape {shape:?} ({numel} elements)")]
    DataLength {
        len: usize,
        shape: Vec<usize>,
        numel: usize,
    },

    /// Backward called on something that cannot start a backward pass.
    #[error("autodiff: {0}")]
    Autodiff(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A command could not do all it was asked (details were reported as they happened).
    #[error("{0}")]
    Incomplete(String),

    /// A file was read but its content is not what was expected.
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Maps an I/O failure on `path` to an error naming it: `.map_err(Error::io(&path))`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Usage error helper: `what` is the flag, key or variable.
    pub fn usage(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Usage {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Shape error helper.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}
