//! A download interrupted by a kill -9 resumes after the restart: the chunks already on
//! disk are re-verified and kept, only the rest is fetched, and the copy is whole.

use mirage_tests::{api_call, artifact_state, pseudo_random_bytes, wait_for, Bootstrap, Node, SampleMachine, Vendor};
use serde_json::json;
use std::time::Duration;

const APP: &str = "mysql";

#[test]
fn a_killed_download_resumes_from_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&dir.path().join("bootstrap"), &[]);
    let vendor = Vendor::new(&dir.path().join("vendor"));
    let trust = format!("{APP}={}", vendor.public);
    let machine = |i: u32| SampleMachine { environment: 0, host: i };
    // 2 MiB in 16 KiB chunks: 128 chunks.
    let content = pseudo_random_bytes(2 * 1024 * 1024, 3);
    let artifact = dir.path().join("release.tar");
    std::fs::write(&artifact, &content).unwrap();

    // A seed peer gets the release, the vendor leaves, and the seed turns slow.
    let seed =
        Node::start(&dir.path().join("seed"), 0, machine(0), &bootstrap.addr, &["--trust", &trust, "--allow-debug"]);
    seed.wait_status(Duration::from_secs(60));
    let mut publish = vendor.publish(
        &dir.path().join("publish"),
        APP,
        "8.0.36",
        &artifact,
        &bootstrap.addr,
        &["--replicas", "1", "--chunk-kib", "16", "--no-verify-artifact"],
    );
    wait_for("the vendor to leave", Duration::from_secs(60), Duration::from_millis(200), || publish.try_wait());
    assert!(api_call(&seed.api().unwrap(), &json!({"cmd": "misbehave", "mode": "slow"})).is_some());

    let mut receiver = Node::start(&dir.path().join("receiver"), 1, machine(1), &bootstrap.addr, &["--trust", &trust]);
    let progress = |n: &Node| -> Option<(u64, u64)> {
        let status = n.status()?;
        let release = status["releases"].as_array()?.iter().find(|r| r["app"] == APP)?.clone();
        let artifact = release["content"].as_array()?.iter().find(|c| c["what"] == "artifact")?.clone();
        Some((artifact["have_chunks"].as_u64()?, artifact["chunks"].as_u64()?))
    };
    let (had, total) = wait_for("a partial download", Duration::from_secs(60), Duration::from_millis(50), || {
        progress(&receiver).filter(|(have, _)| *have >= 16)
    });
    assert!(had < total, "the download finished before it could be interrupted ({had}/{total})");
    receiver.restart(); // SIGKILL, then the same command again

    let path =
        wait_for(
            "the resumed download",
            Duration::from_secs(120),
            Duration::from_millis(300),
            || match artifact_state(&receiver.status()?, APP)? {
                (_, state, Some(path)) if state == "complete" => Some(path),
                _ => None,
            },
        );
    assert_eq!(std::fs::read(path).unwrap(), content, "the resumed copy differs");
    let log = std::fs::read_to_string(receiver.dir.join("node.restart1.log")).unwrap();
    let resumed: u64 = log
        .lines()
        .find(|l| l.contains("download started"))
        .and_then(|l| l.split("resumed=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the restarted node logs its resumed download");
    assert!(resumed >= had, "only {resumed} chunks kept after the restart, {had} were verified before");
}
