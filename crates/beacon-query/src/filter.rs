//! The filter language every operation takes (`filters=country==FR|DE;path*=blog`),
//! parsed once into [`Filters`] and turned into SQL predicates over the event
//! store's `events` view. Values only ever reach SQL through [`sql_literal`],
//! dimensions through a fixed table, so no input is ever SQL text.

use std::fmt;

use crate::engine::Params;
use crate::error::QueryError;

/// Longest `~=` pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Compiled-size limit of a `~=` pattern: a hostile pattern is refused, never slow.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Longest property key.
pub const MAX_PROP_KEY: usize = 64;
/// Longest `filters` parameter, in bytes: a question is a few filters, and
/// every value becomes SQL text the engine plans.
pub const MAX_FILTERS_BYTES: usize = 4096;
/// Most filters one question takes (the `filters` parameter and the shorthands).
pub const MAX_FILTERS: usize = 20;
/// Most values one filter takes (joined by `|`).
pub const MAX_FILTER_VALUES: usize = 100;
/// What a dimension reads when an event carries no value (as the rollups count it).
pub const NONE: &str = "(none)";

/// A dimension a filter (or a breakdown) reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Name,
    Path,
    EntryPage,
    ExitPage,
    Referrer,
    ReferrerSource,
    Channel,
    UtmSource,
    UtmMedium,
    UtmCampaign,
    UtmTerm,
    UtmContent,
    Country,
    Region,
    City,
    Browser,
    BrowserVersion,
    Os,
    OsVersion,
    Device,
    /// A custom property, by key.
    Prop(String),
    /// Events that complete one of the site's goals (filters only, `==` and
    /// `!=`; its predicate comes from the [`SqlContext`]'s goals).
    Goal,
}

/// The fixed dimensions: name and the `events` column each reads (`None`:
/// session-level, read from the session's page views).
const FIXED: [(Dim, &str, Option<&str>); 20] = [
    (Dim::Name, "name", Some("name")),
    (Dim::Path, "path", Some("path")),
    (Dim::EntryPage, "entry_page", None),
    (Dim::ExitPage, "exit_page", None),
    (Dim::Referrer, "referrer", Some("referrer_host")),
    (
        Dim::ReferrerSource,
        "referrer_source",
        Some("referrer_source"),
    ),
    (Dim::Channel, "channel", Some("channel")),
    (Dim::UtmSource, "utm_source", Some("utm_source")),
    (Dim::UtmMedium, "utm_medium", Some("utm_medium")),
    (Dim::UtmCampaign, "utm_campaign", Some("utm_campaign")),
    (Dim::UtmTerm, "utm_term", Some("utm_term")),
    (Dim::UtmContent, "utm_content", Some("utm_content")),
    (Dim::Country, "country", Some("country")),
    (Dim::Region, "region", Some("region")),
    (Dim::City, "city", Some("city")),
    (Dim::Browser, "browser", Some("browser")),
    (
        Dim::BrowserVersion,
        "browser_version",
        Some("browser_version"),
    ),
    (Dim::Os, "os", Some("os")),
    (Dim::OsVersion, "os_version", Some("os_version")),
    (Dim::Device, "device", Some("device")),
];

impl Dim {
    /// A dimension by name: a fixed one or `props.<key>`.
    pub fn parse(name: &str) -> Result<Dim, QueryError> {
        if let Some(key) = name.strip_prefix("props.") {
            let ok = (1..=MAX_PROP_KEY).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:$-".contains(&b));
            return if ok {
                Ok(Dim::Prop(key.to_owned()))
            } else {
                Err(QueryError::bad_request(format!(
                    "{name:?}: a property key is 1 to {MAX_PROP_KEY} characters of A-Z a-z 0-9 _ . : $ -"
                )))
            };
        }
        FIXED
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(d, _, _)| d.clone())
            .ok_or_else(|| {
                QueryError::bad_request(format!(
                    "unknown dimension {name:?} (known: {}, props.<key>)",
                    Dim::known()
                ))
            })
    }

    /// The names of the fixed dimensions, for messages.
    pub fn known() -> String {
        FIXED.map(|(_, n, _)| n).join(", ")
    }

    pub fn name(&self) -> String {
        match self {
            Dim::Prop(key) => format!("props.{key}"),
            Dim::Goal => GOAL.to_owned(),
            fixed => FIXED
                .iter()
                .find(|(d, _, _)| d == fixed)
                .map_or_else(String::new, |(_, n, _)| (*n).to_owned()),
        }
    }

    /// Whether it describes a session (its entry or exit page), not an event.
    pub fn is_session(&self) -> bool {
        matches!(self, Dim::EntryPage | Dim::ExitPage)
    }

    /// Its value on a row of `events` as SQL text, `(none)` where absent;
    /// `None` for the session-level dimensions and `goal` (a predicate, not a value).
    pub fn event_sql(&self) -> Option<String> {
        match self {
            Dim::Name => Some("name".to_owned()),
            Dim::Goal => None,
            Dim::Prop(key) => Some(format!(
                "COALESCE(props[{}], {})",
                sql_literal(key),
                sql_literal(NONE)
            )),
            fixed => FIXED
                .iter()
                .find(|(d, _, _)| d == fixed)
                .and_then(|(_, _, column)| *column)
                .map(|column| format!("COALESCE({column}, {})", sql_literal(NONE))),
        }
    }
}

/// How a filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`: any of the values.
    Is,
    /// `!=`: none of the values.
    IsNot,
    /// `*=`: contains any of the values (case-insensitive).
    Contains,
    /// `!*=`: contains none of them.
    NotContains,
    /// `~=`: matches any of the regular expressions (unanchored).
    Matches,
}

/// Operators by their text; longer first, so `!*=` is not read as `!` then `*=`.
const OPS: [(&str, Op); 5] = [
    ("!*=", Op::NotContains),
    ("==", Op::Is),
    ("!=", Op::IsNot),
    ("*=", Op::Contains),
    ("~=", Op::Matches),
];

impl Op {
    pub fn text(self) -> &'static str {
        OPS.iter()
            .find(|(_, op)| *op == self)
            .map_or("", |(t, _)| t)
    }

    fn negated(self) -> bool {
        matches!(self, Op::IsNot | Op::NotContains)
    }
}

/// One filter: a dimension, an operator and the values it is OR-ed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub dim: Dim,
    pub op: Op,
    pub values: Vec<String>,
}

impl Filter {
    /// The predicate over `value` (SQL text of the dimension's value).
    fn sql_over(&self, value: &str) -> String {
        let any = |each: &dyn Fn(&str) -> String| {
            let parts: Vec<String> = self.values.iter().map(|v| each(v)).collect();
            format!("({})", parts.join(" OR "))
        };
        let positive = match self.op {
            Op::Is | Op::IsNot => {
                let list: Vec<String> = self.values.iter().map(|v| sql_literal(v)).collect();
                format!("{value} IN ({})", list.join(", "))
            }
            Op::Contains | Op::NotContains => any(&|v| {
                format!(
                    "strpos(lower({value}), {}) > 0",
                    sql_literal(&v.to_lowercase())
                )
            }),
            Op::Matches => any(&|v| format!("regexp_like({value}, {})", sql_literal(v))),
        };
        if self.op.negated() {
            format!("NOT COALESCE({positive}, FALSE)")
        } else {
            format!("COALESCE({positive}, FALSE)")
        }
    }

    /// Whether `value` passes (for answers computed outside SQL: the rollups).
    pub fn accepts(&self, value: &str) -> bool {
        let any = match self.op {
            Op::Is | Op::IsNot => self.values.iter().any(|v| v == value),
            Op::Contains | Op::NotContains => {
                let value = value.to_lowercase();
                self.values
                    .iter()
                    .any(|v| value.contains(&v.to_lowercase()))
            }
            Op::Matches => self
                .values
                .iter()
                .filter_map(|v| compile(v).ok())
                .any(|r| r.is_match(value)),
        };
        any != self.op.negated()
    }
}

impl fmt::Display for Filter {
    /// Its text in the filter syntax, values escaped: parsing it gives it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<String> = self.values.iter().map(|v| escape(v)).collect();
        write!(
            f,
            "{}{}{}",
            self.dim.name(),
            self.op.text(),
            values.join("|")
        )
    }
}

/// The filter dimension of goals: not a column, so not in [`FIXED`], and not
/// a breakdown dimension (`goals/report` is the goals' breakdown).
pub const GOAL: &str = "goal";

/// What predicates need beyond the filters' text.
#[derive(Debug, Clone, Default)]
pub struct SqlContext {
    /// The site's goals (config and API), for `goal==…`.
    pub goals: Vec<beacon_core::Goal>,
}

impl SqlContext {
    /// The context of `site`'s questions: its goals.
    pub async fn of(node: &crate::QueryNode, site: &str) -> Result<SqlContext, QueryError> {
        let goals = crate::analysis::goals::site_goals(node, site).await?;
        Ok(SqlContext {
            goals: goals.into_iter().map(|(g, _)| g).collect(),
        })
    }

    /// The predicate of a `goal` filter: the event completes any of `names`.
    fn goal_sql(&self, names: &[String]) -> String {
        let parts: Vec<String> = names
            .iter()
            .filter_map(|n| self.goals.iter().find(|g| g.name == *n))
            .map(crate::analysis::goals::goal_sql)
            .collect();
        if parts.is_empty() {
            "FALSE".to_owned()
        } else {
            format!("({})", parts.join(" OR "))
        }
    }
}

/// The filters of a question: all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub list: Vec<Filter>,
}

/// The single-value shorthands (`country=FR`), each `<dim>==<value>`.
fn shorthands(p: &Params) -> [(&'static str, &Option<String>); 15] {
    [
        ("name", &p.name),
        ("path", &p.path),
        ("referrer_source", &p.referrer_source),
        ("browser", &p.browser),
        ("os", &p.os),
        ("device", &p.device),
        ("country", &p.country),
        ("channel", &p.channel),
        ("utm_source", &p.utm_source),
        ("utm_medium", &p.utm_medium),
        ("utm_campaign", &p.utm_campaign),
        ("utm_term", &p.utm_term),
        ("utm_content", &p.utm_content),
        ("region", &p.region),
        ("city", &p.city),
    ]
}

impl Filters {
    /// The `filters` parameter and the shorthands, AND-ed.
    pub fn parse(p: &Params) -> Result<Filters, QueryError> {
        let mut list = Vec::new();
        for (name, value) in shorthands(p) {
            if let Some(value) = value {
                if value.is_empty() {
                    return Err(QueryError::bad_request(format!(
                        "{name}: empty value (leave the parameter out to not filter)"
                    )));
                }
                list.push(Filter {
                    dim: Dim::parse(name)?,
                    op: Op::Is,
                    values: vec![value.clone()],
                });
            }
        }
        if let Some(text) = &p.filters {
            list.extend(Filters::parse_text(text)?.list);
        }
        too_many(list.len())?;
        Ok(Filters { list })
    }

    /// The text of a `filters` parameter alone (empty: no filters).
    pub fn parse_text(text: &str) -> Result<Filters, QueryError> {
        if text.is_empty() {
            return Ok(Filters::default());
        }
        if text.len() > MAX_FILTERS_BYTES {
            return Err(QueryError::bad_request(format!(
                "filters is {} bytes long; at most {MAX_FILTERS_BYTES} bytes are allowed",
                text.len()
            )));
        }
        let chars = unescape(text)?;
        let parts = split(&chars, ';');
        too_many(parts.len())?;
        let list = parts
            .into_iter()
            .map(|part| parse_one(part, text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filters { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a filter selects whole sessions by their entry or exit page.
    pub fn needs_sessions(&self) -> bool {
        self.list.iter().any(|f| f.dim.is_session())
    }

    /// A boolean SQL predicate over the `events` view's columns for the
    /// event-level filters; `TRUE` when there are none.
    pub fn event_sql(&self, ctx: &SqlContext) -> String {
        let parts: Vec<String> = self
            .list
            .iter()
            .filter_map(|f| match f.dim {
                Dim::Goal => {
                    let any = ctx.goal_sql(&f.values);
                    Some(if f.op.negated() {
                        format!("NOT {any}")
                    } else {
                        any
                    })
                }
                _ => f.dim.event_sql().map(|value| f.sql_over(&value)),
            })
            .collect();
        and(parts)
    }

    /// 400 for a `goal` filter naming a goal the site does not have.
    pub fn check_goals(&self, ctx: &SqlContext) -> Result<(), QueryError> {
        for f in self.list.iter().filter(|f| f.dim == Dim::Goal) {
            for name in &f.values {
                if !ctx.goals.iter().any(|g| g.name == *name) {
                    let known: Vec<&str> = ctx.goals.iter().map(|g| g.name.as_str()).collect();
                    return Err(QueryError::bad_request(format!(
                        "filter {:?}: unknown goal {name:?} (this site's goals: {})",
                        f.to_string(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether a filter is on goals.
    pub fn has_goals(&self) -> bool {
        self.list.iter().any(|f| f.dim == Dim::Goal)
    }

    /// The same filters without those on goals.
    pub fn without_goals(&self) -> Filters {
        Filters {
            list: self
                .list
                .iter()
                .filter(|f| f.dim != Dim::Goal)
                .cloned()
                .collect(),
        }
    }

    /// Whether the goal filters let `name` through (for lists of goals).
    pub fn selects_goal(&self, name: &str) -> bool {
        self.list
            .iter()
            .filter(|f| f.dim == Dim::Goal)
            .all(|f| f.accepts(name))
    }

    /// A boolean SQL predicate over a session's `entry_page` and `exit_page`
    /// columns (the paths of its first and last page views, `(none)` when it
    /// has none) for the session-level filters; `TRUE` when there are none.
    pub fn session_sql(&self) -> String {
        let parts: Vec<String> = self
            .list
            .iter()
            .filter(|f| f.dim.is_session())
            .map(|f| {
                let column = if f.dim == Dim::EntryPage {
                    "entry_page"
                } else {
                    "exit_page"
                };
                f.sql_over(&format!("COALESCE({column}, {})", sql_literal(NONE)))
            })
            .collect();
        and(parts)
    }

    /// The filters as the answer echoes them: each filter's text.
    pub fn to_json(&self) -> serde_json::Value {
        self.list
            .iter()
            .map(|f| serde_json::Value::String(f.to_string()))
            .collect::<Vec<_>>()
            .into()
    }
}

/// 400 when a question holds more than [`MAX_FILTERS`] filters.
fn too_many(filters: usize) -> Result<(), QueryError> {
    if filters > MAX_FILTERS {
        return Err(QueryError::bad_request(format!(
            "{filters} filters; at most {MAX_FILTERS} filters are allowed in one question"
        )));
    }
    Ok(())
}

fn and(parts: Vec<String>) -> String {
    if parts.is_empty() {
        "TRUE".to_owned()
    } else {
        parts.join(" AND ")
    }
}

/// A SQL string literal holding exactly `value`: the one place text from a
/// request becomes SQL. Quotes are doubled; DataFusion's SQL reads no
/// backslash escapes in plain literals, so nothing else is special.
pub fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `value` written so the filter syntax reads it back as one value.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ';' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A `~=` pattern, compiled under the size limits.
fn compile(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "the pattern is {} bytes; at most {MAX_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        // The regex crate's messages span lines (a caret under the fault);
        // one line goes into a NATS header.
        .map_err(|e| {
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
}

/// The characters of `text`, each marked whether it was escaped by `\`.
fn unescape(text: &str) -> Result<Vec<(char, bool)>, QueryError> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) => out.push((next, true)),
                None => {
                    return Err(QueryError::bad_request(format!(
                        "filters {text:?}: ends with a lone \\ (write \\\\ for a backslash)"
                    )));
                }
            }
        } else {
            out.push((c, false));
        }
    }
    Ok(out)
}

/// `chars` cut at each unescaped `sep`.
fn split(chars: &[(char, bool)], sep: char) -> Vec<&[(char, bool)]> {
    chars.split(|&(c, escaped)| c == sep && !escaped).collect()
}

fn text_of(chars: &[(char, bool)]) -> String {
    chars.iter().map(|(c, _)| c).collect()
}

/// One filter's characters, as `<dimension><op><value>[|<value>…]`.
fn parse_one(part: &[(char, bool)], whole: &str) -> Result<Filter, QueryError> {
    let shown = text_of(part);
    let refuse =
        |why: String| QueryError::bad_request(format!("filter {shown:?} (in {whole:?}): {why}"));
    if part.is_empty() {
        return Err(refuse(
            "empty filter (filters are joined by ; with nothing between two)".to_owned(),
        ));
    }
    let dim_len = part
        .iter()
        .position(|&(c, escaped)| escaped || !(c.is_ascii_alphanumeric() || "_.:$-".contains(c)))
        .ok_or_else(|| {
            refuse(
                "no operator (use ==, !=, *= contains, !*= does not contain, or ~= matches)"
                    .to_owned(),
            )
        })?;
    let dim_text = text_of(&part[..dim_len]);
    let dim = if dim_text == GOAL {
        Dim::Goal
    } else {
        Dim::parse(&dim_text).map_err(|e| refuse(format!("{} or {GOAL}", e.message)))?
    };
    let rest = &part[dim_len..];
    let rest_text = text_of(rest);
    let (op_text, op) = OPS
        .iter()
        .find(|(t, _)| {
            rest_text.starts_with(t) && rest[..t.len()].iter().all(|(_, escaped)| !escaped)
        })
        .ok_or_else(|| {
            refuse(format!(
                "unknown operator at {rest_text:?} (use ==, !=, *= contains, !*= does not contain, or ~= matches)"
            ))
        })?;
    let values: Vec<String> = split(&rest[op_text.len()..], '|')
        .into_iter()
        .map(text_of)
        .collect();
    if values.len() > MAX_FILTER_VALUES {
        // Named by its dimension: the filter's text is long by definition.
        return Err(QueryError::bad_request(format!(
            "the filter on {dim_text} has {} values; at most {MAX_FILTER_VALUES} values are allowed per filter",
            values.len()
        )));
    }
    if values.iter().any(String::is_empty) {
        return Err(refuse(
            "empty value (give one, or several joined by |)".to_owned(),
        ));
    }
    if dim == Dim::Goal && !matches!(op, Op::Is | Op::IsNot) {
        return Err(refuse(format!(
            "{GOAL} filters take == or != (goal names, joined by |)"
        )));
    }
    if *op == Op::Matches {
        for v in &values {
            compile(v).map_err(|e| refuse(format!("bad regular expression {v:?}: {e}")))?;
        }
    }
    Ok(Filter {
        dim,
        op: *op,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Filter>, QueryError> {
        Filters::parse_text(text).map(|f| f.list)
    }

    fn filter(dim: Dim, op: Op, values: &[&str]) -> Filter {
        Filter {
            dim,
            op,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn the_syntax_reads_dimensions_operators_and_values() {
        let cases: Vec<(&str, Vec<Filter>)> = vec![
            ("country==FR", vec![filter(Dim::Country, Op::Is, &["FR"])]),
            (
                "country==FR|DE;path*=blog",
                vec![
                    filter(Dim::Country, Op::Is, &["FR", "DE"]),
                    filter(Dim::Path, Op::Contains, &["blog"]),
                ],
            ),
            (
                "browser!=Chrome",
                vec![filter(Dim::Browser, Op::IsNot, &["Chrome"])],
            ),
            (
                "path!*=/admin",
                vec![filter(Dim::Path, Op::NotContains, &["/admin"])],
            ),
            (
                "path~=^/blog/[0-9]+$",
                vec![filter(Dim::Path, Op::Matches, &["^/blog/[0-9]+$"])],
            ),
            (
                "props.plan==pro|team",
                vec![filter(Dim::Prop("plan".into()), Op::Is, &["pro", "team"])],
            ),
            (
                "props.a:b$c-d.e_f==1",
                vec![filter(Dim::Prop("a:b$c-d.e_f".into()), Op::Is, &["1"])],
            ),
            (
                "entry_page==/",
                vec![filter(Dim::EntryPage, Op::Is, &["/"])],
            ),
            // Escapes keep ; | \ inside values; = and ! need none there.
            (
                r"utm_campaign==a\;b|c\|d|e\\f|x==y!",
                vec![filter(
                    Dim::UtmCampaign,
                    Op::Is,
                    &["a;b", "c|d", r"e\f", "x==y!"],
                )],
            ),
            ("name==", vec![]),
        ];
        for (text, expected) in cases {
            match parse(text) {
                Ok(got) if !expected.is_empty() => assert_eq!(got, expected, "{text}"),
                Ok(got) => panic!("{text}: parsed as {got:?}, expected an error"),
                Err(e) if expected.is_empty() => assert_eq!(e.status, 400, "{text}"),
                Err(e) => panic!("{text}: {e}"),
            }
        }
        assert_eq!(parse(""), Ok(vec![]));
    }

    #[test]
    fn errors_name_the_filter_and_what_is_wrong() {
        let cases = [
            ("colour==red", "unknown dimension \"colour\""),
            ("colour==red", "utm_campaign"),
            ("country<>FR", "unknown operator"),
            ("country", "no operator"),
            ("country==", "empty value"),
            ("country==FR|", "empty value"),
            ("country==FR;;path==/", "empty filter"),
            ("country==FR;", "empty filter"),
            (r"path==/a\", "lone \\"),
            ("path~=(", "bad regular expression"),
            ("props.==x", "property key"),
            ("country=FR", "unknown operator"),
            (r"country\==FR", "unknown operator"),
            ("props.a b==x", "unknown operator"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.status, 400, "{text}");
            assert!(err.message.contains(expected), "{text}: {}", err.message);
        }
        let long = format!("path~={}", "a".repeat(MAX_PATTERN_BYTES + 1));
        assert!(parse(&long).expect_err("long").message.contains("at most"));
        // Compiles past the size limit: refused, never slow.
        let huge = parse("path~=(?:\\w{500}){500}").expect_err("huge");
        assert!(huge.message.contains("bad regular expression"), "{huge}");
    }

    #[test]
    fn filters_are_capped_in_count_values_and_length() {
        let values = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join("|");
        let at_cap = format!("country=={}", values(MAX_FILTER_VALUES));
        assert_eq!(parse(&at_cap).expect("at the cap")[0].values.len(), 100);
        let over = format!("country=={}", values(MAX_FILTER_VALUES + 1));
        let err = parse(&over).expect_err("too many values");
        assert!(err.message.contains("at most 100 values") && err.message.contains("country"));
        let filters = |n: usize| vec!["path==/"; n].join(";");
        assert_eq!(parse(&filters(MAX_FILTERS)).expect("at the cap").len(), 20);
        let err = parse(&filters(MAX_FILTERS + 1)).expect_err("too many filters");
        assert!(err.message.contains("at most 20 filters"), "{err}");
        let long = format!("path=={}", "a".repeat(MAX_FILTERS_BYTES));
        let err = parse(&long).expect_err("too long");
        assert!(err.message.contains("at most 4096 bytes"), "{err}");
        // The shorthands count toward the cap too.
        let p = Params {
            country: Some("FR".into()),
            filters: Some(filters(MAX_FILTERS)),
            ..Params::default()
        };
        let err = Filters::parse(&p).expect_err("shorthand past the cap");
        assert!(err.message.contains("21 filters"), "{err}");
    }

    #[test]
    fn shorthands_join_the_filters() {
        let p = Params {
            country: Some("FR".into()),
            name: Some("signup".into()),
            filters: Some("path==/".into()),
            ..Params::default()
        };
        let f = Filters::parse(&p).expect("parse");
        assert_eq!(
            f.list,
            vec![
                filter(Dim::Name, Op::Is, &["signup"]),
                filter(Dim::Country, Op::Is, &["FR"]),
                filter(Dim::Path, Op::Is, &["/"]),
            ]
        );
        let empty = Params {
            country: Some(String::new()),
            ..Params::default()
        };
        assert!(Filters::parse(&empty).is_err());
    }

    #[test]
    fn display_escapes_so_parsing_gives_the_filter_back() {
        let f = filter(
            Dim::Prop("k".into()),
            Op::NotContains,
            &["a;b", "c|d", r"e\"],
        );
        assert_eq!(f.to_string(), r"props.k!*=a\;b|c\|d|e\\");
        assert_eq!(parse(&f.to_string()), Ok(vec![f]));
    }

    #[test]
    fn literals_double_quotes_and_nothing_else() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal(r"a\'; DROP"), r"'a\''; DROP'");
        assert_eq!(sql_literal(""), "''");
    }

    #[test]
    fn sql_keeps_values_in_literals_and_dimensions_from_the_table() {
        let f = Filters::parse_text("country==FR|D'E;path!*=Blog;props.plan~=^p;exit_page==/x")
            .expect("parse");
        let sql = f.event_sql(&SqlContext::default());
        assert_eq!(
            sql,
            "COALESCE(COALESCE(country, '(none)') IN ('FR', 'D''E'), FALSE) AND \
             NOT COALESCE((strpos(lower(COALESCE(path, '(none)')), 'blog') > 0), FALSE) AND \
             COALESCE((regexp_like(COALESCE(props['plan'], '(none)'), '^p')), FALSE)"
        );
        assert!(f.needs_sessions());
        assert_eq!(
            f.session_sql(),
            "COALESCE(COALESCE(exit_page, '(none)') IN ('/x'), FALSE)"
        );
        assert_eq!(Filters::default().event_sql(&SqlContext::default()), "TRUE");
        assert!(!Filters::default().needs_sessions());
    }

    #[test]
    fn goal_filters_read_the_sites_goals() {
        let ctx = SqlContext {
            goals: vec![beacon_core::Goal {
                name: "Sign up".into(),
                event: Some("signup".into()),
                path: None,
                props: Default::default(),
            }],
        };
        let f = Filters::parse_text("goal==Sign up").expect("parse");
        assert_eq!(f.event_sql(&ctx), "(COALESCE((name = 'signup'), FALSE))");
        assert!(f.check_goals(&ctx).is_ok());
        assert!(f.selects_goal("Sign up") && !f.selects_goal("Other"));
        assert!(f.without_goals().is_empty());
        let not = Filters::parse_text("goal!=Sign up").expect("parse");
        assert_eq!(
            not.event_sql(&ctx),
            "NOT (COALESCE((name = 'signup'), FALSE))"
        );
        let unknown = Filters::parse_text("goal==Nope").expect("parse");
        let e = unknown.check_goals(&ctx).expect_err("unknown");
        assert!(e.message.contains("unknown goal \"Nope\""), "{e}");
        let e = Filters::parse_text("goal*=Sign").expect_err("contains");
        assert!(e.message.contains("take == or !="), "{e}");
        assert!(Dim::parse(GOAL).is_err(), "goal is no breakdown dimension");
    }

    #[test]
    fn accepts_agrees_with_the_operators() {
        let f = |t: &str| parse(t).expect(t).remove(0);
        assert!(f("browser==Firefox|Safari").accepts("Safari"));
        assert!(!f("browser!=Firefox|Safari").accepts("Safari"));
        assert!(f("browser!=Firefox").accepts("(none)"));
        assert!(f("path*=BLOG").accepts("/blog/1"));
        assert!(!f("path!*=BLOG").accepts("/blog/1"));
        assert!(f("path~=^/b.*1$").accepts("/blog/1"));
        assert!(!f("path~=^/x").accepts("/blog/1"));
    }
}
