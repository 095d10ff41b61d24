//! Runs a command under `strace` and reports the files it opened and executed, for
//! `mirage profile discover`. With a root, the command runs under `chroot(root)`
//! (as root) and the paths are those the command saw inside it.

use crate::scan::resolve;
use mirage_protocol::fingerprint::discover::{FileKind, Opened};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("strace is not installed (Debian: apt-get install strace)")]
    NoStrace,
    #[error("cannot run strace: {0}")]
    Spawn(std::io::Error),
    #[error("cannot read the trace in {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("root {0} does not exist or is not a directory")]
    Root(PathBuf),
    #[error("the traced command did not start: {0}")]
    NotStarted(String),
}

/// What a traced run saw.
#[derive(Debug)]
pub struct Trace {
    pub opened: Vec<Opened>,
    /// The command was stopped at the time limit.
    pub timed_out: bool,
    pub exit_code: Option<i32>,
}

/// Runs `command` (inside `root` when given) under strace for at most `limit`.
pub fn trace(root: Option<&Path>, command: &[String], limit: Duration) -> Result<Trace, TraceError> {
    if Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Err(TraceError::NoStrace);
    }
    if let Some(root) = root {
        if !root.is_dir() {
            return Err(TraceError::Root(root.to_path_buf()));
        }
    }
    let dir = tempfile::tempdir().map_err(TraceError::Spawn)?;
    let prefix = dir.path().join("trace");
    let mut cmd = Command::new("strace");
    // One file per process (no interleaved, unfinished calls), whole strings, and
    // only the calls that name files.
    cmd.args(["-ff", "-qq", "-s", "4096", "-e", "trace=open,openat,openat2,execve,execveat,chroot", "-o"]);
    cmd.arg(&prefix);
    if let Some(root) = root {
        cmd.arg("chroot").arg(root);
    }
    cmd.args(command);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(TraceError::Spawn)?;
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().map_err(TraceError::Spawn)? {
            Some(status) => break status,
            None if started.elapsed() > limit => {
                timed_out = true;
                // SAFETY: kill only sends a signal to the process group we started.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                break child.wait().map_err(TraceError::Spawn)?;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut stderr = String::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(64 << 10).read_to_string(&mut stderr);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .map_err(|source| TraceError::Read { path: dir.path().to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // The first process (lowest pid) is the one that chroots.
    files.sort_by_key(|p| p.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u64>().ok()).unwrap_or(0));
    let mut paths = BTreeSet::new();
    let mut chrooted = root.is_none();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).map_err(|source| TraceError::Read { path: file.clone(), source })?;
        // Children are forked after the chroot, so only the first process has lines
        // from before it (the chroot program's own libraries).
        let mut inside = chrooted || i > 0;
        for line in text.lines() {
            match parse_line(line) {
                Some(Call::Chroot) => {
                    inside = true;
                    chrooted = true;
                }
                Some(Call::Path(p)) if inside && p.starts_with('/') => {
                    paths.insert(p);
                }
                _ => {}
            }
        }
    }
    if !chrooted && root.is_some() {
        return Err(TraceError::NotStarted(stderr.trim().to_string()));
    }
    let base = root.unwrap_or(Path::new("/"));
    let opened = paths.into_iter().filter_map(|p| found(base, &p).map(|kind| Opened { path: p, kind })).collect();
    Ok(Trace { opened, timed_out, exit_code: status.code() })
}

enum Call {
    Path(String),
    Chroot,
}

/// One line of `strace -ff -o` output: `openat(AT_FDCWD, "/etc/x", O_RDONLY) = 3`.
/// Failed calls (`= -1 ENOENT ...`) name nothing that was there.
fn parse_line(line: &str) -> Option<Call> {
    let (call, rest) = line.split_once('(')?;
    // strace pads short calls: `chroot("/r")             = 0`.
    let result = rest.rsplit_once(" = ")?.1;
    if result.starts_with('-') || result.starts_with('?') {
        return None;
    }
    if call == "chroot" {
        return Some(Call::Chroot);
    }
    if !matches!(call, "open" | "openat" | "openat2" | "execve" | "execveat") {
        return None;
    }
    let start = rest.find('"')? + 1;
    let mut out = String::new();
    let mut chars = rest[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(Call::Path(out)),
            '\\' => match chars.next()? {
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&hex, 16).ok()? as char);
                }
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// Whether `logical` is a regular file inside `root`, and what kind.
fn found(root: &Path, logical: &str) -> Option<FileKind> {
    let real = resolve(root, logical).ok()??;
    let meta = std::fs::metadata(&real).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut magic = [0u8; 4];
    let is_elf = std::fs::File::open(&real).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF";
    Some(if is_elf { FileKind::Elf } else { FileKind::Other })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_lines_are_read_for_files_that_were_there() {
        let path = |l: &str| match parse_line(l) {
            Some(Call::Path(p)) => Some(p),
            _ => None,
        };
        assert_eq!(
            path(r#"openat(AT_FDCWD, "/etc/mysql/my.cnf", O_RDONLY|O_CLOEXEC) = 3"#).as_deref(),
            Some("/etc/mysql/my.cnf")
        );
        assert_eq!(
            path(r#"execve("/usr/sbin/mariadbd", ["mariadbd", "--help"], 0x7ff /* 5 vars */) = 0"#).as_deref(),
            Some("/usr/sbin/mariadbd")
        );
        assert_eq!(
            path(r#"openat(AT_FDCWD, "/etc/my.cnf", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)"#),
            None
        );
        assert_eq!(path(r#"openat(AT_FDCWD, "/a\x20b", O_RDONLY) = 4"#).as_deref(), Some("/a b"));
        assert!(matches!(parse_line(r#"chroot("/tmp/roots/base-1")             = 0"#), Some(Call::Chroot)));
        assert!(parse_line("+++ exited with 0 +++").is_none());
    }
}
