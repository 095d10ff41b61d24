//! State from strangers stays bounded: during a staged rollout, 10,000 test reports
//! signed by fresh keys for made-up clusters and 300 problem reports are sent at a node.
//! Its memory and database stay within bounds, the rollout halts the breaking cluster
//! and completes with the fix, and the vendor still gets the real failure.

use mirage_protocol::fingerprint::Fingerprint;
use mirage_protocol::report::{Outcome, ProblemDetails, ProblemDraft, TestReport};
use mirage_protocol::{ClusterKey, Digest, Envelope, Keypair, PublicKey};
use mirage_testnet::sample_app::{APP, BROKEN_VERSION, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::sample_root::sets_query_cache;
use mirage_testnet::staged::{all_installed, broken_release_settled};
use mirage_tests::now_millis as now;
use rand::RngCore;
use serde_json::json;
use std::time::{Duration, Instant};

const ENVS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(240);
const REPORTS: usize = 10_000;
const PROBLEMS: usize = 300;
/// What the node may grow by while the flood and the rest of the rollout run.
const MAX_GROWTH_BYTES: u64 = 50 << 20;
/// The node's database after it all (it held about 1 MiB before the release).
const MAX_DATABASE_BYTES: u64 = 32 << 20;

fn bad(i: usize) -> bool {
    sets_query_cache(i as u32 % ENVS)
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn random_digest() -> Digest {
    let mut d = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut d);
    Digest(d)
}

#[test]
fn a_flood_of_strangers_reports_leaves_memory_and_disk_bounded_and_the_rollout_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), ENVS, 2, &["--allow-debug"]);
    let n = fleet.nodes.len();
    fleet.wait_for_clusters(2, TIMEOUT).unwrap();
    fleet.install_everywhere(OLD_VERSION, TIMEOUT).unwrap();

    // The victim is in a good cluster; the flood goes through its own gossip path.
    let victim = (0..n).find(|&i| !bad(i)).unwrap();
    let pid = fleet.nodes[victim].process.pid().unwrap();
    let database = fleet.nodes[victim].dir.join("data/node.redb");
    let rss_before = rss_bytes(pid);

    let staged = ["--policy", "balanced", "--stages", "3", "--stage-timeout-secs", "10"];
    let mut seed = fleet.publish(BROKEN_VERSION, &staged).unwrap();
    let manifest_id = mirage_tests::wait_for("the release at the victim", TIMEOUT, Duration::from_millis(300), || {
        let status = fleet.status(victim)?;
        let release = status["releases"].as_array()?.iter().find(|r| r["version"] == BROKEN_VERSION)?.clone();
        let bytes: [u8; 32] = hex::decode(release["manifest_id"].as_str()?).ok()?.try_into().ok()?;
        Some(Digest(bytes))
    });

    let started = Instant::now();
    let inject = |bytes: Vec<u8>| {
        let reply = fleet.api(victim, &json!({"cmd": "publish-release", "app": APP, "hex": hex::encode(bytes)}));
        assert!(reply.is_some(), "the victim stopped answering");
    };
    for i in 0..REPORTS {
        let report = TestReport {
            manifest_id,
            app: APP.into(),
            version: BROKEN_VERSION.parse().unwrap(),
            cluster_key: ClusterKey(random_digest()),
            outcome: if i % 2 == 0 { Outcome::Pass } else { Outcome::Fail },
            summary: "flood".into(),
            logs_digest: Digest([0; 32]),
            tests_run: 1,
            duration_ms: 1,
        };
        let key = Keypair::generate(&mut rand::rngs::OsRng);
        inject(Envelope::sign(&key, &report, now()).unwrap().to_bytes().unwrap());
    }
    // Sealed to the vendor as real ones are: its key is public.
    let vendor = PublicKey(hex::decode(&fleet.vendor_public).unwrap().try_into().unwrap());
    for _ in 0..PROBLEMS {
        let fingerprint = Fingerprint::new(APP.into(), random_digest(), Vec::new());
        let problem = ProblemDraft {
            manifest_id,
            app: APP.into(),
            version: BROKEN_VERSION.parse().unwrap(),
            cluster_key: fingerprint.cluster_key(),
            failed_tests: vec!["flood".into()],
            logs_digest: Digest([0; 32]),
            vendor,
            details: ProblemDetails { fingerprint, output_excerpt: "x".repeat(4000) },
        }
        .seal(&mut rand::rngs::OsRng)
        .unwrap();
        let key = Keypair::generate(&mut rand::rngs::OsRng);
        inject(Envelope::sign(&key, &problem, now()).unwrap().to_bytes().unwrap());
    }
    eprintln!("injected {REPORTS} test reports and {PROBLEMS} problem reports in {:?}", started.elapsed());

    fleet
        .wait_until(
            "the broken release to settle",
            TIMEOUT,
            |_| {},
            |views| broken_release_settled(views, BROKEN_VERSION, bad),
        )
        .unwrap();
    // The vendor still sees the real failure, however many strangers filed reports.
    let reports = fleet.problem_reports().unwrap();
    let real: Vec<_> = reports
        .iter()
        .filter(|r| r["output_excerpt"].as_str().is_some_and(|o| o.contains("unknown variable 'query_cache_size'")))
        .collect();
    assert!(!real.is_empty(), "the real failure is lost among {} reports", reports.len());
    seed.terminate(Duration::from_secs(10));

    let mut seed = fleet.publish(FIXED_VERSION, &staged).unwrap();
    fleet.wait_until("the fix everywhere", TIMEOUT, |_| {}, |v| all_installed(v, FIXED_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));

    let status = fleet.status(victim).unwrap();
    let staging = status["staging"].as_array().unwrap().iter().find(|a| a["app"] == APP).unwrap().clone();
    let rss_after = rss_bytes(pid);
    let db = std::fs::metadata(&database).unwrap().len();
    eprintln!(
        "victim: memory {} -> {} MiB; database {:.1} MiB; ignored {}; problem reports {}",
        rss_before >> 20,
        rss_after >> 20,
        db as f64 / (1 << 20) as f64,
        staging["ignored"],
        staging["problem_reports"]
    );
    assert!(rss_after < rss_before + MAX_GROWTH_BYTES, "memory grew from {rss_before} to {rss_after} bytes");
    assert!(db < MAX_DATABASE_BYTES, "the database holds {db} bytes");
    assert!(staging["problem_reports"]["kept"].as_u64().unwrap() <= 160, "{staging}");
}
