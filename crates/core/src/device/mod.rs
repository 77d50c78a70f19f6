//! What runs on a person's device to turn their history into a list: the user tower (CPU, and
//! GPU with feature `gpu`), the int8 catalog scan ([`score`]), ranking ([`rank`]), the shared GPU
//! runtime ([`gpu`]), and the [`session`] that holds a model, a history and the ranking policy
//! for the browser, the federated client and the edge alike.

#[cfg(feature = "gpu")]
pub mod gpu;
pub mod rank;
pub mod score;
pub mod session;
pub mod tower;
