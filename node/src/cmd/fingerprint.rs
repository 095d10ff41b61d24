use anyhow::{Context, Result};
use mirage_node::digest_cache::DigestCache;
use mirage_node::scan::{scan, Scan};
use mirage_protocol::fingerprint::{Item, ItemValue, Profile};
use mirage_protocol::Envelope;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The application profile (TOML) saying which resources matter.
    #[arg(long = "profile", alias = "app", value_name = "PROFILE.toml")]
    profile: PathBuf,
    /// The machine's root directory.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Sign the fingerprint with this secret key file and include the envelope.
    #[arg(long, value_name = "KEYFILE")]
    sign: Option<PathBuf>,
    /// Digest cache file [default: $XDG_CACHE_HOME/mirage/digests.redb].
    #[arg(long, conflicts_with = "no_cache")]
    cache: Option<PathBuf>,
    /// Hash every file, without a cache.
    #[arg(long)]
    no_cache: bool,
}

fn default_cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mirage/digests.redb"))
}

fn open_cache(args: &Args) -> Option<DigestCache> {
    if args.no_cache {
        return None;
    }
    let path = args.cache.clone().or_else(default_cache_path)?;
    DigestCache::open(&path).map_err(|e| tracing::warn!(error = %e, "running without the digest cache")).ok()
}

/// The chain file each config value came from, where that is not the entry itself.
fn origins(scan: &Scan) -> HashMap<(&str, &str, &str), &str> {
    scan.origins
        .iter()
        .filter(|o| o.file != o.path)
        .map(|o| ((o.path.as_str(), o.key.as_str(), o.value.as_str()), o.file.as_str()))
        .collect()
}

fn from_file<'a>(origins: &HashMap<(&str, &str, &str), &'a str>, item: &Item) -> Option<&'a str> {
    match &item.value {
        ItemValue::Text(t) => origins.get(&(item.path.as_str(), item.key.as_str(), t.as_str())).copied(),
        _ => None,
    }
}

fn item_json(item: &Item, from: Option<&str>) -> Value {
    let mut v = json!({ "class": item.class.name(), "path": item.path });
    if !item.key.is_empty() {
        v["key"] = json!(item.key);
    }
    match &item.value {
        ItemValue::Digest(d) => v["digest"] = json!(d.to_hex()),
        ItemValue::Text(t) => v["value"] = json!(t),
        ItemValue::Present => v["present"] = json!(true),
        ItemValue::Absent => v["present"] = json!(false),
        ItemValue::Cut(cut) => v["cut"] = json!(cut),
    }
    if let Some(file) = from {
        v["from"] = json!(file);
    }
    v
}

fn load_profile(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read profile {}", path.display()))?;
    Profile::parse(&text).with_context(|| format!("profile {}", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let profile = load_profile(&args.profile)?;
    let cache = open_cache(&args);
    let result = scan(&profile, &args.root, cache.as_ref())
        .with_context(|| format!("fingerprinting {} under {}", profile.app(), args.root.display()))?;
    let fp = &result.fingerprint;
    let from = origins(&result);
    for cut in &result.cuts {
        tracing::warn!(path = %cut.path, reason = ?cut.cut, "config chain cut short: {}", cut.cut.describe());
    }
    let signed = match &args.sign {
        Some(key) => {
            let keypair = mirage_node::keyfile::load(key)?;
            Some(Envelope::sign(&keypair, fp, mirage_bootstrap::overlay::now())?)
        }
        None => None,
    };
    if args.json {
        let mut out = json!({
            "app": fp.app(),
            "profile_id": fp.profile_id().to_hex(),
            "cluster_key": fp.cluster_key().to_hex(),
            "items": fp.items().iter().map(|i| item_json(i, from_file(&from, i))).collect::<Vec<_>>(),
            "cuts": result.cuts.iter().map(|c| json!({ "path": c.path, "cut": c.cut })).collect::<Vec<_>>(),
            "stats": {
                "files_matched": result.stats.files_matched,
                "files_hashed": result.stats.files_hashed,
                "cache_hits": result.stats.cache_hits,
                "configs_parsed": result.stats.configs_parsed,
            },
        });
        if let Some(env) = &signed {
            out["signed"] = json!({
                "signer": env.signer.to_hex(),
                "peer_id": env.signer.peer_id(),
                "issued_at_ms": env.issued_at.0,
                "envelope": hex::encode(env.to_bytes()?),
            });
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("app:         {}", fp.app());
    println!("cluster key: {}", fp.cluster_key());
    println!(
        "items:       {} ({} files matched, {} hashed, {} from cache)",
        fp.items().len(),
        result.stats.files_matched,
        result.stats.files_hashed,
        result.stats.cache_hits
    );
    for item in fp.items() {
        let value = match &item.value {
            ItemValue::Digest(d) => format!("blake3:{}", &d.to_hex()[..16]),
            ItemValue::Text(t) => format!("= {t}"),
            ItemValue::Present => "present".into(),
            ItemValue::Absent => "absent".into(),
            ItemValue::Cut(cut) => format!("cut short: {}", cut.describe()),
        };
        let key = if item.key.is_empty() { String::new() } else { format!(" [{}]", item.key) };
        let from = from_file(&from, item).map(|f| format!("  (from {f})")).unwrap_or_default();
        println!("  {:<10} {}{} {}{}", item.class.name(), item.path, key, value, from);
    }
    if let Some(env) = &signed {
        println!("signed by:   {} ({})", env.signer.peer_id(), env.signer);
    }
    Ok(())
}
