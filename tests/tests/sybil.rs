//! Strangers cannot capture representative seats. After a release appears, attacker
//! nodes copy two clusters' fingerprints (real `mirage` processes on the same
//! environments) under keys ground to rank first for that release. In the cluster the
//! release suits they sign failures; in the cluster it breaks they sign passes. The good
//! cluster still installs, the bad one still halts, and every honest node counts the
//! attackers' reports as dropped, by reason.

use mirage_protocol::report::{Outcome, TestReport};
use mirage_protocol::staging::election::rank_score;
use mirage_protocol::{ClusterKey, Digest, Envelope, Keypair, PublicKey};
use mirage_testnet::sample_app::{self, APP, BROKEN_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::NodeView;
use mirage_tests::now_millis as now;
use serde_json::{json, Value};
use std::time::Duration;

/// Environment 0 takes the broken release well; environment 2 breaks on it.
const GOOD_ENV: u32 = 0;
const BAD_ENV: u32 = 2;
const ENVS: u32 = 3;
const PER_ENV: u32 = 3;
const ATTACKERS_PER_CLUSTER: usize = 2;
const TIMEOUT: Duration = Duration::from_secs(180);

fn env_of(i: usize) -> u32 {
    i as u32 % ENVS
}

fn view(views: &[Option<NodeView>], i: usize) -> &NodeView {
    views[i].as_ref().expect("node answers")
}

/// A key that ranks ahead of every honest member of `cluster` for `manifest`: what a
/// stranger grinds once the manifest is out (a few tries for three members).
fn ground_key(manifest: &Digest, cluster: &ClusterKey, honest: &[PublicKey]) -> Keypair {
    let best = honest.iter().map(|k| rank_score(manifest, cluster, k)).min().unwrap();
    loop {
        let k = Keypair::generate(&mut rand::rngs::OsRng);
        if rank_score(manifest, cluster, &k.public()) < best {
            return k;
        }
    }
}

fn report(manifest_id: Digest, cluster: ClusterKey, outcome: Outcome) -> TestReport {
    TestReport {
        manifest_id,
        app: APP.into(),
        version: BROKEN_VERSION.parse().unwrap(),
        cluster_key: cluster,
        outcome,
        summary: "signed by a stranger".into(),
        logs_digest: Digest([0; 32]),
        tests_run: 4,
        duration_ms: 10,
    }
}

fn ignored(status: &Value, reason: &str) -> u64 {
    status["staging"][0]["ignored"][reason].as_u64().unwrap_or(0)
}

#[test]
fn identities_minted_after_a_release_take_no_seat_in_the_clusters_they_copy() {
    assert!(!sets_query_cache(GOOD_ENV) && sets_query_cache(BAD_ENV));
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), ENVS, PER_ENV, &[]);
    let honest = fleet.nodes.len();
    fleet.wait_for_clusters(PER_ENV as usize, TIMEOUT).unwrap();
    fleet.install_everywhere(OLD_VERSION, TIMEOUT).unwrap();

    // The release's tests take a while, so the attackers speak before the honest
    // representatives do.
    let release_dir = dir.path().join("release-slow");
    std::fs::create_dir_all(&release_dir).unwrap();
    let tar = release_dir.join(format!("{APP}-{BROKEN_VERSION}.tar"));
    sample_app::write_release(BROKEN_VERSION, &tar).unwrap();
    let tests = release_dir.join("tests");
    sample_app::write_tests_dir(&tests).unwrap();
    let toml = std::fs::read_to_string(tests.join("tests.toml")).unwrap();
    std::fs::write(
        tests.join("tests.toml"),
        format!("[[test]]\nname = \"soak\"\nrun = [\"sleep\", \"25\"]\ntimeout_secs = 60\n\n{toml}"),
    )
    .unwrap();
    let mut seed = fleet.publish_files(BROKEN_VERSION, &tar, &tests, &["--policy", "front-loading"]).unwrap();
    fleet
        .wait_until(
            "the release to reach every node",
            TIMEOUT,
            |_| {},
            |views| {
                views[..honest].iter().all(|v| v.as_ref().is_some_and(|v| v.target.as_deref() == Some(BROKEN_VERSION)))
            },
        )
        .unwrap();

    let status = fleet.status(0).unwrap();
    let release = status["releases"].as_array().unwrap().iter().find(|r| r["app"] == APP).unwrap();
    assert_eq!(release["version"], BROKEN_VERSION);
    let manifest_id = Digest::from_hex(release["manifest_id"].as_str().unwrap()).unwrap();
    let views = fleet.views();
    let mut attackers: Vec<(usize, Keypair, ClusterKey, Outcome)> = Vec::new();
    for (env, outcome) in [(GOOD_ENV, Outcome::Fail), (BAD_ENV, Outcome::Pass)] {
        let first = (0..honest).find(|&i| env_of(i) == env).unwrap();
        let cluster = ClusterKey(Digest::from_hex(&view(&views, first).cluster).unwrap());
        let members: Vec<PublicKey> = mirage_testnet::fleet::members(&fleet.status(first).unwrap(), APP)
            .unwrap()
            .iter()
            .map(|p| PublicKey::from_peer_id(p).unwrap())
            .collect();
        for _ in 0..ATTACKERS_PER_CLUSTER {
            let key = ground_key(&manifest_id, &cluster, &members);
            let text = key.to_key_file();
            let i = fleet
                .add_node(env, &["--allow-debug".to_string()], |dir| {
                    std::fs::create_dir_all(dir.join("data"))?;
                    std::fs::write(dir.join("data/node.key"), &text)
                })
                .unwrap();
            attackers.push((i, key, cluster, outcome));
        }
    }
    // The honest members hear the newcomers (so they know them, and since when), and
    // their staging cores have them among the members.
    let grown = (PER_ENV as usize) + ATTACKERS_PER_CLUSTER;
    fleet
        .wait_until(
            "the attackers to join their clusters",
            TIMEOUT,
            |_| {},
            |views| {
                (0..honest)
                    .filter(|&i| env_of(i) != 1)
                    .all(|i| views[i].as_ref().is_some_and(|v| v.members == grown && v.staging_members == grown))
            },
        )
        .unwrap();
    for (i, key, cluster, outcome) in &attackers {
        let bytes = Envelope::sign(key, &report(manifest_id, *cluster, *outcome), now()).unwrap().to_bytes().unwrap();
        let reply = fleet.api(*i, &json!({"cmd": "publish-release", "app": APP, "hex": hex::encode(bytes)}));
        assert!(reply.is_some(), "attacker node{i} could not publish its report");
    }

    let good: Vec<usize> = (0..honest).filter(|&i| env_of(i) == GOOD_ENV).collect();
    let bad: Vec<usize> = (0..honest).filter(|&i| env_of(i) == BAD_ENV).collect();
    fleet
        .wait_until(
            "the good cluster to install and the bad one to halt",
            TIMEOUT,
            |_| {},
            |views| {
                let good_done = good.iter().all(|&i| view(views, i).installed.as_deref() == Some(BROKEN_VERSION));
                let bad_done =
                    bad.iter().all(|&i| matches!(view(views, i).phase.as_deref(), Some("failed" | "halted")));
                good_done && bad_done
            },
        )
        .unwrap();
    let views = fleet.views();
    for &i in &bad {
        assert_eq!(view(&views, i).installed.as_deref(), Some(OLD_VERSION), "node{i} of the bad cluster applied");
    }
    for &i in good.iter().chain(&bad) {
        let status = fleet.status(i).unwrap();
        assert!(
            ignored(&status, "joined_after_release") >= 1,
            "node{i} did not count the attackers' reports as dropped: {}",
            status["staging"][0]["ignored"]
        );
    }
    for (i, ..) in &attackers {
        assert!(!view(&views, *i).representative, "attacker node{i} holds a seat");
    }
    seed.terminate(Duration::from_secs(10));
}
