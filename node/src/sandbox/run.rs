//! The two kinds of test, and summing their outcomes up for a report.

use super::exec::{Finished, Limits};
use super::replay::first_difference;
use super::{Sandbox, SandboxError, TestOutcome, TestResults, TestRun};
use mirage_protocol::manifest::CommandSpec;
use mirage_protocol::report::{excerpt_tail, MAX_EXCERPT_BYTES, MAX_SUMMARY_BYTES};
use mirage_protocol::Digest;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

impl Sandbox {
    /// A vendor's command run once against the new version; the raw output is the log.
    pub(super) fn command_test(
        &self,
        run: &TestRun,
        name: &str,
        command: &CommandSpec,
    ) -> Result<(TestOutcome, Vec<u8>), SandboxError> {
        let f = self.invoke(run, &run.new_version_dir, command, Stdio::null())?;
        let outcome = TestOutcome {
            name: name.to_string(),
            passed: f.succeeded(),
            exit_code: f.exit_code,
            timed_out: f.timed_out,
            output: String::from_utf8_lossy(&f.output).into_owned(),
            reason: f.failure_reason(&Limits::of(command)),
            duration_ms: f.duration.as_millis() as u64,
        };
        Ok((outcome, f.output))
    }

    /// Every recorded input through the old and then the new version; the test passes
    /// when every pair agrees. The log holds every raw output; the outcome's output
    /// holds one verdict per input with the first difference of each.
    pub(super) fn replay_test(
        &self,
        run: &TestRun,
        name: &str,
        inputs: &str,
        command: &CommandSpec,
        ignore_fields: &[String],
    ) -> Result<(TestOutcome, Vec<u8>), SandboxError> {
        let start = Instant::now();
        let mut outcome = TestOutcome {
            name: name.to_string(),
            passed: false,
            exit_code: None,
            timed_out: false,
            output: String::new(),
            reason: None,
            duration_ms: 0,
        };
        // A first install has no old behaviour to keep: nothing to compare, and no
        // reason to halt the cluster for it. Said in the output, so it is no silent pass.
        let Some(old_dir) = run.old_version_dir.as_deref() else {
            outcome.passed = true;
            outcome.output = "skipped: no version is installed here to compare the new one with".into();
            outcome.duration_ms = start.elapsed().as_millis() as u64;
            return Ok((outcome, Vec::new()));
        };
        let files = match replay_inputs(run, inputs) {
            Ok(found) => found,
            Err(reason) => {
                outcome.output = reason.clone();
                outcome.reason = Some(reason);
                return Ok((outcome, Vec::new()));
            }
        };
        let limits = Limits::of(command);
        let mut logs = Vec::new();
        let mut verdicts = String::new();
        for file in &files {
            let label = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let old = self.invoke(run, old_dir, command, stdin_from(file)?)?;
            let new = self.invoke(run, &run.new_version_dir, command, stdin_from(file)?)?;
            for (side, f) in [("old", &old), ("new", &new)] {
                logs.extend_from_slice(format!("== {label} ({side}) ==\n").as_bytes());
                logs.extend_from_slice(&f.output);
            }
            outcome.exit_code = new.exit_code;
            outcome.timed_out |= old.timed_out || new.timed_out;
            match compare_runs(&old, &new, &limits, ignore_fields) {
                None => verdicts.push_str(&format!("input {label}: same\n")),
                Some(why) => {
                    let first_line = why.lines().next().unwrap_or_default();
                    outcome.reason.get_or_insert_with(|| format!("input {label}: {first_line}"));
                    verdicts.push_str(&format!("input {label}: {why}\n"));
                }
            }
        }
        outcome.passed = outcome.reason.is_none();
        outcome.output = truncate_head(&verdicts, limits.max_output_bytes);
        outcome.duration_ms = start.elapsed().as_millis() as u64;
        Ok((outcome, logs))
    }
}

/// The recorded inputs, sorted, or why the replay cannot run (which fails the test).
fn replay_inputs(run: &TestRun, inputs: &str) -> Result<Vec<PathBuf>, String> {
    let bundle = run.bundle_dir.as_ref().ok_or("replay needs a test bundle holding the recorded inputs")?;
    let rel = Path::new(inputs);
    if inputs.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("inputs `{inputs}` must be a relative path inside the test bundle"));
    }
    let dir = bundle.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("inputs `{inputs}`: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("inputs `{inputs}`: {e}"))?;
        // Regular files only: a symlink in the bundle must not feed a host file in.
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    if files.is_empty() {
        return Err(format!("no recorded inputs in `{inputs}`"));
    }
    files.sort();
    Ok(files)
}

fn stdin_from(file: &Path) -> Result<Stdio, SandboxError> {
    File::open(file).map(Stdio::from).map_err(|source| SandboxError::Io { path: file.to_path_buf(), source })
}

/// `None` if the new version behaved like the old on this input.
fn compare_runs(old: &Finished, new: &Finished, limits: &Limits, ignore_fields: &[String]) -> Option<String> {
    // A run cut short by a limit has no complete output to compare.
    for (side, f) in [("old", old), ("new", new)] {
        if f.timed_out || f.output_overflow || f.stopped.is_some() {
            return Some(format!("{side} version: {}", f.failure_reason(limits).unwrap_or_default()));
        }
    }
    if old.exit_code != new.exit_code {
        return Some(format!("exit status differs: old {:?}, new {:?}", old.exit_code, new.exit_code));
    }
    let (a, b) = (String::from_utf8_lossy(&old.output), String::from_utf8_lossy(&new.output));
    first_difference(&a, &b, ignore_fields).map(|d| format!("output differs\n{}", d.describe()))
}

/// Feeds one test's log into the run's digest, length-prefixed so that no two
/// different (name, log) sequences hash alike.
pub(super) fn hash_logs(hasher: &mut blake3::Hasher, name: &str, logs: &[u8]) {
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(&(logs.len() as u64).to_le_bytes());
    hasher.update(logs);
}

/// Cuts `text` to at most `max` bytes on a character boundary, keeping the head.
fn truncate_head(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

pub(super) fn sum_up(tests: Vec<TestOutcome>, logs_digest: Digest) -> TestResults {
    let failed: Vec<&TestOutcome> = tests.iter().filter(|t| !t.passed).collect();
    let mut summary = format!("{}/{} tests passed", tests.len() - failed.len(), tests.len());
    let mut excerpt = String::new();
    for (i, t) in failed.iter().enumerate() {
        let reason = t.reason.as_deref().unwrap_or("failed");
        summary.push_str(&format!("{} {} ({reason})", if i == 0 { "; failed:" } else { "," }, t.name));
        excerpt.push_str(&format!("== {}: {reason} ==\n{}\n", t.name, t.output));
    }
    TestResults {
        passed: failed.is_empty(),
        logs_digest,
        summary: truncate_head(&summary, MAX_SUMMARY_BYTES),
        failure_excerpt: excerpt_tail(&excerpt, MAX_EXCERPT_BYTES),
        tests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, passed: bool, reason: Option<&str>) -> TestOutcome {
        TestOutcome {
            name: name.into(),
            passed,
            exit_code: Some(if passed { 0 } else { 1 }),
            timed_out: false,
            output: format!("{name} output"),
            reason: reason.map(String::from),
            duration_ms: 1,
        }
    }

    #[test]
    fn summary_names_failures_and_stays_bounded() {
        let r = sum_up(vec![outcome("a", true, None), outcome("b", false, Some("exit status 1"))], Digest([0; 32]));
        assert!(!r.passed);
        assert_eq!(r.summary, "1/2 tests passed; failed: b (exit status 1)");
        assert_eq!(r.failure_excerpt, "== b: exit status 1 ==\nb output\n");

        let many: Vec<_> = (0..200).map(|i| outcome(&format!("test-{i}"), false, Some("timed out"))).collect();
        let r = sum_up(many, Digest([0; 32]));
        assert!(r.summary.len() <= MAX_SUMMARY_BYTES && r.summary.ends_with("..."));
        assert!(r.summary.starts_with("0/200 tests passed; failed: test-0 (timed out), test-1"));
    }

    fn finished(code: Option<i32>, timed_out: bool, output: &str) -> Finished {
        Finished {
            exit_code: code,
            timed_out,
            output_overflow: false,
            stopped: None,
            output: output.as_bytes().to_vec(),
            duration: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn replay_runs_compare_limits_then_exit_status_then_output() {
        let limits = Limits { timeout: std::time::Duration::from_secs(5), max_output_bytes: 100 };
        let ignore = vec!["elapsed".to_string()];
        let ok = finished(Some(0), false, "a\nelapsed=1\n");
        assert_eq!(compare_runs(&ok, &finished(Some(0), false, "a\nelapsed=2\n"), &limits, &ignore), None);
        let slow = compare_runs(&ok, &finished(None, true, "a\n"), &limits, &ignore).unwrap();
        assert_eq!(slow, "new version: timed out after 5 s");
        let code = compare_runs(&ok, &finished(Some(2), false, "a\n"), &limits, &ignore).unwrap();
        assert_eq!(code, "exit status differs: old Some(0), new Some(2)");
        let out = compare_runs(&ok, &finished(Some(0), false, "b\n"), &limits, &ignore).unwrap();
        assert!(out.starts_with("output differs\n  old line 1: a\n  new line 1: b"), "{out}");
        // Both versions failing the same way is the same behaviour.
        assert_eq!(compare_runs(&code_only(3), &code_only(3), &limits, &ignore), None);
    }

    fn code_only(code: i32) -> Finished {
        finished(Some(code), false, "error: no such table\n")
    }

    #[test]
    fn truncate_head_respects_char_boundaries() {
        assert_eq!(truncate_head("short", 10), "short");
        let t = truncate_head("ééééé", 6);
        assert!(t.len() <= 6 && t.ends_with("..."), "{t}");
    }
}
