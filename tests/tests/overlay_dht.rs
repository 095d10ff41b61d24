//! Cluster discovery without gossip: a node that joins after its cluster peer's last
//! announcement has left gossip's history learns about that peer over request-response:
//! a fingerprint fetch after finding it in the provider records under its cluster key,
//! or the fingerprint exchange the earlier node starts when it hears the newcomer.

use mirage_tests::{members, peer_id, wait_for, Bootstrap, Node, SampleMachine};
use std::collections::BTreeSet;
use std::time::Duration;

const APP: &str = "mysql";

#[test]
fn a_late_joiner_finds_its_cluster_through_provider_records() {
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&tmp.path().join("bootstrap"), &[]);
    // Announcements every 10 minutes: within this test each node announces once, at start.
    let flags = ["--announce-interval-secs", "600", "--lookup-interval-secs", "2"];
    let early =
        Node::start(&tmp.path().join("early"), 0, SampleMachine { environment: 4, host: 0 }, &bootstrap.addr, &flags);
    let early_id = peer_id(&early.wait_status(Duration::from_secs(60)));
    // Wait until the early node has fingerprinted and announced, then well past gossip's
    // message history (a few heartbeats).
    wait_for("the early node's fingerprint", Duration::from_secs(60), Duration::from_millis(200), || {
        early.status().and_then(|s| members(&s, APP))
    });
    std::thread::sleep(Duration::from_secs(8));

    let late =
        Node::start(&tmp.path().join("late"), 1, SampleMachine { environment: 4, host: 1 }, &bootstrap.addr, &flags);
    let late_id = peer_id(&late.wait_status(Duration::from_secs(60)));
    let both: BTreeSet<String> = [early_id.clone(), late_id.clone()].into();
    wait_for("both nodes to know each other", Duration::from_secs(60), Duration::from_millis(300), || {
        let a = early.status().and_then(|s| members(&s, APP))?;
        let b = late.status().and_then(|s| members(&s, APP))?;
        (a == both && b == both).then_some(())
    });
    // Not by gossip: by a fetch after a provider lookup, or by the exchange the early
    // node starts when it hears the newcomer's announcement.
    let log = std::fs::read_to_string(&late.proc.log).unwrap();
    assert!(
        log.contains("fingerprint fetched") || log.contains("fingerprint received in an exchange"),
        "the late node learned the early one over request-response"
    );
}
