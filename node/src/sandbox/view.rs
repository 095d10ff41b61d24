//! The file system a sandboxed test sees, built for bubblewrap 0.8 (which has no overlay
//! options): the host read-only, throw-away copies of the app's resources bound
//! writable over the originals, the version under test at the app's `current` path, and
//! the test bundle read-only as the working directory.

use super::confine::Confinement;
use super::SandboxError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the test bundle appears inside the sandbox (also the working directory).
pub const TESTS_MOUNT: &str = "/run/mirage/tests";
/// `PATH` inside the sandbox; everything else of the environment is cleared.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Copies of the resources for one run; dropping it removes them.
pub struct ResourceCopies {
    scratch: tempfile::TempDir,
    /// (copy, original), parents before children so nested binds layer correctly.
    binds: Vec<(PathBuf, PathBuf)>,
}

impl ResourceCopies {
    /// Copies every resource into a fresh directory under `scratch`. Each run gets its
    /// own copies so tests cannot see each other's writes, and the old and new version
    /// of a replay start from the same state.
    /// They belong to the sandbox's uid, in a directory only it may enter.
    pub fn make(
        scratch: &Path,
        resources: &[PathBuf],
        confinement: &Confinement,
    ) -> Result<ResourceCopies, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix("mirage-sandbox-")
            .tempdir_in(scratch)
            .map_err(|source| SandboxError::Io { path: scratch.to_path_buf(), source })?;
        let mut originals: Vec<&PathBuf> = resources.iter().collect();
        originals.sort();
        originals.dedup();
        let mut binds = Vec::with_capacity(originals.len());
        for (i, original) in originals.into_iter().enumerate() {
            let copy = dir.path().join(i.to_string());
            copy_preserving(original, &copy)?;
            binds.push((copy, original.clone()));
        }
        confinement.give(dir.path()).map_err(|source| SandboxError::Io { path: dir.path().to_path_buf(), source })?;
        Ok(ResourceCopies { scratch: dir, binds })
    }

    /// The directory holding this run's copies.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }
}

/// `cp -a --reflink=auto`: shares blocks where the file system can (btrfs, XFS), a
/// plain copy elsewhere; keeps modes, owners, times, links and xattrs.
pub fn copy_preserving(from: &Path, to: &Path) -> Result<(), SandboxError> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|source| SandboxError::Io { path: PathBuf::from("cp"), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Resource {
            path: from.to_path_buf(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What one sandboxed invocation binds where.
pub struct Mounts<'a> {
    pub copies: &'a ResourceCopies,
    /// `<prefix>/<app>`: replaced by an empty tmpfs, so `current` can be a mount
    /// point whether or not the host has it and other versions stay out of sight.
    pub app_dir: &'a Path,
    /// The version under test, bound at `<app_dir>/current`.
    pub version_dir: &'a Path,
    pub bundle_dir: Option<&'a Path>,
    /// Hidden: directories behind an empty tmpfs, files behind `/dev/null`.
    pub hidden: &'a [&'a Path],
    /// Size of the fresh `/tmp` and `/run`.
    pub tmpfs_bytes: u64,
}

/// bubblewrap's arguments up to (not including) the command.
pub fn bwrap_args(m: &Mounts<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| args.extend(items.iter().map(|s| s.as_ref().to_owned()));
    // New namespaces of every kind (no network but loopback); the sandbox dies with us
    // and cannot reach our terminal (TIOCSTI) thanks to its own session.
    push(&[&"--unshare-all", &"--die-with-parent", &"--new-session"]);
    // No capabilities: run as root, bubblewrap otherwise leaves the test root's full
    // set, and a test could `mount -o remount,rw,bind /` and write to the host. (As
    // the sandbox's uid it would hold them inside its user namespace.) And no user
    // namespaces of its own, from which it could get them back.
    push(&[&"--unshare-user", &"--cap-drop", &"ALL", &"--disable-userns"]);
    // The host read-only; fresh /dev, /proc, /tmp, and /run (which also hides the
    // host's sockets in /run), the tmpfs ones bounded.
    let size = m.tmpfs_bytes.to_string();
    push(&[&"--ro-bind", &"/", &"/", &"--dev", &"/dev", &"--proc", &"/proc"]);
    push(&[&"--size", &size, &"--tmpfs", &"/tmp", &"--size", &size, &"--tmpfs", &"/run"]);
    push(&[&"--tmpfs", &m.app_dir]);
    // What no test may see; before the copies, so resources under a hidden directory
    // still show.
    for path in m.hidden.iter().filter(|p| p.is_absolute()) {
        if path.is_dir() {
            push(&[&"--tmpfs", path]);
        } else if path.exists() {
            push(&[&"--ro-bind", &"/dev/null", path]);
        }
    }
    // Bound after the tmpfs mounts so resources under /tmp, /run or the app's
    // directory still show.
    for (copy, original) in &m.copies.binds {
        push(&[&"--bind", copy, original]);
    }
    push(&[&"--ro-bind", &m.version_dir, &m.app_dir.join("current")]);
    match m.bundle_dir {
        Some(bundle) => push(&[&"--ro-bind", &bundle, &TESTS_MOUNT]),
        None => push(&[&"--dir", &TESTS_MOUNT]),
    }
    push(&[&"--chdir", &TESTS_MOUNT, &"--"]);
    args
}
