//! Running an upgrade's tests in a bubblewrap sandbox against a copy-on-write view of
//! the machine's real environment (see `node/SANDBOX.md` for what that isolates).
//!
//! Every invocation gets fresh copies of the app's resources, the candidate version
//! bound at `<prefix>/<app>/current`, and the test bundle read-only at
//! [`view::TESTS_MOUNT`] as its working directory. Command tests pass on exit status 0;
//! replay tests run each recorded input through the old and the new version and
//! compare the outputs (see [`replay`]).

pub mod confine;
pub mod exec;
pub mod replay;
mod run;
mod status;
#[cfg(test)]
mod tests;
pub mod view;

use confine::{Confinement, ResourceLimits};
use exec::Limits;
use mirage_protocol::manifest::{validate_app_name, CommandSpec, TestSpec};
use mirage_protocol::Digest;
use status::StartMarker;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;
use view::{Mounts, ResourceCopies, SANDBOX_PATH, TESTS_MOUNT};

/// Most files a test's copies may hold before it is stopped (walking them is how its
/// writes are counted).
const MAX_COPY_ENTRIES: usize = 100_000;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("bubblewrap (`bwrap`) was not found in PATH: install it with `apt-get install bubblewrap`")]
    NotInstalled,
    #[error("bubblewrap cannot create a sandbox here ({0}); it needs root or unprivileged user namespaces")]
    NotWorking(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("resource {path}: {reason}")]
    Resource { path: PathBuf, reason: String },
    #[error("invalid test run: {0}")]
    Invalid(String),
    /// bwrap could not build the sandbox, so the test never started.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error(
        "tests run as uid {uid}, which cannot reach {path}: {blocked} is not searchable by others \
         (`chmod o+x {blocked}`, or keep the machine root, install prefix and data directory elsewhere)"
    )]
    Unreachable { uid: u32, path: PathBuf, blocked: PathBuf },
}

/// Everything needed to test one candidate version of one app.
#[derive(Clone, Debug)]
pub struct TestRun {
    pub app: String,
    /// The directory holding `<app>/current` on this machine (e.g. `/opt/mirage`).
    pub install_prefix: PathBuf,
    /// The installed version, needed by replay tests.
    pub old_version_dir: Option<PathBuf>,
    /// The unpacked candidate.
    pub new_version_dir: PathBuf,
    /// Absolute paths (files or directories) the app reads and writes; tests see
    /// writable throw-away copies in their place.
    pub resources: Vec<PathBuf>,
    /// The unpacked test bundle, if the manifest has one.
    pub bundle_dir: Option<PathBuf>,
    pub tests: Vec<TestSpec>,
    /// The machine's root as the node fingerprints it (`/` in production, a generated
    /// root in testnets); tests find the app's files under it (`MIRAGE_ROOT`).
    pub machine_root: PathBuf,
    /// Paths this test must not see besides the sandbox's own list: other apps' files.
    pub hidden: Vec<PathBuf>,
}

impl TestRun {
    /// `<prefix>/<app>`, which holds the app's `current` version.
    pub fn app_dir(&self) -> PathBuf {
        self.install_prefix.join(&self.app)
    }

    /// Where the app's current version lives on the host and inside the sandbox.
    pub fn app_current(&self) -> PathBuf {
        self.app_dir().join("current")
    }

    fn validate(&self) -> Result<(), SandboxError> {
        validate_app_name(&self.app).map_err(SandboxError::Invalid)?;
        if !self.install_prefix.is_absolute() {
            return Err(SandboxError::Invalid(format!(
                "install prefix {} is not absolute",
                self.install_prefix.display()
            )));
        }
        let dirs = std::iter::once(&self.new_version_dir).chain(&self.old_version_dir).chain(&self.bundle_dir);
        if let Some(d) = dirs.into_iter().find(|d| !d.is_dir()) {
            return Err(SandboxError::Invalid(format!("{} is not a directory", d.display())));
        }
        if let Some(r) = self.resources.iter().find(|r| !r.is_absolute()) {
            return Err(SandboxError::Invalid(format!("resource {} is not an absolute path", r.display())));
        }
        Ok(())
    }
}

/// How one test went.
/// The files of an app's environment on the machine at `root` that tests get
/// throw-away copies of: its config, data, log and temp files, as the fingerprint found
/// them. The node's representatives and `mirage vendor test` pick them alike.
pub fn resources_of(fingerprint: &mirage_protocol::Fingerprint, root: &Path) -> Vec<PathBuf> {
    use mirage_protocol::fingerprint::ResourceClass;
    let paths: std::collections::BTreeSet<&str> = fingerprint
        .items()
        .iter()
        .filter(|i| {
            matches!(i.class, ResourceClass::Config | ResourceClass::Data | ResourceClass::Log | ResourceClass::Temp)
        })
        .map(|i| i.path.as_str())
        .collect();
    paths.into_iter().filter_map(|p| crate::scan::resolve(root, p).ok().flatten()).filter(|p| p.exists()).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub name: String,
    pub passed: bool,
    /// The (new version's) exit status, `None` if killed or never run.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The test's output (a command test's combined stdout and stderr, at most its
    /// `max_output_bytes`; a replay test's per-input verdicts and first differences).
    pub output: String,
    /// Why it failed, in a few words.
    pub reason: Option<String>,
    pub duration_ms: u64,
}

/// The verdict on a whole test run, shaped for a `TestReport` / `ProblemReport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResults {
    pub passed: bool,
    pub tests: Vec<TestOutcome>,
    /// blake3 over every test's name and full output (each replay run's included).
    pub logs_digest: Digest,
    /// At most `report::MAX_SUMMARY_BYTES`.
    pub summary: String,
    /// The tail of the failed tests' outputs, at most `report::MAX_EXCERPT_BYTES`.
    pub failure_excerpt: String,
}

/// A located, working bubblewrap, the directory where resource copies go, how tests
/// are confined, and what of the host they never see.
#[derive(Clone, Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    scratch: PathBuf,
    confinement: Confinement,
    /// Hidden from every test: the node's data directory and key, for one.
    hidden: Vec<PathBuf>,
}

impl Sandbox {
    /// Finds `bwrap` and checks that it can create a sandbox here.
    pub fn new() -> Result<Sandbox, SandboxError> {
        let sandbox = Sandbox::locate()?;
        sandbox.check()?;
        Ok(sandbox)
    }

    /// Finds `bwrap` in `PATH` without running it.
    pub fn locate() -> Result<Sandbox, SandboxError> {
        Sandbox::locate_in(&std::env::var_os("PATH").unwrap_or_default())
    }

    /// Finds `bwrap` in the directories of a `PATH`-style list.
    pub fn locate_in(path_list: &std::ffi::OsStr) -> Result<Sandbox, SandboxError> {
        let bwrap = std::env::split_paths(path_list).map(|d| d.join("bwrap")).find(|p| p.is_file());
        let bwrap = bwrap.ok_or(SandboxError::NotInstalled)?;
        Ok(Sandbox { bwrap, scratch: std::env::temp_dir(), confinement: Confinement::detect(), hidden: Vec::new() })
    }

    /// Paths no test sees (directories become empty, files empty): the node's data
    /// directory, its key.
    /// Relative paths are taken from the current directory (a node started with
    /// `--data-dir node-a`): bubblewrap would read them inside the sandbox.
    pub fn hiding(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let resolved = |p: PathBuf| std::fs::canonicalize(&p).or_else(|_| std::path::absolute(&p)).unwrap_or(p);
        self.hidden.extend(paths.into_iter().map(resolved));
        self
    }

    /// Other limits than the defaults (tests of the limits themselves).
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.confinement.limits = limits;
        self
    }

    pub fn confinement(&self) -> &Confinement {
        &self.confinement
    }

    /// Whether tests' user can reach `path` (see [`Confinement::can_reach`]).
    pub fn reaches(&self, path: &Path) -> Result<(), SandboxError> {
        self.confinement.can_reach(path).map_err(|blocked| SandboxError::Unreachable {
            uid: self.confinement.user.map_or(0, |(u, _)| u),
            path: path.to_path_buf(),
            blocked,
        })
    }

    /// Copies of resources go under `dir`; on the resources' file system, copies can
    /// share blocks (reflinks) instead of duplicating them.
    pub fn with_scratch_dir(mut self, dir: &Path) -> Self {
        self.scratch = dir.to_path_buf();
        self
    }

    /// Runs `true` in a sandbox with the options and the confinement tests get (as the
    /// sandbox's uid, which needs unprivileged user namespaces).
    pub fn check(&self) -> Result<(), SandboxError> {
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--ro-bind", "/", "/"]);
        cmd.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run", "--", "true"]);
        cmd.env_clear().env("PATH", SANDBOX_PATH);
        let limits = Limits { timeout: std::time::Duration::from_secs(30), max_output_bytes: 4096 };
        let io_err = |source| SandboxError::Io { path: self.bwrap.clone(), source };
        let _group = self.confinement.apply(&mut cmd, 30).map_err(io_err)?;
        let run = exec::run_bounded(cmd, Stdio::null(), &limits).map_err(io_err)?;
        if run.succeeded() {
            Ok(())
        } else {
            let why = run.failure_reason(&limits).unwrap_or_default();
            Err(SandboxError::NotWorking(format!("{why}: {}", String::from_utf8_lossy(&run.output).trim())))
        }
    }

    /// Runs every test of `run` and sums up. A failing test is a result, not an error;
    /// errors are for runs that could not be set up (bad paths, uncopyable resources).
    pub fn run_tests(&self, run: &TestRun) -> Result<TestResults, SandboxError> {
        run.validate()?;
        // The app's directory is a mount point (see `view::bwrap_args`); on a machine
        // that never installed the app through Mirage it does not exist yet.
        let app_dir = run.app_dir();
        std::fs::create_dir_all(&app_dir).map_err(|source| SandboxError::Io { path: app_dir, source })?;
        let mut outcomes = Vec::with_capacity(run.tests.len());
        let mut hasher = blake3::Hasher::new();
        for test in &run.tests {
            let (outcome, logs) = match test {
                TestSpec::Command { name, command } => self.command_test(run, name, command)?,
                TestSpec::Replay { name, inputs, command, ignore_fields } => {
                    self.replay_test(run, name, inputs, command, ignore_fields)?
                }
            };
            run::hash_logs(&mut hasher, &outcome.name, &logs);
            outcomes.push(outcome);
        }
        Ok(run::sum_up(outcomes, hasher.finalize().into()))
    }

    /// One sandboxed invocation of `spec` against `version_dir`.
    fn invoke(
        &self,
        run: &TestRun,
        version_dir: &Path,
        spec: &CommandSpec,
        stdin: Stdio,
    ) -> Result<exec::Finished, SandboxError> {
        if spec.argv.is_empty() {
            return Err(SandboxError::Invalid("empty command".into()));
        }
        let copies = ResourceCopies::make(&self.scratch, &run.resources, &self.confinement)?;
        // bwrap runs as the sandbox's uid and must reach what it binds, and where.
        let app_dir = run.app_dir();
        let reached = [copies.dir(), version_dir, &app_dir].into_iter().chain(run.bundle_dir.as_deref());
        for path in reached.chain(run.resources.iter().map(PathBuf::as_path)) {
            self.reaches(path)?;
        }
        let hidden: Vec<&Path> = self.hidden.iter().chain(&run.hidden).map(PathBuf::as_path).collect();
        let mounts = Mounts {
            copies: &copies,
            app_dir: &app_dir,
            version_dir,
            bundle_dir: run.bundle_dir.as_deref(),
            hidden: &hidden,
            tmpfs_bytes: self.confinement.limits.tmpfs_bytes,
        };
        let bwrap_err = |source| SandboxError::Io { path: self.bwrap.clone(), source };
        let marker = StartMarker::new().map_err(bwrap_err)?;
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(view::bwrap_args(&mounts));
        marker.wrap(&mut cmd, &spec.argv);
        cmd.env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("MIRAGE_APP_DIR", run.app_current())
            .env("MIRAGE_TESTS_DIR", TESTS_MOUNT)
            .env("MIRAGE_ROOT", &run.machine_root);
        let group = self.confinement.apply(&mut cmd, spec.timeout_secs as u64).map_err(bwrap_err)?;
        let write_limit = self.confinement.limits.write_bytes;
        let baseline = confine::disk_usage(copies.dir(), MAX_COPY_ENTRIES).0;
        let mut watch = || {
            if let Some(breach) = group.as_ref().and_then(|g| g.breach()) {
                return Some(breach.to_string());
            }
            let (used, too_many) = confine::disk_usage(copies.dir(), MAX_COPY_ENTRIES);
            if too_many {
                return Some(format!("killed: it made more than {MAX_COPY_ENTRIES} files in its copies"));
            }
            (used.saturating_sub(baseline) > write_limit)
                .then(|| confine::Breach::Writes { limit: write_limit }.to_string())
        };
        let mut finished = exec::run_watched(cmd, stdin, &Limits::of(spec), &mut watch).map_err(bwrap_err)?;
        // The kernel may have held the test to a limit without our watcher stopping it
        // (an out-of-memory kill it survived as a failure): say so.
        if !finished.succeeded() && finished.stopped.is_none() {
            finished.stopped = group.as_ref().and_then(|g| g.breach()).map(|b| b.to_string());
        }
        drop(group);
        if !finished.timed_out && !marker.started().map_err(bwrap_err)? {
            // bwrap's own complaint (a mount it could not make, say) is the output.
            return Err(SandboxError::Setup(String::from_utf8_lossy(&finished.output).trim().to_string()));
        }
        Ok(finished)
    }
}
