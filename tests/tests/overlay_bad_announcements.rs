//! Bad announcements on the real receiving path: a node of the fleet (started with
//! `--allow-debug`) publishes malformed, oversized, unsigned, wrongly signed, stale and
//! wrong-app announcements to its peers. Receivers must drop and count each by reason,
//! score the sender down, keep running and keep their clusters intact.

use mirage_tests::{members, mirage, peer_id, wait_for, Bootstrap, Node, SampleMachine};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const APP: &str = "mysql";

fn drops(s: &Value, reason: &str) -> u64 {
    s["dropped_announcements"][reason].as_u64().unwrap_or(0)
}

#[test]
fn bad_announcements_are_dropped_counted_and_penalized() {
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&tmp.path().join("bootstrap"), &[]);
    let nodes: Vec<Node> = (0..5)
        .map(|i| {
            let machine = SampleMachine { environment: (i % 2) as u32, host: i as u32 };
            let flags: &[&str] = if i == 0 {
                &["--allow-debug", "--lookup-interval-secs", "5"]
            } else {
                &["--lookup-interval-secs", "5"]
            };
            Node::start(&tmp.path().join(format!("node{i}")), i, machine, &bootstrap.addr, flags)
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| peer_id(&n.wait_status(Duration::from_secs(60)))).collect();
    let expected = |env: u32| -> BTreeSet<String> {
        nodes.iter().zip(&ids).filter(|(n, _)| n.machine.environment == env).map(|(_, id)| id.clone()).collect()
    };
    let converged =
        || nodes.iter().all(|n| n.status().and_then(|s| members(&s, APP)) == Some(expected(n.machine.environment)));
    wait_for("clusters", Duration::from_secs(90), Duration::from_millis(500), || converged().then_some(()));

    // Injection is refused unless the node was started for it.
    let api1 = nodes[1].api().unwrap();
    let refused = mirage(&["debug", "inject", "--api", &api1, "--kind", "stale"]).unwrap_err();
    assert!(refused.contains("--allow-debug"), "{refused}");

    // The injector must reach its peers on the topic: wait until some receiver connects to it.
    let api0 = nodes[0].api().unwrap();
    for kind in ["malformed", "oversized", "unsigned", "wrong-signature", "stale", "wrong-app"] {
        wait_for(&format!("publishing {kind}"), Duration::from_secs(30), Duration::from_millis(300), || {
            mirage(&["debug", "inject", "--api", &api0, "--kind", kind]).ok()
        });
    }

    // Every reason is counted by the receivers, and the sender's score went negative.
    let expected_counts = [("decode", 1), ("too_large", 1), ("signature", 2), ("stale", 1), ("wrong_app", 1)];
    // Each kind is counted by at least one receiver that saw them all (flood publishing
    // reaches every topic peer of the injector), and some receiver scored it below zero.
    wait_for("drop counts and a penalty", Duration::from_secs(30), Duration::from_millis(300), || {
        let statuses: Vec<Value> = nodes[1..].iter().map(|n| n.status()).collect::<Option<_>>()?;
        let full = statuses.iter().any(|s| expected_counts.iter().all(|(r, min)| drops(s, r) >= *min));
        let penalized = statuses.iter().any(|s| s["peer_scores"][&ids[0]].as_f64().is_some_and(|score| score < 0.0));
        (full && penalized).then_some(())
    });

    // Everyone is still up, the injector included, and clusters are intact.
    let wanted: Vec<BTreeSet<String>> = nodes.iter().map(|n| expected(n.machine.environment)).collect();
    for (mut n, want) in nodes.into_iter().zip(wanted) {
        assert!(n.proc.alive(), "node{} died", n.index);
        assert_eq!(n.status().and_then(|s| members(&s, APP)), Some(want));
        n.proc.kill();
    }
    assert!(bootstrap.proc.log_tail(200).contains("dropped message"), "the bootstrap relay drops them too");
}
