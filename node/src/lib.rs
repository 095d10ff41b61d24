//! The Mirage node: everything that touches the outside world on behalf of the
//! protocol core (files, keys, the network, the database, child processes).

pub mod bench;
pub mod chunk_store;
pub mod daemon;
pub mod digest_cache;
pub mod direct_io;
pub mod install;
pub mod keyfile;
pub mod lane;
pub mod net;
pub mod release;
pub mod sandbox;
pub mod scan;
pub mod store;
pub mod trace;
pub mod transport_bench;
