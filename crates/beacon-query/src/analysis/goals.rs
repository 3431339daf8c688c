//! Goals as SQL, and the goals report: per goal its conversions (events that
//! complete it), converting users, conversion rate (converting users over
//! every user of the range under the same filters) and revenue per currency.

use beacon_core::Goal;
use beacon_core::goal::{PAGEVIEW, path_regex};
use serde_json::{Map, Value, json};

use super::{COUNTED, Range, decimal_text, in_range, int, percent, provenance, rows, sql_literal};
use crate::error::QueryError;
use crate::filter::{Filters, SqlContext};
use crate::{Params, QueryNode};

/// Parameters of the goals report beside the range and filters (`tz`: how
/// dates in `from` and `to` are read).
pub const COMPARE_PARAMS: [&str; 4] = ["tz", "compare", "compare_from", "compare_to"];

/// Where a goal is defined: its config goals are read-only through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Api,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// A page view whose path matches `pattern` (`*` = any characters).
pub fn path_sql(pattern: &str) -> String {
    format!(
        "(name = '{PAGEVIEW}' AND regexp_like(path, {}))",
        sql_literal(&path_regex(pattern))
    )
}

/// A boolean SQL predicate over the `events` view: the event completes `goal`.
/// Never null (a missing path or property is simply no match).
pub fn goal_sql(goal: &Goal) -> String {
    let mut parts = Vec::new();
    if let Some(event) = &goal.event {
        parts.push(format!("name = {}", sql_literal(event)));
    }
    if let Some(path) = &goal.path {
        parts.push(path_sql(path));
    }
    // Keys are checked to be plain (`is_valid_prop_key`), and quoted anyway.
    for (key, value) in &goal.props {
        parts.push(format!(
            "props[{}] = {}",
            sql_literal(key),
            sql_literal(value)
        ));
    }
    if parts.is_empty() {
        return "FALSE".to_owned();
    }
    format!("COALESCE(({}), FALSE)", parts.join(" AND "))
}

/// Every goal of `site`: the config file's, then those made through the API.
pub async fn site_goals(node: &QueryNode, site: &str) -> Result<Vec<(Goal, Source)>, QueryError> {
    let mut goals: Vec<(Goal, Source)> = node
        .definitions
        .site(site)
        .map(|c| {
            c.goals
                .iter()
                .map(|g| (g.clone(), Source::Config))
                .collect()
        })
        .unwrap_or_default();
    let api = crate::definitions::api_goals(&node.js, site).await?;
    goals.extend(
        api.into_iter()
            // A config goal wins over an API goal of the same name (made
            // before the config named it).
            .filter(|g| !goals.iter().any(|(c, _)| c.name == g.name))
            .map(|g| (g, Source::Api))
            .collect::<Vec<_>>(),
    );
    Ok(goals)
}

/// A goal as listed by the API.
pub fn shown(goal: &Goal, source: Source) -> Value {
    let mut value = serde_json::to_value(goal).unwrap_or_default();
    value["source"] = json!(source.name());
    value
}

/// The goals report over `range`. Goal filters choose the goals listed; the
/// other filters select the events counted, for the conversions and for the
/// users they are a rate of alike.
pub async fn report(
    node: &QueryNode,
    site: &str,
    params: &Params,
    range: &Range,
    filters: &Filters,
    ctx: &SqlContext,
    now: i64,
) -> Result<String, QueryError> {
    super::only(params, "goals", &COMPARE_PARAMS)?;
    let comparison = range.comparison(params, now)?;
    let goals: Vec<(Goal, Source)> = site_goals(node, site)
        .await?
        .into_iter()
        .filter(|(g, _)| filters.selects_goal(&g.name))
        .collect();
    let filter_sql = filters.without_goals().event_sql(ctx);
    let mut answer = figures(node, site, &goals, range, &filter_sql).await?;
    if let Some(other) = comparison {
        let mut compared = figures(node, site, &goals, &other, &filter_sql).await?;
        compared.insert("range".into(), other.json());
        answer.insert("comparison".into(), Value::Object(compared));
    }
    answer.insert("filters".into(), filters.to_json());
    answer.insert("site".into(), json!(site));
    provenance(&mut answer, range, node);
    Ok(Value::Object(answer).to_string())
}

/// `goals` and `users` of the report over `range`.
async fn figures(
    node: &QueryNode,
    site: &str,
    goals: &[(Goal, Source)],
    range: &Range,
    filter_sql: &str,
) -> Result<Map<String, Value>, QueryError> {
    let scope = format!("{} AND {COUNTED} AND ({filter_sql})", in_range(range));
    let mut counts = vec!["count(DISTINCT user_key) AS users".to_owned()];
    let mut sums = vec!["revenue_currency AS currency".to_owned()];
    for (i, (goal, _)) in goals.iter().enumerate() {
        let hit = goal_sql(goal);
        counts.push(format!(
            "sum(CASE WHEN {hit} THEN 1 ELSE 0 END) AS c{i}, \
             count(DISTINCT CASE WHEN {hit} THEN user_key END) AS u{i}"
        ));
        sums.push(format!(
            "CAST(sum(CASE WHEN {hit} THEN revenue_amount END) AS VARCHAR) AS r{i}"
        ));
    }
    let counts_sql = format!("SELECT {} FROM events WHERE {scope}", counts.join(", "));
    let revenue_sql = format!(
        "SELECT {} FROM events WHERE {scope} AND revenue_currency IS NOT NULL \
         GROUP BY revenue_currency ORDER BY revenue_currency",
        sums.join(", ")
    );
    let (counted, revenue) = if goals.is_empty() {
        (rows(node, site, &counts_sql).await?, Vec::new())
    } else {
        tokio::try_join!(
            rows(node, site, &counts_sql),
            rows(node, site, &revenue_sql)
        )?
    };
    let totals = counted.first().cloned().unwrap_or_default();
    let users = int(&totals, "users");
    let list: Vec<Value> = goals
        .iter()
        .enumerate()
        .map(|(i, (goal, source))| {
            let converting = int(&totals, &format!("u{i}"));
            let mut by_currency = Map::new();
            for row in &revenue {
                if let (Some(currency), Some(sum)) = (
                    row.get("currency").and_then(Value::as_str),
                    row.get(&format!("r{i}")).and_then(Value::as_str),
                ) {
                    by_currency.insert(currency.to_owned(), json!(decimal_text(sum)));
                }
            }
            let mut shown = shown(goal, *source);
            shown["conversions"] = json!(int(&totals, &format!("c{i}")));
            shown["converting_users"] = json!(converting);
            shown["conversion_rate"] = json!(percent(converting, users));
            shown["revenue"] = Value::Object(by_currency);
            shown
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("users".into(), json!(users));
    answer.insert("goals".into(), Value::Array(list));
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_become_predicates_with_every_value_quoted() {
        let mut goal = Goal {
            name: "x".into(),
            event: Some("sign'up".into()),
            path: None,
            props: Default::default(),
        };
        goal.props.insert("plan".into(), "pro".into());
        assert_eq!(
            goal_sql(&goal),
            "COALESCE((name = 'sign''up' AND props['plan'] = 'pro'), FALSE)"
        );
        let page = Goal {
            name: "p".into(),
            event: None,
            path: Some("/pricing*".into()),
            props: Default::default(),
        };
        assert_eq!(
            goal_sql(&page),
            "COALESCE(((name = 'pageview' AND regexp_like(path, '^/pricing.*$'))), FALSE)"
        );
    }
}
