//! Generated sample machines land in clusters by environment, whatever their host noise.

use mirage_node::scan::scan;
use mirage_protocol::fingerprint::Profile;
use mirage_testnet::sample_root::{write_mysql_machine, SampleMachine};

fn key(m: SampleMachine) -> mirage_protocol::ClusterKey {
    let dir = tempfile::tempdir().unwrap();
    write_mysql_machine(dir.path(), &m).unwrap();
    let profile = Profile::parse(include_str!("../../profiles/mysql.toml")).unwrap();
    scan(&profile, dir.path(), None).unwrap().fingerprint.cluster_key()
}

#[test]
fn same_environment_same_cluster_whatever_the_host() {
    for env in 0..4 {
        let first = key(SampleMachine { environment: env, host: 0 });
        for host in 1..4 {
            assert_eq!(key(SampleMachine { environment: env, host }), first, "env {env} host {host}");
        }
    }
}

#[test]
fn environments_differ() {
    let keys: std::collections::HashSet<_> = (0..12).map(|e| key(SampleMachine { environment: e, host: e })).collect();
    assert_eq!(keys.len(), 12);
}
