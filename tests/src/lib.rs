//! End-to-end test helpers: the `mirage` binary, child processes that are always
//! killed (even when a test panics), generated machine roots and loopback fleets of a
//! bootstrap peer and nodes driven through `mirage status --json`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use mirage_testnet::fleet::{api_call, app_cluster, members, node_run_args, Process};
pub use mirage_testnet::sample_root::{write_mysql_machine, SampleMachine};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

/// The shipped MySQL profile the generated machines are made for.
pub fn mysql_profile() -> PathBuf {
    workspace().join("profiles/mysql.toml")
}

/// The `mirage` binary next to the running test or benchmark, built first if needed
/// (a package's tests do not build another package's binaries). The suite needs the
/// test hooks (node/Cargo.toml), so a binary without them, as a plain
/// `cargo build -p mirage-node` leaves, is rebuilt with them.
pub fn mirage_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = dir.join("mirage");
        if is_fresh(&bin) && has_test_hooks(&bin) {
            return bin;
        }
        let release = dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace()).args([
            "build",
            "--quiet",
            "-p",
            "mirage-node",
            "--bin",
            "mirage",
            "--features",
            "test-hooks",
        ]);
        if release {
            cmd.arg("--release");
        }
        let built = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(built, "cannot build the mirage binary with its test hooks");
        assert!(has_test_hooks(&bin), "{} was built without the test hooks", bin.display());
        bin
    })
    .clone()
}

/// A staged-deployment fleet of the sample app under `dir`, on the `mirage` under test:
/// `environments` generated environments of `nodes_per_environment` nodes each, every
/// node started with `node_flags`. Panics if it cannot start.
pub fn staged_fleet(
    dir: &Path,
    environments: u32,
    nodes_per_environment: u32,
    node_flags: &[&str],
) -> mirage_testnet::staged::StagedFleet {
    mirage_testnet::staged::StagedFleet::start(&mirage_testnet::staged::StagedOptions {
        mirage: mirage_bin(),
        dir: dir.to_path_buf(),
        environments,
        nodes_per_environment,
        node_flags: node_flags.iter().map(|f| f.to_string()).collect(),
    })
    .expect("the fleet starts")
}

/// Whether `bin --version` says it was built with the test hooks.
fn has_test_hooks(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("with test hooks"))
}

/// Whether `bin` is newer than every source and manifest it is built from. Saves a
/// cargo invocation, which would rebuild with this package's feature set.
fn is_fresh(bin: &Path) -> bool {
    fn newest(path: &Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()).filter_map(|e| newest(&e.path())).max()
    }
    let Some(built) = std::fs::metadata(bin).and_then(|m| m.modified()).ok() else { return false };
    let ws = workspace();
    ["Cargo.toml", "Cargo.lock", "protocol", "artifact", "node/src", "node/Cargo.toml", "bootstrap", "testnet/src"]
        .iter()
        .filter_map(|p| newest(&ws.join(p)))
        .all(|t| t <= built)
}

/// A child process that is killed and reaped when dropped: the testnet launcher's
/// [`Process`], with failures as panics, as tests want them.
pub struct Proc {
    pub name: String,
    inner: Process,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `mirage args...` with stderr to `log` and stdout piped.
    pub fn spawn(name: &str, args: &[String], log: &Path) -> Proc {
        let inner = Process::spawn(&mirage_bin(), name, args, log).unwrap_or_else(|e| panic!("{e}"));
        Proc { name: name.to_string(), inner, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid().expect("running")
    }

    /// Kills (SIGKILL) and reaps the process.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; kills it if it hangs.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.terminate(timeout)
    }

    /// The exit status, once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.inner.try_wait()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.inner.pid().is_some() && self.inner.check_running().is_ok()
    }

    /// Reads stdout lines until one satisfies `pick`, for up to `timeout`. Keeps
    /// draining stdout in the background afterwards.
    pub fn read_stdout_until(&mut self, timeout: Duration, pick: impl Fn(&str) -> bool + Send + 'static) -> String {
        self.inner.read_stdout_until(timeout, "print the expected line", pick).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The last `n` lines of the process's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.inner.log_tail(n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("MIRAGE_TEST_LOGS").is_some() {
            eprintln!("---- {} log tail ----\n{}", self.name, self.log_tail(40));
        }
    }
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout`.
/// The wall clock as the protocol counts time, for messages a test signs itself.
pub fn now_millis() -> mirage_protocol::UnixMillis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    mirage_protocol::UnixMillis(since.as_millis() as u64)
}

pub fn wait_for<T>(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Runs `mirage args...` to completion and returns its stdout, or the error output.
pub fn mirage(args: &[&str]) -> Result<String, String> {
    let out = Command::new(mirage_bin()).args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A bootstrap peer on 127.0.0.1 with an ephemeral port.
pub struct Bootstrap {
    pub proc: Proc,
    /// `/ip4/127.0.0.1/tcp/N/p2p/<peer id>`.
    pub addr: String,
}

impl Bootstrap {
    pub fn start(dir: &Path, extra: &[&str]) -> Bootstrap {
        std::fs::create_dir_all(dir).expect("bootstrap dir");
        let mut args: Vec<String> = vec![
            "bootstrap".into(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--key".into(),
            dir.join("bootstrap.key").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn("bootstrap", &args, &dir.join("bootstrap.log"));
        let line =
            proc.read_stdout_until(Duration::from_secs(60), |l| l.starts_with("listening ") && l.contains("/tcp/"));
        let addr = line.trim_start_matches("listening ").trim().to_string();
        Bootstrap { proc, addr }
    }
}

/// One node of a test fleet: its machine, its directories and its process.
pub struct Node {
    pub index: usize,
    pub machine: SampleMachine,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub proc: Proc,
    restarts: usize,
}

impl Node {
    /// Writes the machine's root under `dir` and starts `mirage node run` for it.
    pub fn start(dir: &Path, index: usize, machine: SampleMachine, bootstrap: &str, extra: &[&str]) -> Node {
        let root = dir.join("root");
        write_mysql_machine(&root, &machine).expect("write machine root");
        let data = dir.join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let args = node_run_args(&data, &root, &mysql_profile(), bootstrap, &extra);
        let proc = Proc::spawn(&format!("node{index}"), &args, &dir.join("node.log"));
        Node { index, machine, dir: dir.to_path_buf(), args, proc, restarts: 0 }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the node again with the same arguments (same key, same database).
    pub fn restart(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(self.data_dir().join("api.sock"));
        self.restarts += 1;
        self.proc = Proc::spawn(
            &format!("node{}", self.index),
            &self.args,
            &self.dir.join(format!("node.restart{}.log", self.restarts)),
        );
    }

    /// The API's socket, once the node has made it.
    pub fn api(&self) -> Option<String> {
        let socket = self.data_dir().join("api.sock");
        socket.exists().then(|| socket.display().to_string())
    }

    /// `mirage status --json` for this node.
    pub fn status(&self) -> Option<Value> {
        let api = self.api()?;
        let out = mirage(&["status", "--api", &api, "--json"]).ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn wait_status(&self, timeout: Duration) -> Value {
        wait_for(&format!("node{} status", self.index), timeout, Duration::from_millis(200), || self.status())
    }
}

pub fn peer_id(status: &Value) -> String {
    status["peer_id"].as_str().expect("status has a peer_id").to_string()
}

/// Resident memory of a process in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A vendor: a signing key and `mirage vendor publish` runs.
pub struct Vendor {
    pub key: PathBuf,
    /// The public key nodes trust (`--trust APP=<this>`).
    pub public: String,
}

impl Vendor {
    pub fn new(dir: &Path) -> Vendor {
        std::fs::create_dir_all(dir).expect("vendor dir");
        let key = dir.join("vendor.key");
        let public = mirage_testnet::fleet::vendor_keygen(&mirage_bin(), &key).unwrap_or_else(|e| panic!("{e}"));
        Vendor { key, public }
    }

    /// Starts `mirage vendor publish` for `app` `version`; `extra` adds flags
    /// (`--replicas`, `--chunk-kib`, ...).
    pub fn publish(
        &self,
        dir: &Path,
        app: &str,
        version: &str,
        artifact: &Path,
        bootstrap: &str,
        extra: &[&str],
    ) -> Proc {
        std::fs::create_dir_all(dir).expect("publish dir");
        let args = mirage_testnet::fleet::vendor_publish_args(
            &self.key,
            app,
            version,
            artifact,
            bootstrap,
            &dir.join("data"),
            extra,
        );
        Proc::spawn(&format!("vendor-{version}"), &args, &dir.join("vendor.log"))
    }
}

/// What a node's status says of the artifact of its release of `app`:
/// (version, state, path once complete).
pub fn artifact_state(status: &Value, app: &str) -> Option<(String, String, Option<PathBuf>)> {
    let release = status["releases"].as_array()?.iter().find(|r| r["app"] == app)?;
    let artifact = release["content"].as_array()?.iter().find(|c| c["what"] == "artifact")?;
    Some((
        release["version"].as_str()?.to_string(),
        artifact["state"].as_str()?.to_string(),
        artifact["path"].as_str().map(PathBuf::from),
    ))
}

/// `count` bytes that differ per `seed` (a cheap generator; the content only has to be
/// distinct, not random).
pub fn pseudo_random_bytes(count: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
