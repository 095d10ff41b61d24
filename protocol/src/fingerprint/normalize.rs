//! Host-specific noise that must not split clusters (the ImageElves "cross-difference"
//! idea): hostnames, IP and MAC addresses, machine ids, UUIDs and timestamps in values
//! are replaced by placeholders that say what kind of value stood there.
//!
//! The kind of an address is kept where it changes behaviour: binding to loopback or to
//! every interface is a real configuration difference; which LAN address a host has is not.

use std::net::{IpAddr, SocketAddr};

/// Facts about the scanned machine that identify it and so must be normalized away.
#[derive(Clone, Debug, Default)]
pub struct HostContext {
    names: Vec<String>,
    machine_id: Option<String>,
}

impl HostContext {
    /// `hostname` may be a short name or a fully qualified one; both forms are matched.
    pub fn new(hostname: Option<&str>, machine_id: Option<&str>) -> Self {
        let mut names = Vec::new();
        if let Some(h) = hostname.map(str::trim).filter(|h| !h.is_empty()) {
            let h = h.to_lowercase();
            if let Some((short, _)) = h.split_once('.') {
                names.push(short.to_string());
            }
            names.push(h);
        }
        HostContext { names, machine_id: machine_id.map(|m| m.trim().to_lowercase()).filter(|m| !m.is_empty()) }
    }

    fn is_own_name(&self, token: &str) -> bool {
        let t = token.trim_end_matches('.').to_lowercase();
        self.names.contains(&t)
    }
}

/// Option names whose values are per-host by nature. Compared on the last key segment,
/// lowercased, with `_` as `-`.
const HOST_SPECIFIC_KEYS: &[&str] = &[
    "hostname",
    "host-name",
    "servername",
    "server-name",
    "serveralias",
    "fqdn",
    "machine-id",
    "server-id",
    "server-uuid",
    "report-host",
    "nodename",
    "node-name",
];

/// Whether `key` (a full item key such as `mysqld.server_id`) names a per-host value.
pub fn is_host_specific_key(key: &str) -> bool {
    let last = key.rsplit(['.', '/']).next().unwrap_or(key).to_lowercase().replace('_', "-");
    HOST_SPECIFIC_KEYS.contains(&last.as_str())
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '"' | '\'' | '(' | ')' | '<' | '>' | '[' | ']' | '=' | '@' | '/' | '|')
}

/// Strips one level of matching quotes, collapses whitespace, and replaces host-specific
/// tokens with placeholders.
pub fn normalize_value(value: &str, host: &HostContext) -> String {
    let v = value.trim();
    let v = ['"', '\''].iter().find_map(|q| v.strip_prefix(*q).and_then(|s| s.strip_suffix(*q))).unwrap_or(v);
    let v = super::config::collapse_ws(v);
    let mut out = String::with_capacity(v.len());
    let mut token = String::new();
    for c in v.chars() {
        if is_separator(c) {
            out.push_str(&classify(&token, host));
            token.clear();
            out.push(c);
        } else {
            token.push(c);
        }
    }
    out.push_str(&classify(&token, host));
    out
}

/// Replaces a leading own-hostname in a file name (`db7.pid`, `db7-bin.000001`).
pub fn normalize_file_name(path: &str, host: &HostContext) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    for n in &host.names {
        if let Some(rest) = name.strip_prefix(n.as_str()) {
            if rest.is_empty() || rest.starts_with(['.', '-', '_']) {
                return format!("{dir}/<hostname>{rest}");
            }
        }
    }
    path.to_string()
}

fn classify(token: &str, host: &HostContext) -> String {
    if token.is_empty() {
        return String::new();
    }
    if host.is_own_name(token) {
        return "<hostname>".into();
    }
    if let Some(class) = ip_class(token) {
        return class.into();
    }
    if let Ok(sa) = token.parse::<SocketAddr>() {
        return format!("{}:{}", ip_class_of(sa.ip()), sa.port());
    }
    // host:port, with either half host-specific.
    if let Some((h, port)) = token.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') {
            if host.is_own_name(h) {
                return format!("<hostname>:{port}");
            }
            if let Some(class) = ip_class(h) {
                return format!("{class}:{port}");
            }
        }
    }
    let lower = token.to_lowercase();
    if host.machine_id.as_deref() == Some(lower.as_str()) || is_hex(&lower, 32) {
        return "<machine-id>".into();
    }
    if is_uuid(&lower) {
        return "<uuid>".into();
    }
    if is_mac(&lower) {
        return "<mac>".into();
    }
    if is_timestamp(token) {
        return "<timestamp>".into();
    }
    token.to_string()
}

fn ip_class(token: &str) -> Option<&'static str> {
    token.parse::<IpAddr>().ok().map(ip_class_of)
}

fn ip_class_of(ip: IpAddr) -> &'static str {
    if ip.is_loopback() {
        "<ip:loopback>"
    } else if ip.is_unspecified() {
        "<ip:any>"
    } else {
        "<ip>"
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5 && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| is_hex(p, *n))
}

fn is_mac(s: &str) -> bool {
    for sep in [':', '-'] {
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() == 6 && parts.iter().all(|p| is_hex(p, 2)) {
            return true;
        }
    }
    false
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// ISO-8601 / RFC 3339 dates and times: `2024-05-01`, `2024-05-01T10:00:00Z`,
/// `10:00:00`, `10:00:00.123`.
fn is_timestamp(s: &str) -> bool {
    let (date, time) = match s.split_once(['T', 't']) {
        Some((d, t)) => (Some(d), Some(t)),
        None if s.contains('-') => (Some(s), None),
        None => (None, Some(s)),
    };
    let date_ok = date.map(|d| {
        let p: Vec<&str> = d.split('-').collect();
        p.len() == 3 && digits(p[0], 4) && digits(p[1], 2) && digits(p[2], 2)
    });
    let time_ok = time.map(|t| {
        let t = t.trim_end_matches(['Z', 'z']);
        let t = t.split(['+', '-']).next().unwrap_or(t);
        let t = t.split(['.', ',']).next().unwrap_or(t);
        let p: Vec<&str> = t.split(':').collect();
        p.len() == 3 && p.iter().all(|x| digits(x, 2))
    });
    match (date_ok, time_ok) {
        (Some(d), Some(t)) => d && t,
        (Some(d), None) => d,
        (None, Some(t)) => t,
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostContext {
        HostContext::new(Some("db7.example.org"), Some("0123456789abcdef0123456789abcdef"))
    }

    #[test]
    fn addresses_keep_their_kind() {
        let h = host();
        assert_eq!(normalize_value("192.168.1.7", &h), "<ip>");
        assert_eq!(normalize_value("10.0.0.9", &h), "<ip>");
        assert_eq!(normalize_value("127.0.0.1", &h), "<ip:loopback>");
        assert_eq!(normalize_value("0.0.0.0", &h), "<ip:any>");
        assert_eq!(normalize_value("fe80::1", &h), "<ip>");
        assert_eq!(normalize_value("[::1]:3306", &h), "[<ip:loopback>]:3306");
        assert_eq!(normalize_value("10.1.2.3:8080", &h), "<ip>:8080");
        assert_eq!(normalize_value("a, 10.1.2.3,b", &h), "a, <ip>,b");
    }

    #[test]
    fn host_identity_is_removed() {
        let h = host();
        assert_eq!(normalize_value("db7", &h), "<hostname>");
        assert_eq!(normalize_value("DB7.example.org", &h), "<hostname>");
        assert_eq!(normalize_value("http://db7.example.org:80/x", &h), "http://<hostname>:80/x");
        assert_eq!(normalize_value("0123456789ABCDEF0123456789ABCDEF", &h), "<machine-id>");
        assert_eq!(normalize_value("123e4567-e89b-12d3-a456-426614174000", &h), "<uuid>");
        assert_eq!(normalize_value("00:1A:2b:3c:4d:5e", &h), "<mac>");
        assert_eq!(normalize_value("started 2024-05-01T10:00:00Z", &h), "started <timestamp>");
        assert_eq!(normalize_value("2024-05-01 10:00:00.5", &h), "<timestamp> <timestamp>");
    }

    #[test]
    fn ordinary_values_survive() {
        let h = host();
        for v in ["3306", "utf8mb4", "/var/lib/mysql", "1073741824", "128M", "On", "a-b-c", "1.2.3"] {
            assert_eq!(normalize_value(v, &h), v);
        }
        assert_eq!(normalize_value("  \"quoted  value\" ", &h), "quoted value");
    }

    #[test]
    fn host_specific_keys() {
        assert!(is_host_specific_key("mysqld.server_id"));
        assert!(is_host_specific_key("virtualhost[*:80]/servername"));
        assert!(is_host_specific_key("ServerName"));
        assert!(!is_host_specific_key("mysqld.port"));
    }

    #[test]
    fn file_names() {
        let h = host();
        assert_eq!(normalize_file_name("/var/lib/mysql/db7.pid", &h), "/var/lib/mysql/<hostname>.pid");
        assert_eq!(normalize_file_name("/var/lib/mysql/db7-bin.01", &h), "/var/lib/mysql/<hostname>-bin.01");
        assert_eq!(normalize_file_name("/var/lib/mysql/db70.pid", &h), "/var/lib/mysql/db70.pid");
    }
}
