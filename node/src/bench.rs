//! Benchmarks that print figures: fingerprinting against `b3sum` on the same tree.

use crate::digest_cache::DigestCache;
use crate::scan::{scan, ScanStats};
use mirage_protocol::fingerprint::Profile;
use rand::{rngs::StdRng, RngCore, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A profile that digests every file under the root: the whole tree is "the app".
const TREE_PROFILE: &str =
    "app = \"bench\"\n[[resource]]\nclass = \"data\"\ninclude = [\"/**\"]\ncontribute = \"digest\"\n";

/// Writes a tree with the size mix of `shared/bench/anchors.sh`: of every 2000 files,
/// 1500 of 4-64 KiB, 450 of 256 KiB-2 MiB, 50 of 4-15 MiB (about 1 GiB), in 20
/// directories. Returns the files and their total size.
pub fn generate_tree(dir: &Path, files: usize, seed: u64) -> std::io::Result<(Vec<PathBuf>, u64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut paths = Vec::with_capacity(files);
    let mut total = 0u64;
    let mut buf = Vec::new();
    for i in 0..files {
        let slot = i % 2000;
        let kib = match slot {
            0..1500 => 4 + rng.next_u64() % 61,
            1500..1950 => 256 + rng.next_u64() % 1793,
            _ => 4096 + rng.next_u64() % 11264,
        };
        buf.resize((kib * 1024) as usize, 0);
        rng.fill_bytes(&mut buf);
        let sub = dir.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&sub)?;
        let path = sub.join(format!("f{i}.bin"));
        std::fs::File::create(&path)?.write_all(&buf)?;
        total += buf.len() as u64;
        paths.push(path);
    }
    // Files newer than the cache's racy window are (rightly) not cached; a real
    // machine's files are old, so age these.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for p in &paths {
        std::fs::File::options().write(true).open(p)?.set_modified(old)?;
    }
    Ok((paths, total))
}

pub fn find_b3sum() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("b3sum")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/b3sum"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Times `b3sum` over `files` (all of them in one invocation, as `xargs` would).
pub fn time_b3sum(b3sum: &Path, files: &[PathBuf]) -> std::io::Result<Duration> {
    let start = Instant::now();
    let status = Command::new(b3sum).arg("--no-names").args(files).stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("b3sum exited with {status}")));
    }
    Ok(start.elapsed())
}

pub struct FingerprintBench {
    pub files: usize,
    pub bytes: u64,
    pub b3sum: Option<Duration>,
    pub cold: Duration,
    pub cold_stats: ScanStats,
    pub warm: Duration,
    pub warm_stats: ScanStats,
}

/// Generates a tree in `dir`, then times b3sum (best of two), a cold fingerprint (empty
/// cache) and a warm one (same cache). Everything runs from the page cache alike.
pub fn fingerprint_bench(dir: &Path, files: usize, seed: u64) -> anyhow::Result<FingerprintBench> {
    let tree = dir.join("tree");
    let (paths, bytes) = generate_tree(&tree, files, seed)?;
    let b3sum = match find_b3sum() {
        Some(b) => {
            let first = time_b3sum(&b, &paths)?;
            Some(first.min(time_b3sum(&b, &paths)?))
        }
        None => None,
    };
    let profile = Profile::parse(TREE_PROFILE)?;
    let cache_path = dir.join("digests.redb");
    let _ = std::fs::remove_file(&cache_path);
    let cache = DigestCache::open(&cache_path)?;
    let start = Instant::now();
    let cold_scan = scan(&profile, &tree, Some(&cache))?;
    let cold = start.elapsed();
    let start = Instant::now();
    let warm_scan = scan(&profile, &tree, Some(&cache))?;
    let warm = start.elapsed();
    anyhow::ensure!(cold_scan.fingerprint == warm_scan.fingerprint, "warm scan disagrees with cold scan");
    Ok(FingerprintBench {
        files: paths.len(),
        bytes,
        b3sum,
        cold,
        cold_stats: cold_scan.stats,
        warm,
        warm_stats: warm_scan.stats,
    })
}
