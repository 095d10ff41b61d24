//! A draft profile from what an application was seen to open (the Mirage paper's
//! agent traced the application to find its resources). The node traces a run of the
//! application and hands over each file it opened; here each is classified by what
//! it is and where it lies, files of one kind in one directory are generalized to a
//! glob, and the draft is written as a profile's TOML, with comments saying what was
//! seen. The draft is meant to be refined ([`super::refine`]) over machines that
//! should share a cluster, then read by a person.

use super::ResourceClass;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// A file the traced application opened or executed, as found on the machine.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Opened {
    /// The path the application used (inside the traced root).
    pub path: String,
    /// What the file's first bytes say it is.
    pub kind: FileKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// An ELF object (executable or shared library).
    Elf,
    /// Any other regular file.
    Other,
}

/// Files every program opens that say nothing about the application, or that name
/// the host: the draft leaves them out (saying so in a comment).
const HOST_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/machine-id",
    "/etc/mtab",
];
const HOST_DIRS: &[&str] =
    &["/proc/", "/sys/", "/dev/", "/usr/share/zoneinfo/", "/usr/lib/locale/", "/usr/share/locale/"];

/// Where a file lies and what it is decide its class; `None` for files left out.
pub fn classify(file: &Opened) -> Option<ResourceClass> {
    let p = file.path.as_str();
    if HOST_FILES.contains(&p) || HOST_DIRS.iter().any(|d| p.starts_with(d)) {
        return None;
    }
    let name = p.rsplit('/').next().unwrap_or(p);
    if file.kind == FileKind::Elf {
        let library = name.contains(".so") || p.contains("/lib/") || p.contains("/lib64/");
        return Some(if library { ResourceClass::Library } else { ResourceClass::Executable });
    }
    if p.starts_with("/etc/") {
        return Some(ResourceClass::Config);
    }
    if p.starts_with("/var/log/") {
        return Some(ResourceClass::Log);
    }
    if p.starts_with("/tmp/") || p.starts_with("/run/") || p.starts_with("/var/run/") || p.starts_with("/var/tmp/") {
        return Some(ResourceClass::Temp);
    }
    Some(ResourceClass::Data)
}

/// A directory holding this many files of one class and extension becomes `dir/*.ext`.
pub const GLOB_AT: usize = 2;

/// Paths of one class, with the files of a kind in one directory as one glob.
fn generalize(paths: &BTreeSet<String>) -> Vec<String> {
    let mut groups: BTreeMap<(String, String), Vec<&String>> = BTreeMap::new();
    for p in paths {
        let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
        let ext = match name.rsplit_once('.') {
            // A versioned library (`libssl.so.3`) is named exactly: `*.3` would be a
            // different set of libraries on every machine.
            Some((stem, ext))
                if !stem.is_empty()
                    && !stem.contains(".so")
                    && ext.chars().all(|c| c.is_ascii_alphanumeric())
                    && ext.chars().any(|c| c.is_ascii_alphabetic()) =>
            {
                ext.to_string()
            }
            _ => String::new(),
        };
        groups.entry((dir.to_string(), ext)).or_default().push(p);
    }
    let mut out = Vec::new();
    for ((dir, ext), members) in groups {
        if members.len() >= GLOB_AT && !ext.is_empty() {
            out.push(format!("{dir}/*.{ext}"));
        } else {
            out.extend(members.into_iter().cloned());
        }
    }
    out
}

/// Writes the draft profile for `app`, traced running `command`.
pub fn draft(app: &str, command: &str, opened: &[Opened]) -> String {
    let mut by_class: BTreeMap<ResourceClass, BTreeSet<String>> = BTreeMap::new();
    let mut left_out = BTreeSet::new();
    for f in opened {
        match classify(f) {
            Some(class) => {
                by_class.entry(class).or_default().insert(f.path.clone());
            }
            None => {
                left_out.insert(f.path.clone());
            }
        }
    }
    let mut t = String::new();
    let _ = writeln!(t, "# Drafted by `mirage profile discover` from a trace of: {command}");
    let _ = writeln!(t, "# {} files seen, {} left out as the host's own.", opened.len(), left_out.len());
    let _ = writeln!(t, "# Refine it over machines that should share a cluster: `mirage profile refine`.");
    let _ = writeln!(t, "app = {}", toml_string(app));
    let _ = writeln!(t, "description = {}", toml_string(&format!("drafted from a trace of {command}")));
    for (class, paths) in &by_class {
        let _ = writeln!(t, "\n[[resource]]");
        let _ = writeln!(t, "# {} file(s) seen", paths.len());
        let _ = writeln!(t, "class = \"{}\"", class.name());
        let _ = writeln!(t, "include = [");
        for p in generalize(paths) {
            let _ = writeln!(t, "  {},", toml_string(&p));
        }
        let _ = writeln!(t, "]");
        if *class == ResourceClass::Config {
            // The application's own format is for a person to name; `auto` reads
            // .cnf and .ini as INI, httpd-style files as Apache's.
            let _ = writeln!(t, "format = \"auto\"");
        }
    }
    t
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Profile;

    fn opened(path: &str, kind: FileKind) -> Opened {
        Opened { path: path.into(), kind }
    }

    #[test]
    fn files_are_classified_by_what_and_where_they_are_and_host_files_left_out() {
        let c = |p: &str, k| classify(&opened(p, k));
        assert_eq!(c("/usr/sbin/mariadbd", FileKind::Elf), Some(ResourceClass::Executable));
        assert_eq!(c("/usr/lib/x86_64-linux-gnu/libssl.so.3", FileKind::Elf), Some(ResourceClass::Library));
        assert_eq!(c("/usr/lib/mysql/plugin/ha_archive.so", FileKind::Elf), Some(ResourceClass::Library));
        assert_eq!(c("/etc/mysql/my.cnf", FileKind::Other), Some(ResourceClass::Config));
        assert_eq!(c("/var/log/mysql/error.log", FileKind::Other), Some(ResourceClass::Log));
        assert_eq!(c("/var/lib/mysql/ibdata1", FileKind::Other), Some(ResourceClass::Data));
        assert_eq!(c("/run/mysqld/mysqld.pid", FileKind::Other), Some(ResourceClass::Temp));
        assert_eq!(c("/usr/share/mysql/charsets/Index.xml", FileKind::Other), Some(ResourceClass::Data));
        assert_eq!(c("/etc/ld.so.cache", FileKind::Other), None);
        assert_eq!(c("/proc/self/status", FileKind::Other), None);
    }

    #[test]
    fn a_draft_is_a_valid_profile_with_directories_generalized() {
        let files = vec![
            opened("/usr/sbin/mariadbd", FileKind::Elf),
            opened("/usr/lib/x86_64-linux-gnu/libssl.so.3", FileKind::Elf),
            opened("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", FileKind::Elf),
            opened("/usr/lib/mysql/plugin/ha_archive.so", FileKind::Elf),
            opened("/usr/lib/mysql/plugin/auth_pam.so", FileKind::Elf),
            opened("/etc/mysql/my.cnf", FileKind::Other),
            opened("/etc/mysql/mariadb.conf.d/50-server.cnf", FileKind::Other),
            opened("/etc/mysql/mariadb.conf.d/50-mysqld_safe.cnf", FileKind::Other),
            opened("/etc/ld.so.cache", FileKind::Other),
        ];
        let text = draft("mariadb", "mariadbd --help --verbose", &files);
        let p = Profile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let config = p.rules().iter().find(|r| r.class == ResourceClass::Config).unwrap();
        let patterns: Vec<&str> = config.patterns().iter().map(|p| p.text()).collect();
        assert_eq!(patterns, vec!["/etc/mysql/my.cnf", "/etc/mysql/mariadb.conf.d/*.cnf"]);
        assert!(text.contains("1 left out"));
        let library = p.rules().iter().find(|r| r.class == ResourceClass::Library).unwrap();
        let patterns: Vec<&str> = library.patterns().iter().map(|p| p.text()).collect();
        assert_eq!(
            patterns,
            vec![
                "/usr/lib/mysql/plugin/*.so",
                "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3"
            ]
        );
        assert_eq!(p.rules().len(), 3);
    }
}
