//! A person's own data, which never leaves their devices unsealed: the [`history`] document,
//! sealing at rest ([`vault`]), two-generation storage ([`store`]), end-to-end encrypted sync
//! between their devices ([`sync`]) and the store-and-forward [`relay`] logic that carries the
//! sealed envelopes without being able to read them.

pub mod history;
pub mod relay;
pub mod store;
pub mod sync;
pub mod vault;
