//! Host noise learned rather than listed (ImageElves' cross-difference): machines an
//! operator knows belong together are fingerprinted under a profile, and every item
//! that is not the same on all of them is either noise the profile should leave out
//! or a real difference the operator should look at. [`refine`] proposes a profile
//! change for each item it can explain, saying why; [`apply`] writes the changes into
//! the profile's TOML, keeping its comments.

use super::config::ConfigFormat;
use super::profile::{Profile, ProfileError};
use super::{Contribution, Fingerprint, ItemValue, ResourceClass};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// One change to a profile, by rule index (the profile's `[[resource]]` tables in order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// Leave a config key out of the rule (`ignore_keys`; the key as a literal glob).
    IgnoreKey { rule: usize, key: String },
    /// Leave files whose name matches `glob` out of the rule (`exclude`).
    ExcludeName { rule: usize, glob: String },
    /// Stop recording an environment variable (`vars`).
    DropVar { rule: usize, var: String },
    /// Stop counting a presence pattern that matches on some machines only
    /// (`include`; a rule left with none contributes nothing).
    DropPattern { rule: usize, pattern: String },
    /// Count INI sections the machines use for the same option as one group
    /// (`section_groups`): the option is set alike, only under another heading.
    GroupSections { rule: usize, name: String, sections: Vec<String> },
}

/// A change and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proposal {
    #[serde(flatten)]
    pub change: Change,
    pub why: String,
}

/// An item that differs but that no profile change should hide: it is a real
/// difference between the machines, or the operator's to judge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unexplained {
    pub class: ResourceClass,
    pub path: String,
    pub key: String,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Refinement {
    pub proposals: Vec<Proposal>,
    pub unexplained: Vec<Unexplained>,
}

#[derive(Debug, Error)]
pub enum RefineError {
    #[error("refining needs fingerprints of at least two machines, got {0}")]
    TooFew(usize),
    #[error("machine {index} was fingerprinted under another profile or app")]
    OtherProfile { index: usize },
    #[error("the profile's TOML cannot be edited: {0}")]
    Toml(String),
    #[error("the refined profile does not parse: {0}")]
    Invalid(#[from] ProfileError),
}

type Identity = (ResourceClass, String, String);

/// Compares the fingerprints of machines that should share a cluster under `profile`
/// and proposes how the profile should change so that they do.
///
/// - A config setting whose value differs: leave the key out (`ignore_keys`).
/// - An environment variable that differs: stop recording it.
/// - A file whose contents differ or that some machines lack, in a data, log or temp
///   rule: exclude its kind of name (`*.html` when several files of that extension
///   differ, the name with its digits wildcarded otherwise).
/// - A presence pattern that matches on some machines only: drop the pattern.
///
/// Executables, libraries and dependents that differ, includes that name different
/// files and cut chains are never explained away: they are reported as real.
pub fn refine(profile: &Profile, machines: &[Fingerprint]) -> Result<Refinement, RefineError> {
    if machines.len() < 2 {
        return Err(RefineError::TooFew(machines.len()));
    }
    if let Some(index) = machines.iter().position(|m| m.profile_id() != profile.id() || m.app() != profile.app()) {
        return Err(RefineError::OtherProfile { index });
    }
    let mut values: BTreeMap<Identity, Vec<BTreeSet<&ItemValue>>> = BTreeMap::new();
    for (i, m) in machines.iter().enumerate() {
        for item in m.items() {
            let slot = values
                .entry((item.class, item.path.clone(), item.key.clone()))
                .or_insert_with(|| vec![BTreeSet::new(); machines.len()]);
            slot[i].insert(&item.value);
        }
    }
    let mut out = Refinement::default();
    let mut names: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut changes = BTreeSet::new();
    let placed = placements(profile, &values);
    for (rule, name, sections, why) in placed.groups {
        push(&mut out, &mut changes, Change::GroupSections { rule, name, sections }, why);
    }
    for ((class, path, key), per_machine) in values {
        if per_machine.iter().all(|v| *v == per_machine[0])
            || placed.explained.contains(&(class, path.clone(), key.clone()))
        {
            continue;
        }
        let shown = show(&per_machine);
        let unexplained = |why: String| Unexplained { class, path: path.clone(), key: key.clone(), why };
        let is_cut = per_machine.iter().flatten().any(|v| matches!(v, ItemValue::Cut(_)));
        match class {
            _ if is_cut => {
                out.unexplained.push(unexplained(format!("a config chain was cut on some machines: {shown}")))
            }
            ResourceClass::Env => match rule_with_var(profile, &key) {
                Some(rule) => push(
                    &mut out,
                    &mut changes,
                    Change::DropVar { rule, var: key.clone() },
                    format!("`{key}` differs: {shown}"),
                ),
                None => out.unexplained.push(unexplained(format!("differs: {shown}"))),
            },
            ResourceClass::Config if is_include(&key) => out.unexplained.push(unexplained(format!(
                "an include names files some machines lack ({shown}): the machines read different config"
            ))),
            ResourceClass::Config if !key.is_empty() => match rule_of(profile, class, &path) {
                Some(rule) => {
                    let why = format!("`{key}` in {path} differs: {shown}");
                    push(&mut out, &mut changes, Change::IgnoreKey { rule, key: literal_glob(&key) }, why)
                }
                None => out.unexplained.push(unexplained(format!("differs: {shown}"))),
            },
            ResourceClass::Executable | ResourceClass::Library | ResourceClass::Dependent => out
                .unexplained
                .push(unexplained(format!("the machines run different code ({shown}): a real difference"))),
            _ => match pattern_rule(profile, class, &path) {
                Some((rule, pattern)) => push(
                    &mut out,
                    &mut changes,
                    Change::DropPattern { rule, pattern: pattern.clone() },
                    format!("`{pattern}` matches on some machines only: {shown}"),
                ),
                None => match rule_of(profile, class, &path) {
                    Some(rule) => names.entry(rule).or_default().push(path.clone()),
                    None => out.unexplained.push(unexplained(format!("differs: {shown}"))),
                },
            },
        }
    }
    for (rule, paths) in names {
        for (glob, covered) in name_globs(&paths) {
            let why = format!(
                "{} differ{} between the machines: {}",
                plural(covered.len(), "file"),
                if covered.len() == 1 { "s" } else { "" },
                sample(&covered)
            );
            push(&mut out, &mut changes, Change::ExcludeName { rule, glob }, why);
        }
    }
    Ok(out)
}

/// Options whose value is the same on every machine but set under different INI
/// sections: a layout choice, not a difference, when a profile counts those sections
/// as one group.
struct Placements {
    groups: Vec<(usize, String, Vec<String>, String)>,
    explained: BTreeSet<Identity>,
}

fn placements(profile: &Profile, values: &BTreeMap<Identity, Vec<BTreeSet<&ItemValue>>>) -> Placements {
    // (rule, entry path, option) → the sections it was set under, with each one's values.
    type OptionAt<'a> = (usize, &'a str, &'a str);
    let mut options: BTreeMap<OptionAt, Vec<(&str, &Identity)>> = BTreeMap::new();
    for id in values.keys() {
        let (class, path, key) = id;
        let Some((section, option)) = key.split_once('.') else { continue };
        if *class != ResourceClass::Config {
            continue;
        }
        // Only INI keys begin with a section; a PHP key's dot is part of its name.
        let Some(rule) = rule_of(profile, *class, path) else { continue };
        if matches!(profile.rules()[rule].format, ConfigFormat::Ini | ConfigFormat::Auto) {
            options.entry((rule, path, option)).or_default().push((section, id));
        }
    }
    let mut out = Placements { groups: Vec::new(), explained: BTreeSet::new() };
    let mut grouped: BTreeMap<(usize, Vec<String>), Vec<String>> = BTreeMap::new();
    for ((rule, _, option), under) in options {
        if under.len() < 2 {
            continue;
        }
        let machines = values[under[0].1].len();
        let per_machine: Vec<BTreeSet<&ItemValue>> =
            (0..machines).map(|m| under.iter().flat_map(|(_, id)| values[*id][m].iter().copied()).collect()).collect();
        let differs = under.iter().any(|(_, id)| values[*id].iter().any(|v| *v != values[*id][0]));
        if !differs || per_machine.iter().any(|v| *v != per_machine[0] || v.is_empty()) {
            continue;
        }
        let sections: Vec<String> = under.iter().map(|(s, _)| s.to_string()).collect();
        grouped.entry((rule, sections)).or_default().push(option.to_string());
        out.explained.extend(under.iter().map(|(_, id)| (*id).clone()));
    }
    for ((rule, sections), opts) in grouped {
        let why = format!(
            "{} set alike on every machine, under [{}] on some and [{}] on others",
            sample(&opts.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>()),
            sections[0],
            sections[1..].join("], [")
        );
        out.groups.push((rule, sections[0].clone(), sections, why));
    }
    out
}

fn push(out: &mut Refinement, seen: &mut BTreeSet<Change>, change: Change, why: String) {
    if seen.insert(change.clone()) {
        out.proposals.push(Proposal { change, why });
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn sample(paths: &[String]) -> String {
    let mut s: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
    if paths.len() > 3 {
        s.push("...");
    }
    s.join(", ")
}

/// The values each machine had, shortened, machine by machine.
fn show(per_machine: &[BTreeSet<&ItemValue>]) -> String {
    let one = |v: &ItemValue| -> String {
        let s = match v {
            ItemValue::Digest(d) => format!("blake3:{}", &d.to_hex()[..8]),
            ItemValue::Text(t) => format!("`{t}`"),
            ItemValue::Present => "present".into(),
            ItemValue::Absent => "absent".into(),
            ItemValue::Cut(c) => format!("cut ({})", c.describe()),
        };
        if s.chars().count() > 40 {
            format!("{}...", s.chars().take(40).collect::<String>())
        } else {
            s
        }
    };
    let shown: Vec<String> =
        per_machine
            .iter()
            .take(4)
            .map(|vs| {
                if vs.is_empty() {
                    "none".to_string()
                } else {
                    vs.iter().map(|v| one(v)).collect::<Vec<_>>().join(" ")
                }
            })
            .collect();
    let more = if per_machine.len() > 4 { " ..." } else { "" };
    format!("{}{more}", shown.join(" / "))
}

fn is_include(key: &str) -> bool {
    matches!(key, "!include" | "!includedir" | "include" | "includeoptional")
}

/// A glob that matches `key` and nothing else.
fn literal_glob(key: &str) -> String {
    key.chars().map(|c| if "*?[]{}".contains(c) { format!("[{c}]") } else { c.to_string() }).collect()
}

fn rule_with_var(profile: &Profile, var: &str) -> Option<usize> {
    profile.rules().iter().position(|r| r.class == ResourceClass::Env && r.vars.iter().any(|v| v == var))
}

/// The first rule of `class` that counts something and whose patterns match `path`.
fn rule_of(profile: &Profile, class: ResourceClass, path: &str) -> Option<usize> {
    profile.rules().iter().position(|r| {
        r.class == class && r.contribute != Contribution::None && r.patterns().iter().any(|p| p.matches(path))
    })
}

/// The rule and pattern an item named by a pattern stands for (presence items, and
/// `absent` ones of patterns that matched nothing).
fn pattern_rule(profile: &Profile, class: ResourceClass, path: &str) -> Option<(usize, String)> {
    profile.rules().iter().enumerate().find_map(|(i, r)| {
        (r.class == class)
            .then(|| r.patterns().iter().find(|p| p.text() == path))
            .flatten()
            .map(|p| (i, p.text().to_string()))
    })
}

/// Name globs covering `paths`: `*.ext` for an extension shared by several of them,
/// otherwise the name with its digit runs wildcarded (`db7.pid` → `db*.pid`).
fn name_globs(paths: &[String]) -> Vec<(String, Vec<String>)> {
    let name = |p: &String| p.rsplit('/').next().unwrap_or(p).to_string();
    let mut by_ext: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut rest = Vec::new();
    for p in paths {
        match name(p).rsplit_once('.') {
            Some((stem, ext))
                if !stem.is_empty() && !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                by_ext.entry(ext.to_string()).or_default().push(p.clone())
            }
            _ => rest.push(p.clone()),
        }
    }
    let mut globs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (ext, ps) in by_ext {
        if ps.len() > 1 {
            globs.entry(format!("*.{ext}")).or_default().extend(ps);
        } else {
            rest.extend(ps);
        }
    }
    for p in rest {
        let mut glob = String::new();
        for c in name(&p).chars() {
            if c.is_ascii_digit() {
                if !glob.ends_with('*') {
                    glob.push('*');
                }
            } else {
                glob.push_str(&literal_glob(&c.to_string()));
            }
        }
        globs.entry(glob).or_default().push(p);
    }
    globs.into_iter().collect()
}

/// Writes `changes` into a profile's TOML, keeping its comments and layout, and checks
/// that the result is a valid profile.
pub fn apply(profile_toml: &str, changes: &[Change]) -> Result<String, RefineError> {
    let mut doc: toml_edit::DocumentMut =
        profile_toml.parse().map_err(|e: toml_edit::TomlError| RefineError::Toml(e.to_string()))?;
    let tables = doc
        .get_mut("resource")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| RefineError::Toml("no [[resource]] tables".into()))?;
    let mut emptied = BTreeSet::new();
    for change in changes {
        if let Change::GroupSections { rule, name, sections } = change {
            let table = tables.get_mut(*rule).ok_or_else(|| RefineError::Toml(format!("no resource #{rule}")))?;
            let groups = table
                .entry("section_groups")
                .or_insert(toml_edit::Item::Table(toml_edit::Table::new()))
                .as_table_like_mut()
                .ok_or_else(|| RefineError::Toml(format!("resource #{rule}: `section_groups` is not a table")))?;
            let array =
                groups.entry(name).or_insert(toml_edit::value(toml_edit::Array::new())).as_array_mut().ok_or_else(
                    || RefineError::Toml(format!("resource #{rule}: section group `{name}` is not an array")),
                )?;
            for s in sections {
                if !array.iter().any(|v| v.as_str() == Some(literal_glob(s).as_str())) {
                    array.push(literal_glob(s));
                }
            }
            continue;
        }
        let (rule, field, value, add) = match change {
            Change::IgnoreKey { rule, key } => (*rule, "ignore_keys", key, true),
            Change::ExcludeName { rule, glob } => (*rule, "exclude", glob, true),
            Change::DropVar { rule, var } => (*rule, "vars", var, false),
            Change::DropPattern { rule, pattern } => (*rule, "include", pattern, false),
            Change::GroupSections { .. } => continue,
        };
        let table = tables.get_mut(rule).ok_or_else(|| RefineError::Toml(format!("no resource #{rule}")))?;
        let array = table
            .entry(field)
            .or_insert(toml_edit::value(toml_edit::Array::new()))
            .as_array_mut()
            .ok_or_else(|| RefineError::Toml(format!("resource #{rule}: `{field}` is not an array")))?;
        let at = array.iter().position(|v| v.as_str() == Some(value.as_str()));
        match (add, at) {
            (true, None) => array.push(value.as_str()),
            (false, Some(i)) => {
                array.remove(i);
            }
            _ => {}
        }
        if !add && array.is_empty() {
            if field == "include" {
                // A rule needs something to match: one whose every pattern was
                // dropped stays, counting nothing, as a record of what was considered.
                array.push(value.as_str());
                table["contribute"] = toml_edit::value("none");
            } else {
                emptied.insert(rule);
            }
        }
    }
    // An env rule with no variables left records nothing: it goes.
    for rule in emptied.into_iter().rev() {
        tables.remove(rule);
    }
    let text = doc.to_string();
    Profile::parse(&text)?;
    Ok(text)
}

#[cfg(test)]
mod tests;
