//! Staged deployment end to end: 3 clusters of 4 nodes, one whose environment makes the
//! new release fail. The good clusters apply it; in the bad one only representatives
//! test, nobody applies, and the vendor lists the problem reports; the fix then goes
//! everywhere. Forged, stale, non-representative, other-cluster and other-upgrade test
//! reports are injected while the bad cluster is halted, and change nothing.

use mirage_protocol::report::{Outcome, TestReport};
use mirage_protocol::{ClusterKey, Digest, Envelope, Keypair, UnixMillis};
use mirage_testnet::sample_app::{APP, BROKEN_VERSION, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::{all_installed, broken_release_settled, NodeView};
use mirage_tests::now_millis as now;
use serde_json::json;
use std::time::Duration;

const ENVS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(180);

fn env_of(i: usize) -> u32 {
    i as u32 % ENVS
}

fn bad(i: usize) -> bool {
    sets_query_cache(env_of(i))
}

fn view(views: &[Option<NodeView>], i: usize) -> &NodeView {
    views[i].as_ref().expect("node answers")
}

fn pass_report(manifest_id: Digest, cluster: ClusterKey) -> TestReport {
    TestReport {
        manifest_id,
        app: APP.into(),
        version: BROKEN_VERSION.parse().unwrap(),
        cluster_key: cluster,
        outcome: Outcome::Pass,
        summary: "all good (injected)".into(),
        logs_digest: Digest([0; 32]),
        tests_run: 4,
        duration_ms: 10,
    }
}

fn cluster_key(hex: &str) -> ClusterKey {
    let bytes: [u8; 32] = hex::decode(hex).unwrap().try_into().unwrap();
    ClusterKey(Digest(bytes))
}

#[test]
fn staged_rollout_halts_the_breaking_cluster_until_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), ENVS, 4, &["--allow-debug"]);
    fleet.wait_for_clusters(4, TIMEOUT).unwrap();

    fleet.install_everywhere(OLD_VERSION, TIMEOUT).unwrap();

    let staged = ["--policy", "balanced", "--stages", "3", "--stage-timeout-secs", "10"];
    let mut seed = fleet.publish(BROKEN_VERSION, &staged).unwrap();
    let views = fleet
        .wait_until(
            "the broken release to settle",
            TIMEOUT,
            |_| {},
            |views| broken_release_settled(views, BROKEN_VERSION, bad),
        )
        .unwrap();
    let bad_nodes: Vec<usize> = (0..views.len()).filter(|&i| bad(i)).collect();
    let reps: Vec<usize> = bad_nodes.iter().copied().filter(|&i| view(&views, i).representative).collect();
    assert_eq!(reps.len(), 2, "the policy elects 2 representatives: {views:#?}");
    for &i in &bad_nodes {
        let v = view(&views, i);
        assert_eq!(v.installed.as_deref(), Some(OLD_VERSION), "node{i} of the bad cluster applied the release");
        // A representative that was still fetching when the other one failed never
        // tests: the cluster is halted by then. Nobody else ever tests.
        let tested = fleet.nodes[i].logs().contains("testing in the sandbox");
        assert!(!tested || v.representative, "node{i} tested without being a representative");
        assert_eq!(v.phase.as_deref(), Some(if tested { "failed" } else { "halted" }), "node{i}");
    }
    let testers = bad_nodes.iter().filter(|&&i| fleet.nodes[i].logs().contains("testing in the sandbox")).count();
    assert!((1..=2).contains(&testers), "{testers} nodes of the bad cluster tested");

    // The vendor sees why.
    let reports = fleet.problem_reports().unwrap();
    assert!(!reports.is_empty(), "the vendor lists no problem report");
    for r in &reports {
        assert_eq!(r["version"], BROKEN_VERSION);
        assert_eq!(r["cluster_key"], view(&views, bad_nodes[0]).cluster.as_str());
        assert!(r["failed_tests"].as_array().unwrap().iter().any(|t| t == "config-validates"), "{r}");
        assert!(r["output_excerpt"].as_str().unwrap().contains("unknown variable 'query_cache_size'"), "{r}");
    }

    // What the nodes hold and relay shows the failing test's name, never its output:
    // that is sealed to the vendor.
    let held = fleet.api(bad_nodes[0], &json!({"cmd": "problem-reports", "app": APP})).unwrap();
    let held = held["reports"].as_array().unwrap();
    assert!(!held.is_empty());
    for envelope in held {
        let bytes = hex::decode(envelope.as_str().unwrap()).unwrap();
        assert!(!bytes.windows(16).any(|w| w == b"query_cache_size"), "test output travels in the clear");
    }

    // Injected reports that must not open the bad cluster's gate.
    let status = fleet.status(bad_nodes[0]).unwrap();
    let manifest_id = status["releases"][0]["manifest_id"].as_str().unwrap().to_string();
    let manifest_id = Digest(hex::decode(&manifest_id).unwrap().try_into().unwrap());
    let bad_cluster = cluster_key(&view(&views, bad_nodes[0]).cluster);
    let key_of = |i: usize| mirage_node::keyfile::load(&fleet.nodes[i].dir.join("data/node.key")).unwrap();
    let non_rep = *bad_nodes.iter().find(|i| !reps.contains(i)).unwrap();
    let good_rep = (0..views.len()).find(|&i| !bad(i) && view(&views, i).representative).unwrap();
    let sign = |key: &Keypair, report: &TestReport, at: UnixMillis| {
        hex::encode(Envelope::sign(key, report, at).unwrap().to_bytes().unwrap())
    };
    let forged = {
        let mut env =
            Envelope::sign(&Keypair::generate(&mut rand::rngs::OsRng), &pass_report(manifest_id, bad_cluster), now())
                .unwrap();
        env.signer = key_of(reps[0]).public();
        hex::encode(env.to_bytes().unwrap())
    };
    let two_weeks_ago = UnixMillis(now().0 - 14 * 24 * 3600 * 1000);
    let injected = [
        ("forged signature", forged),
        ("stale replay", sign(&key_of(reps[0]), &pass_report(manifest_id, bad_cluster), two_weeks_ago)),
        ("non-representative", sign(&key_of(non_rep), &pass_report(manifest_id, bad_cluster), now())),
        ("other cluster's member", sign(&key_of(good_rep), &pass_report(manifest_id, bad_cluster), now())),
        ("other upgrade", sign(&key_of(reps[0]), &pass_report(Digest([7; 32]), bad_cluster), now())),
        ("other upgrade", sign(&key_of(reps[1]), &pass_report(Digest([8; 32]), bad_cluster), now())),
    ];
    for (what, hex) in &injected {
        let reply = fleet.api(non_rep, &json!({"cmd": "publish-release", "app": APP, "hex": hex}));
        assert!(reply.is_some(), "could not inject the {what} report");
    }
    mirage_tests::wait_for(
        "the injected reports to arrive",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let refused = |table: &str, reason: &str| -> u64 {
                bad_nodes.iter().filter_map(|&i| fleet.status(i)).map(|s| s[table][reason].as_u64().unwrap_or(0)).sum()
            };
            // Refused by the release channel's rules, which relays apply too.
            let signatures = refused("rejected_release_messages", "signature");
            let stale = refused("rejected_release_messages", "stale") > 0;
            // The others heard the injected reports and their cores refused them (the
            // reports for made-up releases occur nowhere else).
            let heard = bad_nodes.iter().filter(|&&i| i != non_rep).all(|&i| {
                fleet.status(i).is_some_and(|s| {
                    let app = s["staging"].as_array().and_then(|a| a.iter().find(|a| a["app"] == APP).cloned());
                    app.is_some_and(|a| a["ignored"]["other_upgrade"].as_u64().unwrap_or(0) > 0)
                })
            });
            (signatures > 0 && stale && heard).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = fleet.views();
    for &i in &bad_nodes {
        let v = view(&after, i);
        assert_eq!(v.installed.as_deref(), Some(OLD_VERSION), "node{i} applied after injected reports");
        assert!(matches!(v.phase.as_deref(), Some("failed" | "halted")), "node{i} moved to {:?}", v.phase);
    }
    seed.terminate(Duration::from_secs(10));

    // The fix goes everywhere, the halted cluster included.
    let mut seed = fleet.publish(FIXED_VERSION, &staged).unwrap();
    fleet.wait_until("the fix everywhere", TIMEOUT, |_| {}, |v| all_installed(v, FIXED_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));
}
