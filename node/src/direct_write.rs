//! Writing chunks past the page cache (`O_DIRECT`).
//!
//! A swarm receiver writes every byte of an artifact once and rarely reads it back soon
//! (it serves fresh chunks from memory). Through the page cache each write is a kernel
//! copy into newly allocated cache pages: measured with 16 receivers of 256 MiB on this
//! project's 2-core VM, 9.2 s of kernel time against 0.8 s with `O_DIRECT` for the same
//! 4 GiB (dd, 1 MiB blocks). Direct I/O needs the buffer, length and offset aligned to
//! the device's block size, so a chunk is copied into an aligned buffer (a cheap copy
//! into memory that stays hot) and the tail of a short last chunk is zero-padded; the
//! file is cut to its true length when the artifact is finished.
//!
//! Filesystems without `O_DIRECT` (tmpfs, some network filesystems) refuse the flag at
//! open; callers then write through the page cache as before.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment that satisfies every common logical block size (512 B and 4 KiB).
pub const ALIGN: usize = 4096;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// A file opened for direct writes, with its aligned staging buffer.
pub struct DirectWriter {
    file: File,
    blocks: Vec<Block>,
}

impl DirectWriter {
    /// Opens `path` (which must exist) for direct writes, or `None` if the filesystem
    /// does not support them.
    pub fn open(path: &Path) -> Option<DirectWriter> {
        let file = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()?;
        Some(DirectWriter { file, blocks: Vec::new() })
    }
}

/// At least `len` bytes of aligned buffer, grown from `blocks` as needed.
fn aligned(blocks: &mut Vec<Block>, len: usize) -> &mut [u8] {
    let count = len.div_ceil(ALIGN);
    if blocks.len() < count {
        blocks.resize(count, Block([0; ALIGN]));
    }
    // SAFETY: `Block` is `repr(C)` plain bytes with no padding, the vector holds at
    // least `count` initialized blocks, and the slice borrows `blocks` mutably for its
    // whole life.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), count * ALIGN) }
}

impl DirectWriter {
    /// Writes `bytes` at `offset` (a multiple of [`ALIGN`]), zero-padding to the next
    /// multiple of [`ALIGN`]. The padding lies past the chunk and is either overwritten
    /// by the next chunk or cut off when the file is truncated to the artifact's size.
    pub fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        if !(offset as usize).is_multiple_of(ALIGN) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "unaligned direct write offset"));
        }
        let len = bytes.len();
        let buf = aligned(&mut self.blocks, len);
        buf[..len].copy_from_slice(bytes);
        buf[len..].fill(0);
        self.file.write_all_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_at_their_offsets_and_padding_is_overwritten_or_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"").unwrap();
        let Some(mut w) = DirectWriter::open(&path) else {
            // The test directory's filesystem has no O_DIRECT: nothing to check here;
            // the chunk store's own tests cover the buffered path.
            eprintln!("no O_DIRECT on {}", dir.path().display());
            return;
        };
        let a: Vec<u8> = (0..ALIGN * 2).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..1000).map(|i| (i % 13) as u8).collect();
        // The short last chunk first: its padding lies where nothing else goes.
        w.write_at(&b, (ALIGN * 2) as u64).unwrap();
        w.write_at(&a, 0).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len((ALIGN * 2 + b.len()) as u64).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..ALIGN * 2], &a[..]);
        assert_eq!(&got[ALIGN * 2..], &b[..]);
        assert!(w.write_at(&a, 100).is_err(), "unaligned offsets are refused");
    }
}
