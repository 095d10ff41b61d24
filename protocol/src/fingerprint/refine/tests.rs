use super::*;
use crate::fingerprint::{chain, FingerprintBuilder, HostContext, Observed};
use crate::Digest;

const PROFILE: &str = r#"
# A draft, as discover writes one.
app = "web"

[[resource]]
class = "library"
include = ["/usr/lib/libssl.so.3"]

[[resource]]
class = "config"
include = ["/etc/web/web.ini"]
format = "ini"

[[resource]]
class = "data"
include = ["/var/www/**"]
contribute = "digest"

[[resource]]
class = "temp"
include = ["/tmp/web-cache"]

[[resource]]
class = "env"
vars = ["TZ", "SESSION_ID"]
"#;

struct Host {
    ssl: &'static [u8],
    config: String,
    pages: Vec<(String, String)>,
    cache: bool,
    session: String,
}

fn fingerprint(profile: &Profile, h: &Host) -> Fingerprint {
    let mut b = FingerprintBuilder::new(profile, HostContext::default());
    b.add_matches(0, 0, vec![("/usr/lib/libssl.so.3".into(), Observed::Digest(Digest::of(h.ssl)))]);
    let mut source = chain::MemorySource::default();
    source.insert("/etc/web/web.ini", &h.config);
    b.add_config_files(1, vec![vec!["/etc/web/web.ini".into()]], &mut source);
    // As the scanner does, excluded files are never matched.
    let pages = h
        .pages
        .iter()
        .filter(|(p, _)| !profile.rules()[2].is_excluded(p))
        .map(|(p, t)| (p.clone(), Observed::Digest(Digest::of(t.as_bytes()))))
        .collect();
    b.add_matches(2, 0, pages);
    b.add_matches(3, 0, if h.cache { vec![("/tmp/web-cache".into(), Observed::Seen)] } else { vec![] });
    let session = h.session.clone();
    b.add_env(4, &|v| match v {
        "TZ" => Some("UTC".into()),
        "SESSION_ID" => Some(session.clone()),
        _ => None,
    });
    b.finish()
}

fn host(n: usize) -> Host {
    Host {
        ssl: b"libssl 3.0.20",
        config: format!("[web]\nworkers = 4\ninstance = web-{n}\n"),
        pages: vec![
            ("/var/www/app.php".into(), "<?php run();".into()),
            ("/var/www/index.html".into(), format!("<h1>host {n}</h1>")),
            ("/var/www/about.html".into(), format!("<p>served by {n}</p>")),
            (format!("/var/www/upload{n}.tmp"), "x".into()),
        ],
        cache: n.is_multiple_of(2),
        session: format!("s{n}x{}", n * 7),
    }
}

#[test]
fn noise_that_differs_on_every_machine_is_proposed_away_with_reasons_and_real_code_is_not() {
    let profile = Profile::parse(PROFILE).unwrap();
    let mut hosts: Vec<Host> = (1..=3).map(host).collect();
    hosts[2].ssl = b"libssl 3.0.22";
    let fps: Vec<Fingerprint> = hosts.iter().map(|h| fingerprint(&profile, h)).collect();
    let r = refine(&profile, &fps).unwrap();
    let changes: Vec<&Change> = r.proposals.iter().map(|p| &p.change).collect();
    assert_eq!(
        changes,
        vec![
            &Change::IgnoreKey { rule: 1, key: "web.instance".into() },
            &Change::DropPattern { rule: 3, pattern: "/tmp/web-cache".into() },
            &Change::DropVar { rule: 4, var: "SESSION_ID".into() },
            &Change::ExcludeName { rule: 2, glob: "*.html".into() },
            &Change::ExcludeName { rule: 2, glob: "*.tmp".into() },
        ]
    );
    assert!(r.proposals[0].why.contains("`web-1`"), "{}", r.proposals[0].why);
    // The library build is a real difference: reported, never hidden.
    assert_eq!(r.unexplained.len(), 1);
    assert_eq!(r.unexplained[0].path, "/usr/lib/libssl.so.3");

    // Applied, the three hosts of one library build share a cluster, and the comment
    // of the draft survives.
    let text = apply(PROFILE, &changes.into_iter().cloned().collect::<Vec<_>>()).unwrap();
    assert!(text.contains("# A draft, as discover writes one."));
    let refined = Profile::parse(&text).unwrap();
    hosts[2].ssl = b"libssl 3.0.20";
    let keys: BTreeSet<_> = hosts.iter().map(|h| fingerprint(&refined, h).cluster_key()).collect();
    assert_eq!(keys.len(), 1);
    // ...and a real config change still splits them.
    hosts[0].config.push_str("workers = 8\n");
    let keys: BTreeSet<_> = hosts.iter().map(|h| fingerprint(&refined, h).cluster_key()).collect();
    assert_eq!(keys.len(), 2);
}

#[test]
fn refining_needs_two_machines_of_the_profile() {
    let profile = Profile::parse(PROFILE).unwrap();
    let one = fingerprint(&profile, &host(1));
    assert!(matches!(refine(&profile, std::slice::from_ref(&one)), Err(RefineError::TooFew(1))));
    let other = Profile::parse(&PROFILE.replace("\"web\"", "\"other\"")).unwrap();
    let stranger = fingerprint(&other, &host(2));
    assert!(matches!(refine(&profile, &[one, stranger]), Err(RefineError::OtherProfile { index: 1 })));
}

#[test]
fn dropping_a_rules_last_pattern_or_variable_keeps_the_profile_valid() {
    let text = apply(
        PROFILE,
        &[
            Change::DropPattern { rule: 3, pattern: "/tmp/web-cache".into() },
            Change::DropVar { rule: 4, var: "TZ".into() },
            Change::DropVar { rule: 4, var: "SESSION_ID".into() },
        ],
    )
    .unwrap();
    let p = Profile::parse(&text).unwrap();
    assert_eq!(p.rules().len(), 4, "the emptied env rule is gone");
    assert_eq!(p.rules()[3].contribute, Contribution::None);
}

#[test]
fn keys_with_glob_characters_are_ignored_literally() {
    assert_eq!(literal_glob("virtualhost[*:80]/servername"), "virtualhost[[][*]:80[]]/servername");
    let text = apply(PROFILE, &[Change::IgnoreKey { rule: 1, key: literal_glob("a[*]") }]).unwrap();
    let p = Profile::parse(&text).unwrap();
    assert!(p.rules()[1].ignores_key("a[*]"));
    assert!(!p.rules()[1].ignores_key("ab"));
}

#[test]
fn an_option_set_alike_under_another_section_is_grouped_not_ignored() {
    let profile = Profile::parse(PROFILE).unwrap();
    let mut hosts: Vec<Host> = (1..=3).map(host).collect();
    hosts[2].config = hosts[2].config.replace("[web]\nworkers = 4\n", "[web]\n[daemon]\nworkers = 4\n");
    let fps: Vec<Fingerprint> = hosts.iter().map(|h| fingerprint(&profile, h)).collect();
    let r = refine(&profile, &fps).unwrap();
    let group = Change::GroupSections { rule: 1, name: "daemon".into(), sections: vec!["daemon".into(), "web".into()] };
    assert!(r.proposals.iter().any(|p| p.change == group), "{:#?}", r.proposals);
    assert!(!r
        .proposals
        .iter()
        .any(|p| matches!(&p.change, Change::IgnoreKey { key, .. } if key.ends_with("workers"))));
    let changes: Vec<Change> = r.proposals.iter().map(|p| p.change.clone()).collect();
    let refined = Profile::parse(&apply(PROFILE, &changes).unwrap()).unwrap();
    let keys: BTreeSet<_> = hosts.iter().map(|h| fingerprint(&refined, h).cluster_key()).collect();
    assert_eq!(keys.len(), 1, "the placement no longer splits");
    // A real change of the grouped option still splits.
    hosts[0].config = hosts[0].config.replace("workers = 4", "workers = 9");
    let keys: BTreeSet<_> = hosts[..2].iter().map(|h| fingerprint(&refined, h).cluster_key()).collect();
    assert_eq!(keys.len(), 2);
}
