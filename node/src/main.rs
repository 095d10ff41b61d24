//! The `mirage` command line.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mirage", version, about = "Staged, environment-aware software upgrades over a peer-to-peer fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new secret key (mode 0600) and print its public key and peer id.
    Keygen(cmd::keygen::Args),
    /// Fingerprint an application's environment on the machine rooted at --root.
    Fingerprint(cmd::fingerprint::Args),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Run a bootstrap peer: DHT server and gossip relay for the overlay.
    Bootstrap(cmd::bootstrap::Args),
    /// The node daemon.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// Vendor tools: signing keys, and publishing and seeding releases.
    #[command(subcommand)]
    Vendor(cmd::vendor::VendorCommand),
    /// Ask a running node to download a release, and follow it.
    Fetch(cmd::fetch::Args),
    /// Ask a running node to switch an app back to its previous version.
    Rollback(cmd::status::RollbackArgs),
    /// Ask a running node for its status.
    Status(cmd::status::Args),
    /// Simulate a staged rollout over a large fleet and compare staging policies.
    Sim(cmd::sim::Args),
    /// Run a real testnet on 127.0.0.1: a bootstrap peer and nodes on generated machines.
    Testnet(cmd::testnet::Args),
    /// Test-fleet tools that talk to a running node.
    #[command(subcommand, hide = true)]
    Debug(cmd::status::DebugCommand),
}

/// Keeps chunk-sized buffers in the heap for reuse. By default glibc serves a 1 MiB
/// allocation with its own mmap and unmaps it on free, so every received chunk came in
/// fresh pages: a page fault and zeroing per 4 KiB, which on this project's VM cost more
/// than the disk reads for cache misses. `mirage bench swarm`, six runs each, alternated:
/// 7.2 s and 18.5 s of CPU on average against 7.6 s and 19.9 s.
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_buffers();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain, one line each; backtraces are for developers (MIRAGE_LOG).
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MIRAGE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Fingerprint(args) => cmd::fingerprint::run(args),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Bootstrap(args) => cmd::bootstrap::run(args),
        Command::Node(c) => cmd::node::run(c),
        Command::Vendor(c) => cmd::vendor::run(c),
        Command::Fetch(args) => cmd::fetch::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Rollback(args) => cmd::status::rollback(args),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Testnet(args) => cmd::testnet::run(args),
        Command::Debug(c) => cmd::status::run_debug(c),
    }
}
