//! Overlay benchmark: starts a bootstrap peer and N `mirage node run` processes on
//! 127.0.0.1 over E generated environments, then prints
//! - the time until every node knows its full cluster (from the first node's start and
//!   from the moment all nodes were up),
//! - gossip delivery latency p50/p99 of one fresh announcement to every other node,
//! - resident memory per node (mean and max) and of the bootstrap peer.
//!
//! `cargo run --release -p mirage-tests --bin overlay-bench -- --nodes 50 --envs 5`

use mirage_tests::{api_call, rss_kib, wait_for, Bootstrap, Node, SampleMachine};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

struct Args {
    nodes: usize,
    envs: u32,
    timeout: Duration,
}

fn args() -> Args {
    let mut a = Args { nodes: 50, envs: 5, timeout: Duration::from_secs(600) };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value().parse().expect("--nodes N"),
            "--envs" => a.envs = value().parse().expect("--envs E"),
            "--timeout-secs" => a.timeout = Duration::from_secs(value().parse().expect("--timeout-secs S")),
            other => panic!("unknown flag {other} (--nodes N --envs E --timeout-secs S)"),
        }
    }
    assert!(a.nodes >= 2 && a.envs >= 1, "need at least 2 nodes and 1 environment");
    a
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let a = args();
    let tmp = tempfile::Builder::new().prefix("mirage-overlay-bench").tempdir().expect("temp dir");
    println!(
        "overlay benchmark: {} nodes, {} environments, loopback, binary {}",
        a.nodes,
        a.envs,
        mirage_tests::mirage_bin().display()
    );
    let t0 = Instant::now();
    let bootstrap = Bootstrap::start(&tmp.path().join("bootstrap"), &[]);
    let flags = ["--lookup-interval-secs", "10"];
    let nodes: Vec<Node> = (0..a.nodes)
        .map(|i| {
            let machine = SampleMachine { environment: i as u32 % a.envs, host: i as u32 };
            Node::start(&tmp.path().join(format!("node{i}")), i, machine, &bootstrap.addr, &flags)
        })
        .collect();
    let apis: Vec<String> =
        nodes.iter().map(|n| wait_for("api address", a.timeout, Duration::from_millis(100), || n.api())).collect();
    let status = |i: usize| api_call(&apis[i], &json!({"cmd": "status"}));
    let ids: Vec<String> = (0..a.nodes)
        .map(|i| {
            wait_for("status", a.timeout, Duration::from_millis(200), || {
                status(i).and_then(|s| s["peer_id"].as_str().map(str::to_string))
            })
        })
        .collect();
    let all_up = t0.elapsed();
    let mut expected: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (n, id) in nodes.iter().zip(&ids) {
        expected.entry(n.machine.environment).or_default().insert(id.clone());
    }
    let members = |s: &Value| mirage_tests::members(s, "mysql");
    let mut complete = vec![false; a.nodes];
    let mut last_report = Instant::now();
    let full = wait_for("full clusters", a.timeout, Duration::from_millis(250), || {
        let mut missing = 0;
        // All nodes at once: one status call after another took longer under load than
        // the clusters took to form, and the figure measured the polling.
        let got: Vec<Option<BTreeSet<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..a.nodes)
                .map(|i| {
                    let skip = complete[i];
                    let status = &status;
                    scope.spawn(move || if skip { None } else { status(i).and_then(|s| members(&s)) })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(None)).collect()
        });
        for i in 0..a.nodes {
            if !complete[i] {
                let want = &expected[&nodes[i].machine.environment];
                let got = got[i].clone().unwrap_or_default();
                complete[i] = &got == want;
                for m in want.difference(&got) {
                    missing += 1;
                    let j = ids.iter().position(|id| id == m).unwrap_or(usize::MAX);
                    if std::env::var_os("BENCH_DEBUG").is_some() && last_report.elapsed() > Duration::from_secs(5) {
                        println!("    node{i} lacks node{j}");
                    }
                }
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let done = complete.iter().filter(|c| **c).count();
            println!("  {:>6.1?}: {done}/{} nodes complete, {missing} memberships missing", t0.elapsed(), a.nodes);
            last_report = Instant::now();
        }
        complete.iter().all(|c| *c).then(|| t0.elapsed())
    });
    println!("all {} nodes up (API answering) after      {:>8.2?}", a.nodes, all_up);
    println!("every node knows its full cluster after   {:>8.2?}  ({:.2?} after all were up)", full, full - all_up);

    // Let the mesh settle, then time one fresh announcement from node 0 to everyone.
    std::thread::sleep(Duration::from_secs(3));
    let mut latencies = Vec::new();
    for round in 0..3 {
        let source = round * 7 % a.nodes;
        let reply = api_call(&apis[source], &json!({"cmd": "announce", "app": "mysql"})).expect("announce");
        let issued = reply["issued_at_ms"].as_u64().expect("issued_at_ms");
        let mut got: BTreeMap<usize, u64> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < a.nodes - 1 && Instant::now() < deadline {
            let pending: Vec<usize> = (0..a.nodes).filter(|i| *i != source && !got.contains_key(i)).collect();
            for i in pending {
                let seen = api_call(&apis[i], &json!({"cmd": "seen", "app": "mysql", "peer": ids[source]}));
                if let Some(s) = seen {
                    if s["issued_at_ms"].as_u64() == Some(issued) {
                        got.insert(i, s["received_at_ms"].as_u64().unwrap_or(issued).saturating_sub(issued));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("announcement {round} from node{source}: delivered to {}/{} nodes", got.len(), a.nodes - 1);
        latencies.extend(got.values().copied());
        std::thread::sleep(Duration::from_secs(1));
    }
    latencies.sort_unstable();
    if !latencies.is_empty() {
        println!(
            "gossip delivery latency (3 announcements x {} receivers): p50 {} ms, p99 {} ms, max {} ms",
            a.nodes - 1,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().unwrap()
        );
    }
    let rss: Vec<u64> = nodes.iter().filter_map(|n| rss_kib(n.proc.pid())).collect();
    let mean = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;
    println!(
        "memory per node (RSS): mean {:.1} MiB, max {:.1} MiB; bootstrap {:.1} MiB",
        mean / 1024.0,
        *rss.iter().max().unwrap_or(&0) as f64 / 1024.0,
        rss_kib(bootstrap.proc.pid()).unwrap_or(0) as f64 / 1024.0
    );
    let connected: Vec<u64> = (0..a.nodes).filter_map(|i| status(i)?["connected_peers"].as_u64()).collect();
    if std::env::var_os("BENCH_DEBUG").is_some() {
        println!("BENCH_DEBUG: logs kept under {}", tmp.path().display());
        std::mem::forget(tmp);
    }
    println!(
        "connections per node: mean {:.1}, min {}, max {}",
        connected.iter().sum::<u64>() as f64 / connected.len().max(1) as f64,
        connected.iter().min().unwrap_or(&0),
        connected.iter().max().unwrap_or(&0)
    );
}
