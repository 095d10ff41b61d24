//! `mirage testnet`: the README's main job. A real loopback testnet of this very binary
//! (a bootstrap peer, a vendor and nodes on generated MySQL machines of several
//! environments) rolling releases out stage by stage:
//!
//! 1. the fleet organizes itself into one cluster per environment;
//! 2. the vendor ships the old version with no staging, so every node runs it;
//! 3. the vendor ships a release that removed a config option one environment still
//!    sets: that cluster's representatives test it, fail, and halt their cluster,
//!    while the other clusters apply it stage by stage;
//! 4. the vendor collects the signed problem reports;
//! 5. the vendor ships the fix, and the halted cluster upgrades too.

use anyhow::{bail, Context, Result};
use mirage_testnet::sample_app::{APP, BROKEN_VERSION, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::{
    all_installed, broken_release_settled, clusters, progress_line, NodeView, StagedFleet, StagedOptions,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Distinct machine environments (each becomes one cluster); environment 2 is the
    /// one the broken release fails on.
    #[arg(long, default_value_t = 3)]
    environments: u32,
    /// Nodes per environment.
    #[arg(long, default_value_t = 4)]
    nodes_per_environment: u32,
    /// Staging policy of the new releases: balanced, front-loading or no-staging.
    #[arg(long, default_value = "balanced")]
    policy: String,
    /// `balanced`: seconds a stage waits for its gates before the next one opens.
    #[arg(long, default_value_t = 20)]
    stage_timeout_secs: u32,
    /// Where roots, databases and logs go [default: a temporary directory, removed at the end].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up on a step after this long.
    #[arg(long, default_value_t = 240)]
    timeout_secs: u64,
}

fn short(key: &str) -> &str {
    &key[..key.len().min(8)]
}

pub fn run(args: Args) -> Result<()> {
    if args.environments < 3 || args.nodes_per_environment == 0 {
        bail!("the scenario needs at least 3 environments (environment 2 breaks) and 1 node per environment");
    }
    let mirage = std::env::current_exe().context("locating the mirage binary")?;
    let temp = tempfile::Builder::new().prefix("mirage-testnet-").tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let envs = args.environments;
    let env_of = move |i: usize| i as u32 % envs;
    let timeout = Duration::from_secs(args.timeout_secs);
    let per_env = args.nodes_per_environment as usize;
    let started = Instant::now();
    let stamp = move || format!("[{:>6.1}s]", started.elapsed().as_secs_f64());

    println!(
        "== Mirage testnet on 127.0.0.1: 1 bootstrap peer, 1 vendor, {} nodes ({} environments x {})",
        envs * args.nodes_per_environment,
        envs,
        args.nodes_per_environment
    );
    let breaking: Vec<u32> = (0..envs).filter(|e| sets_query_cache(*e)).collect();
    println!("   environments {breaking:?} set query_cache_size in my.cnf, which {APP} {BROKEN_VERSION} removed");
    println!("   files and logs: {}", dir.display());
    let mut fleet = StagedFleet::start(&StagedOptions {
        mirage,
        dir: dir.clone(),
        environments: envs,
        nodes_per_environment: args.nodes_per_environment,
        node_flags: Vec::new(),
    })?;

    // 1. Clusters.
    println!("\n[1/5] nodes fingerprint their machines and find their clusters through the DHT");
    let mut last = String::new();
    fleet.wait_until(
        "organize into clusters",
        timeout,
        |views| {
            let known = views.iter().flatten().filter(|v| v.roster_knows(per_env, envs as usize)).count();
            let line = format!(
                "{}/{} nodes fingerprinted, {known} know their whole cluster and every cluster's size",
                views.iter().flatten().count(),
                views.len()
            );
            if line != last {
                println!("{} {line}", stamp());
                last = line;
            }
        },
        |views| {
            let c = clusters(views);
            // Staging plans from the roster: each node's live cluster-mates (a
            // representative first seen after the release never counts, the Sybil rule)
            // and every cluster's size from the signed summaries.
            c.len() == envs as usize
                && c.values().all(|m| m.iter().all(|&i| env_of(i) == env_of(m[0])))
                && views.iter().flatten().all(|v| v.roster_knows(per_env, envs as usize))
        },
    )?;
    for (key, nodes) in clusters(&fleet.views()) {
        println!(
            "   cluster {}: environment {}, {} nodes, each knows all {per_env}",
            short(&key),
            env_of(nodes[0]),
            nodes.len()
        );
    }

    // 2. The old version everywhere.
    println!("\n[2/5] vendor publishes {APP} {OLD_VERSION} with no staging: every node installs it");
    let mut seed = fleet.publish(OLD_VERSION, &["--policy", "no-staging"])?;
    let mut last = String::new();
    fleet.wait_until(
        "install the old version",
        timeout,
        |views| {
            let n = views.iter().flatten().filter(|v| v.installed.as_deref() == Some(OLD_VERSION)).count();
            let line = format!("{n}/{} nodes run {OLD_VERSION}", views.len());
            if line != last {
                println!("{} {line}", stamp());
                last = line;
            }
        },
        |views| all_installed(views, OLD_VERSION),
    )?;
    seed.terminate(Duration::from_secs(10));

    // 3. The broken release, staged.
    println!(
        "\n[3/5] vendor publishes {APP} {BROKEN_VERSION} ({}, stage timeout {} s); representatives (*) test first",
        args.policy, args.stage_timeout_secs
    );
    let timeout_flag = args.stage_timeout_secs.to_string();
    let publish_started = Instant::now();
    let mut seed = fleet.publish(
        BROKEN_VERSION,
        &["--policy", &args.policy, "--stages", &envs.to_string(), "--stage-timeout-secs", &timeout_flag],
    )?;
    let bad = |i: usize| sets_query_cache(env_of(i));
    let mut last = String::new();
    let views = fleet.wait_until(
        "finish the broken release",
        timeout,
        |views| print_progress(views, &env_of, &mut last, &stamp),
        |views| broken_release_settled(views, BROKEN_VERSION, bad),
    )?;
    let broken_latency = publish_started.elapsed();
    seed.terminate(Duration::from_secs(10));
    let tested_bad = views.iter().enumerate().filter(|(i, v)| bad(*i) && v.as_ref().is_some_and(is_tester)).count();
    let bad_nodes = views.iter().enumerate().filter(|(i, _)| bad(*i)).count();
    let bad_applied = views
        .iter()
        .enumerate()
        .filter(|(i, v)| bad(*i) && v.as_ref().is_some_and(|v| v.installed.as_deref() == Some(BROKEN_VERSION)))
        .count();
    println!(
        "   good clusters run {BROKEN_VERSION}; in the breaking cluster {tested_bad} of {bad_nodes} nodes tested it, \
         {bad_applied} applied it"
    );

    // 4. Problem reports.
    println!("\n[4/5] vendor collects signed problem reports from the fleet");
    let reports = fleet.problem_reports()?;
    for r in &reports {
        let excerpt = r["output_excerpt"].as_str().unwrap_or_default();
        let line = excerpt.lines().find(|l| l.contains("ERROR")).unwrap_or_default();
        println!(
            "   {} {} failed {} on cluster {}: {}",
            r["app"].as_str().unwrap_or_default(),
            r["version"].as_str().unwrap_or_default(),
            r["failed_tests"],
            short(r["cluster_key"].as_str().unwrap_or_default()),
            line.trim()
        );
    }
    if reports.is_empty() {
        bail!("the vendor found no problem report");
    }

    // 5. The fix.
    println!("\n[5/5] vendor publishes the fix {APP} {FIXED_VERSION}; the halted cluster's stage restarts");
    let mut seed = fleet.publish(
        FIXED_VERSION,
        &["--policy", &args.policy, "--stages", &envs.to_string(), "--stage-timeout-secs", &timeout_flag],
    )?;
    let mut last = String::new();
    let views = fleet.wait_until(
        "install the fix",
        timeout,
        |views| print_progress(views, &env_of, &mut last, &stamp),
        |views| all_installed(views, FIXED_VERSION),
    )?;
    seed.terminate(Duration::from_secs(10));

    println!("\n== summary after {:.0} s", started.elapsed().as_secs_f64());
    println!("   {:<10} {:>4} {:>6}   {:<24} {:<10}", "cluster", "env", "nodes", BROKEN_VERSION, "now runs");
    for (key, nodes) in clusters(&views) {
        let outcome = if bad(nodes[0]) { "halted, reported" } else { "applied" };
        println!(
            "   {:<10} {:>4} {:>6}   {:<24} {:<10}",
            short(&key),
            env_of(nodes[0]),
            nodes.len(),
            outcome,
            views[nodes[0]].as_ref().and_then(|v| v.installed.clone()).unwrap_or_default()
        );
    }
    println!(
        "   {} problem report(s) reached the vendor; no node of the breaking environment ran {BROKEN_VERSION}",
        reports.len()
    );
    // The paper's two costs, for the faulty release.
    println!(
        "   upgrade overhead of {BROKEN_VERSION}: {tested_bad} machine(s) tested it where it fails, \
         {bad_applied} installed it (without staging: all {bad_nodes})"
    );
    println!(
        "   deployment latency of {BROKEN_VERSION} to the good clusters: {:.1} s (stage timeout {} s)",
        broken_latency.as_secs_f64(),
        args.stage_timeout_secs
    );
    println!("\nstopping the testnet");
    for n in &mut fleet.nodes {
        n.process.terminate(Duration::from_secs(10));
    }
    fleet.bootstrap.process.terminate(Duration::from_secs(10));
    Ok(())
}

fn is_tester(v: &NodeView) -> bool {
    v.representative && matches!(v.phase.as_deref(), Some("failed" | "passed" | "testing"))
}

fn print_progress(
    views: &[Option<NodeView>],
    env_of: &impl Fn(usize) -> u32,
    last: &mut String,
    stamp: &impl Fn() -> String,
) {
    let open = views.iter().flatten().map(|v| v.open_stages).max().unwrap_or(0);
    let count = views.iter().flatten().map(|v| v.stage_count).max().unwrap_or(0);
    let line = format!("stages open {open}/{count} | {}", progress_line(views, env_of));
    if &line != last {
        println!("{} {line}", stamp());
        *last = line;
    }
}
