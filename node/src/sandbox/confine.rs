//! Whom a sandboxed test runs as and what it may use: an unprivileged uid outside the
//! user namespace (when the node is root), and limits on memory, processes, CPU time,
//! file size, open files and the bytes it writes (see `node/SANDBOX.md`).
//!
//! Memory and processes are held by a cgroup where the node can make one: cgroup v2
//! (`memory.max`, `pids.max` under `/sys/fs/cgroup/mirage-sandbox`, where the root
//! delegates both controllers) or cgroup v1's memory and pids hierarchies. Elsewhere by
//! rlimits, which are coarser: `RLIMIT_AS` counts address space, not memory, and
//! `RLIMIT_NPROC` counts every process of the sandbox's uid on the machine.
//!
//! The child joins its cgroup, sets its rlimits and drops to the sandbox's uid in one
//! `pre_exec` step, before it execs bubblewrap, so nothing the test starts escapes them.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

const MIB: u64 = 1024 * 1024;

/// What one sandboxed command may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Memory (and, with a cgroup, the tmpfs pages it writes).
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub processes: u64,
    /// The largest file it may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Bytes it may add to its copies of the app's resources, all files together.
    pub write_bytes: u64,
    /// Size of each of its fresh `/tmp` and `/run`.
    pub tmpfs_bytes: u64,
    pub open_files: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            memory_bytes: 1024 * MIB,
            processes: 256,
            file_bytes: 1024 * MIB,
            write_bytes: 2048 * MIB,
            tmpfs_bytes: 256 * MIB,
            open_files: 1024,
        }
    }
}

/// A limit a test ran into, as the reason it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breach {
    Memory { limit: u64 },
    Processes { limit: u64 },
    Writes { limit: u64 },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breach::Memory { limit } => write!(f, "killed: it used all of its {} MiB of memory", limit / MIB),
            Breach::Processes { limit } => write!(f, "killed: it reached its limit of {limit} processes"),
            Breach::Writes { limit } => {
                write!(f, "killed: it wrote more than {} MiB to its copies of the app's files", limit / MIB)
            }
        }
    }
}

/// How memory and process counts are held on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Per-run cgroups under this cgroup v2 directory.
    CgroupV2 { parent: PathBuf },
    /// Per-run cgroups under these cgroup v1 directories.
    CgroupV1 { memory: PathBuf, pids: PathBuf },
    /// `RLIMIT_AS` and `RLIMIT_NPROC`.
    Rlimits,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const GROUP_NAME: &str = "mirage-sandbox";

impl Enforcement {
    /// The best this machine allows, tried by making (and removing) a cgroup.
    pub fn detect() -> Enforcement {
        Enforcement::detect_under(Path::new(CGROUP_ROOT))
    }

    fn detect_under(root: &Path) -> Enforcement {
        let enforcement = Enforcement::probe(root);
        // A node killed mid-run leaves its run's groups behind (`run-<pid>-<n>`): those
        // of processes that are gone, and empty, go now. A live process's are its own
        // (another node on this machine may be about to use one it just made).
        let parents: Vec<&PathBuf> = match &enforcement {
            Enforcement::CgroupV2 { parent } => vec![parent],
            Enforcement::CgroupV1 { memory, pids } => vec![memory, pids],
            Enforcement::Rlimits => Vec::new(),
        };
        for parent in parents {
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner =
                    name.strip_prefix("run-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
                if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        enforcement
    }

    fn probe(root: &Path) -> Enforcement {
        if let Some(parent) = v2_parent(root) {
            return Enforcement::CgroupV2 { parent };
        }
        let (memory, pids) = (root.join("memory").join(GROUP_NAME), root.join("pids").join(GROUP_NAME));
        let usable = |dir: &Path| {
            let _ = std::fs::create_dir(dir);
            let probe = dir.join("probe");
            let ok = std::fs::create_dir(&probe).is_ok() || probe.is_dir();
            let _ = std::fs::remove_dir(&probe);
            ok
        };
        if root.join("memory/memory.limit_in_bytes").is_file()
            && root.join("pids/cgroup.procs").is_file()
            && usable(&memory)
            && usable(&pids)
        {
            return Enforcement::CgroupV1 { memory, pids };
        }
        Enforcement::Rlimits
    }

    pub fn describe(&self) -> String {
        match self {
            Enforcement::CgroupV2 { parent } => format!("cgroup v2 ({})", parent.display()),
            Enforcement::CgroupV1 { memory, pids } => {
                format!("cgroup v1 ({}, {})", memory.display(), pids.display())
            }
            Enforcement::Rlimits => "rlimits (no cgroup could be made here)".into(),
        }
    }
}

/// cgroup v2's parent for per-run groups, if the root delegates memory and pids.
fn v2_parent(root: &Path) -> Option<PathBuf> {
    let controllers = std::fs::read_to_string(root.join("cgroup.subtree_control")).ok()?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !has("memory") || !has("pids") {
        return None;
    }
    let parent = root.join(GROUP_NAME);
    let _ = std::fs::create_dir(&parent);
    // Our parent holds no process, so it may hand both controllers on to its children.
    std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids").ok()?;
    let probe = parent.join("probe");
    let ok = (std::fs::create_dir(&probe).is_ok() || probe.is_dir()) && probe.join("memory.max").is_file();
    let _ = std::fs::remove_dir(&probe);
    ok.then_some(parent)
}

/// One run's cgroup(s): made before the child starts, joined by it, emptied and
/// removed on drop.
pub struct RunGroup {
    kind: GroupKind,
    dirs: Vec<PathBuf>,
    limits: ResourceLimits,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    V2,
    V1,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl RunGroup {
    fn create(enforcement: &Enforcement, limits: &ResourceLimits) -> io::Result<Option<RunGroup>> {
        let name = format!("run-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
        let group = match enforcement {
            Enforcement::Rlimits => return Ok(None),
            Enforcement::CgroupV2 { parent } => {
                let dir = parent.join(&name);
                let group = RunGroup { kind: GroupKind::V2, dirs: vec![dir.clone()], limits: *limits };
                std::fs::create_dir(&dir)?;
                std::fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
                // No swap: the limit is the memory the test may hold, not a slower disk.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                std::fs::write(dir.join("pids.max"), limits.processes.to_string())?;
                group
            }
            Enforcement::CgroupV1 { memory, pids } => {
                let (m, p) = (memory.join(&name), pids.join(&name));
                let group = RunGroup { kind: GroupKind::V1, dirs: vec![m.clone(), p.clone()], limits: *limits };
                std::fs::create_dir(&m)?;
                std::fs::create_dir(&p)?;
                std::fs::write(m.join("memory.limit_in_bytes"), limits.memory_bytes.to_string())?;
                let _ = std::fs::write(m.join("memory.memsw.limit_in_bytes"), limits.memory_bytes.to_string());
                std::fs::write(p.join("pids.max"), limits.processes.to_string())?;
                group
            }
        };
        Ok(Some(group))
    }

    /// The files a process writes `0` to in order to join.
    fn join_files(&self) -> io::Result<Vec<CString>> {
        self.dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other))
            .collect()
    }

    /// A limit the run hit, as the kernel counted it.
    pub fn breach(&self) -> Option<Breach> {
        let counter = |file: PathBuf, key: &str| -> u64 {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok())))
                .unwrap_or(0)
        };
        let (oom, forks) = match self.kind {
            GroupKind::V2 => {
                let d = &self.dirs[0];
                (counter(d.join("memory.events"), "oom_kill "), counter(d.join("pids.events"), "max "))
            }
            GroupKind::V1 => {
                let (m, p) = (&self.dirs[0], &self.dirs[1]);
                let failcnt = std::fs::read_to_string(m.join("memory.failcnt"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                let oom = counter(m.join("memory.oom_control"), "oom_kill ").max(failcnt);
                (oom, counter(p.join("pids.events"), "max "))
            }
        };
        if oom > 0 {
            Some(Breach::Memory { limit: self.limits.memory_bytes })
        } else if forks > 0 {
            Some(Breach::Processes { limit: self.limits.processes })
        } else {
            None
        }
    }

    /// Kills every process still in the group: what the test left behind cannot
    /// outlive it.
    fn kill_all(&self) {
        if self.kind == GroupKind::V2 && std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for dir in &self.dirs {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else { continue };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        // A group can only be removed once its processes are gone; SIGKILL takes a
        // moment to land on all of them.
        for _ in 0..50 {
            self.kill_all();
            self.dirs.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
            if self.dirs.is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!(groups = ?self.dirs, "sandbox cgroups left behind: processes in them did not die");
    }
}

/// How tests are confined on this node.
#[derive(Clone, Debug)]
pub struct Confinement {
    pub limits: ResourceLimits,
    pub enforcement: Enforcement,
    /// The uid and gid tests run as, outside their user namespace; `None` runs them as
    /// the node's own (a node that is not root cannot change it).
    pub user: Option<(u32, u32)>,
}

/// `nobody`, `nogroup` on Debian.
pub const SANDBOX_UID: u32 = 65534;
pub const SANDBOX_GID: u32 = 65534;

impl Confinement {
    /// The default limits, the best enforcement the machine allows, and `nobody` when
    /// the node is root.
    pub fn detect() -> Confinement {
        // SAFETY: geteuid(2) cannot fail and has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Confinement {
            limits: ResourceLimits::default(),
            enforcement: Enforcement::detect(),
            user: root.then_some((SANDBOX_UID, SANDBOX_GID)),
        }
    }

    /// Makes the run's cgroup and has `cmd`'s child join it, set its rlimits and drop
    /// to the sandbox's uid before it execs. `cpu_secs` bounds each process's CPU
    /// time. Keep the returned group until the child is gone.
    pub fn apply(&self, cmd: &mut Command, cpu_secs: u64) -> io::Result<Option<RunGroup>> {
        let group = RunGroup::create(&self.enforcement, &self.limits)?;
        let join = group.as_ref().map(RunGroup::join_files).transpose()?.unwrap_or_default();
        let l = self.limits;
        let mut rlimits = vec![
            (libc::RLIMIT_FSIZE, l.file_bytes),
            (libc::RLIMIT_NOFILE, l.open_files),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_CPU, cpu_secs.max(1)),
        ];
        if group.is_none() {
            rlimits.push((libc::RLIMIT_AS, l.memory_bytes));
            if self.user.is_some() {
                rlimits.push((libc::RLIMIT_NPROC, l.processes));
            }
        }
        let user = self.user;
        // SAFETY: runs in the forked child before exec and only calls open(2),
        // write(2), close(2), setrlimit(2), setgroups(2), setgid(2) and setuid(2), which
        // are async-signal-safe, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for file in &join {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (resource, value) in &rlimits {
                    let limit = libc::rlimit { rlim_cur: *value, rlim_max: *value };
                    if libc::setrlimit(*resource, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(group)
    }

    /// One line for the log and `mirage status`.
    pub fn describe(&self) -> String {
        let l = &self.limits;
        format!(
            "as {}, by {}: memory {} MiB, {} processes, files up to {} MiB, {} MiB written, /tmp and /run {} MiB",
            self.user.map_or("the node's own uid".to_string(), |(u, g)| format!("uid {u} gid {g}")),
            self.enforcement.describe(),
            l.memory_bytes / MIB,
            l.processes,
            l.file_bytes / MIB,
            l.write_bytes / MIB,
            l.tmpfs_bytes / MIB
        )
    }

    /// Hands a directory the node made (a run's copies) to the sandbox's uid.
    pub fn give(&self, path: &Path) -> io::Result<()> {
        let Some((uid, gid)) = self.user else { return Ok(()) };
        for entry in walkdir::WalkDir::new(path).follow_links(false) {
            let entry = entry.map_err(io::Error::other)?;
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Whether the sandbox's uid can reach `path` (it and every directory above it
    /// searchable by others), which bubblewrap needs to bind it; if not, the first
    /// directory in the way.
    pub fn can_reach(&self, path: &Path) -> Result<(), PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        if self.user.is_none() {
            return Ok(());
        }
        for dir in path.ancestors() {
            let Ok(meta) = std::fs::metadata(dir) else { continue };
            if meta.is_dir() && meta.permissions().mode() & 0o001 == 0 {
                return Err(dir.to_path_buf());
            }
        }
        Ok(())
    }
}

/// Bytes a directory tree takes on disk (allocated blocks, so sparse files count as
/// what they use), and whether it holds more than `max_entries` entries.
pub fn disk_usage(dir: &Path, max_entries: usize) -> (u64, bool) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    for (i, entry) in walkdir::WalkDir::new(dir).follow_links(false).into_iter().enumerate() {
        if i >= max_entries {
            return (bytes, true);
        }
        if let Ok(meta) = entry.and_then(|e| e.metadata()) {
            bytes += meta.blocks() * 512;
        }
    }
    (bytes, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaches_read_as_reasons() {
        assert_eq!(Breach::Memory { limit: 64 * MIB }.to_string(), "killed: it used all of its 64 MiB of memory");
        assert!(Breach::Processes { limit: 32 }.to_string().contains("32 processes"));
        assert!(Breach::Writes { limit: 8 * MIB }.to_string().contains("more than 8 MiB"));
    }

    #[test]
    fn a_machine_without_cgroups_falls_back_to_rlimits() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Enforcement::detect_under(empty.path()), Enforcement::Rlimits);
    }

    #[test]
    fn groups_left_by_processes_that_are_gone_are_removed_and_a_live_ones_kept() {
        // A cgroup v1 layout on a plain directory: what detection looks for.
        let root = tempfile::tempdir().unwrap();
        for (dir, file) in [("memory", "memory.limit_in_bytes"), ("pids", "cgroup.procs")] {
            std::fs::create_dir_all(root.path().join(dir).join(GROUP_NAME)).unwrap();
            std::fs::write(root.path().join(dir).join(file), "").unwrap();
        }
        let memory = root.path().join("memory").join(GROUP_NAME);
        let (gone, live) = (memory.join("run-999999999-1"), memory.join(format!("run-{}-7", std::process::id())));
        std::fs::create_dir(&gone).unwrap();
        std::fs::create_dir(&live).unwrap();
        assert!(matches!(Enforcement::detect_under(root.path()), Enforcement::CgroupV1 { .. }));
        assert!(!gone.exists(), "a dead process's group stayed");
        assert!(live.exists(), "a live process's group was taken");
    }

    #[test]
    fn disk_usage_counts_blocks_and_stops_at_the_entry_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let (bytes, capped) = disk_usage(dir.path(), 100);
        assert!(bytes >= 64 * 1024 && !capped, "{bytes}");
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        assert!(disk_usage(dir.path(), 5).1);
    }
}
