//! Mirage test networks.
//!
//! - [`fleet`]: real loopback testnets of `mirage` processes on generated machines
//!   ([`sample_root`]).
//! - [`swarm`]: one release seeded by a vendor and fetched by many receivers, timed.
//! - [`sim`]: the deterministic discrete-event simulator. It drives the protocol's own
//!   staging core over a virtual clock, so fleets of 100,000+ machines run on one box.

pub mod fleet;
pub mod sample_root;
pub mod sim;
pub mod swarm;
