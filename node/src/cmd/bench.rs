use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fingerprint a generated tree (about 1 GiB per 2000 files) cold and warm, beside b3sum.
    Fingerprint(FingerprintArgs),
    /// Seed one artifact from a vendor to N receiver nodes on loopback and time it.
    Swarm(SwarmArgs),
}

#[derive(clap::Args)]
pub struct SwarmArgs {
    #[arg(long, default_value_t = 16)]
    receivers: usize,
    /// The artifact to distribute [default: 256 MiB of random bytes, generated].
    #[arg(long)]
    artifact: Option<PathBuf>,
    /// Where the processes keep their data [default: a new temporary directory].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    chunk_kib: u32,
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
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Fingerprint(args) => fingerprint(args),
        BenchCommand::Swarm(args) => swarm(args),
    }
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
                "copies": r.copies,
            })
        );
    } else {
        println!("receivers {}", args.receivers);
        println!("bytes {}", r.bytes);
        println!("mirage_{}_s {:.2}", args.receivers, r.seconds);
        println!("mirage_{}_verified {verified}/{}", args.receivers, args.receivers);
        println!("slowest_node_s {slowest_node:.2}");
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
