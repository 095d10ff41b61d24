//! Commands run as a user would: keys, fingerprints, the simulator's JSON, closed pipes.

use mirage_protocol::{Envelope, Fingerprint};
use mirage_testnet::sample_root::{write_mysql_machine, SampleMachine};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIRAGE: &str = env!("CARGO_BIN_EXE_mirage");

fn profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles").join(name)
}

fn mirage(args: &[&str]) -> Output {
    Command::new(MIRAGE).args(args).output().expect("run mirage")
}

fn fingerprint_json(root: &Path, extra: &[&str]) -> Value {
    let mysql = profile("mysql.toml");
    let mut args = vec![
        "fingerprint",
        "--profile",
        mysql.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--json",
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    let out = mirage(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

#[test]
fn json_fingerprints_group_by_environment() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    write_mysql_machine(dirs[0].path(), &SampleMachine { environment: 1, host: 1 }).unwrap();
    write_mysql_machine(dirs[1].path(), &SampleMachine { environment: 1, host: 2 }).unwrap();
    write_mysql_machine(dirs[2].path(), &SampleMachine { environment: 2, host: 3 }).unwrap();
    let j: Vec<Value> = dirs.iter().map(|d| fingerprint_json(d.path(), &[])).collect();
    let key = |v: &Value| v["cluster_key"].as_str().unwrap().to_string();
    assert_eq!(key(&j[0]).len(), 64);
    assert!(key(&j[0]).bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(key(&j[0]), key(&j[1]));
    assert_ne!(key(&j[0]), key(&j[2]));
    assert_eq!(j[0]["app"], "mysql");
    let items = j[0]["items"].as_array().unwrap();
    let find = |k: &str| items.iter().find(|i| i["key"] == k).cloned();
    assert_eq!(find("mysqld.port").unwrap()["value"], "3306");
    assert_eq!(find("mysqld.bind-address").unwrap()["value"], "<ip>");
    assert!(items.iter().any(|i| i["class"] == "library" && i["digest"].as_str().is_some_and(|d| d.len() == 64)));
}

#[test]
fn keygen_then_signed_fingerprint_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let out = mirage(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("peer id:    12D3KooW"), "{printed}");
    let again = mirage(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let root = tempfile::tempdir().unwrap();
    write_mysql_machine(root.path(), &SampleMachine { environment: 0, host: 0 }).unwrap();
    let j = fingerprint_json(root.path(), &["--sign", key.to_str().unwrap()]);
    let bytes = hex::decode(j["signed"]["envelope"].as_str().unwrap()).unwrap();
    let verified = Envelope::from_bytes(&bytes).unwrap().verify::<Fingerprint>().unwrap();
    assert_eq!(verified.payload().cluster_key().to_hex(), j["cluster_key"].as_str().unwrap());
    assert_eq!(verified.signer().peer_id(), j["signed"]["peer_id"].as_str().unwrap());
}

#[test]
fn bad_inputs_give_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "app = [").unwrap();
    let out = mirage(&[
        "fingerprint",
        "--profile",
        bad.to_str().unwrap(),
        "--root",
        dir.path().to_str().unwrap(),
        "--no-cache",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");

    let mysql = profile("mysql.toml");
    let out = mirage(&["fingerprint", "--profile", mysql.to_str().unwrap(), "--root", "/no/such/root", "--no-cache"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/root"));

    let out = mirage(&["fingerprint", "--profile", "/no/such/profile.toml", "--no-cache"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/profile.toml"));

    let key = dir.path().join("k");
    std::fs::write(&key, "not a key").unwrap();
    let root = tempfile::tempdir().unwrap();
    write_mysql_machine(root.path(), &SampleMachine { environment: 0, host: 0 }).unwrap();
    let out = mirage(&[
        "fingerprint",
        "--profile",
        mysql.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
        "--sign",
        key.to_str().unwrap(),
        "--no-cache",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(key.to_str().unwrap()));
}

#[test]
fn cache_makes_the_second_run_read_nothing() {
    let root = tempfile::tempdir().unwrap();
    write_mysql_machine(root.path(), &SampleMachine { environment: 0, host: 0 }).unwrap();
    let cache = root.path().join("cache.redb");
    let mysql = profile("mysql.toml");
    let run = || {
        let out = mirage(&[
            "fingerprint",
            "--profile",
            mysql.to_str().unwrap(),
            "--root",
            root.path().to_str().unwrap(),
            "--json",
            "--cache",
            cache.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let cold = run();
    let warm = run();
    assert!(cold["stats"]["files_hashed"].as_u64().unwrap() >= 3);
    assert_eq!(warm["stats"]["files_hashed"], 0);
    assert_eq!(warm["stats"]["cache_hits"], cold["stats"]["files_hashed"]);
    assert_eq!(warm["cluster_key"], cold["cluster_key"]);
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let root = tempfile::tempdir().unwrap();
    write_mysql_machine(root.path(), &SampleMachine { environment: 0, host: 0 }).unwrap();
    let mysql = profile("mysql.toml");
    // The reader exits before the command prints a line (`mirage status | head -3`
    // where the status is longer than what head reads).
    let script = format!(
        "'{MIRAGE}' fingerprint --profile '{}' --root '{}' --no-cache | true",
        mysql.display(),
        root.path().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "nothing to say about a closed pipe: {stderr}");
}

#[test]
fn key_show_prints_the_public_half_of_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let made = mirage(&["keygen", "--out", key.to_str().unwrap(), "--json"]);
    assert!(made.status.success());
    let made: Value = serde_json::from_slice(&made.stdout).unwrap();
    let shown = mirage(&["key", "show", key.to_str().unwrap(), "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(made, shown);
    assert_eq!(shown["public_key"].as_str().unwrap().len(), 64);
    let out = mirage(&["key", "show", "/no/such.key"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such.key"));
}

#[test]
fn sim_prints_one_json_object_with_every_policy() {
    let out = mirage(&["sim", "--machines", "500", "--clusters", "20", "--seeds", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object and nothing else");
    assert_eq!(v["machines"], 500);
    let policies: Vec<&str> = v["policies"].as_array().unwrap().iter().map(|p| p["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["no-staging", "front-loading", "balanced"]);
    for p in v["policies"].as_array().unwrap() {
        assert!(p["latency_max_ratio"].as_f64().is_some_and(|r| r > 0.0), "{p}");
        if p["policy"] != "no-staging" {
            assert_eq!(p["installed_faulty"], 0, "staging keeps faulty releases off clustered machines: {p}");
        }
    }
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
}
