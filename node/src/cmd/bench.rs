use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fingerprint a generated tree (about 1 GiB per 2000 files) cold and warm, beside b3sum.
    Fingerprint(FingerprintArgs),
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
    }
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
