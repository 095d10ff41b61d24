//! The install journal: per-app state in a redb table of the node's database, written
//! (and committed durably) before and after every step that changes `current`.

use super::InstallError;
use redb::{Database, ReadableTable, TableDefinition};
use semver::Version;
use serde::{Deserialize, Serialize};

/// app name → JSON of [`AppState`].
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("install_journal_v1");

/// A change of `current` from one version to another (`None`: no `current` link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Option<Version>,
    pub to: Option<Version>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub current: Option<Version>,
    /// The versions that ran before `current`, oldest first: each healthy apply pushes
    /// the one it replaced, each rollback pops one. A rollback never goes forward.
    #[serde(default)]
    pub history: Vec<Version>,
    /// Journals written before `history` existed kept only this; read into `history`.
    #[serde(default, skip_serializing)]
    pub(super) previous: Option<Version>,
    /// A switch of the `current` link that began and has not been recorded as done.
    pub switching: Option<Transition>,
    /// An apply whose health check has not passed yet; recovery undoes it.
    pub applying: Option<Applying>,
}

/// An apply in progress: undoing it returns `current` to `from`. `history` only
/// changes once the apply is healthy, so a later rollback never lands on the version
/// that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applying {
    pub from: Option<Version>,
    pub to: Version,
}

/// How many earlier versions the history keeps (their directories stay on disk).
pub const MAX_HISTORY: usize = 32;

impl AppState {
    /// The version a rollback would go to.
    pub fn previous(&self) -> Option<&Version> {
        self.history.last()
    }

    /// Records that `replaced` ran before the version now current.
    pub fn push_history(&mut self, replaced: Version) {
        self.history.push(replaced);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> InstallError {
    InstallError::Db(e.to_string())
}

pub fn create_table(db: &Database) -> Result<(), InstallError> {
    let txn = db.begin_write().map_err(db_err)?;
    txn.open_table(TABLE).map_err(db_err)?;
    txn.commit().map_err(db_err)
}

pub fn load(db: &Database, app: &str) -> Result<AppState, InstallError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(TABLE).map_err(db_err)?;
    match table.get(app).map_err(db_err)? {
        None => Ok(AppState::default()),
        Some(v) => {
            let mut state: AppState =
                serde_json::from_slice(v.value()).map_err(|e| db_err(format!("journal entry for {app}: {e}")))?;
            if let Some(previous) = state.previous.take().filter(|_| state.history.is_empty()) {
                state.history.push(previous);
            }
            Ok(state)
        }
    }
}

/// Commits `state` durably (redb's default durability syncs before returning).
pub fn store(db: &Database, app: &str, state: &AppState) -> Result<(), InstallError> {
    let bytes = serde_json::to_vec(state).map_err(db_err)?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut table = txn.open_table(TABLE).map_err(db_err)?;
        table.insert(app, bytes.as_slice()).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

pub fn apps(db: &Database) -> Result<Vec<String>, InstallError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(TABLE).map_err(db_err)?;
    let mut apps = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        let (k, _) = entry.map_err(db_err)?;
        apps.push(k.value().to_string());
    }
    Ok(apps)
}
