use super::*;
use proptest::prelude::*;

fn ident(s: &str) -> String {
    s.to_string()
}

fn source(files: &[(&str, &str)]) -> MemorySource {
    let mut s = MemorySource::default();
    for (p, t) in files {
        s.insert(p, t);
    }
    s
}

fn settings(chain: &ConfigChain) -> Vec<(String, String, String)> {
    chain
        .settings
        .iter()
        .map(|s| (s.setting.key.clone(), s.setting.value.clone(), chain.files[s.file].clone()))
        .collect()
}

fn kv(chain: &ConfigChain) -> Vec<(String, String)> {
    chain.settings.iter().map(|s| (s.setting.key.clone(), s.setting.value.clone())).collect()
}

#[test]
fn mariadb_includedir_reads_only_cnf_files_in_name_order_each_starting_outside_a_group() {
    let mut s = source(&[
        ("/etc/mysql/mariadb.cnf", "[client-server]\nsocket = /run/mysqld/mysqld.sock\n!includedir /etc/mysql/conf.d/\n!includedir /etc/mysql/mariadb.conf.d/\n"),
        ("/etc/mysql/conf.d/mysqldump.cnf", "[mysqldump]\nquick\n"),
        ("/etc/mysql/mariadb.conf.d/60-galera.cnf", "[galera]\nwsrep_on = OFF\n"),
        ("/etc/mysql/mariadb.conf.d/50-server.cnf", "[mysqld]\nmax_connections = 100\n!include /etc/mysql/local.cnf\nport = 3306\n"),
        ("/etc/mysql/mariadb.conf.d/README", "not read"),
        ("/etc/mysql/mariadb.conf.d/99-orphan.cnf", "orphan = 1\n"),
        ("/etc/mysql/local.cnf", "[mysqld]\nmax_connections = 500\n"),
    ]);
    let chain = resolve(ConfigFormat::Ini, "/etc/mysql/mariadb.cnf", &[], &mut s, &ident);
    assert_eq!(
        settings(&chain),
        vec![
            ("client-server.socket".into(), "/run/mysqld/mysqld.sock".into(), "/etc/mysql/mariadb.cnf".into()),
            ("mysqldump.quick".into(), "".into(), "/etc/mysql/conf.d/mysqldump.cnf".into()),
            ("mysqld.max_connections".into(), "100".into(), "/etc/mysql/mariadb.conf.d/50-server.cnf".into()),
            ("mysqld.max_connections".into(), "500".into(), "/etc/mysql/local.cnf".into()),
            // Back in 50-server.cnf after the include: its own group again.
            ("mysqld.port".into(), "3306".into(), "/etc/mysql/mariadb.conf.d/50-server.cnf".into()),
            ("galera.wsrep_on".into(), "OFF".into(), "/etc/mysql/mariadb.conf.d/60-galera.cnf".into()),
            // A file starts outside any group, whatever the last file left open.
            ("orphan".into(), "1".into(), "/etc/mysql/mariadb.conf.d/99-orphan.cnf".into()),
        ]
    );
    assert!(chain.missing.is_empty() && chain.cuts.is_empty());
}

#[test]
fn an_include_naming_nothing_is_missing_not_an_error() {
    let mut s = source(&[("/etc/my.cnf", "!include /etc/none.cnf\n!includedir /etc/empty.d\n[mysqld]\nport=1\n")]);
    let chain = resolve(ConfigFormat::Ini, "/etc/my.cnf", &[], &mut s, &ident);
    assert_eq!(kv(&chain), vec![("mysqld.port".into(), "1".into())]);
    // An empty directory reads as nothing; a named file that is not there is missing.
    assert_eq!(chain.missing, vec![Missing { directive: "!include".into(), target: "/etc/none.cnf".into() }]);
}

#[test]
fn apache_includes_are_relative_to_server_root_keep_their_section_and_expand_wildcards() {
    let mut s = source(&[
        (
            "/etc/apache2/apache2.conf",
            "IncludeOptional mods-enabled/*.load\nInclude ports.conf\n<VirtualHost *:80>\n  Include \"site-extra/*/*.conf\"\n  ServerName a\n</VirtualHost>\nIncludeOptional conf-enabled/*.conf\nInclude missing.conf\nErrorLog /var/log/x\n",
        ),
        ("/etc/apache2/mods-enabled/php8.2.load", "LoadModule php_module /usr/lib/apache2/modules/libphp8.2.so\n"),
        ("/etc/apache2/mods-enabled/alias.load", "LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so\n"),
        ("/etc/apache2/mods-enabled/alias.conf", "not a .load"),
        ("/etc/apache2/mods-enabled/.hidden.load", "LoadModule hidden /x\n"),
        ("/etc/apache2/ports.conf", "Listen 80\n"),
        ("/etc/apache2/site-extra/a/x.conf", "<Directory /var/www>\nOptions None\n"),
        ("/etc/apache2/site-extra/b/y.conf", "Header set X 1\n"),
    ]);
    let chain = resolve(ConfigFormat::Apache, "/etc/apache2/apache2.conf", &[], &mut s, &ident);
    assert_eq!(
        kv(&chain),
        vec![
            ("loadmodule".into(), "alias_module /usr/lib/apache2/modules/mod_alias.so".into()),
            ("loadmodule".into(), "php_module /usr/lib/apache2/modules/libphp8.2.so".into()),
            ("listen".into(), "80".into()),
            ("virtualhost[*:80]/directory[/var/www]/options".into(), "None".into()),
            // The unclosed <Directory> of x.conf ends with x.conf.
            ("virtualhost[*:80]/header".into(), "set X 1".into()),
            ("virtualhost[*:80]/servername".into(), "a".into()),
            ("errorlog".into(), "/var/log/x".into()),
        ]
    );
    assert_eq!(
        chain.missing,
        vec![Missing { directive: "include".into(), target: "/etc/apache2/missing.conf".into() }]
    );
}

#[test]
fn apache_server_root_moves_relative_includes_and_a_directory_is_read_whole() {
    let mut s = source(&[
        ("/srv/httpd.conf", "ServerRoot \"/opt/web\"\nInclude conf.d\n"),
        ("/opt/web/conf.d/b.conf", "B 2\n"),
        ("/opt/web/conf.d/a.conf", "A 1\n"),
        ("/opt/web/conf.d/sub/c.conf", "C 3\n"),
    ]);
    let chain = resolve(ConfigFormat::Apache, "/srv/httpd.conf", &[], &mut s, &ident);
    assert_eq!(
        kv(&chain),
        vec![
            ("serverroot".into(), "\"/opt/web\"".into()),
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("c".into(), "3".into()),
        ]
    );
}

#[test]
fn php_reads_its_scan_directory_after_php_ini_in_name_order() {
    let mut s = source(&[
        ("/etc/php/8.2/apache2/php.ini", "[PHP]\nmemory_limit = 128M\n[PATH=/var/www/a]\nmemory_limit = 1G\n"),
        ("/etc/php/8.2/apache2/conf.d/20-mysqli.ini", "extension=mysqli.so\n"),
        ("/etc/php/8.2/apache2/conf.d/10-opcache.ini", "zend_extension=opcache.so\n"),
        ("/etc/php/8.2/apache2/conf.d/99-local.ini", "[PHP]\nmemory_limit = 512M\n"),
    ]);
    let chain = resolve(ConfigFormat::Php, "/etc/php/8.2/apache2/php.ini", &["conf.d/*.ini".into()], &mut s, &ident);
    assert_eq!(
        kv(&chain),
        vec![
            // `[PHP]` is a heading; `[PATH=...]` scopes its settings.
            ("memory_limit".into(), "128M".into()),
            ("PATH=/var/www/a.memory_limit".into(), "1G".into()),
            ("zend_extension".into(), "opcache.so".into()),
            ("extension".into(), "mysqli.so".into()),
            ("memory_limit".into(), "512M".into()),
        ]
    );
}

#[test]
fn sshd_include_is_followed() {
    let mut s = source(&[
        ("/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n"),
        ("/etc/ssh/sshd_config.d/50-cloud.conf", "PasswordAuthentication no\n"),
    ]);
    let chain = resolve(ConfigFormat::KeyValue, "/etc/ssh/sshd_config", &[], &mut s, &ident);
    assert_eq!(kv(&chain), vec![("PasswordAuthentication".into(), "no".into()), ("Port".into(), "22".into())]);
}

#[test]
fn an_include_cycle_is_cut_and_reported_never_followed() {
    let mut s = source(&[
        ("/etc/a.cnf", "[x]\na=1\n!include /etc/b.cnf\n"),
        ("/etc/b.cnf", "[x]\nb=1\n!include /etc/a.cnf\n!include /etc/b.cnf\n"),
    ]);
    let chain = resolve(ConfigFormat::Ini, "/etc/a.cnf", &[], &mut s, &ident);
    assert_eq!(kv(&chain), vec![("x.a".into(), "1".into()), ("x.b".into(), "1".into())]);
    assert_eq!(
        chain.cuts,
        vec![
            CutAt { path: "/etc/a.cnf".into(), cut: Cut::Cycle },
            CutAt { path: "/etc/b.cnf".into(), cut: Cut::Cycle }
        ]
    );
    assert!(chain.missing.is_empty(), "a cut include is not a missing one");
}

#[test]
fn a_wildcard_over_a_hundred_thousand_files_is_cut_without_reading_them() {
    let mut s = source(&[("/etc/apache2/apache2.conf", "IncludeOptional /etc/apache2/huge/*.conf\nListen 80\n")]);
    for i in 0..100_000 {
        s.insert(&format!("/etc/apache2/huge/{i:06}.conf"), "X 1\n");
    }
    let chain = resolve(ConfigFormat::Apache, "/etc/apache2/apache2.conf", &[], &mut s, &ident);
    assert_eq!(chain.files, vec!["/etc/apache2/apache2.conf".to_string()]);
    assert_eq!(chain.cuts, vec![CutAt { path: "/etc/apache2/huge".into(), cut: Cut::TooManyEntries }]);
    assert_eq!(kv(&chain), vec![("listen".into(), "80".into())]);
}

#[test]
fn file_byte_setting_and_depth_limits_each_cut_and_report() {
    let limits = Limits { depth: 3, files: 4, bytes: 1000, file_bytes: 100, dir_entries: 10, settings: 5 };
    let run = |files: &[(&str, &str)]| {
        let mut s = source(files);
        resolve_with(limits, ConfigFormat::Ini, "/e.cnf", &[], &mut s, &ident)
    };
    let big = "x".repeat(101);
    let chain = run(&[("/e.cnf", "!include /big.cnf\na=1\n"), ("/big.cnf", &big)]);
    assert_eq!(chain.cuts, vec![CutAt { path: "/big.cnf".into(), cut: Cut::FileTooLarge }]);
    assert_eq!(kv(&chain), vec![("a".into(), "1".into())]);

    let chain = run(&[
        ("/e.cnf", "!include /1.cnf\n"),
        ("/1.cnf", "!include /2.cnf\n"),
        ("/2.cnf", "!include /3.cnf\n"),
        ("/3.cnf", "!include /4.cnf\n"),
        ("/4.cnf", "deep=1\n"),
    ]);
    assert_eq!(chain.cuts, vec![CutAt { path: "/4.cnf".into(), cut: Cut::TooDeep }]);

    let chain = run(&[("/e.cnf", "a=1\nb=1\nc=1\nd=1\ne=1\nf=1\ng=1\n")]);
    assert_eq!(chain.settings.len(), 5);
    assert_eq!(chain.cuts, vec![CutAt { path: "/e.cnf".into(), cut: Cut::TooManySettings }]);

    let chain = run(&[
        ("/e.cnf", "!includedir /d\n"),
        ("/d/1.cnf", ""),
        ("/d/2.cnf", ""),
        ("/d/3.cnf", ""),
        ("/d/4.cnf", ""),
        ("/d/5.cnf", ""),
    ]);
    assert_eq!(chain.files.len(), 4);
    assert_eq!(chain.cuts, vec![CutAt { path: "/d/4.cnf".into(), cut: Cut::TooManyFiles }]);
}

#[test]
fn an_unreadable_include_is_a_reported_cut() {
    let mut s = source(&[("/etc/my.cnf", "!include /etc/secret.cnf\n[mysqld]\nport=1\n")]);
    s.refuse("/etc/secret.cnf", Cut::Unreadable);
    let chain = resolve(ConfigFormat::Ini, "/etc/my.cnf", &[], &mut s, &ident);
    assert_eq!(chain.cuts, vec![CutAt { path: "/etc/secret.cnf".into(), cut: Cut::Unreadable }]);
    assert_eq!(kv(&chain), vec![("mysqld.port".into(), "1".into())]);
}

#[test]
fn relative_paths_resolve_against_the_including_file_and_never_climb_above_root() {
    assert_eq!(absolute("conf.d/x.cnf", "/etc/mysql"), "/etc/mysql/conf.d/x.cnf");
    assert_eq!(absolute("../../../../x", "/etc/mysql"), "/x");
    assert_eq!(absolute("/a/./b/../c", "/ignored"), "/a/c");
    assert_eq!(parent("/etc/my.cnf"), "/etc");
    assert_eq!(parent("/my.cnf"), "/");
}

proptest! {
    /// Whatever the include graph (cycles, self-includes, diamonds, missing targets),
    /// reading ends, reads no more files than the limit, and every file read is one
    /// the source has.
    #[test]
    fn any_include_graph_is_read_within_the_limits(
        edges in proptest::collection::vec(proptest::collection::vec(0usize..12, 0..5), 1..12),
        depth in 1usize..6,
        files in 1usize..8,
    ) {
        let mut s = MemorySource::default();
        for (i, targets) in edges.iter().enumerate() {
            let mut text = format!("[f{i}]\nk = {i}\n");
            for t in targets {
                text.push_str(&format!("!include /c/{t}.cnf\n"));
            }
            s.insert(&format!("/c/{i}.cnf"), &text);
        }
        let limits = Limits { depth, files, ..Limits::DEFAULT };
        let chain = resolve_with(limits, ConfigFormat::Ini, "/c/0.cnf", &[], &mut s, &ident);
        prop_assert!(chain.files.len() <= files);
        let known = |f: &String| f.trim_start_matches("/c/").trim_end_matches(".cnf").parse::<usize>().unwrap() < edges.len();
        prop_assert!(chain.files.iter().all(known));
        prop_assert_eq!(chain.settings.len(), chain.files.len());
        for m in &chain.missing {
            let n: usize = m.target.trim_start_matches("/c/").trim_end_matches(".cnf").parse().unwrap();
            prop_assert!(n >= edges.len());
        }
    }
}
