//! `mirage node run`: the daemon, configured from flags and an optional TOML file.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mirage_bootstrap::overlay::{GossipTuning, KadTuning};
use mirage_node::daemon::{self, NodeOptions};
use mirage_protocol::membership::MembershipConfig;
use mirage_protocol::roster::RosterTiming;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run the node: fingerprint the apps, join the overlay, find cluster members.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A TOML file with the same settings (flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the node keeps its database (and its key, unless --key says otherwise).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The node's secret key; created on first run if absent. Default: DATA_DIR/node.key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Listen address, e.g. /ip4/0.0.0.0/tcp/4702 or /ip4/0.0.0.0/udp/4702/quic-v1
    /// (repeatable) [default: both of those].
    #[arg(long)]
    listen: Vec<String>,
    /// A bootstrap peer, /ip4/../tcp/../p2p/<peer id> (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// An application profile (TOML) to fingerprint and announce; the node runs the app
    /// it names (repeatable; at least one, here or in the config file).
    #[arg(long = "profile", alias = "app", value_name = "PROFILE.toml")]
    profiles: Vec<PathBuf>,
    /// The machine's root to fingerprint: an absolute path to an existing directory.
    /// Default: /.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Serve the control API on this TCP address too (e.g. 127.0.0.1:4700); callers
    /// present the token in --api-token-file. Without it the API is only on the socket.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// The control API's Unix socket. Default: DATA/api.sock (mode 0600).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Let this group use the socket too (mode 0660).
    #[arg(long, value_name = "GROUP")]
    api_group: Option<String>,
    /// The token TCP callers present. Default: DATA/api.token, made (0600) if missing.
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// Seconds between re-announcements of our fingerprints.
    #[arg(long, hide = true)]
    announce_interval_secs: Option<u64>,
    /// Seconds between steady-state DHT provider lookups.
    #[arg(long, hide = true)]
    lookup_interval_secs: Option<u64>,
    /// Runs the roster (heartbeats, summaries, settling) this many times faster than
    /// production. Every node of a fleet must use the same; loopback testnets only.
    #[arg(long, hide = true)]
    roster_time_scale: Option<u32>,
    /// Gossip our fingerprint to the whole app every announce interval: the old
    /// all-to-all design, for benchmarks that compare against it.
    #[arg(long, hide = true)]
    gossip_announcements: bool,
    /// Seconds between rescans of the apps' environments.
    #[arg(long, hide = true)]
    rescan_interval_secs: Option<u64>,
    /// Gossipsub heartbeat in milliseconds.
    #[arg(long, hide = true)]
    heartbeat_ms: Option<u64>,
    #[arg(long, hide = true)]
    max_connections: Option<u32>,
    #[arg(long, hide = true)]
    target_peers: Option<usize>,
    /// Trust this vendor key for an app's releases, as APP=PUBKEY (hex, as `mirage vendor
    /// keygen` prints it). Repeatable. Manifests from any other key are refused.
    #[arg(long = "trust", value_name = "APP=PUBKEY")]
    trust: Vec<String>,
    /// Where this node installs its apps (`PREFIX/<app>/versions`, `PREFIX/<app>/current`).
    /// With it the node stages releases itself: tests them in a sandbox when elected,
    /// applies them when its cluster's representatives passed them.
    #[arg(long)]
    install_prefix: Option<PathBuf>,
    /// Download releases only when asked (`mirage fetch`), not as soon as they arrive.
    #[arg(long)]
    no_auto_fetch: bool,
    /// Keep chunk bytes on libp2p's encrypted connections instead of content lanes
    /// (plain TCP beside them, on the first listen address's IP and an ephemeral port;
    /// every chunk is verified against the signed manifest either way).
    #[arg(long)]
    no_content_lanes: bool,
    /// The TCP port content lanes listen on (default: any free port; peers learn it over
    /// libp2p). Open it in firewalls beside the libp2p port.
    #[arg(long)]
    lane_port: Option<u16>,
    /// Run no app: only fetch (`mirage fetch`) and serve the releases of the apps it
    /// trusts, as a content peer. Without it, a node with no profile refuses to start.
    #[arg(long, conflicts_with = "profiles")]
    content_only: bool,
    /// Allow the debug requests (`mirage debug inject`, peer blocks, misbehaving): test
    /// fleets only, and only in builds with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    allow_debug: bool,
}

impl RunArgs {
    fn allow_debug(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.allow_debug;
        #[cfg(not(feature = "test-hooks"))]
        false
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default, alias = "apps")]
    profiles: Vec<PathBuf>,
    root: Option<PathBuf>,
    api: Option<SocketAddr>,
    api_socket: Option<PathBuf>,
    api_group: Option<String>,
    api_token_file: Option<PathBuf>,
    announce_interval_secs: Option<u64>,
    lookup_interval_secs: Option<u64>,
    roster_time_scale: Option<u32>,
    rescan_interval_secs: Option<u64>,
    max_connections: Option<u32>,
    target_peers: Option<usize>,
    /// `["APP=PUBKEY", ...]`, like --trust.
    #[serde(default)]
    trust: Vec<String>,
    auto_fetch: Option<bool>,
    install_prefix: Option<PathBuf>,
    content_lanes: Option<bool>,
    lane_port: Option<u16>,
}

fn options(args: RunArgs) -> Result<NodeOptions> {
    let allow_debug = args.allow_debug();
    let file: ConfigFile = super::read_config(args.config.as_deref())?;
    let Some(data_dir) = args.data_dir.or(file.data_dir) else {
        bail!("--data-dir (or data_dir in --config) is required");
    };
    let key = args.key.or(file.key).unwrap_or_else(|| data_dir.join("node.key"));
    let mut listen = super::multiaddrs(&super::pick(args.listen, file.listen), "listen")?;
    if listen.is_empty() {
        // 4701 is the bootstrap peer's customary port; a node beside one must not collide.
        listen = vec!["/ip4/0.0.0.0/tcp/4702".parse()?, "/ip4/0.0.0.0/udp/4702/quic-v1".parse()?];
    }
    let bootstrap = super::peer_addrs(&super::pick(args.bootstrap, file.bootstrap), "bootstrap")?;
    let mut membership = MembershipConfig::default();
    if let Some(s) = args.announce_interval_secs.or(file.announce_interval_secs) {
        membership.announce_interval = Duration::from_secs(s.max(1));
        // Members stay while they keep announcing: three missed rounds and they are gone.
        membership.member_ttl = membership.member_ttl.max(membership.announce_interval * 3);
        membership.max_age = membership.max_age.max(membership.member_ttl);
    }
    membership.gossip_announcements = args.gossip_announcements;
    if let Some(scale) = args.roster_time_scale.or(file.roster_time_scale) {
        membership.roster = RosterTiming::scaled(scale);
    }
    if let Some(s) = args.lookup_interval_secs.or(file.lookup_interval_secs) {
        membership.lookup_interval = Duration::from_secs(s.max(1));
    }
    let mut gossip = GossipTuning::default();
    if let Some(ms) = args.heartbeat_ms {
        gossip.heartbeat = Duration::from_millis(ms.max(50));
    }
    let mut trust = mirage_protocol::trust::TrustStore::default();
    for entry in args.trust.iter().chain(&file.trust) {
        let (app, key) = mirage_protocol::trust::TrustStore::parse_entry(entry).map_err(anyhow::Error::msg)?;
        trust.trust(&app, key);
    }
    Ok(NodeOptions {
        key,
        listen,
        bootstrap,
        apps: super::pick(args.profiles, file.profiles),
        root: args.root.or(file.root).unwrap_or_else(|| PathBuf::from("/")),
        api: mirage_node::daemon::ApiOptions {
            socket: args.api_socket.or(file.api_socket),
            group: args.api_group.or(file.api_group),
            tcp: args.api.or(file.api),
            token_file: args.api_token_file.or(file.api_token_file),
        },
        membership,
        gossip,
        kad: KadTuning::default(),
        rescan_interval: Duration::from_secs(
            args.rescan_interval_secs.or(file.rescan_interval_secs).unwrap_or(300).max(1),
        ),
        max_connections: args.max_connections.or(file.max_connections).unwrap_or(256),
        target_peers: args.target_peers.or(file.target_peers).unwrap_or(8),
        allow_debug,
        trust,
        auto_fetch: !args.no_auto_fetch && file.auto_fetch.unwrap_or(true),
        seed: Vec::new(),
        release_messages: Vec::new(),
        stop_after_replicas: None,
        install_prefix: args.install_prefix.or(file.install_prefix),
        collect_reports: false,
        content_lanes: !args.no_content_lanes && file.content_lanes.unwrap_or(true),
        lane_port: args.lane_port.or(file.lane_port).unwrap_or(0),
        data_dir,
    })
}

/// Refuses, with one clear line, a configuration that cannot work: no app, a machine
/// root that is relative or missing, a profile that does not parse, a `--trust` for an
/// app the node does not run, a relative install prefix. Such mistakes used to surface
/// later as failed tests, signed and sent to the whole fleet as verdicts on a release.
fn check(o: &NodeOptions, content_only: bool) -> Result<()> {
    if o.apps.is_empty() && !content_only {
        bail!(
            "no app to run: give a profile with --profile PATH (or `profiles = [...]` in --config), \
             or --content-only for a peer that only fetches and serves releases"
        );
    }
    if !o.root.is_absolute() {
        bail!("--root {} is a relative path; give the machine root as an absolute path", o.root.display());
    }
    match std::fs::metadata(&o.root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("--root {} is not a directory", o.root.display()),
        Err(e) => bail!("--root {}: {e}", o.root.display()),
    }
    if let Some(prefix) = o.install_prefix.as_ref().filter(|p| !p.is_absolute()) {
        bail!("--install-prefix {} is a relative path; give an absolute path", prefix.display());
    }
    let mut apps = Vec::new();
    for path in &o.apps {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading profile {}", path.display()))?;
        let profile = mirage_protocol::fingerprint::Profile::parse(&text)
            .with_context(|| format!("profile {}", path.display()))?;
        apps.push(profile.app().to_string());
    }
    for app in o.trust.apps() {
        if !content_only && !apps.iter().any(|a| a == app) {
            bail!("--trust {app}=...: this node runs no app `{app}` (its profiles name: {})", apps.join(", "));
        }
    }
    Ok(())
}

pub fn run(command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Run(args) => {
            let content_only = args.content_only;
            let options = options(*args)?;
            check(&options, content_only)?;
            let runtime = super::async_runtime()?;
            runtime
                .block_on(daemon::run(options, mirage_bootstrap::shutdown_signal()))
                .context("the node stopped with an error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<NodeOptions> {
        options(Cli::try_parse_from(std::iter::once("mirage").chain(args.iter().copied()))?.run)
    }

    #[test]
    fn config_file_supplies_settings_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            r#"
data_dir = "/var/lib/mirage"
listen = ["/ip4/127.0.0.1/tcp/4801"]
bootstrap = ["/ip4/127.0.0.1/tcp/4701/p2p/12D3KooWE7nWm4B9Fr9gg37WMP9mkPRGq8VrdrmSgUoqMpmWk974"]
profiles = ["/etc/mirage/mysql.toml"]
root = "/srv/root"
api = "127.0.0.1:4999"
announce_interval_secs = 120
trust = ["mysql=3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"]
auto_fetch = false
"#,
        )
        .unwrap();
        let o = parse(&["--config", cfg.to_str().unwrap()]).unwrap();
        assert_eq!(o.data_dir, PathBuf::from("/var/lib/mirage"));
        assert_eq!(o.key, PathBuf::from("/var/lib/mirage/node.key"));
        assert_eq!(o.listen.len(), 1);
        assert_eq!(o.bootstrap.len(), 1);
        assert_eq!(o.apps, vec![PathBuf::from("/etc/mirage/mysql.toml")]);
        assert_eq!(o.root, PathBuf::from("/srv/root"));
        assert_eq!(o.api.tcp.map(|a| a.port()), Some(4999));
        assert_eq!(o.membership.announce_interval, Duration::from_secs(120));
        assert!(o.membership.member_ttl >= Duration::from_secs(360));
        assert!(o.membership.max_age >= o.membership.member_ttl);
        assert_eq!(o.trust.apps().collect::<Vec<_>>(), vec!["mysql"]);
        assert!(!o.auto_fetch);

        let o =
            parse(&["--config", cfg.to_str().unwrap(), "--data-dir", "/tmp/d", "--root", "/r", "--api", "127.0.0.1:1"])
                .unwrap();
        assert_eq!(o.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(o.root, PathBuf::from("/r"));
        assert_eq!(o.api.tcp.map(|a| a.port()), Some(1));
    }

    #[test]
    fn defaults_and_errors() {
        let o = parse(&["--data-dir", "/d"]).unwrap();
        assert_eq!(o.root, PathBuf::from("/"));
        assert!(o.api.tcp.is_none() && o.api.socket.is_none(), "the control API is the data dir's socket by default");
        assert_eq!(o.listen.len(), 2, "tcp and quic by default");
        assert!(parse(&[]).is_err(), "a data dir is required");
        assert!(
            parse(&["--data-dir", "/d", "--bootstrap", "/ip4/127.0.0.1/tcp/1"]).is_err(),
            "bootstrap needs a peer id"
        );
        assert!(parse(&["--data-dir", "/d", "--listen", "nonsense"]).is_err());
        assert!(o.auto_fetch, "releases download on arrival by default");
        assert!(parse(&["--data-dir", "/d", "--trust", "mysql"]).is_err(), "trust needs APP=PUBKEY");
        assert!(parse(&["--data-dir", "/d", "--trust", "mysql=abcd"]).is_err(), "trust needs a real key");
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused_with_one_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("mysql.toml");
        std::fs::write(
            &profile,
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/mysql.toml")).unwrap(),
        )
        .unwrap();
        let p = profile.to_str().unwrap();
        let root = dir.path().to_str().unwrap();
        let key = "mysql=3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
        let err = |args: &[&str]| check(&parse(args).unwrap(), false).unwrap_err().to_string();
        assert!(check(&parse(&["--data-dir", "/d", "--profile", p, "--root", root, "--trust", key]).unwrap(), false)
            .is_ok());
        // The old flag name still works.
        assert!(check(&parse(&["--data-dir", "/d", "--app", p, "--root", root]).unwrap(), false).is_ok());
        // A content peer runs no app, and trusts what it serves.
        assert!(check(&parse(&["--data-dir", "/d", "--content-only", "--trust", key]).unwrap(), true).is_ok());
        assert!(parse(&["--data-dir", "/d", "--content-only", "--profile", p]).is_err(), "no app, or apps: not both");
        assert!(err(&["--data-dir", "/d", "--root", root]).contains("no app to run"));
        assert!(err(&["--data-dir", "/d", "--profile", p, "--root", "roots/r3"]).contains("relative path"));
        assert!(err(&["--data-dir", "/d", "--profile", p, "--root", "/no/such/root"]).contains("/no/such/root"));
        assert!(err(&["--data-dir", "/d", "--profile", "/no/such.toml", "--root", root]).contains("/no/such.toml"));
        let other = "postgres=3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
        let e = err(&["--data-dir", "/d", "--profile", p, "--root", root, "--trust", other]);
        assert!(e.contains("runs no app `postgres`") && e.contains("mysql"), "{e}");
        let e = err(&["--data-dir", "/d", "--profile", p, "--root", root, "--install-prefix", "opt"]);
        assert!(e.contains("--install-prefix opt is a relative path"), "{e}");
    }
}
