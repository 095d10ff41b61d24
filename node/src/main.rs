//! The `mirage` command line.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// What `--version` prints: a binary with the test hooks says so (see node/Cargo.toml).
#[cfg(not(feature = "test-hooks"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "test-hooks")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (with test hooks)");

#[derive(Parser)]
#[command(
    name = "mirage",
    version = VERSION,
    about = "Staged, environment-aware software upgrades over a peer-to-peer fleet",
    after_help = "Logs go to standard error. MIRAGE_LOG sets what is logged, as a tracing filter \
                  (default: info from mirage for `node run` and `bootstrap`, warnings only for the other \
                  commands; e.g. MIRAGE_LOG=debug or MIRAGE_LOG=warn,mirage_node=debug).\n\nExit codes: 0 success, 1 the command \
                  failed (the reason is on standard error), 2 bad usage."
)]
struct Cli {
    /// How log lines are written: `text` (colours only on a terminal) or `json` (one
    /// object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// What the long-running peers (node, bootstrap peer) log unless MIRAGE_LOG says
/// otherwise: what an operator cares about from Mirage itself, and only trouble from
/// the libraries under it. Kademlia and yamux warn about normal traffic (an empty
/// routing table at start, a peer that hung up), so only their errors show.
const PEER_LOG: &str = "warn,mirage=info,mirage_node=info,mirage_bootstrap=info,mirage_protocol=info,\
                        mirage_testnet=info,libp2p_kad=error,yamux=error,libp2p_yamux=error";
/// What the other commands log: they print their own progress and outcome, so only
/// trouble (a vendor's publish runs a whole peer inside).
const COMMAND_LOG: &str = "warn,libp2p_kad=error,yamux=error,libp2p_yamux=error";

#[derive(Subcommand)]
enum Command {
    /// Write a new secret key (mode 0600) and print its public key and peer id.
    Keygen(cmd::keygen::Args),
    /// Key files: show a key's public half.
    #[command(subcommand)]
    Key(cmd::keygen::KeyCommand),
    /// Fingerprint an application's environment on the machine rooted at --root.
    Fingerprint(cmd::fingerprint::Args),
    /// Profile tools: refine a profile from machines that should share a cluster.
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCommand),
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
    /// Ask a running node to switch an app back one version, and pin it there.
    Rollback(cmd::status::AppArgs),
    /// Ask a running node to lift a rollback's pin: the app follows releases again.
    Unpin(cmd::status::AppArgs),
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
            // Errors that already print their source (`{path}: {source}`) would say it twice.
            let mut said = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !said.ends_with(&cause) {
                    eprintln!("  caused by: {cause}");
                }
                said = cause;
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default: &str) -> Result<()> {
    use std::io::IsTerminal;
    let filter = match std::env::var("MIRAGE_LOG") {
        Ok(spec) if !spec.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("MIRAGE_LOG={spec:?} is not a valid log filter: {e}"))?,
        _ => tracing_subscriber::EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

impl Command {
    /// Commands that print and exit, as opposed to the long-running ones (node, bootstrap
    /// peer, testnet, a vendor's seed), which hold sockets of their own.
    fn prints_and_exits(&self) -> bool {
        !matches!(
            self,
            Command::Node(_) | Command::Bootstrap(_) | Command::Testnet(_) | Command::Bench(_) | Command::Vendor(_)
        )
    }
}

/// `mirage status | head -3`: when the reader goes away, end quietly, as `cat` would,
/// instead of panicking in `println!`. Rust ignores SIGPIPE so that socket writes fail
/// with EPIPE; only commands with no sockets of their own to write get the default.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Node(_) | Command::Bootstrap(_) => PEER_LOG,
        _ => COMMAND_LOG,
    };
    init_logging(cli.log_format, default_log)?;
    if cli.command.prints_and_exits() {
        end_quietly_on_closed_pipe();
    }
    match cli.command {
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Key(c) => cmd::keygen::run_key(c),
        Command::Fingerprint(args) => cmd::fingerprint::run(args),
        Command::Profile(c) => cmd::profile::run(c),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Bootstrap(args) => cmd::bootstrap::run(args),
        Command::Node(c) => cmd::node::run(c),
        Command::Vendor(c) => cmd::vendor::run(c),
        Command::Fetch(args) => cmd::fetch::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Rollback(args) => cmd::status::rollback(args),
        Command::Unpin(args) => cmd::status::unpin(args),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Testnet(args) => cmd::testnet::run(args),
        Command::Debug(c) => cmd::status::run_debug(c),
    }
}
