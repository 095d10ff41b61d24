//! `mirage status`: ask a running node how it is doing; `mirage debug`: test-fleet tools.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mirage_node::daemon::api::{self, ApiToken, Endpoint, InjectKind, Request};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Target {
    /// The node's control API: its Unix socket (a path), or a TCP endpoint (HOST:PORT,
    /// with --api-token-file).
    #[arg(long, default_value = "/var/lib/mirage/api.sock")]
    api: String,
    /// The token a TCP endpoint asks for: the node's `DATA/api.token`.
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// The node whose data directory this is (its `api.sock`).
    #[arg(long, conflicts_with = "api")]
    data_dir: Option<PathBuf>,
}

impl Target {
    pub fn endpoint(&self) -> Result<Endpoint> {
        if let Some(dir) = &self.data_dir {
            return Ok(Endpoint::of_data_dir(dir));
        }
        if self.api.contains('/') {
            return Ok(Endpoint::Unix(PathBuf::from(&self.api)));
        }
        let Some(file) = &self.api_token_file else {
            bail!(
                "--api {} is a TCP endpoint, which asks for a token: add --api-token-file (the node's DATA/api.token), \
                 or use the node's socket (--data-dir DATA)",
                self.api
            );
        };
        let token = ApiToken::read(file).with_context(|| format!("reading the API token {}", file.display()))?;
        Ok(Endpoint::Tcp { addr: self.api.clone(), token })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Print the full status as JSON.
    #[arg(long)]
    json: bool,
}

fn call(target: &Target, request: Request) -> Result<serde_json::Value> {
    let endpoint = target.endpoint()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(api::call(&endpoint, &request, Duration::from_secs(10)))?)
}

pub fn run(args: Args) -> Result<()> {
    let status = call(&args.target, Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    println!("peer id:          {}", s(&status["peer_id"]));
    println!("connected peers:  {}", status["connected_peers"]);
    for c in status["clusters"].as_array().into_iter().flatten() {
        let members = c["members"].as_array().cloned().unwrap_or_default();
        println!(
            "app {}: cluster {} with {} member(s)",
            s(&c["app"]),
            &s(&c["cluster_key"])[..16.min(s(&c["cluster_key"]).len())],
            members.len()
        );
        for m in members {
            println!("  {}", s(&m));
        }
        let r = &c["roster"];
        if r.is_object() {
            println!(
                "  roster {}: {} live member(s), heartbeat every {} s, sizes of {} other cluster(s)",
                if r["ready"] == true { "ready" } else { "settling" },
                r["live_members"],
                r["heartbeat_period_s"],
                r["known_cluster_sizes"]
            );
        }
    }
    for a in status["apps_pending_scan"].as_array().into_iter().flatten() {
        println!("app {}: not fingerprinted yet", s(a));
    }
    let drops: Vec<String> = status["dropped_announcements"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !drops.is_empty() {
        println!("dropped announcements: {}", drops.join(" "));
    }
    for r in status["releases"].as_array().into_iter().flatten() {
        for c in r["content"].as_array().into_iter().flatten() {
            println!(
                "release {} {}: {} {} ({}/{} chunks)",
                s(&r["app"]),
                s(&r["version"]),
                s(&c["what"]),
                s(&c["state"]),
                c["have_chunks"],
                c["chunks"]
            );
        }
    }
    match status["lane_port"].as_u64() {
        Some(port) => println!("content lanes:    port {port}"),
        None => println!("content lanes:    off (chunks over libp2p only)"),
    }
    let received = &status["received_chunks"];
    if let (Some(lane), Some(libp2p)) = (received["lane"].as_u64(), received["libp2p"].as_u64()) {
        if lane + libp2p > 0 {
            println!("chunks received:  {lane} over content lanes, {libp2p} over libp2p");
        }
    }
    for a in status["staging"].as_array().into_iter().flatten() {
        let opt = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        // A pinned node acts on nothing: its phase for the release is beside the point.
        let phase = match a["pinned"].as_str() {
            Some(v) => format!("pinned at {v}"),
            None => opt(&a["phase"]),
        };
        println!(
            "staging {}: installed {}, target {}, phase {}{}, stage {} of {}",
            s(&a["app"]),
            opt(&a["installed"]),
            opt(&a["target"]),
            phase,
            if a["representative"] == true { " (representative)" } else { "" },
            a["stage"].as_u64().map_or("-".into(), |n| (n + 1).to_string()),
            a["stage_count"]
        );
        if let Some(v) = a["pinned"].as_str() {
            println!("  pinned to {v} by a rollback, until the next release or `mirage unpin`");
        }
        if let Some(f) = a["local_fault"].as_object() {
            println!(
                "  local fault while {} ({} attempt(s)), not reported to the vendor: {}",
                f.get("during").and_then(|v| v.as_str()).unwrap_or("?"),
                f.get("attempts").and_then(|v| v.as_u64()).unwrap_or(0),
                f.get("reason").and_then(|v| v.as_str()).unwrap_or("")
            );
        }
        for rep in a["reports"].as_array().into_iter().flatten() {
            println!("  report {} {}: {}", s(&rep["signer"]), s(&rep["outcome"]), s(&rep["summary"]));
        }
    }
    Ok(())
}

/// A running node and one of its apps: what `rollback` and `unpin` act on.
#[derive(clap::Args)]
pub struct AppArgs {
    #[command(flatten)]
    target: Target,
    /// The app (its name, as in the profile).
    #[arg(long)]
    app: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// `mirage rollback`: one step back through the versions the app ran, pinned there.
pub fn rollback(args: AppArgs) -> Result<()> {
    let reply = call(&args.target, Request::Rollback { app: args.app.clone() })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    let to = reply["version"].as_str().unwrap_or("?");
    let from = reply["from"].as_str().map(|f| format!(" from {f}")).unwrap_or_default();
    println!("{} rolled back{from} to {to}, pinned to {to} until the next release or `mirage unpin`", args.app);
    match reply["earlier"].as_array().filter(|e| !e.is_empty()) {
        Some(earlier) => {
            let list: Vec<&str> = earlier.iter().filter_map(|v| v.as_str()).collect();
            println!("earlier versions to roll back to: {}", list.join(", "));
        }
        None => println!("no earlier version to roll back to"),
    }
    Ok(())
}

/// `mirage unpin`: lift a rollback's pin; the app follows its cluster's releases again.
pub fn unpin(args: AppArgs) -> Result<()> {
    let reply = call(&args.target, Request::Unpin { app: args.app.clone() })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    match reply["was_pinned_to"].as_str() {
        Some(v) => println!("{} unpinned (was pinned to {v}); it follows its cluster's releases again", args.app),
        None => println!("{} was not pinned", args.app),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Make a node (started with --allow-debug) publish a bad announcement to its peers.
    Inject {
        #[command(flatten)]
        target: Target,
        /// malformed, oversized, unsigned, wrong-signature, stale or wrong-app.
        #[arg(long)]
        kind: InjectKind,
        /// The app's topic (default: the node's first app).
        #[arg(long)]
        app: Option<String>,
    },
    /// Make a node re-sign and publish its fingerprints now; prints the issue time.
    Announce {
        #[command(flatten)]
        target: Target,
        /// Only this app (default: all).
        #[arg(long)]
        app: Option<String>,
    },
    /// What a node holds from a peer for an app (issue and receive times).
    Seen {
        #[command(flatten)]
        target: Target,
        /// The app.
        #[arg(long)]
        app: String,
        /// The peer id.
        #[arg(long)]
        peer: String,
    },
}

pub fn run_debug(command: DebugCommand) -> Result<()> {
    let reply = match command {
        DebugCommand::Inject { target, kind, app } => call(&target, Request::Inject { kind, app })?,
        DebugCommand::Announce { target, app } => call(&target, Request::Announce { app })?,
        DebugCommand::Seen { target, app, peer } => call(&target, Request::Seen { app, peer })?,
    };
    println!("{}", serde_json::to_string(&reply)?);
    Ok(())
}
