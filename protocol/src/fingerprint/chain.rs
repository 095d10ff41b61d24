//! Config files as the application reads them: the entry file a profile names and every
//! file it includes, followed with the application's own rules and in its order.
//!
//! - MySQL / MariaDB: `!include FILE` and `!includedir DIR` (the directory's `*.cnf`
//!   files, in name order); each file starts outside any `[group]`.
//! - Apache httpd: `Include` and `IncludeOptional`, with wildcards in any path
//!   component, relative to `ServerRoot` (the entry file's directory until a
//!   `ServerRoot` says otherwise); an included directory is read whole; an included
//!   file's directives sit in the section the `Include` stood in.
//! - `key value` files (sshd_config): `Include` with wildcards, relative to the entry
//!   file's directory.
//! - Files the application reads after the entry without being told to, such as PHP's
//!   per-SAPI scan directory: the profile's `reads_after`, relative to the entry file.
//!
//! Reading is bounded: include depth, files, bytes, directory entries and settings per
//! chain have limits, and what falls over one is a reported [`Cut`] (an item of the
//! fingerprint, so a machine whose chain was cut never shares a cluster with one whose
//! chain was read whole). An include of a file that is not there is a [`Missing`] item,
//! never an error; a directory or wildcard that holds nothing reads as nothing. The reading itself goes through [`ConfigSource`]: the node resolves paths
//! inside the scanned root, tests use [`MemorySource`].

use super::config::{self, ConfigFormat, Setting, Token};
use globset::GlobBuilder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one chain may read before it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Includes nested within includes (httpd and MariaDB allow about this many).
    pub depth: usize,
    /// Files read, the entry included.
    pub files: usize,
    /// Bytes read over all files.
    pub bytes: u64,
    /// Bytes of one file.
    pub file_bytes: u64,
    /// Names listed from one directory.
    pub dir_entries: usize,
    /// Settings kept; the fingerprint's own item limit is 20,000.
    pub settings: usize,
}

impl Limits {
    pub const DEFAULT: Limits =
        Limits { depth: 16, files: 512, bytes: 32 << 20, file_bytes: 8 << 20, dir_entries: 4096, settings: 10_000 };
}

/// Why part of a config chain was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// The file includes itself, directly or through others.
    Cycle,
    /// Includes nested deeper than [`Limits::depth`].
    TooDeep,
    /// The chain reached [`Limits::files`]; nothing more was read.
    TooManyFiles,
    /// The chain's files add up past [`Limits::bytes`]; nothing more was read.
    TooManyBytes,
    /// One file is over [`Limits::file_bytes`].
    FileTooLarge,
    /// A directory an include lists holds more than [`Limits::dir_entries`] names.
    TooManyEntries,
    /// More than [`Limits::settings`] settings; the rest were dropped.
    TooManySettings,
    /// It exists but cannot be read (permissions, I/O error).
    Unreadable,
    /// Not a regular file (a FIFO, device or socket is never opened: it could block).
    NotAFile,
    /// A symlink loop on the way to it.
    SymlinkLoop,
    /// An include pattern that is not a valid wildcard.
    BadPattern,
}

impl Cut {
    pub fn describe(self) -> &'static str {
        match self {
            Cut::Cycle => "includes itself",
            Cut::TooDeep => "includes nested too deep",
            Cut::TooManyFiles => "too many files in the chain",
            Cut::TooManyBytes => "the chain's files are too large together",
            Cut::FileTooLarge => "file too large",
            Cut::TooManyEntries => "directory has too many entries",
            Cut::TooManySettings => "too many settings",
            Cut::Unreadable => "unreadable",
            Cut::NotAFile => "not a regular file",
            Cut::SymlinkLoop => "symlink loop",
            Cut::BadPattern => "not a valid wildcard",
        }
    }
}

/// What reading one path found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileText {
    Text(String),
    Missing,
    Directory,
    Refused(Cut),
}

/// What listing one directory found: names only, in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirNames {
    Names(Vec<String>),
    Missing,
    Refused(Cut),
}

/// The machine's files, by the paths the application would use.
pub trait ConfigSource {
    /// The text of `path`, refused with [`Cut::FileTooLarge`] over `max_bytes`.
    fn read(&mut self, path: &str, max_bytes: u64) -> FileText;
    /// The names in directory `dir`, refused with [`Cut::TooManyEntries`] over
    /// `max_entries`.
    fn list(&mut self, dir: &str, max_entries: usize) -> DirNames;
}

/// One setting and the file it came from (an index into [`ConfigChain::files`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced {
    pub setting: Setting,
    pub file: usize,
}

/// An include that named nothing there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The directive as the application spells it, lowercased (`!includedir`,
    /// `includeoptional`).
    pub directive: String,
    /// The absolute path or pattern it named.
    pub target: String,
}

/// Where a chain was cut, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutAt {
    pub path: String,
    pub cut: Cut,
}

/// An entry file with everything it includes, in the order the application reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChain {
    pub entry: String,
    /// The format every file of the chain was read as (the entry's).
    pub format: ConfigFormat,
    /// Every file read, the entry first, in reading order.
    pub files: Vec<String>,
    pub settings: Vec<Sourced>,
    pub missing: Vec<Missing>,
    pub cuts: Vec<CutAt>,
}

/// Reads `entry` and what it includes from `source`. `reads_after` are patterns,
/// relative to the entry's directory, of files the application reads after the entry
/// in name order (PHP's scan directory: `conf.d/*.ini`).
pub fn resolve(
    format: ConfigFormat,
    entry: &str,
    reads_after: &[String],
    source: &mut dyn ConfigSource,
    section_args: &dyn Fn(&str) -> String,
) -> ConfigChain {
    resolve_with(Limits::DEFAULT, format, entry, reads_after, source, section_args)
}

pub fn resolve_with(
    limits: Limits,
    format: ConfigFormat,
    entry: &str,
    reads_after: &[String],
    source: &mut dyn ConfigSource,
    section_args: &dyn Fn(&str) -> String,
) -> ConfigChain {
    let entry_dir = parent(entry).to_string();
    let mut reader = Reader {
        source,
        section_args,
        limits,
        format,
        chain: ConfigChain {
            entry: entry.to_string(),
            format,
            files: Vec::new(),
            settings: Vec::new(),
            missing: Vec::new(),
            cuts: Vec::new(),
        },
        bytes: 0,
        open: Vec::new(),
        full: false,
        server_root: entry_dir.clone(),
    };
    reader.include(entry, 0, &mut Vec::new());
    for pattern in reads_after {
        let pattern = absolute(pattern, &entry_dir);
        if let Some(paths) = reader.expand(&pattern) {
            for path in paths {
                reader.include(&path, 1, &mut Vec::new());
            }
        }
    }
    let mut chain = reader.chain;
    chain.format = reader.format;
    chain
}

struct Reader<'a> {
    source: &'a mut dyn ConfigSource,
    section_args: &'a dyn Fn(&str) -> String,
    limits: Limits,
    /// `Auto` until the entry is read, then the format the whole chain is read as.
    format: ConfigFormat,
    chain: ConfigChain,
    bytes: u64,
    /// Files being read, outermost first: an include of one of them is a cycle.
    open: Vec<String>,
    /// A chain-wide limit was reached: nothing more is read.
    full: bool,
    server_root: String,
}

impl Reader<'_> {
    fn cut(&mut self, path: &str, cut: Cut) {
        self.chain.cuts.push(CutAt { path: path.to_string(), cut });
    }

    /// Reads `path` (a file, or for Apache a directory) into the chain. False when
    /// nothing is there.
    fn include(&mut self, path: &str, depth: usize, sections: &mut Vec<String>) -> bool {
        if self.full {
            return true;
        }
        if self.open.iter().any(|p| p == path) {
            self.cut(path, Cut::Cycle);
            return true;
        }
        if depth > self.limits.depth {
            self.cut(path, Cut::TooDeep);
            return true;
        }
        if self.chain.files.len() >= self.limits.files {
            self.cut(path, Cut::TooManyFiles);
            self.full = true;
            return true;
        }
        let text = match self.source.read(path, self.limits.file_bytes) {
            FileText::Missing => return false,
            FileText::Refused(cut) => {
                self.cut(path, cut);
                return true;
            }
            FileText::Directory if self.format == ConfigFormat::Apache && depth > 0 => {
                return self.include_directory(path, depth, sections);
            }
            FileText::Directory => {
                self.cut(path, Cut::NotAFile);
                return true;
            }
            FileText::Text(text) => text,
        };
        self.bytes += text.len() as u64;
        if self.bytes > self.limits.bytes {
            self.cut(path, Cut::TooManyBytes);
            self.full = true;
            return true;
        }
        if self.format == ConfigFormat::Auto {
            self.format = config::resolve(ConfigFormat::Auto, path, &text);
        }
        let file = self.chain.files.len();
        self.chain.files.push(path.to_string());
        self.open.push(path.to_string());
        let tokens = config::tokenize(self.format, &text, self.section_args);
        drop(text);
        match self.format {
            ConfigFormat::Ini | ConfigFormat::Php => self.read_ini(path, file, depth, tokens),
            ConfigFormat::Apache => self.read_apache(path, file, depth, tokens, sections),
            _ => self.read_key_value(path, file, depth, tokens),
        }
        self.open.pop();
        true
    }

    /// Apache reads every file under an included directory, in name order.
    fn include_directory(&mut self, dir: &str, depth: usize, sections: &mut Vec<String>) -> bool {
        let mut names = match self.source.list(dir, self.limits.dir_entries) {
            DirNames::Names(names) => names,
            DirNames::Missing => return false,
            DirNames::Refused(cut) => {
                self.cut(dir, cut);
                return true;
            }
        };
        names.retain(|n| !n.starts_with('.'));
        names.sort();
        let mark = sections.len();
        for name in names {
            self.include(&join(dir, &name), depth + 1, sections);
            sections.truncate(mark);
        }
        true
    }

    fn push(&mut self, path: &str, file: usize, key: String, value: String, section: &str) -> bool {
        if self.chain.settings.len() >= self.limits.settings {
            self.cut(path, Cut::TooManySettings);
            self.full = true;
            return false;
        }
        self.chain.settings.push(Sourced { setting: Setting { key, value, section: section.to_string() }, file });
        true
    }

    fn read_ini(&mut self, path: &str, file: usize, depth: usize, tokens: Vec<Token>) {
        let dir = parent(path).to_string();
        let mut section = String::new();
        for token in tokens {
            if self.full {
                return;
            }
            match token {
                Token::Section(s) => section = s,
                Token::Bang { name, arg } if name == "include" => {
                    let target = absolute(&arg, &dir);
                    if !self.include(&target, depth + 1, &mut Vec::new()) {
                        self.missing("!include", target);
                    }
                }
                Token::Bang { name, arg } if name == "includedir" => {
                    let target = absolute(&arg, &dir);
                    let target = target.trim_end_matches('/');
                    let target = if target.is_empty() { "/" } else { target };
                    let mut names = match self.source.list(target, self.limits.dir_entries) {
                        DirNames::Names(names) => names,
                        DirNames::Missing => Vec::new(),
                        DirNames::Refused(cut) => {
                            self.cut(target, cut);
                            continue;
                        }
                    };
                    // The server reads only `*.cnf` from an included directory.
                    names.retain(|n| n.ends_with(".cnf"));
                    names.sort();
                    // An empty or absent directory is no difference the server sees.
                    for name in names {
                        self.include(&join(target, &name), depth + 1, &mut Vec::new());
                    }
                }
                Token::Bang { name, arg } => {
                    if !self.push(path, file, format!("!{name}"), arg, "") {
                        return;
                    }
                }
                Token::Entry { key, value } => {
                    let scoped = !section.is_empty() && self.section_scopes(&section);
                    let (key, in_section) =
                        if scoped { (format!("{section}.{key}"), section.as_str()) } else { (key, "") };
                    if !self.push(path, file, key, value, in_section) {
                        return;
                    }
                }
                Token::Open(_) | Token::Close(_) => {}
            }
        }
    }

    fn read_key_value(&mut self, path: &str, file: usize, depth: usize, tokens: Vec<Token>) {
        for token in tokens {
            if self.full {
                return;
            }
            let Token::Entry { key, value } = token else { continue };
            if key.eq_ignore_ascii_case("include") {
                let base = parent(&self.chain.entry).to_string();
                for arg in value.split_whitespace() {
                    self.include_pattern("include", &absolute(unquote(arg), &base), depth, &mut Vec::new());
                }
                continue;
            }
            if !self.push(path, file, key, value, "") {
                return;
            }
        }
    }

    fn read_apache(&mut self, path: &str, file: usize, depth: usize, tokens: Vec<Token>, sections: &mut Vec<String>) {
        for token in tokens {
            if self.full {
                return;
            }
            match token {
                Token::Open(s) => sections.push(s),
                Token::Close(name) => {
                    // Pop to the matching section; a stray close tag is ignored rather
                    // than corrupting the nesting.
                    if let Some(pos) = sections.iter().rposition(|s| s.split('[').next() == Some(name.as_str())) {
                        sections.truncate(pos);
                    }
                }
                Token::Entry { key, value } if key == "include" || key == "includeoptional" => {
                    let root = self.server_root.clone();
                    let target = absolute(unquote(&value), &root);
                    let mark = sections.len();
                    self.include_pattern(&key, &target, depth, sections);
                    sections.truncate(mark);
                }
                Token::Entry { key, value } => {
                    if key == "serverroot" && sections.is_empty() {
                        self.server_root = unquote(&value).trim_end_matches('/').to_string();
                    }
                    let mut full = sections.join("/");
                    if !full.is_empty() {
                        full.push('/');
                    }
                    full.push_str(&key);
                    if !self.push(path, file, full, value, "") {
                        return;
                    }
                }
                Token::Section(_) | Token::Bang { .. } => {}
            }
        }
    }

    /// Whether settings under `[section]` are that section's own: always in my.cnf
    /// (each program reads its groups); in php.ini only per-directory and per-host
    /// sections are more than a heading.
    fn section_scopes(&self, section: &str) -> bool {
        if self.format != ConfigFormat::Php {
            return true;
        }
        let upper = section.to_ascii_uppercase();
        upper.starts_with("PATH=") || upper.starts_with("HOST=")
    }

    /// Includes every path `pattern` matches; an include that reads nothing is missing.
    fn include_pattern(&mut self, directive: &str, pattern: &str, depth: usize, sections: &mut Vec<String>) {
        let Some(paths) = self.expand(pattern) else { return };
        let mut read = false;
        let mark = sections.len();
        for path in paths {
            read |= self.include(&path, depth + 1, sections);
            sections.truncate(mark);
        }
        // A wildcard that matches nothing is how an empty `conf-enabled/` looks, and
        // no difference; a file named outright and absent is one.
        if !read && !pattern.contains(['*', '?', '[']) {
            self.missing(directive, pattern.to_string());
        }
    }

    fn missing(&mut self, directive: &str, target: String) {
        self.chain.missing.push(Missing { directive: directive.to_string(), target });
    }

    /// The paths an absolute pattern names, wildcards expanded component by component
    /// in name order (names starting with `.` never match a wildcard, as in httpd).
    /// `None` when the expansion was cut.
    fn expand(&mut self, pattern: &str) -> Option<Vec<String>> {
        let mut current = vec![String::new()];
        for component in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if !component.contains(['*', '?', '[']) {
                current.iter_mut().for_each(|p| {
                    p.push('/');
                    p.push_str(component);
                });
                continue;
            }
            let Ok(glob) = GlobBuilder::new(component).literal_separator(true).build() else {
                self.cut(pattern, Cut::BadPattern);
                return None;
            };
            let matcher = glob.compile_matcher();
            let mut next = Vec::new();
            for dir in &current {
                let listed = if dir.is_empty() { "/" } else { dir.as_str() };
                let mut names = match self.source.list(listed, self.limits.dir_entries) {
                    DirNames::Names(names) => names,
                    DirNames::Missing => continue,
                    DirNames::Refused(cut) => {
                        let listed = listed.to_string();
                        self.cut(&listed, cut);
                        return None;
                    }
                };
                names.retain(|n| !n.starts_with('.') && matcher.is_match(n));
                names.sort();
                next.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
                if next.len() > self.limits.files {
                    self.cut(pattern, Cut::TooManyFiles);
                    return None;
                }
            }
            current = next;
        }
        Some(current.into_iter().map(|p| if p.is_empty() { "/".to_string() } else { p }).collect())
    }
}

fn parent(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((dir, _)) => dir,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `path` made absolute against `base`, with `.` and `..` applied (never above `/`).
fn absolute(path: &str, base: &str) -> String {
    let joined = if path.starts_with('/') { path.to_string() } else { join(base, path) };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

/// Files held in memory, for tests and simulations. Directories are implied by the
/// paths of the files under them.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    files: BTreeMap<String, Result<String, Cut>>,
}

impl MemorySource {
    pub fn insert(&mut self, path: &str, text: &str) {
        self.files.insert(path.to_string(), Ok(text.to_string()));
    }

    /// A path that is there but refuses to be read, for `cut`'s reason.
    pub fn refuse(&mut self, path: &str, cut: Cut) {
        self.files.insert(path.to_string(), Err(cut));
    }
}

impl ConfigSource for MemorySource {
    fn read(&mut self, path: &str, max_bytes: u64) -> FileText {
        match self.files.get(path) {
            Some(Ok(text)) if text.len() as u64 > max_bytes => FileText::Refused(Cut::FileTooLarge),
            Some(Ok(text)) => FileText::Text(text.clone()),
            Some(Err(cut)) => FileText::Refused(*cut),
            None if self.files.keys().any(|k| k.starts_with(&join(path, ""))) => FileText::Directory,
            None => FileText::Missing,
        }
    }

    fn list(&mut self, dir: &str, max_entries: usize) -> DirNames {
        let prefix = join(dir, "");
        let mut names: Vec<String> = self
            .files
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k[prefix.len()..].split('/').next().unwrap_or_default().to_string())
            .collect();
        names.dedup();
        if names.is_empty() {
            return DirNames::Missing;
        }
        if names.len() > max_entries {
            return DirNames::Refused(Cut::TooManyEntries);
        }
        DirNames::Names(names)
    }
}

#[cfg(test)]
mod tests;
