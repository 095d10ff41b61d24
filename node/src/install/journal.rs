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
    pub previous: Option<Version>,
    /// A switch of the `current` link that began and has not been recorded as done.
    pub switching: Option<Transition>,
    /// An apply whose health check has not passed yet; recovery undoes it.
    pub applying: Option<Applying>,
}

/// An apply in progress: undoing it returns `current` to `from` and `previous` to
/// what it was, so a later rollback never lands on the version that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applying {
    pub from: Option<Version>,
    pub to: Version,
    pub previous: Option<Version>,
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
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| db_err(format!("journal entry for {app}: {e}"))),
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
