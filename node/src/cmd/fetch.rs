//! `mirage fetch`: ask a node to download a release and follow it to the end, with a
//! progress bar on a terminal and plain lines otherwise.

use super::status::Target;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mirage_node::daemon::api::{self, ClientError, ErrorKind, Request};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// The app whose release to download (its name, as in the profile).
    #[arg(long)]
    app: String,
    /// The version expected (the node's newest admitted release must be this one).
    #[arg(long)]
    version: Option<String>,
    /// Copy the verified artifact here when done.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print the outcome as JSON (progress still goes to standard error).
    #[arg(long)]
    json: bool,
}

/// How a download looks in the node's status.
struct Progress {
    version: String,
    done: u64,
    size: u64,
    state: String,
    path: Option<String>,
    content_hash: String,
}

fn progress(status: &serde_json::Value, app: &str) -> Option<Progress> {
    let release = status["releases"].as_array()?.iter().find(|r| r["app"] == app)?;
    let artifact = release["content"].as_array()?.iter().find(|c| c["what"] == "artifact")?;
    Some(Progress {
        version: release["version"].as_str()?.to_string(),
        done: artifact["bytes_done"].as_u64()?,
        size: artifact["size"].as_u64()?,
        state: artifact["state"].as_str()?.to_string(),
        path: artifact["path"].as_str().map(str::to_string),
        content_hash: artifact["content_hash"].as_str()?.to_string(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let endpoint = args.target.endpoint()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let call = |req: Request| runtime.block_on(api::call(&endpoint, &req, Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let request = Request::Fetch { app: args.app.clone(), version: args.version.clone() };
    // The release may not have reached the node yet: keep asking until the deadline.
    // What will never work (an app the node does not know, a version older than its
    // newest) fails at once.
    let mut said_waiting = false;
    let started = loop {
        match call(request.clone()) {
            Ok(v) => break v,
            Err(ClientError::Node { kind: ErrorKind::NotYet, message }) if Instant::now() < deadline => {
                if !said_waiting {
                    eprintln!("waiting (up to {} s): {message}", args.timeout_secs);
                    said_waiting = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).context("asking the node to fetch"),
        }
    };
    let version = started["version"].as_str().unwrap_or_default().to_string();

    let on_terminal = std::io::stderr().is_terminal();
    let bar = on_terminal.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("{} {}", args.app, version));
        bar
    });
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let done = loop {
        let status = call(Request::Status).context("asking the node for its status")?;
        let Some(p) = progress(&status, &args.app) else {
            bail!("the node no longer lists a release of `{}`", args.app)
        };
        if p.version != version {
            bail!("the node moved on to {} {} while fetching {version}", args.app, p.version);
        }
        match &bar {
            Some(bar) => {
                bar.set_length(p.size);
                bar.set_position(p.done);
            }
            None if last_line.elapsed() >= Duration::from_secs(2) || p.state == "complete" => {
                let pct = if p.size == 0 { 100.0 } else { p.done as f64 * 100.0 / p.size as f64 };
                eprintln!("{} {}: {pct:.0}% ({} of {} bytes)", args.app, version, p.done, p.size);
                last_line = Instant::now();
            }
            None => {}
        }
        if p.state == "complete" {
            break p;
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s at {} of {} bytes", args.timeout_secs, p.done, p.size);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    let path = PathBuf::from(done.path.context("the node did not say where the artifact is")?);
    let file = match &args.out {
        Some(out) => {
            std::fs::copy(&path, out).with_context(|| format!("copying {} to {}", path.display(), out.display()))?;
            out.clone()
        }
        None => path,
    };
    // Check the copy we hand over, not just the node's word for it.
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(&file).with_context(|| format!("hashing {}", file.display()))?;
    let hash = hasher.finalize().to_hex().to_string();
    if hash != done.content_hash {
        bail!("{} hashes to {hash}, not the manifest's {}", file.display(), done.content_hash);
    }
    if args.json {
        let v = serde_json::json!({
            "app": args.app,
            "version": version,
            "path": file,
            "size": done.size,
            "blake3": hash,
        });
        println!("{v}");
    } else {
        println!("fetched {} {}: {} ({} bytes, blake3 {hash})", args.app, version, file.display(), done.size);
    }
    Ok(())
}
