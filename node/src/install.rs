//! Installing versions side by side and switching between them atomically, with a
//! journal that makes every step crash-safe.
//!
//! Layout for app `A` under the install prefix `P`:
//!
//! ```text
//! P/A/versions/<version>/        an unpacked version (old ones stay for rollback)
//! P/A/versions/.<version>.partial  an unpack in progress (removed when stale)
//! P/A/current -> versions/<version>
//! ```
//!
//! `current` only ever changes by `rename(2)` of a fresh symlink over it (or, when a
//! first install fails its health check, by removing it), so at every instant it names
//! the old or the new version. The journal records each switch before it starts and
//! after it is durable; [`Installer::recover`] trusts the link (the atomic truth) to
//! finish or forget an interrupted switch, and rolls back an apply whose health check
//! never passed. Fault injection for tests: see [`crash`].

pub mod crash;
mod journal;
mod link;
#[cfg(test)]
mod tests;

use crate::sandbox::exec::{self, Limits};
use crash::{CrashMode, CrashPlan, CrashPoint};
use journal::{AppState, Applying, Transition};
use mirage_protocol::manifest::{validate_app_name, CommandSpec};
use mirage_protocol::report::{excerpt_tail, MAX_EXCERPT_BYTES};
use mirage_protocol::staging::{ApplyStep, Fault};
use redb::Database;
use semver::Version;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("install journal: {0}")]
    Db(String),
    #[error("{0}")]
    Invalid(String),
    #[error("refusing archive {path}: {reason}")]
    UnsafeArchive { path: PathBuf, reason: String },
    #[error("{app} {version} is not prepared")]
    NotPrepared { app: String, version: Version },
    #[error("{0} has no earlier version to roll back to")]
    NoPrevious(String),
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A test's injected crash fired (see [`crash`]).
    #[error("injected crash at {0}")]
    Crashed(CrashPoint),
}

impl From<mirage_artifact::ArtifactError> for InstallError {
    fn from(e: mirage_artifact::ArtifactError) -> Self {
        match e {
            mirage_artifact::ArtifactError::Io { path, source } => InstallError::Io { path, source },
            mirage_artifact::ArtifactError::Unsafe { path, reason } => InstallError::UnsafeArchive { path, reason },
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The new version is current and healthy.
    Applied { previous: Option<Version> },
    /// The apply failed at `step` and the version that ran before is current again (or,
    /// for a first install, no version is). This is the only place a failed apply is
    /// undone: callers must not roll back again, which would step back once more.
    NotApplied { fault: Fault, step: ApplyStep, reason: String, output_excerpt: String },
}

/// Where a rollback went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub from: Option<Version>,
    pub to: Version,
    /// The versions a further rollback could still go to, newest last.
    pub earlier: Vec<Version>,
}

impl InstallError {
    /// Whose fault the error is when it stops an apply: an archive that does not
    /// unpack (or an empty health check) is the release's, everything else (disk,
    /// permissions, the journal) is this node's.
    pub fn fault(&self) -> Fault {
        match self {
            InstallError::UnsafeArchive { .. } | InstallError::Invalid(_) => Fault::Release,
            _ => Fault::Local,
        }
    }
}

/// Installs, switches and rolls back apps under one prefix.
pub struct Installer {
    prefix: PathBuf,
    db: Arc<Database>,
    /// Serialises operations: each one reads and writes the journal as a whole.
    op: Mutex<()>,
    crash: Mutex<Option<CrashPlan>>,
    /// Passed to health checks as `MIRAGE_ROOT` (see [`Installer::with_machine_root`]).
    machine_root: Option<PathBuf>,
}

impl Installer {
    pub fn open(prefix: &Path, db: Arc<Database>) -> Result<Installer, InstallError> {
        std::fs::create_dir_all(prefix).map_err(io(prefix))?;
        journal::create_table(&db)?;
        Ok(Installer {
            prefix: prefix.to_path_buf(),
            db,
            op: Mutex::new(()),
            crash: Mutex::new(None),
            machine_root: None,
        })
    }

    /// Health checks see `root` as `MIRAGE_ROOT`: the machine root the node fingerprints.
    pub fn with_machine_root(mut self, root: &Path) -> Self {
        self.machine_root = Some(root.to_path_buf());
        self
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `P/A/current`, the path the app (and its tests) use.
    pub fn current_link(&self, app: &str) -> PathBuf {
        self.prefix.join(app).join("current")
    }

    pub fn version_dir(&self, app: &str, version: &Version) -> PathBuf {
        self.versions_dir(app).join(version.to_string())
    }

    fn versions_dir(&self, app: &str) -> PathBuf {
        self.prefix.join(app).join("versions")
    }

    /// The current version as the journal records it (after `recover`, the link agrees).
    pub fn current(&self, app: &str) -> Result<Option<Version>, InstallError> {
        Ok(journal::load(&self.db, app)?.current)
    }

    /// The version a rollback would go to.
    pub fn previous(&self, app: &str) -> Result<Option<Version>, InstallError> {
        Ok(journal::load(&self.db, app)?.previous().cloned())
    }

    /// The versions that ran before the current one, oldest first.
    pub fn history(&self, app: &str) -> Result<Vec<Version>, InstallError> {
        Ok(journal::load(&self.db, app)?.history)
    }

    /// Unpacks `artifact_tar` as `version` (nothing to do if already there).
    pub fn prepare(&self, app: &str, version: &Version, artifact_tar: &Path) -> Result<PathBuf, InstallError> {
        let _op = self.lock(app)?;
        self.prepare_locked(app, version, artifact_tar)
    }

    /// Switches back to the version that ran before the current one and takes it off
    /// the history, so a second rollback goes further back, never forward again.
    pub fn rollback(&self, app: &str) -> Result<RolledBack, InstallError> {
        let _op = self.lock(app)?;
        self.recover_locked(app)?;
        let state = journal::load(&self.db, app)?;
        let to = state.previous().cloned().ok_or_else(|| InstallError::NoPrevious(app.into()))?;
        let from = state.current.clone();
        self.switch_to(app, Some(&to))?;
        let mut state = journal::load(&self.db, app)?;
        state.history.pop();
        journal::store(&self.db, app, &state)?;
        Ok(RolledBack { from, to, earlier: state.history })
    }

    /// Prepares, switches, and runs the health check in `P/A/current`; on failure
    /// switches back. The old version stays on disk either way. An error part-way (a
    /// full disk, say) leaves the apply in the journal, and the `recover` that starts
    /// every operation undoes it.
    pub fn apply(
        &self,
        app: &str,
        version: &Version,
        artifact_tar: &Path,
        health_check: Option<&CommandSpec>,
    ) -> Result<ApplyOutcome, InstallError> {
        self.apply_with_health_dir(app, version, artifact_tar, health_check, None)
    }

    /// [`Installer::apply`] with the health check run in `health_dir` (e.g. the
    /// unpacked test bundle, where `tests.toml` paths are relative to) instead.
    pub fn apply_with_health_dir(
        &self,
        app: &str,
        version: &Version,
        artifact_tar: &Path,
        health_check: Option<&CommandSpec>,
        health_dir: Option<&Path>,
    ) -> Result<ApplyOutcome, InstallError> {
        if health_check.is_some_and(|h| h.argv.is_empty()) {
            return Err(InstallError::Invalid("the health check command is empty".into()));
        }
        let _op = self.lock(app)?;
        self.arm_from_env()?;
        self.recover_locked(app)?;
        if let Err(e) = self.prepare_locked(app, version, artifact_tar) {
            if matches!(e, InstallError::Crashed(_)) {
                return Err(e);
            }
            return Ok(not_applied(e.fault(), ApplyStep::Unpack, e.to_string(), String::new()));
        }
        let mut state = journal::load(&self.db, app)?;
        if state.current.as_ref() == Some(version) {
            return Ok(ApplyOutcome::Applied { previous: state.previous().cloned() });
        }
        let from = state.current.clone();
        state.applying = Some(Applying { from: from.clone(), to: version.clone() });
        journal::store(&self.db, app, &state)?;
        self.checkpoint(CrashPoint::ApplyIntent)?;
        if let Err(e) = self.switch_to(app, Some(version)) {
            if matches!(e, InstallError::Crashed(_)) {
                return Err(e);
            }
            // Undone here, once; if even that fails, the journal still holds the apply
            // and the recovery that starts every operation undoes it.
            if let Err(undo) = self.undo_apply(app) {
                tracing::error!(app, %version, error = %undo, "cannot undo a failed switch yet; recovery will");
            }
            return Ok(not_applied(e.fault(), ApplyStep::Switch, e.to_string(), String::new()));
        }

        let failure = health_check.and_then(|h| self.health_failure(app, h, health_dir));
        self.checkpoint(CrashPoint::HealthChecked)?;
        if let Some((reason, _)) = &failure {
            tracing::warn!(app, %version, %reason, "health check failed; switching back");
            self.undo_apply(app)?;
        } else {
            let mut state = journal::load(&self.db, app)?;
            state.applying = None;
            if let Some(replaced) = from.clone().filter(|f| f != version) {
                state.push_history(replaced);
            }
            journal::store(&self.db, app, &state)?;
        }
        self.checkpoint(CrashPoint::ApplyDone)?;
        Ok(match failure {
            None => ApplyOutcome::Applied { previous: from },
            Some((reason, output)) => not_applied(Fault::Release, ApplyStep::HealthCheck, reason, output),
        })
    }

    /// Brings one app's link and journal into agreement after a crash; returns the
    /// current version.
    pub fn recover(&self, app: &str) -> Result<Option<Version>, InstallError> {
        let _op = self.lock(app)?;
        self.recover_locked(app)
    }

    /// Recovers every app the journal knows; called at node start.
    pub fn recover_all(&self) -> Result<Vec<(String, Option<Version>)>, InstallError> {
        journal::apps(&self.db)?.into_iter().map(|app| self.recover(&app).map(|v| (app, v))).collect()
    }

    /// Test hook: make the `nth` (1-based) visit of `point` return
    /// `InstallError::Crashed`, leaving disk and journal as a crash there would.
    #[doc(hidden)]
    pub fn inject_crash(&self, point: CrashPoint, nth: u32) {
        *self.crash.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(CrashPlan { point, nth, mode: CrashMode::Return, hits: 0 });
    }

    fn lock(&self, app: &str) -> Result<MutexGuard<'_, ()>, InstallError> {
        validate_app_name(app).map_err(InstallError::Invalid)?;
        Ok(self.op.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Arms the cross-process crash hook when `MIRAGE_TEST_CRASH_AT` is set; in builds
    /// with the test hooks only.
    #[cfg(any(test, feature = "test-hooks"))]
    fn arm_from_env(&self) -> Result<(), InstallError> {
        if let Some(value) = std::env::var_os(crash::CRASH_ENV) {
            let plan =
                CrashPlan::parse_env(&value.to_string_lossy()).map_err(|e| InstallError::Invalid(e.to_string()))?;
            *self.crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan);
        }
        Ok(())
    }

    #[cfg(not(any(test, feature = "test-hooks")))]
    fn arm_from_env(&self) -> Result<(), InstallError> {
        Ok(())
    }

    fn checkpoint(&self, point: CrashPoint) -> Result<(), InstallError> {
        let mut plan = self.crash.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mode) = plan.as_mut().and_then(|p| p.hit(point).then_some(p.mode)) else {
            return Ok(());
        };
        match mode {
            CrashMode::Abort => {
                // Said on stderr so a test can tell the crash it asked for from any other.
                eprintln!("mirage: injected crash at {}", point.name());
                std::process::abort()
            }
            CrashMode::Return => {
                *plan = None;
                Err(InstallError::Crashed(point))
            }
        }
    }

    /// Runs the health check against `P/A/current`; `Some((reason, output))` if it
    /// failed or could not run.
    fn health_failure(&self, app: &str, spec: &CommandSpec, dir: Option<&Path>) -> Option<(String, String)> {
        let current = self.current_link(app);
        let (program, args) = spec.argv.split_first()?;
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir.unwrap_or(&current)).env("MIRAGE_APP_DIR", &current);
        if let Some(root) = &self.machine_root {
            cmd.env("MIRAGE_ROOT", root);
        }
        let limits = Limits::of(spec);
        match exec::run_bounded(cmd, Stdio::null(), &limits) {
            Err(e) => Some((format!("cannot run the health check `{program}`: {e}"), String::new())),
            Ok(run) => run
                .failure_reason(&limits)
                .map(|reason| (format!("health check: {reason}"), String::from_utf8_lossy(&run.output).into_owned())),
        }
    }
}

fn not_applied(fault: Fault, step: ApplyStep, reason: String, output: String) -> ApplyOutcome {
    ApplyOutcome::NotApplied { fault, step, reason, output_excerpt: excerpt_tail(&output, MAX_EXCERPT_BYTES) }
}

impl AppState {
    /// The state after `current` moved from `t.from` to `t.to`. The history is not
    /// touched: only a healthy apply or a rollback changes it.
    fn switched(mut self, t: &Transition) -> AppState {
        self.current = t.to.clone();
        self.switching = None;
        self
    }
}
