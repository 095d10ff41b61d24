//! `mirage vendor`: what a software vendor runs. `keygen` makes the signing key;
//! `publish` builds and signs a release's manifest, announces it on the app's release
//! topic and seeds the content until enough peers hold a full copy.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mirage_node::daemon::{self, NodeOptions, SeedRelease};
use mirage_node::release::{self, ReleaseSpec};
use mirage_protocol::fingerprint::scope::Scope;
use mirage_protocol::fingerprint::Profile;
use mirage_protocol::manifest::{PolicyKind, StagingPolicy};
use mirage_protocol::{ClusterKey, Digest, Envelope, PublicKey};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum VendorCommand {
    /// Write a new vendor signing key (mode 0600) and print the public key nodes trust.
    Keygen(super::keygen::Args),
    /// Sign a release and seed it into the overlay.
    Publish(Box<PublishArgs>),
    /// Collect the signed problem reports the fleet holds for an app.
    Reports(ReportsArgs),
    /// Ask clusters halted on a release to test it again (signed; reports from before
    /// the request no longer count there).
    Retest(RetestArgs),
    /// Run a release's tests against a machine root here, in the sandbox the
    /// representatives use, before publishing it.
    Test(TestArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The app's profile (TOML): which of the machine's files the tests get copies of.
    #[arg(long, value_name = "PROFILE.toml")]
    profile: PathBuf,
    /// The machine root to test against: an absolute path (`/` for this machine).
    #[arg(long)]
    root: PathBuf,
    /// The new version: an archive as for `vendor publish` (tar, tar.gz or tar.zst).
    #[arg(long)]
    artifact: PathBuf,
    /// The directory with `tests.toml` and the files the tests use.
    #[arg(long)]
    tests: PathBuf,
    /// The version the machine runs now, as an archive: replay tests compare it with the
    /// new one (without it they are skipped, as on a first install).
    #[arg(long)]
    old_artifact: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RetestArgs {
    /// The vendor's signing key (the one the release was published with).
    #[arg(long)]
    key: PathBuf,
    /// The app.
    #[arg(long)]
    app: String,
    /// The release to test again (it must be in the ledger beside the key, as
    /// `vendor publish` records it).
    #[arg(long)]
    version: semver::Version,
    /// A cluster to test again, by its key as `vendor reports` shows it (repeatable;
    /// default: every cluster that reported a problem with this release).
    #[arg(long = "cluster", value_name = "CLUSTER_KEY")]
    clusters: Vec<String>,
    /// Without --cluster: how long to listen for problem reports to find the clusters.
    #[arg(long, default_value_t = 5)]
    wait_secs: u64,
    /// A bootstrap peer, /ip4/../tcp/../p2p/<peer id> (repeatable).
    #[arg(long, required = true)]
    bootstrap: Vec<String>,
    /// Fail if the request could not be sent to any peer by then.
    #[arg(long, default_value_t = 20)]
    timeout_secs: u64,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ReportsArgs {
    /// The vendor's signing key (the collector trusts it for the app).
    #[arg(long)]
    key: PathBuf,
    /// The app whose problem reports to collect.
    #[arg(long)]
    app: String,
    /// A bootstrap peer, /ip4/../tcp/../p2p/<peer id> (repeatable).
    #[arg(long, required = true)]
    bootstrap: Vec<String>,
    /// How long to listen and ask peers.
    #[arg(long, default_value_t = 5)]
    wait_secs: u64,
    /// Print JSON lines, one per report.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The vendor's signing key (from `mirage vendor keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The app the release is for (its name in the nodes' profiles).
    #[arg(long)]
    app: String,
    /// The release's version (semver); a node takes only a version newer than the one it holds.
    #[arg(long)]
    version: semver::Version,
    /// The upgrade itself: a tar (or gzip- or zstd-compressed tar) of the new version's files.
    #[arg(long)]
    artifact: PathBuf,
    /// A directory with `tests.toml` and the files the tests use.
    #[arg(long)]
    tests: Option<PathBuf>,
    /// Staging policy: no-staging, front-loading or balanced.
    #[arg(long, default_value = "balanced")]
    policy: PolicyKind,
    /// Representatives that test per cluster.
    #[arg(long)]
    representatives: Option<u16>,
    /// Passing reports a cluster needs before its members apply.
    #[arg(long)]
    threshold: Option<u16>,
    /// `balanced`: number of stages.
    #[arg(long)]
    stages: Option<u16>,
    /// `balanced`: how long a stage may wait for its clusters' gates before the next opens.
    #[arg(long)]
    stage_timeout_secs: Option<u32>,
    /// How long a representative may take to report before the next in line replaces it.
    #[arg(long)]
    report_deadline_secs: Option<u32>,
    /// How long before the release a node must have been seen in its cluster to
    /// represent it (default 120: the clock skew nodes tolerate). Identities that appear
    /// after the release never represent a cluster for it.
    #[arg(long)]
    presence_margin_secs: Option<u32>,
    /// A key (peer id) the vendor trusts to test: its reports count for the clusters
    /// named with --critical. Repeatable.
    #[arg(long = "tester", value_name = "PEER_ID")]
    testers: Vec<String>,
    /// A cluster key (hex) whose gate also needs --tester-quorum passes from the
    /// trusted testers. Repeatable.
    #[arg(long = "critical", value_name = "CLUSTER_KEY")]
    critical: Vec<String>,
    /// How many trusted testers must pass in a critical cluster (default: all of them).
    #[arg(long)]
    tester_quorum: Option<u16>,
    /// Stage the release over the clusters of one of the app's scopes (what the upgrade
    /// touches): `NAME` is a `[scopes.NAME]` of the profile given with --profile, which
    /// must be the profile the nodes run. Nodes without that scope stage it over their
    /// full clusters.
    #[arg(long, value_name = "NAME", requires = "profile")]
    scope: Option<String>,
    /// The app's profile, for --scope.
    #[arg(long, value_name = "PATH")]
    profile: Option<PathBuf>,
    /// Hours until the manifest expires (nodes refuse it afterwards).
    #[arg(long, default_value_t = 720)]
    valid_for_hours: u64,
    /// Chunk size in KiB: a power of two from 16 to 16384.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: u32,
    /// Release notes, carried in the signed manifest.
    #[arg(long, default_value = "")]
    notes: String,
    /// A bootstrap peer, /ip4/../tcp/../p2p/<peer id> (repeatable; not needed with
    /// --dry-run).
    #[arg(long, required_unless_present = "dry_run")]
    bootstrap: Vec<String>,
    /// Listen address for serving content (repeatable). Default: TCP on an ephemeral port.
    #[arg(long)]
    listen: Vec<String>,
    /// Where the seed keeps its copy and database. Default: a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop seeding once this many other peers hold a full copy; 0 seeds until stopped.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Fail if no peer has admitted the release (trusted the key, found it newer) by then.
    #[arg(long, default_value_t = 60)]
    admit_timeout_secs: u64,
    /// Fail if no bootstrap peer has answered by then.
    #[arg(long, default_value_t = 15)]
    bootstrap_timeout_secs: u64,
    /// Check everything (artifact, tests, policy), print what would be published, and
    /// stop: nothing is signed or sent.
    #[arg(long)]
    dry_run: bool,
    /// Publish an artifact that is not an installable archive (distribution benchmarks):
    /// skips unpacking it as the nodes would.
    #[arg(long, hide = true)]
    no_verify_artifact: bool,
    /// Print the summary, progress and outcome as JSON lines (errors stay on standard
    /// error).
    #[arg(long)]
    json: bool,
}

/// The scope `name` of the app's profile at `path`.
fn profile_scope(path: &Path, app: &str, name: &str) -> Result<Scope> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading profile {}", path.display()))?;
    let profile = Profile::parse(&text).with_context(|| format!("profile {}", path.display()))?;
    if profile.app() != app {
        bail!("profile {} is for app `{}`, not `{app}`", path.display(), profile.app());
    }
    match profile.scope(name) {
        Some(scope) => Ok(scope.clone()),
        None => {
            let names: Vec<&str> = profile.scopes().iter().map(|(n, _)| n.as_str()).collect();
            bail!(
                "profile {} declares no scope `{name}` (it declares: {})",
                path.display(),
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )
        }
    }
}

pub fn run(command: VendorCommand) -> Result<()> {
    match command {
        VendorCommand::Keygen(args) => super::keygen::run(args),
        VendorCommand::Publish(args) => publish(*args),
        VendorCommand::Reports(args) => reports(args),
        VendorCommand::Retest(args) => retest(args),
        VendorCommand::Test(args) => test(args),
    }
}

fn publish(args: PublishArgs) -> Result<()> {
    mirage_protocol::manifest::validate_app_name(&args.app).map_err(anyhow::Error::msg)?;
    let keypair = mirage_node::keyfile::load(&args.key)?;
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut policy = StagingPolicy { kind: args.policy, ..StagingPolicy::default() };
    if let Some(r) = args.representatives {
        policy.representatives = r;
        // Fewer representatives than the default threshold: all of them must pass,
        // unless --threshold says otherwise.
        policy.threshold = policy.threshold.min(r);
    }
    if let Some(t) = args.threshold {
        policy.threshold = t;
    }
    if let Some(n) = args.stages {
        policy.stages = n;
    }
    if let Some(t) = args.stage_timeout_secs {
        policy.stage_timeout_secs = t;
    }
    if let Some(t) = args.report_deadline_secs {
        policy.report_deadline_secs = t;
    }
    if let Some(m) = args.presence_margin_secs {
        policy.presence_margin_secs = m;
    }
    policy.testers = args
        .testers
        .iter()
        .map(|t| PublicKey::from_peer_id(t).with_context(|| format!("--tester {t}: not an ed25519 peer id")))
        .collect::<anyhow::Result<_>>()?;
    policy.critical = args.critical.iter().map(|c| cluster_key_arg("--critical", c)).collect::<Result<_>>()?;
    policy.tester_quorum = args.tester_quorum.unwrap_or(policy.testers.len() as u16);
    if let (Some(name), Some(path)) = (&args.scope, &args.profile) {
        policy.scope = Some(Box::new(profile_scope(path, &args.app, name)?));
    }
    policy.validate().map_err(anyhow::Error::msg).context("staging policy")?;
    let spec = ReleaseSpec {
        tests_dir: args.tests.clone(),
        policy,
        valid_for: Duration::from_secs(args.valid_for_hours * 3600),
        chunk_size: args.chunk_kib.saturating_mul(1024),
        notes: args.notes.clone(),
        ..ReleaseSpec::new(&args.app, args.version.clone(), args.artifact.clone())
    };
    let now = mirage_bootstrap::overlay::now();
    let built = release::build(&spec, &data_dir, now).context("building the release")?;
    let packing = if args.no_verify_artifact { None } else { Some(check_artifact(&built.artifact_path, &data_dir)?) };
    let m = &built.manifest;
    if args.dry_run {
        print_summary(m, packing, &keypair.public().to_string(), args.json);
        if !args.json {
            println!("dry run: the release is well-formed; nothing was signed or published");
        }
        return Ok(());
    }
    let envelope = Envelope::sign(&keypair, &built.manifest, now)?.to_bytes()?;
    let ledger = ledger_path(&args.key);
    if let Err(e) = record_published(&ledger, m, now) {
        eprintln!(
            "warning: cannot record the release in {}: {e:#} (`vendor reports` will not list its reports)",
            ledger.display()
        );
    }
    print_summary(m, packing, &keypair.public().to_string(), args.json);

    let mut options = NodeOptions::new(data_dir.clone(), data_dir.join("seed.key"));
    options.bootstrap = super::peer_addrs(&args.bootstrap, "bootstrap")?;
    options.listen = if args.listen.is_empty() {
        vec!["/ip4/0.0.0.0/tcp/0".parse()?]
    } else {
        super::multiaddrs(&args.listen, "listen")?
    };
    options.seed = vec![SeedRelease { envelope, artifact: built.artifact_path.clone(), bundle: built.bundle_path }];
    options.stop_after_replicas = (args.replicas > 0).then_some(args.replicas);
    let goal = if args.replicas > 0 {
        format!("until {} peers hold a full copy", args.replicas)
    } else {
        "until stopped".to_string()
    };
    if args.json {
        println!("{}", serde_json::json!({ "event": "seeding", "replicas_wanted": args.replicas }));
    } else {
        println!("seeding {goal}; waiting up to {} s for peers to admit the release", args.admit_timeout_secs);
    }
    let watch = Watch {
        json: args.json,
        app: m.app.clone(),
        version: m.version.to_string(),
        key: keypair.public().to_string(),
        replicas: args.replicas,
        bootstrap_timeout: Duration::from_secs(args.bootstrap_timeout_secs),
        admit_timeout: Duration::from_secs(args.admit_timeout_secs),
    };
    let runtime = super::async_runtime()?;
    let outcome = runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // The seed's event loop runs on this thread and the watcher beside it. Spawned,
        // the seed shared the runtime's two workers with its own lane tasks, and
        // `bench swarm` took about a tenth longer.
        let watcher = tokio::spawn(async move { watch.follow(&data_dir, done_rx, stop_tx).await });
        let seed = daemon::run(options, async move {
            let _ = stop_rx.await;
        })
        .await;
        let _ = done_tx.send(seed);
        watcher.await.unwrap_or_else(|e| Err(anyhow::anyhow!("the seed's watcher failed: {e}")))
    });
    drop(runtime);
    outcome
}

/// Unpacks the artifact as every node will, into a scratch directory, so an archive no
/// node could install is refused here and not by the whole fleet.
fn check_artifact(artifact: &std::path::Path, work: &std::path::Path) -> Result<&'static str> {
    let scratch = tempfile::tempdir_in(work).context("creating a scratch directory")?;
    let dest = scratch.path().join("unpacked");
    let (_, packing) = mirage_artifact::open_tar_stream(artifact)?;
    mirage_artifact::unpack_safely(artifact, &dest)
        .with_context(|| format!("{} would not install on any node", artifact.display()))?;
    Ok(packing.name())
}

/// The release as the vendor is about to sign it (or, with `--dry-run`, would).
fn print_summary(m: &mirage_protocol::manifest::UpgradeManifest, packing: Option<&str>, key: &str, json: bool) {
    use mirage_protocol::manifest::TestSpec;
    let tests: Vec<String> = m
        .tests
        .iter()
        .map(|t| match t {
            TestSpec::Command { name, .. } => name.clone(),
            TestSpec::Replay { name, .. } => format!("{name} (replay)"),
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "event": "summary",
            "manifest_id": m.id().to_hex(),
            "app": m.app,
            "version": m.version.to_string(),
            "artifact": {
                "size": m.artifact.size,
                "chunks": m.artifact.chunk_count(),
                "content_hash": m.artifact.content_hash.to_hex(),
                "packing": packing,
            },
            "tests": tests,
            "health_check": m.health_check.as_ref().map(|h| h.argv.clone()),
            "policy": m.policy,
            "vendor_key": key,
        });
        println!("{v}");
        return;
    }
    println!(
        "manifest {} for {} {}: {} bytes in {} chunks, content {}",
        m.id(),
        m.app,
        m.version,
        m.artifact.size,
        m.artifact.chunk_count(),
        m.artifact.content_hash
    );
    if let Some(p) = packing {
        println!("artifact: a {p} that unpacks cleanly");
    }
    println!(
        "tests: {}; health check: {}",
        if tests.is_empty() { "none".to_string() } else { tests.join(", ") },
        if m.health_check.is_some() { "yes" } else { "none" }
    );
    let p = &m.policy;
    println!(
        "policy: {}, {} representative(s) per cluster, {} pass(es) to apply, report deadline {} s{}",
        p.kind,
        p.representatives,
        p.threshold,
        p.report_deadline_secs,
        if p.kind == PolicyKind::Balanced {
            format!(", {} stage(s), stage timeout {} s", p.stages, p.stage_timeout_secs)
        } else {
            String::new()
        }
    );
    println!("representatives must have been in their cluster {} s before the release", p.presence_margin_secs);
    if let Some(scope) = &p.scope {
        let classes: Vec<&str> = scope.classes.iter().map(|c| c.name()).collect();
        println!(
            "staged over the clusters of a scope: classes {}, paths {}",
            if classes.is_empty() { "all".to_string() } else { classes.join(", ") },
            if scope.paths.is_empty() { "all".to_string() } else { scope.paths.join(", ") }
        );
    }
    if !p.critical.is_empty() {
        println!(
            "{} critical cluster(s) also need {} of {} trusted tester(s) to pass",
            p.critical.len(),
            p.tester_quorum,
            p.testers.len()
        );
    }
    println!("vendor key {key} (nodes need --trust {}={key})", m.app);
}

/// What `vendor publish` waits for, and how long.
struct Watch {
    /// Progress and outcome as JSON lines.
    json: bool,
    app: String,
    version: String,
    key: String,
    replicas: usize,
    bootstrap_timeout: Duration,
    admit_timeout: Duration,
}

impl Watch {
    /// Follows the seed through its API until the goal is met (success), or something
    /// says it never will be: no bootstrap peer, no peer admitting the release, Ctrl-C
    /// before the goal. Prints a progress line as it goes.
    /// Returning drops `stop`, which stops the seed.
    async fn follow(
        &self,
        data_dir: &std::path::Path,
        mut seed: tokio::sync::oneshot::Receiver<Result<(), daemon::DaemonError>>,
        stop: tokio::sync::oneshot::Sender<()>,
    ) -> Result<()> {
        let _stop = stop;
        let started = std::time::Instant::now();
        let mut shutdown = std::pin::pin!(mirage_bootstrap::shutdown_signal());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_line = String::new();
        let mut last = serde_json::Value::Null;
        loop {
            tokio::select! {
                done = &mut seed => {
                    return match done {
                        // The seed stops by itself only once its goal is met.
                        Ok(Ok(())) => {
                            if self.json {
                                println!("{}", serde_json::json!({ "event": "done", "full_copies": self.replicas }));
                            } else {
                                println!(
                                    "seeding done: {} peers hold a full copy of {} {}",
                                    self.replicas, self.app, self.version
                                );
                            }
                            Ok(())
                        }
                        Ok(Err(e)) => Err(e).context("the seed stopped with an error"),
                        Err(_) => bail!("the seed stopped without saying why"),
                    };
                }
                _ = &mut shutdown => {
                    let line = self.line(&last);
                    if self.replicas == 0 && admitted(&last) > 0 {
                        if self.json {
                            println!("{}", self.progress("stopped", &last));
                        } else {
                            println!("{line}; stopped");
                        }
                        return Ok(());
                    }
                    bail!("stopped before the goal was met ({line})");
                }
                _ = tick.tick() => {}
            }
            let Some(status) = peer_status(data_dir).await else { continue };
            last = status;
            let line = self.line(&last);
            if line != last_line {
                if self.json {
                    println!("{}", self.progress("progress", &last));
                } else {
                    println!("{line}");
                }
                last_line = line;
            }
            let elapsed = started.elapsed();
            let bootstrap = &last["bootstrap_peers"];
            if bootstrap["connected"].as_u64() == Some(0)
                && last["connected_peers"].as_u64() == Some(0)
                && elapsed >= self.bootstrap_timeout
            {
                bail!(
                    "no bootstrap peer answered within {} s: check the --bootstrap addresses and that the peers run",
                    self.bootstrap_timeout.as_secs()
                );
            }
            if admitted(&last) == 0 && elapsed >= self.admit_timeout {
                bail!("{}", self.not_admitted(&last));
            }
        }
    }

    fn progress(&self, event: &str, status: &serde_json::Value) -> serde_json::Value {
        let mut v = status["seeding"].clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("event".into(), event.into());
            o.insert("connected_peers".into(), status["connected_peers"].clone());
        }
        v
    }

    fn line(&self, status: &serde_json::Value) -> String {
        let s = &status["seeding"];
        let full = s["full_copies"].as_u64().unwrap_or(0);
        let goal = if self.replicas > 0 {
            format!("{full}/{} full copies", self.replicas)
        } else {
            format!("{full} full copies")
        };
        format!(
            "{} {}: admitted by {} peer(s), {goal}, {} peer(s) connected",
            self.app,
            self.version,
            admitted(status),
            status["connected_peers"].as_u64().unwrap_or(0)
        )
    }

    /// Why no peer admitted the release, from what the peers that answered hold.
    fn not_admitted(&self, status: &serde_json::Value) -> String {
        let s = &status["seeding"];
        let mut why =
            format!("no peer admitted {} {} within {} s", self.app, self.version, self.admit_timeout.as_secs());
        let others: Vec<String> = s["other_versions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(v, n)| format!("{n} hold {} {v}", self.app))
            .collect();
        let without = s["without_release"].as_u64().unwrap_or(0);
        if !others.is_empty() {
            why.push_str(&format!("; {} (a node takes only a version newer than the one it holds)", others.join(", ")));
        }
        if without > 0 {
            why.push_str(&format!(
                "; {without} peer(s) hold no release of {}: do they trust this key? (--trust {}={})",
                self.app, self.app, self.key
            ));
        }
        if others.is_empty() && without == 0 {
            why.push_str(&format!(
                "; no node answered (connected peers: {}): are nodes running {} and reachable from the bootstrap peers?",
                status["connected_peers"].as_u64().unwrap_or(0),
                self.app
            ));
        }
        why
    }
}

fn admitted(status: &serde_json::Value) -> u64 {
    status["seeding"]["admitted"].as_u64().unwrap_or(0)
}

/// A short-lived peer's status (a seed's, a sender's), once its API is up.
async fn peer_status(data_dir: &std::path::Path) -> Option<serde_json::Value> {
    let at = daemon::api::Endpoint::of_data_dir(data_dir);
    daemon::api::call(&at, &daemon::api::Request::Status, Duration::from_secs(5)).await.ok()
}

/// Runs a short-lived peer (a collector, a sender) while `work` runs, then stops it.
async fn while_peer_runs<T>(options: NodeOptions, work: impl std::future::Future<Output = T>) -> T {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(daemon::run(options, async move {
        let _ = stop_rx.await;
    }));
    let out = work.await;
    let _ = stop_tx.send(());
    let _ = peer.await;
    out
}

/// Problem reports the fleet holds on this vendor's releases of `app`, and how many
/// others (about releases it did not publish) were left out.
struct Collected {
    ours: Vec<mirage_protocol::Verified<mirage_protocol::report::ProblemReport>>,
    others: usize,
}

/// Runs a collector peer for `wait` and asks it what it gathered. Fails when the
/// overlay cannot be reached.
fn collect_reports(key: &std::path::Path, app: &str, bootstrap: &[String], wait: Duration) -> Result<Collected> {
    use mirage_protocol::report::ProblemReport;
    mirage_protocol::manifest::validate_app_name(app).map_err(anyhow::Error::msg)?;
    let keypair = mirage_node::keyfile::load(key)?;
    let temp = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut options = NodeOptions::new(temp.path().to_path_buf(), temp.path().join("collector.key"));
    options.bootstrap = super::peer_addrs(bootstrap, "bootstrap")?;
    options.trust.trust(app, keypair.public());
    options.auto_fetch = false;
    options.collect_reports = true;
    let data_dir = options.data_dir.clone();
    let runtime = super::async_runtime()?;
    let request = daemon::api::Request::ProblemReports { app: app.to_string() };
    let (collected, status) = runtime.block_on(while_peer_runs(options, async move {
        tokio::time::sleep(wait).await;
        let at = daemon::api::Endpoint::of_data_dir(&data_dir);
        let reply = daemon::api::call(&at, &request, Duration::from_secs(10)).await;
        let status = daemon::api::call(&at, &daemon::api::Request::Status, Duration::from_secs(10)).await;
        (reply, status)
    }));
    let collected = collected.context("asking the collector for reports")?;
    let status = status.context("asking the collector for its status")?;
    if status["connected_peers"].as_u64() == Some(0) {
        bail!("cannot reach the overlay: no bootstrap peer answered within {} s (check --bootstrap)", wait.as_secs());
    }
    // Only this vendor's releases: the ones it published (its ledger) and the one the
    // collector admitted under its key. Anyone can sign a problem report naming any
    // manifest; those about others' releases are left out.
    let mut ours_ids: std::collections::BTreeSet<String> =
        read_ledger(&ledger_path(key)).into_iter().filter(|e| e.app == app).map(|e| e.manifest_id).collect();
    for r in status["releases"].as_array().into_iter().flatten() {
        if r["app"] == app && r["signer"] == keypair.public().to_hex().as_str() {
            ours_ids.extend(r["manifest_id"].as_str().map(str::to_string));
        }
    }
    let mut out = Collected { ours: Vec::new(), others: 0 };
    for hex in collected["reports"].as_array().into_iter().flatten() {
        let Some(bytes) = hex.as_str().and_then(|h| hex::decode(h).ok()) else { continue };
        let Some(report) = Envelope::from_bytes(&bytes).ok().and_then(|e| e.verify::<ProblemReport>().ok()) else {
            continue;
        };
        if ours_ids.contains(&report.payload().manifest_id.to_hex()) {
            out.ours.push(report);
        } else {
            out.others += 1;
        }
    }
    Ok(out)
}

fn reports(args: ReportsArgs) -> Result<()> {
    let collected = collect_reports(&args.key, &args.app, &args.bootstrap, Duration::from_secs(args.wait_secs))?;
    let keypair = mirage_node::keyfile::load(&args.key)?;
    let mut unreadable = 0;
    for report in &collected.ours {
        let p = report.payload();
        // Sealed to our key; one that does not open (sealed to another, altered) says
        // nothing we can check.
        let details = match p.open(&keypair) {
            Ok(d) => d,
            Err(e) => {
                unreadable += 1;
                tracing::debug!(signer = %report.signer().peer_id(), error = %e, "problem report does not open");
                continue;
            }
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "app": p.app,
                    "version": p.version.to_string(),
                    "manifest_id": p.manifest_id.to_hex(),
                    "cluster_key": p.cluster_key.to_hex(),
                    "signer": report.signer().peer_id(),
                    "failed_tests": p.failed_tests,
                    "logs_digest": p.logs_digest.to_hex(),
                    "output_excerpt": details.output_excerpt,
                    "fingerprint_items": details.fingerprint.items().len(),
                })
            );
        } else {
            // The whole cluster key: it is what `vendor retest --cluster` takes.
            println!(
                "{} {} failed on cluster {} (reported by {}): {}",
                p.app,
                p.version,
                p.cluster_key.to_hex(),
                report.signer().peer_id(),
                p.failed_tests.join(", ")
            );
            for line in details.output_excerpt.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev() {
                println!("    {line}");
            }
        }
    }
    if !args.json {
        println!("{} problem report(s) for {}", collected.ours.len() - unreadable, args.app);
        if unreadable > 0 {
            println!("({unreadable} report(s) that do not open with this key were left out)");
        }
        if collected.others > 0 {
            println!("({} report(s) about releases not published with this key were left out)", collected.others);
        }
    }
    Ok(())
}

fn retest(args: RetestArgs) -> Result<()> {
    use mirage_protocol::report::RetestRequest;
    mirage_protocol::manifest::validate_app_name(&args.app).map_err(anyhow::Error::msg)?;
    let keypair = mirage_node::keyfile::load(&args.key)?;
    let ledger = ledger_path(&args.key);
    let version = args.version.to_string();
    let published = read_ledger(&ledger).into_iter().rev().find(|e| e.app == args.app && e.version == version);
    let Some(published) = published else {
        bail!("{} {} is not in {} (releases published with this key)", args.app, version, ledger.display());
    };
    let manifest_id = mirage_protocol::Digest::from_hex(&published.manifest_id)
        .map_err(|e| anyhow::anyhow!("{}: bad manifest id: {e}", ledger.display()))?;
    let clusters = args.clusters.iter().map(|c| cluster_key_arg("--cluster", c)).collect::<Result<Vec<_>>>()?;
    // Without --cluster: the clusters that reported a problem with this release, the
    // ones it halted. A retest of a cluster that passed would only make it wait again.
    let clusters = if clusters.is_empty() {
        let collected = collect_reports(&args.key, &args.app, &args.bootstrap, Duration::from_secs(args.wait_secs))?;
        let halted: std::collections::BTreeSet<mirage_protocol::ClusterKey> = collected
            .ours
            .iter()
            .filter(|r| r.payload().manifest_id == manifest_id)
            .map(|r| r.payload().cluster_key)
            .collect();
        if halted.is_empty() {
            bail!(
                "no cluster reported a problem with {} {version}; name the clusters to test again with --cluster",
                args.app
            );
        }
        halted.into_iter().collect()
    } else {
        clusters
    };
    let request = RetestRequest { manifest_id, app: args.app.clone(), version: args.version.clone(), clusters };
    use mirage_protocol::SignedPayload;
    request.validate().map_err(anyhow::Error::msg).context("the retest request")?;
    let named = request.clusters.len();
    let now = mirage_bootstrap::overlay::now();
    let bytes = Envelope::sign(&keypair, &request, now)?.to_bytes()?;

    let temp = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut options = NodeOptions::new(temp.path().to_path_buf(), temp.path().join("sender.key"));
    options.bootstrap = super::peer_addrs(&args.bootstrap, "bootstrap")?;
    options.release_messages = vec![(args.app.clone(), bytes)];
    let data_dir = options.data_dir.clone();
    let runtime = super::async_runtime()?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let sent = runtime.block_on(while_peer_runs(options, async move {
        let started = std::time::Instant::now();
        let mut sent = None;
        while started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(s) = peer_status(&data_dir).await {
                if s["pending_publishes"].as_u64() == Some(0) {
                    sent = Some(s["connected_peers"].as_u64().unwrap_or(0));
                    // Gossip forwards from the peers it went to; stay a moment for that.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    break;
                }
            }
        }
        sent
    }));
    let Some(peers) = sent else {
        bail!("the retest request reached no peer within {} s (check --bootstrap)", args.timeout_secs);
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "app": args.app,
                "version": version,
                "manifest_id": manifest_id.to_hex(),
                "clusters": named,
                "sent_via_peers": peers,
            })
        );
    } else {
        println!("asked {named} cluster(s) to test {} {version} again (sent via {peers} peer(s))", args.app);
    }
    Ok(())
}

fn test(args: TestArgs) -> Result<()> {
    use mirage_artifact::unpack_safely;
    use mirage_node::sandbox::{resources_of, Sandbox, TestRun};
    if !args.root.is_absolute() || !args.root.is_dir() {
        bail!("--root {} must be an absolute path to a directory", args.root.display());
    }
    let text = std::fs::read_to_string(&args.profile).with_context(|| format!("reading {}", args.profile.display()))?;
    let profile = mirage_protocol::fingerprint::Profile::parse(&text)
        .with_context(|| format!("profile {}", args.profile.display()))?;
    let app = profile.app().to_string();
    let (tests, _health) = release::read_tests(&args.tests)?;
    let tests_dir = std::fs::canonicalize(&args.tests).with_context(|| format!("{}", args.tests.display()))?;
    let scanned = mirage_node::scan::scan(&profile, &args.root, None)
        .with_context(|| format!("fingerprinting {app} under {}", args.root.display()))?;
    let resources = resources_of(&scanned.fingerprint, &args.root);

    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let prefix = scratch.path().join("prefix");
    let versions = prefix.join(&app).join("versions");
    std::fs::create_dir_all(&versions).with_context(|| format!("creating {}", versions.display()))?;
    let new_dir = versions.join("new");
    unpack_safely(&args.artifact, &new_dir).with_context(|| format!("{} does not unpack", args.artifact.display()))?;
    let old_dir = match &args.old_artifact {
        Some(old) => {
            let dir = versions.join("old");
            unpack_safely(old, &dir).with_context(|| format!("{} does not unpack", old.display()))?;
            Some(dir)
        }
        None => None,
    };
    // The sandbox's user must reach its copies, the versions and the tests: a copy of
    // the tests in a scratch directory it may search, never the vendor's own files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("opening {} to the sandbox", scratch.path().display()))?;
    let tests_copy = scratch.path().join("tests");
    let sandbox = Sandbox::new()?.with_scratch_dir(scratch.path());
    mirage_node::sandbox::view::copy_preserving(&tests_dir, &tests_copy)?;
    sandbox
        .confinement()
        .give(&tests_copy)
        .with_context(|| format!("handing {} to the sandbox", tests_copy.display()))?;
    let run = TestRun {
        app: app.clone(),
        install_prefix: prefix,
        old_version_dir: old_dir,
        new_version_dir: new_dir,
        resources,
        bundle_dir: Some(tests_copy),
        tests,
        machine_root: args.root.clone(),
        hidden: Vec::new(),
    };
    let results = sandbox.run_tests(&run).context("the sandbox")?;
    if args.json {
        let tests: Vec<serde_json::Value> = results
            .tests
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "passed": t.passed,
                    "reason": t.reason,
                    "exit_code": t.exit_code,
                    "duration_ms": t.duration_ms,
                    "output": t.output,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "app": app, "passed": results.passed, "tests": tests }));
    } else {
        for t in &results.tests {
            let verdict = if t.passed { "pass" } else { "FAIL" };
            println!(
                "{verdict}  {} ({} ms){}",
                t.name,
                t.duration_ms,
                t.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            );
            if !t.passed || t.output.starts_with("skipped") {
                for line in t.output.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev() {
                    println!("      {line}");
                }
            }
        }
        println!("{}", results.summary);
    }
    if !results.passed {
        bail!("the release fails its tests on {}", args.root.display());
    }
    Ok(())
}

/// One release a vendor published, as `vendor publish` records it beside the key.
#[derive(serde::Serialize, serde::Deserialize)]
struct Published {
    app: String,
    version: String,
    manifest_id: String,
    issued_at_ms: u64,
}

/// `vendor.key` → `vendor.key.published`: the releases published with that key.
fn ledger_path(key: &std::path::Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".published");
    key.with_file_name(name)
}

fn record_published(
    ledger: &std::path::Path,
    m: &mirage_protocol::manifest::UpgradeManifest,
    now: mirage_protocol::UnixMillis,
) -> Result<()> {
    use std::io::Write;
    let entry = Published {
        app: m.app.clone(),
        version: m.version.to_string(),
        manifest_id: m.id().to_hex(),
        issued_at_ms: now.0,
    };
    let mut line = serde_json::to_vec(&entry)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(ledger)?;
    f.write_all(&line)?;
    f.sync_all()?;
    Ok(())
}

/// The ledger's entries; lines that do not parse are skipped (a torn last line).
fn read_ledger(ledger: &std::path::Path) -> Vec<Published> {
    std::fs::read_to_string(ledger).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A cluster key given on the command line as 64 hex digits.
fn cluster_key_arg(flag: &str, value: &str) -> Result<ClusterKey> {
    Digest::from_hex(value)
        .map(ClusterKey)
        .map_err(|e| anyhow::anyhow!("{flag} {value}: not a 64-hex-digit cluster key ({e})"))
}
