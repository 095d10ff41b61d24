//! `mirage profile`: writing profiles from what machines show, rather than by hand.

use anyhow::{bail, Context, Result};
use mirage_node::scan::scan;
use mirage_protocol::fingerprint::refine::{self, Change};
use mirage_protocol::fingerprint::{Fingerprint, Profile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum ProfileCommand {
    /// Trace a run of the application (strace) and write a draft profile of the files
    /// it opened, classified and generalized to globs.
    Discover(DiscoverArgs),
    /// Compare machines that should share a cluster and propose the profile changes
    /// (ignore_keys, excludes) that leave out what differs on them, explaining each.
    Refine(RefineArgs),
}

#[derive(clap::Args)]
pub struct RefineArgs {
    /// The profile to refine.
    #[arg(long = "profile", alias = "app", value_name = "PROFILE.toml")]
    profile: PathBuf,
    /// The root directory of each machine (at least two).
    #[arg(long = "root", required = true, num_args = 1)]
    roots: Vec<PathBuf>,
    /// Write the refined profile here (comments kept). Without it, only the proposals
    /// are printed.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DiscoverArgs {
    /// The application's name in the profile.
    #[arg(long)]
    app: String,
    /// Run the command inside this machine root (`chroot`, as root) and record the
    /// paths it saw there [default: the live system].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Write the draft here [default: standard output].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Stop the command after this many seconds (a server that keeps running has
    /// opened what it needs by then).
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// The command to trace, after `--`: the application, or its test command.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(c: ProfileCommand) -> Result<()> {
    match c {
        ProfileCommand::Discover(args) => run_discover(args),
        ProfileCommand::Refine(args) => run_refine(args),
    }
}

fn run_discover(args: DiscoverArgs) -> Result<()> {
    mirage_protocol::manifest::validate_app_name(&args.app).map_err(anyhow::Error::msg)?;
    let limit = std::time::Duration::from_secs(args.timeout_secs.max(1));
    let trace = mirage_node::trace::trace(args.root.as_deref(), &args.command, limit)
        .with_context(|| format!("tracing `{}`", args.command.join(" ")))?;
    if trace.opened.is_empty() {
        bail!("the traced command opened no file that is there: is `{}` right?", args.command.join(" "));
    }
    let draft = mirage_protocol::fingerprint::discover::draft(&args.app, &args.command.join(" "), &trace.opened);
    Profile::parse(&draft).context("the drafted profile does not parse (a bug)")?;
    let how = match (trace.timed_out, trace.exit_code) {
        (true, _) => format!("stopped after {} s", limit.as_secs()),
        (false, Some(code)) => format!("exited with {code}"),
        (false, None) => "killed by a signal".to_string(),
    };
    match &args.out {
        Some(out) => {
            write_file(out, &draft)?;
            eprintln!("{} files seen (the command {how}); draft written to {}", trace.opened.len(), out.display());
        }
        None => {
            print!("{draft}");
            eprintln!("{} files seen (the command {how})", trace.opened.len());
        }
    }
    Ok(())
}

fn fingerprints(profile: &Profile, roots: &[PathBuf]) -> Result<Vec<Fingerprint>> {
    roots
        .iter()
        .map(|root| {
            scan(profile, root, None)
                .map(|s| s.fingerprint)
                .with_context(|| format!("fingerprinting {} under {}", profile.app(), root.display()))
        })
        .collect()
}

/// How many clusters the machines fall into, and which machines each holds.
fn clusters(fps: &[Fingerprint], roots: &[PathBuf]) -> Vec<Vec<String>> {
    let mut by_key: BTreeMap<_, Vec<String>> = BTreeMap::new();
    for (fp, root) in fps.iter().zip(roots) {
        by_key.entry(fp.cluster_key()).or_default().push(root.display().to_string());
    }
    by_key.into_values().collect()
}

fn run_refine(args: RefineArgs) -> Result<()> {
    if args.roots.len() < 2 {
        bail!("refining compares machines: give at least two --root");
    }
    let text = std::fs::read_to_string(&args.profile)
        .with_context(|| format!("cannot read profile {}", args.profile.display()))?;
    let profile = Profile::parse(&text).with_context(|| format!("profile {}", args.profile.display()))?;
    let fps = fingerprints(&profile, &args.roots)?;
    let before = clusters(&fps, &args.roots);
    let refinement = refine::refine(&profile, &fps)?;
    let changes: Vec<Change> = refinement.proposals.iter().map(|p| p.change.clone()).collect();
    let refined = refine::apply(&text, &changes)?;
    let refined_profile = Profile::parse(&refined).context("the refined profile")?;
    let after = clusters(&fingerprints(&refined_profile, &args.roots)?, &args.roots);
    if let Some(out) = &args.out {
        write_file(out, &refined)?;
    }
    if args.json {
        let out = serde_json::json!({
            "machines": args.roots.len(),
            "clusters_before": before.len(),
            "clusters_after": after.len(),
            "proposals": refinement.proposals,
            "unexplained": refinement.unexplained,
            "written": args.out.as_ref().map(|p| p.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} machines, {} cluster(s) under {}; {} proposal(s):",
        args.roots.len(),
        before.len(),
        args.profile.display(),
        refinement.proposals.len()
    );
    for p in &refinement.proposals {
        let (rule, what) = match &p.change {
            Change::IgnoreKey { rule, key } => (rule, format!("ignore_keys += \"{key}\"")),
            Change::ExcludeName { rule, glob } => (rule, format!("exclude += \"{glob}\"")),
            Change::DropVar { rule, var } => (rule, format!("vars -= \"{var}\"")),
            Change::DropPattern { rule, pattern } => (rule, format!("include -= \"{pattern}\"")),
            Change::GroupSections { rule, name, sections } => {
                (rule, format!("section_groups.{name} += [\"{}\"]", sections.join("\", \"")))
            }
        };
        println!("  resource #{rule}: {what}\n      because {}", p.why);
    }
    if !refinement.unexplained.is_empty() {
        println!("real differences, left in the profile ({}):", refinement.unexplained.len());
        for u in &refinement.unexplained {
            let key = if u.key.is_empty() { String::new() } else { format!(" [{}]", u.key) };
            println!("  {} {}{key}: {}", u.class.name(), u.path, u.why);
        }
    }
    println!("with the proposals: {} cluster(s)", after.len());
    if after.len() > 1 {
        for (i, members) in after.iter().enumerate() {
            println!("  cluster {}: {}", i + 1, members.join(" "));
        }
    }
    match &args.out {
        Some(out) => println!("refined profile written to {}", out.display()),
        None => println!("(give --out FILE to write the refined profile)"),
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    // Written beside and renamed: a crash never leaves half a profile.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
