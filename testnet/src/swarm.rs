//! Swarm distribution on loopback: a bootstrap peer, a vendor seeding one release and
//! `receivers` nodes that each fetch it. Used by `mirage bench swarm` (the figure set
//! beside nginx and aria2c in `testnet/bench/swarm.sh`).
//!
//! The clock starts when every receiver has admitted the signed manifest (the seed is
//! ready and announced, like a BitTorrent seeder the tracker lists) and all receivers
//! are told to fetch at once; it stops when the last one reports a complete copy.

use crate::fleet::{api_call, vendor_keygen, vendor_publish_args, BootstrapPeer, FleetError, Process};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct SwarmOptions {
    pub mirage: PathBuf,
    pub work_dir: PathBuf,
    pub artifact: PathBuf,
    pub receivers: usize,
    pub chunk_kib: u32,
    pub timeout: Duration,
}

pub struct SwarmResult {
    pub seconds: f64,
    pub bytes: u64,
    /// Where each receiver holds its copy (verified by the node chunk by chunk).
    pub copies: Vec<PathBuf>,
    /// Each receiver's own download time, from its fetch request to its last chunk.
    pub node_seconds: Vec<f64>,
    /// Chunks the receivers served each other, from their memory cache and from disk.
    pub served_from_memory: u64,
    pub served_from_disk: u64,
    /// Chunks the receivers got over content lanes and over libp2p.
    pub received_over_lanes: u64,
    pub received_over_libp2p: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FleetError + '_ {
    move |e| FleetError::Io { path: path.to_path_buf(), source: e }
}

fn timeout(name: &str, what: &str, after: Duration, log: String) -> FleetError {
    FleetError::Timeout { name: name.into(), what: what.into(), timeout: after, log }
}

fn api_of(dir: &Path) -> Option<String> {
    let socket = dir.join("api.sock");
    socket.exists().then(|| socket.display().to_string())
}

/// The artifact entry of the node's release of `app`, if it has one.
fn artifact_status(status: &Value, app: &str) -> Option<Value> {
    let release = status["releases"].as_array()?.iter().find(|r| r["app"] == app)?;
    release["content"].as_array()?.iter().find(|c| c["what"] == "artifact").cloned()
}

pub fn run(o: &SwarmOptions) -> Result<SwarmResult, FleetError> {
    const APP: &str = "bench";
    std::fs::create_dir_all(&o.work_dir).map_err(io(&o.work_dir))?;
    let vendor_key = o.work_dir.join("vendor.key");
    let public = vendor_keygen(&o.mirage, &vendor_key)?;

    let bootstrap = BootstrapPeer::start(&o.mirage, &o.work_dir.join("bootstrap"))?;
    let mut nodes: Vec<(Process, PathBuf)> = Vec::new();
    for i in 0..o.receivers {
        let dir = o.work_dir.join(format!("r{i}"));
        let args: Vec<String> = [
            "node",
            "run",
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &bootstrap.addr,
            "--trust",
            &format!("{APP}={public}"),
            // Receivers run no app: the benchmark times distribution alone.
            "--content-only",
            "--no-auto-fetch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        nodes.push((
            Process::spawn(&o.mirage, &format!("receiver{i}"), &args, &o.work_dir.join(format!("r{i}.log")))?,
            dir,
        ));
    }
    let vendor_dir = o.work_dir.join("vendor");
    let chunk_kib = o.chunk_kib.to_string();
    let vendor_args = vendor_publish_args(
        &vendor_key,
        APP,
        "1.0.0",
        &o.artifact,
        &bootstrap.addr,
        &vendor_dir,
        &["--chunk-kib", &chunk_kib, "--replicas", "0", "--no-verify-artifact"],
    );
    let mut vendor = Process::spawn(&o.mirage, "vendor", &vendor_args, &o.work_dir.join("vendor.log"))?;
    vendor.read_stdout_until(o.timeout, "start seeding", |l| l.starts_with("seeding"))?;

    // Ready: every receiver holds the admitted manifest.
    let ready_by = Instant::now() + o.timeout;
    let mut apis = Vec::new();
    for (process, dir) in &mut nodes {
        loop {
            process.check_running()?;
            let api = api_of(dir);
            let status = api.as_deref().and_then(|a| api_call(a, &json!({"cmd": "status"})));
            if let (Some(api), Some(_)) = (&api, status.as_ref().and_then(|s| artifact_status(s, APP))) {
                apis.push(api.clone());
                break;
            }
            if Instant::now() > ready_by {
                return Err(timeout(process.name(), "admit the release", o.timeout, process.log_tail(20)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let start = Instant::now();
    for api in &apis {
        if api_call(api, &json!({"cmd": "fetch", "app": APP, "version": "1.0.0"})).is_none() {
            return Err(timeout(api, "accept the fetch", Duration::ZERO, String::new()));
        }
    }
    let mut done: Vec<Option<(PathBuf, f64)>> = vec![None; apis.len()];
    let mut bytes = 0;
    while done.iter().any(Option::is_none) {
        if start.elapsed() > o.timeout {
            let missing = done.iter().filter(|d| d.is_none()).count();
            return Err(timeout("receivers", &format!("complete ({missing} missing)"), o.timeout, vendor.log_tail(10)));
        }
        for (i, api) in apis.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let Some(a) = api_call(api, &json!({"cmd": "status"})).and_then(|s| artifact_status(&s, APP)) else {
                continue;
            };
            if a["state"] == "complete" {
                bytes = a["size"].as_u64().unwrap_or_default();
                let path = PathBuf::from(a["path"].as_str().unwrap_or_default());
                done[i] = Some((path, a["seconds"].as_f64().unwrap_or_default()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = start.elapsed().as_secs_f64();
    let (copies, node_seconds) = done.into_iter().flatten().unzip();
    let (mut served_from_memory, mut served_from_disk) = (0, 0);
    let (mut received_over_lanes, mut received_over_libp2p) = (0, 0);
    for api in &apis {
        if let Some(s) = api_call(api, &json!({"cmd": "status"})) {
            served_from_memory += s["served_chunks"]["memory"].as_u64().unwrap_or(0);
            served_from_disk += s["served_chunks"]["disk"].as_u64().unwrap_or(0);
            received_over_lanes += s["received_chunks"]["lane"].as_u64().unwrap_or(0);
            received_over_libp2p += s["received_chunks"]["libp2p"].as_u64().unwrap_or(0);
        }
    }
    for (p, _) in &mut nodes {
        p.terminate(Duration::from_secs(5));
    }
    vendor.terminate(Duration::from_secs(5));
    drop(bootstrap);
    Ok(SwarmResult {
        seconds,
        bytes,
        copies,
        node_seconds,
        served_from_memory,
        served_from_disk,
        received_over_lanes,
        received_over_libp2p,
    })
}
