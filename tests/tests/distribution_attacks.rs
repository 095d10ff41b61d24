//! Attacks from The Update Framework's threat list, each through real processes: a
//! manifest signed by an untrusted key, a rollback to an older version, a replayed
//! expired manifest, a manifest for another app, and peers serving endless data,
//! corrupted chunks, or chunks of another version (mix-and-match). Each is refused and
//! counted, nothing wrong is written, and the honest nodes still finish.

use mirage_protocol::manifest::{ArtifactInfo, StagingPolicy, UpgradeManifest};
use mirage_protocol::{Envelope, Keypair, UnixMillis};
use mirage_tests::{api_call, artifact_state, pseudo_random_bytes, wait_for, Bootstrap, Node, SampleMachine, Vendor};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const APP: &str = "mysql";
const CHUNK_KIB: u32 = 64;

fn now() -> UnixMillis {
    UnixMillis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64)
}

/// A manifest for `content`, signed by `key`, hex-encoded for the publish-release call.
fn signed_manifest(key: &Keypair, app: &str, version: &str, expires_at: UnixMillis, content: &[u8]) -> String {
    let manifest = UpgradeManifest {
        app: app.into(),
        version: version.parse().unwrap(),
        artifact: ArtifactInfo::describe(content, CHUNK_KIB * 1024),
        test_bundle: None,
        tests: vec![],
        health_check: None,
        policy: StagingPolicy::default(),
        expires_at,
        notes: "made by a test".into(),
    };
    hex::encode(Envelope::sign(key, &manifest, now()).unwrap().to_bytes().unwrap())
}

fn release_of(node: &Node) -> Option<(String, String, Option<std::path::PathBuf>)> {
    artifact_state(&node.status()?, APP)
}

fn wait_complete(node: &Node, version: &str, content: &[u8]) {
    let path = wait_for(
        &format!("node{} to complete {version}", node.index),
        Duration::from_secs(120),
        Duration::from_millis(300),
        || match release_of(node)? {
            (v, state, Some(path)) if v == version && state == "complete" => Some(path),
            _ => None,
        },
    );
    assert_eq!(std::fs::read(path).unwrap(), content, "node{} holds a wrong copy of {version}", node.index);
}

fn counter(status: &Value, table: &str, reason: &str) -> u64 {
    status[table][reason].as_u64().unwrap_or(0)
}

fn total(nodes: &[Node], table: &str, reason: &str) -> u64 {
    nodes.iter().filter_map(Node::status).map(|s| counter(&s, table, reason)).sum()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn update_framework_attacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::start(&dir.path().join("bootstrap"), &[]);
    let vendor = Vendor::new(&dir.path().join("vendor"));
    let trust = format!("{APP}={}", vendor.public);
    let start = |i: usize, extra: &[&str]| {
        let mut args = vec!["--trust", &trust];
        args.extend_from_slice(extra);
        Node::start(
            &dir.path().join(format!("n{i}")),
            i,
            SampleMachine { environment: 0, host: i as u32 },
            &bootstrap.addr,
            &args,
        )
    };
    // Nodes 0-2 will attack; 3-6 are honest.
    let attackers: Vec<Node> = (0..3).map(|i| start(i, &["--allow-debug"])).collect();
    let honest: Vec<Node> = (3..7).map(|i| start(i, &[])).collect();
    for n in attackers.iter().chain(&honest) {
        n.wait_status(Duration::from_secs(60));
    }

    // Version 1 reaches everyone, attackers included.
    let v1 = pseudo_random_bytes(2 * 1024 * 1024 + 333, 1);
    write(&dir.path().join("v1.tar"), &v1);
    let chunk = CHUNK_KIB.to_string();
    let mut seed1 = vendor.publish(
        &dir.path().join("publish-v1"),
        APP,
        "1.0.0",
        &dir.path().join("v1.tar"),
        &bootstrap.addr,
        &["--replicas", "0", "--chunk-kib", &chunk, "--no-verify-artifact"],
    );
    for n in attackers.iter().chain(&honest) {
        wait_complete(n, "1.0.0", &v1);
    }
    seed1.terminate(Duration::from_secs(10));

    // The attackers turn: each claims every chunk of version 2 and serves it wrongly.
    for (node, mode) in attackers.iter().zip(["corrupt", "endless", "mix"]) {
        let reply = api_call(&node.api().unwrap(), &json!({"cmd": "misbehave", "mode": mode}));
        assert!(reply.is_some(), "node{} refused to misbehave", node.index);
    }
    // Version 2's manifest goes out before any honest peer holds its content, so the
    // attackers are the only sources the honest nodes can find: every honest node meets
    // every attacker, whatever the timing (with an honest seed from the start, a fast
    // download could finish before the DHT named some attacker).
    let v2 = pseudo_random_bytes(2 * 1024 * 1024 + 333, 2);
    write(&dir.path().join("v2.tar"), &v2);
    let vendor_key = mirage_node::keyfile::load(&vendor.key).unwrap();
    let v2_hex = signed_manifest(&vendor_key, APP, "1.1.0", UnixMillis(now().0 + 3_600_000), &v2);
    let reply = api_call(&attackers[0].api().unwrap(), &json!({"cmd": "publish-release", "app": APP, "hex": v2_hex}));
    assert!(reply.is_some(), "the vendor's 1.1.0 manifest could not be announced");
    for n in &honest {
        wait_for(
            &format!("node{} to refuse chunks from all three attackers", n.index),
            Duration::from_secs(90),
            Duration::from_millis(300),
            || {
                let s = n.status()?;
                let wrong_hash = counter(&s, "rejected_chunks", "wrong_hash");
                let wrong_length = counter(&s, "rejected_chunks", "wrong_length");
                // Corrupt and mixed chunks both fail the hash; endless ones the length.
                (wrong_hash >= 2 && wrong_length >= 1).then_some(())
            },
        );
        let (version, state, _) = release_of(n).unwrap();
        assert_eq!((version.as_str(), state.as_str()), ("1.1.0", "downloading"), "node{}", n.index);
    }
    // Now the vendor seeds the same content; the honest nodes finish from it and from
    // each other, and what they hold is exactly version 2.
    let mut seed2 = vendor.publish(
        &dir.path().join("publish-v2"),
        APP,
        "1.1.0",
        &dir.path().join("v2.tar"),
        &bootstrap.addr,
        &["--replicas", "0", "--chunk-kib", &chunk, "--no-verify-artifact"],
    );
    for n in &honest {
        wait_complete(n, "1.1.0", &v2);
    }
    seed2.terminate(Duration::from_secs(10));

    // Manifest attacks, sent on the release topic by an attacker peer.
    let rogue = Keypair::generate(&mut rand::rngs::OsRng);
    let later = UnixMillis(now().0 + 3_600_000);
    let attacks = [
        ("untrusted_signer", signed_manifest(&rogue, APP, "9.0.0", later, &pseudo_random_bytes(200_000, 10))),
        ("not_newer", signed_manifest(&vendor_key, APP, "1.0.5", later, &pseudo_random_bytes(200_000, 11))),
        (
            "expired",
            signed_manifest(&vendor_key, APP, "2.0.0", UnixMillis(now().0 - 60_000), &pseudo_random_bytes(200_000, 12)),
        ),
        ("wrong_app", signed_manifest(&vendor_key, "apache2", "3.0.0", later, &pseudo_random_bytes(200_000, 13))),
    ];
    let publisher = attackers[0].api().unwrap();
    for (reason, hex) in &attacks {
        let before = total(&honest, "rejected_manifests", reason);
        let reply = api_call(&publisher, &json!({"cmd": "publish-release", "app": APP, "hex": hex}));
        assert!(reply.is_some(), "the attacker could not publish the {reason} manifest");
        wait_for(
            &format!("honest nodes to refuse the {reason} manifest"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || (total(&honest, "rejected_manifests", reason) > before).then_some(()),
        );
    }
    for n in &honest {
        let (version, state, _) = release_of(n).unwrap();
        assert_eq!(
            (version.as_str(), state.as_str()),
            ("1.1.0", "complete"),
            "node{} moved off the real release",
            n.index
        );
    }
}
