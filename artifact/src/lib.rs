//! Unpacking an untrusted tar (a release artifact or a vendor's test bundle) into a
//! fresh directory, then making it durable.
//!
//! Errors tell the archive's fault ([`ArtifactError::Unsafe`]: not a tar, an entry
//! that escapes, a device file) from this machine's ([`ArtifactError::Io`]: a full
//! disk, permissions), so a node never blames a release for its own disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use tar::EntryType;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArtifactError {
    /// This machine's I/O failed (reading the archive, writing the tree).
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The archive itself is refused.
    #[error("refusing archive {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_path_buf(), source }
}

fn unsafe_archive(tar: &Path, reason: String) -> ArtifactError {
    ArtifactError::Unsafe { path: tar.to_path_buf(), reason }
}

/// How an artifact or test bundle is packed, told from its first bytes (not its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    Tar,
    Gzip,
    Zstd,
}

impl Packing {
    pub fn name(self) -> &'static str {
        match self {
            Packing::Tar => "tar",
            Packing::Gzip => "gzip-compressed tar",
            Packing::Zstd => "zstd-compressed tar",
        }
    }

    /// Reads the magic numbers at the start of `file`, and seeks back.
    pub fn detect(file: &mut File) -> std::io::Result<Packing> {
        use std::io::{Read, Seek, SeekFrom};
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match file.read(&mut magic[got..])? {
                0 => break,
                n => got += n,
            }
        }
        file.seek(SeekFrom::Start(0))?;
        Ok(match magic {
            [0x1f, 0x8b, ..] => Packing::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd] => Packing::Zstd,
            _ => Packing::Tar,
        })
    }
}

/// Opens `path` as a stream of tar bytes, decompressing gzip or zstd as detected.
pub fn open_tar_stream(path: &Path) -> Result<(Box<dyn std::io::Read>, Packing), ArtifactError> {
    let mut file = File::open(path).map_err(io(path))?;
    let packing = Packing::detect(&mut file).map_err(io(path))?;
    let reader = std::io::BufReader::new(file);
    let stream: Box<dyn std::io::Read> = match packing {
        Packing::Tar => Box::new(reader),
        Packing::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Packing::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| unsafe_archive(path, format!("not a valid zstd stream: {e}")))?,
        ),
    };
    Ok((stream, packing))
}

/// Whether an I/O error while unpacking is this node's (disk full, no permission, a
/// read-only or failing disk) rather than the archive's.
fn is_local(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // tar keeps the kind of an error it wraps, not its errno.
    let errno = e
        .raw_os_error()
        .or_else(|| causes(e).find_map(|c| c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error())));
    matches!(e.kind(), StorageFull | QuotaExceeded | PermissionDenied | ReadOnlyFilesystem | OutOfMemory)
        || errno == Some(libc::EIO)
}

/// What `e` wraps, outermost first (not `e` itself).
fn causes(e: &std::io::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    let first = e.get_ref().and_then(|inner| inner.source());
    std::iter::successors(first, |c| c.source())
}

/// `e` with its causes in its message: tar wraps an error as "failed to unpack `x`",
/// keeping the kind but showing the reason (a full disk) only as a source.
fn with_causes(e: std::io::Error) -> std::io::Error {
    let mut message = e.to_string();
    for c in causes(&e) {
        message.push_str(": ");
        message.push_str(&c.to_string());
    }
    std::io::Error::new(e.kind(), message)
}

/// How much an archive may unpack to. A few kilobytes of gzip or zstd can claim
/// terabytes; these stop such a bomb as the archive's fault, before the disk fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file contents, summed over entries.
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    /// Far above any real release (the largest Debian packages unpack to a few GiB).
    fn default() -> Self {
        Limits { max_bytes: 64 << 30, max_entries: 1_000_000 }
    }
}

/// [`unpack_bounded`] with the default [`Limits`].
pub fn unpack_safely(tar_path: &Path, dest: &Path) -> Result<(), ArtifactError> {
    unpack_bounded(tar_path, dest, Limits::default())
}

/// Unpacks the archive at `tar_path` (a tar, or a gzip- or zstd-compressed tar) into
/// `dest`, which must not exist yet. The whole archive is refused (an error; `dest`
/// may hold part of it) if it is not a tar, if an entry would land outside `dest`
/// (`..`, or through a symlink) or is a device file or FIFO, or if it unpacks to more
/// than `limits`. Owners are not restored. Errors of this node's own (a full disk)
/// come back as `Io`, so callers can tell them from a broken archive.
pub fn unpack_bounded(tar_path: &Path, dest: &Path, limits: Limits) -> Result<(), ArtifactError> {
    std::fs::create_dir(dest).map_err(io(dest))?;
    let (stream, packing) = open_tar_stream(tar_path)?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let mut entries_seen = 0usize;
    let mut bytes = 0u64;
    let bad = |e: std::io::Error| {
        let local = is_local(&e);
        let e = with_causes(e);
        if local {
            return ArtifactError::Io { path: dest.to_path_buf(), source: e };
        }
        unsafe_archive(tar_path, format!("{e} (read as a {})", packing.name()))
    };
    // Directories go last (as `Archive::unpack` does) so a read-only directory mode
    // cannot block its own contents.
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        entries_seen += 1;
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        bytes = bytes.saturating_add(entry.size());
        if entries_seen > limits.max_entries {
            return Err(unsafe_archive(tar_path, format!("more than {} entries", limits.max_entries)));
        }
        if bytes > limits.max_bytes {
            return Err(unsafe_archive(
                tar_path,
                format!("unpacks to more than {} bytes (at `{name}`)", limits.max_bytes),
            ));
        }
        if matches!(kind, EntryType::Block | EntryType::Char | EntryType::Fifo) {
            return Err(unsafe_archive(tar_path, format!("`{name}` is a device file or FIFO")));
        }
        if kind == EntryType::Directory {
            directories.push((name, entry));
        } else if !entry.unpack_in(dest).map_err(bad)? {
            return Err(unsafe_archive(tar_path, format!("`{name}` points outside the archive")));
        }
    }
    for (name, mut entry) in directories {
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(unsafe_archive(tar_path, format!("`{name}` points outside the archive")));
        }
    }
    if entries_seen == 0 {
        // tar reads a file of zeros, or nothing at all, as an empty archive.
        return Err(unsafe_archive(tar_path, format!("no files in it (read as a {})", packing.name())));
    }
    Ok(())
}

/// fsyncs every file and directory under `dir` (symlinks live in their directory's
/// data), so a rename of `dir` can never expose a half-written tree after a crash.
pub fn sync_tree(dir: &Path) -> Result<(), ArtifactError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            sync_tree(&path)?;
        } else if meta.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        }
    }
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, usize)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, size) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(*size as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &vec![b'x'; *size][..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn an_archive_over_its_limits_is_refused_as_the_archives_fault() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = tmp.path().join("a.tar");
        std::fs::write(&tar, tar_of(&[("a", 600), ("b", 600)])).unwrap();
        let tight = Limits { max_bytes: 1000, max_entries: 10 };
        let err = unpack_bounded(&tar, &tmp.path().join("x"), tight).unwrap_err();
        assert!(
            matches!(&err, ArtifactError::Unsafe { reason, .. } if reason.contains("more than 1000 bytes")),
            "{err}"
        );
        let few = Limits { max_bytes: 1 << 20, max_entries: 1 };
        let err = unpack_bounded(&tar, &tmp.path().join("y"), few).unwrap_err();
        assert!(
            matches!(&err, ArtifactError::Unsafe { reason, .. } if reason.contains("more than 1 entries")),
            "{err}"
        );
        unpack_bounded(&tar, &tmp.path().join("z"), Limits { max_bytes: 1200, max_entries: 2 }).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("z/b")).unwrap().len(), 600);
    }

    #[test]
    fn entries_that_escape_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "out", tmp.path()).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        builder.append_data(&mut header, "out/escaped", &b"x"[..]).unwrap();
        let tar = tmp.path().join("a.tar");
        std::fs::write(&tar, builder.into_inner().unwrap()).unwrap();
        let err = unpack_safely(&tar, &tmp.path().join("dest")).unwrap_err();
        assert!(matches!(err, ArtifactError::Unsafe { .. }), "{err}");
        assert!(!tmp.path().join("escaped").exists());
    }
}
