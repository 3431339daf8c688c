//! Goals: what counts as a conversion on a site. A goal is an event name or a
//! page path pattern (`*` matches any characters), optionally with property
//! values that must all be equal. Defined in config (`[[sites.goals]]`) or
//! through the query API; checked here once for both.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// The event name of a page view (as the rollups count them).
pub const PAGEVIEW: &str = "pageview";

/// Longest goal name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest event name or path pattern a goal may name, in characters.
pub const MAX_TARGET_CHARS: usize = 1024;
/// Most property conditions on one goal.
pub const MAX_PROPS: usize = 16;
/// Longest property key and value of a condition, in characters.
pub const MAX_PROP_KEY_CHARS: usize = 64;
pub const MAX_PROP_VALUE_CHARS: usize = 256;

/// One goal of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// How the goal is shown and asked for (`goal==Signup`, `goal:Signup`).
    pub name: String,
    /// The event that completes the goal (exclusive with `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The page whose view completes the goal; `*` matches any characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Properties the completing event must carry, each with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: BTreeMap<String, String>,
}

/// Whether `key` may name a custom property in a query: 1–64 characters of
/// `[A-Za-z0-9_.:$-]`, so it can be written into SQL as a plain literal.
pub fn is_valid_prop_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_PROP_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:$-".contains(&b))
}

impl Goal {
    /// Everything wrong with this goal, each naming the goal and the field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = &self.name;
        if name.trim().is_empty()
            || name.trim() != name
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            problems.push(format!(
                "goal {name:?}: the name must be 1 to {MAX_NAME_CHARS} characters, without control characters or spaces around it"
            ));
        }
        match (&self.event, &self.path) {
            (Some(_), Some(_)) | (None, None) => problems.push(format!(
                "goal {name:?}: give exactly one of event (an event name) or path (a page path pattern)"
            )),
            (Some(event), None) => {
                if event.is_empty() || event.chars().count() > MAX_TARGET_CHARS {
                    problems.push(format!(
                        "goal {name:?}: event must be 1 to {MAX_TARGET_CHARS} characters"
                    ));
                }
            }
            (None, Some(path)) => {
                if !path.starts_with('/') && !path.starts_with('*') {
                    problems.push(format!(
                        "goal {name:?}: path {path:?} must start with / or * (e.g. /pricing or /blog/*)"
                    ));
                }
                if path.chars().count() > MAX_TARGET_CHARS {
                    problems.push(format!(
                        "goal {name:?}: path must be at most {MAX_TARGET_CHARS} characters"
                    ));
                }
            }
        }
        if self.props.len() > MAX_PROPS {
            problems.push(format!(
                "goal {name:?}: at most {MAX_PROPS} property conditions"
            ));
        }
        for (key, value) in &self.props {
            if !is_valid_prop_key(key) {
                problems.push(format!(
                    "goal {name:?}: property key {key:?} must be 1 to {MAX_PROP_KEY_CHARS} characters of A-Z a-z 0-9 _ . : $ -"
                ));
            }
            if value.chars().count() > MAX_PROP_VALUE_CHARS {
                problems.push(format!(
                    "goal {name:?}: the value of property {key:?} must be at most {MAX_PROP_VALUE_CHARS} characters"
                ));
            }
        }
        problems
    }

    /// The part of a store key that names this goal: see [`key_part`].
    pub fn key_part(&self) -> String {
        key_part(&self.name)
    }
}

/// `name` as one token of a NATS KV key, one to one: ASCII letters, digits,
/// `-` and `_` are kept, every other byte is written `=XX` (hex), so names that
/// differ only in spaces or punctuation never share a key.
pub fn key_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// A path pattern as an anchored regular expression (Rust `regex` syntax):
/// `*` is any characters, everything else is itself.
pub fn path_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => out.push_str(".*"),
            // The `regex` crate's meta characters: escaping them is always valid.
            '\\' | '.' | '+' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' | '#'
            | '&' | '-' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('$');
    out
}

/// Whether `path` matches the pattern (`*` = any characters), without a regex:
/// the reference the tests and config checks use.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == path;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !path.starts_with(first) || path.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &path[first.len()..path.len() - last.len()];
    if !path.ends_with(last) {
        return false;
    }
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Everything wrong with one site's goals: each goal's problems and names used twice.
pub fn goals_problems(site: &str, goals: &[Goal]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for goal in goals {
        problems.extend(
            goal.problems()
                .into_iter()
                .map(|p| format!("sites.{site}.goals: {p}")),
        );
        if !names.insert(goal.name.as_str()) {
            problems.push(format!(
                "sites.{site}.goals: goal {:?} is defined twice",
                goal.name
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal(name: &str, event: Option<&str>, path: Option<&str>) -> Goal {
        Goal {
            name: name.into(),
            event: event.map(Into::into),
            path: path.map(Into::into),
            props: BTreeMap::new(),
        }
    }

    #[test]
    fn good_goals_have_no_problems() {
        assert!(goal("Signup", Some("signup"), None).problems().is_empty());
        assert!(
            goal("Pricing", None, Some("/pricing*"))
                .problems()
                .is_empty()
        );
        let mut g = goal("Pro purchase", Some("purchase"), None);
        g.props.insert("plan".into(), "pro".into());
        assert!(g.problems().is_empty());
    }

    #[test]
    fn each_problem_names_the_goal_and_the_field() {
        let cases = [
            (goal("", Some("x"), None), "name"),
            (goal(" padded", Some("x"), None), "name"),
            (goal("both", Some("x"), Some("/x")), "exactly one"),
            (goal("neither", None, None), "exactly one"),
            (goal("relative", None, Some("pricing")), "must start with"),
            (goal("empty event", Some(""), None), "event must be"),
        ];
        for (g, says) in cases {
            let problems = g.problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains(says), "{problems:?}");
        }
        let mut g = goal("bad prop", Some("x"), None);
        g.props.insert("no spaces".into(), "v".into());
        assert!(g.problems()[0].contains("property key"));
        let twice = [goal("a", Some("x"), None), goal("a", Some("y"), None)];
        assert!(goals_problems("shop", &twice)[0].contains("defined twice"));
    }

    #[test]
    fn key_parts_are_one_to_one_and_valid_kv_tokens() {
        assert_eq!(key_part("Signup"), "Signup");
        assert_eq!(key_part("Sign up"), "Sign=20up");
        assert_ne!(key_part("Sign up"), key_part("Sign_up"));
        assert_ne!(key_part("a=20"), key_part("a "));
        assert_eq!(key_part("é"), "=C3=A9");
        assert!(
            key_part("/pricing.* ok?")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
        );
    }

    #[test]
    fn path_patterns_match_as_wildcards() {
        let cases = [
            ("/pricing", "/pricing", true),
            ("/pricing", "/pricing/x", false),
            ("/pricing*", "/pricing/x", true),
            ("/blog/*/edit", "/blog/a/b/edit", true),
            ("/blog/*/edit", "/blog/edit", false),
            ("*", "/anything", true),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/acb", false),
            ("/a.b", "/axb", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(path_matches(pattern, path), expected, "{pattern} {path}");
        }
        assert_eq!(path_regex("/a.b*"), "^/a\\.b.*$");
        assert_eq!(path_regex("/x-(1)"), "^/x\\-\\(1\\)$");
    }
}
