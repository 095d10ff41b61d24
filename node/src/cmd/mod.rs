//! One module per subcommand: argument parsing and output, with the work in the library.

pub mod bench;
pub mod bootstrap;
pub mod fetch;
pub mod fingerprint;
pub mod keygen;
pub mod node;
pub mod sim;
pub mod status;
pub mod testnet;
pub mod vendor;

/// The runtime the long-running commands (node, bootstrap peer) run on: two workers,
/// which is what the machines we target have.
pub fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
