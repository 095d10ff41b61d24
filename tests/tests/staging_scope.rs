//! Per-upgrade clusters on real nodes: a release that names a scope of the profile (it
//! touches only the client library) is staged over that scope's clusters. Two
//! environments that differ only in MySQL's buffer pool are two full clusters but one
//! scoped cluster, so two representatives test it, not four, and every node applies it.

use mirage_testnet::fleet::app_cluster;
use mirage_testnet::sample_app::{APP, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::{all_installed, StagedFleet, StagedOptions, PROFILE};
use mirage_tests::mirage_bin;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const ENVS: u32 = 2;
const PER_ENV: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(180);
const SCOPE: &str = "client-library";

/// The node's membership for the scope, from its status.
fn scope_cluster(status: &Value) -> Option<&Value> {
    status["clusters"].as_array()?.iter().find(|c| c["scope"]["name"] == SCOPE)
}

#[test]
fn a_release_scoped_to_the_client_library_tests_once_across_two_full_clusters() {
    // Environments 0 and 1 differ in innodb_buffer_pool_size only (see sample_root).
    assert!((0..ENVS).all(|e| !sets_query_cache(e)));
    let dir = tempfile::tempdir().unwrap();
    let profile = format!("{PROFILE}\n[scopes.{SCOPE}]\nclasses = [\"library\"]\n");
    let o = StagedOptions {
        mirage: mirage_bin(),
        dir: dir.path().to_path_buf(),
        environments: ENVS,
        nodes_per_environment: PER_ENV,
        node_flags: Vec::new(),
    };
    let mut fleet = StagedFleet::start_with_profile(&o, &profile).unwrap();
    let n = fleet.nodes.len();
    // Both memberships ready on every node: the full clusters (3 + 3) and the scope's
    // one cluster of 6.
    let ready = |fleet: &StagedFleet| {
        (0..n).all(|i| {
            let Some(s) = fleet.status(i) else { return false };
            let full = app_cluster(&s, APP).and_then(|c| c.get("roster")).cloned().unwrap_or_default();
            let scoped = scope_cluster(&s).and_then(|c| c.get("roster")).cloned().unwrap_or_default();
            full["ready"] == true
                && full["live_members"] == PER_ENV
                && scoped["ready"] == true
                && scoped["live_members"] == ENVS * PER_ENV
        })
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !ready(&fleet) {
        assert!(std::time::Instant::now() < deadline, "memberships never settled: {:#?}", fleet.status(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    let statuses: Vec<Value> = (0..n).map(|i| fleet.status(i).unwrap()).collect();
    let full: BTreeSet<&str> =
        statuses.iter().map(|s| app_cluster(s, APP).unwrap()["cluster_key"].as_str().unwrap()).collect();
    let scoped: BTreeSet<&str> =
        statuses.iter().map(|s| scope_cluster(s).unwrap()["cluster_key"].as_str().unwrap()).collect();
    assert_eq!((full.len(), scoped.len()), (2, 1), "two full clusters, one scoped cluster");

    let mut seed = fleet.publish(OLD_VERSION, &["--policy", "no-staging"]).unwrap();
    fleet.wait_until("the old version everywhere", TIMEOUT, |_| {}, |v| all_installed(v, OLD_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));
    let tested_before: Vec<usize> =
        (0..n).map(|i| fleet.nodes[i].logs().matches("testing in the sandbox").count()).collect();

    let profile_path = fleet.profile_path().display().to_string();
    let flags = ["--policy", "front-loading", "--scope", SCOPE, "--profile", &profile_path];
    let mut seed = fleet.publish(FIXED_VERSION, &flags).unwrap();
    let views = fleet.wait_until("the scoped release everywhere", TIMEOUT, |_| {}, |v| all_installed(v, FIXED_VERSION));
    seed.terminate(Duration::from_secs(10));
    let views = views.unwrap();

    let staged_in: BTreeSet<&str> = views.iter().map(|v| v.as_ref().unwrap().cluster.as_str()).collect();
    assert_eq!(staged_in, scoped, "every node staged the release in the scope's cluster");
    let testers: Vec<usize> = (0..n)
        .filter(|&i| fleet.nodes[i].logs().matches("testing in the sandbox").count() > tested_before[i])
        .collect();
    assert_eq!(testers.len(), 2, "two representatives for the one scoped cluster, not two per full cluster");
    let reps = views.iter().filter(|v| v.as_ref().unwrap().representative).count();
    assert_eq!(reps, 2);
}
