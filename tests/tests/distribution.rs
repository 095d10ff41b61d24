//! A vendor publishes a multi-chunk release; ten nodes end with byte-identical copies.
//! The vendor stops by itself once one full copy exists elsewhere, and the nodes that
//! join after that get the release and its content from their peers alone. Some of those
//! run without content lanes: they and the others still trade chunks, over libp2p.

use mirage_tests::{artifact_state, pseudo_random_bytes, wait_for, Bootstrap, Node, SampleMachine, Vendor};
use std::time::Duration;

const APP: &str = "mysql";

#[test]
fn vendor_seeds_and_the_swarm_finishes_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&dir.path().join("bootstrap"), &[]);
    let vendor = Vendor::new(&dir.path().join("vendor"));
    let trust = format!("{APP}={}", vendor.public);
    // 3 MiB in 64 KiB chunks: 48 chunks, the last one short.
    let content = pseudo_random_bytes(3 * 1024 * 1024 - 1000, 7);
    let artifact = dir.path().join("mysql-8.0.36.tar");
    std::fs::write(&artifact, &content).unwrap();

    let lanes_off = |i: usize| i >= 3 && i % 2 == 1;
    let start = |i: usize| {
        let mut flags = vec!["--trust", &trust];
        if lanes_off(i) {
            flags.push("--no-content-lanes");
        }
        Node::start(
            &dir.path().join(format!("n{i}")),
            i,
            SampleMachine { environment: (i % 2) as u32, host: i as u32 },
            &bootstrap.addr,
            &flags,
        )
    };
    let mut nodes: Vec<Node> = (0..3).map(start).collect();
    for n in &nodes {
        n.wait_status(Duration::from_secs(60));
    }

    let mut seed = vendor.publish(
        &dir.path().join("publish"),
        APP,
        "8.0.36",
        &artifact,
        &bootstrap.addr,
        &["--replicas", "1", "--chunk-kib", "64", "--no-verify-artifact"],
    );
    let exit =
        wait_for("the vendor to stop after one replica", Duration::from_secs(90), Duration::from_millis(200), || {
            seed.try_wait()
        });
    assert!(exit.success(), "vendor failed: {}", seed.log_tail(30));

    // Seven more nodes join with the vendor gone.
    nodes.extend((3..10).map(start));
    for n in &nodes {
        let path = wait_for(
            &format!("node{} to hold the release", n.index),
            Duration::from_secs(120),
            Duration::from_millis(300),
            || match artifact_state(&n.status()?, APP)? {
                (v, state, Some(path)) if v == "8.0.36" && state == "complete" => Some(path),
                _ => None,
            },
        );
        assert_eq!(std::fs::read(&path).unwrap(), content, "node{} holds a different copy", n.index);
    }
    let status = nodes[9].status().unwrap();
    assert_eq!(status["rejected_chunks"], serde_json::json!({}), "honest peers sent nothing bad");

    // Which way the late joiners' 48 chunks came.
    for n in &nodes[3..] {
        let status = n.status().unwrap();
        assert_eq!(status["lane_port"].is_u64(), !lanes_off(n.index), "node{}'s lane port", n.index);
        let received = &status["received_chunks"];
        let (lane, libp2p) = (received["lane"].as_u64().unwrap(), received["libp2p"].as_u64().unwrap());
        assert!(lane + libp2p >= 48, "node{} counted {lane} + {libp2p} chunks", n.index);
        if lanes_off(n.index) {
            assert_eq!(lane, 0, "node{} runs without lanes", n.index);
        } else {
            // Three full copies with lanes (nodes 0 to 2) are among its peers.
            assert!(lane > 0, "node{} got nothing over lanes ({libp2p} over libp2p)", n.index);
        }
    }
}
