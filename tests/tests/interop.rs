//! Another conforming libp2p implementation is a peer, not an attacker: a js-libp2p
//! node (tests/js/peer.mjs) joins the overlay on loopback, subscribes to the app's
//! topic and relays what it hears, echoing the nodes' own messages back to them
//! through other nodes, as js's gossipsub does. Every Mirage node keeps its score at or
//! above zero, and the js peer receives the app's gossip.

use mirage_tests::{peer_id, wait_for, workspace, Bootstrap, Node, SampleMachine};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 4;
/// How long the js peer stays: many summary epochs at loopback timing.
const JS_SECONDS: u64 = 25;

#[test]
fn a_js_libp2p_peer_that_echoes_messages_keeps_a_non_negative_score() {
    let js = workspace().join("tests/js");
    assert!(
        js.join("node_modules/libp2p").is_dir(),
        "the js peer's packages are missing: run `./dev deps` (npm ci in tests/js)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&tmp.path().join("bootstrap"), &[]);
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            // One environment: every node is in the js peer's mesh on the app's topic.
            let machine = SampleMachine { environment: 0, host: i as u32 };
            Node::start(&tmp.path().join(format!("node{i}")), i, machine, &bootstrap.addr, &[])
        })
        .collect();
    let statuses: Vec<_> = nodes.iter().map(|n| n.wait_status(Duration::from_secs(60))).collect();
    let addrs: Vec<String> = statuses
        .iter()
        .map(|s| {
            let listen =
                s["listen_addrs"].as_array().unwrap().iter().find_map(|a| a.as_str().filter(|a| a.contains("/tcp/")));
            format!("{}/p2p/{}", listen.unwrap(), peer_id(s))
        })
        .collect();

    let mut args =
        vec![js.join("peer.mjs").display().to_string(), JS_SECONDS.to_string(), "mirage/v1/app/mysql".into()];
    args.extend(addrs);
    let mut child = Command::new("node")
        .args(&args)
        .current_dir(&js)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (Node.js) runs the js peer");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let js_peer = lines.next().unwrap().unwrap().strip_prefix("peer ").unwrap().to_string();
    eprintln!("js peer {js_peer}");

    // Its score at every node that knows it, sampled while it is there.
    let mut lowest = f64::INFINITY;
    let mut seen = 0;
    let end = Instant::now() + Duration::from_secs(JS_SECONDS - 5);
    while Instant::now() < end {
        for n in &nodes {
            if let Some(score) = n.status().and_then(|s| s["peer_scores"][&js_peer].as_f64()) {
                lowest = lowest.min(score);
                seen += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let received = wait_for("the js peer's count", Duration::from_secs(30), Duration::from_millis(200), || {
        lines.next()?.ok()?.strip_prefix("received ").map(|n| n.parse::<u64>().unwrap())
    });
    let _ = child.wait();
    eprintln!("js peer: {received} messages received; lowest score at a node {lowest} over {seen} samples");
    assert!(seen > 0, "no node scored the js peer: it never joined the overlay");
    assert!(received > 0, "the js peer heard nothing on the app's topic");
    assert!(lowest >= 0.0, "a node scored the js peer {lowest}: it treats another implementation as an attacker");
}
