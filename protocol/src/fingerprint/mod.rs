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

pub mod config;
pub mod normalize;
pub mod profile;

pub use normalize::HostContext;
pub use profile::{Contribution, Need, Pattern, Profile, ProfileError, Rule};

use crate::envelope::{MessageKind, SignedPayload};
use crate::manifest::validate_app_name;
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
        validate_app_name(&self.app)?;
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
    Text(String),
    /// The rule needs nothing read ([`Need::Nothing`]).
    Seen,
}

/// Turns scanner observations into items under a profile's rules.
pub struct FingerprintBuilder<'p> {
    profile: &'p Profile,
    host: HostContext,
    items: Vec<Item>,
}

impl<'p> FingerprintBuilder<'p> {
    pub fn new(profile: &'p Profile, host: HostContext) -> Self {
        FingerprintBuilder { profile, host, items: Vec::new() }
    }

    /// Records what include pattern `pattern` of rule `rule` matched: `(logical path,
    /// observation)` for each file, already filtered by the rule's excludes.
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
                        Observed::Text(text) => self.add_config(rule, path, &text),
                        Observed::Seen => {
                            self.items.push(Item { class, path, key: key.clone(), value: ItemValue::Present })
                        }
                    }
                }
            }
        }
    }

    fn add_config(&mut self, rule: usize, path: String, text: &str) {
        let r = &self.profile.rules()[rule];
        let host = &self.host;
        let section_args = |a: &str| normalize::normalize_value(a, host);
        for s in config::parse(r.format, &path, text, &section_args) {
            let key = r.keys.apply(&s.key);
            if self.profile.ignores_key(&key) || r.ignores_key(&key) {
                continue;
            }
            let value = if normalize::is_host_specific_key(&key) {
                "<host-specific>".to_string()
            } else {
                normalize::normalize_value(&s.value, host)
            };
            self.items.push(Item { class: r.class, path: path.clone(), key, value: ItemValue::Text(value) });
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
        Fingerprint::new(self.profile.app().to_string(), self.profile.id(), self.items)
    }
}

#[cfg(test)]
mod tests;
