//! One module per subcommand: argument parsing and output, with the work in the library.

pub mod bench;
pub mod bootstrap;
pub mod fingerprint;
pub mod keygen;
pub mod node;
pub mod sim;
pub mod status;
pub mod testnet;
