//! Re-announcement on change: when a machine's environment changes, its node notices on
//! the next rescan, moves its provider record, announces the new fingerprint at once,
//! and both the old and the new cluster see the move.

use mirage_tests::{members, peer_id, wait_for, write_mysql_machine, Bootstrap, Node, SampleMachine};
use std::collections::BTreeSet;
use std::time::Duration;

const APP: &str = "mysql";

#[test]
fn a_changed_environment_moves_the_node_to_its_new_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&tmp.path().join("bootstrap"), &[]);
    // Long announce and lookup intervals: only the change itself can explain a quick move.
    let flags = ["--rescan-interval-secs", "2", "--announce-interval-secs", "600", "--lookup-interval-secs", "600"];
    let mut nodes: Vec<Node> = (0..4)
        .map(|i| {
            let machine = SampleMachine { environment: (i % 2) as u32, host: i as u32 };
            Node::start(&tmp.path().join(format!("node{i}")), i, machine, &bootstrap.addr, &flags)
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| peer_id(&n.wait_status(Duration::from_secs(60)))).collect();
    let check = |nodes: &[Node]| {
        nodes.iter().all(|n| {
            let want: BTreeSet<String> = nodes
                .iter()
                .zip(&ids)
                .filter(|(m, _)| m.machine.environment == n.machine.environment)
                .map(|(_, id)| id.clone())
                .collect();
            n.status().and_then(|s| members(&s, APP)) == Some(want)
        })
    };
    let t = std::time::Instant::now();
    wait_for("initial clusters", Duration::from_secs(90), Duration::from_millis(500), || check(&nodes).then_some(()));
    eprintln!("initial clusters after {:?}", t.elapsed());
    let old_key = nodes[0].status().unwrap()["clusters"][0]["cluster_key"].clone();

    // Node 0 (environment 0) becomes an environment-1 machine.
    let moved = SampleMachine { environment: 1, host: 0 };
    write_mysql_machine(&nodes[0].dir.join("root"), &moved).unwrap();
    nodes[0].machine = moved;
    wait_for("the move to be seen everywhere", Duration::from_secs(60), Duration::from_millis(500), || {
        check(&nodes).then_some(())
    });
    eprintln!("move seen everywhere after {:?}", t.elapsed());
    let new_key = nodes[0].status().unwrap()["clusters"][0]["cluster_key"].clone();
    assert_ne!(old_key, new_key);
    assert_eq!(new_key, nodes[1].status().unwrap()["clusters"][0]["cluster_key"]);
    assert_eq!(members(&nodes[2].status().unwrap(), APP).unwrap().len(), 1, "node2 is alone in environment 0 now");
}
