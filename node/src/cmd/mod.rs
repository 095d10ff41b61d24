//! One module per subcommand: argument parsing and output, with the work in the library.

pub mod bench;
pub mod bootstrap;
pub mod fetch;
pub mod fingerprint;
pub mod keygen;
pub mod node;
pub mod overlay_cost;
pub mod profile;
pub mod scale;
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

/// A TOML config file's settings, or the defaults when none is given.
pub fn read_config<T: serde::de::DeserializeOwned + Default>(path: Option<&std::path::Path>) -> anyhow::Result<T> {
    use anyhow::Context;
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A list setting: the flags' values if any were given (flags win), else the file's.
pub fn pick<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

/// Multiaddrs from flags or a config file; `what` names them in errors.
pub fn multiaddrs(list: &[String], what: &str) -> anyhow::Result<Vec<libp2p::Multiaddr>> {
    use anyhow::Context;
    list.iter().map(|a| a.parse().with_context(|| format!("bad {what} address `{a}`"))).collect()
}

/// Addresses of peers to dial: each must also say who is there (`/p2p/<peer id>`).
pub fn peer_addrs(list: &[String], what: &str) -> anyhow::Result<Vec<libp2p::Multiaddr>> {
    let addrs = multiaddrs(list, what)?;
    if let Some(a) = addrs.iter().find(|a| mirage_bootstrap::overlay::split_peer_addr(a).is_none()) {
        anyhow::bail!("{what} address `{a}` must end in /p2p/<peer id>");
    }
    Ok(addrs)
}
