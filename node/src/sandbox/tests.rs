//! These tests run the real `bwrap`. Where it is missing they fail and say how to
//! install it, rather than pass without testing anything.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn sandbox() -> Sandbox {
    Sandbox::new().unwrap_or_else(|e| panic!("sandbox tests need a working bubblewrap: {e}"))
}

fn cmd(argv: &[&str], timeout_secs: u32, max_output_bytes: u32) -> CommandSpec {
    CommandSpec { argv: argv.iter().map(|s| s.to_string()).collect(), timeout_secs, max_output_bytes }
}

fn command_test(name: &str, script: &str) -> TestSpec {
    TestSpec::Command { name: name.into(), command: cmd(&["sh", "-c", script], 30, 64 * 1024) }
}

fn write_exec(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A machine in a temp dir: app `demo` under `<tmp>/opt/mirage`, a config file and a
/// data directory as resources, two versions and a test bundle.
struct Machine {
    tmp: tempfile::TempDir,
    run: TestRun,
}

impl Machine {
    /// Under /var/tmp, which the sandbox sees read-only (unlike /tmp, which it replaces),
    /// as a real install prefix like /opt/mirage would be.
    fn new() -> Machine {
        let tmp = tempfile::Builder::new().prefix("mirage-sandbox-test-").tempdir_in("/var/tmp").unwrap();
        // Searchable by the sandbox's user, as /opt and /var are on a real machine.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path();
        let conf = root.join("etc/demo.conf");
        fs::create_dir_all(conf.parent().unwrap()).unwrap();
        fs::write(&conf, "port=1\n").unwrap();
        let data = root.join("var/lib/demo");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("db"), "rows\n").unwrap();
        for v in ["1.0.0", "2.0.0"] {
            fs::create_dir_all(root.join("versions").join(v)).unwrap();
            fs::write(root.join("versions").join(v).join("version"), v).unwrap();
        }
        fs::create_dir_all(root.join("bundle/inputs")).unwrap();
        let run = TestRun {
            app: "demo".into(),
            install_prefix: root.join("opt/mirage"),
            old_version_dir: Some(root.join("versions/1.0.0")),
            new_version_dir: root.join("versions/2.0.0"),
            resources: vec![conf, data],
            bundle_dir: Some(root.join("bundle")),
            tests: Vec::new(),
            machine_root: root.to_path_buf(),
            hidden: Vec::new(),
        };
        Machine { tmp, run }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Gives both versions a `bin/app` that turns stdin into output.
    fn apps(&self, old: &str, new: &str) {
        write_exec(&self.path("versions/1.0.0/bin/app"), &format!("#!/bin/sh\n{old}\n"));
        write_exec(&self.path("versions/2.0.0/bin/app"), &format!("#!/bin/sh\n{new}\n"));
    }
}

#[test]
fn missing_bwrap_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = Sandbox::locate_in(empty.path().as_os_str()).unwrap_err();
    assert!(matches!(err, SandboxError::NotInstalled));
    assert!(err.to_string().contains("apt-get install bubblewrap"));
}

#[test]
fn command_tests_pass_and_fail_on_exit_status() {
    let mut m = Machine::new();
    let conf = m.path("etc/demo.conf").display().to_string();
    m.run.tests = vec![
        // The new version at the app's path, the bundle as working directory, the
        // resources in place, and none of our environment (cargo sets CARGO_*).
        command_test(
            "sees-upgrade",
            &format!(
                "test \"$(cat $MIRAGE_APP_DIR/version)\" = 2.0.0 && test \"$(pwd)\" = $MIRAGE_TESTS_DIR \
                 && grep -q port= {conf} && ! env | grep -q CARGO && echo fine"
            ),
        ),
        command_test("breaks", "echo boom >&2; exit 3"),
    ];
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(!r.passed);
    assert!(r.tests[0].passed, "{:?}", r.tests[0]);
    assert_eq!(r.tests[0].output, "fine\n");
    assert_eq!((r.tests[1].passed, r.tests[1].exit_code), (false, Some(3)));
    assert_eq!(r.summary, "1/2 tests passed; failed: breaks (exit status 3)");
    assert!(r.failure_excerpt.contains("boom"));

    m.run.tests.truncate(1);
    let again = sandbox().run_tests(&m.run).unwrap();
    assert!(again.passed);
    assert_ne!(again.logs_digest, r.logs_digest);
}

#[test]
fn writes_land_in_copies_and_the_host_is_read_only() {
    let mut m = Machine::new();
    let (conf, data) = (m.path("etc/demo.conf"), m.path("var/lib/demo"));
    let script = format!(
        "echo port=2 > {c} && echo new > {d}/added && rm {d}/db && cat {c} && ! touch /usr/mirage-probe 2>/dev/null",
        c = conf.display(),
        d = data.display()
    );
    m.run.tests = vec![command_test("writes", &script)];
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.passed, "{r:?}");
    assert_eq!(r.tests[0].output, "port=2\n");
    assert_eq!(fs::read_to_string(&conf).unwrap(), "port=1\n");
    assert_eq!(fs::read_to_string(data.join("db")).unwrap(), "rows\n");
    assert!(!data.join("added").exists());
    assert!(!Path::new("/usr/mirage-probe").exists());
}

#[test]
fn no_network_but_loopback() {
    let mut m = Machine::new();
    m.run.tests = vec![command_test("interfaces", "cat /proc/net/dev")];
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.passed, "{r:?}");
    let interfaces: Vec<&str> =
        r.tests[0].output.lines().filter_map(|l| l.split_once(':')).map(|(name, _)| name.trim()).collect();
    assert_eq!(interfaces, ["lo"]);
}

#[test]
fn timeout_kills_and_fails() {
    let mut m = Machine::new();
    m.run.tests = vec![TestSpec::Command { name: "slow".into(), command: cmd(&["sleep", "60"], 1, 1000) }];
    let start = Instant::now();
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    let t = &r.tests[0];
    assert!(!t.passed && t.timed_out, "{t:?}");
    assert_eq!(r.summary, "0/1 tests passed; failed: slow (timed out after 1 s)");
}

#[test]
fn endless_output_is_cut_and_the_test_ends() {
    let mut m = Machine::new();
    m.run.tests = vec![TestSpec::Command { name: "chatty".into(), command: cmd(&["yes", "spam"], 60, 10_000) }];
    let start = Instant::now();
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    let t = &r.tests[0];
    assert!(!t.passed && !t.timed_out, "{t:?}");
    assert_eq!(t.output.len(), 10_000);
    assert_eq!(t.reason.as_deref(), Some("output over the 10000-byte limit"));
}

fn replay(ignore: &[&str]) -> TestSpec {
    TestSpec::Replay {
        name: "queries".into(),
        inputs: "inputs".into(),
        command: cmd(&["sh", "-c", "$MIRAGE_APP_DIR/bin/app"], 30, 64 * 1024),
        ignore_fields: ignore.iter().map(|s| s.to_string()).collect(),
    }
}

fn replay_machine(old: &str, new: &str) -> Machine {
    let mut m = Machine::new();
    fs::write(m.path("bundle/inputs/1-select"), "select a\nselect b\n").unwrap();
    fs::write(m.path("bundle/inputs/2-insert"), "insert c\n").unwrap();
    m.apps(old, new);
    m.run.tests = vec![replay(&["elapsed"])];
    m
}

#[test]
fn replay_passes_when_only_ignored_fields_differ() {
    let m = replay_machine("sed 's/^/row: /'; echo elapsed=10ms", "sed 's/^/row: /'; echo elapsed=3ms");
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.passed, "{r:?}");
    assert_eq!(r.tests[0].output, "input 1-select: same\ninput 2-insert: same\n");
}

#[test]
fn replay_fails_on_a_real_difference_and_shows_it() {
    let m = replay_machine("sed 's/^/row: /'; echo elapsed=10ms", "sed 's/^/row: /; s/b$/B/'; echo elapsed=3ms");
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(!r.passed);
    let t = &r.tests[0];
    assert_eq!(t.reason.as_deref(), Some("input 1-select: output differs"));
    assert!(t.output.contains("old line 2: row: select b\n  new line 2: row: select B"), "{}", t.output);
    assert!(t.output.contains("input 2-insert: same"));
    assert!(r.failure_excerpt.contains("new line 2: row: select B"));
}

#[test]
fn replay_on_a_first_install_is_skipped_and_says_so() {
    // Even a replay that would differ: with nothing installed there is nothing to keep.
    let mut m = replay_machine("cat", "tr a-z A-Z");
    m.run.old_version_dir = None;
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.passed, "{r:?}");
    assert!(r.tests[0].output.starts_with("skipped: no version is installed"), "{}", r.tests[0].output);
}

#[test]
fn replay_inputs_must_stay_in_the_bundle() {
    let mut m = replay_machine("cat", "cat");
    m.run.tests = vec![TestSpec::Replay {
        name: "escape".into(),
        inputs: "../etc".into(),
        command: cmd(&["cat"], 30, 1000),
        ignore_fields: Vec::new(),
    }];
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.tests[0].reason.as_deref().unwrap().contains("relative path inside the test bundle"));
}

#[test]
fn only_the_candidate_is_visible_in_the_app_dir() {
    let mut m = Machine::new();
    // The host has the old version installed and current pointing at it.
    let app_dir = m.run.app_dir();
    fs::create_dir_all(app_dir.join("versions")).unwrap();
    std::os::unix::fs::symlink(m.path("versions/1.0.0"), app_dir.join("current")).unwrap();
    m.run.tests = vec![command_test("app-dir", "ls -A $(dirname $MIRAGE_APP_DIR) && cat $MIRAGE_APP_DIR/version")];
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.passed, "{r:?}");
    assert_eq!(r.tests[0].output, "current\n2.0.0");
    assert_eq!(fs::read_link(app_dir.join("current")).unwrap(), m.path("versions/1.0.0"));
}

#[test]
fn setup_failures_are_told_apart_from_failing_tests() {
    let sb = sandbox();
    let run = |extra: &[&str], command: &str| {
        let marker = status::StartMarker::new().unwrap();
        let mut cmd = Command::new(&sb.bwrap);
        cmd.args(["--unshare-all", "--ro-bind", "/", "/"]).args(extra).arg("--");
        marker.wrap(&mut cmd, &[command.to_string()]);
        let limits = Limits { timeout: Duration::from_secs(30), max_output_bytes: 4096 };
        let f = exec::run_bounded(cmd, Stdio::null(), &limits).unwrap();
        (f.exit_code, marker.started().unwrap(), String::from_utf8_lossy(&f.output).into_owned())
    };
    assert_eq!(run(&[], "false"), (Some(1), true, String::new()));
    let (code, started, output) = run(&["--ro-bind", "/nonexistent-mirage", "/x"], "true");
    assert_eq!((code, started), (Some(1), false));
    assert!(output.contains("nonexistent-mirage"), "{output}");

    // Through `run_tests`, a sandbox that cannot be built is an error, not a failed
    // test: a dangling symlink copies fine, but bwrap cannot bind its copy.
    let mut m = Machine::new();
    let dangling = m.path("etc/dangling");
    std::os::unix::fs::symlink("/nonexistent-mirage", &dangling).unwrap();
    m.run.resources.push(dangling);
    m.run.tests = vec![command_test("never", "true")];
    let err = sb.run_tests(&m.run).unwrap_err();
    assert!(matches!(err, SandboxError::Setup(_)), "{err}");
    // A resource that does not exist cannot be copied.
    m.run.resources = vec![PathBuf::from("/proc/self/mirage-nonexistent")];
    assert!(matches!(sb.run_tests(&m.run), Err(SandboxError::Resource { .. })));
}

#[test]
fn relative_resources_are_refused() {
    let mut m = Machine::new();
    m.run.resources.push(PathBuf::from("etc/passwd"));
    assert!(matches!(sandbox().run_tests(&m.run), Err(SandboxError::Invalid(_))));
}

/// With root's capabilities a test could remount the host's `/` read-write from inside
/// the sandbox and write to the host; without them it cannot.
#[test]
fn a_test_holds_no_capabilities_and_cannot_remount_the_host_writable() {
    let mut m = Machine::new();
    let probe = "/usr/mirage-remount-probe";
    let script = format!(
        "grep CapEff /proc/self/status; mount -o remount,rw,bind / 2>&1; touch {probe} 2>&1; mount -o remount,rw /usr 2>&1; touch {probe}"
    );
    m.run.tests = vec![command_test("escape", &script)];
    let r = sandbox().run_tests(&m.run).unwrap();
    let t = &r.tests[0];
    assert!(!t.passed, "the last touch must fail: {t:?}");
    assert!(t.output.contains("CapEff:\t0000000000000000"), "{}", t.output);
    assert!(!Path::new(probe).exists(), "the host was written to");
}

// ---- Containment: what a hostile or broken vendor test cannot do ----

/// Processes alive whose command line holds `token` (none of a test's must outlive it).
fn processes_with(token: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(token))
        .count()
}

#[test]
fn a_test_runs_unprivileged_and_sees_neither_the_nodes_key_nor_other_apps_files() {
    let mut m = Machine::new();
    // The node's data directory with its key, a root-only file elsewhere, and another
    // app's configuration.
    let data = m.path("node-data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("node.key"), "secret key").unwrap();
    fs::set_permissions(data.join("node.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let private = m.path("etc/private.conf");
    fs::write(&private, "root only").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let other_app = m.path("etc/other-app.conf");
    fs::write(&other_app, "password=hunter2").unwrap();
    m.run.hidden = vec![other_app.clone()];
    let script = format!(
        "id -u; cat {key} 2>&1; echo entries $(ls -A {data} | wc -l); cat {private} 2>&1; cat {other} 2>&1; echo end",
        key = data.join("node.key").display(),
        data = data.display(),
        private = private.display(),
        other = other_app.display()
    );
    m.run.tests = vec![command_test("snoop", &script)];
    let sandbox = sandbox().hiding([data.clone()]);
    let r = sandbox.run_tests(&m.run).unwrap();
    let out = &r.tests[0].output;
    assert!(r.passed && out.ends_with("end\n"), "{r:?}");
    assert!(out.contains("entries 0\n"), "the node's data directory shows:\n{out}");
    for secret in ["secret key", "root only", "hunter2"] {
        assert!(!out.contains(secret), "the test saw `{secret}`:\n{out}");
    }
    if let Some((uid, _)) = sandbox.confinement().user {
        assert!(out.starts_with(&format!("{uid}\n")), "{out}");
    }
}

#[test]
fn a_fork_bomb_is_stopped_and_the_node_is_told_why() {
    let mut m = Machine::new();
    let limits = ResourceLimits { processes: 64, ..ResourceLimits::default() };
    m.run.tests = vec![TestSpec::Command {
        name: "bomb".into(),
        command: cmd(&["sh", "-c", "b() { b | b & }; b; sleep 30", "mirage-fork-bomb"], 20, 64 * 1024),
    }];
    let start = Instant::now();
    let sandbox = sandbox().with_limits(limits);
    let r = sandbox.run_tests(&m.run).unwrap();
    let t = &r.tests[0];
    assert!(!t.passed, "{t:?}");
    if sandbox.confinement().enforcement != confine::Enforcement::Rlimits {
        assert_eq!(t.reason.as_deref(), Some("killed: it reached its limit of 64 processes"), "{t:?}");
        assert!(start.elapsed() < Duration::from_secs(15), "{:?}", start.elapsed());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(processes_with("mirage-fork-bomb"), 0, "processes outlived the test");
}

#[test]
fn allocating_8_gib_is_stopped_and_the_node_is_told_why() {
    let mut m = Machine::new();
    let limits = ResourceLimits { memory_bytes: 256 << 20, ..ResourceLimits::default() };
    // 128 blocks of 64 MiB, each written (not only reserved).
    let script = "x = []\nfor i in range(128):\n    x.append(b'\\x01' * (64 << 20))\nprint('allocated 8 GiB')";
    m.run.tests =
        vec![TestSpec::Command { name: "hog".into(), command: cmd(&["python3", "-c", script], 60, 64 * 1024) }];
    let sandbox = sandbox().with_limits(limits);
    let r = sandbox.run_tests(&m.run).unwrap();
    let t = &r.tests[0];
    assert!(!t.passed && !t.output.contains("allocated"), "{t:?}");
    if sandbox.confinement().enforcement != confine::Enforcement::Rlimits {
        assert_eq!(t.reason.as_deref(), Some("killed: it used all of its 256 MiB of memory"), "{t:?}");
    } else {
        assert!(t.output.contains("MemoryError"), "{t:?}");
    }
}

#[test]
fn filling_the_disk_is_stopped_and_the_host_keeps_its_files() {
    let mut m = Machine::new();
    let limits = ResourceLimits { write_bytes: 64 << 20, tmpfs_bytes: 16 << 20, ..ResourceLimits::default() };
    let data = m.path("var/lib/demo");
    // Into /tmp (a bounded tmpfs), then into the copy of the app's data directory, file
    // after file, each under the file size limit, towards 4 GiB.
    let script = format!(
        "dd if=/dev/zero of=/tmp/fill bs=1M count=64 status=none 2>&1 || echo tmp-full; \
         i=0; while [ $i -lt 128 ]; do dd if=/dev/zero of={d}/fill$i bs=1M count=32 status=none || exit 1; \
         i=$((i+1)); done; echo wrote-4-gib",
        d = data.display()
    );
    m.run.tests = vec![TestSpec::Command { name: "fill".into(), command: cmd(&["sh", "-c", &script], 120, 64 * 1024) }];
    let scratch = tempfile::Builder::new().prefix("mirage-scratch-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let sandbox = sandbox().with_limits(limits).with_scratch_dir(scratch.path());
    let r = sandbox.run_tests(&m.run).unwrap();
    let t = &r.tests[0];
    assert!(!t.passed && !t.output.contains("wrote-4-gib"), "{t:?}");
    assert!(t.output.contains("tmp-full"), "/tmp is bounded: {t:?}");
    assert_eq!(
        t.reason.as_deref(),
        Some("killed: it wrote more than 64 MiB to its copies of the app's files"),
        "{t:?}"
    );
    assert!(!data.join("fill0").exists(), "the host's data directory was written to");
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "the run's copies were left behind");
}

#[test]
fn a_test_cannot_reach_a_listener_on_the_hosts_loopback() {
    let mut m = Machine::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "import socket\ns = socket.socket()\ns.settimeout(3)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print('connected')\nexcept OSError as e:\n    print('refused', e)"
    );
    m.run.tests = vec![TestSpec::Command { name: "net".into(), command: cmd(&["python3", "-c", &script], 30, 4096) }];
    let r = sandbox().run_tests(&m.run).unwrap();
    assert!(r.tests[0].output.starts_with("refused"), "{:?}", r.tests[0]);
    assert!(listener.accept().is_err(), "the host's listener saw a connection");
}

/// Found by the tutorial: a node started with `--data-dir node-a` hid `node-a`, which
/// bubblewrap took inside the sandbox, and no test could start.
#[test]
fn a_relative_data_directory_is_hidden_where_it_is() {
    let mut m = Machine::new();
    let data = m.path("rel-data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("node.key"), "secret key").unwrap();
    let cwd = std::env::current_dir().unwrap();
    let relative: PathBuf =
        std::iter::repeat_n("..", cwd.components().count()).collect::<PathBuf>().join(data.strip_prefix("/").unwrap());
    m.run.tests = vec![command_test("snoop", &format!("cat {}/node.key 2>&1; echo end", data.display()))];
    let r = sandbox().hiding([relative]).run_tests(&m.run).unwrap();
    assert!(r.passed && !r.tests[0].output.contains("secret key"), "{r:?}");
}
