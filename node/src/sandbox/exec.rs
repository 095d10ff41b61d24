//! Running one child process bounded in time and in output.
//!
//! Used for sandboxed tests (the child is `bwrap`) and for health checks (the child is
//! the vendor's command on the host). The child gets its own process group, so killing
//! it on timeout or on too much output also kills what it started; stdout and stderr go
//! to one pipe so the output keeps its interleaving and the limit counts both.

use mirage_protocol::manifest::CommandSpec;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the child is polled for exit, timeout and overflow.
const POLL: Duration = Duration::from_millis(10);
/// How often a run's watcher is asked whether to stop it.
const WATCH: Duration = Duration::from_millis(250);
/// How long to wait for the output pipe to close after the child exited; longer means a
/// process that escaped the wait still holds it, and the group is killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_output_bytes: usize,
}

impl Limits {
    pub fn of(spec: &CommandSpec) -> Self {
        Limits {
            timeout: Duration::from_secs(spec.timeout_secs as u64),
            max_output_bytes: spec.max_output_bytes as usize,
        }
    }
}

/// How a bounded run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The exit status, `None` if the child died from a signal (including our kill).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The child wrote more than the limit and was killed.
    pub output_overflow: bool,
    /// Why the run's watcher stopped it (a limit the sandbox holds it to).
    pub stopped: Option<String>,
    /// Combined stdout and stderr, at most `max_output_bytes`.
    pub output: Vec<u8>,
    pub duration: Duration,
}

impl Finished {
    /// Exit status 0 within both limits.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.output_overflow && self.stopped.is_none()
    }

    /// Why the run did not succeed, in a few words.
    pub fn failure_reason(&self, limits: &Limits) -> Option<String> {
        if let Some(why) = &self.stopped {
            Some(why.clone())
        } else if self.timed_out {
            Some(format!("timed out after {} s", limits.timeout.as_secs()))
        } else if self.output_overflow {
            Some(format!("output over the {}-byte limit", limits.max_output_bytes))
        } else {
            match self.exit_code {
                Some(0) => None,
                Some(code) => Some(format!("exit status {code}")),
                None => Some("killed by a signal".into()),
            }
        }
    }
}

/// Spawns `cmd` (stdout and stderr are replaced by one capped pipe) and waits for it,
/// killing its process group when the time or output limit is exceeded.
pub fn run_bounded(cmd: Command, stdin: Stdio, limits: &Limits) -> io::Result<Finished> {
    run_watched(cmd, stdin, limits, &mut || None)
}

/// [`run_bounded`], also asking `watch` every [`WATCH`] whether to stop the child, and
/// why (a limit the sandbox watches rather than the kernel).
pub fn run_watched(
    mut cmd: Command,
    stdin: Stdio,
    limits: &Limits,
    watch: &mut dyn FnMut() -> Option<String>,
) -> io::Result<Finished> {
    let (reader, writer) = io::pipe()?;
    cmd.stdin(stdin).stdout(writer.try_clone()?).stderr(writer).process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    // The Command still owns our copies of the pipe's write end: without dropping it
    // the reader would never see end-of-file.
    drop(cmd);

    let capture = Capture::start(reader, limits.max_output_bytes);
    let deadline = start + limits.timeout;
    let mut timed_out = false;
    let mut stopped = None;
    let mut next_watch = start + WATCH;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if capture.overflowed() {
            break kill_and_reap(&mut child)?;
        }
        if Instant::now() >= next_watch {
            next_watch += WATCH;
            stopped = watch();
            if stopped.is_some() {
                break kill_and_reap(&mut child)?;
            }
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break kill_and_reap(&mut child)?;
        }
        std::thread::sleep(POLL);
    };
    let duration = start.elapsed();
    let (output, output_overflow) = capture.finish(child.id());
    Ok(Finished { exit_code: status.code(), timed_out, output_overflow, stopped, output, duration })
}

fn kill_group(pgid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions. The negative pid addresses
    // the whole process group the child leads (set up by `process_group(0)`).
    unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
}

fn kill_and_reap(child: &mut Child) -> io::Result<ExitStatus> {
    // The child is not reaped yet, so its pid (the group id) cannot have been reused.
    kill_group(child.id());
    child.wait()
}

/// A thread reading the child's combined output into a capped buffer.
struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    overflow: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
}

impl Capture {
    fn start(mut reader: io::PipeReader, max: usize) -> Capture {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let overflow = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let (buf, over) = (buffer.clone(), overflow.clone());
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut out = buf.lock().unwrap_or_else(|p| p.into_inner());
                let room = max.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    // Stop reading: memory stays bounded and the waiting loop kills the
                    // child; the pipe closes when this thread returns.
                    over.store(true, Ordering::SeqCst);
                    break;
                }
            }
            let _ = tx.send(());
        });
        Capture { buffer, overflow, done }
    }

    fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::SeqCst)
    }

    /// Waits briefly for the pipe to close and returns what was read. If something the
    /// child left behind still holds the pipe, its process group is killed; whatever
    /// it wrote later is not waited for.
    fn finish(self, pgid: u32) -> (Vec<u8>, bool) {
        if self.done.recv_timeout(DRAIN_GRACE).is_err() {
            kill_group(pgid);
            let _ = self.done.recv_timeout(DRAIN_GRACE);
        }
        let output = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        (output, self.overflowed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn limits(secs: u64, max: usize) -> Limits {
        Limits { timeout: Duration::from_secs(secs), max_output_bytes: max }
    }

    #[test]
    fn captures_both_streams_and_exit_code() {
        let f = run_bounded(sh("echo out; echo err >&2; exit 3"), Stdio::null(), &limits(10, 1000)).unwrap();
        assert_eq!(f.exit_code, Some(3));
        assert_eq!(String::from_utf8_lossy(&f.output), "out\nerr\n");
        assert!(!f.succeeded());
        assert_eq!(f.failure_reason(&limits(10, 1000)).unwrap(), "exit status 3");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        let f = run_bounded(sh("sleep 30 & sleep 30; echo never"), Stdio::null(), &limits(1, 1000)).unwrap();
        assert!(f.timed_out && !f.succeeded());
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    }

    #[test]
    fn a_watcher_stops_the_run_and_says_why() {
        let mut asked = 0;
        let f = run_watched(sh("sleep 30"), Stdio::null(), &limits(60, 1000), &mut || {
            asked += 1;
            (asked == 2).then(|| "over a limit".to_string())
        })
        .unwrap();
        assert_eq!(f.stopped.as_deref(), Some("over a limit"));
        assert!(!f.succeeded() && !f.timed_out);
        assert_eq!(f.failure_reason(&limits(60, 1000)).unwrap(), "over a limit");
        assert!(f.duration < Duration::from_secs(5));
    }

    #[test]
    fn endless_output_is_cut() {
        let f = run_bounded(sh("yes mirage"), Stdio::null(), &limits(30, 5000)).unwrap();
        assert!(f.output_overflow && !f.timed_out && !f.succeeded());
        assert_eq!(f.output.len(), 5000);
        assert!(f.output.starts_with(b"mirage\nmirage\n"));
    }
}
