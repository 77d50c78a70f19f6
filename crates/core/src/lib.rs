//! hearth-core: the sans-IO heart of hearth, built for native targets and `wasm32-unknown-unknown`.
//!
//! It takes bytes, state and seeds, and returns values: no files, sockets or clocks here (those
//! belong to the crate that owns the platform: `hearth-web`, `hearth-edge`, `hearth-aggregator`).
//! The one exception is [`store::FileStore`], the native file store behind the [`store::Store`]
//! trait (not built for wasm32).
//!
//! - [`data`]: dataset readers (MovieLens 100K layout, generic CSV), leave-one-out, negatives.
//! - [`eval`]: HR@K / NDCG@K under sampled and full-ranking protocols, coverage.
//! - [`artifact`]: the model manifest and the `TensorFile` parameter format.
//! - [`bundle`]: a model directory as verified bytes (manifest, parameters, catalog).
//! - [`history`]: a person's history as an automerge document (record, forget, wipe, profile).
//! - [`quant`]: int8 quantization and the `CatalogShard` format.
//! - [`rank`]: exclusions, popularity fusion, MMR diversity, exploration, confidence, reasons.
//! - [`score`]: catalog scoring and top-k: reference, CPU SIMD, GPU (feature `gpu`).
//! - [`store`]: two-generation storage of sealed documents (in memory, atomic files).
//! - [`sync`]: end-to-end encrypted automerge sync between a person's devices; pairing.
//! - [`tower`]: the user tower's forward pass for one person in plain Rust (no burn).
//! - [`vault`]: AES-256-GCM sealing at rest; passphrase (PBKDF2) and device keys; rotation.
//! - `model` (feature `model`): the two-tower model in burn, generic over the backend.
//!
//! ```
//! use hearth_core::data::{Dataset, leave_one_out, sample_negatives};
//! use hearth_core::eval::{evaluate, MostPopular, Protocol};
//! let csv = b"user,item\na,x\na,y\nb,x\nb,z\nc,x\nc,y\n";
//! let ds = Dataset::from_csv("tiny.csv", csv, None).unwrap();
//! let split = leave_one_out(&ds).unwrap();
//! let negatives = sample_negatives(&ds, &split, 99, 1);
//! let pop = MostPopular::fit(ds.items.len(), &split.train);
//! let m = evaluate(&pop, &Protocol {
//!     n_items: ds.items.len(), train: &split.train, test: &split.test,
//!     candidates: &negatives, k: 10, seed: 1,
//! });
//! assert!(m.sampled.hr > 0.0);
//! ```

pub mod artifact;
pub mod bundle;
pub mod data;
pub mod eval;
pub mod history;
pub mod quant;
pub mod rank;
pub mod score;
pub mod store;
pub mod sync;
pub mod tower;
pub mod vault;
#[cfg(feature = "model")]
pub mod model;
#[cfg(feature = "model")]
pub mod tune;
