//! `mirage testnet`: a real loopback testnet of this very binary: a bootstrap peer and
//! nodes on generated machines of several environments, showing the fleet organize
//! itself into clusters.

use anyhow::{bail, Context, Result};
use mirage_testnet::fleet::{members, BootstrapPeer, FleetNode};
use mirage_testnet::sample_root::SampleMachine;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const APP: &str = "mysql";
const PROFILE: &str = include_str!("../../../profiles/mysql.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Node processes to start.
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Distinct machine environments (each becomes one cluster).
    #[arg(long, default_value_t = 3)]
    environments: u32,
    /// Where roots, databases and logs go [default: a temporary directory, removed at the end].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up if the fleet has not organized itself by then.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Keep the testnet running after the summary, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

pub fn run(args: Args) -> Result<()> {
    if args.nodes == 0 || args.environments == 0 {
        bail!("a testnet needs at least one node and one environment");
    }
    let mirage = std::env::current_exe().context("locating the mirage binary")?;
    let temp = tempfile::Builder::new().prefix("mirage-testnet-").tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let profile = dir.join("mysql.toml");
    std::fs::write(&profile, PROFILE).with_context(|| format!("writing {}", profile.display()))?;

    println!(
        "== Mirage testnet: 1 bootstrap peer + {} nodes over {} environments, on 127.0.0.1\n   files: {}",
        args.nodes,
        args.environments,
        dir.display()
    );
    let bootstrap = BootstrapPeer::start(&mirage, &dir.join("bootstrap"))?;
    println!("bootstrap peer   {}", bootstrap.addr);
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let machine = SampleMachine { environment: i as u32 % args.environments, host: i as u32 };
        let node =
            FleetNode::start(&mirage, &dir.join(format!("node{i}")), i, machine, &profile, &bootstrap.addr, &[])?;
        nodes.push(node);
    }
    println!("started {} nodes; each fingerprints its machine and announces it", nodes.len());

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_secs);
    let mut last_line = String::new();
    let (statuses, expected) = loop {
        for n in &mut nodes {
            n.process.check_running()?;
        }
        let statuses: Vec<Option<serde_json::Value>> = nodes.iter().map(FleetNode::status).collect();
        let peers: Vec<Option<String>> =
            statuses.iter().map(|s| s.as_ref().and_then(|s| s["peer_id"].as_str().map(str::to_string))).collect();
        let mut expected: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for (n, p) in nodes.iter().zip(&peers) {
            if let Some(p) = p {
                expected.entry(n.machine.environment).or_default().insert(p.clone());
            }
        }
        let all_up = peers.iter().all(Option::is_some);
        let complete = nodes
            .iter()
            .zip(&statuses)
            .filter(|(n, s)| {
                all_up && s.as_ref().and_then(|s| members(s, APP)).as_ref() == expected.get(&n.machine.environment)
            })
            .count();
        let connected: Vec<u64> = statuses.iter().flatten().filter_map(|s| s["connected_peers"].as_u64()).collect();
        let line = format!(
            "{}/{} nodes up, {}/{} know exactly their cluster; connections per node {}-{}",
            peers.iter().flatten().count(),
            nodes.len(),
            complete,
            nodes.len(),
            connected.iter().min().unwrap_or(&0),
            connected.iter().max().unwrap_or(&0),
        );
        if line != last_line {
            println!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
            last_line = line;
        }
        if complete == nodes.len() {
            break (statuses, expected);
        }
        if Instant::now() > deadline {
            bail!("the fleet did not organize itself within {}s; logs are in {}", args.timeout_secs, dir.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    println!("\n== clusters after {:.1}s", start.elapsed().as_secs_f64());
    for (env, peers) in &expected {
        let key = nodes
            .iter()
            .zip(&statuses)
            .find(|(n, _)| n.machine.environment == *env)
            .and_then(|(_, s)| s.as_ref())
            .and_then(|s| {
                s["clusters"].as_array()?.iter().find(|c| c["app"] == APP)?["cluster_key"].as_str().map(str::to_string)
            })
            .unwrap_or_default();
        let list: Vec<&str> = peers.iter().map(|p| short(p)).collect();
        println!(
            "environment {env}: cluster {}…  {} members  [{}]",
            &key[..key.len().min(16)],
            peers.len(),
            list.join(" ")
        );
    }

    if args.keep_running {
        println!(
            "\ntestnet running; try `mirage status --api $(cat {}/node0/data/api.addr)`. Ctrl-C stops it.",
            dir.display()
        );
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(tokio::signal::ctrl_c())?;
    }
    println!("\nstopping the testnet");
    for n in &mut nodes {
        n.process.terminate(Duration::from_secs(10));
    }
    let mut bootstrap = bootstrap;
    bootstrap.process.terminate(Duration::from_secs(10));
    Ok(())
}
