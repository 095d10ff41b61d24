//! Mirage test networks.
//!
//! - [`fleet`]: real loopback testnets of `mirage` processes on generated machines
//!   ([`sample_root`]).
//! - [`sample_app`]: a toy MySQL server's releases (one of which breaks some of those
//!   machines) and its vendor tests, for staged-deployment demos.
//! - [`swarm`]: one release seeded by a vendor and fetched by many receivers, timed.
//! - [`staged`]: a staged-deployment fleet of real processes and the sample app's releases.
//! - [`sim`]: the deterministic discrete-event simulator. It drives the protocol's own
//!   staging core over a virtual clock, so fleets of 100,000+ machines run on one box.

pub mod fleet;
pub mod sample_app;
pub mod sample_root;
pub mod sim;
pub mod staged;
pub mod swarm;
