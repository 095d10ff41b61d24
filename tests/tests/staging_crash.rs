//! A node killed (abort, as kill -9 would) in the middle of applying an upgrade comes
//! back to a consistent version: the `current` link names the old or the new version,
//! never a missing one, and after the restart the node finishes the upgrade.

use mirage_testnet::sample_app::{APP, BROKEN_VERSION, FIXED_VERSION, OLD_VERSION};
use mirage_testnet::staged::{all_installed, StagedFleet};
use mirage_tests::wait_for;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_node_killed_during_apply_recovers_to_a_consistent_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), 1, 2, &[]);
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

/// Unmounts a test's tmpfs when dropped (after the fleet that used it: declare first).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The install prefix of node `i`, moved onto a tmpfs of `size` with what it held.
fn prefix_on_tmpfs(fleet: &mut StagedFleet, i: usize, size: &str) -> Mounted {
    let prefix = fleet.nodes[i].dir.join("root/opt/mirage");
    let aside = prefix.with_file_name("mirage.before-tmpfs");
    fleet.nodes[i].process.kill();
    std::fs::rename(&prefix, &aside).unwrap();
    std::fs::create_dir(&prefix).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "mirage-test", prefix.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs (this test runs as root)");
    let guard = Mounted(prefix.clone());
    let copied =
        std::process::Command::new("cp").arg("-a").arg(format!("{}/.", aside.display())).arg(&prefix).status().unwrap();
    assert!(copied.success());
    guard
}

/// Writes a release of the sample app as `version` into `dir`: `base`'s files plus
/// `extra` bytes of incompressible data, with tests whose health check says `health`.
fn custom_release(
    dir: &std::path::Path,
    base: &str,
    extra: usize,
    health: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::io::{Read, Write};
    std::fs::create_dir_all(dir).unwrap();
    let tar = dir.join("mysql.tar");
    mirage_testnet::sample_app::write_release(base, &tar).unwrap();
    if extra > 0 {
        // The base release's entries again, and one more file of noise the disk must
        // hold (noise, so no compression a future artifact format adds shrinks it).
        let mut entries = Vec::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            entries.push((entry.header().clone(), entry.path().unwrap().into_owned(), body));
        }
        let mut noise = vec![0u8; extra];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(noise.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        entries.push((header, "share/noise".into(), noise));
        let mut builder = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        for (mut header, path, body) in entries {
            builder.append_data(&mut header, path, &body[..]).unwrap();
        }
        builder.into_inner().unwrap().flush().unwrap();
    }
    let tests = dir.join("tests");
    mirage_testnet::sample_app::write_tests_dir(&tests).unwrap();
    let toml = format!(
        "[[test]]\nname = \"starts\"\nrun = [\"true\"]\n\n[health_check]\nrun = [\"sh\", \"-c\", {health:?}]\n"
    );
    std::fs::write(tests.join("tests.toml"), toml).unwrap();
    (tar, tests)
}

/// Every point of an apply whose health check fails, and of the switch back, in the
/// order one apply reaches them (`:2` is the switch back).
const UNHEALTHY_APPLY_STEPS: [&str; 13] = [
    "unpacked",
    "prepared",
    "apply-intent",
    "switch-intent",
    "tmp-link",
    "renamed",
    "switch-done",
    "health-checked",
    "switch-intent:2",
    "tmp-link:2",
    "renamed:2",
    "switch-done:2",
    "apply-done",
];

#[test]
fn a_node_killed_at_every_step_of_a_failing_apply_and_its_rollback_or_out_of_disk_ends_on_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = mirage_tests::staged_fleet(dir.path(), 1, 1, &[]);
    // "1.0.0" and "2.0.0" of the must-hold: the sample's old and fixed versions.
    fleet.install_everywhere(OLD_VERSION, TIMEOUT).unwrap();
    fleet.install_everywhere(FIXED_VERSION, TIMEOUT).unwrap();
    let mirage = fleet.mirage.clone();
    let on_last_good = |status: &serde_json::Value| {
        let s = &status["staging"][0];
        s["installed"] == FIXED_VERSION && s["running"] == FIXED_VERSION
    };

    // A release too big for the install prefix's disk: the node's own fault, nothing
    // signed against the release, 8.4.1 runs on.
    let _tmpfs = prefix_on_tmpfs(&mut fleet, 0, "1m");
    fleet.nodes[0].restart(&mirage, &[]).unwrap();
    let (tar, tests) = custom_release(&dir.path().join("release-8.5.0"), FIXED_VERSION, 2 << 20, "true");
    let mut seed = fleet.publish_files("8.5.0", &tar, &tests, &["--policy", "no-staging"]).unwrap();
    let status = wait_for("8.5.0 to meet the full disk", TIMEOUT, Duration::from_millis(200), || {
        let status = fleet.status(0)?;
        (status["staging"][0]["target"] == "8.5.0" && status["staging"][0]["phase"] == "local fault").then_some(status)
    });
    assert!(on_last_good(&status), "{status}");
    let logs = fleet.nodes[0].logs();
    let fault = logs.lines().find(|l| l.contains("a local fault")).unwrap_or_default();
    assert!(fault.contains("No space left on device"), "the log names the full disk: {fault}");
    seed.terminate(Duration::from_secs(10));

    // Releases that fit but fail their health check. The node dies at each step of the
    // apply and of the switch back in turn; each restart picks the apply up again.
    // Three deaths per release: after three in a row, the core waits before applying
    // again (staging::rollout::MAX_INTERRUPTED_APPLIES), which is not what this tests.
    let mut last = String::new();
    for (n, steps) in UNHEALTHY_APPLY_STEPS.chunks(3).enumerate() {
        let version = format!("8.6.{n}");
        let (tar, tests) = custom_release(
            &dir.path().join(format!("release-{version}")),
            FIXED_VERSION,
            0,
            "echo the server does not answer; exit 3",
        );
        let mut seed = None;
        for step in steps {
            let point = step.split(':').next().unwrap();
            let crash = format!("injected crash at {point}");
            let before = fleet.nodes[0].logs().matches(&crash).count();
            fleet.nodes[0].restart(&mirage, &[("MIRAGE_TEST_CRASH_AT", step)]).unwrap();
            if seed.is_none() {
                wait_for("node0 back", TIMEOUT, Duration::from_millis(200), || fleet.nodes[0].status());
                seed = Some(fleet.publish_files(&version, &tar, &tests, &["--policy", "no-staging"]).unwrap());
            }
            wait_for(&format!("node0 to die at {step}"), TIMEOUT, Duration::from_millis(50), || {
                fleet.nodes[0].process.try_wait()
            });
            assert!(fleet.nodes[0].logs().matches(&crash).count() > before, "node0 did not die at {step}");
            let current = fleet.nodes[0].dir.join(format!("root/opt/mirage/{APP}/current"));
            let named = std::fs::read_link(&current).expect("current is a symlink after the crash");
            let named = named.file_name().unwrap().to_str().unwrap().to_string();
            assert!(named == FIXED_VERSION || named == version, "current names {named} after a crash at {step}");
            assert!(current.join("bin/mysqld").is_file(), "current ({named}) is not a whole version after {step}");
        }
        fleet.nodes[0].restart(&mirage, &[]).unwrap();
        let status = wait_for(&format!("{version} rolled back"), TIMEOUT, Duration::from_millis(200), || {
            let status = fleet.status(0)?;
            (status["staging"][0]["target"] == version.as_str() && status["staging"][0]["phase"] == "rolled back")
                .then_some(status)
        });
        assert!(on_last_good(&status), "{status}");
        if let Some(mut seed) = seed {
            seed.terminate(Duration::from_secs(10));
        }
        last = version;
    }
    let current = std::fs::read_link(fleet.nodes[0].dir.join(format!("root/opt/mirage/{APP}/current"))).unwrap();
    assert!(current.ends_with(FIXED_VERSION), "{current:?}");
    // And it stays there after one more restart: journal, link and core agree.
    fleet.nodes[0].restart(&mirage, &[]).unwrap();
    let status = wait_for("node0 back", TIMEOUT, Duration::from_millis(200), || fleet.status(0));
    assert!(on_last_good(&status), "{status}");
    assert_eq!(status["staging"][0]["phase"], "rolled back", "{status}");
    assert_eq!(status["staging"][0]["target"], last.as_str(), "{status}");
}
