//! The steps that touch the disk: preparing a version directory, switching the
//! `current` link, and recovering after a crash. Callers hold the operation lock.

use super::crash::CrashPoint;
use super::journal::{self, AppState, Transition};
use super::{io, InstallError, Installer};
use mirage_artifact::{sync_dir, sync_tree, unpack_safely};
use semver::Version;
use std::path::{Path, PathBuf};

const PARTIAL_SUFFIX: &str = ".partial";

fn remove_if_exists(result: std::io::Result<()>, path: &Path) -> Result<(), InstallError> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

impl Installer {
    fn tmp_link(&self, app: &str) -> PathBuf {
        self.prefix.join(app).join("current.tmp")
    }

    /// A leading dot keeps a partial unpack from ever having a version's name (a
    /// pre-release could be called `1.0.0-rc.partial`).
    fn partial_dir(&self, app: &str, version: &Version) -> PathBuf {
        self.versions_dir(app).join(format!(".{version}{PARTIAL_SUFFIX}"))
    }

    pub(super) fn prepare_locked(&self, app: &str, version: &Version, tar: &Path) -> Result<PathBuf, InstallError> {
        let target = self.version_dir(app, version);
        if target.is_dir() {
            return Ok(target);
        }
        let versions = self.versions_dir(app);
        if !versions.is_dir() {
            std::fs::create_dir_all(&versions).map_err(io(&versions))?;
            sync_dir(&self.prefix)?;
            sync_dir(&self.prefix.join(app))?;
        }
        let partial = self.partial_dir(app, version);
        remove_if_exists(std::fs::remove_dir_all(&partial), &partial)?;
        if let Err(e) = unpack_safely(tar, &partial).and_then(|()| sync_tree(&partial)) {
            // Best effort: a leftover is removed by the next prepare or recover anyway.
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e.into());
        }
        self.checkpoint(CrashPoint::Unpacked)?;
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        sync_dir(&versions)?;
        self.checkpoint(CrashPoint::Prepared)?;
        Ok(target)
    }

    /// Moves `current` to `to` (`None` removes it), journaling intent and completion.
    pub(super) fn switch_to(&self, app: &str, to: Option<&Version>) -> Result<(), InstallError> {
        let mut state = journal::load(&self.db, app)?;
        if state.current.as_ref() == to {
            return Ok(());
        }
        if let Some(v) = to.filter(|v| !self.version_dir(app, v).is_dir()) {
            return Err(InstallError::NotPrepared { app: app.into(), version: v.clone() });
        }
        let transition = Transition { from: state.current.clone(), to: to.cloned() };
        state.switching = Some(transition.clone());
        journal::store(&self.db, app, &state)?;
        self.checkpoint(CrashPoint::SwitchIntent)?;

        let link = self.current_link(app);
        match to {
            Some(v) => {
                let tmp = self.tmp_link(app);
                remove_if_exists(std::fs::remove_file(&tmp), &tmp)?;
                let target = Path::new("versions").join(v.to_string());
                std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
                self.checkpoint(CrashPoint::TmpLink)?;
                std::fs::rename(&tmp, &link).map_err(io(&link))?;
            }
            None => remove_if_exists(std::fs::remove_file(&link), &link)?,
        }
        self.checkpoint(CrashPoint::Renamed)?;
        sync_dir(&self.prefix.join(app))?;
        journal::store(&self.db, app, &state.switched(&transition))?;
        self.checkpoint(CrashPoint::SwitchDone)
    }

    /// Returns `current` to where it was before the unfinished apply; clears the apply
    /// from the journal.
    pub(super) fn undo_apply(&self, app: &str) -> Result<(), InstallError> {
        let Some(applying) = journal::load(&self.db, app)?.applying else {
            return Ok(());
        };
        self.switch_to(app, applying.from.as_ref())?;
        let mut state = journal::load(&self.db, app)?;
        state.applying = None;
        journal::store(&self.db, app, &state)
    }

    /// The version `current` points at, `None` if there is no link. A link that is
    /// not `versions/<semver>` or whose directory is gone is reported, not guessed at.
    pub(super) fn read_link(&self, app: &str) -> Result<Option<Version>, InstallError> {
        let link = self.current_link(app);
        let target = match std::fs::read_link(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io(&link))?,
        };
        let corrupt = |reason: String| InstallError::Corrupt { path: link.clone(), reason };
        let version = target
            .strip_prefix("versions")
            .ok()
            .and_then(|rest| rest.to_str())
            .and_then(|s| Version::parse(s).ok())
            .ok_or_else(|| corrupt(format!("points at {}, not versions/<version>", target.display())))?;
        if !self.version_dir(app, &version).is_dir() {
            return Err(corrupt(format!("points at missing {}", target.display())));
        }
        Ok(Some(version))
    }

    /// Makes the journal agree with the link (the link changes atomically, so it says
    /// how far an interrupted switch got), undoes an apply whose health check never
    /// passed, and removes leftovers of interrupted steps.
    pub(super) fn recover_locked(&self, app: &str) -> Result<Option<Version>, InstallError> {
        let tmp = self.tmp_link(app);
        remove_if_exists(std::fs::remove_file(&tmp), &tmp)?;
        self.remove_partials(app)?;
        let on_disk = self.read_link(app)?;
        let before = journal::load(&self.db, app)?;
        let mut state = before.clone();
        if let Some(t) = state.switching.clone() {
            state = if on_disk == t.to { state.switched(&t) } else { AppState { switching: None, ..state } };
        }
        if state.current != on_disk {
            tracing::warn!(app, journal = ?state.current, link = ?on_disk, "journal disagreed with the link");
            state.current = on_disk;
        }
        // A rollback that switched but did not get to take its target off the history:
        // finish it, or the next rollback would go nowhere.
        if state.applying.is_none() && state.current.is_some() && state.history.last() == state.current.as_ref() {
            state.history.pop();
        }
        if state != before {
            // The link may be in place without the directory synced yet.
            sync_dir(&self.prefix.join(app))?;
            journal::store(&self.db, app, &state)?;
        }
        if state.applying.is_some() {
            tracing::warn!(app, "an apply was interrupted before its health check passed; rolling back");
            self.undo_apply(app)?;
        }
        Ok(journal::load(&self.db, app)?.current)
    }

    fn remove_partials(&self, app: &str) -> Result<(), InstallError> {
        let versions = self.versions_dir(app);
        let entries = match std::fs::read_dir(&versions) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(io(&versions))?,
        };
        for entry in entries {
            let path = entry.map_err(io(&versions))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX) {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }
}
