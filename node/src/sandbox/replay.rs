//! Comparing the old and the new version's outputs on one recorded input (MonDe-style):
//! line by line, after dropping the fields the vendor says may differ (timings, ids).

/// The first place where two outputs differ: each side's line number (1-based, in the
/// unfiltered output) and text, or `None` where that output had already ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub old: Option<(usize, String)>,
    pub new: Option<(usize, String)>,
}

impl Difference {
    pub fn describe(&self) -> String {
        fn side(label: &str, s: &Option<(usize, String)>) -> String {
            match s {
                Some((n, text)) => format!("  {label} line {n}: {text}"),
                None => format!("  {label}: (output ended)"),
            }
        }
        format!("{}\n{}", side("old", &self.old), side("new", &self.new))
    }
}

/// The key of a `key=value` or `key: value` line, if the line is one.
fn field_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let eq = t.find('=');
    let colon = t.find(": ").or_else(|| t.strip_suffix(':').map(|s| s.len()));
    let pos = match (eq, colon) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let key = t[..pos].trim_end();
    (!key.is_empty()).then_some(key)
}

/// The lines that take part in the comparison, with their 1-based line numbers.
fn compared_lines<'a>(text: &'a str, ignore_fields: &'a [String]) -> impl Iterator<Item = (usize, &'a str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(move |(_, l)| !field_key(l).is_some_and(|k| ignore_fields.iter().any(|f| f == k)))
}

/// `None` if the outputs agree once ignored fields are dropped.
pub fn first_difference(old: &str, new: &str, ignore_fields: &[String]) -> Option<Difference> {
    let mut a = compared_lines(old, ignore_fields);
    let mut b = compared_lines(new, ignore_fields);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (Some((_, x)), Some((_, y))) if x == y => continue,
            (x, y) => {
                let own = |s: Option<(usize, &str)>| s.map(|(n, t)| (n, t.to_string()));
                return Some(Difference { old: own(x), new: own(y) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(fields: &[&str]) -> Vec<String> {
        fields.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn field_keys() {
        assert_eq!(field_key("elapsed=12ms"), Some("elapsed"));
        assert_eq!(field_key("  elapsed: 12 ms"), Some("elapsed"));
        assert_eq!(field_key("started: 10:20:30"), Some("started"));
        assert_eq!(field_key("empty:"), Some("empty"));
        assert_eq!(field_key("http://x"), None);
        assert_eq!(field_key("plain text"), None);
        assert_eq!(field_key("=value"), None);
    }

    #[test]
    fn ignored_fields_may_differ_others_may_not() {
        let old = "rows: 3\nelapsed=10ms\nid: 7\nok";
        let new = "rows: 3\nelapsed=99ms\nid: 8\nok";
        assert_eq!(first_difference(old, new, &ignore(&["elapsed", "id"])), None);
        let d = first_difference(old, new, &ignore(&["elapsed"])).unwrap();
        assert_eq!(d.old, Some((3, "id: 7".into())));
        assert_eq!(d.new, Some((3, "id: 8".into())));
        assert!(d.describe().contains("old line 3: id: 7"));
    }

    #[test]
    fn a_missing_or_extra_line_is_a_difference() {
        let d = first_difference("a\nb", "a", &[]).unwrap();
        assert_eq!(d, Difference { old: Some((2, "b".into())), new: None });
        // An ignored line present on one side only is not a difference.
        assert_eq!(first_difference("a\nelapsed=1\nb", "a\nb", &ignore(&["elapsed"])), None);
        // A field that merely contains an ignored name is compared.
        assert!(first_difference("elapsed_total=1", "elapsed_total=2", &ignore(&["elapsed"])).is_some());
    }
}
