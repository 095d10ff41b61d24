//! Machines that were away: a node stopped before a release and started after its
//! cluster reached its verdict learns that verdict from its peers (it was gossiped
//! while the node was off). One in the cluster the release breaks never applies it;
//! one in a cluster whose gate held applies it.

use mirage_testnet::sample_app::{BROKEN_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::NodeView;
use std::time::Duration;

const ENVS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(180);

fn bad(i: usize) -> bool {
    sets_query_cache(i as u32 % ENVS)
}

fn settled(v: &NodeView, i: usize) -> bool {
    if bad(i) {
        matches!(v.phase.as_deref(), Some("failed" | "halted"))
    } else {
        v.installed.as_deref() == Some(BROKEN_VERSION)
    }
}

#[test]
fn a_node_back_after_its_clusters_verdict_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), ENVS, 3, &[]);
    let n = fleet.nodes.len();
    fleet.wait_for_clusters(3, TIMEOUT).unwrap();
    fleet.install_everywhere(OLD_VERSION, TIMEOUT).unwrap();

    // One node of the breaking cluster and one of a good cluster go away.
    let away_bad = (0..n).find(|&i| bad(i)).unwrap();
    let away_good = (0..n).find(|&i| !bad(i)).unwrap();
    fleet.nodes[away_bad].process.kill();
    fleet.nodes[away_good].process.kill();

    // Seats of absent representatives pass on after 10 s.
    let flags = ["--policy", "front-loading", "--report-deadline-secs", "10"];
    let mut seed = fleet.publish(BROKEN_VERSION, &flags).unwrap();
    fleet
        .wait_until(
            "the verdicts without the absent nodes",
            TIMEOUT,
            |_| {},
            |views| {
                views
                    .iter()
                    .enumerate()
                    .all(|(i, v)| i == away_bad || i == away_good || v.as_ref().is_some_and(|v| settled(v, i)))
            },
        )
        .unwrap();

    // Long enough that gossip's recent-message cache (a few heartbeats) no longer
    // offers the reports to a peer that connects: the verdict is history.
    std::thread::sleep(Duration::from_secs(20));
    let mirage = fleet.mirage.clone();
    fleet.nodes[away_bad].restart(&mirage, &[]).unwrap();
    fleet.nodes[away_good].restart(&mirage, &[]).unwrap();
    let views = fleet
        .wait_until(
            "the absent nodes to follow their clusters",
            TIMEOUT,
            |_| {},
            |views| [away_bad, away_good].iter().all(|&i| views[i].as_ref().is_some_and(|v| settled(v, i))),
        )
        .unwrap();
    let back_bad = views[away_bad].as_ref().unwrap();
    assert_eq!(back_bad.installed.as_deref(), Some(OLD_VERSION), "the node back in the halted cluster applied");
    assert!(
        !fleet.nodes[away_bad].logs().contains("testing in the sandbox"),
        "it tested a release its cluster had judged"
    );
    seed.terminate(Duration::from_secs(10));
}
