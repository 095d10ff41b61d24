//! A staged-deployment fleet on loopback: a bootstrap peer, nodes on generated MySQL
//! machines that manage their own installs (`--install-prefix` inside their root), and a
//! vendor publishing the sample app's releases ([`crate::sample_app`]). Used by
//! `mirage testnet` (the README's main job) and the end-to-end staging tests.

use crate::fleet::{api_call, vendor_keygen, vendor_publish_args, BootstrapPeer, FleetError, FleetNode, Process};
use crate::sample_app::{self, APP};
use crate::sample_root::SampleMachine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one node says of the app's staging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub cluster: String,
    pub installed: Option<String>,
    pub target: Option<String>,
    pub phase: Option<String>,
    pub representative: bool,
    /// Zero-based stage of the node's cluster in the current release.
    pub stage: Option<u64>,
    pub stage_count: u64,
    pub open_stages: u64,
    pub reports: usize,
    /// Members of the node's cluster its roster counts live.
    pub members: usize,
    /// Members of the node's cluster its staging core elects from (fed from the roster
    /// at most once a second).
    pub staging_members: usize,
    /// Peers of any cluster of the app whose fingerprints it holds.
    pub known_peers: usize,
    /// What staging plans from: the roster's live members of the node's cluster,
    /// whether it is ready, and how many other clusters' sizes it knows.
    pub roster_members: usize,
    pub roster_ready: bool,
    pub known_sizes: usize,
}

impl NodeView {
    fn from_status(status: &Value) -> Option<NodeView> {
        let a = status["staging"].as_array()?.iter().find(|a| a["app"] == APP)?;
        let text = |v: &Value| v.as_str().map(str::to_string);
        Some(NodeView {
            cluster: text(&a["cluster_key"])?,
            installed: text(&a["installed"]),
            target: text(&a["target"]),
            phase: text(&a["phase"]),
            representative: a["representative"] == true,
            stage: a["stage"].as_u64(),
            stage_count: a["stage_count"].as_u64().unwrap_or(0),
            open_stages: a["open_stages"].as_u64().unwrap_or(0),
            reports: a["reports"].as_array().map_or(0, Vec::len),
            members: crate::fleet::members(status, APP).map_or(0, |m| m.len()),
            staging_members: a["members"].as_u64().unwrap_or(0) as usize,
            known_peers: crate::fleet::app_cluster(status, APP).and_then(|c| c["known_peers"].as_u64()).unwrap_or(0)
                as usize,
            roster_members: roster(status, "live_members").and_then(Value::as_u64).unwrap_or(0) as usize,
            roster_ready: roster(status, "ready").and_then(Value::as_bool).unwrap_or(false),
            known_sizes: roster(status, "known_cluster_sizes").and_then(Value::as_u64).unwrap_or(0) as usize,
        })
    }

    /// The roster shows the node's whole cluster, every other cluster's size, and is
    /// ready: staging acts on that view.
    pub fn roster_knows(&self, cluster_size: usize, clusters: usize) -> bool {
        self.roster_ready && self.roster_members == cluster_size && self.known_sizes + 1 == clusters
    }
}

fn roster<'a>(status: &'a Value, field: &str) -> Option<&'a Value> {
    crate::fleet::app_cluster(status, APP)?.get("roster")?.get(field)
}

/// The sample app's profile: the shipped MySQL profile.
pub const PROFILE: &str = include_str!("../../profiles/mysql.toml");

pub struct StagedOptions {
    pub mirage: PathBuf,
    pub dir: PathBuf,
    pub environments: u32,
    pub nodes_per_environment: u32,
    /// Extra `node run` flags for every node.
    pub node_flags: Vec<String>,
}

pub struct StagedFleet {
    pub bootstrap: BootstrapPeer,
    pub nodes: Vec<FleetNode>,
    pub vendor_key: PathBuf,
    pub vendor_public: String,
    pub mirage: PathBuf,
    dir: PathBuf,
    publishes: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FleetError + '_ {
    move |e| FleetError::Io { path: path.to_path_buf(), source: e }
}

impl StagedFleet {
    /// Starts the bootstrap peer and the nodes (environment `i % environments` for node
    /// `i`), and makes the vendor's key.
    pub fn start(o: &StagedOptions) -> Result<StagedFleet, FleetError> {
        StagedFleet::start_with_profile(o, PROFILE)
    }

    /// [`StagedFleet::start`] with another profile for the sample app (every node runs
    /// it; it is at [`StagedFleet::profile_path`]).
    pub fn start_with_profile(o: &StagedOptions, profile_text: &str) -> Result<StagedFleet, FleetError> {
        std::fs::create_dir_all(&o.dir).map_err(io(&o.dir))?;
        // The nodes' sandboxes run tests as an unprivileged user, which must reach the
        // machine roots and install prefixes inside (a temporary directory is 0700).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&o.dir, std::fs::Permissions::from_mode(0o755)).map_err(io(&o.dir))?;
        let profile = o.dir.join("mysql.toml");
        std::fs::write(&profile, profile_text).map_err(io(&profile))?;
        let vendor_key = o.dir.join("vendor.key");
        let vendor_public = vendor_keygen(&o.mirage, &vendor_key)?;
        let bootstrap = BootstrapPeer::start(&o.mirage, &o.dir.join("bootstrap"))?;
        let mut fleet = StagedFleet {
            bootstrap,
            nodes: Vec::new(),
            vendor_key,
            vendor_public,
            mirage: o.mirage.clone(),
            dir: o.dir.clone(),
            publishes: 0,
        };
        for i in 0..(o.environments * o.nodes_per_environment) {
            fleet.add_node(i % o.environments, &o.node_flags, |_| Ok(()))?;
        }
        Ok(fleet)
    }

    /// The profile every node runs.
    pub fn profile_path(&self) -> PathBuf {
        self.dir.join("mysql.toml")
    }

    /// Starts one more node in `environment`, with `extra` flags, and returns its index.
    /// `before_start` may prepare its directory (e.g. put a key at `data/node.key`).
    pub fn add_node(
        &mut self,
        environment: u32,
        extra: &[String],
        before_start: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<usize, FleetError> {
        let i = self.nodes.len();
        let machine = SampleMachine { environment, host: i as u32 };
        let dir = self.dir.join(format!("node{i:02}"));
        before_start(&dir).map_err(io(&dir))?;
        let profile = self.dir.join("mysql.toml");
        let mut flags = vec![
            "--trust".to_string(),
            format!("{APP}={}", self.vendor_public),
            "--install-prefix".into(),
            dir.join("root/opt/mirage").display().to_string(),
        ];
        flags.extend(extra.iter().cloned());
        self.nodes.push(FleetNode::start(&self.mirage, &dir, i, machine, &profile, &self.bootstrap.addr, &flags)?);
        Ok(i)
    }

    /// Writes the sample app's `version` and starts the vendor seeding it with
    /// `policy_flags` (e.g. `--policy balanced --stage-timeout-secs 20`).
    pub fn publish(&mut self, version: &str, policy_flags: &[&str]) -> Result<Process, FleetError> {
        let dir = self.dir.join(format!("release-{version}"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tar = dir.join(format!("{APP}-{version}.tar"));
        sample_app::write_release(version, &tar).map_err(io(&tar))?;
        let tests = dir.join("tests");
        sample_app::write_tests_dir(&tests).map_err(io(&tests))?;
        self.publish_files(version, &tar, &tests, policy_flags)
    }

    /// Starts the vendor seeding `artifact` as `version` with the tests in `tests`, then
    /// `flags`; its files go beside the artifact.
    pub fn publish_files(
        &mut self,
        version: &str,
        artifact: &Path,
        tests: &Path,
        flags: &[&str],
    ) -> Result<Process, FleetError> {
        self.publishes += 1;
        let dir = artifact.parent().unwrap_or(&self.dir).to_path_buf();
        let tests_arg = tests.display().to_string();
        let mut extra = vec!["--tests", &tests_arg, "--replicas", "0"];
        extra.extend_from_slice(flags);
        // One machine, one clock: there is no skew for the margin to cover, and the
        // fleet is seconds old when the first release comes.
        if !flags.contains(&"--presence-margin-secs") {
            extra.extend_from_slice(&["--presence-margin-secs", "0"]);
        }
        let args = vendor_publish_args(
            &self.vendor_key,
            APP,
            version,
            artifact,
            &self.bootstrap.addr,
            &dir.join("seed"),
            &extra,
        );
        let mut seed = Process::spawn(&self.mirage, &format!("vendor-{version}"), &args, &dir.join("vendor.log"))?;
        seed.read_stdout_until(Duration::from_secs(60), "start seeding", |l| l.starts_with("seeding"))?;
        Ok(seed)
    }

    /// Every node's view (None for a node that does not answer yet).
    pub fn views(&self) -> Vec<Option<NodeView>> {
        self.nodes.iter().map(|n| n.status().as_ref().and_then(NodeView::from_status)).collect()
    }

    /// Polls the views every 300 ms until `done` holds, calling `progress` with each new
    /// set of views; fails after `timeout` with the last views in the error.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut progress: impl FnMut(&[Option<NodeView>]),
        done: impl Fn(&[Option<NodeView>]) -> bool,
    ) -> Result<Vec<Option<NodeView>>, FleetError> {
        let deadline = Instant::now() + timeout;
        loop {
            for n in &mut self.nodes {
                n.process.check_running()?;
            }
            let views = self.views();
            progress(&views);
            if done(&views) {
                return Ok(views);
            }
            if Instant::now() > deadline {
                return Err(FleetError::Timeout {
                    name: "fleet".into(),
                    what: what.into(),
                    timeout,
                    log: format!("{views:#?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until every node counts `size` members in its cluster.
    pub fn wait_for_clusters(&mut self, size: usize, timeout: Duration) -> Result<(), FleetError> {
        let done = |views: &[Option<NodeView>]| views.iter().all(|v| v.as_ref().is_some_and(|v| v.members == size));
        self.wait_until("clusters", timeout, |_| {}, done).map(|_| ())
    }

    /// Publishes `version` without staging, waits until every node runs it, and stops
    /// the vendor's seed: the installed version a test's rollout starts from.
    pub fn install_everywhere(&mut self, version: &str, timeout: Duration) -> Result<(), FleetError> {
        let mut seed = self.publish(version, &["--policy", "no-staging"])?;
        let what = format!("{version} everywhere");
        let installed = self.wait_until(&what, timeout, |_| {}, |v| all_installed(v, version));
        seed.terminate(Duration::from_secs(10));
        installed.map(|_| ())
    }

    /// The problem reports the fleet holds for the app, as `mirage vendor reports --json`
    /// prints them.
    pub fn problem_reports(&self) -> Result<Vec<Value>, FleetError> {
        let out = std::process::Command::new(&self.mirage)
            .args(["vendor", "reports", "--json", "--wait-secs", "3", "--app", APP, "--key"])
            .arg(&self.vendor_key)
            .args(["--bootstrap", &self.bootstrap.addr])
            .output()
            .map_err(|e| FleetError::Spawn { name: "vendor reports".into(), source: e })?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// A raw API request to node `i`.
    pub fn api(&self, i: usize, request: &Value) -> Option<Value> {
        api_call(&self.nodes[i].api()?, request)
    }

    /// Node `i`'s status.
    pub fn status(&self, i: usize) -> Option<Value> {
        self.api(i, &json!({"cmd": "status"}))
    }
}

/// Per cluster (by key), the nodes' indices.
pub fn clusters(views: &[Option<NodeView>]) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, v) in views.iter().enumerate() {
        if let Some(v) = v {
            out.entry(v.cluster.clone()).or_default().push(i);
        }
    }
    out
}

/// Whether a release that breaks the nodes `breaks` picks out has settled: every such
/// node failed its tests or is halted, every other node runs `version`.
pub fn broken_release_settled(views: &[Option<NodeView>], version: &str, breaks: impl Fn(usize) -> bool) -> bool {
    views.iter().enumerate().all(|(i, v)| {
        v.as_ref().is_some_and(|v| {
            if breaks(i) {
                matches!(v.phase.as_deref(), Some("failed" | "halted"))
            } else {
                v.installed.as_deref() == Some(version)
            }
        })
    })
}

/// Whether every node answers and has `version` installed.
pub fn all_installed(views: &[Option<NodeView>], version: &str) -> bool {
    views.iter().all(|v| v.as_ref().is_some_and(|v| v.installed.as_deref() == Some(version)))
}

/// One line per cluster: its stage and how many of its nodes are in each phase.
pub fn progress_line(views: &[Option<NodeView>], environment_of: impl Fn(usize) -> u32) -> String {
    let mut parts = Vec::new();
    for (key, members) in clusters(views) {
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        let mut stage = None;
        for &i in &members {
            let v = views[i].as_ref().expect("clustered nodes answered");
            stage = stage.or(v.stage);
            let mut phase = v.phase.clone().unwrap_or_else(|| "idle".into());
            if v.representative {
                phase.push('*');
            }
            *phases.entry(phase).or_default() += 1;
        }
        let phases: Vec<String> = phases.into_iter().map(|(p, n)| format!("{n} {p}")).collect();
        parts.push(format!(
            "env {} [{}] stage {}: {}",
            environment_of(members[0]),
            &key[..8],
            stage.map_or("-".into(), |s| (s + 1).to_string()),
            phases.join(", ")
        ));
    }
    parts.join(" | ")
}
