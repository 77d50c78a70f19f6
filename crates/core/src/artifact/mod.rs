//! Model artifacts, the files a model directory or store publishes: the parameters
//! ([`tensor`]), the manifest ([`manifest`]), the verified directory as bytes ([`bundle`]) and
//! the int8 item embeddings ([`shard`]). Plain Rust with no burn dependency, so the browser's
//! page module reads the same global parameters that burn trained.

pub mod bundle;
pub mod manifest;
pub mod shard;
pub mod tensor;

pub use manifest::{DatasetInfo, Link, ManifestMetrics, ModelDims, ModelManifest, MODEL_FORMAT_VERSION, Selection, ValidationPoint};
pub use tensor::{ArtifactError, MAX_TENSOR_FILE, NamedTensor, TENSOR_MAGIC, TENSOR_VERSION, TensorFile};

pub use crate::codec::sha256;
