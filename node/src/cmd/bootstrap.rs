//! `mirage bootstrap`: run a bootstrap peer (DHT server and gossip relay), configured
//! from flags and an optional TOML file.

use anyhow::{bail, Context, Result};
use mirage_bootstrap::{overlay, BootstrapOptions};
use mirage_protocol::membership::MembershipConfig;
use serde::Deserialize;
use std::path::PathBuf;

/// Most simultaneous connections, unless set.
const DEFAULT_MAX_CONNECTIONS: u32 = 2048;

#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with the same settings (flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (repeatable), e.g. /ip4/0.0.0.0/tcp/4701. Required, here or in
    /// the config file.
    #[arg(long)]
    listen: Vec<String>,
    /// The peer's secret key; created if absent, so the peer id stays stable. Required,
    /// here or in the config file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Another bootstrap peer to connect to, /ip4/../tcp/../p2p/<id> (repeatable).
    #[arg(long)]
    peer: Vec<String>,
    /// Most simultaneous connections [default: 2048].
    #[arg(long)]
    max_connections: Option<u32>,
    /// Gossipsub heartbeat in milliseconds.
    #[arg(long, hide = true)]
    heartbeat_ms: Option<u64>,
}

/// `mirage bootstrap --config FILE`: every key is optional; flags win.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    listen: Vec<String>,
    key: Option<PathBuf>,
    #[serde(default)]
    peers: Vec<String>,
    max_connections: Option<u32>,
}

fn options(args: Args) -> Result<BootstrapOptions> {
    let file: ConfigFile = super::read_config(args.config.as_deref())?;
    let Some(key) = args.key.or(file.key) else {
        bail!("--key (or key in --config) is required: the peer's identity");
    };
    let listen = super::pick(args.listen, file.listen);
    if listen.is_empty() {
        bail!("--listen (or listen in --config) is required, e.g. /ip4/0.0.0.0/tcp/4701");
    }
    let peers = super::peer_addrs(&super::pick(args.peer, file.peers), "peer")?;
    let mut gossip = overlay::GossipTuning::default();
    if let Some(ms) = args.heartbeat_ms {
        gossip.heartbeat = std::time::Duration::from_millis(ms.max(50));
    }
    Ok(BootstrapOptions {
        keypair: mirage_node::keyfile::load_or_create(&key)?,
        listen: super::multiaddrs(&listen, "listen")?,
        peers,
        max_connections: args.max_connections.or(file.max_connections).unwrap_or(DEFAULT_MAX_CONNECTIONS),
        gossip,
        announcements: MembershipConfig::default(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let options = options(args)?;
    let runtime = super::async_runtime()?;
    runtime
        .block_on(mirage_bootstrap::run(options, mirage_bootstrap::shutdown_signal()))
        .context("bootstrap peer failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<BootstrapOptions> {
        options(Cli::try_parse_from(std::iter::once("mirage").chain(args.iter().copied()))?.args)
    }

    #[test]
    fn config_file_supplies_settings_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bootstrap.toml");
        let key = dir.path().join("boot.key");
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"/ip4/127.0.0.1/tcp/4801\", \"/ip4/127.0.0.1/udp/4801/quic-v1\"]\nkey = {:?}\nmax_connections = 64\n\
                 peers = [\"/ip4/127.0.0.1/tcp/4701/p2p/12D3KooWE7nWm4B9Fr9gg37WMP9mkPRGq8VrdrmSgUoqMpmWk974\"]\n",
                key.display().to_string()
            ),
        )
        .unwrap();
        let o = parse(&["--config", cfg.to_str().unwrap()]).unwrap();
        assert_eq!(o.listen.len(), 2);
        assert_eq!(o.peers.len(), 1);
        assert_eq!(o.max_connections, 64);
        assert!(key.exists(), "the key is created on first use");
        let o =
            parse(&["--config", cfg.to_str().unwrap(), "--listen", "/ip4/127.0.0.1/tcp/1", "--max-connections", "9"])
                .unwrap();
        assert_eq!(o.listen.len(), 1);
        assert_eq!(o.max_connections, 9);

        let err = |args: &[&str]| parse(args).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err(&["--listen", "/ip4/127.0.0.1/tcp/1"]).contains("--key"));
        assert!(err(&["--key", key.to_str().unwrap()]).contains("--listen"));
        std::fs::write(&cfg, "lisen = []\n").unwrap();
        assert!(err(&["--config", cfg.to_str().unwrap()]).contains("lisen"));
    }
}
