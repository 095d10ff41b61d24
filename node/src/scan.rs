//! Scans a machine (rooted at any directory) under an application profile and hands
//! what it finds to the protocol's `FingerprintBuilder`.
//!
//! Paths are resolved the way the kernel would under `chroot(root)`: absolute symlinks
//! inside a generated root point back into the root, never at the scanning host. Each
//! file is read at most once; digests are computed in parallel and cached by
//! (path, size, mtime, inode).

use crate::digest_cache::{DigestCache, FileStamp};
use mirage_protocol::fingerprint::chain::{ConfigSource, Cut, CutAt, DirNames, FileText, Limits};
use mirage_protocol::fingerprint::{
    Contribution, FingerprintBuilder, HostContext, Need, Observed, Origin, Pattern, Profile, ResourceClass, Rule,
};
use mirage_protocol::{Digest, Fingerprint};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

/// Symlink hops allowed while resolving one path (Linux's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;
/// Config files larger than this are refused rather than parsed: the one limit for a
/// file the profile names and for the files it includes.
pub const MAX_CONFIG_BYTES: u64 = Limits::DEFAULT.file_bytes;
/// Files one pattern may match when each is an item (a fingerprint holds 20,000).
pub const MAX_PATTERN_MATCHES: usize = mirage_protocol::fingerprint::MAX_ITEMS;
/// Files at least this large are hashed with several threads each.
const PARALLEL_HASH_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ScanError {
    #[error("root {0} does not exist or is not a directory")]
    Root(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("symlink loop at {0}")]
    SymlinkLoop(PathBuf),
    #[error("config file {path} is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit")]
    ConfigTooLarge { path: PathBuf, size: u64 },
    #[error(
        "profile pattern `{pattern}` matches over {MAX_PATTERN_MATCHES} files, more than a fingerprint holds: \
         narrow it, exclude what does not matter, or count it with contribute = \"presence\""
    )]
    TooManyMatches { pattern: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io { path: path.to_path_buf(), source }
}

/// What a scan produced, and what it cost.
#[derive(Debug)]
pub struct Scan {
    pub fingerprint: Fingerprint,
    pub stats: ScanStats,
    /// The file of its config chain each config item's value came from.
    pub origins: Vec<Origin>,
    /// Where config chains were cut short (also items of the fingerprint).
    pub cuts: Vec<CutAt>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    pub files_matched: usize,
    pub files_hashed: usize,
    pub bytes_hashed: u64,
    pub cache_hits: usize,
    pub configs_parsed: usize,
}

/// A file a pattern matched: its path as the machine sees it, and where it really is.
struct Matched {
    rule: usize,
    pattern: usize,
    logical: String,
    real: PathBuf,
    stamp: FileStamp,
}

/// Fingerprints `profile`'s application on the machine rooted at `root`.
///
/// A cache that cannot be used (locked by another process, corrupt) is skipped with a
/// warning: it only ever saves time, so it must never fail a scan.
pub fn scan(profile: &Profile, root: &Path, cache: Option<&DigestCache>) -> Result<Scan, ScanError> {
    let root = std::fs::canonicalize(root).map_err(|_| ScanError::Root(root.to_path_buf()))?;
    if !root.is_dir() {
        return Err(ScanError::Root(root));
    }
    let host = host_context(&root)?;
    let mut stats = ScanStats::default();

    let mut matched = Vec::new();
    for (r, rule) in profile.rules().iter().enumerate() {
        if rule.class == ResourceClass::Env {
            continue;
        }
        let mut seen = HashSet::new();
        for (p, pattern) in rule.patterns().iter().enumerate() {
            for (logical, real, stamp) in walk(&root, rule, pattern)? {
                if seen.insert(logical.clone()) {
                    matched.push(Matched { rule: r, pattern: p, logical, real, stamp });
                }
            }
        }
    }
    stats.files_matched = matched.len();

    let digests = digest_files(profile, &matched, cache, &mut stats)?;
    let mut observed: Vec<Vec<Vec<(String, Observed)>>> =
        profile.rules().iter().map(|r| vec![Vec::new(); r.patterns().len()]).collect();
    let mut configs: Vec<Vec<Vec<String>>> =
        profile.rules().iter().map(|r| vec![Vec::new(); r.patterns().len()]).collect();
    for m in matched {
        let obs = match profile.rules()[m.rule].need() {
            Need::Digest => Observed::Digest(digests[&m.real]),
            Need::Text => {
                if m.stamp.size > MAX_CONFIG_BYTES {
                    return Err(ScanError::ConfigTooLarge { path: m.real, size: m.stamp.size });
                }
                configs[m.rule][m.pattern].push(m.logical);
                continue;
            }
            Need::Nothing => Observed::Seen,
        };
        observed[m.rule][m.pattern].push((m.logical, obs));
    }

    let env = machine_environment(&root)?;
    let mut builder = FingerprintBuilder::new(profile, host);
    let mut source = RootSource { root: &root, read: 0 };
    for (r, rule) in profile.rules().iter().enumerate() {
        if rule.class == ResourceClass::Env {
            builder.add_env(r, &|name| env.get(name).cloned());
            continue;
        }
        if rule.need() == Need::Text {
            builder.add_config_files(r, std::mem::take(&mut configs[r]), &mut source);
            continue;
        }
        for (p, files) in std::mem::take(&mut observed[r]).into_iter().enumerate() {
            builder.add_matches(r, p, files);
        }
    }
    stats.configs_parsed = source.read;
    let (fingerprint, explanation) = builder.finish_explained();
    Ok(Scan { fingerprint, stats, origins: explanation.origins, cuts: explanation.cuts })
}

/// The scanned machine's files as its applications see them, for following config
/// includes: paths resolve inside the root, only regular files are opened (a FIFO or
/// device could block the scan or never end), and nothing is read past the limit
/// the chain gives.
struct RootSource<'a> {
    root: &'a Path,
    /// Config files read.
    read: usize,
}

impl RootSource<'_> {
    fn real(&self, logical: &str) -> Result<Option<PathBuf>, Cut> {
        match resolve(self.root, logical) {
            Ok(found) => Ok(found),
            Err(ScanError::SymlinkLoop(_)) => Err(Cut::SymlinkLoop),
            Err(_) => Err(Cut::Unreadable),
        }
    }
}

impl ConfigSource for RootSource<'_> {
    fn read(&mut self, path: &str, max_bytes: u64) -> FileText {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let real = match self.real(path) {
            Ok(Some(real)) => real,
            Ok(None) => return FileText::Missing,
            Err(cut) => return FileText::Refused(cut),
        };
        let meta = match std::fs::metadata(&real) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return FileText::Missing,
            Err(_) => return FileText::Refused(Cut::Unreadable),
        };
        if meta.is_dir() {
            return FileText::Directory;
        }
        if !meta.is_file() {
            return FileText::Refused(Cut::NotAFile);
        }
        if meta.len() > max_bytes {
            return FileText::Refused(Cut::FileTooLarge);
        }
        // Non-blocking, and checked again once open: the path may have become a FIFO
        // since the stat above.
        let file = std::fs::File::options().read(true).custom_flags(libc::O_NONBLOCK).open(&real);
        let Ok(file) = file else { return FileText::Refused(Cut::Unreadable) };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return FileText::Refused(Cut::NotAFile);
        }
        let mut bytes = Vec::new();
        if file.take(max_bytes + 1).read_to_end(&mut bytes).is_err() {
            return FileText::Refused(Cut::Unreadable);
        }
        if bytes.len() as u64 > max_bytes {
            return FileText::Refused(Cut::FileTooLarge);
        }
        self.read += 1;
        FileText::Text(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn list(&mut self, dir: &str, max_entries: usize) -> DirNames {
        let real = match self.real(dir) {
            Ok(Some(real)) => real,
            Ok(None) => return DirNames::Missing,
            Err(cut) => return DirNames::Refused(cut),
        };
        let entries = match std::fs::read_dir(&real) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                return DirNames::Missing
            }
            Err(_) => return DirNames::Refused(Cut::Unreadable),
        };
        let mut names = Vec::new();
        for entry in entries {
            let Ok(entry) = entry else { return DirNames::Refused(Cut::Unreadable) };
            // Stop at the limit rather than list a directory of millions.
            if names.len() == max_entries {
                return DirNames::Refused(Cut::TooManyEntries);
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        DirNames::Names(names)
    }
}

/// Digests every file a digest rule matched: cached ones without reading, the rest in
/// parallel, largest first so the long jobs do not end up last on one core.
fn digest_files(
    profile: &Profile,
    matched: &[Matched],
    cache: Option<&DigestCache>,
    stats: &mut ScanStats,
) -> Result<HashMap<PathBuf, Digest>, ScanError> {
    let mut unique: HashMap<&Path, FileStamp> = HashMap::new();
    for m in matched.iter().filter(|m| profile.rules()[m.rule].need() == Need::Digest) {
        unique.insert(&m.real, m.stamp);
    }
    let mut files: Vec<(&Path, FileStamp)> = unique.into_iter().collect();
    files.sort_by(|a, b| b.1.size.cmp(&a.1.size).then(a.0.cmp(b.0)));
    let keys: Vec<String> = files.iter().map(|(p, _)| p.to_string_lossy().into_owned()).collect();

    let cached = match cache {
        Some(c) => {
            let query: Vec<(&str, FileStamp)> =
                keys.iter().map(String::as_str).zip(files.iter().map(|f| f.1)).collect();
            c.lookup_many(&query).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "digest cache unavailable; hashing everything");
                vec![None; files.len()]
            })
        }
        None => vec![None; files.len()],
    };

    let misses: Vec<usize> = (0..files.len()).filter(|&i| cached[i].is_none()).collect();
    let fresh: Vec<(usize, Digest)> = misses
        .par_iter()
        .map(|&i| hash_file(files[i].0, files[i].1.size).map(|d| (i, d)).map_err(io_err(files[i].0)))
        .collect::<Result<_, _>>()?;

    stats.cache_hits = files.len() - misses.len();
    stats.files_hashed = fresh.len();
    stats.bytes_hashed = fresh.iter().map(|(i, _)| files[*i].1.size).sum();
    if let (Some(c), false) = (cache, fresh.is_empty()) {
        let entries: Vec<(&str, FileStamp, Digest)> =
            fresh.iter().map(|(i, d)| (keys[*i].as_str(), files[*i].1, *d)).collect();
        if let Err(e) = c.store_many(&entries) {
            tracing::warn!(error = %e, "could not update digest cache");
        }
    }

    let mut out: HashMap<PathBuf, Digest> = HashMap::with_capacity(files.len());
    for (i, d) in cached.into_iter().enumerate() {
        if let Some(d) = d {
            out.insert(files[i].0.to_path_buf(), d);
        }
    }
    for (i, d) in fresh {
        out.insert(files[i].0.to_path_buf(), d);
    }
    Ok(out)
}

pub fn hash_file(path: &Path, size: u64) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    if size >= PARALLEL_HASH_BYTES {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update_mmap(path)?;
    }
    Ok(hasher.finalize().into())
}

fn logical_join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Walks from `pattern`'s literal base, no deeper than the pattern can match, and
/// returns the regular files it matches that the rule does not exclude.
///
/// Names are matched before anything is stat'ed, and the matched files are stat'ed in
/// parallel: on a warm re-scan, stat calls are nearly all the work there is.
fn walk(root: &Path, rule: &Rule, pattern: &Pattern) -> Result<Vec<(String, PathBuf, FileStamp)>, ScanError> {
    let Some(base_real) = resolve(root, pattern.base())? else {
        return Ok(Vec::new());
    };
    let meta = std::fs::metadata(&base_real).map_err(io_err(&base_real))?;
    let wanted = |logical: &str| pattern.matches(logical) && !rule.is_excluded(logical);
    // Presence needs one match: the walk ends at the first.
    let one_is_enough = rule.contribute == Contribution::Presence;
    // Each match of these is an item, and a fingerprint holds only so many.
    let bounded = matches!(rule.contribute, Contribution::Digest | Contribution::Parsed | Contribution::Names);
    if meta.is_file() {
        let hit = wanted(pattern.base()).then(|| (pattern.base().to_string(), base_real, FileStamp::of(&meta)));
        return Ok(hit.into_iter().collect());
    }
    if !meta.is_dir() {
        return Ok(Vec::new());
    }
    // (logical path, real path, reached through a symlink) of each name that matched.
    let mut candidates: Vec<(String, PathBuf, bool)> = Vec::new();
    // A regular file matched (a socket or FIFO candidate might not count).
    let mut found_file = false;
    // Depth-first; each directory carries its ancestors' (dev, inode) so that a
    // directory symlink pointing back up is reported instead of walked forever.
    let mut stack = vec![(pattern.base().to_string(), base_real, 0usize, vec![(meta.dev(), meta.ino())])];
    while let Some((logical, real, depth, ancestors)) = stack.pop() {
        if one_is_enough && found_file {
            break;
        }
        if pattern.max_depth().is_some_and(|max| depth >= max) {
            continue;
        }
        let mut entries: Vec<_> =
            std::fs::read_dir(&real).map_err(io_err(&real))?.collect::<Result<_, _>>().map_err(io_err(&real))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_logical = logical_join(&logical, &entry.file_name().to_string_lossy());
            let child_real = entry.path();
            let file_type = entry.file_type().map_err(io_err(&child_real))?;
            let dir_target = if file_type.is_dir() {
                Some(child_real.clone())
            } else if file_type.is_symlink() {
                match resolve(root, &child_logical)? {
                    Some(t) if t.is_dir() => Some(t),
                    Some(_) => {
                        if wanted(&child_logical) {
                            candidates.push((child_logical, child_real, true));
                            if bounded && candidates.len() > MAX_PATTERN_MATCHES {
                                return Err(ScanError::TooManyMatches { pattern: pattern.text().to_string() });
                            }
                        }
                        continue;
                    }
                    None => continue, // dangling: nothing there to fingerprint
                }
            } else {
                None
            };
            match dir_target {
                Some(target) => {
                    let m = std::fs::metadata(&target).map_err(io_err(&target))?;
                    let id = (m.dev(), m.ino());
                    if ancestors.contains(&id) {
                        return Err(ScanError::SymlinkLoop(root.join(child_logical.trim_start_matches('/'))));
                    }
                    let mut next = ancestors.clone();
                    next.push(id);
                    stack.push((child_logical, target, depth + 1, next));
                }
                None if wanted(&child_logical) => {
                    found_file |= file_type.is_file();
                    candidates.push((child_logical, child_real, false));
                    if bounded && candidates.len() > MAX_PATTERN_MATCHES {
                        return Err(ScanError::TooManyMatches { pattern: pattern.text().to_string() });
                    }
                }
                None => {}
            }
        }
    }
    let stamped: Vec<Option<(String, PathBuf, FileStamp)>> = candidates
        .into_par_iter()
        .map(|(logical, real, via_link)| {
            let real = if via_link {
                match resolve(root, &logical)? {
                    Some(t) => t,
                    None => return Ok(None),
                }
            } else {
                real
            };
            let meta = std::fs::metadata(&real).map_err(io_err(&real))?;
            Ok(meta.is_file().then(|| (logical, real, FileStamp::of(&meta))))
        })
        .collect::<Result<_, ScanError>>()?;
    Ok(stamped.into_iter().flatten().collect())
}

/// Resolves `logical` (an absolute path on the scanned machine) to a real path inside
/// `root`, following symlinks as `chroot(root)` would. `None` if nothing is there.
pub fn resolve(root: &Path, logical: &str) -> Result<Option<PathBuf>, ScanError> {
    let mut pending: VecDeque<OsString> = split(Path::new(logical));
    let mut resolved: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&component);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20 /* ENOTDIR */) => {
                return Ok(None)
            }
            Err(e) => return Err(ScanError::Io { path: candidate, source: e }),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(ScanError::SymlinkLoop(root.join(logical.trim_start_matches('/'))));
            }
            let target = std::fs::read_link(&candidate).map_err(io_err(&candidate))?;
            if target.is_absolute() {
                resolved.clear();
            }
            let mut next = split(&target);
            next.extend(pending);
            pending = next;
        } else {
            resolved.push(component);
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(Some(out))
}

fn split(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn read_optional(root: &Path, logical: &str) -> Result<Option<String>, ScanError> {
    match resolve(root, logical)? {
        Some(p) if p.is_file() => Ok(Some(std::fs::read_to_string(&p).map_err(io_err(&p))?)),
        _ => Ok(None),
    }
}

/// The machine's own identity, which must not split clusters.
fn host_context(root: &Path) -> Result<HostContext, ScanError> {
    let mut hostname = read_optional(root, "/etc/hostname")?;
    if hostname.is_none() && root == Path::new("/") {
        hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    }
    let machine_id = read_optional(root, "/etc/machine-id")?;
    Ok(HostContext::new(hostname.as_deref().and_then(|h| h.lines().next()), machine_id.as_deref()))
}

/// Variables from the machine's `/etc/environment`; for the live root `/` the
/// process environment (what the application would inherit from here) wins.
fn machine_environment(root: &Path) -> Result<HashMap<String, String>, ScanError> {
    let mut env = HashMap::new();
    if let Some(text) = read_optional(root, "/etc/environment")? {
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                let v = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v);
                env.insert(k.trim().to_string(), v.to_string());
            }
        }
    }
    if root == Path::new("/") {
        env.extend(std::env::vars());
    }
    Ok(env)
}

#[cfg(test)]
mod tests;
