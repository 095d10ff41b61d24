//! A new operator's first hour, across real processes: a failed apply never moves a
//! node backwards, a node's own fault is never signed as a verdict on a release, and
//! every command tells the truth about its outcome.

use mirage_testnet::fleet::Process;
use mirage_testnet::sample_app::{self, APP, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::staged::{all_installed, NodeView, StagedFleet};
use mirage_tests::{mirage, mirage_bin, wait_for, Bootstrap, Node, Proc, SampleMachine, Vendor};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

fn fleet(dir: &Path, nodes: u32) -> StagedFleet {
    mirage_tests::staged_fleet(dir, 1, nodes, &[])
}

/// A fleet of `nodes` in one environment, all running the sample app's old version.
fn fleet_running_old_version(dir: &Path, nodes: u32) -> StagedFleet {
    let mut fleet = fleet(dir, nodes);
    let mut seed = fleet.publish(OLD_VERSION, &["--policy", "no-staging"]).unwrap();
    fleet.wait_until(OLD_VERSION, TIMEOUT, |_| {}, |v| all_installed(v, OLD_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));
    fleet
}

/// Publishes `artifact` (in `dir`) as `version` with the sample tests, `tests_toml`
/// replacing their `tests.toml` if given.
fn publish_custom(
    fleet: &mut StagedFleet,
    dir: &Path,
    version: &str,
    artifact: &Path,
    tests_toml: Option<&str>,
    flags: &[&str],
) -> Process {
    let tests = dir.join("tests");
    sample_app::write_tests_dir(&tests).unwrap();
    if let Some(toml) = tests_toml {
        std::fs::write(tests.join("tests.toml"), toml).unwrap();
    }
    fleet.publish_files(version, artifact, &tests, flags).unwrap()
}

#[test]
fn a_failed_apply_leaves_every_node_on_the_version_it_ran_and_rollback_walks_back_through_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path(), 2);
    for version in [OLD_VERSION, FIXED_VERSION] {
        let mut seed = fleet.publish(version, &["--policy", "no-staging"]).unwrap();
        fleet.wait_until(version, TIMEOUT, |_| {}, |v| all_installed(v, version)).unwrap();
        seed.terminate(Duration::from_secs(10));
    }

    // 8.5.0 installs but fails its health check: both nodes stay on 8.4.1.
    let unhealthy = dir.path().join("release-8.5.0");
    std::fs::create_dir_all(&unhealthy).unwrap();
    let tar = unhealthy.join("mysql.tar");
    sample_app::write_release(FIXED_VERSION, &tar).unwrap();
    let tests_toml = "[[test]]\nname = \"starts\"\nrun = [\"true\"]\n\n[health_check]\nrun = [\"sh\", \"-c\", \"echo the server does not answer; exit 3\"]\n";
    let mut seed = publish_custom(&mut fleet, &unhealthy, "8.5.0", &tar, Some(tests_toml), &["--policy", "no-staging"]);
    let settled = |v: &[Option<NodeView>]| {
        v.iter().all(|v| {
            v.as_ref().is_some_and(|v| {
                v.phase.as_deref() == Some("rolled back") && v.installed.as_deref() == Some(FIXED_VERSION)
            })
        })
    };
    fleet.wait_until("8.5.0 undone", TIMEOUT, |_| {}, settled).unwrap();
    seed.terminate(Duration::from_secs(10));

    // 8.6.0 is a gzip stream of text, no tar: it does not unpack, and nobody moves.
    let junk = dir.path().join("release-8.6.0");
    std::fs::create_dir_all(&junk).unwrap();
    let gz = junk.join("mysql-8.6.0.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, "these are release notes, not an archive\n".repeat(200).as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    // The vendor's own check would refuse it (below); a vendor that skips it reaches nodes
    // that must hold their ground.
    let mut seed =
        publish_custom(&mut fleet, &junk, "8.6.0", &gz, None, &["--policy", "no-staging", "--no-verify-artifact"]);
    let refused = |v: &[Option<NodeView>]| {
        v.iter().all(|v| {
            v.as_ref().is_some_and(|v| {
                v.target.as_deref() == Some("8.6.0")
                    && v.phase.as_deref() == Some("rolled back")
                    && v.installed.as_deref() == Some(FIXED_VERSION)
            })
        })
    };
    let views = fleet.wait_until("8.6.0 refused", TIMEOUT, |_| {}, refused).unwrap();
    assert!(all_installed(&views, FIXED_VERSION), "{views:?}");
    seed.terminate(Duration::from_secs(10));

    // The vendor hears of both, by the step that failed.
    let reports = wait_for("problem reports for 8.5.0 and 8.6.0", TIMEOUT, Duration::from_secs(1), || {
        let reports = fleet.problem_reports().ok()?;
        let failed = |v: &str| {
            reports
                .iter()
                .filter(|r| r["version"] == v)
                .flat_map(|r| r["failed_tests"].as_array().cloned())
                .flatten()
                .any(|t| t == if v == "8.5.0" { "health-check" } else { "unpack" })
        };
        (failed("8.5.0") && failed("8.6.0")).then_some(reports)
    });
    assert!(reports.iter().all(|r| r["version"] != FIXED_VERSION), "{reports:?}");

    // One rollback goes back to what ran before 8.4.1; a second has nowhere to go and
    // certainly does not go forward again.
    let api = fleet.nodes[0].api().unwrap();
    let out = mirage(&["rollback", "--api", &api, "--app", APP]).unwrap();
    assert!(out.contains(&format!("from {FIXED_VERSION} to {OLD_VERSION}, pinned to {OLD_VERSION}")), "{out}");
    let err = mirage(&["rollback", "--api", &api, "--app", APP]).unwrap_err();
    assert!(err.contains("no earlier version"), "{err}");
    let status = fleet.status(0).unwrap();
    let staging = &status["staging"][0];
    assert_eq!(staging["installed"], OLD_VERSION, "{status}");
    assert_eq!(staging["running"], OLD_VERSION, "{status}");
    assert_eq!(staging["pinned"], OLD_VERSION, "{status}");
    // The other node was not touched.
    assert_eq!(fleet.status(1).unwrap()["staging"][0]["installed"], FIXED_VERSION);

    // Unpinned, the node does not re-apply the releases that failed here.
    let out = mirage(&["unpin", "--api", &api, "--app", APP]).unwrap();
    assert!(out.contains(&format!("was pinned to {OLD_VERSION}")), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fleet.status(0).unwrap()["staging"][0]["installed"], OLD_VERSION);
}

/// A `bwrap` in front of the real one that fails, as a broken sandbox does, while
/// `flag` exists. (The node checks its sandbox at start, before the flag is made.)
fn breakable_bwrap(dir: &Path, flag: &Path) -> PathBuf {
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
        .expect("bubblewrap is installed (./dev deps)");
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("bwrap");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'bwrap: Creating new namespace failed: Operation not permitted' >&2; exit 1; fi\nexec '{}' \"$@\"\n",
            flag.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn representatives_whose_sandbox_cannot_start_sign_no_verdict_and_their_cluster_is_not_halted() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet_running_old_version(dir.path(), 3);

    let flag = dir.path().join("sandbox-broken");
    let bin = breakable_bwrap(dir.path(), &flag);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mirage = fleet.mirage.clone();
    for node in &mut fleet.nodes {
        node.restart(&mirage, &[("PATH", &path)]).unwrap();
    }
    fleet
        .wait_until("nodes back", TIMEOUT, |_| {}, |v| v.iter().all(|v| v.as_ref().is_some_and(|v| v.members == 3)))
        .unwrap();
    std::fs::write(&flag, "").unwrap();

    // Every member's sandbox is broken: each seated one retries, then hands its seat on
    // with an abstention, until nobody is left. Nothing is signed as a verdict.
    let mut seed = fleet.publish(FIXED_VERSION, &["--policy", "front-loading"]).unwrap();
    let views = fleet
        .wait_until(
            "every member to abstain",
            Duration::from_secs(180),
            |_| {},
            |v| v.iter().all(|v| v.as_ref().is_some_and(|v| v.phase.as_deref() == Some("abstained"))),
        )
        .unwrap();
    for i in 0..3 {
        let status = fleet.status(i).unwrap();
        let staging = &status["staging"][0];
        assert_ne!(staging["verdict"], "halted", "{status}");
        assert_eq!(staging["installed"], OLD_VERSION, "{status}");
        for r in staging["reports"].as_array().unwrap() {
            assert_eq!(r["outcome"], "abstain", "{status}");
        }
    }
    assert!(views.iter().flatten().all(|v| v.reports == 3), "{views:?}");
    assert!(fleet.problem_reports().unwrap().is_empty(), "a local fault reached the vendor");
    assert!(fleet.nodes[0].logs().contains("could not test here"));
    seed.terminate(Duration::from_secs(10));

    // Fixed sandboxes, a new release: tested, passed, applied by all.
    std::fs::remove_file(&flag).unwrap();
    let tar = dir.path().join("mysql-8.4.2.tar");
    sample_app::write_release(FIXED_VERSION, &tar).unwrap();
    let next = dir.path().join("release-8.4.2");
    let mut seed = publish_custom(&mut fleet, &next, "8.4.2", &tar, None, &["--policy", "front-loading"]);
    fleet.wait_until("8.4.2 everywhere", TIMEOUT, |_| {}, |v| all_installed(v, "8.4.2")).unwrap();
    seed.terminate(Duration::from_secs(10));
}

/// Waits for `proc` to exit; its status and what it printed to standard error.
fn exit_of(proc: &mut Proc, log: &Path, within: Duration) -> (std::process::ExitStatus, String) {
    let status = wait_for("the command to exit", within, Duration::from_millis(100), || proc.try_wait());
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn commands_tell_the_truth_about_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let boot = Bootstrap::start(&d.join("boot"), &[]);
    let vendor = Vendor::new(&d.join("vendor"));
    let stranger = Vendor::new(&d.join("stranger"));
    let trust = format!("{APP}={}", vendor.public);
    let node =
        Node::start(&d.join("node"), 0, SampleMachine { environment: 0, host: 0 }, &boot.addr, &["--trust", &trust]);
    let api = wait_for("node api", TIMEOUT, Duration::from_millis(100), || node.api());
    node.wait_status(TIMEOUT);

    // A fetch that can never work fails at once.
    let started = Instant::now();
    let err = mirage(&["fetch", "--api", &api, "--app", "nosuch"]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(err.contains("neither runs `nosuch` nor trusts a vendor for it"), "{err}");

    // A second process on a port in use refuses to start.
    let port = boot.addr.split("/tcp/").nth(1).unwrap().split('/').next().unwrap();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let key = d.join("boot2.key").display().to_string();
    let out = std::process::Command::new(mirage_bin())
        .args(["bootstrap", "--listen", &listen, "--key", &key])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("address in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A node started with a relative root refuses to start.
    let out = std::process::Command::new(mirage_bin())
        .current_dir(d)
        .args(["node", "run", "--data-dir", "n2", "--profile"])
        .arg(mirage_tests::mysql_profile())
        .args(["--root", "roots/r3", "--bootstrap", &boot.addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("relative path"));

    let tar = d.join("mysql.tar");
    sample_app::write_release(FIXED_VERSION, &tar).unwrap();
    let publish = |who: &Vendor, version: &str, name: &str, bootstrap: &str, extra: &[&str]| {
        let mut flags = vec!["--replicas", "0", "--admit-timeout-secs", "8", "--bootstrap-timeout-secs", "4"];
        flags.extend_from_slice(extra);
        let p = who.publish(&d.join(name), APP, version, &tar, bootstrap, &flags);
        let log = d.join(name).join("vendor.log");
        (p, log)
    };

    // A dry run checks and prints, and publishes nothing; an artifact no node could
    // install is refused before anything is signed.
    let tests = d.join("tests");
    sample_app::write_tests_dir(&tests).unwrap();
    let key = vendor.key.display().to_string();
    let dry = |artifact: &Path| {
        std::process::Command::new(mirage_bin())
            .args(["vendor", "publish", "--dry-run", "--json", "--key", &key, "--app", APP, "--version", "9.0.0"])
            .arg("--artifact")
            .arg(artifact)
            .arg("--tests")
            .arg(&tests)
            .output()
            .unwrap()
    };
    let out = dry(&tar);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["artifact"]["packing"], "tar");
    assert_eq!(summary["tests"].as_array().unwrap().len(), 3, "{summary}");
    let junk = d.join("notes.tar.gz");
    std::fs::write(&junk, b"\x1f\x8b not really gzip").unwrap();
    let out = dry(&junk);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("would not install on any node"));
    assert!(!vendor.key.with_file_name("vendor.key.published").exists(), "a dry run records nothing");

    // An untrusted key: nobody admits it, and the vendor is told why.
    let (mut p, log) = publish(&stranger, "8.4.1", "untrusted", &boot.addr, &[]);
    let (status, err) = exit_of(&mut p, &log, Duration::from_secs(60));
    assert!(!status.success());
    assert!(err.contains("no peer admitted mysql 8.4.1") && err.contains("trust this key"), "{err}");

    // The trusted vendor's release is admitted and said to be.
    let (mut good, _) = publish(&vendor, "8.4.1", "good", &boot.addr, &[]);
    good.read_stdout_until(TIMEOUT, |l| l.contains("admitted by 1 peer(s)"));
    good.terminate(Duration::from_secs(10));

    // An older version than the node holds: refused, and the vendor is told why.
    let (mut p, log) = publish(&vendor, "8.0.36", "older", &boot.addr, &[]);
    let (status, err) = exit_of(&mut p, &log, Duration::from_secs(60));
    assert!(!status.success());
    assert!(err.contains("1 hold mysql 8.4.1"), "{err}");

    // No bootstrap peer answers: said so, not seeded forever.
    let dead = format!("/ip4/127.0.0.1/tcp/9/p2p/{}", boot.addr.rsplit('/').next().unwrap());
    let (mut p, log) = publish(&vendor, "8.4.2", "unreachable", &dead, &[]);
    let (status, err) = exit_of(&mut p, &log, Duration::from_secs(60));
    assert!(!status.success());
    assert!(err.contains("no bootstrap peer answered"), "{err}");

    // `vendor reports` against an unreachable overlay fails.
    let out = std::process::Command::new(mirage_bin())
        .args(["vendor", "reports", "--wait-secs", "2", "--app", APP, "--bootstrap", &dead, "--key"])
        .arg(&vendor.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the overlay"));
}

#[test]
fn a_vendor_retest_sends_a_halted_cluster_back_to_testing() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet_running_old_version(dir.path(), 2);

    // A vendor test that fails for a reason outside the release (here: a marker the
    // test looks for in the machines' my.cnf, a comment, so the fingerprint stays the
    // same) halts the cluster.
    let cnfs: Vec<PathBuf> = fleet.nodes.iter().map(|n| n.dir.join("root/etc/mysql/my.cnf")).collect();
    let originals: Vec<String> = cnfs.iter().map(|c| std::fs::read_to_string(c).unwrap()).collect();
    for (c, o) in cnfs.iter().zip(&originals) {
        std::fs::write(c, format!("{o}\n# flaky-marker\n")).unwrap();
    }
    let release = dir.path().join("release-flaky");
    std::fs::create_dir_all(&release).unwrap();
    let tar = release.join("mysql.tar");
    sample_app::write_release(FIXED_VERSION, &tar).unwrap();
    let tests_toml =
        "[[test]]\nname = \"flaky\"\nrun = [\"sh\", \"-c\", '! grep -q flaky-marker \"$MIRAGE_ROOT/etc/mysql/my.cnf\"']\n";
    let mut seed =
        publish_custom(&mut fleet, &release, FIXED_VERSION, &tar, Some(tests_toml), &["--policy", "front-loading"]);
    let halted = |v: &[Option<NodeView>]| {
        v.iter().all(|v| v.as_ref().is_some_and(|v| matches!(v.phase.as_deref(), Some("failed" | "halted"))))
    };
    fleet.wait_until("the cluster to halt", TIMEOUT, |_| {}, halted).unwrap();

    // Fixed on the machines; the vendor asks for a retest, and the cluster applies.
    for (c, o) in cnfs.iter().zip(&originals) {
        std::fs::write(c, o).unwrap();
    }
    let key = fleet.vendor_key.display().to_string();
    let bootstrap = fleet.bootstrap.addr.clone();
    let retest = |version: &str| {
        mirage(&["vendor", "retest", "--key", &key, "--app", APP, "--version", version, "--bootstrap", &bootstrap])
    };
    let out = retest(FIXED_VERSION).unwrap();
    assert!(out.contains(&format!("asked 1 cluster(s) to test {APP} {FIXED_VERSION} again")), "{out}");
    fleet.wait_until("the retested release everywhere", TIMEOUT, |_| {}, |v| all_installed(v, FIXED_VERSION)).unwrap();
    seed.terminate(Duration::from_secs(10));

    // A version the vendor never published is refused with the reason.
    let err = retest("9.9.9").unwrap_err();
    assert!(err.contains("9.9.9 is not in"), "{err}");
}

#[test]
fn vendor_test_runs_a_release_against_a_machine_root_in_the_representatives_sandbox() {
    use mirage_testnet::sample_app::BROKEN_VERSION;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tests = d.join("tests");
    sample_app::write_tests_dir(&tests).unwrap();
    let tar = |v: &str| {
        let p = d.join(format!("mysql-{v}.tar"));
        sample_app::write_release(v, &p).unwrap();
        p.display().to_string()
    };
    let (old, broken, fixed) = (tar(OLD_VERSION), tar(BROKEN_VERSION), tar(FIXED_VERSION));
    // Environment 2 still sets query_cache_size, which 8.4.0 removed.
    let root = d.join("machine");
    mirage_tests::write_mysql_machine(&root, &SampleMachine { environment: 2, host: 7 }).unwrap();
    let profile = mirage_tests::mysql_profile().display().to_string();
    let run = |artifact: &str| {
        std::process::Command::new(mirage_bin())
            .args(["vendor", "test", "--json", "--profile", &profile, "--artifact", artifact, "--old-artifact", &old])
            .arg("--root")
            .arg(&root)
            .arg("--tests")
            .arg(&tests)
            .output()
            .unwrap()
    };
    let out = run(&broken);
    assert!(!out.status.success());
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["passed"] == false)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["config-validates"], "{results}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fails its tests"));

    let out = run(&fixed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results["tests"].as_array().unwrap().len(), 3, "the replay ran against the old version too");
}
