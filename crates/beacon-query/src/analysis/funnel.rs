//! Funnels: ordered steps (events, page paths or goals) and a conversion
//! window, counted per user in event time in one SQL query. A user enters at
//! their first step-1 event of the range; they reach step k with the first
//! step-k event strictly after the event that reached step k−1 and no later
//! than the window after their step-1 time. Per step: the users who reached
//! it, conversion from the previous step and from the start, and the median
//! time from the previous step.

use beacon_core::Goal;
use serde_json::{Map, Value, json};

use super::goals::{goal_sql, path_sql};
use super::{
    COUNTED, Range, duration_ms, in_range, int, percent, provenance, rows, split_escaped,
    sql_literal,
};
use crate::definitions::{SavedFunnel, default_window};
use crate::error::QueryError;
use crate::filter::SqlContext;
use crate::{Params, QueryNode};

pub const MIN_STEPS: usize = 2;
pub const MAX_STEPS: usize = 8;
/// The shortest and longest conversion windows.
pub const MIN_WINDOW_MS: i64 = 60_000;
pub const MAX_WINDOW_MS: i64 = 90 * 86_400_000;

/// One step as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Event(String),
    Path(String),
    Goal(String),
}

impl Step {
    /// `event:<name>`, `path:<pattern>` or `goal:<name>` (already unescaped).
    pub fn parse(text: &str) -> Result<Step, QueryError> {
        let bad = |why: &str| QueryError::bad_request(format!("steps: {text:?} {why}"));
        let (kind, value) = text.split_once(':').ok_or_else(|| {
            bad("is not a step: give event:<name>, path:<pattern> or goal:<name>")
        })?;
        if value.is_empty() {
            return Err(bad("names nothing after the colon"));
        }
        if value.chars().count() > beacon_core::goal::MAX_TARGET_CHARS {
            return Err(bad("is too long"));
        }
        match kind {
            "event" => Ok(Step::Event(value.to_owned())),
            "path" => Ok(Step::Path(value.to_owned())),
            "goal" => Ok(Step::Goal(value.to_owned())),
            _ => Err(bad(
                "has an unknown kind: give event:<name>, path:<pattern> or goal:<name>",
            )),
        }
    }

    /// The step as written back in answers (unescaped).
    pub fn label(&self) -> String {
        match self {
            Step::Event(v) => format!("event:{v}"),
            Step::Path(v) => format!("path:{v}"),
            Step::Goal(v) => format!("goal:{v}"),
        }
    }

    fn sql(&self, goals: &[Goal]) -> Result<String, QueryError> {
        match self {
            Step::Event(name) => Ok(format!("name = {}", sql_literal(name))),
            Step::Path(pattern) => Ok(path_sql(pattern)),
            Step::Goal(name) => goals
                .iter()
                .find(|g| g.name == *name)
                .map(goal_sql)
                .ok_or_else(|| {
                    let known: Vec<&str> = goals.iter().map(|g| g.name.as_str()).collect();
                    QueryError::bad_request(format!(
                        "steps: unknown goal {name:?} (this site's goals: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ))
                }),
        }
    }
}

/// Steps as given in a list (a saved funnel): 2 to 8 of them, each checked.
pub fn parse_steps(list: &[String]) -> Result<Vec<Step>, QueryError> {
    if !(MIN_STEPS..=MAX_STEPS).contains(&list.len()) {
        return Err(QueryError::bad_request(format!(
            "steps: a funnel has {MIN_STEPS} to {MAX_STEPS} steps, not {}",
            list.len()
        )));
    }
    list.iter().map(|s| Step::parse(s)).collect()
}

/// The window as asked, in ms.
pub fn parse_window(text: &str) -> Result<i64, QueryError> {
    duration_ms("window", text, MIN_WINDOW_MS, MAX_WINDOW_MS)
}

/// Check a funnel to save: its steps and window parse.
pub fn check(funnel: &SavedFunnel) -> Result<(), QueryError> {
    parse_steps(&funnel.steps)?;
    parse_window(&funnel.window)?;
    Ok(())
}

/// The SQL of a funnel over `range`: one row with `u<k>` (users reaching step
/// k) and `m<k>` (median ms from step k−1 to step k) for each step.
///
/// Each `f<k>` keeps every user who entered, with `t<k>` null once they drop
/// out, so each is read once and the events are scanned once per step
/// (DataFusion inlines CTEs: a chain read again from its end would scan again).
pub fn funnel_sql(steps: &[String], window_ms: i64, range: &Range, filter_sql: &str) -> String {
    let flags: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("COALESCE(({s}), FALSE) AS s{}", i + 1))
        .collect();
    let any: Vec<String> = steps.iter().map(|s| format!("({s})")).collect();
    let mut sql = format!(
        "WITH e AS (SELECT user_key, CAST(ts AS BIGINT) AS ms, {} FROM events \
         WHERE {} AND {COUNTED} AND ({filter_sql}) AND ({})), \
         f1 AS (SELECT user_key, min(ms) AS start, min(ms) AS t1 FROM e WHERE s1 GROUP BY user_key)",
        flags.join(", "),
        in_range(range),
        any.join(" OR ")
    );
    for k in 2..=steps.len() {
        let p = k - 1;
        let kept: Vec<String> = (1..k).map(|j| format!("min(p.t{j}) AS t{j}")).collect();
        sql.push_str(&format!(
            ", f{k} AS (SELECT p.user_key, min(p.start) AS start, {}, min(e.ms) AS t{k} \
             FROM f{p} p LEFT JOIN e ON e.user_key = p.user_key AND e.s{k} \
             AND e.ms > p.t{p} AND e.ms <= p.start + {window_ms} GROUP BY p.user_key)",
            kept.join(", ")
        ));
    }
    let mut columns = vec!["count(t1) AS u1".to_owned()];
    for k in 2..=steps.len() {
        let p = k - 1;
        columns.push(format!("count(t{k}) AS u{k}"));
        columns.push(format!("median(CAST(t{k} - t{p} AS DOUBLE)) AS m{k}"));
    }
    sql.push_str(&format!(
        " SELECT {} FROM f{}",
        columns.join(", "),
        steps.len()
    ));
    sql
}

/// The funnel answer for `steps` or the saved `funnel`.
pub async fn answer(
    node: &QueryNode,
    site: &str,
    params: &Params,
    range: &Range,
    filter_sql: &str,
    ctx: &SqlContext,
) -> Result<String, QueryError> {
    super::only(params, "funnel", &super::FUNNEL_PARAMS)?;
    let (texts, saved_window) = match (&params.steps, &params.funnel) {
        (Some(_), Some(_)) => {
            return Err(QueryError::bad_request(
                "give either steps or funnel (a saved funnel's name), not both",
            ));
        }
        (None, None) => {
            return Err(QueryError::bad_request(
                "steps is required (e.g. steps=event:signup;event:purchase), or funnel=<saved funnel name>",
            ));
        }
        (Some(steps), None) => (split_escaped(steps, ';'), None),
        (None, Some(name)) => {
            let saved = crate::definitions::funnels(&node.js, site).await?;
            let funnel = saved.into_iter().find(|f| f.name == *name).ok_or_else(|| {
                QueryError::bad_request(format!(
                    "funnel: no saved funnel {name:?} on site {site:?}"
                ))
            })?;
            (funnel.steps, Some(funnel.window))
        }
    };
    let steps = parse_steps(&texts)?;
    let window_text = params
        .window
        .clone()
        .or(saved_window)
        .unwrap_or_else(default_window);
    let window_ms = parse_window(&window_text)?;
    let predicates = steps
        .iter()
        .map(|s| s.sql(&ctx.goals))
        .collect::<Result<Vec<_>, _>>()?;
    let sql = funnel_sql(&predicates, window_ms, range, filter_sql);
    let row = rows(node, site, &sql)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let start = int(&row, "u1");
    let mut previous = start;
    let shown: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let k = i + 1;
            let users = int(&row, &format!("u{k}"));
            let median = (k > 1)
                .then(|| row.get(&format!("m{k}")).and_then(Value::as_f64))
                .flatten()
                .map(|ms| (ms / 1000.0 * 1000.0).round() / 1000.0);
            let shown = json!({
                "step": step.label(),
                "users": users,
                "conversion_from_previous": if k == 1 { 100.0 } else { percent(users, previous) },
                "conversion_from_start": percent(users, start),
                "median_seconds_from_previous": median,
            });
            previous = users;
            shown
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("site".into(), json!(site));
    answer.insert("steps".into(), Value::Array(shown));
    answer.insert("window".into(), json!(window_text));
    if let Some(name) = &params.funnel {
        answer.insert("funnel".into(), json!(name));
    }
    provenance(&mut answer, range, node);
    Ok(Value::Object(answer).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_or_say_what_is_wrong() {
        assert_eq!(
            Step::parse("event:signup").expect("ok"),
            Step::Event("signup".into())
        );
        assert_eq!(
            Step::parse("path:/a:b*").expect("ok"),
            Step::Path("/a:b*".into())
        );
        for (bad, says) in [
            ("signup", "is not a step"),
            ("event:", "names nothing"),
            ("page:/x", "unknown kind"),
        ] {
            let e = Step::parse(bad).expect_err(bad);
            assert!(e.message.contains(says), "{e:?}");
            assert!(e.message.starts_with("steps: "), "{e:?}");
        }
        assert!(parse_steps(&["event:a".into()]).is_err());
        assert!(parse_steps(&vec!["event:a".to_owned(); 9]).is_err());
        let unknown = Step::Goal("Nope".into()).sql(&[]).expect_err("unknown");
        assert!(
            unknown.message.contains("unknown goal \"Nope\""),
            "{unknown:?}"
        );
    }

    #[test]
    fn the_sql_chains_each_step_to_the_one_before() {
        let range = Range { from: 0, to: 1000 };
        let sql = funnel_sql(
            &["name = 'a'".into(), "name = 'b'".into()],
            60_000,
            &range,
            "TRUE",
        );
        assert!(
            sql.contains("e.ms > p.t1 AND e.ms <= p.start + 60000"),
            "{sql}"
        );
        assert!(sql.contains("AS u2"), "{sql}");
        assert!(sql.contains("AS m2"), "{sql}");
        // Each step's CTE is read once: the events are scanned once per step.
        let three = funnel_sql(
            &["a".into(), "b".into(), "c".into()],
            60_000,
            &range,
            "TRUE",
        );
        assert_eq!(three.matches("FROM f1 ").count(), 1, "{three}");
        assert_eq!(three.matches("FROM f2 ").count(), 1, "{three}");
        assert!(three.ends_with("FROM f3"), "{three}");
    }
}
