//! The overlay end to end: a bootstrap peer and 12 node processes on 127.0.0.1 over 3
//! generated environments. Every node must find exactly the nodes that share its
//! environment; a killed node must rejoin as itself after a restart; SIGTERM must stop
//! a node cleanly.

use mirage_tests::{app_cluster, members, mirage, peer_id, wait_for, Bootstrap, Node, SampleMachine};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NODES: usize = 12;
const ENVIRONMENTS: u32 = 3;
const APP: &str = "mysql";
const NODE_FLAGS: &[&str] = &["--lookup-interval-secs", "5", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"];

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits until every node's members for the app are exactly the expected peers, and
/// returns how long it took.
fn wait_for_clusters(nodes: &[Node], ids: &[String], timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut expected: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (n, id) in nodes.iter().zip(ids) {
        expected.entry(n.machine.environment).or_default().insert(id.clone());
    }
    let deadline = start + timeout;
    loop {
        let mut wrong = Vec::new();
        for n in nodes {
            let want = &expected[&n.machine.environment];
            match n.status().and_then(|s| members(&s, APP)) {
                Some(got) if &got == want => {}
                Some(got) => wrong.push(format!("node{} has {} of {} members", n.index, got.len(), want.len())),
                None => wrong.push(format!("node{} has no status", n.index)),
            }
        }
        if wrong.is_empty() {
            return start.elapsed();
        }
        assert!(Instant::now() < deadline, "clusters incomplete after {timeout:?}: {}", wrong.join(", "));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn nodes_find_exactly_their_cluster_and_rejoin_after_restart() {
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&tmp.path().join("bootstrap"), &[]);
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let machine = SampleMachine { environment: i as u32 % ENVIRONMENTS, host: i as u32 };
            Node::start(&tmp.path().join(format!("node{i}")), i, machine, &bootstrap.addr, NODE_FLAGS)
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| peer_id(&n.wait_status(Duration::from_secs(60)))).collect();
    eprintln!("[{:?}] {NODES} nodes answer", t.elapsed());
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), NODES, "peer ids must be distinct");

    // Environments differ, so cluster keys differ; hosts within one environment agree.
    let keys: BTreeMap<u32, BTreeSet<String>> =
        wait_for("fingerprints", Duration::from_secs(60), Duration::from_millis(300), || {
            let mut keys: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
            for n in &nodes {
                let s = n.status()?;
                let c = app_cluster(&s, APP)?.clone();
                keys.entry(n.machine.environment).or_default().insert(c["cluster_key"].as_str()?.to_string());
            }
            Some(keys)
        });
    assert!(keys.values().all(|k| k.len() == 1), "one cluster key per environment: {keys:?}");
    assert_eq!(keys.values().flatten().collect::<BTreeSet<_>>().len(), ENVIRONMENTS as usize);

    let took = wait_for_clusters(&nodes, &ids, Duration::from_secs(90));
    eprintln!("{NODES} nodes knew their full clusters after {took:?}");

    // Each cluster's own topic carries its members' heartbeats: every node's roster
    // counts its whole cluster (itself included), and sees no other cluster's.
    let per_env = NODES / ENVIRONMENTS as usize;
    let t_roster = Instant::now();
    wait_for("rosters", Duration::from_secs(90), Duration::from_millis(500), || {
        nodes
            .iter()
            .all(|n| {
                n.status().and_then(|s| app_cluster(&s, APP)?["roster"]["live_members"].as_u64())
                    == Some(per_env as u64)
            })
            .then_some(())
    });
    eprintln!("every roster counted its {per_env} members {:?} later", t_roster.elapsed());

    // Every status carries the fields the issue asks for.
    let s = nodes[3].status().unwrap();
    assert!(s["connected_peers"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["dropped_announcements"].is_object(), "{s}");

    // Kill a node hard and restart it on the same key and database.
    eprintln!("[{:?}] restarting node 0", t.elapsed());
    let victim = 0;
    nodes[victim].proc.kill();
    let restarted_at = now_ms();
    nodes[victim].restart();
    let status = nodes[victim].wait_status(Duration::from_secs(60));
    assert_eq!(peer_id(&status), ids[victim], "a restarted node keeps its identity");
    wait_for_clusters(&nodes, &ids, Duration::from_secs(60));
    let peer_in_cluster =
        nodes.iter().find(|n| n.index != victim && n.machine.environment == nodes[victim].machine.environment).unwrap();
    // Its cluster peers hear from the restarted node again: a fresh heartbeat.
    wait_for("a fresh heartbeat from the restarted node", Duration::from_secs(60), Duration::from_millis(300), || {
        let api = peer_in_cluster.api()?;
        let out = mirage(&["debug", "seen", "--api", &api, "--app", APP, "--peer", &ids[victim]]).ok()?;
        let seen: serde_json::Value = serde_json::from_str(&out).ok()?;
        (seen["roster"]["last_seen_ms"].as_u64()? >= restarted_at).then_some(())
    });
    let connected = nodes[victim].status().unwrap()["connected_peers"].as_u64().unwrap();
    assert!(connected >= 1, "restarted node is connected");

    eprintln!("[{:?}] node 0 rejoined", t.elapsed());
    // Graceful shutdown on SIGTERM.
    let status = nodes[1].proc.terminate(Duration::from_secs(20)).expect("node exits on SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(!nodes[1].data_dir().join("api.sock").exists(), "the API socket removed on shutdown");
    drop(bootstrap);
}
