//! What a vendor publishes: the manifest describing an artifact (and the bundle of
//! tests that comes with it), built from files on the vendor's machine.
//!
//! A tests directory holds `tests.toml` and whatever the tests need:
//!
//! ```toml
//! [[test]]                     # the vendor's own test: exit status 0 passes
//! name = "smoke"
//! run = ["sh", "smoke.sh"]
//! timeout_secs = 60
//!
//! [[replay]]                   # MonDe-style: old vs new on recorded inputs
//! name = "queries"
//! inputs = "inputs"
//! run = ["sh", "replay.sh"]
//! ignore_fields = ["elapsed"]
//!
//! [health_check]               # run after applying; failure rolls back
//! run = ["sh", "health.sh"]
//! ```

use mirage_protocol::manifest::{
    chunk_digest, content_hash_of, valid_chunk_size, ArtifactInfo, CommandSpec, StagingPolicy, TestSpec,
    UpgradeManifest, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
use mirage_protocol::UnixMillis;
use rayon::prelude::*;
use serde::Deserialize;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

pub const TESTS_FILE: &str = "tests.toml";
const DEFAULT_TIMEOUT_SECS: u32 = 300;
const DEFAULT_MAX_OUTPUT: u32 = 1 << 20;

#[derive(Debug, Error)]
pub enum ReleaseError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Tests { path: PathBuf, reason: String },
    #[error("chunk size {0} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io { path: path.to_path_buf(), source }
}

/// Hashes a file into an artifact description: every chunk in parallel, each at its
/// place in the BLAKE3 tree, and the whole-content hash from those (one pass).
pub fn describe_file(path: &Path, chunk_size: u32) -> Result<ArtifactInfo, ReleaseError> {
    if !valid_chunk_size(chunk_size) {
        return Err(ReleaseError::ChunkSize(chunk_size));
    }
    let file = File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let count = size.div_ceil(chunk_size as u64) as usize;
    let chunk_hashes = (0..count)
        .into_par_iter()
        .map(|i| {
            let start = i as u64 * chunk_size as u64;
            let len = (size - start).min(chunk_size as u64) as usize;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, start).map(|_| chunk_digest(count, chunk_size, i, &buf))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(path))?;
    Ok(ArtifactInfo { size, chunk_size, content_hash: content_hash_of(&chunk_hashes), chunk_hashes })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsFile {
    #[serde(default)]
    test: Vec<CommandEntry>,
    #[serde(default)]
    replay: Vec<ReplayEntry>,
    health_check: Option<CommandEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandEntry {
    #[serde(default)]
    name: String,
    run: Vec<String>,
    timeout_secs: Option<u32>,
    max_output_bytes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayEntry {
    name: String,
    inputs: String,
    run: Vec<String>,
    #[serde(default)]
    ignore_fields: Vec<String>,
    timeout_secs: Option<u32>,
    max_output_bytes: Option<u32>,
}

fn command(run: Vec<String>, timeout: Option<u32>, max_output: Option<u32>) -> CommandSpec {
    CommandSpec {
        argv: run,
        timeout_secs: timeout.unwrap_or(DEFAULT_TIMEOUT_SECS),
        max_output_bytes: max_output.unwrap_or(DEFAULT_MAX_OUTPUT),
    }
}

/// The tests and health check a tests directory declares.
pub fn read_tests(dir: &Path) -> Result<(Vec<TestSpec>, Option<CommandSpec>), ReleaseError> {
    let path = dir.join(TESTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let file: TestsFile =
        toml::from_str(&text).map_err(|e| ReleaseError::Tests { path: path.clone(), reason: e.to_string() })?;
    let fail = |reason: String| ReleaseError::Tests { path: path.clone(), reason };
    if file.health_check.as_ref().is_some_and(|h| !h.name.is_empty()) {
        return Err(fail("[health_check] takes no name (it is reported as `health-check`)".into()));
    }
    let commands = file.test.iter().map(|t| (t.name.as_str(), &t.run));
    let replays = file.replay.iter().map(|r| (r.name.as_str(), &r.run));
    let health = file.health_check.iter().map(|h| ("health_check", &h.run));
    for (name, run) in commands.chain(replays).chain(health) {
        check_command(dir, name, run).map_err(fail)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in file.test.iter().map(|t| &t.name).chain(file.replay.iter().map(|r| &r.name)) {
        if !name.is_empty() && !seen.insert(name.as_str()) {
            return Err(fail(format!(
                "two tests are named `{name}`; problem reports name failing tests, so names must differ"
            )));
        }
    }
    for r in &file.replay {
        let rel = Path::new(&r.inputs);
        if r.inputs.is_empty() || !rel.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(fail(format!(
                "replay `{}`: inputs `{}` must be a relative path inside the tests directory",
                r.name, r.inputs
            )));
        }
    }
    let mut tests = Vec::new();
    for t in file.test {
        tests.push(TestSpec::Command { name: t.name, command: command(t.run, t.timeout_secs, t.max_output_bytes) });
    }
    for r in file.replay {
        if !dir.join(&r.inputs).is_dir() {
            return Err(ReleaseError::Tests {
                path: path.clone(),
                reason: format!("replay `{}`: inputs `{}` is not a directory", r.name, r.inputs),
            });
        }
        tests.push(TestSpec::Replay {
            name: r.name,
            inputs: r.inputs,
            command: command(r.run, r.timeout_secs, r.max_output_bytes),
            ignore_fields: r.ignore_fields,
        });
    }
    if tests.iter().any(|t| t.name().is_empty()) {
        return Err(ReleaseError::Tests { path, reason: "every test needs a name".into() });
    }
    let health = file.health_check.map(|h| command(h.run, h.timeout_secs, h.max_output_bytes));
    Ok((tests, health))
}

/// A command's `run` must name something, and a script it runs from the tests
/// directory (`./check.sh`, or `sh check.sh`) must be there: a typo would otherwise
/// fail on every representative and halt every cluster.
fn check_command(dir: &Path, name: &str, run: &[String]) -> Result<(), String> {
    let Some(program) = run.first() else {
        return Err(format!("`{name}`: `run` is empty"));
    };
    const INTERPRETERS: [&str; 6] = ["sh", "bash", "dash", "python3", "perl", "/bin/sh"];
    let script = if INTERPRETERS.contains(&program.as_str()) {
        run.get(1).filter(|a| !a.starts_with('-'))
    } else {
        Some(program).filter(|p| p.contains('/'))
    };
    let Some(script) = script.filter(|s| !s.starts_with('/') && !s.contains('$')) else {
        return Ok(());
    };
    if !dir.join(script).is_file() {
        return Err(format!("`{name}` runs `{script}`, which is not a file in {}", dir.display()));
    }
    Ok(())
}

/// Packs a tests directory as a tar with sorted entries and no owners or times, so the
/// same directory always gives the same bundle (and the same manifest).
pub fn pack_tests(dir: &Path, out: &Path) -> Result<(), ReleaseError> {
    let file = File::create(out).map_err(io(out))?;
    let mut builder = tar::Builder::new(file);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let ft = e.file_type().map_err(io(&e.path()))?;
            if ft.is_dir() {
                stack.push(e.path());
            }
            entries.push(e.path());
        }
    }
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(dir).expect("below dir");
        builder.append_path_with_name(&path, rel).map_err(io(&path))?;
    }
    builder.into_inner().and_then(|f| f.sync_all()).map_err(io(out))
}

/// Everything a release needs besides the vendor's key.
pub struct ReleaseSpec {
    pub app: String,
    pub version: semver::Version,
    pub artifact: PathBuf,
    pub tests_dir: Option<PathBuf>,
    pub policy: StagingPolicy,
    pub valid_for: Duration,
    pub chunk_size: u32,
    pub notes: String,
}

impl ReleaseSpec {
    pub fn new(app: &str, version: semver::Version, artifact: PathBuf) -> Self {
        ReleaseSpec {
            app: app.to_string(),
            version,
            artifact,
            tests_dir: None,
            policy: StagingPolicy::default(),
            valid_for: Duration::from_secs(30 * 24 * 3600),
            chunk_size: DEFAULT_CHUNK_SIZE,
            notes: String::new(),
        }
    }
}

/// A manifest and the files it describes (the artifact, and the packed tests bundle
/// written into `work_dir` if there are tests).
pub struct Release {
    pub manifest: UpgradeManifest,
    pub artifact_path: PathBuf,
    pub bundle_path: Option<PathBuf>,
}

pub fn build(spec: &ReleaseSpec, work_dir: &Path, now: UnixMillis) -> Result<Release, ReleaseError> {
    let artifact = describe_file(&spec.artifact, spec.chunk_size)?;
    let (tests, health_check, bundle_path, test_bundle) = match &spec.tests_dir {
        Some(dir) => {
            let (tests, health) = read_tests(dir)?;
            let bundle = work_dir.join(format!("{}-{}-tests.tar", spec.app, spec.version));
            pack_tests(dir, &bundle)?;
            let info = describe_file(&bundle, MIN_CHUNK_SIZE.max(spec.chunk_size.min(1 << 20)))?;
            (tests, health, Some(bundle), Some(info))
        }
        None => (Vec::new(), None, None, None),
    };
    let manifest = UpgradeManifest {
        app: spec.app.clone(),
        version: spec.version.clone(),
        artifact,
        test_bundle,
        tests,
        health_check,
        policy: spec.policy.clone(),
        expires_at: now.saturating_add(spec.valid_for),
        notes: spec.notes.clone(),
    };
    use mirage_protocol::SignedPayload;
    manifest.validate().map_err(ReleaseError::Invalid)?;
    Ok(Release { manifest, artifact_path: spec.artifact.clone(), bundle_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_file_like_the_protocol_does() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let p = dir.path().join("a.bin");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(describe_file(&p, MIN_CHUNK_SIZE).unwrap(), ArtifactInfo::describe(&bytes, MIN_CHUNK_SIZE));
        assert!(matches!(describe_file(&p, 10), Err(ReleaseError::ChunkSize(10))));
        let odd = MIN_CHUNK_SIZE + 4096;
        assert!(matches!(describe_file(&p, odd), Err(ReleaseError::ChunkSize(o)) if o == odd));
    }

    #[test]
    fn builds_a_release_with_a_deterministic_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let tests = dir.path().join("tests");
        std::fs::create_dir_all(tests.join("inputs")).unwrap();
        std::fs::write(tests.join("inputs/q1.sql"), "select 1;").unwrap();
        std::fs::write(tests.join("smoke.sh"), "exit 0").unwrap();
        std::fs::write(tests.join("replay.sh"), "cat").unwrap();
        std::fs::write(
            tests.join(TESTS_FILE),
            "[[test]]\nname = \"smoke\"\nrun = [\"sh\", \"smoke.sh\"]\n[[replay]]\nname = \"q\"\ninputs = \"inputs\"\nrun = [\"sh\", \"replay.sh\"]\n[health_check]\nrun = [\"true\"]\n",
        )
        .unwrap();
        let artifact = dir.path().join("mysql.tar");
        std::fs::write(&artifact, vec![7u8; 100_000]).unwrap();
        let mut spec = ReleaseSpec::new("mysql", "8.0.37".parse().unwrap(), artifact);
        spec.tests_dir = Some(tests.clone());
        let a = build(&spec, dir.path(), UnixMillis(1000)).unwrap();
        assert_eq!(a.manifest.tests.len(), 2);
        assert!(a.manifest.health_check.is_some());
        let b = build(&spec, dir.path(), UnixMillis(1000)).unwrap();
        assert_eq!(a.manifest.test_bundle, b.manifest.test_bundle, "same directory, same bundle");
        assert_eq!(a.manifest.id(), b.manifest.id());

        std::fs::write(tests.join(TESTS_FILE), "[[test]]\nrun = \"not a list\"\n").unwrap();
        let err = build(&spec, dir.path(), UnixMillis(1000)).err().unwrap().to_string();
        assert!(err.contains("tests.toml"), "{err}");
    }

    #[test]
    fn mistakes_in_a_tests_directory_are_named_before_anything_is_published() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("inputs")).unwrap();
        std::fs::write(dir.path().join("ok.sh"), "exit 0").unwrap();
        let err = |toml: &str| {
            std::fs::write(dir.path().join(TESTS_FILE), toml).unwrap();
            read_tests(dir.path()).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(err("[[test]]\nname = \"a\"\nrun = [\"sh\", \"ok.sh\"]\n"), "");
        assert!(
            err("[[test]]\nname = \"a\"\nrun = [\"sh\", \"smoke.sh\"]\n").contains("`smoke.sh`, which is not a file")
        );
        assert!(err("[[test]]\nname = \"a\"\nrun = [\"./nope\"]\n").contains("`./nope`"));
        assert!(err("[[test]]\nname = \"a\"\nrun = []\n").contains("`run` is empty"));
        let dup = "[[test]]\nname = \"a\"\nrun = [\"true\"]\n[[test]]\nname = \"a\"\nrun = [\"true\"]\n";
        assert!(err(dup).contains("two tests are named `a`"));
        let escape = "[[replay]]\nname = \"r\"\ninputs = \"../inputs\"\nrun = [\"cat\"]\n";
        assert!(err(escape).contains("relative path inside the tests directory"));
        assert!(err("[health_check]\nname = \"h\"\nrun = [\"true\"]\n").contains("takes no name"));
        assert!(err("[[tset]]\nname = \"a\"\n").contains("tset"), "unknown tables are named");
    }
}
