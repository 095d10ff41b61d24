//! `docs/tutorial.md` runs as written: its ```sh blocks, in order, in one bash session,
//! with the `mirage` under test first on PATH. A tutorial that drifts from the code
//! fails here.

use mirage_tests::{mirage_bin, workspace};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The ```sh blocks of a Markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block");
    blocks
}

#[test]
fn the_tutorial_runs_as_written() {
    let text = std::fs::read_to_string(workspace().join("docs/tutorial.md")).unwrap();
    let blocks = sh_blocks(&text);
    assert!(blocks.len() >= 10, "found {} blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = mirage_bin().parent().unwrap().to_path_buf();
    // Whatever happens, the background processes the tutorial starts end with it.
    let mut script = String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '--- tutorial block {}' >&2\n{b}", i + 1));
    }
    // As /tmp/mirage-tutorial would be: searchable by the user the nodes' sandboxes run
    // tests as (a temporary directory is 0700).
    std::fs::set_permissions(dir.path(), <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755))
        .unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", format!("{}:{path}", bin_dir.display()))
        .env("TUTORIAL_DIR", dir.path().join("tutorial"))
        .env_remove("MIRAGE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            // The whole group: bash and every process the tutorial started.
            kill_group(child.id());
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let tail = |s: &str| s.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let status = status
        .unwrap_or_else(|| panic!("the tutorial took over 300 s\nstdout:\n{}\nstderr:\n{}", tail(&out), tail(&err)));
    assert!(status.success(), "the tutorial failed ({status})\nstdout:\n{}\nstderr:\n{}", tail(&out), tail(&err));
    // What the text says the reader sees.
    assert!(out.contains("Hello, world (1.0.0)"), "{out}");
    assert!(out.contains("no name in"), "the problem report shows the failing output: {out}");
    assert!(out.contains("rolled back from 1.1.0 to 1.0.0, pinned to 1.0.0"), "{out}");
}

fn kill_group(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
}
