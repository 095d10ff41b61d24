use super::*;
use proptest::prelude::*;

const PROFILE: &str = r#"
app = "mysql"
ignore_keys = ["*.pid-file"]

[[resource]]
class = "executable"
include = ["/usr/sbin/mysqld"]

[[resource]]
class = "library"
include = ["/usr/lib/x86_64-linux-gnu/libmysqlclient.so.*"]

[[resource]]
class = "config"
include = ["/etc/mysql/my.cnf", "/etc/mysql/conf.d/*.cnf"]
format = "ini"
keys = "mysql"

[[resource]]
class = "log"
include = ["/var/log/mysql/*.log"]

[[resource]]
class = "env"
vars = ["TZ", "HOSTNAME"]
"#;

/// A simulated machine: what the scanner would hand the builder.
#[derive(Clone, Debug)]
struct Machine {
    hostname: String,
    ip: [u8; 4],
    settings: Vec<(String, String)>,
    order: Vec<usize>,
    comments: Vec<bool>,
    lib: Option<Vec<u8>>,
    log_text: String,
}

impl Machine {
    fn config_text(&self) -> String {
        let mut out = String::from("[mysqld]\n");
        out.push_str(&format!("bind-address = {}.{}.{}.{}\n", self.ip[0], self.ip[1], self.ip[2], self.ip[3]));
        out.push_str(&format!("report_host = {}\n", self.hostname));
        out.push_str(&format!("pid-file = /run/mysqld/{}.pid\n", self.hostname));
        for (n, &i) in self.order.iter().enumerate() {
            if self.comments.get(n).copied().unwrap_or(false) {
                out.push_str("   # a comment that differs per host\n\n");
            }
            let (k, v) = &self.settings[i];
            out.push_str(&format!("{k}   =  {v}\n"));
        }
        out
    }

    fn fingerprint(&self, profile: &Profile) -> Fingerprint {
        let mut b = FingerprintBuilder::new(profile, HostContext::new(Some(&self.hostname), None));
        b.add_matches(0, 0, vec![("/usr/sbin/mysqld".into(), Observed::Digest(Digest::of(b"mysqld 8.0")))]);
        let lib = self
            .lib
            .as_ref()
            .map(|l| ("/usr/lib/x86_64-linux-gnu/libmysqlclient.so.21".to_string(), Observed::Digest(Digest::of(l))));
        b.add_matches(1, 0, lib.into_iter().collect());
        let mut source = chain::MemorySource::default();
        source.insert("/etc/mysql/my.cnf", &self.config_text());
        b.add_config_files(2, vec![vec!["/etc/mysql/my.cnf".into()], vec![]], &mut source);
        // Log contents are never read for presence rules; the text is here to show it.
        let _ = &self.log_text;
        b.add_matches(3, 0, vec![("/var/log/mysql/error.log".into(), Observed::Seen)]);
        let host = self.hostname.clone();
        b.add_env(4, &move |v| match v {
            "TZ" => Some("UTC".into()),
            "HOSTNAME" => Some(host.clone()),
            _ => None,
        });
        b.finish()
    }
}

fn settings() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map("[a-z]{3,10}(_[a-z]{2,6})?", "[a-z0-9]{1,8}", 1..12)
        .prop_map(|m| m.into_iter().collect())
}

fn machine_pair() -> impl Strategy<Value = (Machine, Machine)> {
    (
        settings(),
        "[a-z]{2,8}[0-9]{0,3}",
        "[a-z]{2,8}[0-9]{0,3}",
        any::<[u8; 3]>(),
        any::<[u8; 3]>(),
        ".{0,50}",
        ".{0,50}",
        any::<u64>(),
    )
        .prop_flat_map(|(settings, h1, h2, ip1, ip2, log1, log2, seed)| {
            let n = settings.len();
            let perm = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let comments = proptest::collection::vec(any::<bool>(), n..=n);
            (Just(settings), Just((h1, h2, ip1, ip2, log1, log2, seed)), perm.clone(), perm, comments.clone(), comments)
        })
        .prop_map(|(settings, (h1, h2, ip1, ip2, log1, log2, _), o1, o2, c1, c2)| {
            let lib = Some(b"libmysqlclient 21".to_vec());
            let a = Machine {
                hostname: h1,
                ip: [10, ip1[0], ip1[1], ip1[2]],
                settings: settings.clone(),
                order: o1,
                comments: c1,
                lib: lib.clone(),
                log_text: log1,
            };
            let b = Machine {
                hostname: h2,
                ip: [192, ip2[0], ip2[1], ip2[2].max(1)],
                settings,
                order: o2,
                comments: c2,
                lib,
                log_text: log2,
            };
            (a, b)
        })
}

fn profile() -> Profile {
    Profile::parse(PROFILE).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn host_noise_does_not_split_clusters((a, b) in machine_pair()) {
        // Hostnames that collide with a setting value would be (rightly) normalized on
        // one host only; such pairs say nothing about noise.
        prop_assume!(a.settings.iter().all(|(_, v)| *v != a.hostname && *v != b.hostname));
        let p = profile();
        let (fa, fb) = (a.fingerprint(&p), b.fingerprint(&p));
        prop_assert_eq!(fa.distance(&fb), 0);
        prop_assert_eq!(fa.cluster_key(), fb.cluster_key());
    }

    #[test]
    fn changed_value_splits_clusters((a, _) in machine_pair(), which in any::<prop::sample::Index>()) {
        let p = profile();
        let mut b = a.clone();
        let i = which.index(b.settings.len());
        b.settings[i].1.push('x');
        prop_assert_ne!(a.fingerprint(&p).cluster_key(), b.fingerprint(&p).cluster_key());
        prop_assert_eq!(a.fingerprint(&p).distance(&b.fingerprint(&p)), 1);
    }

    #[test]
    fn changed_or_missing_library_splits_clusters((a, _) in machine_pair(), byte in any::<u8>()) {
        let p = profile();
        let mut changed = a.clone();
        changed.lib.as_mut().unwrap().push(byte);
        prop_assert_ne!(a.fingerprint(&p).cluster_key(), changed.fingerprint(&p).cluster_key());
        let mut missing = a.clone();
        missing.lib = None;
        let fm = missing.fingerprint(&p);
        prop_assert_ne!(a.fingerprint(&p).cluster_key(), fm.cluster_key());
        prop_assert!(fm.items().iter().any(|i| i.class == ResourceClass::Library && i.value == ItemValue::Absent));
    }

    #[test]
    fn fingerprints_roundtrip_through_signed_envelopes((a, _) in machine_pair()) {
        let fp = a.fingerprint(&profile());
        let kp = crate::Keypair::from_secret_bytes(&[1; 32]);
        let env = crate::Envelope::sign(&kp, &fp, crate::UnixMillis(1)).unwrap();
        let back = crate::Envelope::from_bytes(&env.to_bytes().unwrap()).unwrap().verify::<Fingerprint>().unwrap();
        prop_assert_eq!(back.payload().cluster_key(), fp.cluster_key());
    }
}

#[test]
fn host_specific_settings_are_normalized_in_items() {
    let p = profile();
    let m = Machine {
        hostname: "db7".into(),
        ip: [10, 0, 0, 7],
        settings: vec![("port".into(), "3306".into())],
        order: vec![0],
        comments: vec![false],
        lib: Some(vec![1]),
        log_text: String::new(),
    };
    let fp = m.fingerprint(&p);
    let text = |key: &str| fp.items().iter().find(|i| i.key == key).map(|i| i.value.clone());
    assert_eq!(text("mysqld.bind-address"), Some(ItemValue::Text("<ip>".into())));
    assert_eq!(text("mysqld.report-host"), Some(ItemValue::Text("<host-specific>".into())));
    assert_eq!(text("mysqld.pid-file"), None, "ignored by the profile");
    assert_eq!(text("HOSTNAME"), Some(ItemValue::Text("<host-specific>".into())));
    assert_eq!(text("TZ"), Some(ItemValue::Text("UTC".into())));
    // The conf.d pattern matched nothing: recorded as absent, so it is visible in diffs.
    assert!(fp.items().iter().any(|i| i.path == "/etc/mysql/conf.d/*.cnf" && i.value == ItemValue::Absent));
}

#[test]
fn profile_revision_changes_key() {
    let p1 = profile();
    let p2 = Profile::parse(&PROFILE.replace("\"TZ\", ", "\"TZ\", \"LANG\", ")).unwrap();
    let f1 = FingerprintBuilder::new(&p1, HostContext::default()).finish();
    let f2 = FingerprintBuilder::new(&p2, HostContext::default()).finish();
    assert_ne!(f1.cluster_key(), f2.cluster_key());
    assert_eq!(f1.distance(&f2), 1);
}

#[test]
fn unsorted_items_from_the_wire_are_rejected() {
    let mut fp = Fingerprint::new(
        "x".into(),
        Digest([0; 32]),
        vec![
            Item { class: ResourceClass::Library, path: "/a".into(), key: String::new(), value: ItemValue::Present },
            Item { class: ResourceClass::Library, path: "/b".into(), key: String::new(), value: ItemValue::Present },
        ],
    );
    assert!(fp.validate().is_ok());
    fp.items.reverse();
    assert!(fp.validate().is_err());
}

/// A MariaDB-like machine: `my.cnf` includes a directory, and where a setting sits in
/// the chain is up to each host.
fn chained_fingerprint(profile: &Profile, files: &[(&str, &str)]) -> (Fingerprint, Explanation) {
    let mut source = chain::MemorySource::default();
    for (p, t) in files {
        source.insert(p, t);
    }
    let mut b = FingerprintBuilder::new(profile, HostContext::new(Some("db1"), None));
    let matched = profile.rules()[0]
        .patterns()
        .iter()
        .map(|p| files.iter().map(|f| f.0.to_string()).filter(|f| p.matches(f)).collect())
        .collect();
    b.add_config_files(0, matched, &mut source);
    b.finish_explained()
}

const CHAINED: &str = r#"
app = "mariadb"
[[resource]]
class = "config"
include = ["/etc/mysql/my.cnf", "/etc/mysql/conf.d/*.cnf"]
format = "ini"
keys = "mysql"
"#;

#[test]
fn where_a_setting_sits_in_the_chain_does_not_split_but_its_value_does() {
    let profile = Profile::parse(CHAINED).unwrap();
    let my = "[mysqld]\nport = 3306\n!includedir /etc/mysql/conf.d\n";
    let (a, explained) = chained_fingerprint(
        &profile,
        &[
            ("/etc/mysql/my.cnf", my),
            ("/etc/mysql/conf.d/50-server.cnf", "[mysqld]\nmax_connections = 100\ninnodb_buffer_pool_size = 1G\n"),
        ],
    );
    // The same effective settings, one moved into a later file and one overridden
    // there with the value it already had.
    let (b, _) = chained_fingerprint(
        &profile,
        &[
            ("/etc/mysql/my.cnf", my),
            ("/etc/mysql/conf.d/50-server.cnf", "[mysqld]\nmax-connections = 10\n"),
            ("/etc/mysql/conf.d/99-local.cnf", "[mysqld]\nmax_connections = 100\ninnodb_buffer_pool_size = 1G\n"),
        ],
    );
    let (c, _) = chained_fingerprint(
        &profile,
        &[
            ("/etc/mysql/my.cnf", my),
            ("/etc/mysql/conf.d/50-server.cnf", "[mysqld]\nmax_connections = 100\ninnodb_buffer_pool_size = 2G\n"),
        ],
    );
    assert_eq!(a.cluster_key(), b.cluster_key(), "{:?}\n{:?}", a.items(), b.items());
    assert_ne!(a.cluster_key(), c.cluster_key());
    // Each setting counted once, as an item of the entry, though the profile also
    // names the included files.
    let keys: Vec<&str> = a.items().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, vec!["mysqld.innodb-buffer-pool-size", "mysqld.max-connections", "mysqld.port"]);
    assert!(a.items().iter().all(|i| i.path == "/etc/mysql/my.cnf"));
    let from = explained.origins.iter().find(|o| o.key == "mysqld.max-connections").unwrap();
    assert_eq!(from.file, "/etc/mysql/conf.d/50-server.cnf");
}

#[test]
fn php_extensions_accumulate_and_disabling_one_splits() {
    let profile = Profile::parse(
        "app = \"php\"\n[[resource]]\nclass = \"config\"\ninclude = [\"/etc/php/8.2/apache2/php.ini\"]\nformat = \"php\"\nreads_after = [\"conf.d/*.ini\"]\n",
    )
    .unwrap();
    let ini = ("/etc/php/8.2/apache2/php.ini", "[PHP]\nmemory_limit = 128M\n");
    let (both, _) = chained_fingerprint(
        &profile,
        &[
            ini,
            ("/etc/php/8.2/apache2/conf.d/10-opcache.ini", "zend_extension=opcache.so\n"),
            ("/etc/php/8.2/apache2/conf.d/20-mysqli.ini", "; priority=20\nextension=mysqli.so\n"),
            ("/etc/php/8.2/apache2/conf.d/20-pdo_mysql.ini", "extension=pdo_mysql.so\n"),
        ],
    );
    let (one, _) = chained_fingerprint(
        &profile,
        &[
            ini,
            ("/etc/php/8.2/apache2/conf.d/10-opcache.ini", "zend_extension=opcache.so\n"),
            ("/etc/php/8.2/apache2/conf.d/20-pdo_mysql.ini", "extension=pdo_mysql.so\n"),
        ],
    );
    let extensions = |f: &Fingerprint| f.items().iter().filter(|i| i.key == "extension").count();
    assert_eq!(extensions(&both), 2);
    assert_eq!(extensions(&one), 1);
    assert_ne!(both.cluster_key(), one.cluster_key());
}

#[test]
fn a_cut_chain_never_shares_a_cluster_with_a_whole_one() {
    let profile = Profile::parse(CHAINED).unwrap();
    let whole = chained_fingerprint(
        &profile,
        &[("/etc/mysql/my.cnf", "!include /etc/mysql/x.cnf\n"), ("/etc/mysql/x.cnf", "a=1\n")],
    )
    .0;
    let mut source = chain::MemorySource::default();
    source.insert("/etc/mysql/my.cnf", "!include /etc/mysql/x.cnf\n");
    source.refuse("/etc/mysql/x.cnf", chain::Cut::Unreadable);
    let mut b = FingerprintBuilder::new(&profile, HostContext::default());
    b.add_config_files(0, vec![vec!["/etc/mysql/my.cnf".into()], vec![]], &mut source);
    let (cut, explained) = b.finish_explained();
    assert_ne!(whole.cluster_key(), cut.cluster_key());
    assert!(cut.items().iter().any(|i| i.value == ItemValue::Cut(chain::Cut::Unreadable)));
    assert_eq!(explained.cuts.len(), 1);
}

#[test]
fn an_option_moved_between_groups_the_server_reads_alike_is_the_same_option() {
    let profile = Profile::parse(
        "app = \"mariadb\"\n[[resource]]\nclass = \"config\"\ninclude = [\"/etc/mysql/my.cnf\"]\nformat = \"ini\"\nkeys = \"mysql\"\n[resource.section_groups]\nserver = [\"mysqld\", \"server\", \"mariadbd\", \"mariadb-*\"]\n",
    )
    .unwrap();
    let key = |text: &str| chained_fingerprint(&profile, &[("/etc/mysql/my.cnf", text)]).0;
    let mysqld = key("[mysqld]\nmax_connections = 100\n");
    assert_eq!(mysqld.cluster_key(), key("[mariadbd]\nmax-connections = 100\n").cluster_key());
    assert_eq!(mysqld.cluster_key(), key("[mariadb-10.11]\nmax_connections = 100\n").cluster_key());
    assert_eq!(mysqld.items()[0].key, "server.max-connections");
    // Across the group the last value still wins, in reading order.
    assert_eq!(
        mysqld.cluster_key(),
        key("[mariadbd]\nmax_connections = 5\n[mysqld]\nmax_connections = 100\n").cluster_key()
    );
    // A group the server does not read stays apart.
    assert_ne!(mysqld.cluster_key(), key("[client]\nmax_connections = 100\n").cluster_key());
}
