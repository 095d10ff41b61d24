//! The node's redb database: identity, known peers (re-dialed on restart), our own
//! signed fingerprints, the signed announcements that make up cluster membership, when
//! it first saw each peer in its cluster, the releases it admitted and the artifacts it
//! wants.
//! Every write happens in one transaction. The digest cache shares the same file.

use mirage_protocol::presence::Sighting;
use mirage_protocol::{wire, PublicKey};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("node_meta");
/// peer id → [`KnownPeer`].
const KNOWN_PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("known_peers");
/// app → our newest signed fingerprint envelope.
const OWN_FINGERPRINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("own_fingerprints");
/// (app, peer id) → the newest verified announcement we accepted from that peer.
const ANNOUNCEMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("peer_announcements");

/// app → the newest signed manifest envelope this node admitted (re-checked on load).
const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
/// content hash (hex) → app: artifacts this node was asked to download, resumed after
/// a restart until complete.
const WANTED: TableDefinition<&str, &str> = TableDefinition::new("wanted_artifacts");

/// app → the staging core's last persisted snapshot (wire encoding).
const STAGING: TableDefinition<&str, &[u8]> = TableDefinition::new("staging_snapshots");
/// (app, envelope id hex) → a signed test or problem report envelope seen for the app.
const REPORTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("reports");
/// (app, peer key) → its `Sighting` (cluster key, first seen, last seen): who may
/// represent a cluster after a restart (`protocol::presence`).
const PRESENCE: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("presence");

/// Most known peers kept; the least recently seen go first.
pub const MAX_KNOWN_PEERS: usize = 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: redb::DatabaseError },
    #[error("database: {0}")]
    Db(String),
    #[error("this database belongs to peer {stored}, but the key is for {given}")]
    WrongIdentity { stored: String, given: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for StoreError {
        fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
    })*};
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    pub addrs: Vec<String>,
    pub last_seen_ms: u64,
}

pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the database at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db =
            Database::create(path).map_err(|e| StoreError::Open { path: path.display().to_string(), source: e })?;
        let tx = db.begin_write()?;
        tx.open_table(META)?;
        tx.open_table(KNOWN_PEERS)?;
        tx.open_table(OWN_FINGERPRINTS)?;
        tx.open_table(ANNOUNCEMENTS)?;
        tx.open_table(RELEASES)?;
        tx.open_table(WANTED)?;
        tx.open_table(STAGING)?;
        tx.open_table(REPORTS)?;
        tx.open_table(PRESENCE)?;
        tx.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// The database, for other users of the same file (the digest cache).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Records the node's peer id on first run; afterwards refuses a different key, so a
    /// restarted node always rejoins as itself.
    pub fn check_identity(&self, peer_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(META)?;
            let stored = t.get("peer_id")?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match stored {
                Some(s) if s != peer_id => {
                    return Err(StoreError::WrongIdentity { stored: s, given: peer_id.to_string() });
                }
                Some(_) => {}
                None => {
                    t.insert("peer_id", peer_id.as_bytes())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn put_known_peer(&self, peer_id: &str, peer: &KnownPeer) -> Result<(), StoreError> {
        let bytes = wire::encode(peer).map_err(|e| StoreError::Db(e.to_string()))?;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut t = tx.open_table(KNOWN_PEERS)?;
            t.insert(peer_id, bytes.as_slice())?;
            if t.len()? > MAX_KNOWN_PEERS as u64 {
                let mut oldest: Option<(String, u64)> = None;
                for row in t.iter()? {
                    let (k, v) = row?;
                    let seen = wire::decode::<KnownPeer>(v.value()).map_or(0, |p| p.last_seen_ms);
                    if oldest.as_ref().is_none_or(|(_, s)| seen < *s) {
                        oldest = Some((k.value().to_string(), seen));
                    }
                }
                if let Some((k, _)) = oldest {
                    t.remove(k.as_str())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Known peers, most recently seen first. Unreadable rows are skipped.
    pub fn known_peers(&self) -> Result<Vec<(String, KnownPeer)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KNOWN_PEERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if let Ok(p) = wire::decode::<KnownPeer>(v.value()) {
                out.push((k.value().to_string(), p));
            }
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.1.last_seen_ms));
        Ok(out)
    }

    pub fn put_own_fingerprint(&self, app: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(OWN_FINGERPRINTS)?;
            t.insert(app, envelope)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn own_fingerprint(&self, app: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OWN_FINGERPRINTS)?;
        Ok(t.get(app)?.map(|v| v.value().to_vec()))
    }

    pub fn put_release(&self, app: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(RELEASES)?;
            t.insert(app, envelope)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored release: (app, manifest envelope bytes).
    pub fn releases(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RELEASES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Marks an artifact as wanted (`true`) or no longer wanted.
    pub fn set_wanted(&self, content_hex: &str, app: &str, wanted: bool) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(WANTED)?;
            if wanted {
                t.insert(content_hex, app)?;
            } else {
                t.remove(content_hex)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Wanted artifacts: (content hash hex, app).
    pub fn wanted(&self) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(WANTED)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Stores a staging snapshot durably (the core's `Persist` action).
    pub fn put_snapshot(&self, app: &str, snapshot: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(STAGING)?;
            t.insert(app, snapshot)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn snapshot(&self, app: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(STAGING)?;
        Ok(t.get(app)?.map(|v| v.value().to_vec()))
    }

    pub fn put_report(&self, app: &str, id_hex: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut t = tx.open_table(REPORTS)?;
            t.insert((app, id_hex), envelope)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes stored reports of `app` whose id (hex) `keep` says no to; returns how many.
    pub fn retain_reports(&self, app: &str, keep: impl Fn(&str) -> bool) -> Result<usize, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        let mut gone = Vec::new();
        {
            let mut t = tx.open_table(REPORTS)?;
            for row in t.range((app, "")..)? {
                let (k, _) = row?;
                let (a, id) = k.value();
                if a != app {
                    break;
                }
                if !keep(id) {
                    gone.push(id.to_string());
                }
            }
            for id in &gone {
                t.remove((app, id.as_str()))?;
            }
        }
        tx.commit()?;
        Ok(gone.len())
    }

    /// Stored report envelopes for `app` (re-verified by the caller on load).
    pub fn reports(&self, app: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPORTS)?;
        let mut out = Vec::new();
        for row in t.range((app, "")..)? {
            let (k, v) = row?;
            if k.value().0 != app {
                break;
            }
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    pub fn put_announcement(&self, app: &str, peer_id: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut t = tx.open_table(ANNOUNCEMENTS)?;
            t.insert((app, peer_id), envelope)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stored announcements for `app`: (peer id, envelope bytes). They are re-verified
    /// (signature and freshness) when loaded into the membership.
    pub fn announcements(&self, app: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ANNOUNCEMENTS)?;
        let mut out = Vec::new();
        for row in t.range((app, "")..)? {
            let (k, v) = row?;
            let (a, peer) = k.value();
            if a != app {
                break;
            }
            out.push((peer.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Records first sightings (in one transaction).
    pub fn put_presence(&self, app_sightings: &[(String, PublicKey, Sighting)]) -> Result<(), StoreError> {
        if app_sightings.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut t = tx.open_table(PRESENCE)?;
            for (app, peer, s) in app_sightings {
                let v = wire::encode(s).map_err(|e| StoreError::Db(e.to_string()))?;
                t.insert((app.as_str(), peer.0.as_slice()), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The first sightings stored for `app`; rows that do not decode are skipped.
    pub fn presence(&self, app: &str) -> Result<Vec<(PublicKey, Sighting)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PRESENCE)?;
        let mut out = Vec::new();
        for row in t.range((app, [].as_slice())..)? {
            let (k, v) = row?;
            let (a, peer) = k.value();
            if a != app {
                break;
            }
            let (Ok(peer), Ok(sighting)) = (<[u8; 32]>::try_from(peer), wire::decode::<Sighting>(v.value())) else {
                continue;
            };
            out.push((PublicKey(peer), sighting));
        }
        Ok(out)
    }

    /// Forgets announcements of peers no longer members (they would fail freshness anyway).
    pub fn remove_announcement(&self, app: &str, peer_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(ANNOUNCEMENTS)?;
            t.remove((app, peer_id))?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sightings_survive_reopen_per_app() {
        use mirage_protocol::{ClusterKey, Digest, UnixMillis};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let s1 = Sighting { cluster: ClusterKey(Digest([1; 32])), since: UnixMillis(10), last_seen: UnixMillis(20) };
        let s2 = Sighting { cluster: ClusterKey(Digest([2; 32])), since: UnixMillis(30), last_seen: UnixMillis(40) };
        {
            let s = Store::open(&path).unwrap();
            s.put_presence(&[("web".into(), PublicKey([1; 32]), s1), ("webx".into(), PublicKey([2; 32]), s2)]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.presence("web").unwrap(), vec![(PublicKey([1; 32]), s1)]);
        assert_eq!(s.presence("webx").unwrap(), vec![(PublicKey([2; 32]), s2)]);
        assert!(s.presence("db").unwrap().is_empty());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let s = Store::open(&path).unwrap();
            s.check_identity("12D3KooWA").unwrap();
            s.put_known_peer("p1", &KnownPeer { addrs: vec!["/ip4/127.0.0.1/tcp/1".into()], last_seen_ms: 5 }).unwrap();
            s.put_known_peer("p2", &KnownPeer { addrs: vec![], last_seen_ms: 9 }).unwrap();
            s.put_own_fingerprint("web", b"env").unwrap();
            s.put_announcement("web", "p1", b"a1").unwrap();
            s.put_announcement("web", "p2", b"a2").unwrap();
            s.put_announcement("db", "p1", b"d1").unwrap();
            s.put_announcement("webx", "p1", b"x1").unwrap();
        }
        let s = Store::open(&path).unwrap();
        s.check_identity("12D3KooWA").unwrap();
        assert!(matches!(s.check_identity("12D3KooWB"), Err(StoreError::WrongIdentity { .. })));
        let peers = s.known_peers().unwrap();
        assert_eq!(peers.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["p2", "p1"]);
        assert_eq!(s.own_fingerprint("web").unwrap().as_deref(), Some(&b"env"[..]));
        assert_eq!(s.own_fingerprint("db").unwrap(), None);
        assert_eq!(
            s.announcements("web").unwrap(),
            vec![("p1".to_string(), b"a1".to_vec()), ("p2".to_string(), b"a2".to_vec())]
        );
        s.remove_announcement("web", "p1").unwrap();
        assert_eq!(s.announcements("web").unwrap().len(), 1);
    }

    #[test]
    fn known_peers_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for i in 0..(MAX_KNOWN_PEERS + 3) {
            s.put_known_peer(&format!("p{i}"), &KnownPeer { addrs: vec![], last_seen_ms: i as u64 + 1 }).unwrap();
        }
        let peers = s.known_peers().unwrap();
        assert_eq!(peers.len(), MAX_KNOWN_PEERS);
        assert!(!peers.iter().any(|p| p.0 == "p0" || p.0 == "p1" || p.0 == "p2"));
    }
}
