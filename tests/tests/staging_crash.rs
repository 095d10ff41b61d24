//! A node killed (abort, as kill -9 would) in the middle of applying an upgrade comes
//! back to a consistent version: the `current` link names the old or the new version,
//! never a missing one, and after the restart the node finishes the upgrade.

use mirage_testnet::sample_app::{APP, BROKEN_VERSION, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::staged::{all_installed, StagedFleet, StagedOptions};
use mirage_tests::{mirage_bin, wait_for};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_node_killed_during_apply_recovers_to_a_consistent_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = StagedFleet::start(&StagedOptions {
        mirage: mirage_bin(),
        dir: dir.path().to_path_buf(),
        environments: 1,
        nodes_per_environment: 2,
        node_flags: Vec::new(),
    })
    .unwrap();
    let mut seed = fleet.publish(OLD_VERSION, &["--policy", "no-staging"]).unwrap();
    fleet.wait_until("the old version", TIMEOUT, |_| {}, |v| all_installed(v, OLD_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));

    // Environment 0 has no query_cache_size, so 8.4.0 is healthy there.
    for (version, previous, crash_at) in
        [(BROKEN_VERSION, OLD_VERSION, "switch-intent"), (FIXED_VERSION, BROKEN_VERSION, "renamed")]
    {
        let mirage = fleet.mirage.clone();
        fleet.nodes[0].restart(&mirage, &[("MIRAGE_TEST_CRASH_AT", crash_at)]).unwrap();
        wait_for("node0 back", TIMEOUT, Duration::from_millis(200), || fleet.nodes[0].status());
        let mut seed = fleet.publish(version, &["--policy", "no-staging"]).unwrap();
        wait_for(&format!("node0 to crash at {crash_at}"), TIMEOUT, Duration::from_millis(100), || {
            fleet.nodes[0].process.try_wait()
        });
        assert!(
            fleet.nodes[0].logs().contains(&format!("injected crash at {crash_at}")),
            "node0 stopped, but not at {crash_at}"
        );
        let current = fleet.nodes[0].dir.join(format!("root/opt/mirage/{APP}/current"));
        let target = std::fs::read_link(&current).expect("current is a symlink after the crash");
        let named = target.file_name().unwrap().to_str().unwrap().to_string();
        assert!(named == version || named == previous, "current names {named} after a crash at {crash_at}");
        assert!(current.join("bin/mysqld").is_file(), "current ({named}) is not a whole version");

        fleet.nodes[0].restart(&mirage, &[]).unwrap();
        fleet
            .wait_until(&format!("{version} after the restart"), TIMEOUT, |_| {}, |v| all_installed(v, version))
            .unwrap();
        let status = fleet.status(0).unwrap();
        assert_eq!(status["staging"][0]["phase"], "applied", "{status}");
        seed.terminate(Duration::from_secs(10));
    }

    // The operator can still go back by hand.
    let api = fleet.nodes[1].api().unwrap();
    let out = mirage_tests::mirage(&["rollback", "--api", &api, "--app", APP]).unwrap();
    assert!(out.contains(BROKEN_VERSION), "{out}");
    let status = fleet.status(1).unwrap();
    assert_eq!(status["staging"][0]["installed"], BROKEN_VERSION, "{status}");
}
