//! Configuration files parsed into key/value items, so that comments, blank lines,
//! whitespace and line order do not change a fingerprint but a changed value does.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigFormat {
    /// Chosen from the file name and contents.
    Auto,
    /// `[section]` headers and `key = value` lines (my.cnf, php.ini). A bare `key` is a
    /// flag (`skip-external-locking`); `!include` and `!includedir` are followed.
    Ini,
    /// `key = value` or `key value` lines (sshd_config, many daemons); `Include` is
    /// followed.
    KeyValue,
    /// php.ini and its scan directory: INI lines, but sections only group the file for
    /// readers (every directive is global, except in `[PATH=...]` and `[HOST=...]`),
    /// and `extension` / `zend_extension` accumulate.
    Php,
    /// Apache httpd: `Directive args` lines inside nested `<Section args>` blocks;
    /// `Include` and `IncludeOptional` are followed, relative to `ServerRoot`.
    Apache,
}

/// How option names compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStyle {
    Exact,
    Lowercase,
    /// MySQL: case-insensitive, and `-` and `_` are the same in option names.
    Mysql,
}

impl KeyStyle {
    pub fn apply(self, key: &str) -> String {
        match self {
            KeyStyle::Exact => key.to_string(),
            KeyStyle::Lowercase => key.to_lowercase(),
            KeyStyle::Mysql => key.to_lowercase().replace('_', "-"),
        }
    }
}

/// One setting read from a config file. `key` is dotted for INI (`section.key`) and
/// slash-separated for Apache (`virtualhost[*:80]/documentroot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// The INI `[section]` the setting stood in (also the start of `key`), or empty.
    pub section: String,
}

/// Parses `text` as `format`, as one file on its own: includes it names are reported
/// as missing, not followed (see [`super::chain`] for reading a whole chain).
pub fn parse(format: ConfigFormat, path: &str, text: &str, section_args: &dyn Fn(&str) -> String) -> Vec<Setting> {
    let mut source = super::chain::MemorySource::default();
    source.insert(path, text);
    let chain = super::chain::resolve(format, path, &[], &mut source, section_args);
    chain.settings.into_iter().map(|s| s.setting).collect()
}

pub(crate) fn resolve(format: ConfigFormat, path: &str, text: &str) -> ConfigFormat {
    if format != ConfigFormat::Auto {
        return format;
    }
    let lower = path.to_lowercase();
    if lower.ends_with(".cnf") || lower.ends_with(".ini") {
        return ConfigFormat::Ini;
    }
    let lines = || text.lines().map(str::trim);
    if lower.contains("apache") || lower.contains("httpd") || lines().any(|l| l.starts_with("</")) {
        return ConfigFormat::Apache;
    }
    if lines().any(|l| l.starts_with('[') && l.ends_with(']')) {
        return ConfigFormat::Ini;
    }
    ConfigFormat::KeyValue
}

/// Drops a trailing `# ...` or `; ...` comment that follows whitespace, outside quotes.
fn strip_inline_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_ws = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if (c == '#' || c == ';') && prev_ws => return line[..i].trim_end(),
            None => {}
        }
        prev_ws = c.is_whitespace();
    }
    line
}

fn is_comment(line: &str) -> bool {
    line.is_empty() || line.starts_with('#') || line.starts_with(';')
}

/// One meaningful line of a config file, before includes are followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// INI `[section]`.
    Section(String),
    /// INI `!name arg` (`!include`, `!includedir`).
    Bang { name: String, arg: String },
    /// Apache `<Name args>`, as `name[args]` with the args normalized.
    Open(String),
    /// Apache `</Name>`.
    Close(String),
    /// A setting: INI `key = value` (without its section), `key value`, or an Apache
    /// directive (`name` lowercased).
    Entry { key: String, value: String },
}

pub(crate) fn tokenize(format: ConfigFormat, text: &str, section_args: &dyn Fn(&str) -> String) -> Vec<Token> {
    match format {
        ConfigFormat::Ini | ConfigFormat::Php => tokenize_ini(text),
        ConfigFormat::Apache => tokenize_apache(text, section_args),
        _ => tokenize_key_value(text),
    }
}

fn tokenize_ini(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = strip_inline_comment(raw.trim());
        if is_comment(line) {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            out.push(Token::Section(line[1..line.len() - 1].trim().to_string()));
            continue;
        }
        if let Some(directive) = line.strip_prefix('!') {
            let (name, arg) = directive.split_once(char::is_whitespace).unwrap_or((directive, ""));
            out.push(Token::Bang { name: name.to_string(), arg: arg.trim().to_string() });
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        out.push(Token::Entry { key: key.to_string(), value: value.to_string() });
    }
    out
}

fn tokenize_key_value(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = strip_inline_comment(raw.trim());
        if is_comment(line) {
            continue;
        }
        let eq = line.find('=');
        let ws = line.find(char::is_whitespace);
        let (key, value) = match (eq, ws) {
            (Some(e), Some(w)) if e < w || line[..e].trim_end().find(char::is_whitespace).is_none() => {
                (&line[..e], &line[e + 1..])
            }
            (Some(e), None) => (&line[..e], &line[e + 1..]),
            (_, Some(w)) => (&line[..w], &line[w..]),
            (None, None) => (line, ""),
        };
        out.push(Token::Entry { key: key.trim().to_string(), value: value.trim().to_string() });
    }
    out
}

fn tokenize_apache(text: &str, section_args: &dyn Fn(&str) -> String) -> Vec<Token> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        // A trailing backslash continues the directive on the next line.
        if let Some(cont) = trimmed.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let line = std::mem::take(&mut pending);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(close) = line.strip_prefix("</") {
            out.push(Token::Close(close.trim_end_matches('>').trim().to_lowercase()));
            continue;
        }
        if let Some(open) = line.strip_prefix('<') {
            let inner = open.trim_end_matches('>').trim();
            let (name, args) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
            let args = section_args(&collapse_ws(args));
            out.push(Token::Open(format!("{}[{}]", name.to_lowercase(), args)));
            continue;
        }
        let (name, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        out.push(Token::Entry { key: name.to_lowercase(), value: collapse_ws(args) });
    }
    out
}

pub(crate) fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &[Setting]) -> Vec<(String, String)> {
        let mut v: Vec<_> = s.iter().map(|s| (s.key.clone(), s.value.clone())).collect();
        v.sort();
        v
    }

    fn ident(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn ini_sections_flags_comments_includes() {
        let text = "# top\n[mysqld]\nport = 3306   # the port\nskip-external-locking\n; c\n\n[client]\nsocket=/run/mysqld.sock\n!includedir /etc/mysql/conf.d/\n";
        assert_eq!(
            kv(&parse(ConfigFormat::Ini, "/etc/mysql/my.cnf", text, &ident)),
            vec![
                ("client.socket".into(), "/run/mysqld.sock".into()),
                ("mysqld.port".into(), "3306".into()),
                ("mysqld.skip-external-locking".into(), "".into()),
            ]
        );
    }

    #[test]
    fn key_value_both_forms() {
        let text = "Port 22\nPermitRootLogin   no\nmax = 10\nkey=value with spaces\n# x\n";
        assert_eq!(
            kv(&parse(ConfigFormat::KeyValue, "/etc/ssh/sshd_config", text, &ident)),
            vec![
                ("PermitRootLogin".into(), "no".into()),
                ("Port".into(), "22".into()),
                ("key".into(), "value with spaces".into()),
                ("max".into(), "10".into()),
            ]
        );
    }

    #[test]
    fn apache_nested_sections_and_continuations() {
        let text = "ServerRoot \"/etc/apache2\"\n<VirtualHost *:80>\n  DocumentRoot /var/www/html\n  <Directory /var/www>\n    Options Indexes \\\n      FollowSymLinks\n  </Directory>\n</VirtualHost>\nLoadModule php_module /usr/lib/php.so\n";
        assert_eq!(
            kv(&parse(ConfigFormat::Auto, "/etc/apache2/apache2.conf", text, &ident)),
            vec![
                ("loadmodule".into(), "php_module /usr/lib/php.so".into()),
                ("serverroot".into(), "\"/etc/apache2\"".into()),
                ("virtualhost[*:80]/directory[/var/www]/options".into(), "Indexes FollowSymLinks".into()),
                ("virtualhost[*:80]/documentroot".into(), "/var/www/html".into()),
            ]
        );
    }

    #[test]
    fn auto_detection() {
        assert_eq!(resolve(ConfigFormat::Auto, "/etc/php/8.2/php.ini", ""), ConfigFormat::Ini);
        assert_eq!(resolve(ConfigFormat::Auto, "/etc/x.conf", "[a]\nb=c"), ConfigFormat::Ini);
        assert_eq!(resolve(ConfigFormat::Auto, "/etc/x.conf", "<A>\n</A>"), ConfigFormat::Apache);
        assert_eq!(resolve(ConfigFormat::Auto, "/etc/x.conf", "a b"), ConfigFormat::KeyValue);
    }

    #[test]
    fn key_styles() {
        assert_eq!(KeyStyle::Mysql.apply("mysqld.Max_Connections"), "mysqld.max-connections");
        assert_eq!(KeyStyle::Lowercase.apply("A_b"), "a_b");
        assert_eq!(KeyStyle::Exact.apply("A_b"), "A_b");
    }
}
