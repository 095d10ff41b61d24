//! A persistent cache of file digests keyed by (path, size, mtime, inode), so that
//! re-fingerprinting an unchanged machine reads no file contents at all.
//!
//! Entries whose mtime is within [`RACY_WINDOW`] of the scan are not stored: a file
//! written again within the same timestamp granularity would otherwise look unchanged
//! (git's "racy clean" problem).

use mirage_protocol::Digest;
use rayon::prelude::*;
use redb::{Database, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("file_digests_v1");
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("digest cache {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("digest cache: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> CacheError {
    CacheError::Db(e.to_string())
}

/// The identity of a file's contents as far as the filesystem tells without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            inode: meta.ino(),
        }
    }

    fn encode(&self, digest: &Digest) -> [u8; 72] {
        let mut out = [0u8; 72];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..24].copy_from_slice(&self.mtime_ns.to_le_bytes());
        out[24..32].copy_from_slice(&self.inode.to_le_bytes());
        out[32..64].copy_from_slice(&digest.0);
        out
    }

    fn decode(bytes: &[u8]) -> Option<(FileStamp, Digest)> {
        if bytes.len() != 72 {
            return None;
        }
        let size = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        let mtime_ns = i128::from_le_bytes(bytes[8..24].try_into().ok()?);
        let inode = u64::from_le_bytes(bytes[24..32].try_into().ok()?);
        let digest = Digest(bytes[32..64].try_into().ok()?);
        Some((FileStamp { size, mtime_ns, inode }, digest))
    }

    fn is_racy(&self, now: SystemTime) -> bool {
        let now_ns = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        now_ns - self.mtime_ns < RACY_WINDOW.as_nanos() as i128
    }
}

/// Digest cache over a redb database; may share the node's database.
#[derive(Clone)]
pub struct DigestCache {
    db: Arc<Database>,
}

impl DigestCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CacheError::Open { path: path.to_path_buf(), message: e.to_string() })?;
        }
        let db = Database::create(path)
            .map_err(|e| CacheError::Open { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(DigestCache { db: Arc::new(db) })
    }

    pub fn in_database(db: Arc<Database>) -> Self {
        DigestCache { db }
    }

    /// Looks up many files in one read transaction; `None` where absent or stale.
    pub fn lookup_many(&self, files: &[(&str, FileStamp)]) -> Result<Vec<Option<Digest>>, CacheError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; files.len()]),
            Err(e) => return Err(db_err(e)),
        };
        // Lookups are independent B-tree reads: spread them over the cores.
        files
            .par_iter()
            .map(|(path, stamp)| {
                let hit = table.get(*path).map_err(db_err)?;
                Ok(hit.and_then(|v| FileStamp::decode(v.value())).filter(|(s, _)| s == stamp).map(|(_, d)| d))
            })
            .collect()
    }

    /// Stores fresh digests in one write transaction, skipping racy entries.
    pub fn store_many(&self, entries: &[(&str, FileStamp, Digest)]) -> Result<usize, CacheError> {
        let now = SystemTime::now();
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut stored = 0;
        {
            let mut table = txn.open_table(TABLE).map_err(db_err)?;
            for (path, stamp, digest) in entries {
                if stamp.is_racy(now) {
                    continue;
                }
                table.insert(*path, &stamp.encode(digest)[..]).map_err(db_err)?;
                stored += 1;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_only_on_matching_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::open(&dir.path().join("c.redb")).unwrap();
        let old = FileStamp { size: 3, mtime_ns: 1_000_000_000, inode: 7 };
        let d = Digest::of(b"abc");
        assert_eq!(cache.lookup_many(&[("/a", old)]).unwrap(), vec![None]);
        assert_eq!(cache.store_many(&[("/a", old, d)]).unwrap(), 1);
        assert_eq!(cache.lookup_many(&[("/a", old)]).unwrap(), vec![Some(d)]);
        let touched = FileStamp { mtime_ns: 2_000_000_000, ..old };
        assert_eq!(cache.lookup_many(&[("/a", touched), ("/b", old)]).unwrap(), vec![None, None]);
    }

    #[test]
    fn racy_entries_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::open(&dir.path().join("c.redb")).unwrap();
        let now_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i128;
        let fresh = FileStamp { size: 1, mtime_ns: now_ns, inode: 1 };
        assert_eq!(cache.store_many(&[("/a", fresh, Digest::of(b"x"))]).unwrap(), 0);
    }
}
