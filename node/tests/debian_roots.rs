//! Machines built from real Debian packages (`profiles/fixtures/debian-roots.sh`:
//! MariaDB 10.11, Apache 2.4 and PHP 8.2 as their maintainer scripts set them up) land
//! in clusters by environment: host noise never splits a group, and each group's one
//! real difference (an option in an included file, another libssl3 build, a disabled
//! PHP extension, an enabled Apache module, a missing Apache) always does.

use mirage_node::scan::scan;
use mirage_protocol::fingerprint::Profile;
use mirage_protocol::ClusterKey;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const PROFILES: [&str; 3] = ["mariadb", "apache2", "php"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The machine roots, built once and kept between runs (the script rebuilds them when
/// the packages or the script change).
fn roots() -> Vec<PathBuf> {
    static ROOTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(build_roots).clone()
}

fn build_roots() -> Vec<PathBuf> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-roots");
    let script = workspace().join("profiles/fixtures/debian-roots.sh");
    let status = Command::new("timeout")
        .arg("900")
        .arg(&script)
        .arg(&out)
        .status()
        .expect("run profiles/fixtures/debian-roots.sh");
    assert!(status.success(), "{} failed: {status}", script.display());
    let mut roots: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    roots.sort();
    roots
}

fn profile(name: &str) -> Profile {
    let path = workspace().join(format!("profiles/{name}.toml"));
    Profile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn group_of(root: &Path) -> String {
    let name = root.file_name().unwrap().to_string_lossy();
    name.rsplit_once('-').unwrap().0.to_string()
}

/// Each machine's cluster key under each profile.
fn keys(roots: &[PathBuf]) -> BTreeMap<String, Vec<ClusterKey>> {
    let profiles: Vec<Profile> = PROFILES.iter().map(|p| profile(p)).collect();
    roots
        .iter()
        .map(|root| {
            let keys = profiles
                .iter()
                .map(|p| {
                    let scan = scan(p, root, None).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
                    assert!(scan.cuts.is_empty(), "{}: cut {:?}", root.display(), scan.cuts);
                    scan.fingerprint.cluster_key()
                })
                .collect();
            (root.file_name().unwrap().to_string_lossy().into_owned(), keys)
        })
        .collect()
}

/// Checks machines' keys against their groups as the paper counts: a machine is
/// misplaced when its cluster holds a machine of another group (a difference the
/// fingerprint missed); a group over several clusters was split by host noise.
fn assert_clustered<K: Ord>(keys: &BTreeMap<String, K>, group: impl Fn(&str) -> String) {
    let mut clusters: BTreeMap<&K, BTreeSet<String>> = BTreeMap::new();
    for (machine, k) in keys {
        clusters.entry(k).or_default().insert(machine.clone());
    }
    let groups: BTreeSet<String> = keys.keys().map(|m| group(m)).collect();
    let mut misplaced = 0;
    for members in clusters.values() {
        let in_cluster: BTreeSet<String> = members.iter().map(|m| group(m)).collect();
        if in_cluster.len() > 1 {
            misplaced += members.len();
        }
    }
    let report: Vec<String> = clusters.values().map(|m| m.iter().cloned().collect::<Vec<_>>().join(" ")).collect();
    eprintln!(
        "{} clusters for {} groups, {misplaced} misplaced:\n  {}",
        clusters.len(),
        groups.len(),
        report.join("\n  ")
    );
    assert_eq!(misplaced, 0, "{report:#?}");
    assert_eq!(clusters.len(), groups.len(), "host noise split a group: {report:#?}");
}

#[test]
fn real_debian_machines_cluster_by_environment_with_none_misplaced() {
    let roots = roots();
    assert_eq!(roots.len(), 18, "six groups of three machines");
    assert_clustered(&keys(&roots), |m| group_of(Path::new(m)));
}

#[test]
fn a_profile_discovered_from_a_trace_of_mariadbd_and_refined_over_three_hosts_places_none_wrongly() {
    // SAFETY: geteuid reads the process's own credentials and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "tracing inside a machine root needs chroot, so root");
    let roots = roots();
    let dir = tempfile::tempdir().unwrap();
    let (draft, refined) = (dir.path().join("draft.toml"), dir.path().join("refined.toml"));
    let root = |name: &str| roots.iter().find(|r| r.ends_with(name)).unwrap().clone();
    let mirage = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mirage")).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    mirage(&[
        &os("profile"),
        &os("discover"),
        &os("--app"),
        &os("mariadb"),
        &os("--root"),
        root("base-1").as_os_str(),
        &os("--out"),
        draft.as_os_str(),
        &os("--"),
        &os("/usr/sbin/mariadbd"),
        &os("--help"),
        &os("--verbose"),
    ]);
    let text = std::fs::read_to_string(&draft).unwrap();
    for seen in [
        "/usr/sbin/mariadbd",
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/etc/mysql/my.cnf",
        "/etc/mysql/mariadb.conf.d/*.cnf",
    ] {
        assert!(text.contains(&format!("\"{seen}\"")), "the draft lacks {seen}:\n{text}");
    }
    let report = mirage(&[
        &os("profile"),
        &os("refine"),
        &os("--profile"),
        draft.as_os_str(),
        &os("--out"),
        refined.as_os_str(),
        &os("--root"),
        root("base-1").as_os_str(),
        &os("--root"),
        root("base-2").as_os_str(),
        &os("--root"),
        root("base-3").as_os_str(),
    ]);
    assert!(report.contains("with the proposals: 1 cluster(s)"), "{report}");
    let profile = Profile::parse(&std::fs::read_to_string(&refined).unwrap()).unwrap();
    let keys: BTreeMap<String, ClusterKey> = roots
        .iter()
        .map(|r| {
            (
                r.file_name().unwrap().to_string_lossy().into_owned(),
                scan(&profile, r, None).unwrap().fingerprint.cluster_key(),
            )
        })
        .collect();
    // A profile of MariaDB alone: the groups that differ in Apache and PHP only
    // present MariaDB one environment.
    assert_clustered(&keys, |m| match group_of(Path::new(m)).as_str() {
        g @ ("option" | "libssl") => g.to_string(),
        _ => "mariadb as installed".to_string(),
    });
}

#[test]
fn each_real_difference_is_seen_by_the_profile_it_concerns() {
    let keys = keys(&roots());
    let differs = |group: &str| -> Vec<&str> {
        let (base, other) = (&keys["base-1"], &keys[&format!("{group}-1")]);
        PROFILES.iter().enumerate().filter(|(i, _)| base[*i] != other[*i]).map(|(_, p)| *p).collect()
    };
    // The server option sits in mariadb.conf.d/50-server.cnf, reached from my.cnf
    // through /etc/alternatives and an !includedir.
    assert_eq!(differs("option"), vec!["mariadb"]);
    assert_eq!(differs("libssl"), vec!["mariadb", "apache2", "php"]);
    // Apache's PHP loses mysqli; MariaDB's clients lose a driver.
    assert_eq!(differs("no-mysqli"), vec!["mariadb", "php"]);
    assert_eq!(differs("rewrite"), vec!["apache2"]);
    assert_eq!(differs("no-apache"), vec!["mariadb", "apache2", "php"]);
}

/// ImageElves' per-upgrade clusters on real trees: a release of PHP's MySQL driver,
/// scoped with php.toml's `mysql-driver`, is staged over the clusters of what it
/// touches. Machines that differ only in libssl's build or in MariaDB and Apache share
/// its cluster; a machine without mysqli does not.
#[test]
fn a_release_of_phps_mysql_driver_is_staged_over_fewer_clusters_with_none_misplaced() {
    let php = profile("php");
    let scope = php.scope("mysql-driver").expect("php.toml declares mysql-driver");
    let (mut full, mut scoped) = (BTreeMap::new(), BTreeMap::new());
    for root in roots() {
        let fp = scan(&php, &root, None).unwrap().fingerprint;
        let name = root.file_name().unwrap().to_string_lossy().into_owned();
        full.insert(name.clone(), fp.cluster_key());
        scoped.insert(name, fp.cluster_key_for(Some(scope)).unwrap());
    }
    let count = |keys: &BTreeMap<String, ClusterKey>| keys.values().collect::<BTreeSet<_>>().len();
    let (full_clusters, scoped_clusters) = (count(&full), count(&scoped));
    eprintln!("php: {full_clusters} full clusters, {scoped_clusters} for a release of the MySQL driver");
    // What the driver meets: whether Apache's PHP loads mysqli, and whether there is an
    // Apache PHP at all (its php.ini and conf.d).
    assert_clustered(&scoped, |m| match group_of(Path::new(m)).as_str() {
        g @ ("no-mysqli" | "no-apache") => g.to_string(),
        _ => "driver-as-base".to_string(),
    });
    assert!(scoped_clusters < full_clusters);
    // Projection only merges: machines of one full cluster share the scoped one.
    for (a, ka) in &full {
        for (b, kb) in &full {
            if ka == kb {
                assert_eq!(scoped[a], scoped[b], "{a} and {b}");
            }
        }
    }
}
