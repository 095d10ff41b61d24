//! Telling a test's own failure from a sandbox that could not be built: both look like
//! bwrap exiting 1 with a message, and bwrap 0.8's `--json-status-fd` reports the child
//! before the mounts are made. So the command starts through a one-line `sh`
//! trampoline that writes a marker to fd 3 (a pipe to us), closes it, and `exec`s the
//! test; no marker means the test never started.

use std::io::{self, PipeReader, PipeWriter, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

const MARKER_FD: i32 = 3;
const MARKER: &str = "started";
const TRAMPOLINE: &str = "printf started >&3 && exec 3>&- && exec \"$@\"";

pub struct StartMarker {
    reader: PipeReader,
    writer: PipeWriter,
}

impl StartMarker {
    pub fn new() -> io::Result<StartMarker> {
        let (reader, writer) = io::pipe()?;
        Ok(StartMarker { reader, writer })
    }

    /// Appends `argv` to `cmd` (bwrap's arguments up to `--`) behind the trampoline and
    /// hands the pipe to the child as fd 3.
    pub fn wrap(&self, cmd: &mut Command, argv: &[String]) {
        cmd.args(["sh", "-c", TRAMPOLINE, "mirage-test"]).args(argv);
        let fd = self.writer.as_raw_fd();
        // SAFETY: runs in the forked child before exec and only calls dup2(2) and
        // fcntl(2), which are async-signal-safe. dup2 leaves the new fd inheritable.
        unsafe {
            cmd.pre_exec(move || {
                let rc = if fd == MARKER_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, MARKER_FD) };
                if rc == -1 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
    }

    /// Call once bwrap has exited: closes our write end and reads the marker, if any.
    pub fn started(self) -> io::Result<bool> {
        drop(self.writer);
        let mut text = String::new();
        self.reader.take(64).read_to_string(&mut text)?;
        Ok(text == MARKER)
    }
}
