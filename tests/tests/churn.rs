//! A staged rollout under churn and a partition: 30% of the nodes are killed as the
//! release goes out and restarted while the fleet is cut in two halves (each half
//! refuses the other's connections, the bootstrap peer's and the seed's on one side),
//! which heal half-way. No node of the breaking cluster ever installs the broken
//! release, and after the fix every node runs one version.

use mirage_testnet::fleet::api_call;
use mirage_testnet::sample_app::{BROKEN_VERSION, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::{all_installed, broken_release_settled, NodeView, StagedFleet};
use serde_json::json;
use std::time::{Duration, Instant};

const ENVS: u32 = 3;
const PER_ENV: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(240);

fn bad(i: usize) -> bool {
    sets_query_cache(i as u32 % ENVS)
}

/// No node of the breaking environment runs the broken release.
fn no_faulty_install(views: &[Option<NodeView>]) -> bool {
    views
        .iter()
        .enumerate()
        .all(|(i, v)| !bad(i) || v.as_ref().is_none_or(|v| v.installed.as_deref() != Some(BROKEN_VERSION)))
}

#[test]
fn a_rollout_through_churn_and_a_healed_partition_installs_nothing_faulty_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), ENVS, PER_ENV, &["--allow-debug"]);
    let n = fleet.nodes.len();
    fleet.wait_for_clusters(PER_ENV as usize, TIMEOUT).unwrap();
    fleet.install_everywhere(OLD_VERSION, TIMEOUT).unwrap();
    let ids: Vec<String> = (0..n).map(|i| fleet.status(i).unwrap()["peer_id"].as_str().unwrap().to_string()).collect();

    let flags = ["--policy", "balanced", "--stages", "3", "--stage-timeout-secs", "10", "--report-deadline-secs", "10"];
    let mut seed = fleet.publish(BROKEN_VERSION, &flags).unwrap();
    let seed_dir = dir.path().join(format!("release-{BROKEN_VERSION}/seed"));
    let seed_api = seed_dir.join("api.sock").display().to_string();
    let seed_id = mirage_tests::wait_for("the seed's status", TIMEOUT, Duration::from_millis(200), || {
        api_call(&seed_api, &json!({"cmd": "status"})).and_then(|s| s["peer_id"].as_str().map(str::to_string))
    });
    let bootstrap_id = fleet.bootstrap.addr.rsplit('/').next().unwrap().to_string();

    // Churn: 30% of the nodes die as the release goes out.
    let killed: Vec<usize> = (0..n).filter(|i| i % 3 == 1).take(n * 3 / 10).collect();
    for &i in &killed {
        fleet.nodes[i].process.kill();
    }
    // A partition: half B refuses half A, the bootstrap peer and the seed; half A
    // refuses half B.
    let half_b = |i: usize| i % 2 == 1;
    let block = |fleet: &StagedFleet, i: usize, heal: bool| {
        let peers: Vec<String> = if heal {
            Vec::new()
        } else if half_b(i) {
            (0..n)
                .filter(|&j| !half_b(j))
                .map(|j| ids[j].clone())
                .chain([bootstrap_id.clone(), seed_id.clone()])
                .collect()
        } else {
            (0..n).filter(|&j| half_b(j)).map(|j| ids[j].clone()).collect()
        };
        fleet.api(i, &json!({"cmd": "block", "peers": peers}))
    };
    for i in (0..n).filter(|i| !killed.contains(i)) {
        assert!(block(&fleet, i, false).is_some(), "node{i} refused the block list");
    }
    let started = Instant::now();
    let faulty = std::cell::Cell::new(false);
    let watch = |views: &[Option<NodeView>]| faulty.set(faulty.get() || !no_faulty_install(views));
    // The killed nodes come back during the partition, cut off like their half.
    std::thread::sleep(Duration::from_secs(8));
    let mirage = fleet.mirage.clone();
    for &i in &killed {
        fleet.nodes[i].restart(&mirage, &[]).unwrap();
    }
    let _ = fleet.wait_until("the restarted nodes to answer", TIMEOUT, watch, |views| {
        killed.iter().all(|&i| views[i].is_some())
    });
    for &i in &killed {
        block(&fleet, i, false);
    }
    // Heal half-way.
    std::thread::sleep(Duration::from_secs(20u64.saturating_sub(started.elapsed().as_secs())));
    for i in 0..n {
        block(&fleet, i, true);
    }
    eprintln!("healed after {:?}", started.elapsed());
    fleet
        .wait_until("the broken release to settle", TIMEOUT, watch, |views| {
            broken_release_settled(views, BROKEN_VERSION, bad)
        })
        .unwrap();
    seed.terminate(Duration::from_secs(10));
    assert!(!faulty.get(), "a node of the breaking cluster installed the broken release");

    let mut seed = fleet.publish(FIXED_VERSION, &flags).unwrap();
    fleet.wait_until("the fix everywhere", TIMEOUT, watch, |v| all_installed(v, FIXED_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));
    assert!(!faulty.get(), "a node of the breaking cluster installed the broken release");
}
