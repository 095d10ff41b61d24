//! Application profiles: a vendor's statement of which resources of a machine matter to
//! an application, by class, as globs with include and exclude rules.
//!
//! ```toml
//! app = "apache2"
//! ignore_keys = ["*.serveradmin"]
//!
//! [[resource]]
//! class = "config"
//! include = ["/etc/apache2/apache2.conf", "/etc/apache2/sites-enabled/*.conf"]
//! format = "apache"
//!
//! [[resource]]
//! class = "data"
//! include = ["/var/www/**"]
//! exclude = ["*.html"]        # no slash: matched against the file name
//! ```

use super::config::{ConfigFormat, KeyStyle};
use super::scope::Scope;
use super::ResourceClass;
use crate::manifest::validate_app_name;
use crate::Digest;
use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("profile is not valid TOML for a Mirage profile: {0}")]
    Toml(String),
    #[error("{0}")]
    App(String),
    #[error("resource #{index} ({class:?}): {problem}")]
    Rule { index: usize, class: ResourceClass, problem: String },
    #[error("bad ignore_keys pattern `{0}`: {1}")]
    IgnoreKey(String, String),
    #[error("scope `{name}`: {problem}")]
    Scope { name: String, problem: String },
}

/// Most scopes a profile may declare. Each is a membership the node keeps up all the
/// time (its own cluster topic, heartbeats, summaries and provider record), so each
/// adds the app's membership cost once more.
pub const MAX_PROFILE_SCOPES: usize = 4;

/// What a matched resource adds to the fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contribution {
    /// blake3 of the file's contents (default for executables, libraries, dependents).
    Digest,
    /// The file parsed into key/value items (default for config files).
    Parsed,
    /// One item per include pattern: present or absent (default for data, log, temp).
    Presence,
    /// One item per matched file name, without contents.
    Names,
    /// Matched but contributes nothing (documentation of what was considered).
    None,
}

impl Contribution {
    fn default_for(class: ResourceClass) -> Self {
        match class {
            ResourceClass::Executable | ResourceClass::Library | ResourceClass::Dependent => Contribution::Digest,
            ResourceClass::Config => Contribution::Parsed,
            ResourceClass::Data | ResourceClass::Log | ResourceClass::Temp => Contribution::Presence,
            ResourceClass::Env => Contribution::Parsed,
        }
    }
}

/// What the scanner must read from each matched file for a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Digest,
    Text,
    Nothing,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    app: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    ignore_keys: Vec<String>,
    #[serde(default, rename = "resource")]
    resources: Vec<RuleFile>,
    /// Skipped when empty so that a profile's id is what it was before scopes existed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    scopes: std::collections::BTreeMap<String, ScopeFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeFile {
    #[serde(default)]
    classes: Vec<ResourceClass>,
    #[serde(default)]
    paths: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    class: ResourceClass,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    format: Option<ConfigFormat>,
    #[serde(default)]
    keys: Option<KeyStyle>,
    #[serde(default)]
    contribute: Option<Contribution>,
    #[serde(default)]
    ignore_keys: Vec<String>,
    #[serde(default)]
    vars: Vec<String>,
    #[serde(default)]
    reads_after: Vec<String>,
    #[serde(default)]
    accumulate: Vec<String>,
    #[serde(default)]
    section_groups: std::collections::BTreeMap<String, Vec<String>>,
}

/// A parsed, validated profile with its globs compiled.
#[derive(Debug, Clone)]
pub struct Profile {
    app: String,
    description: String,
    id: Digest,
    rules: Vec<Rule>,
    ignore_keys: GlobSet,
    scopes: Vec<(String, Scope)>,
}

/// One include pattern, with the directory a walk for it starts from.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    base: String,
    max_depth: Option<usize>,
    matcher: GlobMatcher,
}

impl Pattern {
    fn compile(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("include pattern `{text}` must be an absolute path"));
        }
        if text.split('/').any(|c| c == "..") {
            return Err(format!("include pattern `{text}` must not contain `..`"));
        }
        let matcher = glob(text)?.compile_matcher();
        let components: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
        let literal = components.iter().take_while(|c| !c.contains(['*', '?', '[', '{'])).count();
        let base = format!("/{}", components[..literal].join("/"));
        let max_depth = (!text.contains("**")).then_some(components.len() - literal);
        Ok(Pattern { text: text.to_string(), base, max_depth, matcher })
    }

    /// The pattern as the vendor wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The longest literal directory (or file) the pattern starts with.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// How many levels below `base` a match can lie; `None` for `**` patterns.
    pub fn max_depth(&self) -> Option<usize> {
        self.max_depth
    }

    pub fn matches(&self, path: &str) -> bool {
        self.matcher.is_match(path)
    }
}

/// One `[[resource]]` of a profile.
#[derive(Debug, Clone)]
pub struct Rule {
    pub class: ResourceClass,
    pub name: Option<String>,
    pub contribute: Contribution,
    pub format: ConfigFormat,
    pub keys: KeyStyle,
    pub vars: Vec<String>,
    /// Files the application reads after each matched config file without being told
    /// to, as patterns relative to that file's directory (PHP's `conf.d/*.ini`).
    pub reads_after: Vec<String>,
    /// Options that accumulate rather than the last one winning (`extension`).
    accumulate: GlobSet,
    /// INI sections one program reads alike, by the name they are counted under.
    section_groups: Vec<(String, GlobSet)>,
    patterns: Vec<Pattern>,
    exclude_paths: GlobSet,
    exclude_names: GlobSet,
    ignore_keys: GlobSet,
}

impl Rule {
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn is_excluded(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        self.exclude_paths.is_match(path) || self.exclude_names.is_match(name)
    }

    pub fn need(&self) -> Need {
        match self.contribute {
            Contribution::Digest => Need::Digest,
            Contribution::Parsed => Need::Text,
            Contribution::Presence | Contribution::Names | Contribution::None => Need::Nothing,
        }
    }

    pub(crate) fn ignores_key(&self, key: &str) -> bool {
        self.ignore_keys.is_match(key)
    }

    pub(crate) fn accumulates(&self, key: &str) -> bool {
        self.accumulate.is_match(key)
    }

    /// `key` with its INI `section` replaced by the name of the group it belongs to,
    /// if any: MariaDB's server reads `[mysqld]`, `[server]` and `[mariadbd]` alike,
    /// so an option moved between them is the same option.
    pub(crate) fn grouped_key(&self, key: &str, section: &str) -> String {
        let Some(rest) = key.strip_prefix(section).and_then(|r| r.strip_prefix('.')) else { return key.to_string() };
        match self.section_groups.iter().find(|(_, globs)| !section.is_empty() && globs.is_match(section)) {
            Some((name, _)) => format!("{name}.{rest}"),
            None => key.to_string(),
        }
    }
}

/// Path globs: `*` stays within one path component, `**` crosses them.
fn glob(text: &str) -> Result<Glob, String> {
    GlobBuilder::new(text).literal_separator(true).build().map_err(|e| e.to_string())
}

fn glob_set<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Result<GlobSet, (String, String)> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(glob(p).map_err(|e| (p.clone(), e))?);
    }
    b.build().map_err(|e| (String::new(), e.to_string()))
}

fn parse_scopes(files: &std::collections::BTreeMap<String, ScopeFile>) -> Result<Vec<(String, Scope)>, ProfileError> {
    if files.len() > MAX_PROFILE_SCOPES {
        return Err(ProfileError::Scope {
            name: files.keys().nth(MAX_PROFILE_SCOPES).cloned().unwrap_or_default(),
            problem: format!("a profile declares at most {MAX_PROFILE_SCOPES} scopes"),
        });
    }
    let mut scopes: Vec<(String, Scope)> = Vec::with_capacity(files.len());
    for (name, f) in files {
        let fail = |problem: String| ProfileError::Scope { name: name.clone(), problem };
        validate_app_name(name).map_err(|_| fail("a scope's name is 1-64 chars of a-z 0-9 - _".into()))?;
        if f.classes.is_empty() && f.paths.is_empty() {
            return Err(fail("names no class and no path, so it keeps every item: leave it out".into()));
        }
        let scope = Scope { classes: f.classes.clone(), paths: f.paths.clone() };
        scope.validate().map_err(fail)?;
        if let Some((other, _)) = scopes.iter().find(|(_, s)| s.id() == scope.id()) {
            return Err(fail(format!("is the same scope as `{other}`")));
        }
        scopes.push((name.clone(), scope));
    }
    Ok(scopes)
}

/// Key globs: config keys are not paths, so `*` matches any run of characters
/// (`*errorlog` covers `errorlog` and `virtualhost[*:80]/errorlog`).
fn key_glob_set<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Result<GlobSet, (String, String)> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(GlobBuilder::new(p).literal_separator(false).build().map_err(|e| (p.clone(), e.to_string()))?);
    }
    b.build().map_err(|e| (String::new(), e.to_string()))
}

impl Profile {
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Toml(e.to_string()))?;
        validate_app_name(&file.app).map_err(ProfileError::App)?;
        let ignore_keys = key_glob_set(&file.ignore_keys).map_err(|(p, e)| ProfileError::IgnoreKey(p, e))?;
        let mut rules = Vec::with_capacity(file.resources.len());
        for (index, r) in file.resources.iter().enumerate() {
            let fail = |problem: String| ProfileError::Rule { index, class: r.class, problem };
            let contribute = r.contribute.unwrap_or(Contribution::default_for(r.class));
            if r.class == ResourceClass::Env {
                if r.vars.is_empty() || !r.include.is_empty() {
                    return Err(fail("env resources list `vars` and no `include`".into()));
                }
            } else {
                if r.include.is_empty() {
                    return Err(fail("needs at least one `include` pattern".into()));
                }
                if !r.vars.is_empty() {
                    return Err(fail("`vars` belongs to env resources only".into()));
                }
            }
            if r.class == ResourceClass::Dependent && r.name.as_deref().unwrap_or("").is_empty() {
                return Err(fail("dependent applications need a `name`".into()));
            }
            let patterns =
                r.include.iter().map(|p| Pattern::compile(p)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
            let (names, paths): (Vec<&String>, Vec<&String>) = r.exclude.iter().partition(|p| !p.contains('/'));
            let exclude_paths = glob_set(paths).map_err(|(p, e)| fail(format!("exclude `{p}`: {e}")))?;
            let exclude_names = glob_set(names).map_err(|(p, e)| fail(format!("exclude `{p}`: {e}")))?;
            let ignore = key_glob_set(&r.ignore_keys).map_err(|(p, e)| fail(format!("ignore_keys `{p}`: {e}")))?;
            let accumulate = key_glob_set(&r.accumulate).map_err(|(p, e)| fail(format!("accumulate `{p}`: {e}")))?;
            if (!r.reads_after.is_empty() || !r.accumulate.is_empty() || !r.section_groups.is_empty())
                && contribute != Contribution::Parsed
            {
                return Err(fail(
                    "`reads_after`, `accumulate` and `section_groups` belong to parsed config resources".into(),
                ));
            }
            let mut section_groups = Vec::new();
            for (name, globs) in &r.section_groups {
                let set = key_glob_set(globs).map_err(|(p, e)| fail(format!("section_groups.{name} `{p}`: {e}")))?;
                section_groups.push((name.clone(), set));
            }
            if let Some(p) = r.reads_after.iter().find(|p| p.split('/').any(|c| c == "..")) {
                return Err(fail(format!("reads_after `{p}` must not contain `..`")));
            }
            rules.push(Rule {
                class: r.class,
                name: r.name.clone(),
                contribute,
                format: r.format.unwrap_or(ConfigFormat::Auto),
                keys: r.keys.unwrap_or(KeyStyle::Exact),
                vars: r.vars.clone(),
                reads_after: r.reads_after.clone(),
                accumulate,
                section_groups,
                patterns,
                exclude_paths,
                exclude_names,
                ignore_keys: ignore,
            });
        }
        // The id covers the parsed profile, so reformatting the TOML does not change it
        // but any rule change does: nodes on different profile revisions never share a
        // cluster key.
        let id = Digest::of(&crate::wire::encode(&file).map_err(|e| ProfileError::Toml(e.to_string()))?);
        let scopes = parse_scopes(&file.scopes)?;
        Ok(Profile { app: file.app, description: file.description, id, rules, ignore_keys, scopes })
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn id(&self) -> Digest {
        self.id
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The scopes a release of this app may be staged over (`[scopes.NAME]`), by name.
    pub fn scopes(&self) -> &[(String, Scope)] {
        &self.scopes
    }

    pub fn scope(&self, name: &str) -> Option<&Scope> {
        self.scopes.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    pub(crate) fn ignores_key(&self, key: &str) -> bool {
        self.ignore_keys.is_match(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compiles() {
        let p = Profile::parse(
            r#"
            app = "web"
            [[resource]]
            class = "config"
            include = ["/etc/apache2/sites-enabled/*.conf"]
            format = "apache"
            [[resource]]
            class = "data"
            include = ["/var/www/**"]
            exclude = ["*.html", "/var/www/tmp/**"]
            [[resource]]
            class = "env"
            vars = ["TZ"]
            "#,
        )
        .unwrap();
        assert_eq!(p.app(), "web");
        let conf = &p.rules()[0].patterns()[0];
        assert_eq!(conf.base(), "/etc/apache2/sites-enabled");
        assert_eq!(conf.max_depth(), Some(1));
        assert!(conf.matches("/etc/apache2/sites-enabled/a.conf"));
        assert!(!conf.matches("/etc/apache2/sites-enabled/x/a.conf"));
        let data = &p.rules()[1];
        assert_eq!(data.patterns()[0].max_depth(), None);
        assert!(data.is_excluded("/var/www/site/index.html"));
        assert!(data.is_excluded("/var/www/tmp/x.bin"));
        assert!(!data.is_excluded("/var/www/site/app.php"));
        assert_eq!(data.need(), Need::Nothing);
    }

    #[test]
    fn id_ignores_formatting_not_content() {
        let a = Profile::parse("app = \"x\"\n[[resource]]\nclass = \"library\"\ninclude = [\"/lib/a.so\"]\n").unwrap();
        let b = Profile::parse("app=\"x\"\n\n# c\n[[resource]]\nclass=\"library\"\ninclude=[ \"/lib/a.so\" ]").unwrap();
        let c = Profile::parse("app = \"x\"\n[[resource]]\nclass = \"library\"\ninclude = [\"/lib/b.so\"]\n").unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn a_profile_declares_the_scopes_its_releases_may_be_staged_over() {
        let base = "app = \"x\"\n[[resource]]\nclass = \"library\"\ninclude = [\"/lib/a.so\"]\n";
        let p = Profile::parse(&format!(
            "{base}[scopes.client]\nclasses = [\"library\"]\n[scopes.php]\npaths = [\"/usr/lib/php/**\"]\n"
        ))
        .unwrap();
        assert_eq!(p.scopes().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["client", "php"]);
        assert_eq!(p.scope("client").unwrap().classes, [ResourceClass::Library]);
        assert!(p.scope("nope").is_none());
        // Scopes are part of what nodes agree on, so they are in the id; a profile
        // without them keeps the id it had before scopes existed.
        assert_ne!(p.id(), Profile::parse(base).unwrap().id());
        let e = |t: &str| Profile::parse(&format!("{base}{t}")).unwrap_err().to_string();
        assert!(e("[scopes.all]\n").contains("keeps every item"));
        assert!(e("[scopes.rel]\npaths = [\"usr/lib\"]\n").contains("absolute"));
        assert!(e("[scopes.\"Bad Name\"]\nclasses = [\"library\"]\n").contains("scope `Bad Name`"));
        assert!(e("[scopes.a]\nclasses = [\"library\"]\n[scopes.b]\nclasses = [\"library\"]\n").contains("same scope"));
        assert!(e("[scopes.a]\nclases = [\"library\"]\n").contains("TOML"));
        let many: String = (0..=MAX_PROFILE_SCOPES).map(|i| format!("[scopes.s{i}]\npaths = [\"/p{i}\"]\n")).collect();
        assert!(e(&many).contains("at most"));
    }

    #[test]
    fn errors_are_clear() {
        let e = |t: &str| Profile::parse(t).unwrap_err().to_string();
        assert!(e("app = ").contains("TOML"));
        assert!(e("app = \"Bad Name\"").contains("app name"));
        assert!(e("app = \"x\"\n[[resource]]\nclass = \"library\"\ninclude = [\"lib/a\"]").contains("absolute"));
        assert!(e("app = \"x\"\n[[resource]]\nclass = \"library\"\ninclude = [\"/a/[\"]").contains("resource #0"));
        assert!(e("app = \"x\"\n[[resource]]\nclass = \"env\"").contains("vars"));
        assert!(e("app = \"x\"\n[[resource]]\nclass = \"dependent\"\ninclude = [\"/usr/bin/php\"]").contains("name"));
        assert!(e("app = \"x\"\n[[resource]]\nclass = \"weird\"\ninclude = [\"/a\"]").contains("TOML"));
        assert!(e("app = \"x\"\nbogus = 1").contains("TOML"));
    }
}
