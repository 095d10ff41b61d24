use super::*;
use mirage_protocol::fingerprint::chain::Cut;
use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

const MYSQL: &str = include_str!("../../../profiles/mysql.toml");

/// Writes a small Debian-like MySQL machine under `root`.
struct MachineSpec<'a> {
    hostname: &'a str,
    ip: &'a str,
    buffer_pool: &'a str,
    comments_first: bool,
    log: &'a str,
    lib: &'a [u8],
}

fn write(root: &Path, logical: &str, contents: &[u8]) {
    let p = root.join(logical.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, contents).unwrap();
    // Older than the racy window, as files on a real machine are.
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
}

fn machine(root: &Path, m: &MachineSpec) {
    write(root, "/etc/hostname", format!("{}\n", m.hostname).as_bytes());
    write(root, "/usr/sbin/mysqld", b"\x7fELF mysqld 8.0.36");
    write(root, "/usr/lib/x86_64-linux-gnu/libmysqlclient.so.21.2.36", m.lib);
    symlink(
        "/usr/lib/x86_64-linux-gnu/libmysqlclient.so.21.2.36",
        root.join("usr/lib/x86_64-linux-gnu/libmysqlclient.so.21"),
    )
    .unwrap();
    let settings = [
        format!("bind-address = {}", m.ip),
        format!("innodb_buffer_pool_size = {}", m.buffer_pool),
        format!("report_host = {}", m.hostname),
        "max_connections = 151".to_string(),
        "pid-file = /run/mysqld/mysqld.pid".to_string(),
    ];
    let mut cnf = String::from("[mysqld]\n");
    let mut lines: Vec<&String> = settings.iter().collect();
    if m.comments_first {
        cnf.push_str("# Local tuning, edited by hand\n\n");
        lines.reverse();
    }
    for l in lines {
        cnf.push_str(l);
        cnf.push('\n');
    }
    write(root, "/etc/mysql/my.cnf", cnf.as_bytes());
    write(root, "/var/log/mysql/error.log", m.log.as_bytes());
    write(root, "/var/lib/mysql/ibdata1", b"data");
    write(root, "/var/lib/mysql/auto.cnf", format!("[auto]\nserver-uuid={}\n", m.hostname).as_bytes());
    write(root, "/etc/environment", b"TZ=UTC\nLANG=\"C.UTF-8\"\n");
}

fn base_spec() -> MachineSpec<'static> {
    MachineSpec {
        hostname: "db1",
        ip: "10.0.0.1",
        buffer_pool: "128M",
        comments_first: false,
        log: "2024-01-01 started",
        lib: b"libmysqlclient 21.2.36",
    }
}

fn key_of(spec: &MachineSpec) -> (mirage_protocol::ClusterKey, Fingerprint) {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), spec);
    let profile = Profile::parse(MYSQL).unwrap();
    let fp = scan(&profile, dir.path(), None).unwrap().fingerprint;
    (fp.cluster_key(), fp)
}

#[test]
fn host_noise_does_not_split() {
    let (a, _) = key_of(&base_spec());
    let other = MachineSpec {
        hostname: "db2",
        ip: "192.168.7.33",
        comments_first: true,
        log: "entirely different log contents\nmore lines\n",
        ..base_spec()
    };
    let (b, _) = key_of(&other);
    assert_eq!(a, b);
}

#[test]
fn real_differences_split() {
    let (base, base_fp) = key_of(&base_spec());
    let (changed_value, fp) = key_of(&MachineSpec { buffer_pool: "1G", ..base_spec() });
    assert_ne!(base, changed_value);
    assert_eq!(base_fp.distance(&fp), 1);
    let (changed_lib, _) = key_of(&MachineSpec { lib: b"libmysqlclient 21.2.37", ..base_spec() });
    assert_ne!(base, changed_lib);
    let (loopback, _) = key_of(&MachineSpec { ip: "127.0.0.1", ..base_spec() });
    assert_ne!(base, loopback, "binding to loopback is a real difference");
}

#[test]
fn missing_library_splits_and_absolute_symlinks_stay_in_root() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    let profile = Profile::parse(MYSQL).unwrap();
    let with = scan(&profile, dir.path(), None).unwrap().fingerprint;
    // The absolute symlink resolved inside the root, to the versioned file.
    let lib = with.items().iter().find(|i| i.path == "/usr/lib/x86_64-linux-gnu/libmysqlclient.so.21").unwrap();
    assert_eq!(lib.value, mirage_protocol::fingerprint::ItemValue::Digest(Digest::of(b"libmysqlclient 21.2.36")));
    fs::remove_file(dir.path().join("usr/lib/x86_64-linux-gnu/libmysqlclient.so.21.2.36")).unwrap();
    let without = scan(&profile, dir.path(), None).unwrap().fingerprint;
    assert_ne!(with.cluster_key(), without.cluster_key());
}

#[test]
fn symlink_loop_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    let lib = dir.path().join("usr/lib/x86_64-linux-gnu");
    symlink("libmysqlclient.so.99", lib.join("libmysqlclient.so.98")).unwrap();
    symlink("libmysqlclient.so.98", lib.join("libmysqlclient.so.99")).unwrap();
    let err = scan(&Profile::parse(MYSQL).unwrap(), dir.path(), None).unwrap_err();
    assert!(matches!(err, ScanError::SymlinkLoop(_)), "{err}");
    assert!(err.to_string().contains("libmysqlclient.so.9"), "{err}");
}

#[test]
fn directory_symlink_cycle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    symlink("/var/lib", dir.path().join("var/lib/mysql/up")).unwrap();
    let err = scan(&Profile::parse(MYSQL).unwrap(), dir.path(), None).unwrap_err();
    assert!(matches!(err, ScanError::SymlinkLoop(ref p) if p.ends_with("var/lib/mysql/up/mysql")), "{err}");
}

#[test]
fn missing_root_is_a_clear_error() {
    let err = scan(&Profile::parse(MYSQL).unwrap(), Path::new("/nonexistent/root"), None).unwrap_err();
    assert_eq!(err.to_string(), "root /nonexistent/root does not exist or is not a directory");
}

#[test]
fn an_oversized_config_named_by_the_profile_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    let big = dir.path().join("etc/mysql/my.cnf");
    fs::File::options().write(true).open(&big).unwrap().set_len(MAX_CONFIG_BYTES + 1).unwrap();
    let err = scan(&Profile::parse(MYSQL).unwrap(), dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("my.cnf"), "{err}");
}

/// A machine whose my.cnf includes conf.d/, with `extra` written there.
fn including_machine(extra: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    let cnf = dir.path().join("etc/mysql/my.cnf");
    let mut text = fs::read_to_string(&cnf).unwrap();
    text.push_str("!includedir /etc/mysql/conf.d/\n");
    fs::write(&cnf, text).unwrap();
    fs::create_dir_all(dir.path().join("etc/mysql/conf.d")).unwrap();
    extra(&dir.path().join("etc/mysql/conf.d"));
    dir
}

fn cuts(dir: &Path) -> Vec<(String, Cut)> {
    let scan = scan(&Profile::parse(MYSQL).unwrap(), dir, None).unwrap();
    scan.cuts.into_iter().map(|c| (c.path, c.cut)).collect()
}

#[test]
fn included_files_too_large_unopenable_or_too_many_are_reported_cuts_never_hangs() {
    let big = including_machine(|d| fs::File::create(d.join("huge.cnf")).unwrap().set_len(100 << 20).unwrap());
    assert_eq!(cuts(big.path()), vec![("/etc/mysql/conf.d/huge.cnf".to_string(), Cut::FileTooLarge)]);

    // A FIFO would block a reader forever: it is never opened.
    let fifo = including_machine(|d| {
        let path = std::ffi::CString::new(d.join("pipe.cnf").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    });
    assert_eq!(cuts(fifo.path()), vec![("/etc/mysql/conf.d/pipe.cnf".to_string(), Cut::NotAFile)]);

    let many = including_machine(|d| {
        for i in 0..5000 {
            fs::write(d.join(format!("{i:05}.cnf")), "").unwrap();
        }
    });
    assert_eq!(cuts(many.path()), vec![("/etc/mysql/conf.d".to_string(), Cut::TooManyEntries)]);

    let cycle = including_machine(|d| symlink("/etc/mysql/my.cnf", d.join("again.cnf")).unwrap());
    assert_eq!(cuts(cycle.path()), vec![("/etc/mysql/conf.d/again.cnf".to_string(), Cut::Cycle)]);
}

#[test]
fn a_setting_in_an_included_file_counts_and_where_it_sits_does_not() {
    let key = |dir: &Path| scan(&Profile::parse(MYSQL).unwrap(), dir, None).unwrap().fingerprint.cluster_key();
    let plain = including_machine(|_| {});
    let tuned = including_machine(|d| fs::write(d.join("50-tuning.cnf"), "[mysqld]\nmax_connections = 500\n").unwrap());
    let same = including_machine(|d| fs::write(d.join("50-tuning.cnf"), "[mysqld]\nmax_connections = 151\n").unwrap());
    assert_ne!(key(plain.path()), key(tuned.path()));
    assert_eq!(key(plain.path()), key(same.path()));
}

#[test]
fn warm_scan_reads_nothing_and_agrees() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = DigestCache::open(&cache_dir.path().join("c.redb")).unwrap();
    let profile = Profile::parse(MYSQL).unwrap();
    let cold = scan(&profile, dir.path(), Some(&cache)).unwrap();
    assert!(cold.stats.files_hashed >= 2);
    assert_eq!(cold.stats.cache_hits, 0);
    let warm = scan(&profile, dir.path(), Some(&cache)).unwrap();
    assert_eq!(warm.stats.files_hashed, 0);
    assert_eq!(warm.stats.cache_hits, cold.stats.files_hashed);
    assert_eq!(warm.fingerprint, cold.fingerprint);
    // A changed file (new size and mtime) is hashed again.
    write(dir.path(), "/usr/sbin/mysqld", b"\x7fELF mysqld 8.0.37!");
    let after = scan(&profile, dir.path(), Some(&cache)).unwrap();
    assert_eq!(after.stats.files_hashed, 1);
    assert_ne!(after.fingerprint.cluster_key(), cold.fingerprint.cluster_key());
}

#[test]
fn shipped_profiles_parse() {
    for text in [MYSQL, include_str!("../../../profiles/apache2.toml"), include_str!("../../../profiles/php.toml")] {
        Profile::parse(text).unwrap();
    }
}

#[test]
fn a_pattern_over_more_files_than_a_fingerprint_holds_is_a_clear_error_and_presence_stops_at_one() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), &base_spec());
    let many = dir.path().join("var/lib/mysql/many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..=MAX_PATTERN_MATCHES + 1 {
        fs::File::create(many.join(format!("{i}.ibd"))).unwrap();
    }
    // The shipped profile counts /var/lib/mysql/** with contribute = "none": fine.
    scan(&Profile::parse(MYSQL).unwrap(), dir.path(), None).unwrap();
    let names =
        "app = \"x\"\n[[resource]]\nclass = \"data\"\ninclude = [\"/var/lib/mysql/**\"]\ncontribute = \"names\"\n";
    let Err(err) = scan(&Profile::parse(names).unwrap(), dir.path(), None) else { panic!("no error") };
    assert!(matches!(&err, ScanError::TooManyMatches { pattern } if pattern == "/var/lib/mysql/**"), "{err}");
    assert!(err.to_string().contains("presence"), "the error says what to do: {err}");
    let presence = names.replace("names", "presence");
    let fp = scan(&Profile::parse(&presence).unwrap(), dir.path(), None).unwrap().fingerprint;
    assert_eq!(fp.items()[0].value, mirage_protocol::fingerprint::ItemValue::Present);
}
