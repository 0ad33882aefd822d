//! Layer 8: data. Dataset sources behind one `--data` option (`dataset.rs`), the synthetic
//! radiograph generator (`synthetic.rs`), the one preprocessing definition every entry point
//! shares (`preprocess.rs`), batching on worker threads (`loader.rs`) and the baselines'
//! augmentations (`augment.rs`, TrivialAugmentWide and RandAugment in `auto_augment.rs`), and the label-free foreground targets of the policy's warm
//! start (`foreground.rs`).

pub mod augment;
pub mod auto_augment;
pub mod dataset;
pub mod foreground;
pub mod loader;
pub mod preprocess;
mod sources;
pub mod synthetic;

pub use dataset::{DataOptions, DataSpec, Dataset, Sample, Source};
pub use loader::{Batch, Loader, LoaderConfig};
pub use preprocess::{Normalize, Preprocess};
pub use synthetic::SyntheticConfig;
