//! Unpacking an untrusted tar into a fresh directory, then making it durable.

use super::InstallError;
use std::fs::File;
use std::path::Path;
use tar::EntryType;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

fn unsafe_archive(tar: &Path, reason: String) -> InstallError {
    InstallError::UnsafeArchive { path: tar.to_path_buf(), reason }
}

/// Unpacks `tar_path` into `dest`, which must not exist yet. The whole archive is
/// refused (an error; `dest` may hold part of it) if an entry would land outside `dest`
/// (`..`, or through a symlink) or is a device file or FIFO. Owners are not restored.
pub fn unpack_safely(tar_path: &Path, dest: &Path) -> Result<(), InstallError> {
    std::fs::create_dir(dest).map_err(io(dest))?;
    let file = File::open(tar_path).map_err(io(tar_path))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let bad = |e: std::io::Error| unsafe_archive(tar_path, e.to_string());
    // Directories go last (as `Archive::unpack` does) so a read-only directory mode
    // cannot block its own contents.
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
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
    Ok(())
}

/// fsyncs every file and directory under `dir` (symlinks live in their directory's
/// data), so a rename of `dir` can never expose a half-written tree after a crash.
pub fn sync_tree(dir: &Path) -> Result<(), InstallError> {
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

pub fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}
