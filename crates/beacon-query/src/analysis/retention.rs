//! Retention: users grouped into cohorts by the period (UTC day, or ISO week
//! from Monday) of their first event in the site's whole stored history (or
//! their first `cohort_event`), for cohorts that start within the range; for
//! each cohort, how many of its users came back (any event, or
//! `return_event`) in each following period up to the end of the range.

use serde_json::{Map, Value, json};

use super::{COUNTED, Range, int, provenance, rows, sql_literal};
use crate::error::QueryError;
use crate::{Params, QueryNode};

const DAY_MS: i64 = 86_400_000;
/// 1970-01-01 was a Thursday: weeks start three days later, on Monday.
const WEEK_OFFSET_MS: i64 = 3 * DAY_MS;

/// The periods cohorts are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
}

impl Period {
    fn parse(text: Option<&str>) -> Result<Period, QueryError> {
        match text.unwrap_or("day") {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            other => Err(QueryError::bad_request(format!(
                "period: {other:?} is not day or week"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
        }
    }

    fn ms(self) -> i64 {
        match self {
            Period::Day => DAY_MS,
            Period::Week => 7 * DAY_MS,
        }
    }

    /// Added to Unix ms before dividing by the length: where periods start.
    fn offset(self) -> i64 {
        match self {
            Period::Day => 0,
            Period::Week => WEEK_OFFSET_MS,
        }
    }

    /// The number of the period holding `ms`.
    fn index(self, ms: i64) -> i64 {
        (ms + self.offset()).div_euclid(self.ms())
    }

    fn start(self, index: i64) -> i64 {
        index * self.ms() - self.offset()
    }

    /// Return periods shown at most, by default and at the most one may ask.
    fn periods(self) -> (u32, u32) {
        match self {
            Period::Day => (31, 92),
            Period::Week => (12, 53),
        }
    }

    /// Longest range of cohorts, so a table stays a table.
    fn max_cohorts(self) -> i64 {
        match self {
            Period::Day => 366,
            Period::Week => 106,
        }
    }
}

/// The SQL of the table: rows `(cohort, k, users)` with `k` = 0 for the
/// cohort's size and `k` ≥ 1 for its users back in the k-th period after.
fn retention_sql(
    period: Period,
    range: &Range,
    cohort: &str,
    back: &str,
    filter_sql: &str,
    max_k: u32,
) -> String {
    let (len, offset) = (period.ms(), period.offset());
    format!(
        "WITH firsts AS (SELECT user_key, min(CAST(ts AS BIGINT)) AS first_ms FROM events \
           WHERE ts < to_timestamp_millis({to}) AND {COUNTED} AND ({filter_sql}) AND ({cohort}) \
           GROUP BY user_key), \
         cohorts AS (SELECT user_key, (first_ms + {offset}) / {len} AS c FROM firsts \
           WHERE first_ms >= {from}), \
         back AS (SELECT DISTINCT user_key, (CAST(ts AS BIGINT) + {offset}) / {len} AS r FROM events \
           WHERE ts >= to_timestamp_millis({from}) AND ts < to_timestamp_millis({to}) \
           AND {COUNTED} AND ({filter_sql}) AND ({back})) \
         SELECT c AS cohort, 0 AS k, count(*) AS users FROM cohorts GROUP BY c \
         UNION ALL \
         SELECT cohorts.c AS cohort, back.r - cohorts.c AS k, count(*) AS users \
           FROM cohorts JOIN back ON cohorts.user_key = back.user_key \
           WHERE back.r > cohorts.c AND back.r - cohorts.c <= {max_k} \
           GROUP BY cohorts.c, back.r - cohorts.c",
        from = range.from,
        to = range.to,
    )
}

pub async fn answer(
    node: &QueryNode,
    site: &str,
    params: &Params,
    now: i64,
    filter_sql: &str,
) -> Result<String, QueryError> {
    super::only(params, "retention", &super::RETENTION_PARAMS)?;
    let period = Period::parse(params.period.as_deref())?;
    let (default_periods, most) = period.periods();
    let periods = params.periods.unwrap_or(default_periods);
    if !(1..=most).contains(&periods) {
        return Err(QueryError::bad_request(format!(
            "periods: {periods} is not from 1 to {most} (for period={})",
            period.name()
        )));
    }
    let asked = Range::of(params, now, default_periods as i64 * period.ms())?;
    // Whole periods: a cohort is a whole day or week.
    let first = period.index(asked.from);
    let last = period.index(asked.to - 1);
    if last - first + 1 > period.max_cohorts() {
        return Err(QueryError::bad_request(format!(
            "the range holds {} {}s of cohorts; at most {} (narrow from and to)",
            last - first + 1,
            period.name(),
            period.max_cohorts()
        )));
    }
    let range = Range {
        from: period.start(first),
        to: period.start(last + 1),
    };
    let event = |field: &str, name: &Option<String>| -> Result<String, QueryError> {
        match name.as_deref() {
            None => Ok("TRUE".to_owned()),
            Some("") => Err(QueryError::bad_request(format!(
                "{field}: name an event, or leave it out for any event"
            ))),
            Some(name) => Ok(format!("name = {}", sql_literal(name))),
        }
    };
    let cohort = event("cohort_event", &params.cohort_event)?;
    let back = event("return_event", &params.return_event)?;
    let sql = retention_sql(period, &range, &cohort, &back, filter_sql, periods);
    let mut table = std::collections::BTreeMap::<(i64, i64), i64>::new();
    for row in rows(node, site, &sql).await? {
        table.insert((int(&row, "cohort"), int(&row, "k")), int(&row, "users"));
    }
    let cohorts: Vec<Value> = (first..=last)
        .map(|c| {
            let users = table.get(&(c, 0)).copied().unwrap_or(0);
            // Periods that have begun before the range's end, at most `periods` after.
            let shown = (last - c).min(i64::from(periods));
            let returned: Vec<i64> = (0..=shown)
                .map(|k| match k {
                    0 => users,
                    k => table.get(&(c, k)).copied().unwrap_or(0),
                })
                .collect();
            json!({
                "cohort": super::rfc3339(period.start(c))[..10].to_owned(),
                "users": users,
                "returned": returned,
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("site".into(), json!(site));
    answer.insert("period".into(), json!(period.name()));
    answer.insert("cohorts".into(), Value::Array(cohorts));
    provenance(&mut answer, &range, node);
    Ok(Value::Object(answer).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_and_days_at_midnight_utc() {
        // 2026-11-30 is a Monday.
        let monday = chrono::NaiveDate::from_ymd_opt(2026, 11, 30)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis())
            .expect("date");
        let w = Period::Week;
        assert_eq!(w.start(w.index(monday)), monday);
        assert_eq!(w.start(w.index(monday + 6 * DAY_MS + 1)), monday);
        assert_eq!(w.start(w.index(monday - 1)), monday - 7 * DAY_MS);
        let d = Period::Day;
        assert_eq!(d.start(d.index(monday + 5)), monday);
    }
}
