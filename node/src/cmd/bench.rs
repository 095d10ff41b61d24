use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fingerprint a generated tree (about 1 GiB per 2000 files) cold and warm, beside b3sum.
    Fingerprint(FingerprintArgs),
    /// Seed one artifact from a vendor to N receiver nodes on loopback and time it.
    Swarm(SwarmArgs),
    /// The transport floor: the same bytes between the same number of processes through
    /// libp2p alone (TCP, noise, yamux, the content protocol), no hashing, disk or DHT.
    Transport(TransportArgs),
    /// One peer of `bench transport` (started by it; talks to it by lines on stdio).
    #[command(hide = true)]
    TransportPeer(TransportPeerArgs),
    /// Membership's cost per incoming announcement with N peers known: what the node
    /// does with each, and the full-membership scan it used to do beside it.
    Membership(MembershipArgs),
    /// Per-node membership traffic and state against fleet size, today's all-to-all
    /// announcements beside heartbeats and summaries (the simulator's overlay model);
    /// `--svg` draws the figure.
    MembershipScale(super::scale::ScaleArgs),
    /// Calibrates the simulator's cost model: hundreds of real libp2p overlay nodes in
    /// one process on 127.0.0.1, every TCP byte counted, beside the model's figures.
    OverlayCost(super::overlay_cost::OverlayCostArgs),
}

#[derive(clap::Args)]
pub struct MembershipArgs {
    /// Peers whose announcements the node holds (comma-separated list of sizes).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
    peers: Vec<usize>,
    /// Clusters those peers fall into.
    #[arg(long, default_value_t = 200)]
    clusters: usize,
    /// Announcements timed per size.
    #[arg(long, default_value_t = 2_000)]
    rounds: usize,
}

#[derive(clap::Args)]
pub struct TransportArgs {
    /// Receiving processes.
    #[arg(long, default_value_t = 16)]
    receivers: usize,
    /// Bytes each receiver pulls, in MiB.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Chunk size in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Move the chunks over content lanes (the path between nodes that have them)
    /// instead of libp2p.
    #[arg(long)]
    lanes: bool,
}

#[derive(clap::Args)]
pub struct TransportPeerArgs {
    /// Chunks to serve or receive.
    #[arg(long)]
    chunks: usize,
    /// Chunk size in KiB.
    #[arg(long)]
    chunk_kib: usize,
    /// Receive (instead of serve).
    #[arg(long)]
    receive: bool,
    /// Over content lanes instead of libp2p.
    #[arg(long)]
    lanes: bool,
}

#[derive(clap::Args)]
pub struct SwarmArgs {
    /// Receiving nodes.
    #[arg(long, default_value_t = 16)]
    receivers: usize,
    /// The artifact to distribute [default: 256 MiB of random bytes, generated].
    #[arg(long)]
    artifact: Option<PathBuf>,
    /// Where the processes keep their data [default: a new temporary directory].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Chunk size in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print one JSON object (the last line) instead of key-value lines.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct FingerprintArgs {
    /// Number of files (2000 make about 1 GiB, the size mix of shared/bench/anchors.sh).
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Directory to generate the tree in [default: a new temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the generated tree's contents.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Fingerprint(args) => fingerprint(args),
        BenchCommand::Membership(args) => membership(args),
        BenchCommand::MembershipScale(args) => super::scale::run(args),
        BenchCommand::OverlayCost(args) => super::overlay_cost::run(args),
        BenchCommand::Swarm(args) => swarm(args),
        BenchCommand::Transport(args) => transport(args),
        BenchCommand::TransportPeer(args) => {
            let options = mirage_node::transport_bench::PeerOptions {
                chunks: args.chunks,
                chunk_size: args.chunk_kib * 1024,
                receive: args.receive,
                lanes: args.lanes,
            };
            super::async_runtime()?.block_on(mirage_node::transport_bench::run_peer(options))?;
            Ok(())
        }
    }
}

/// A `bench transport` peer process and what it said.
struct TransportPeer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
}

fn transport(args: TransportArgs) -> Result<()> {
    use anyhow::{bail, Context};
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let chunks = (args.mib * 1024).div_ceil(args.chunk_kib);
    let total = args.receivers + 1;
    let exe = std::env::current_exe().context("locating the mirage binary")?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<(usize, String)>();
    let mut peers = Vec::new();
    for i in 0..total {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "transport-peer", "--chunks", &chunks.to_string()])
            .args(["--chunk-kib", &args.chunk_kib.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if i > 0 {
            cmd.arg("--receive");
        }
        if args.lanes {
            cmd.arg("--lanes");
        }
        let mut child = cmd.spawn().context("starting a transport peer")?;
        let stdout = child.stdout.take().expect("piped");
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(std::io::Result::ok) {
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().expect("piped");
        peers.push(TransportPeer { child, stdin });
    }
    // Dropping the peers closes their input, which ends them; kill what lingers.
    struct Fleet(Vec<TransportPeer>);
    impl Drop for Fleet {
        fn drop(&mut self) {
            for mut p in self.0.drain(..) {
                drop(p.stdin);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(p.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
    let mut fleet = Fleet(peers);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let next = |what: &str| -> Result<(usize, String)> {
        let left = deadline.saturating_duration_since(Instant::now());
        lines.recv_timeout(left).with_context(|| format!("waiting for the peers to {what}"))
    };
    let mut addrs: Vec<Option<String>> = vec![None; total];
    while addrs.iter().any(Option::is_none) {
        let (i, line) = next("listen")?;
        if let Some(a) = line.strip_prefix("listening ") {
            addrs[i].get_or_insert_with(|| a.to_string());
        }
    }
    // Each pair connects once: the later peer dials the earlier ones.
    for i in 1..total {
        for addr in addrs[..i].iter().flatten() {
            writeln!(fleet.0[i].stdin, "dial {addr}")?;
        }
    }
    let mut connected = vec![0usize; total];
    while connected.iter().any(|c| *c < total - 1) {
        let (i, line) = next("connect")?;
        if let Some(n) = line.strip_prefix("connected ").and_then(|n| n.parse().ok()) {
            connected[i] = n;
        }
    }
    let start = Instant::now();
    for p in &mut fleet.0[1..] {
        writeln!(p.stdin, "go")?;
    }
    let mut done = 0;
    while done < args.receivers {
        let (_, line) = next("pull every chunk")?;
        if line.starts_with("done ") {
            done += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    for p in &mut fleet.0 {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!("a transport peer exited early: {status}");
        }
    }
    drop(fleet);
    let gib = (args.receivers * chunks * args.chunk_kib) as f64 / (1024.0 * 1024.0);
    println!("receivers {}", args.receivers);
    println!("path {}", if args.lanes { "lanes" } else { "libp2p" });
    println!("bytes_per_receiver_mib {}", chunks * args.chunk_kib / 1024);
    println!("transport_{}_s {seconds:.2}", args.receivers);
    println!("aggregate_gib_per_s {:.2}", gib / seconds);
    Ok(())
}

fn swarm(args: SwarmArgs) -> Result<()> {
    use anyhow::Context;
    let temp = tempfile::Builder::new().prefix("mirage-swarm-").tempdir()?;
    let work_dir = args.work_dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&work_dir)?;
    let artifact = match args.artifact {
        Some(a) => a,
        None => {
            let path = work_dir.join("artifact.bin");
            let mut rng = rand::rngs::OsRng;
            let mut data = vec![0u8; 256 << 20];
            rand::RngCore::fill_bytes(&mut rng, &mut data);
            std::fs::write(&path, &data)?;
            path
        }
    };
    let options = mirage_testnet::swarm::SwarmOptions {
        mirage: std::env::current_exe().context("locating the mirage binary")?,
        work_dir,
        artifact: artifact.clone(),
        receivers: args.receivers,
        chunk_kib: args.chunk_kib,
        timeout: std::time::Duration::from_secs(args.timeout_secs),
    };
    let r = mirage_testnet::swarm::run(&options)?;
    // Check every copy here too: the figure counts only verified copies.
    let mut reference = blake3::Hasher::new();
    reference.update_mmap_rayon(&artifact)?;
    let reference = reference.finalize();
    let mut verified = 0;
    for copy in &r.copies {
        let mut h = blake3::Hasher::new();
        if h.update_mmap_rayon(copy).is_ok() && h.finalize() == reference {
            verified += 1;
        }
    }
    let slowest_node = r.node_seconds.iter().copied().fold(0.0, f64::max);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "receivers": args.receivers,
                "bytes": r.bytes,
                "seconds": r.seconds,
                "verified": verified,
                "chunk_size": args.chunk_kib as u64 * 1024,
                "slowest_node_seconds": slowest_node,
                "served_from_memory": r.served_from_memory,
                "served_from_disk": r.served_from_disk,
                "received_over_lanes": r.received_over_lanes,
                "received_over_libp2p": r.received_over_libp2p,
                "copies": r.copies,
            })
        );
    } else {
        println!("receivers {}", args.receivers);
        println!("bytes {}", r.bytes);
        println!("mirage_{}_s {:.2}", args.receivers, r.seconds);
        println!("mirage_{}_verified {verified}/{}", args.receivers, args.receivers);
        println!("slowest_node_s {slowest_node:.2}");
        println!("served_from_memory {}", r.served_from_memory);
        println!("served_from_disk {}", r.served_from_disk);
        println!("received_over_lanes {}", r.received_over_lanes);
        println!("received_over_libp2p {}", r.received_over_libp2p);
    }
    Ok(())
}

fn fingerprint(args: FingerprintArgs) -> Result<()> {
    // A temporary directory is removed on drop, so an interrupted benchmark leaves no
    // gigabyte behind.
    let temp = tempfile::Builder::new().prefix("mirage-bench-").tempdir()?;
    let dir = args.dir.unwrap_or_else(|| temp.path().to_path_buf());
    let r = mirage_node::bench::fingerprint_bench(&dir, args.files, args.seed)?;
    let mib = r.bytes as f64 / (1 << 20) as f64;
    println!("threads {}", rayon::current_num_threads());
    println!("tree_files {}", r.files);
    println!("tree_mib {mib:.0}");
    match r.b3sum {
        Some(b) => println!("b3sum_s {:.3}", b.as_secs_f64()),
        None => println!("b3sum_s not-found (install with: cargo install b3sum)"),
    }
    println!(
        "mirage_cold_s {:.3} (hashed {} files, {:.0} MiB/s)",
        r.cold.as_secs_f64(),
        r.cold_stats.files_hashed,
        mib / r.cold.as_secs_f64()
    );
    println!(
        "mirage_warm_s {:.3} (cache hits {}, hashed {})",
        r.warm.as_secs_f64(),
        r.warm_stats.cache_hits,
        r.warm_stats.files_hashed
    );
    if let Some(b) = r.b3sum {
        println!("cold_vs_b3sum {:.2}x (target <= 1.30x)", r.cold.as_secs_f64() / b.as_secs_f64());
    }
    println!("warm_vs_cold {:.1}% (target < 5%)", 100.0 * r.warm.as_secs_f64() / r.cold.as_secs_f64());
    Ok(())
}

/// Times what a node does with each incoming announcement (`on_announcement`, then
/// `is_member`) with N peers known, beside `members` (one cluster) and `clusters` (every
/// cluster: what the staging core is still fed after each membership change).
fn membership(args: MembershipArgs) -> Result<()> {
    use mirage_protocol::fingerprint::{Fingerprint, Item, ItemValue, ResourceClass};
    use mirage_protocol::membership::{Membership, MembershipConfig};
    use mirage_protocol::{Digest, Envelope, Keypair, UnixMillis};
    use std::time::Instant;
    let fp = |env: usize| {
        let item = Item {
            class: ResourceClass::Config,
            path: "/etc/app.conf".into(),
            key: "env".into(),
            value: ItemValue::Text(env.to_string()),
        };
        Fingerprint::new("app".into(), Digest([7; 32]), vec![item])
    };
    let key = |i: usize| {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        Keypair::from_secret_bytes(&seed)
    };
    let clusters: Vec<Fingerprint> = (0..args.clusters.max(1)).map(fp).collect();
    println!("{:<9} {:>26} {:>14} {:>14}", "peers", "announcement + is_member", "members", "clusters");
    for &n in &args.peers {
        let n = n.max(1);
        let start = mirage_bootstrap::overlay::now();
        let mut m = Membership::new(key(usize::MAX - 1), MembershipConfig::default());
        m.set_local(fp(0), start);
        let keys: Vec<Keypair> = (0..n).map(key).collect();
        for (i, k) in keys.iter().enumerate() {
            let bytes = Envelope::sign(k, &clusters[i % clusters.len()], start)?.to_bytes()?;
            m.on_announcement(&bytes, "app", None, start);
        }
        // Fresh announcements from known peers, as the steady state brings them.
        let later = UnixMillis(start.0 + 1_000);
        let rounds = args.rounds.clamp(1, n);
        let batch = (0..rounds)
            .map(|r| {
                let i = r * (n / rounds);
                let signed = Envelope::sign(&keys[i], &clusters[i % clusters.len()], later)?;
                Ok((signed.to_bytes()?, keys[i].public()))
            })
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let mut members = 0usize;
        for (bytes, signer) in &batch {
            m.on_announcement(bytes, "app", None, later);
            members += usize::from(m.is_member("app", signer));
        }
        let per_announcement = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        let timed = |f: &dyn Fn() -> usize| {
            let started = Instant::now();
            let mut total = 0;
            for _ in 0..20 {
                total += f();
            }
            std::hint::black_box(total);
            started.elapsed().as_secs_f64() * 1e6 / 20.0
        };
        let one = timed(&|| m.members("app").len());
        let all = timed(&|| m.clusters("app").len());
        std::hint::black_box(members);
        println!("{n:<9} {per_announcement:>23.2} µs {one:>11.1} µs {all:>11.1} µs");
    }
    Ok(())
}
