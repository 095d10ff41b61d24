//! An artifact or test bundle as a vendor (or a corrupt download that somehow passed
//! its hashes) could hand a node: any bytes, read as tar, gzip or zstd, unpacked the
//! way a node installs them. Whatever the bytes, nothing lands outside the destination
//! and the unpacked size stays within the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_artifact::{unpack_bounded, ArtifactError, Limits};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Small, so a few bytes of zstd claiming gigabytes are refused quickly.
const LIMITS: Limits = Limits { max_bytes: 4 << 20, max_entries: 256 };

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mirage-fuzz-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("jail")).unwrap();
        dir
    })
}

/// Bytes of regular files under `dir`, not following symlinks.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fuzz_target!(|data: &[u8]| {
    // Everything happens inside `jail`; the archive and the destination are its only
    // entries, so anything else there escaped.
    let jail = scratch().join("jail");
    let tar = jail.join("in.tar");
    let dest = jail.join("out");
    std::fs::write(&tar, data).unwrap();
    let _ = make_writable(&dest);
    let _ = std::fs::remove_dir_all(&dest);
    match unpack_bounded(&tar, &dest, LIMITS) {
        Ok(()) => assert!(tree_bytes(&dest) <= LIMITS.max_bytes),
        Err(ArtifactError::Unsafe { .. }) => {}
        // A read-only directory the archive made, or a name the filesystem refuses
        // (too long): this machine's refusal, which is fine.
        Err(ArtifactError::Io { .. }) => {}
    }
    let mut names: Vec<_> = std::fs::read_dir(&jail).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    names.retain(|n| n != "in.tar" && n != "out");
    assert!(names.is_empty(), "unpacking wrote outside its destination: {names:?}");
    let _ = make_writable(&dest);
    let _ = std::fs::remove_dir_all(&dest);
});

/// Archives set modes: a directory without write permission would outlive the run.
fn make_writable(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(dir)? {
            make_writable(&entry?.path())?;
        }
    }
    Ok(())
}
