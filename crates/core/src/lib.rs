//! hearth-core: the sans-IO heart of hearth, built for native targets and `wasm32-unknown-unknown`.
//!
//! It takes bytes, state and seeds, and returns values: no files, sockets or clocks here (those
//! belong to the crate that owns the platform: `hearth-web`, `hearth-edge`, `hearth-aggregator`).
//! The one exception is [`person::store::FileStore`], the native file store behind the
//! [`person::store::Store`] trait.
//!
//! Modules, lower layers first (a module uses only those above it in this list; the tidy test in
//! `tests/tidy.rs` checks it):
//!
//! - [`platform`]: what differs between wasm32 and native (randomness, threads, GPU waits).
//! - [`codec`]: the magic/version/length-checked framing of every binary format.
//! - [`quant`]: symmetric int8 quantization and the borrowed catalog view the scorers read.
//! - [`data`]: datasets (MovieLens 100K layout, generic CSV), splits, negatives.
//! - [`eval`]: HR@K / NDCG@K under sampled and full-ranking protocols, coverage, calibration.
//! - [`person`]: a person's history (automerge), sealing at rest, storage, sync, the relay.
//! - [`privacy`]: differential privacy: the accountant, discrete Gaussian noise, the distributed
//!   mechanism's encoding, the person's ledger.
//! - [`secagg`]: secure aggregation (SecAgg+), client and server state machines and their wire.
//! - [`artifact`]: what a model directory publishes: tensor file, manifest, bundle, catalog shard.
//! - [`device`]: user tower, int8 scan, ranking, the GPU runtime, the device session.
//! - `model` (feature `model`): the two-tower model in burn, training and fine-tuning.
//! - [`fed`]: federated rounds: the plan, the federated parameters, aggregation, the device's round.
//! - `testkit` (feature `testkit`): seeded data and recall for tests and benchmarks.
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

pub mod platform;
pub mod codec;
pub mod quant;
pub mod data;
pub mod eval;
pub mod person;
pub mod privacy;
pub mod secagg;
pub mod artifact;
pub mod device;
#[cfg(feature = "model")]
pub mod model;
pub mod fed;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
