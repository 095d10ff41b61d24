//! Real loopback testnets: a bootstrap peer and `mirage node run` processes, one per
//! generated machine, all on 127.0.0.1, driven through their control APIs.
//!
//! Every process is killed when its [`Process`] is dropped, so a testnet that fails
//! half-way, or whose launcher panics, leaves nothing running.

use crate::sample_root::{write_mysql_machine, SampleMachine};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FleetError {
    #[error("cannot start {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{name} did not {what} within {timeout:?}; its log ends:\n{log}")]
    Timeout { name: String, what: String, timeout: Duration, log: String },
    #[error("{name} exited early ({status}); its log ends:\n{log}")]
    Exited { name: String, status: ExitStatus, log: String },
}

/// A child process that is killed and reaped when dropped.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program args...`, stderr to `log`, stdout piped.
    pub fn spawn(program: &Path, name: &str, args: &[String], log: &Path) -> Result<Process, FleetError> {
        Self::spawn_with_env(program, name, args, log, &[])
    }

    /// Like [`Process::spawn`], with extra environment variables for the child.
    pub fn spawn_with_env(
        program: &Path,
        name: &str,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<Process, FleetError> {
        let err = std::fs::File::create(log).map_err(|e| FleetError::Io { path: log.to_path_buf(), source: e })?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("MIRAGE_LOG", std::env::var("MIRAGE_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| FleetError::Spawn { name: name.to_string(), source: e })?;
        Ok(Process { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then up to `timeout` for a graceful exit, then SIGKILL.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    /// The exit status, once the process has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// `Err` if the process already exited.
    pub fn check_running(&mut self) -> Result<(), FleetError> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => {
                Err(FleetError::Exited { name: self.name.clone(), status, log: self.log_tail(20) })
            }
            _ => Ok(()),
        }
    }

    /// Reads stdout lines until one satisfies `pick`; keeps draining stdout afterwards
    /// so the child never blocks on a full pipe.
    pub fn read_stdout_until(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<String, FleetError> {
        let out = self.child.as_mut().and_then(|c| c.stdout.take());
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = out {
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if !sent && pick(&line) {
                        let _ = tx.send(line);
                        sent = true;
                    }
                }
            });
        }
        rx.recv_timeout(timeout).map_err(|_| FleetError::Timeout {
            name: self.name.clone(),
            what: what.to_string(),
            timeout,
            log: self.log_tail(20),
        })
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request to a node's control API (line-delimited JSON on its Unix socket).
pub fn api_call(socket: &str, request: &Value) -> Option<Value> {
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = serde_json::to_vec(request).ok()?;
    line.push(b'\n');
    (&stream).write_all(&line).ok()?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).ok()?;
    let mut v: Value = serde_json::from_str(&reply).ok()?;
    v.get_mut("ok").map(Value::take)
}

/// What a status reports of the node's cluster for `app` (members, roster, ...).
pub fn app_cluster<'a>(status: &'a Value, app: &str) -> Option<&'a Value> {
    status["clusters"].as_array()?.iter().find(|c| c["app"] == app)
}

/// The cluster members a status reports for `app`.
pub fn members(status: &Value, app: &str) -> Option<BTreeSet<String>> {
    let cluster = app_cluster(status, app)?;
    Some(cluster["members"].as_array()?.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
}

/// Runs `mirage vendor keygen --out key` (replacing an old key) and returns the public
/// key it prints, which nodes are told to trust.
pub fn vendor_keygen(mirage: &Path, key: &Path) -> Result<String, FleetError> {
    let _ = std::fs::remove_file(key);
    let out = Command::new(mirage)
        .args(["vendor", "keygen", "--out"])
        .arg(key)
        .output()
        .map_err(|e| FleetError::Spawn { name: "vendor keygen".into(), source: e })?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().find_map(|l| l.strip_prefix("public key: ")).map(|k| k.trim().to_string()).ok_or_else(|| {
        FleetError::Timeout {
            name: "vendor keygen".into(),
            what: "print a public key".into(),
            timeout: Duration::ZERO,
            log: text + &String::from_utf8_lossy(&out.stderr),
        }
    })
}

/// A bootstrap peer on an ephemeral loopback port.
pub struct BootstrapPeer {
    pub process: Process,
    /// `/ip4/127.0.0.1/tcp/N/p2p/<peer id>`.
    pub addr: String,
}

impl BootstrapPeer {
    pub fn start(mirage: &Path, dir: &Path) -> Result<Self, FleetError> {
        std::fs::create_dir_all(dir).map_err(|e| FleetError::Io { path: dir.to_path_buf(), source: e })?;
        let args = vec![
            "bootstrap".to_string(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--key".into(),
            dir.join("bootstrap.key").display().to_string(),
        ];
        let mut process = Process::spawn(mirage, "bootstrap", &args, &dir.join("bootstrap.log"))?;
        let line = process.read_stdout_until(Duration::from_secs(60), "print its address", |l| {
            l.starts_with("listening ") && l.contains("/tcp/")
        })?;
        Ok(BootstrapPeer { process, addr: line.trim_start_matches("listening ").trim().to_string() })
    }
}

/// The arguments of `mirage node run` for a fleet node: loopback listen on an ephemeral
/// port, the API on `DATA/api.sock`, then `extra`.
/// How much faster than production loopback fleets run the roster: a 3 s heartbeat
/// period in small clusters and 3.75 s summary epochs, so a node is ready to stage 4 s
/// after it starts; sizes outlive 11 s of silence, which a loaded CI machine's hiccups
/// stay under.
pub const LOOPBACK_ROSTER_TIME_SCALE: &str = "20";

pub fn node_run_args(data: &Path, root: &Path, profile: &Path, bootstrap: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "node",
        "run",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        bootstrap,
        "--profile",
        &profile.display().to_string(),
        "--root",
        &root.display().to_string(),
        // Heartbeats, summaries and settling in seconds rather than minutes.
        "--roster-time-scale",
        LOOPBACK_ROSTER_TIME_SCALE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    args
}

/// The arguments of `mirage vendor publish` for a loopback testnet: TCP on an ephemeral
/// loopback port, the seed's data in `data_dir`, then `extra` (policy, replicas, ...).
pub fn vendor_publish_args(
    key: &Path,
    app: &str,
    version: &str,
    artifact: &Path,
    bootstrap: &str,
    data_dir: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "vendor",
        "publish",
        "--key",
        &key.display().to_string(),
        "--app",
        app,
        "--version",
        version,
        "--artifact",
        &artifact.display().to_string(),
        "--bootstrap",
        bootstrap,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        &data_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// One node of a fleet: its generated machine, its directories, its process.
pub struct FleetNode {
    pub index: usize,
    pub machine: SampleMachine,
    pub dir: PathBuf,
    pub process: Process,
    args: Vec<String>,
    restarts: usize,
}

impl FleetNode {
    /// Writes the machine's root under `dir` and starts `mirage node run` for it.
    pub fn start(
        mirage: &Path,
        dir: &Path,
        index: usize,
        machine: SampleMachine,
        profile: &Path,
        bootstrap: &str,
        extra: &[String],
    ) -> Result<Self, FleetError> {
        let root = dir.join("root");
        write_mysql_machine(&root, &machine).map_err(|e| FleetError::Io { path: root.clone(), source: e })?;
        let args = node_run_args(&dir.join("data"), &root, profile, bootstrap, extra);
        let process = Process::spawn(mirage, &format!("node{index}"), &args, &dir.join("node.log"))?;
        Ok(FleetNode { index, machine, dir: dir.to_path_buf(), process, args, restarts: 0 })
    }

    /// Kills the node (if running) and starts it again with the same arguments (same
    /// key, database and root), plus `env`. Each run logs to its own file.
    pub fn restart(&mut self, mirage: &Path, env: &[(&str, &str)]) -> Result<(), FleetError> {
        self.process.kill();
        let _ = std::fs::remove_file(self.dir.join("data/api.sock"));
        self.restarts += 1;
        let log = self.dir.join(format!("node.run{}.log", self.restarts));
        self.process = Process::spawn_with_env(mirage, &format!("node{}", self.index), &self.args, &log, env)?;
        Ok(())
    }

    /// Every log this node wrote, concatenated (first run and restarts).
    pub fn logs(&self) -> String {
        let mut out = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        for i in 1..=self.restarts {
            out.push_str(&std::fs::read_to_string(self.dir.join(format!("node.run{i}.log"))).unwrap_or_default());
        }
        out
    }

    /// The control API's socket, once the node has made it.
    pub fn api(&self) -> Option<String> {
        let socket = self.dir.join("data/api.sock");
        socket.exists().then(|| socket.display().to_string())
    }

    /// The node's status (what `mirage status --json` prints), if it answers.
    pub fn status(&self) -> Option<Value> {
        api_call(&self.api()?, &serde_json::json!({"cmd": "status"}))
    }
}
