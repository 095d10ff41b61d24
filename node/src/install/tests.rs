use super::*;
use std::fs;

const APP: &str = "demo";

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// A tar holding `files` as (path, contents), written next to the test's other files.
fn make_tar(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    for (p, contents) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(contents.len() as u64);
        h.set_mode(0o755);
        b.append_data(&mut h, p, contents.as_bytes()).unwrap();
    }
    b.into_inner().unwrap();
    path
}

/// A tar whose one entry has a raw name and type, bypassing the builder's own checks.
fn raw_tar(dir: &Path, name: &str, entry: &str, kind: tar::EntryType) -> PathBuf {
    let path = dir.join(name);
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..entry.len()].copy_from_slice(entry.as_bytes());
    h.set_entry_type(kind);
    h.set_size(if kind == tar::EntryType::Regular { 4 } else { 0 });
    h.set_mode(0o644);
    h.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular { b"evil" } else { b"" };
    b.append(&h, data).unwrap();
    b.into_inner().unwrap();
    path
}

struct Env {
    tmp: tempfile::TempDir,
    db: Arc<Database>,
    inst: Installer,
    one: PathBuf,
    two: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(tmp.path().join("node.redb")).unwrap());
        let inst = Installer::open(&tmp.path().join("opt/mirage"), db.clone()).unwrap();
        let one = make_tar(tmp.path(), "one.tar", &[("bin/app", "one"), ("share/doc", "v1")]);
        let two = make_tar(tmp.path(), "two.tar", &[("bin/app", "two")]);
        Env { tmp, db, inst, one, two }
    }

    /// A new installer over the same disk and database, as after a restart.
    fn restart(&mut self) {
        self.inst = Installer::open(&self.tmp.path().join("opt/mirage"), self.db.clone()).unwrap();
    }

    /// What `current/bin/app` says, i.e. which version the app would run.
    fn running(&self) -> Option<String> {
        fs::read_to_string(self.inst.current_link(APP).join("bin/app")).ok()
    }

    fn assert_consistent(&self) -> Option<Version> {
        let link = self.inst.read_link(APP).unwrap();
        assert_eq!(self.inst.current(APP).unwrap(), link, "journal and link disagree");
        let app_dir = self.inst.prefix().join(APP);
        assert!(!app_dir.join("current.tmp").exists());
        let leftovers: Vec<_> = fs::read_dir(app_dir.join("versions"))
            .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "partial dirs left: {leftovers:?}");
        link
    }
}

fn sh(script: &str, timeout_secs: u32) -> CommandSpec {
    CommandSpec { argv: vec!["sh".into(), "-c".into(), script.into()], timeout_secs, max_output_bytes: 4096 }
}

#[test]
fn install_unpacks_switches_and_rolls_back() {
    let e = Env::new();
    assert_eq!(e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap(), ApplyOutcome::Applied { previous: None });
    assert_eq!(e.running().as_deref(), Some("one"));
    assert_eq!(fs::read_link(e.inst.current_link(APP)).unwrap(), Path::new("versions/1.0.0"));
    let out = e.inst.apply(APP, &v("2.0.0"), &e.two, None).unwrap();
    assert_eq!(out, ApplyOutcome::Applied { previous: Some(v("1.0.0")) });
    assert_eq!(e.running().as_deref(), Some("two"));
    assert_eq!(e.inst.previous(APP).unwrap(), Some(v("1.0.0")));

    let back = e.inst.rollback(APP).unwrap();
    assert_eq!(back, RolledBack { from: Some(v("2.0.0")), to: v("1.0.0"), earlier: Vec::new() });
    assert_eq!(e.running().as_deref(), Some("one"));
    assert_eq!(e.assert_consistent(), Some(v("1.0.0")));
    assert!(e.inst.version_dir(APP, &v("2.0.0")).join("bin/app").is_file(), "old versions stay on disk");
    // Applying forward again needs no unpacking.
    let out = e.inst.apply(APP, &v("2.0.0"), Path::new("/nonexistent.tar"), None).unwrap();
    assert_eq!(out, ApplyOutcome::Applied { previous: Some(v("1.0.0")) });
    assert_eq!(e.running().as_deref(), Some("two"));
    assert!(matches!(e.inst.rollback("other"), Err(InstallError::NoPrevious(_))));
    assert!(matches!(e.inst.current("../etc"), Ok(None)));
    assert!(matches!(e.inst.apply("../etc", &v("1.0.0"), &e.one, None), Err(InstallError::Invalid(_))));
}

#[test]
fn install_prepare_is_idempotent_and_clears_stale_partials() {
    let e = Env::new();
    let stale = e.inst.versions_dir(APP).join(".1.0.0.partial");
    fs::create_dir_all(stale.join("junk")).unwrap();
    let dir = e.inst.prepare(APP, &v("1.0.0"), &e.one).unwrap();
    assert!(!stale.exists());
    assert_eq!(fs::read_to_string(dir.join("share/doc")).unwrap(), "v1");
    // Already prepared: the artifact is not even read again.
    assert_eq!(e.inst.prepare(APP, &v("1.0.0"), Path::new("/nonexistent.tar")).unwrap(), dir);
    assert_eq!(e.inst.current(APP).unwrap(), None, "prepare does not switch");
}

#[test]
fn install_health_check_failure_rolls_back() {
    let e = Env::new();
    let healthy = sh("test \"$(cat $MIRAGE_APP_DIR/bin/app)\" = one", 10);
    assert!(matches!(e.inst.apply(APP, &v("1.0.0"), &e.one, Some(&healthy)).unwrap(), ApplyOutcome::Applied { .. }));

    let broken = sh("echo checking; cat $MIRAGE_APP_DIR/bin/app; exit 1", 10);
    match e.inst.apply(APP, &v("2.0.0"), &e.two, Some(&broken)).unwrap() {
        ApplyOutcome::NotApplied { fault, step, reason, output_excerpt } => {
            assert_eq!((fault, step), (Fault::Release, ApplyStep::HealthCheck));
            assert_eq!(reason, "health check: exit status 1");
            // The check ran against the new version.
            assert_eq!(output_excerpt, "checking\ntwo");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert_eq!(e.running().as_deref(), Some("one"));
    assert_eq!(e.assert_consistent(), Some(v("1.0.0")));
    assert_eq!(e.inst.previous(APP).unwrap(), None, "the version that failed is not in the history");
    assert!(e.inst.version_dir(APP, &v("2.0.0")).is_dir());

    let slow = sh("sleep 30", 1);
    let out = e.inst.apply(APP, &v("2.0.0"), &e.two, Some(&slow)).unwrap();
    assert!(matches!(out, ApplyOutcome::NotApplied { reason, .. } if reason.contains("timed out")));
    let missing = CommandSpec { argv: vec!["/nonexistent/check".into()], timeout_secs: 5, max_output_bytes: 100 };
    let out = e.inst.apply(APP, &v("2.0.0"), &e.two, Some(&missing)).unwrap();
    assert!(matches!(out, ApplyOutcome::NotApplied { reason, .. } if reason.contains("cannot run")));
    assert_eq!(e.running().as_deref(), Some("one"));

    let good = sh("test \"$(cat $MIRAGE_APP_DIR/bin/app)\" = two && test \"$(cat bin/app)\" = two", 10);
    let out = e.inst.apply(APP, &v("2.0.0"), &e.two, Some(&good)).unwrap();
    assert_eq!(out, ApplyOutcome::Applied { previous: Some(v("1.0.0")) });
}

#[test]
fn install_first_version_failing_its_health_check_leaves_nothing_current() {
    let e = Env::new();
    let out = e.inst.apply(APP, &v("1.0.0"), &e.one, Some(&sh("exit 2", 10))).unwrap();
    assert!(matches!(out, ApplyOutcome::NotApplied { .. }));
    assert_eq!(e.assert_consistent(), None);
    assert!(fs::symlink_metadata(e.inst.current_link(APP)).is_err());
}

#[test]
fn install_refuses_unsafe_archives_and_changes_nothing() {
    let e = Env::new();
    e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
    let escape = raw_tar(e.tmp.path(), "escape.tar", "../escape", tar::EntryType::Regular);
    let device = raw_tar(e.tmp.path(), "device.tar", "dev/null", tar::EntryType::Char);
    for bad in [&escape, &device] {
        let out = e.inst.apply(APP, &v("2.0.0"), bad, None).unwrap();
        assert!(
            matches!(&out, ApplyOutcome::NotApplied { fault: Fault::Release, step: ApplyStep::Unpack, reason, .. }
                if reason.starts_with("refusing archive")),
            "{out:?}"
        );
        let err = e.inst.prepare(APP, &v("2.0.0"), bad).unwrap_err();
        assert!(matches!(err, InstallError::UnsafeArchive { .. }), "{err}");
        assert_eq!(e.assert_consistent(), Some(v("1.0.0")));
        assert_eq!(e.running().as_deref(), Some("one"));
        assert!(!e.inst.version_dir(APP, &v("2.0.0")).exists());
        let versions: Vec<_> =
            fs::read_dir(e.inst.versions_dir(APP)).unwrap().map(|d| d.unwrap().file_name()).collect();
        assert_eq!(versions, ["1.0.0"]);
    }
    assert!(!e.inst.versions_dir(APP).join("escape").exists());
    assert!(!e.inst.prefix().join(APP).join("escape").exists());
}

/// Every crash point, first and second visit, with a passing and a failing health
/// check: after a restart and `recover`, `current` is the old or the new version and
/// the journal agrees; an apply is only kept once its health check has passed.
#[test]
fn install_recovers_from_a_crash_at_every_step() {
    let mut crashed = 0;
    for point in CrashPoint::ALL {
        for nth in 1..=2 {
            for healthy in [true, false] {
                let mut e = Env::new();
                e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
                let check = sh(if healthy { "true" } else { "false" }, 10);
                e.inst.inject_crash(point, nth);
                let result = e.inst.apply(APP, &v("2.0.0"), &e.two, Some(&check));
                e.restart();
                let recovered = e.inst.recover(APP).unwrap();
                let link = e.assert_consistent();
                assert_eq!(recovered, link);
                let case = format!("{point} #{nth}, healthy: {healthy}, result {result:?}");
                let expected = match result {
                    Err(InstallError::Crashed(p)) => {
                        crashed += 1;
                        assert_eq!(p, point);
                        if p == CrashPoint::ApplyDone && healthy {
                            v("2.0.0")
                        } else {
                            v("1.0.0")
                        }
                    }
                    Ok(ApplyOutcome::Applied { .. }) => v("2.0.0"),
                    Ok(ApplyOutcome::NotApplied { .. }) => v("1.0.0"),
                    Err(other) => panic!("{case}: {other}"),
                };
                assert_eq!(link, Some(expected.clone()), "{case}");
                assert_eq!(e.running().as_deref(), Some(if expected == v("1.0.0") { "one" } else { "two" }));
                // The node carries on normally afterwards.
                let again = e.inst.apply(APP, &v("2.0.0"), &e.two, Some(&sh("true", 10))).unwrap();
                assert!(matches!(again, ApplyOutcome::Applied { .. }), "{case}");
                assert_eq!(e.assert_consistent(), Some(v("2.0.0")));
            }
        }
    }
    // Every point is reached at least once on each path; the switch points twice on the
    // failing one (switch there and back).
    assert_eq!(crashed, 2 * CrashPoint::ALL.len() + 4);
}

#[test]
fn install_recovers_from_a_crash_during_rollback_and_first_install() {
    for point in [CrashPoint::SwitchIntent, CrashPoint::TmpLink, CrashPoint::Renamed, CrashPoint::SwitchDone] {
        let mut e = Env::new();
        e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
        e.inst.apply(APP, &v("2.0.0"), &e.two, None).unwrap();
        e.inst.inject_crash(point, 1);
        assert!(matches!(e.inst.rollback(APP), Err(InstallError::Crashed(_))));
        e.restart();
        let expected = if matches!(point, CrashPoint::Renamed | CrashPoint::SwitchDone) { "1.0.0" } else { "2.0.0" };
        assert_eq!(e.inst.recover(APP).unwrap(), Some(v(expected)), "{point}");
        assert_eq!(e.assert_consistent(), Some(v(expected)));
        // The history agrees: back at 1.0.0 there is nowhere further to go.
        let history = if expected == "1.0.0" { Vec::new() } else { vec![v("1.0.0")] };
        assert_eq!(e.inst.history(APP).unwrap(), history, "{point}");

        // A first install interrupted before its apply finished leaves no version.
        let mut f = Env::new();
        f.inst.inject_crash(point, 1);
        assert!(f.inst.apply(APP, &v("1.0.0"), &f.one, None).is_err());
        f.restart();
        assert_eq!(f.inst.recover_all().unwrap(), vec![(APP.to_string(), None)]);
        assert_eq!(f.assert_consistent(), None);
    }
}

#[test]
fn install_recover_trusts_the_link_over_the_journal() {
    let e = Env::new();
    e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
    e.inst.apply(APP, &v("2.0.0"), &e.two, None).unwrap();
    let link = e.inst.current_link(APP);
    let tmp = link.with_file_name("elsewhere");
    std::os::unix::fs::symlink("versions/1.0.0", &tmp).unwrap();
    fs::rename(&tmp, &link).unwrap();
    assert_eq!(e.inst.recover_all().unwrap(), vec![(APP.to_string(), Some(v("1.0.0")))]);
    assert_eq!(e.assert_consistent(), Some(v("1.0.0")));
    // A dangling link is reported, not papered over.
    fs::remove_dir_all(e.inst.version_dir(APP, &v("1.0.0"))).unwrap();
    assert!(matches!(e.inst.recover(APP), Err(InstallError::Corrupt { .. })));
}

/// The child half of the cross-process test: applies 2.0.0 with
/// `MIRAGE_TEST_CRASH_AT` set by the parent, which makes it abort part-way.
#[test]
#[ignore = "run by install_survives_abort_in_another_process"]
fn install_abort_child() {
    let Some(dir) = std::env::var_os("MIRAGE_TEST_CHILD_DIR").map(PathBuf::from) else {
        return;
    };
    let db = Arc::new(Database::create(dir.join("node.redb")).unwrap());
    let inst = Installer::open(&dir.join("opt/mirage"), db).unwrap();
    inst.apply(APP, &v("2.0.0"), &dir.join("two.tar"), Some(&sh("true", 10))).unwrap();
    // Only reached when the crash point was not.
    std::process::exit(7);
}

#[test]
fn install_survives_abort_in_another_process() {
    for point in ["tmp-link", "renamed", "switch-done", "health-checked"] {
        let e = Env::new();
        e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
        let (prefix, dir) = (e.inst.prefix().to_path_buf(), e.tmp.path().to_path_buf());
        drop(e.inst); // redb allows one process at a time
        drop(e.db);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "install::tests::install_abort_child", "--ignored", "--nocapture"])
            .env("MIRAGE_TEST_CHILD_DIR", &dir)
            .env(crash::CRASH_ENV, point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{point}: child ended with {status:?}");
        let db = Arc::new(Database::create(dir.join("node.redb")).unwrap());
        let inst = Installer::open(&prefix, db).unwrap();
        assert_eq!(inst.recover(APP).unwrap(), Some(v("1.0.0")), "{point}");
        assert_eq!(inst.read_link(APP).unwrap(), Some(v("1.0.0")));
        assert_eq!(fs::read_to_string(inst.current_link(APP).join("bin/app")).unwrap(), "one");
        drop(e.tmp);
    }
}

#[test]
fn a_failed_apply_leaves_the_running_version_and_rollback_walks_back_through_history() {
    let e = Env::new();
    let three = make_tar(e.tmp.path(), "three.tar", &[("bin/app", "three")]);
    e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
    e.inst.apply(APP, &v("2.0.0"), &e.two, None).unwrap();
    let out = e.inst.apply(APP, &v("3.0.0"), &three, Some(&sh("exit 1", 10))).unwrap();
    assert!(matches!(out, ApplyOutcome::NotApplied { step: ApplyStep::HealthCheck, .. }), "{out:?}");
    assert_eq!(e.running().as_deref(), Some("two"), "still on 2.0.0");
    assert_eq!(e.inst.history(APP).unwrap(), vec![v("1.0.0")]);

    let back = e.inst.rollback(APP).unwrap();
    assert_eq!((back.from, back.to), (Some(v("2.0.0")), v("1.0.0")));
    assert_eq!(e.running().as_deref(), Some("one"));
    // No further back exists, and a rollback never goes forward.
    assert!(matches!(e.inst.rollback(APP), Err(InstallError::NoPrevious(_))));
    assert_eq!(e.running().as_deref(), Some("one"));
    assert_eq!(e.assert_consistent(), Some(v("1.0.0")));
}

#[test]
fn an_artifact_that_does_not_unpack_is_not_applied_and_is_the_releases_fault() {
    let e = Env::new();
    e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
    let junk = e.tmp.path().join("junk.tar");
    fs::write(&junk, vec![0x42u8; 3000]).unwrap();
    let out = e.inst.apply(APP, &v("2.0.0"), &junk, None).unwrap();
    let ApplyOutcome::NotApplied { fault, step, reason, .. } = out else { panic!("{out:?}") };
    assert_eq!((fault, step), (Fault::Release, ApplyStep::Unpack), "{reason}");
    assert_eq!(e.running().as_deref(), Some("one"));
    assert_eq!(e.inst.history(APP).unwrap(), Vec::<Version>::new());
    assert_eq!(e.assert_consistent(), Some(v("1.0.0")));
}

#[test]
fn a_journal_from_before_the_history_reads_its_previous_version_into_it() {
    let e = Env::new();
    e.inst.apply(APP, &v("1.0.0"), &e.one, None).unwrap();
    e.inst.apply(APP, &v("2.0.0"), &e.two, None).unwrap();
    let old = br#"{"current":"2.0.0","previous":"1.0.0","switching":null,"applying":null}"#;
    {
        let txn = e.db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("install_journal_v1"))
            .unwrap()
            .insert(APP, old.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    assert_eq!(e.inst.history(APP).unwrap(), vec![v("1.0.0")]);
    assert_eq!(e.inst.rollback(APP).unwrap().to, v("1.0.0"));
}

#[test]
fn gzip_and_zstd_compressed_artifacts_are_detected_by_content_and_unpacked() {
    use std::io::Write;
    let e = Env::new();
    let plain = fs::read(&e.two).unwrap();
    let gz = e.tmp.path().join("two.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&plain).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    // The name says nothing: a zstd archive under a .tar name is still read as zstd.
    let zst = e.tmp.path().join("three.tar");
    let three = fs::read(make_tar(e.tmp.path(), "three-plain.tar", &[("bin/app", "three")])).unwrap();
    fs::write(&zst, ruzstd::encoding::compress_to_vec(three.as_slice(), ruzstd::encoding::CompressionLevel::Fastest))
        .unwrap();

    assert!(matches!(e.inst.apply(APP, &v("2.0.0"), &gz, None).unwrap(), ApplyOutcome::Applied { .. }));
    assert_eq!(e.running().as_deref(), Some("two"));
    assert!(matches!(e.inst.apply(APP, &v("3.0.0"), &zst, None).unwrap(), ApplyOutcome::Applied { .. }));
    assert_eq!(e.running().as_deref(), Some("three"));

    // gzip of something that is no tar: refused, named as what it was read as.
    let text = e.tmp.path().join("notes.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&[b'x'; 2048]).unwrap();
    fs::write(&text, enc.finish().unwrap()).unwrap();
    let out = e.inst.apply(APP, &v("4.0.0"), &text, None).unwrap();
    let ApplyOutcome::NotApplied { fault, reason, .. } = out else { panic!("{out:?}") };
    assert_eq!(fault, Fault::Release);
    assert!(reason.contains("gzip-compressed tar"), "{reason}");
    assert_eq!(e.running().as_deref(), Some("three"));
}

/// Unmounts a test's tmpfs when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// 1.0.0, 2.0.0, then a 3.0.0 that does not fit on the install prefix's disk (a 4 MiB
/// tmpfs): the apply fails at unpacking as the node's own fault, nothing of 3.0.0 is
/// left, 2.0.0 runs and the journal says so, before and after a restart.
#[test]
fn a_full_disk_during_apply_leaves_the_running_version_and_blames_no_release() {
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs: run it as root");
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("opt/mirage");
    fs::create_dir_all(&prefix).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "mirage-test", prefix.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "cannot mount a tmpfs");
    let _mounted = Mounted(prefix.clone());
    let db = Arc::new(Database::create(tmp.path().join("node.redb")).unwrap());
    let mut inst = Installer::open(&prefix, db.clone()).unwrap();
    let one = make_tar(tmp.path(), "one.tar", &[("bin/app", "one")]);
    let two = make_tar(tmp.path(), "two.tar", &[("bin/app", "two")]);
    let big = "x".repeat(6 << 20);
    let three = make_tar(tmp.path(), "three.tar", &[("bin/app", "three"), ("share/data", &big)]);
    inst.apply(APP, &v("1.0.0"), &one, None).unwrap();
    inst.apply(APP, &v("2.0.0"), &two, None).unwrap();
    match inst.apply(APP, &v("3.0.0"), &three, Some(&sh("true", 10))).unwrap() {
        ApplyOutcome::NotApplied { fault, step, reason, .. } => {
            assert_eq!((fault, step), (Fault::Local, ApplyStep::Unpack), "a full disk is the node's fault");
            assert!(reason.contains("No space left on device"), "the reason names the full disk: {reason}");
        }
        other => panic!("3.0.0 applied on a full disk: {other:?}"),
    }
    for _ in 0..2 {
        assert_eq!(inst.current(APP).unwrap(), Some(v("2.0.0")));
        assert_eq!(fs::read_to_string(inst.current_link(APP).join("bin/app")).unwrap(), "two");
        assert!(!inst.version_dir(APP, &v("3.0.0")).exists());
        let partial: Vec<_> = fs::read_dir(inst.versions_dir(APP))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(partial.is_empty(), "partial unpack left behind: {partial:?}");
        inst = Installer::open(&prefix, db.clone()).unwrap();
        assert_eq!(inst.recover(APP).unwrap(), Some(v("2.0.0")));
    }
}
