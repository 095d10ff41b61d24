//! Artifacts on disk, chunk by chunk.
//!
//! Layout under the store's directory, one folder per artifact (named by its blake3
//! content hash): `data` (the artifact's bytes at their offsets), `have` (a journal of
//! chunk indices written, 4 bytes each) and `complete` (present once the whole content
//! hash was verified).
//!
//! A downloading artifact's chunks are written and read back past the page cache where
//! the filesystem allows it ([`crate::direct_io`]).
//!
//! Only chunks the download planner verified are written. The journal is not synced
//! per chunk; instead, on reopening, every journaled chunk is hashed again against the
//! manifest, so a crash between writing data and journal, or a torn write, costs at most
//! a re-download of the chunks involved and never serves a wrong byte.

use crate::direct_io::DirectFile;
use bytes::Bytes;
use lru::LruCache;
use mirage_protocol::manifest::ArtifactInfo;
use mirage_protocol::transfer::ChunkProof;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// Bytes of chunks kept in memory for serving, per artifact. Every chunk kept is a buffer
/// not reused (a fresh one costs page faults and zeroing), and every miss is a disk read.
/// `mirage bench swarm` (16 x 256 MiB over content lanes, seconds, alternated runs):
/// 32 MiB 3.6-5.9, 64 MiB 3.35-3.6, 128 MiB 3.4-4.2, 256 MiB (no disk reads) 4.0-4.8.
/// (Over libp2p, before lanes, 32 MiB did best.)
pub const SERVE_CACHE_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("chunk {index} is not part of this artifact")]
    NoSuchChunk { index: usize },
    #[error("chunk {index} does not match the manifest")]
    Mismatch { index: usize },
    #[error("chunk {index} is not stored")]
    Missing { index: usize },
    #[error("{path} is not the artifact: its content hash differs from the manifest's")]
    WrongContent { path: PathBuf },
    #[error("{path} has {free} bytes free, and the download needs {need} (with a reserve)")]
    NoSpace { path: PathBuf, need: u64, free: u64 },
}

/// Room a download leaves on the disk beyond its own bytes, so a full download does not
/// fill the disk the node's database and the apps share.
pub const SPACE_RESERVE: u64 = 64 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The folder holding every artifact a node has (a part of its data directory).
#[derive(Clone, Debug)]
pub struct ChunkStore {
    dir: PathBuf,
}

impl ChunkStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(ChunkStore { dir: dir.to_path_buf() })
    }

    fn folder(&self, info: &ArtifactInfo) -> PathBuf {
        self.dir.join(info.content_hash.to_hex())
    }

    /// Bytes of the artifact already on disk (its data file's allocated blocks).
    pub fn bytes_present(&self, info: &ArtifactInfo) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.folder(info).join("data")).map_or(0, |m| (m.blocks() * 512).min(info.size))
    }

    /// Bytes free for this store's files (for an unprivileged writer).
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(|e| StoreError::Io { path: self.dir.clone(), source: std::io::Error::other(e) })?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs(3) reads a NUL-terminated path and fills the struct we own.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io(&self.dir)(std::io::Error::last_os_error()));
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Whether `bytes` more fit, with [`SPACE_RESERVE`] to spare: checked before a
    /// download starts, so a full disk is found out before any peer's chunk arrives.
    pub fn check_room(&self, bytes: u64) -> Result<(), StoreError> {
        let free = self.free_bytes()?;
        let need = bytes.saturating_add(SPACE_RESERVE);
        if free < need {
            return Err(StoreError::NoSpace { path: self.dir.clone(), need, free });
        }
        Ok(())
    }

    /// Opens the artifact for downloading or serving, resuming whatever verified
    /// chunks are already on disk.
    pub fn open_artifact(&self, info: &ArtifactInfo) -> Result<StoredArtifact, StoreError> {
        let folder = self.folder(info);
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let data_path = folder.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(io(&data_path))?;
        // No set_len to the full size up front: on ext4, random-order writes into a
        // pre-sized sparse file cost about twice the kernel time of writes that extend
        // it (measured with 16 concurrent receivers). The finisher fixes the length.
        let journal_path = folder.join("have");
        let complete = folder.join("complete").exists();
        let mut have = vec![complete; info.chunk_count()];
        if !complete {
            let journal = std::fs::read(&journal_path).unwrap_or_default();
            let mut buf = Vec::new();
            for entry in journal.chunks_exact(4) {
                let index = u32::from_le_bytes(entry.try_into().expect("4 bytes")) as usize;
                let Some(len) = info.chunk_len(index) else { continue };
                if have[index] {
                    continue;
                }
                buf.resize(len as usize, 0);
                if data.read_exact_at(&mut buf, index as u64 * info.chunk_size as u64).is_ok()
                    && info.verify_chunk(index, &buf)
                {
                    have[index] = true;
                }
            }
        }
        // Rewrite the journal with exactly the chunks that verified.
        let mut journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&journal_path)
            .map_err(io(&journal_path))?;
        let verified: Vec<u8> =
            have.iter().enumerate().filter(|(_, h)| **h).flat_map(|(i, _)| (i as u32).to_le_bytes()).collect();
        journal.write_all(&verified).map_err(io(&journal_path))?;
        let cache_chunks = (SERVE_CACHE_BYTES / info.chunk_size.max(1) as usize).max(1);
        // Only an artifact still downloading is written to, and only chunks that start
        // and (but for the last) end on block boundaries can go direct: the zero padding
        // of a short write must never reach into the next chunk. Valid chunk sizes are
        // powers of two from 16 KiB, so this holds; the check keeps it so if that changes.
        let aligned = (info.chunk_size as usize).is_multiple_of(crate::direct_io::ALIGN);
        let direct = if !aligned || have.iter().all(|h| *h) { None } else { DirectFile::open(&data_path) };
        Ok(StoredArtifact {
            info: info.clone(),
            folder,
            data,
            direct,
            journal,
            have,
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(cache_chunks).expect("at least one"))),
        })
    }

    /// Brings a complete artifact file into the store (a vendor seeding), verifying it.
    pub fn import(&self, info: &ArtifactInfo, source: &Path) -> Result<StoredArtifact, StoreError> {
        let mut artifact = self.open_artifact(info)?;
        // A seed serves every chunk of what it imports, soon and many times: through the
        // page cache those reads are memory copies, written direct they would be disk reads.
        artifact.direct = None;
        let file = File::open(source).map_err(io(source))?;
        let mut buf = vec![0u8; info.chunk_size as usize];
        for index in 0..info.chunk_count() {
            let len = info.chunk_len(index).expect("index in range") as usize;
            file.read_exact_at(&mut buf[..len], index as u64 * info.chunk_size as u64).map_err(io(source))?;
            artifact.write_chunk(index, &buf[..len]).map_err(|e| match e {
                StoreError::Mismatch { .. } => StoreError::WrongContent { path: source.to_path_buf() },
                e => e,
            })?;
        }
        artifact.finish()?;
        Ok(artifact)
    }

    /// Removes an artifact's folder (after a newer version superseded it).
    pub fn remove(&self, info: &ArtifactInfo) -> Result<(), StoreError> {
        let folder = self.folder(info);
        match std::fs::remove_dir_all(&folder) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io { path: folder, source: e }),
            _ => Ok(()),
        }
    }
}

/// One artifact's bytes on disk, as far as they have arrived.
pub struct StoredArtifact {
    info: ArtifactInfo,
    folder: PathBuf,
    data: File,
    /// The same file for direct I/O, where the filesystem allows it.
    direct: Option<DirectFile>,
    journal: File,
    have: Vec<bool>,
    cache: Mutex<LruCache<usize, Bytes>>,
}

impl StoredArtifact {
    pub fn info(&self) -> &ArtifactInfo {
        &self.info
    }

    pub fn have(&self) -> &[bool] {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.iter().all(|h| *h)
    }

    /// Where the artifact's bytes are; whole and verified once [`Self::finish`] succeeded.
    pub fn data_path(&self) -> PathBuf {
        self.folder.join("data")
    }

    /// Writes a chunk. Checked here, so that no caller can store an unverified one.
    pub fn write_chunk(&mut self, index: usize, bytes: &[u8]) -> Result<(), StoreError> {
        if index >= self.have.len() {
            return Err(StoreError::NoSuchChunk { index });
        }
        if !self.info.verify_chunk(index, bytes) {
            return Err(StoreError::Mismatch { index });
        }
        self.write_checked(index, bytes)
    }

    fn write_checked(&mut self, index: usize, bytes: &[u8]) -> Result<(), StoreError> {
        if self.have[index] {
            return Ok(());
        }
        let path = self.data_path();
        let offset = index as u64 * self.info.chunk_size as u64;
        let direct = self.direct.as_mut().map(|d| d.write_at(bytes, offset));
        if !matches!(direct, Some(Ok(()))) {
            if let Some(Err(e)) = direct {
                // Alignment the device will not take, say: the page cache always works.
                tracing::debug!(path = %path.display(), error = %e, "direct write refused; writing buffered");
                self.direct = None;
            }
            self.data.write_all_at(bytes, offset).map_err(io(&path))?;
        }
        self.journal.write_all(&(index as u32).to_le_bytes()).map_err(io(&self.folder))?;
        self.have[index] = true;
        Ok(())
    }

    /// Stores a received chunk the download accepted, and keeps it in the serving cache:
    /// a swarm peer is most often asked for what it just received, and serving it from
    /// memory saves a read and a copy. The download's proof (length and blake3 equal to
    /// the manifest's, for this index) stands in for hashing the bytes a second time.
    pub fn store_chunk(&mut self, index: usize, chunk: Bytes, proof: ChunkProof) -> Result<(), StoreError> {
        if index >= self.have.len() {
            return Err(StoreError::NoSuchChunk { index });
        }
        if proof.index() != index || proof.len() != chunk.len() || proof.digest() != self.info.chunk_hashes[index] {
            return Err(StoreError::Mismatch { index });
        }
        self.write_checked(index, &chunk)?;
        self.cache.lock().expect("cache lock").put(index, chunk);
        Ok(())
    }

    /// A stored chunk if the serving cache holds it (no disk access).
    pub fn cached_chunk(&self, index: usize) -> Option<Bytes> {
        self.cache.lock().expect("cache lock").get(&index).cloned()
    }

    /// Reads a stored chunk for serving, through a bounded LRU of hot chunks.
    pub fn read_chunk(&self, index: usize) -> Result<Bytes, StoreError> {
        match self.cached_chunk(index) {
            Some(hit) => Ok(hit),
            None => self.load_chunk(index),
        }
    }

    /// Reads a stored chunk from disk into the serving cache: what [`Self::read_chunk`]
    /// does when [`Self::cached_chunk`] has nothing.
    pub fn load_chunk(&self, index: usize) -> Result<Bytes, StoreError> {
        if !self.have.get(index).copied().unwrap_or(false) {
            return Err(StoreError::Missing { index });
        }
        let len = self.info.chunk_len(index).ok_or(StoreError::NoSuchChunk { index })? as usize;
        let offset = index as u64 * self.info.chunk_size as u64;
        let path = self.data_path();
        let direct = self.direct.as_ref().map(|d| d.read_at(offset, len));
        let chunk = match direct {
            Some(Ok(chunk)) => chunk,
            other => {
                if let Some(Err(e)) = other {
                    tracing::debug!(path = %path.display(), error = %e, "direct read refused; reading buffered");
                }
                let mut buf = vec![0u8; len];
                self.data.read_exact_at(&mut buf, offset).map_err(io(&path))?;
                Bytes::from(buf)
            }
        };
        self.cache.lock().expect("cache lock").put(index, chunk.clone());
        Ok(chunk)
    }

    /// Once every chunk is in: syncs and marks the artifact complete.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        self.finisher()?.run()
    }

    /// The slow part of [`Self::finish`] (the fsync), detached so a node can run it off
    /// its event loop and keep serving meanwhile. Until it has run,
    /// a restart re-verifies the chunks from the journal, so nothing depends on it.
    pub fn finisher(&self) -> Result<Finisher, StoreError> {
        if !self.is_complete() {
            return Err(StoreError::Missing { index: self.have.iter().position(|h| !h).unwrap_or(0) });
        }
        let path = self.data_path();
        Ok(Finisher {
            data: self.data.try_clone().map_err(io(&path))?,
            path,
            marker: self.folder.join("complete"),
            size: self.info.size,
        })
    }
}

/// Makes a fully written artifact durable and marks it complete ([`StoredArtifact::finisher`]).
pub struct Finisher {
    data: File,
    path: PathBuf,
    marker: PathBuf,
    size: u64,
}

impl Finisher {
    /// No second pass over the bytes: every chunk was verified against its digest before
    /// it was written, and the chunk digests were checked to add up to the content hash
    /// when the manifest was admitted ([`ArtifactInfo::validate`]), so the file *is* the
    /// content. What remains is making it durable.
    pub fn run(self) -> Result<(), StoreError> {
        self.data.set_len(self.size).map_err(io(&self.path))?;
        self.data.sync_all().map_err(io(&self.path))?;
        File::create(&self.marker).and_then(|f| f.sync_all()).map_err(io(&self.marker))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_that_cannot_fit_is_refused_before_it_starts_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let free = store.free_bytes().unwrap();
        assert!(free > 0);
        store.check_room(0).unwrap();
        let e = store.check_room(free).unwrap_err();
        assert!(matches!(e, StoreError::NoSpace { need, .. } if need == free + SPACE_RESERVE), "{e}");
        assert!(e.to_string().contains("bytes free"), "{e}");
    }
    use mirage_protocol::manifest::MIN_CHUNK_SIZE;

    fn artifact() -> (Vec<u8>, ArtifactInfo) {
        let bytes: Vec<u8> = (0..(MIN_CHUNK_SIZE as usize * 3 + 77)).map(|i| (i % 253) as u8).collect();
        let info = ArtifactInfo::describe(&bytes, MIN_CHUNK_SIZE);
        (bytes, info)
    }

    fn chunk(bytes: &[u8], i: usize) -> &[u8] {
        let cs = MIN_CHUNK_SIZE as usize;
        &bytes[i * cs..((i + 1) * cs).min(bytes.len())]
    }

    #[test]
    fn resume_keeps_verified_chunks_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (bytes, info) = artifact();
        {
            let mut a = store.open_artifact(&info).unwrap();
            a.write_chunk(0, chunk(&bytes, 0)).unwrap();
            a.write_chunk(2, chunk(&bytes, 2)).unwrap();
            assert!(matches!(a.write_chunk(1, chunk(&bytes, 2)), Err(StoreError::Mismatch { index: 1 })));
        }
        // Corrupt chunk 2 on disk, as a torn write or bad disk would.
        let data = dir.path().join(info.content_hash.to_hex()).join("data");
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(b"XX", 2 * MIN_CHUNK_SIZE as u64 + 5).unwrap();
        let mut a = store.open_artifact(&info).unwrap();
        assert_eq!(a.have(), &[true, false, false, false]);
        for i in 1..4 {
            a.write_chunk(i, chunk(&bytes, i)).unwrap();
        }
        assert!(a.is_complete());
        a.finish().unwrap();
        assert_eq!(std::fs::read(a.data_path()).unwrap(), bytes);
        assert_eq!(&a.read_chunk(3).unwrap()[..], chunk(&bytes, 3));
        assert!(store.open_artifact(&info).unwrap().is_complete());
    }

    #[test]
    fn received_chunks_are_stored_only_with_the_downloads_proof_for_them() {
        use mirage_protocol::transfer::{ChunkVerdict, Download};
        let (bytes, info) = artifact();
        let dir = tempfile::tempdir().unwrap();
        let mut a = ChunkStore::open(dir.path()).unwrap().open_artifact(&info).unwrap();
        let mut d = Download::new(info.clone(), vec![false; info.chunk_count()], 1);
        d.peer_is_seed(7u8);
        let asked = d.next_requests(mirage_protocol::UnixMillis(0));
        let (_, index) = asked[0];
        let data = Bytes::copy_from_slice(chunk(&bytes, index));
        let ChunkVerdict::Accept(proof) = d.on_chunk(&7, index, &data) else { panic!("a good chunk is accepted") };
        let other = (index + 1) % info.chunk_count();
        let wrong = Bytes::copy_from_slice(chunk(&bytes, other));
        assert!(matches!(a.store_chunk(other, wrong, proof), Err(StoreError::Mismatch { .. })));
        assert!(matches!(a.store_chunk(index, Bytes::from(vec![0; 3]), proof), Err(StoreError::Mismatch { .. })));
        a.store_chunk(index, data.clone(), proof).unwrap();
        assert_eq!(a.read_chunk(index).unwrap(), data);
    }

    #[test]
    fn import_verifies_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("store")).unwrap();
        let (bytes, info) = artifact();
        let src = dir.path().join("artifact.bin");
        std::fs::write(&src, &bytes).unwrap();
        let a = store.import(&info, &src).unwrap();
        assert!(a.is_complete());
        let mut wrong = bytes.clone();
        wrong[10] ^= 1;
        std::fs::write(&src, &wrong).unwrap();
        store.remove(&info).unwrap();
        assert!(matches!(store.import(&info, &src), Err(StoreError::WrongContent { .. })));
        assert!(matches!(a.read_chunk(9), Err(StoreError::Missing { index: 9 })));
    }
}
