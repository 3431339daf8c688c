//! Goals, funnels and retention: questions about users over time that the
//! rollups do not keep, answered from the event store in SQL over the site's
//! `events` view. Each operation builds its SQL from checked parts only
//! (values as escaped string literals, property keys from a fixed alphabet,
//! times as numbers), runs it through the node's `beacon_store::Engine` and
//! shapes the rows into the answer, with `source`, `fresh_through` and the
//! exact `range` it covers.

pub mod funnel;
pub mod goals;
pub mod retention;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value, json};

use crate::engine::{Clock, parse_tz};
use crate::error::QueryError;
use crate::filter::{Filters, SqlContext};
use crate::{Op, Params, QueryNode};

/// Answer the goals report, a funnel or a retention table.
pub async fn answer(
    node: &QueryNode,
    op: Op,
    site: &str,
    params: &Params,
    now: i64,
) -> Result<String, QueryError> {
    let filters = Filters::parse(params)?;
    if filters.needs_sessions() {
        return Err(QueryError::bad_request(format!(
            "{} does not take entry_page or exit_page filters",
            op.name()
        )));
    }
    let ctx = SqlContext::of(node, site).await?;
    filters.check_goals(&ctx)?;
    match op {
        Op::Goals => {
            let range = Range::of(params, now, DAY_MS)?;
            goals::report(node, site, params, &range, &filters, &ctx, now).await
        }
        Op::Funnel => {
            let range = Range::of(params, now, DAY_MS)?;
            let filter_sql = filters.event_sql(&ctx);
            funnel::answer(node, site, params, &range, &filter_sql, &ctx).await
        }
        _ => retention::answer(node, site, params, now, &filters.event_sql(&ctx)).await,
    }
}

const DAY_MS: i64 = 86_400_000;

/// What every answer of the store counts: ordinary events, the way the rollups
/// do. Bots are filtered traffic and engagement pings are not events.
pub const COUNTED: &str = "bot IS NULL AND name <> 'engagement'";

pub use crate::filter::sql_literal;

/// `ts` within `[from, to)`, in a form the store prunes segments with.
pub fn in_range(range: &Range) -> String {
    format!(
        "ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})",
        range.from, range.to
    )
}

/// A range in Unix ms, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

impl Range {
    /// `from` and `to` as the other operations read them (dates in `tz`);
    /// `to` defaults to now and `from` to `default_span_ms` before `to`.
    pub fn of(params: &Params, now: i64, default_span_ms: i64) -> Result<Range, QueryError> {
        let clock = Clock::new(parse_tz(params)?, now);
        let span = clock.range(params, default_span_ms)?;
        Ok(Range {
            from: span.from,
            to: span.to,
        })
    }

    /// The range `compare` (`compare_from`, `compare_to`) asks to compare
    /// with, if any: days and years in UTC, as the analysis operations count.
    pub fn comparison(&self, params: &Params, now: i64) -> Result<Option<Range>, QueryError> {
        let custom = params.compare_from.is_some() || params.compare_to.is_some();
        let range = match params.compare.as_deref() {
            None | Some("") if custom => {
                return Err(QueryError::bad_request(
                    "compare_from and compare_to go with compare=custom",
                ));
            }
            None | Some("") => return Ok(None),
            Some("previous_period") => Range {
                from: self.from - (self.to - self.from),
                to: self.from,
            },
            Some("previous_year") => Range {
                from: year_before(self.from),
                to: year_before(self.to),
            },
            Some("custom") => {
                let (Some(from), Some(to)) = (&params.compare_from, &params.compare_to) else {
                    return Err(QueryError::bad_request(
                        "compare=custom needs compare_from and compare_to",
                    ));
                };
                let clock = Clock::new(parse_tz(params)?, now);
                let range = Range {
                    from: clock.instant("compare_from", from, false)?,
                    to: clock.instant("compare_to", to, true)?,
                };
                if range.from >= range.to {
                    return Err(QueryError::bad_request(
                        "compare_from must be before compare_to",
                    ));
                }
                range
            }
            Some(other) => {
                return Err(QueryError::bad_request(format!(
                    "compare: {other:?} is not one of previous_period, previous_year, custom"
                )));
            }
        };
        Ok(Some(range))
    }

    pub fn json(&self) -> Value {
        json!({"from": rfc3339(self.from), "to": rfc3339(self.to)})
    }
}

/// The same UTC time a year earlier (29 February becomes the 28th).
fn year_before(ms: i64) -> i64 {
    use chrono::Datelike;
    let Some(t) = Utc.timestamp_millis_opt(ms).single() else {
        return ms;
    };
    t.with_year(t.year() - 1)
        .or_else(|| t.with_day(28).and_then(|d| d.with_year(t.year() - 1)))
        .map_or(ms, |d| d.timestamp_millis())
}

/// Unix ms as RFC 3339 in UTC (`2026-11-25T10:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `part` of `whole` in percent with two decimals; 0 when there is no whole.
pub fn percent(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        return 0.0;
    }
    (part as f64 * 10_000.0 / whole as f64).round() / 100.0
}

/// The answer's common fields: where it came from and how fresh it is (the
/// newest collector time of the events the store showed it; null before any).
pub fn provenance(answer: &mut Map<String, Value>, range: &Range, node: &QueryNode) {
    answer.insert("range".into(), range.json());
    answer.insert("source".into(), json!("store"));
    answer.insert(
        "fresh_through".into(),
        node.store_fresh_through()
            .map_or(Value::Null, |ms| json!(rfc3339(ms))),
    );
}

/// A revenue sum as SQL answers it (`8493.100000000000000000`) written
/// exactly, without trailing zeros (`8493.1`).
pub fn decimal_text(text: &str) -> String {
    if !text.contains('.') {
        return text.to_owned();
    }
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Parameters of the analysis operations beside `from`, `to`, `filters` and
/// the filter shorthands (every one of [`crate::engine::COMMON_PARAMS`] but
/// `tz`, which funnels and the goals report take for dates in `from` and `to`;
/// retention's days and weeks are UTC).
pub const FUNNEL_PARAMS: [&str; 4] = ["steps", "window", "funnel", "tz"];
pub const RETENTION_PARAMS: [&str; 4] = ["period", "periods", "cohort_event", "return_event"];

/// Refuse parameters the operation does not take.
pub fn only(params: &Params, op: &str, allowed: &[&str]) -> Result<(), QueryError> {
    let given = [
        ("interval", params.interval.is_some()),
        ("metrics", params.metrics.is_some()),
        ("dimension", params.dimension.is_some()),
        ("metric", params.metric.is_some()),
        ("limit", params.limit.is_some()),
        ("tz", params.tz.is_some()),
        ("steps", params.steps.is_some()),
        ("window", params.window.is_some()),
        ("funnel", params.funnel.is_some()),
        ("period", params.period.is_some()),
        ("periods", params.periods.is_some()),
        ("cohort_event", params.cohort_event.is_some()),
        ("return_event", params.return_event.is_some()),
        ("compare", params.compare.is_some()),
        ("compare_from", params.compare_from.is_some()),
        ("compare_to", params.compare_to.is_some()),
    ];
    for (name, present) in given {
        if present && !allowed.contains(&name) {
            return Err(QueryError::bad_request(format!(
                "parameter {name} does not apply to {op}"
            )));
        }
    }
    Ok(())
}

/// The rows of `sql` over `site`'s events, as JSON objects keyed by column.
pub async fn rows(
    node: &QueryNode,
    site: &str,
    sql: &str,
) -> Result<Vec<Map<String, Value>>, QueryError> {
    let engine = node.engine()?;
    let answer = engine
        .sql(site, sql, beacon_store::SqlFormat::Json)
        .await
        .map_err(|e| match e.kind {
            // The SQL is built here from checked parts: not planning is a bug.
            beacon_store::SqlErrorKind::Invalid => {
                tracing::error!(error = %e.message, sql, "an analysis query did not plan");
                QueryError::internal(format!(
                    "Beacon built a query it cannot run (a bug): {}",
                    e.message
                ))
            }
            _ => QueryError::from(e),
        })?;
    let mut body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| QueryError::internal(format!("unreadable SQL answer: {e}")))?;
    let rows = match body.get_mut("rows").map(Value::take) {
        Some(Value::Array(rows)) => rows,
        _ => Vec::new(),
    };
    Ok(rows
        .into_iter()
        .filter_map(|row| match row {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .collect())
}

/// A whole-number column of a row (counts); 0 when null or absent.
pub fn int(row: &Map<String, Value>, column: &str) -> i64 {
    row.get(column).and_then(Value::as_i64).unwrap_or(0)
}

/// `<n><unit>` with unit `m`, `h` or `d`, in ms, within `[min, max]`.
pub fn duration_ms(field: &str, text: &str, min_ms: i64, max_ms: i64) -> Result<i64, QueryError> {
    let bad = || {
        QueryError::bad_request(format!(
            "{field}: {text:?} is not a duration from {} to {} (give e.g. 30m, 12h, 1d, 7d)",
            human(min_ms),
            human(max_ms)
        ))
    };
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let per = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let ms = n * per;
    if !(min_ms..=max_ms).contains(&ms) {
        return Err(bad());
    }
    Ok(ms)
}

fn human(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms => format!("{}m", ms / 60_000),
    }
}

/// Split `text` on unescaped `sep`, with `\` escaping the next character.
pub fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next()
                    && let Some(last) = parts.last_mut()
                {
                    last.push(next);
                }
            }
            c if c == sep => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked() {
        let day = 86_400_000;
        assert_eq!(
            duration_ms("window", "30m", 60_000, 90 * day),
            Ok(1_800_000)
        );
        assert_eq!(duration_ms("window", "7d", 60_000, 90 * day), Ok(7 * day));
        for bad in ["", "d", "1w", "-1d", "1.5d", "0m", "91d", "9999999d", "1dd"] {
            let e = duration_ms("window", bad, 60_000, 90 * day).expect_err(bad);
            assert!(e.message.starts_with("window: "), "{e:?}");
        }
    }

    #[test]
    fn escaped_splits() {
        assert_eq!(split_escaped(r"a;b\;c;d\\", ';'), ["a", "b;c", r"d\"]);
        assert_eq!(split_escaped("", ';'), [""]);
    }

    #[test]
    fn comparisons_are_the_period_before_the_year_before_or_as_asked() {
        let day = 86_400_000;
        // 2024-02-29T00:00:00Z to 2024-03-01.
        let range = Range {
            from: 1_709_164_800_000,
            to: 1_709_164_800_000 + day,
        };
        let ask = |compare: &str, from: Option<&str>, to: Option<&str>| Params {
            compare: Some(compare.into()),
            compare_from: from.map(Into::into),
            compare_to: to.map(Into::into),
            ..Params::default()
        };
        let before = range.comparison(&ask("previous_period", None, None), 0);
        assert_eq!(
            before,
            Ok(Some(Range {
                from: range.from - day,
                to: range.from
            }))
        );
        let year = range.comparison(&ask("previous_year", None, None), 0);
        // 2023-02-28 to 2023-03-01.
        assert_eq!(
            year,
            Ok(Some(Range {
                from: 1_677_542_400_000,
                to: 1_677_628_800_000
            }))
        );
        let custom = range.comparison(&ask("custom", Some("2024-01-01"), Some("2024-01-01")), 0);
        assert_eq!(
            custom,
            Ok(Some(Range {
                from: 1_704_067_200_000,
                to: 1_704_153_600_000
            }))
        );
        assert!(range.comparison(&ask("custom", None, None), 0).is_err());
        assert!(range.comparison(&ask("last_week", None, None), 0).is_err());
        assert_eq!(range.comparison(&Params::default(), 0), Ok(None));
    }

    #[test]
    fn decimals_and_percents() {
        assert_eq!(decimal_text("8493.100000000000000000"), "8493.1");
        assert_eq!(decimal_text("12.000"), "12");
        assert_eq!(decimal_text("100"), "100");
        assert_eq!(percent(5, 12), 41.67);
        assert_eq!(percent(1, 0), 0.0);
    }
}
