//! Mirage test networks.
//!
//! - [`sim`]: the deterministic discrete-event simulator. It drives the protocol's own
//!   staging core over a virtual clock, so fleets of 100,000+ machines run on one box.

pub mod sim;
