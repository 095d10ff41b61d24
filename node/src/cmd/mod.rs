//! One module per subcommand: argument parsing and output, with the work in the library.

pub mod bench;
pub mod fingerprint;
pub mod keygen;
