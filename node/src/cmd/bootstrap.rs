//! `mirage bootstrap`: run a bootstrap peer (DHT server and gossip relay).

use anyhow::{Context, Result};
use mirage_bootstrap::{overlay, BootstrapOptions};
use mirage_protocol::membership::MembershipConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Listen address (repeatable), e.g. /ip4/0.0.0.0/tcp/4701.
    #[arg(long, required = true)]
    listen: Vec<String>,
    /// The peer's secret key; created if absent, so the peer id stays stable.
    #[arg(long)]
    key: PathBuf,
    /// Another bootstrap peer to connect to, /ip4/../tcp/../p2p/<id> (repeatable).
    #[arg(long)]
    peer: Vec<String>,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = 2048)]
    max_connections: u32,
    /// Gossipsub heartbeat in milliseconds.
    #[arg(long, hide = true)]
    heartbeat_ms: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    let keypair = mirage_node::keyfile::load_or_create(&args.key)?;
    let parse = |list: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
        list.iter().map(|a| a.parse().with_context(|| format!("bad address `{a}`"))).collect()
    };
    let mut gossip = overlay::GossipTuning::default();
    if let Some(ms) = args.heartbeat_ms {
        gossip.heartbeat = std::time::Duration::from_millis(ms.max(50));
    }
    let options = BootstrapOptions {
        keypair,
        listen: parse(&args.listen)?,
        peers: parse(&args.peer)?,
        max_connections: args.max_connections,
        gossip,
        announcements: MembershipConfig::default(),
    };
    let runtime = super::async_runtime()?;
    runtime
        .block_on(mirage_bootstrap::run(options, mirage_bootstrap::shutdown_signal()))
        .context("bootstrap peer failed")
}
