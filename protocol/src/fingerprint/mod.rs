//! Environment fingerprints and cluster keys.
//!
//! A machine's fingerprint for an application is the sorted set of *items* its profile
//! selects: file digests, parsed config settings, presence of data/log/temp files,
//! environment variables, dependent applications. Host noise is normalized away first,
//! so machines that differ only in hostname, addresses, log contents, comments or line
//! order share a [`ClusterKey`].
//!
//! The scanner (in the node) walks the filesystem and reads files; everything it finds
//! comes here through [`FingerprintBuilder`], which owns every rule about what counts.

pub mod chain;
pub mod config;
pub mod discover;
pub mod normalize;
pub mod profile;
pub mod refine;
pub mod scope;

pub use normalize::HostContext;
pub use profile::{Contribution, Need, Pattern, Profile, ProfileError, Rule};

use crate::envelope::{MessageKind, SignedPayload};
use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Resource classes as the Mirage paper has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceClass {
    Executable,
    Library,
    Config,
    Data,
    Log,
    Temp,
    Env,
    Dependent,
}

impl ResourceClass {
    pub fn name(self) -> &'static str {
        match self {
            ResourceClass::Executable => "executable",
            ResourceClass::Library => "library",
            ResourceClass::Config => "config",
            ResourceClass::Data => "data",
            ResourceClass::Log => "log",
            ResourceClass::Temp => "temp",
            ResourceClass::Env => "env",
            ResourceClass::Dependent => "dependent",
        }
    }
}

/// What an item says about its resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemValue {
    Digest(Digest),
    Text(String),
    Present,
    Absent,
    /// Part of a config chain that was not read, and why: a machine whose chain was cut
    /// never shares a cluster with one whose chain was read whole.
    Cut(chain::Cut),
}

/// One entry of a fingerprint. Identity is `(class, path, key)`; for config settings
/// `key` is the option, for env variables the variable name, for dependents the
/// application name; otherwise empty.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Item {
    pub class: ResourceClass,
    pub path: String,
    pub key: String,
    pub value: ItemValue,
}

/// Most items a fingerprint may carry; keeps announcements within the wire limit.
pub const MAX_ITEMS: usize = 20_000;
const MAX_ITEM_TEXT: usize = 4096;

/// The cluster a machine belongs to for one application: blake3 over the canonical
/// fingerprint. Also the Kademlia key under which cluster members find each other.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterKey(pub Digest);

impl ClusterKey {
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }
}

impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", &self.0.to_hex()[..12])
    }
}

/// A machine's normalized environment for one application. Items are always sorted:
/// [`Fingerprint::new`] sorts them and [`SignedPayload::validate`] rejects unsorted
/// ones from the wire, so equal environments encode to equal bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    app: String,
    profile_id: Digest,
    items: Vec<Item>,
}

impl Fingerprint {
    pub fn new(app: String, profile_id: Digest, mut items: Vec<Item>) -> Self {
        items.sort();
        Fingerprint { app, profile_id, items }
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn profile_id(&self) -> Digest {
        self.profile_id
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn cluster_key(&self) -> ClusterKey {
        let canonical = crate::wire::encode(self).unwrap_or_default();
        ClusterKey(Digest(blake3::derive_key("mirage 2026-11 cluster key v1", &canonical)))
    }

    /// How many resources differ: an item identity present on one side only, or with
    /// different values, counts once. Zero exactly when the cluster keys are equal.
    pub fn distance(&self, other: &Fingerprint) -> usize {
        let group = |f: &Fingerprint| {
            let mut m: BTreeMap<(ResourceClass, String, String), Vec<ItemValue>> = BTreeMap::new();
            for i in &f.items {
                m.entry((i.class, i.path.clone(), i.key.clone())).or_default().push(i.value.clone());
            }
            m
        };
        let (a, b) = (group(self), group(other));
        let mut d = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
        d += b.keys().filter(|k| !a.contains_key(*k)).count();
        if d == 0 && (self.app != other.app || self.profile_id != other.profile_id) {
            d = 1;
        }
        d
    }

    pub fn validate(&self) -> Result<(), String> {
        scope::validate_membership_name(&self.app)?;
        if self.items.len() > MAX_ITEMS {
            return Err(format!("{} items, over the {MAX_ITEMS} limit", self.items.len()));
        }
        if !self.items.windows(2).all(|w| w[0] <= w[1]) {
            return Err("items are not in canonical order".into());
        }
        let too_long = |s: &str| s.len() > MAX_ITEM_TEXT;
        if self
            .items
            .iter()
            .any(|i| too_long(&i.path) || too_long(&i.key) || matches!(&i.value, ItemValue::Text(t) if too_long(t)))
        {
            return Err(format!("an item is over {MAX_ITEM_TEXT} bytes"));
        }
        Ok(())
    }
}

impl SignedPayload for Fingerprint {
    const KIND: MessageKind = MessageKind::Fingerprint;

    fn validate(&self) -> Result<(), String> {
        Fingerprint::validate(self)
    }
}

/// What the scanner observed for one matched file.
#[derive(Clone, Debug)]
pub enum Observed {
    Digest(Digest),
    /// The rule needs nothing read ([`Need::Nothing`]).
    Seen,
}

/// Where a config item's value came from: the file of the chain that set it last. Kept
/// beside the fingerprint, not in it, so that moving a setting between the files of a
/// chain (a layout choice) does not change the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub path: String,
    pub key: String,
    pub value: String,
    pub file: String,
}

/// What a scan saw beyond the items: where config values came from and where chains
/// were cut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    pub origins: Vec<Origin>,
    pub cuts: Vec<chain::CutAt>,
}

/// Turns scanner observations into items under a profile's rules.
pub struct FingerprintBuilder<'p> {
    profile: &'p Profile,
    host: HostContext,
    items: Vec<Item>,
    explanation: Explanation,
}

impl<'p> FingerprintBuilder<'p> {
    pub fn new(profile: &'p Profile, host: HostContext) -> Self {
        FingerprintBuilder { profile, host, items: Vec::new(), explanation: Explanation::default() }
    }

    /// Records what include pattern `pattern` of rule `rule` matched: `(logical path,
    /// observation)` for each file, already filtered by the rule's excludes. Parsed
    /// config files come through [`Self::add_config_files`], which reads their chains.
    pub fn add_matches(&mut self, rule: usize, pattern: usize, files: Vec<(String, Observed)>) {
        let r = &self.profile.rules()[rule];
        let class = r.class;
        let pattern_text = r.patterns()[pattern].text().to_string();
        let key = r.name.clone().unwrap_or_default();
        if files.is_empty() {
            if r.contribute != Contribution::None {
                self.items.push(Item { class, path: pattern_text, key, value: ItemValue::Absent });
            }
            return;
        }
        match r.contribute {
            Contribution::None => {}
            Contribution::Presence => {
                self.items.push(Item { class, path: pattern_text, key, value: ItemValue::Present });
            }
            Contribution::Names => {
                let mut names: Vec<String> =
                    files.iter().map(|(p, _)| normalize::normalize_file_name(p, &self.host)).collect();
                names.sort();
                names.dedup();
                for path in names {
                    self.items.push(Item { class, path, key: key.clone(), value: ItemValue::Present });
                }
            }
            Contribution::Digest | Contribution::Parsed => {
                for (path, observed) in files {
                    match observed {
                        Observed::Digest(d) => {
                            self.items.push(Item { class, path, key: key.clone(), value: ItemValue::Digest(d) })
                        }
                        Observed::Seen => {
                            self.items.push(Item { class, path, key: key.clone(), value: ItemValue::Present })
                        }
                    }
                }
            }
        }
    }

    /// Records the config files the patterns of config rule `rule` matched (logical
    /// paths, one list per pattern), each read with everything it includes from
    /// `source`. A matched file that another matched file's chain already reads is
    /// not read again as an entry of its own, so that a profile naming both `my.cnf`
    /// and the `conf.d/*.cnf` it includes counts each setting once; the chains that
    /// read the most are kept first, so the outcome does not depend on names.
    pub fn add_config_files(&mut self, rule: usize, matched: Vec<Vec<String>>, source: &mut dyn chain::ConfigSource) {
        let mut entries: Vec<String> = Vec::new();
        for (pattern, files) in matched.into_iter().enumerate() {
            if files.is_empty() {
                self.add_matches(rule, pattern, Vec::new());
            }
            entries.extend(files);
        }
        let r = &self.profile.rules()[rule];
        let host = &self.host;
        let section_args = |a: &str| normalize::normalize_value(a, host);
        entries.sort();
        entries.dedup();
        let chains: Vec<chain::ConfigChain> =
            entries.iter().map(|e| chain::resolve(r.format, e, &r.reads_after, source, &section_args)).collect();
        let mut order: Vec<usize> = (0..chains.len()).collect();
        order.sort_by(|&a, &b| chains[b].files.len().cmp(&chains[a].files.len()).then(a.cmp(&b)));
        let mut read: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut keep = vec![false; chains.len()];
        for i in order {
            if read.contains(&chains[i].entry) {
                continue;
            }
            read.extend(chains[i].files.iter().cloned());
            keep[i] = true;
        }
        for (chain, keep) in chains.into_iter().zip(keep) {
            if keep {
                self.add_config(rule, chain);
            }
        }
    }

    /// A config chain's settings as items of its entry file. In INI files (my.cnf,
    /// php.ini) the last value of an option wins, as in the servers that read them,
    /// except for options the rule says accumulate (`extension`); other formats keep
    /// every setting. Includes that named nothing and cuts are items too.
    fn add_config(&mut self, rule: usize, chain: chain::ConfigChain) {
        let r = &self.profile.rules()[rule];
        let host = &self.host;
        let format = chain.format;
        let last_wins = matches!(format, config::ConfigFormat::Ini | config::ConfigFormat::Php);
        let accumulates = |key: &str| {
            r.accumulates(key) || (format == config::ConfigFormat::Php && matches!(key, "extension" | "zend_extension"))
        };
        let mut kept: Vec<(String, String, usize)> = Vec::new();
        let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for s in chain.settings {
            let key = r.keys.apply(&r.grouped_key(&s.setting.key, &s.setting.section));
            if self.profile.ignores_key(&key) || r.ignores_key(&key) {
                continue;
            }
            let value = if normalize::is_host_specific_key(&key) {
                "<host-specific>".to_string()
            } else {
                normalize::normalize_value(&s.setting.value, host)
            };
            if last_wins && !accumulates(&key) {
                if let Some(&i) = position.get(&key) {
                    kept[i] = (key, value, s.file);
                    continue;
                }
                position.insert(key.clone(), kept.len());
            }
            kept.push((key, value, s.file));
        }
        for (key, value, file) in kept {
            self.explanation.origins.push(Origin {
                path: chain.entry.clone(),
                key: key.clone(),
                value: value.clone(),
                file: chain.files[file].clone(),
            });
            self.items.push(Item { class: r.class, path: chain.entry.clone(), key, value: ItemValue::Text(value) });
        }
        for m in chain.missing {
            self.items.push(Item { class: r.class, path: m.target, key: m.directive, value: ItemValue::Absent });
        }
        for c in chain.cuts {
            self.items.push(Item {
                class: r.class,
                path: c.path.clone(),
                key: String::new(),
                value: ItemValue::Cut(c.cut),
            });
            self.explanation.cuts.push(c);
        }
    }

    /// Records an env rule's variables; `lookup` gives a variable's value on the machine.
    pub fn add_env(&mut self, rule: usize, lookup: &dyn Fn(&str) -> Option<String>) {
        let r = &self.profile.rules()[rule];
        for var in &r.vars {
            let value = match lookup(var) {
                Some(_) if normalize::is_host_specific_key(var) => ItemValue::Text("<host-specific>".into()),
                Some(v) => ItemValue::Text(normalize::normalize_value(&v, &self.host)),
                None => ItemValue::Absent,
            };
            self.items.push(Item { class: r.class, path: String::new(), key: var.clone(), value });
        }
    }

    pub fn finish(self) -> Fingerprint {
        self.finish_explained().0
    }

    /// The fingerprint, and where its config values came from and where chains were cut.
    pub fn finish_explained(self) -> (Fingerprint, Explanation) {
        (Fingerprint::new(self.profile.app().to_string(), self.profile.id(), self.items), self.explanation)
    }
}

#[cfg(test)]
mod tests;
