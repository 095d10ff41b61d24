//! The releases' scripts really run here (`sh`, as in the sandbox), against generated
//! machine roots.

use super::*;
use crate::sample_root::{sets_query_cache, write_mysql_machine, SampleMachine};
use serde::Deserialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The sandbox's `PATH` (node's `view::SANDBOX_PATH`); tests get no other host variable.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environments 0..6 hold two breaking ones (2 and 5) among four good ones.
const ENVIRONMENTS: std::ops::Range<u32> = 0..6;

fn unpack(version: &str, dir: &Path) -> PathBuf {
    let tar_path = dir.join(format!("{version}.tar"));
    write_release(version, &tar_path).unwrap();
    let dest = dir.join(version);
    tar::Archive::new(File::open(&tar_path).unwrap()).unpack(&dest).unwrap();
    dest
}

/// A machine root of `environment`; odd hosts write my.cnf lines in reverse order.
fn machine(dir: &Path, environment: u32) -> PathBuf {
    let root = dir.join(format!("root-e{environment}"));
    write_mysql_machine(&root, &SampleMachine { environment, host: 3 + environment }).unwrap();
    root
}

fn cnf(root: &Path) -> PathBuf {
    root.join("etc/mysql/my.cnf")
}

/// Runs `argv` with only the variables the sandbox sets, `stdin` as its input.
fn run(argv: &[&str], vars: &[(&str, &Path)], cwd: &Path, stdin: &[u8]) -> Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).current_dir(cwd).env_clear().env("PATH", PATH);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `sh SCRIPT ARGS...` on a machine root: through `sh` rather than exec, so a script
/// this process just wrote cannot hit ETXTBSY from another test's fork.
fn sh(script: &Path, args: &[&str], root: &Path, stdin: &[u8]) -> Output {
    let mut argv = vec!["sh", script.to_str().unwrap()];
    argv.extend_from_slice(args);
    run(&argv, &[("MIRAGE_ROOT", root)], root, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// What replay compares: the output's lines minus `key=value` / `key: value` lines
/// whose key is ignored (node's `sandbox::replay` rule).
fn compared(output: &str, ignore: &[String]) -> Vec<String> {
    let key = |l: &str| {
        let cut = l.find('=').into_iter().chain(l.find(": ")).min()?;
        Some(l[..cut].trim().to_string())
    };
    output.lines().filter(|l| !key(l).is_some_and(|k| ignore.contains(&k))).map(str::to_string).collect()
}

fn server_versions(output: &str) -> Vec<&str> {
    output.lines().filter_map(|l| l.strip_prefix("server_version=")).collect()
}

#[test]
fn releases_are_deterministic_sorted_executable_tars() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    for version in VERSIONS {
        write_release(version, &a).unwrap();
        write_release(version, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{version}");
        let mut archive = tar::Archive::new(File::open(&a).unwrap());
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let h = e.unwrap().header().clone();
                (
                    h.path().unwrap().to_str().unwrap().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        let expect = [("VERSION", 0o644), ("bin/", 0o755), ("bin/mysql", 0o755), ("bin/mysqld", 0o755)];
        let expect: Vec<_> = expect.iter().map(|(p, m)| (p.to_string(), *m, MTIME, 0)).collect();
        assert_eq!(entries, expect, "{version}");
    }
    // Versions differ in content, not just in name.
    write_release(OLD_VERSION, &a).unwrap();
    write_release(FIXED_VERSION, &b).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let unknown = dir.path().join("unknown.tar");
    let err = write_release("9.0.0", &unknown).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(!unknown.exists());

    let unpacked = unpack(BROKEN_VERSION, dir.path());
    assert_eq!(std::fs::read_to_string(unpacked.join("VERSION")).unwrap(), "8.4.0\n");
    for script in ["bin/mysql", "bin/mysqld"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(unpacked.join(script)).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable: {mode:o}");
    }
}

#[test]
fn only_the_broken_release_rejects_the_query_cache_environments() {
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<_> = ENVIRONMENTS.map(|e| (e, machine(dir.path(), e))).collect();
    for version in VERSIONS {
        let mysqld = unpack(version, dir.path()).join("bin/mysqld");
        for (env, root) in &roots {
            let out = sh(&mysqld, &["--validate-config", cnf(root).to_str().unwrap()], root, b"");
            let stderr = text(&out.stderr);
            let breaks = version == BROKEN_VERSION && sets_query_cache(*env);
            assert_eq!(out.status.success(), !breaks, "{version} env {env}: {stderr}");
            assert!(out.stdout.is_empty());
            if breaks {
                assert!(stderr.contains("[ERROR] unknown variable 'query_cache_size'"), "{stderr}");
                assert_eq!(out.status.code(), Some(1));
            } else if version == FIXED_VERSION && sets_query_cache(*env) {
                assert!(stderr.contains("[Warning] 'query_cache_size' is deprecated and ignored"), "{stderr}");
            } else {
                assert_eq!(stderr, "", "{version} env {env}");
            }
        }
    }
}

#[test]
fn config_check_reads_only_mysqld_options_in_either_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let mysqld = unpack(BROKEN_VERSION, dir.path()).join("bin/mysqld");
    let check = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let out = sh(&mysqld, &["--validate-config", path.to_str().unwrap()], dir.path(), b"");
        (out.status.success(), text(&out.stderr))
    };
    // Other sections and comments may mention it.
    let ok = check("other.cnf", "[client]\nquery_cache_size = 1M\n[mysqld]\nport = 3306\n# query_cache_size = 1M\n");
    assert_eq!(ok, (true, String::new()));
    // Dashes, blanks and tabs around the key, no trailing newline: still the option.
    let (passed, stderr) = check("dashed.cnf", "[mysqld]\nport=1\n \tquery-cache-size\t= 1M");
    assert!(!passed);
    assert!(stderr.contains("unknown variable 'query_cache_size'") && stderr.contains("line 3"), "{stderr}");
    // A config it cannot read, and a missing argument, fail too.
    let missing = dir.path().join("missing.cnf");
    assert!(!sh(&mysqld, &["--validate-config", missing.to_str().unwrap()], dir.path(), b"").status.success());
    assert_eq!(sh(&mysqld, &[], dir.path(), b"").status.code(), Some(2));
    let version = sh(&mysqld, &["--version"], dir.path(), b"");
    assert!(version.status.success());
    assert!(text(&version.stdout).starts_with("mysqld  Ver 8.4.0 for Linux"), "{}", text(&version.stdout));
}

#[test]
fn client_replays_agree_between_versions_except_server_version() {
    let dir = tempfile::tempdir().unwrap();
    let clients: Vec<_> = VERSIONS.iter().map(|v| (*v, unpack(v, dir.path()).join("bin/mysql"))).collect();
    let ignore = vec!["server_version".to_string()];
    for env in ENVIRONMENTS {
        let root = machine(dir.path(), env);
        let expected = [
            vec!["1+1=2".to_string(), "port=3306".to_string()],
            vec![
                format!("max_connections={}", 100 + 50 * (env / 4)),
                format!("innodb_buffer_pool_size={}M", 128 << (env % 4)),
                "innodb_log_file_size: empty set".to_string(),
                "40+2=42".to_string(),
            ],
        ];
        for ((name, sql), expected) in REPLAY_INPUTS.iter().zip(expected) {
            for (version, client) in &clients {
                let out = sh(client, &[], &root, sql.as_bytes());
                assert!(out.status.success() && out.stderr.is_empty(), "{version} {name}: {out:?}");
                let stdout = text(&out.stdout);
                // Same results on every version (so replay passes on every machine)...
                assert_eq!(compared(&stdout, &ignore), expected, "{version} env {env} {name}");
                // ...and the greeting (plus SELECT VERSION()) is the one varying line.
                let greeting_and_select = if *name == "001.sql" { 2 } else { 1 };
                assert_eq!(server_versions(&stdout), vec![*version; greeting_and_select]);
            }
        }
    }
}

#[test]
fn client_stops_at_the_first_bad_statement() {
    let dir = tempfile::tempdir().unwrap();
    let client = unpack(OLD_VERSION, dir.path()).join("bin/mysql");
    let root = machine(dir.path(), 0);
    for bad in ["SELECT 1+$(touch pwned);", "SELECT 1+01;", "DROP TABLE users;"] {
        let out = sh(&client, &[], &root, format!("SELECT 2+2;\n{bad}\nSELECT 3+3;\n").as_bytes());
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stdout}");
        let lines: Vec<_> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        assert_eq!(lines[1], "2+2=4");
        assert!(lines[2].starts_with("ERROR 1064 (42000)"), "{stdout}");
    }
    assert!(!root.join("pwned").exists());
}

/// node's `release::TestsFile` and its entries, as strict (testnet cannot depend on
/// node): a field node does not know fails the parse here too.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsFile {
    test: Vec<CommandEntry>,
    replay: Vec<ReplayEntry>,
    health_check: CommandEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandEntry {
    #[serde(default)]
    name: String,
    run: Vec<String>,
    timeout_secs: Option<u32>,
    max_output_bytes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayEntry {
    name: String,
    inputs: String,
    run: Vec<String>,
    ignore_fields: Vec<String>,
    timeout_secs: Option<u32>,
    max_output_bytes: Option<u32>,
}

fn argv(run: &[String]) -> Vec<&str> {
    run.iter().map(String::as_str).collect()
}

/// The declared commands themselves, run the way the sandbox runs them (the same
/// variables and working directory), decide each version on each environment.
#[test]
fn tests_dir_parses_and_its_commands_decide_as_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let tests_dir = dir.path().join("tests");
    write_tests_dir(&tests_dir).unwrap();
    let file: TestsFile = toml::from_str(&std::fs::read_to_string(tests_dir.join("tests.toml")).unwrap()).unwrap();
    let names: Vec<_> = file.test.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["config-validates", "starts"]);
    let [replay] = &file.replay[..] else { panic!("one replay test") };
    assert_eq!((replay.name.as_str(), replay.inputs.as_str()), ("queries", "replay"));
    assert_eq!(replay.ignore_fields, ["server_version"]);
    let mut inputs: Vec<_> = std::fs::read_dir(tests_dir.join(&replay.inputs))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    inputs.sort();
    assert_eq!(inputs, ["001.sql", "002.sql"]);
    // Explicit limits, well under node's defaults (300 s, 1 MiB): these scripts take
    // milliseconds, and a hang must not hold a representative for minutes.
    let limits = file.test.iter().map(|t| (t.timeout_secs, t.max_output_bytes));
    for (timeout, max_output) in limits.chain([(replay.timeout_secs, replay.max_output_bytes)]) {
        assert!(timeout.is_some_and(|t| t <= 60) && max_output.is_some_and(|m| m <= 1 << 16));
    }
    assert!(file.health_check.timeout_secs.is_some_and(|t| t <= 60));

    let versions: Vec<_> = VERSIONS.iter().map(|v| (*v, unpack(v, dir.path()))).collect();
    let old_dir = &versions[0].1;
    for env in [0, 2] {
        let root = machine(dir.path(), env);
        for (version, app_dir) in &versions {
            let vars = |app: &Path| -> Vec<(&str, PathBuf)> {
                vec![
                    ("MIRAGE_APP_DIR", app.to_path_buf()),
                    ("MIRAGE_TESTS_DIR", tests_dir.clone()),
                    ("MIRAGE_ROOT", root.clone()),
                ]
            };
            let go = |run_line: &[String], app: &Path, stdin: &[u8]| {
                let vars = vars(app);
                let vars: Vec<_> = vars.iter().map(|(k, v)| (*k, v.as_path())).collect();
                run(&argv(run_line), &vars, &tests_dir, stdin)
            };
            let breaks = *version == BROKEN_VERSION && env == 2;
            for test in file.test.iter().chain([&file.health_check]) {
                let out = go(&test.run, app_dir, b"");
                let passes = !breaks || test.name == "starts";
                assert_eq!(out.status.success(), passes, "{version} env {env} {}: {out:?}", test.name);
            }
            for input in &inputs {
                let sql = std::fs::read(tests_dir.join(&replay.inputs).join(input)).unwrap();
                let (old, new) = (go(&replay.run, old_dir, &sql), go(&replay.run, app_dir, &sql));
                assert!(old.status.success() && new.status.success());
                let (old, new) = (text(&old.stdout), text(&new.stdout));
                assert_eq!(compared(&old, &replay.ignore_fields), compared(&new, &replay.ignore_fields));
                assert_eq!(old == new, *version == OLD_VERSION, "only server_version differs:\n{old}\n{new}");
            }
        }
    }

    // `starts` checks the version it runs against VERSION, so a mislabelled build fails.
    let mislabelled = &versions[1].1;
    std::fs::write(mislabelled.join("VERSION"), "8.4.9\n").unwrap();
    let starts = file.test.iter().find(|t| t.name == "starts").unwrap();
    let root = machine(dir.path(), 0);
    let vars = [("MIRAGE_APP_DIR", mislabelled.as_path()), ("MIRAGE_ROOT", root.as_path())];
    assert!(!run(&argv(&starts.run), &vars, &tests_dir, b"").status.success());
}
