//! The planner: one question (timeseries, summary, breakdown, properties;
//! any filters, any metric, any range) answered from the rollups when they
//! answer it exactly, and otherwise from the event store in SQL, in the same
//! shape either way. Every answer says its `source`, how fresh it is
//! (`fresh_through`) and the exact `range` it covers.

pub(crate) mod days;
mod sql;

use std::collections::BTreeMap;

use beacon_rollup::{Dimension, Granularity};
use chrono::{Datelike, SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use crate::engine::{self, Clock, MAX_LIMIT, MAX_POINTS, Metric, Params, Span};
use crate::error::{NOT_IN_ROLLUPS, QueryError};
use crate::filter::{Dim, Filters, Op as FilterOp, SqlContext};
use crate::{Op, QueryNode};

use beacon_store::Step;

use self::sql::{Key, Plan};

/// Parameters each operation takes beyond the common ones.
pub const TIMESERIES_PARAMS: [&str; 5] = [
    "interval",
    "metrics",
    "compare",
    "compare_from",
    "compare_to",
];
pub const SUMMARY_PARAMS: [&str; 4] = ["metrics", "compare", "compare_from", "compare_to"];
pub const BREAKDOWN_PARAMS: [&str; 7] = [
    "dimension",
    "metric",
    "metrics",
    "limit",
    "compare",
    "compare_from",
    "compare_to",
];
pub const PROPERTIES_PARAMS: [&str; 1] = ["limit"];

/// What a comparison compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    PreviousPeriod,
    PreviousYear,
    Custom(Span),
}

/// What is asked, beyond the range and filters.
#[derive(Debug, Clone)]
enum Ask {
    Timeseries { interval: Granularity },
    Summary,
    Breakdown { by: Dim, metric: Metric, limit: u32 },
    Properties { limit: u32 },
}

/// One question, parsed and checked once.
#[derive(Debug, Clone)]
struct Question {
    site: String,
    clock: Clock,
    span: Span,
    filters: Filters,
    metrics: Vec<Metric>,
    ask: Ask,
    compare: Option<Compare>,
}

fn refuse_unknown(p: &Params, op: &str, allowed: &[&str]) -> Result<(), QueryError> {
    let given = [
        ("interval", p.interval.is_some()),
        ("metrics", p.metrics.is_some()),
        ("dimension", p.dimension.is_some()),
        ("metric", p.metric.is_some()),
        ("limit", p.limit.is_some()),
        ("compare", p.compare.is_some()),
        ("compare_from", p.compare_from.is_some()),
        ("compare_to", p.compare_to.is_some()),
    ];
    match given
        .into_iter()
        .find(|(name, present)| *present && !allowed.contains(name))
    {
        Some((name, _)) => Err(QueryError::bad_request(format!(
            "parameter {name} does not apply to {op}"
        ))),
        None => Ok(()),
    }
}

fn parse_metric_list(text: Option<&str>, default: &[Metric]) -> Result<Vec<Metric>, QueryError> {
    match text {
        None | Some("") => Ok(default.to_vec()),
        Some(list) => {
            let mut out = Vec::new();
            for name in list.split(',') {
                let m = Metric::parse(name.trim())?;
                if !out.contains(&m) {
                    out.push(m);
                }
            }
            Ok(out)
        }
    }
}

fn parse_limit(p: &Params, default: u32) -> Result<u32, QueryError> {
    let limit = p.limit.unwrap_or(default);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(QueryError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(limit)
}

impl Question {
    fn parse(op: Op, site: &str, p: &Params, now: i64) -> Result<Question, QueryError> {
        let name = op.name();
        match op {
            Op::Timeseries => refuse_unknown(p, name, &TIMESERIES_PARAMS)?,
            Op::Breakdown => refuse_unknown(p, name, &BREAKDOWN_PARAMS)?,
            Op::Properties => refuse_unknown(p, name, &PROPERTIES_PARAMS)?,
            _ => refuse_unknown(p, name, &SUMMARY_PARAMS)?,
        }
        let clock = Clock::new(engine::parse_tz(p)?, now);
        let ask = match op {
            Op::Timeseries => Ask::Timeseries {
                interval: engine::parse_interval(p)?,
            },
            Op::Breakdown => {
                let name = p.dimension.as_deref().ok_or_else(|| {
                    QueryError::bad_request(format!(
                        "dimension is required ({}, props.<key>)",
                        Dim::known()
                    ))
                })?;
                let by = Dim::parse(if name == "event" { "name" } else { name })?;
                let metric = match p.metric.as_deref() {
                    Some(m) => Metric::parse(m)?,
                    None => Metric::Users,
                };
                Ask::Breakdown {
                    by,
                    metric,
                    limit: parse_limit(p, 10)?,
                }
            }
            Op::Properties => Ask::Properties {
                limit: parse_limit(p, 100)?,
            },
            _ => Ask::Summary,
        };
        let span = clock.range(p, 86_400_000)?;
        let span = match &ask {
            // A series is made of whole buckets of its interval.
            Ask::Timeseries { interval } => clock.align(span, *interval),
            _ => span,
        };
        let metrics = match &ask {
            Ask::Breakdown { metric, .. } => {
                let mut list = parse_metric_list(
                    p.metrics.as_deref(),
                    &[Metric::Users, Metric::Events, Metric::Pageviews],
                )?;
                if !list.contains(metric) {
                    list.insert(0, *metric);
                }
                list
            }
            Ask::Properties { .. } => vec![Metric::Events, Metric::Users],
            _ => parse_metric_list(p.metrics.as_deref(), &Metric::ALL)?,
        };
        let compare = match p.compare.as_deref() {
            None | Some("") => None,
            Some("previous_period") => Some(Compare::PreviousPeriod),
            Some("previous_year") => Some(Compare::PreviousYear),
            Some("custom") => {
                let (Some(from), Some(to)) = (&p.compare_from, &p.compare_to) else {
                    return Err(QueryError::bad_request(
                        "compare=custom needs compare_from and compare_to",
                    ));
                };
                let span = Span {
                    from: clock.instant("compare_from", from, false)?,
                    to: clock.instant("compare_to", to, true)?,
                };
                if span.from >= span.to {
                    return Err(QueryError::bad_request(
                        "compare_from must be before compare_to",
                    ));
                }
                Some(Compare::Custom(span))
            }
            Some(other) => {
                return Err(QueryError::bad_request(format!(
                    "compare: {other:?} is not one of previous_period, previous_year, custom"
                )));
            }
        };
        if compare.is_none() && (p.compare_from.is_some() || p.compare_to.is_some()) {
            return Err(QueryError::bad_request(
                "compare_from and compare_to go with compare=custom",
            ));
        }
        Ok(Question {
            site: site.to_owned(),
            clock,
            span,
            filters: Filters::parse(p)?,
            metrics,
            ask,
            compare,
        })
    }

    /// The range a comparison covers.
    fn comparison_span(&self, compare: Compare) -> Span {
        match compare {
            Compare::PreviousPeriod => {
                let len = self.span.to - self.span.from;
                Span {
                    from: self.span.from - len,
                    to: self.span.from,
                }
            }
            Compare::PreviousYear => Span {
                from: self.clock.year_before(self.span.from),
                to: self.clock.year_before(self.span.to),
            },
            Compare::Custom(span) => span,
        }
    }

    /// The bucket starts of a series over the range.
    fn starts(&self, interval: Granularity) -> Result<Vec<i64>, QueryError> {
        let mut starts = vec![self.span.from];
        while let Some(&last) = starts.last() {
            let next = self.clock.next(interval, last);
            if next >= self.span.to {
                break;
            }
            if starts.len() >= MAX_POINTS {
                return Err(QueryError::bad_request(format!(
                    "range too large for interval {}: more than {MAX_POINTS} points; use a coarser interval or a shorter range",
                    interval.label()
                )));
            }
            starts.push(next);
        }
        Ok(starts)
    }

    /// The parameters under which the rollups answer this question exactly,
    /// or `None` when they cannot.
    fn rollup_params(&self, p: &Params) -> Option<Params> {
        let mut name = None;
        let mut dim: Option<(Dimension, String)> = None;
        for f in &self.filters.list {
            let [value] = f.values.as_slice() else {
                return None;
            };
            if f.op != FilterOp::Is {
                return None;
            }
            match &f.dim {
                Dim::Name if name.is_none() => name = Some(value.clone()),
                d if dim.is_none() => dim = Some((Dimension::parse(&d.name())?, value.clone())),
                _ => return None,
            }
        }
        let filtered = !self.filters.is_empty();
        let rollup_metric =
            |m: &Metric| Metric::ALL.contains(m) && (!filtered || Metric::FILTERABLE.contains(m));
        if !self.metrics.iter().all(rollup_metric) {
            return None;
        }
        let mut out = Params {
            from: p.from.clone(),
            to: p.to.clone(),
            tz: p.tz.clone(),
            interval: p.interval.clone(),
            metrics: p.metrics.clone(),
            name,
            ..Params::default()
        };
        if let Some((d, v)) = dim {
            engine::set_dimension(&mut out, d, v);
        }
        match &self.ask {
            Ask::Properties { .. } => return None,
            Ask::Breakdown { by, metric, limit } => {
                let by_rollups = match by {
                    Dim::Name => *metric == Metric::Events,
                    Dim::EntryPage | Dim::ExitPage => *metric == Metric::Sessions && !filtered,
                    d => {
                        Dimension::parse(&d.name()).is_some()
                            && matches!(metric, Metric::Events | Metric::Pageviews)
                    }
                };
                if !by_rollups || self.metrics != [*metric] {
                    return None;
                }
                out.metrics = None;
                out.dimension = Some(by.name());
                out.metric = Some(metric.name().to_owned());
                out.limit = Some(*limit);
            }
            _ => {}
        }
        Some(out)
    }
}

impl QueryNode {
    /// Answer a question about a site's numbers: from the rollups when they
    /// answer it exactly, else from the event store.
    pub(crate) async fn plan(
        &self,
        op: Op,
        site: &str,
        p: &Params,
        now: i64,
    ) -> Result<String, QueryError> {
        let q = Question::parse(op, site, p, now)?;
        if q.compare.is_none()
            && matches!(q.ask, Ask::Timeseries { .. })
            && let Some(rp) = q.rollup_params(p)
        {
            match self.rollup_text(&q, &rp) {
                Ok((text, newest)) => return stamped(text, newest),
                Err(e) if e.kind == Some(NOT_IN_ROLLUPS) => {}
                Err(e) => return Err(e),
            }
        }
        let mut answer = self.answer_range(&q, p).await?;
        if let Some(compare) = q.compare {
            let span = q.comparison_span(compare);
            let other = Question {
                span: match &q.ask {
                    Ask::Timeseries { interval } => q.clock.align(span, *interval),
                    _ => span,
                },
                compare: None,
                ..q.clone()
            };
            let before = self
                .answer_range(
                    &other,
                    &Params {
                        from: Some(q.clock.rfc3339(other.span.from)),
                        to: Some(q.clock.rfc3339(other.span.to)),
                        ..p.clone()
                    },
                )
                .await?;
            let mut comparison = Map::new();
            comparison.insert("range".into(), before["range"].clone());
            comparison.insert("source".into(), before["source"].clone());
            for field in [
                "metrics",
                "points",
                "totals",
                "rows",
                "other",
                "total",
                "total_rows",
            ] {
                if let Some(v) = before.get(field) {
                    let v = if field == "metrics" {
                        // The figures themselves, without their own previous period.
                        Value::Object(
                            v.as_object()
                                .map(|m| {
                                    m.iter()
                                        .map(|(k, f)| (k.clone(), f["value"].clone()))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        )
                    } else {
                        v.clone()
                    };
                    comparison.insert(field.into(), v);
                }
            }
            answer["comparison"] = Value::Object(comparison);
        }
        serde_json::to_string(&answer).map_err(|e| QueryError::unavailable(e.to_string()))
    }

    async fn answer_range(&self, q: &Question, p: &Params) -> Result<Value, QueryError> {
        if let Some(rp) = q.rollup_params(p) {
            match self.ask_rollups(q, &rp) {
                Err(e) if e.kind == Some(NOT_IN_ROLLUPS) => {}
                other => return other,
            }
        }
        self.ask_store(q).await
    }

    fn ask_rollups(&self, q: &Question, rp: &Params) -> Result<Value, QueryError> {
        let (text, newest) = self.rollup_text(q, rp)?;
        let mut v: Value =
            serde_json::from_str(&text).map_err(|e| QueryError::unavailable(e.to_string()))?;
        v["source"] = "rollups".into();
        v["fresh_through"] = newest.map_or(Value::Null, |ms| rfc3339(ms).into());
        v["range"] = json!({"from": v["from"].clone(), "to": v["to"].clone()});
        if let Ask::Breakdown { metric, .. } = q.ask {
            v["metrics"] = json!([metric.name()]);
            if let Some(rows) = v["rows"].as_array_mut() {
                for row in rows {
                    row[metric.name()] = row["count"].clone();
                }
            }
        }
        Ok(v)
    }

    /// The rollups' answer as the engine writes it, and the newest event they count.
    fn rollup_text(&self, q: &Question, rp: &Params) -> Result<(String, Option<i64>), QueryError> {
        let answer = match q.ask {
            Ask::Timeseries { .. } => engine::timeseries,
            Ask::Breakdown { .. } => engine::breakdown,
            _ => engine::summary,
        };
        self.rollups().read(|f| {
            if !f.ready {
                return Err(QueryError::unavailable(
                    "this query node is still loading the rollups; try again in a moment",
                ));
            }
            answer(&f.view, &q.site, rp, q.clock.now())
                .map(|t| (t, f.newest.as_ref().map(|n| n.newest_received_ms)))
        })
    }

    async fn ask_store(&self, q: &Question) -> Result<Value, QueryError> {
        let engine = self.engine()?;
        // Goals are read only when a filter names one (a KV read).
        let ctx = if q.filters.has_goals() {
            let ctx = SqlContext::of(self, &q.site).await?;
            q.filters.check_goals(&ctx)?;
            ctx
        } else {
            SqlContext::default()
        };
        let timeout_ms = self.session_timeout_ms();
        let mut out = Map::new();
        out.insert("site".into(), q.site.clone().into());
        out.insert("from".into(), q.clock.render(q.span.from).into());
        out.insert("to".into(), q.clock.render(q.span.to).into());
        out.insert("tz".into(), q.clock.tz_name().into());
        out.insert("filters".into(), echo(&q.filters));
        let run = |key: Key, span: Span, totals: Totals| {
            let ctx = &ctx;
            async move {
                let plan = Plan {
                    span,
                    filters: &q.filters,
                    ctx,
                    key: &key,
                    timeout_ms,
                };
                figures(engine, &q.site, &plan, &q.metrics, totals).await
            }
        };
        match &q.ask {
            Ask::Summary => {
                let len = q.span.to - q.span.from;
                let previous = Span {
                    from: q.span.from - len,
                    to: q.span.from,
                };
                let ((now, _), (before, _)) = futures::try_join!(
                    run(Key::All, q.span, Totals::None),
                    run(Key::All, previous, Totals::None)
                )?;
                let now = now.get("all").cloned().unwrap_or_default();
                let before = before.get("all").cloned().unwrap_or_default();
                let mut metrics = Map::new();
                for m in &q.metrics {
                    let value = now.value(*m, None);
                    let prev = before.value(*m, None);
                    let change = engine::change(*m, &value, &prev);
                    metrics.insert(
                        m.name().into(),
                        json!({"value": value, "previous": prev, "change": change}),
                    );
                }
                out.insert(
                    "previous".into(),
                    json!({"from": q.clock.render(previous.from), "to": q.clock.render(previous.to), "available": true}),
                );
                out.insert("metrics".into(), Value::Object(metrics));
            }
            Ask::Timeseries { interval } => {
                let starts = q.starts(*interval)?;
                // The totals come from the same cut as the points.
                let (per, totals) =
                    run(Key::Buckets(starts.clone()), q.span, Totals::Every).await?;
                let points: Vec<Value> = starts
                    .iter()
                    .map(|s| {
                        let f = per.get(&s.to_string()).cloned().unwrap_or_default();
                        let mut point = Map::new();
                        point.insert("start".into(), q.clock.render(*s).into());
                        for m in &q.metrics {
                            point.insert(m.name().into(), f.value(*m, Some(&totals)));
                        }
                        Value::Object(point)
                    })
                    .collect();
                out.insert("interval".into(), interval.label().into());
                out.insert(
                    "metrics".into(),
                    q.metrics
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .into(),
                );
                out.insert("points".into(), points.into());
                let mut t = Map::new();
                for m in &q.metrics {
                    t.insert(m.name().into(), totals.value(*m, None));
                }
                out.insert("totals".into(), Value::Object(t));
            }
            Ask::Breakdown { by, metric, limit } => {
                let conversion = q.metrics.contains(&Metric::ConversionRate);
                let totals = if conversion {
                    Totals::AllUsers
                } else {
                    Totals::None
                };
                let lists = self.day_lists();
                let (per, all) = if q.filters.is_empty()
                    && lists.enabled()
                    && days::answers(by, &q.metrics, *metric, q.span)
                {
                    let per = lists
                        .breakdown(engine, &q.site, by, q.span, q.clock.now())
                        .await?;
                    (per, Figures::default())
                } else {
                    run(Key::Dim(by.clone()), q.span, totals).await?
                };
                let all = conversion.then_some(all);
                let mut rows: Vec<(String, Figures)> = per.into_iter().collect();
                let rank = |f: &Figures| f.value(*metric, all.as_ref()).as_f64().unwrap_or(0.0);
                rows.sort_by(|a, b| {
                    rank(&b.1)
                        .total_cmp(&rank(&a.1))
                        .then_with(|| a.0.cmp(&b.0))
                });
                let total_rows = rows.len();
                let additive = matches!(
                    metric,
                    Metric::Events | Metric::Pageviews | Metric::Sessions
                );
                let total: f64 = rows.iter().map(|(_, f)| rank(f)).sum();
                rows.truncate(*limit as usize);
                let shown: f64 = rows.iter().map(|(_, f)| rank(f)).sum();
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|(value, f)| {
                        let mut row = Map::new();
                        row.insert("value".into(), value.clone().into());
                        row.insert("count".into(), f.value(*metric, all.as_ref()));
                        for m in &q.metrics {
                            row.insert(m.name().into(), f.value(*m, all.as_ref()));
                        }
                        Value::Object(row)
                    })
                    .collect();
                out.insert("dimension".into(), by.name().into());
                out.insert("metric".into(), metric.name().into());
                out.insert(
                    "metrics".into(),
                    q.metrics
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .into(),
                );
                out.insert("rows".into(), rows.into());
                if additive {
                    out.insert("other".into(), ((total - shown) as i64).into());
                    out.insert("total".into(), (total as i64).into());
                } else {
                    out.insert("other".into(), Value::Null);
                    out.insert("total".into(), Value::Null);
                }
                out.insert("total_rows".into(), total_rows.into());
            }
            Ask::Properties { limit } => {
                let key = Key::All;
                let plan = Plan {
                    span: q.span,
                    filters: &q.filters,
                    ctx: &ctx,
                    key: &key,
                    timeout_ms,
                };
                let rows = run_sql(engine, &q.site, &plan.properties_sql()).await?;
                let mut props: Vec<(String, i64, i64)> = rows
                    .iter()
                    .map(|r| (text(&r["key"]), int(&r["events"]), int(&r["users"])))
                    .collect();
                props.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let total_rows = props.len();
                props.truncate(*limit as usize);
                out.insert(
                    "properties".into(),
                    props
                        .into_iter()
                        .map(|(key, events, users)| json!({"key": key, "events": events, "users": users}))
                        .collect::<Vec<_>>()
                        .into(),
                );
                out.insert("total_rows".into(), total_rows.into());
            }
        }
        out.insert("source".into(), "store".into());
        out.insert(
            "fresh_through".into(),
            engine
                .view()
                .newest_received_ms()
                .map_or(Value::Null, |ms| rfc3339(ms).into()),
        );
        out.insert(
            "range".into(),
            json!({"from": q.clock.render(q.span.from), "to": q.clock.render(q.span.to)}),
        );
        Ok(Value::Object(out))
    }
}

/// The filters as an answer echoes them: `{dimension: value}` for a single
/// `==` value (as the shorthands always were), else `{dimension: filter text}`.
fn echo(filters: &Filters) -> Value {
    let mut m = Map::new();
    for f in &filters.list {
        let text = match (f.op, f.values.as_slice()) {
            (FilterOp::Is, [one]) => one.clone(),
            _ => f.to_string(),
        };
        m.insert(f.dim.name(), text.into());
    }
    Value::Object(m)
}

/// A time series from the rollups as the engine wrote it, with the fields
/// [`QueryNode::ask_rollups`] adds to every rollup answer (its source, how
/// fresh it is, the range it covers) appended: a long series is passed on
/// without being parsed into a tree and written again, which took a third
/// of its time (a 28-day hourly series is 170 KB).
fn stamped(text: String, newest: Option<i64>) -> Result<String, QueryError> {
    #[derive(serde::Deserialize)]
    struct Edges {
        from: String,
        to: String,
    }
    let bad = |e: &dyn std::fmt::Display| QueryError::unavailable(e.to_string());
    let edges: Edges = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    let stamp = json!({
        "source": "rollups",
        "fresh_through": newest.map(rfc3339),
        "range": {"from": edges.from, "to": edges.to},
    })
    .to_string();
    match (text.strip_suffix('}'), stamp.strip_prefix('{')) {
        (Some(body), Some(fields)) => Ok(format!("{body},{fields}")),
        _ => Err(bad(&"a rollup answer is not a JSON object")),
    }
}

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The figures of one group.
#[derive(Debug, Clone, Default)]
struct Figures {
    events: i64,
    pageviews: i64,
    users: i64,
    sessions: i64,
    bounces: i64,
    duration_ms: i64,
    revenue: BTreeMap<String, Decimal>,
    engaged_ms: i64,
    scroll_sum: i64,
    scrolled: i64,
    filtered: BTreeMap<String, i64>,
    /// Every user of the group's range, selected or not (for conversion rates).
    all_users: Option<i64>,
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

impl Figures {
    /// One metric as JSON, as the rollups' answers write it. `whole` gives
    /// the denominator of a conversion rate when the group has none of its own.
    fn value(&self, m: Metric, whole: Option<&Figures>) -> Value {
        let per_session =
            |x: f64| -> Value { (self.sessions > 0).then(|| x / self.sessions as f64).into() };
        match m {
            Metric::Events => self.events.into(),
            Metric::Users | Metric::Visitors => self.users.into(),
            Metric::Pageviews => self.pageviews.into(),
            Metric::Sessions => self.sessions.into(),
            Metric::BounceRate => match per_session(self.bounces as f64) {
                Value::Number(n) => round(n.as_f64().unwrap_or(0.0), 4).into(),
                other => other,
            },
            Metric::AvgSessionDuration => match per_session(self.duration_ms as f64 / 1000.0) {
                Value::Number(n) => round(n.as_f64().unwrap_or(0.0), 3).into(),
                other => other,
            },
            Metric::Revenue => Value::Object(
                self.revenue
                    .iter()
                    .map(|(c, a)| (c.clone(), a.normalize().to_string().into()))
                    .collect(),
            ),
            Metric::AvgEngagedTime => (self.pageviews > 0)
                .then(|| round(self.engaged_ms as f64 / 1000.0 / self.pageviews as f64, 3))
                .into(),
            Metric::AvgScrollDepth => (self.scrolled > 0)
                .then(|| round(self.scroll_sum as f64 / self.scrolled as f64, 1))
                .into(),
            Metric::Filtered => Value::Object(
                self.filtered
                    .iter()
                    .filter(|(_, n)| **n != 0)
                    .map(|(r, n)| (r.clone(), (*n).into()))
                    .collect(),
            ),
            Metric::ConversionRate => {
                let all = self.all_users.or(whole.and_then(|w| w.all_users));
                match all {
                    Some(all) if all > 0 => round(self.users as f64 * 100.0 / all as f64, 2).into(),
                    _ => Value::Null,
                }
            }
        }
    }
}

/// Run `sql` and return its rows.
async fn run_sql(
    engine: &beacon_store::Engine,
    site: &str,
    sql: &str,
) -> Result<Vec<Value>, QueryError> {
    let answer = engine
        .sql(site, sql, beacon_store::SqlFormat::Json)
        .await
        .map_err(|e| planner_error(e, sql))?;
    rows_of(&answer)
}

/// Run `steps`, then `queries` over them, in one session; the rows of each query.
async fn run_staged(
    engine: &beacon_store::Engine,
    site: &str,
    steps: &[Step],
    queries: &[String],
) -> Result<Vec<Vec<Value>>, QueryError> {
    let answers = engine
        .staged(site, steps, queries, beacon_store::SqlFormat::Json)
        .await
        .map_err(|e| {
            let sql: Vec<&str> = steps
                .iter()
                .map(|s| s.sql.as_str())
                .chain(queries.iter().map(String::as_str))
                .collect();
            planner_error(e, &sql.join(";\n"))
        })?;
    answers.iter().map(rows_of).collect()
}

/// A failure of the planner's SQL, said in the question's terms.
fn planner_error(e: beacon_store::SqlError, sql: &str) -> QueryError {
    let mut e = QueryError::from(e);
    match e.status {
        // The SQL is ours: a failure to plan it is a bug, not the asker's fault.
        400 => {
            tracing::error!(error = %e.message, sql, "the planner's SQL failed");
            e.status = 500;
        }
        413 => {
            e.message = format!(
                "this question has more groups than query.sql.max_rows allows; narrow it with a filter or a shorter range ({})",
                e.message
            );
        }
        _ => {}
    }
    e
}

fn rows_of(answer: &beacon_store::Answer) -> Result<Vec<Value>, QueryError> {
    let mut body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| QueryError::internal(format!("unreadable SQL answer: {e}")))?;
    Ok(match body["rows"].take() {
        Value::Array(rows) => rows,
        _ => Vec::new(),
    })
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_f64().map(|f| f as i64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Which figures a query's rows hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Events,
    Sessions,
    Revenue,
    Engagement,
    Filtered,
    AllUsers,
}

/// One query of a question: what its rows hold, whether they are the
/// totals' (not a group's), and its SQL.
type Query = (Part, bool, String);

/// What a question needs of the whole range's figures beside its groups'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Totals {
    None,
    /// Only every user in range (a breakdown's conversion rates).
    AllUsers,
    /// Every figure (a series' totals).
    Every,
}

/// `rows` of `part` added to the groups' figures.
fn fill(out: &mut BTreeMap<String, Figures>, part: Part, rows: &[Value], breakdown: bool) {
    for r in rows {
        let k = text(&r["k"]);
        // Pings and bots are not traffic: in a breakdown they add to the
        // values traffic has, never make a row of their own.
        if breakdown && matches!(part, Part::Engagement | Part::Filtered) && !out.contains_key(&k) {
            continue;
        }
        let f = out.entry(k).or_default();
        match part {
            Part::Events => {
                f.events = int(&r["events"]);
                f.pageviews = int(&r["pageviews"]);
                f.users = int(&r["users"]);
            }
            Part::Sessions => {
                f.sessions = int(&r["sessions"]);
                f.bounces = int(&r["bounces"]);
                f.duration_ms = int(&r["duration_ms"]);
            }
            Part::Revenue => {
                let amount: Decimal = text(&r["amount"]).parse().unwrap_or_default();
                f.revenue.insert(text(&r["currency"]), amount);
            }
            Part::Engagement => {
                f.engaged_ms = int(&r["engaged_ms"]);
                f.scroll_sum = int(&r["scroll_sum"]);
                f.scrolled = int(&r["scrolled"]);
            }
            Part::Filtered => {
                f.filtered.insert(text(&r["reason"]), int(&r["n"]));
            }
            Part::AllUsers => f.all_users = Some(int(&r["users"])),
        }
    }
}

/// The figures `metrics` need, per group key, and the whole range's as
/// `totals` asks, from as few queries as they need: the selected events and
/// their sessions are cut once, in one staged run whose queries read them;
/// engagement and bot figures, which read other rows, run beside it.
async fn figures(
    engine: &beacon_store::Engine,
    site: &str,
    plan: &Plan<'_>,
    metrics: &[Metric],
    totals: Totals,
) -> Result<(BTreeMap<String, Figures>, Figures), QueryError> {
    let has = |list: &[Metric]| metrics.iter().any(|m| list.contains(m));
    let sessions = sql::needs_sessions(metrics, plan.filters, plan.key);
    let all = Key::All;
    let whole = Plan { key: &all, ..*plan };
    let grouped = !matches!(plan.key, Key::All);
    let (mut staged, mut plain): (Vec<Query>, Vec<Query>) = (Vec::new(), Vec::new());
    for (of_totals, p) in [(false, plan), (true, &whole)] {
        let every = !of_totals || (grouped && totals == Totals::Every);
        if every {
            staged.push((Part::Events, of_totals, p.events_sql()));
            if has(&[
                Metric::Sessions,
                Metric::BounceRate,
                Metric::AvgSessionDuration,
            ]) {
                staged.push((Part::Sessions, of_totals, p.sessions_sql()));
            }
            if has(&[Metric::Revenue]) {
                staged.push((Part::Revenue, of_totals, p.revenue_sql()));
            }
            if has(&[Metric::AvgEngagedTime, Metric::AvgScrollDepth]) {
                plain.push((Part::Engagement, of_totals, p.engagement_sql()));
            }
            if has(&[Metric::Filtered]) {
                plain.push((Part::Filtered, of_totals, p.filtered_sql()));
            }
        }
        let all_users = if of_totals {
            grouped && totals != Totals::None
        } else {
            !matches!(p.key, Key::Dim(_))
        };
        if all_users && has(&[Metric::ConversionRate]) {
            match p.all_users_step_sql(sessions) {
                Some(sql) => staged.push((Part::AllUsers, of_totals, sql)),
                None => plain.push((Part::AllUsers, of_totals, p.all_users_sql())),
            }
        }
    }
    let mut steps = plan.steps(sessions);
    let mut staged_sql: Vec<String> = staged.iter().map(|(_, _, sql)| sql.clone()).collect();
    // Selected events read by one query alone are streamed into it, not kept:
    // keeping them would only copy rows that one aggregate reads once.
    if let ([sel], [query]) = (steps.as_slice(), staged_sql.as_mut_slice()) {
        *query = format!("WITH {} AS ({}) {query}", sel.name, sel.sql);
        steps.clear();
    }
    let (staged_rows, plain_rows) = futures::try_join!(
        run_staged(engine, site, &steps, &staged_sql),
        futures::future::try_join_all(plain.iter().map(|(_, _, sql)| run_sql(engine, site, sql))),
    )?;
    let (mut out, mut whole_figures) = (BTreeMap::new(), BTreeMap::new());
    let breakdown = matches!(plan.key, Key::Dim(_));
    // Traffic's figures first: engagement and bots add to the rows they make.
    for ((part, of_totals, _), rows) in staged
        .iter()
        .zip(&staged_rows)
        .chain(plain.iter().zip(&plain_rows))
    {
        if *of_totals {
            fill(&mut whole_figures, *part, rows, false);
        } else {
            fill(&mut out, *part, rows, breakdown);
        }
    }
    let totals = whole_figures.remove("all").unwrap_or_default();
    Ok((out, totals))
}

/// Year arithmetic for `compare=previous_year`.
impl Clock {
    /// The same local time a year earlier (29 February becomes the 28th).
    fn year_before(&self, ms: i64) -> i64 {
        let local = self.local(ms).naive_local();
        let date = local.date();
        let earlier = date
            .with_year(date.year() - 1)
            .or_else(|| date.with_day(28).and_then(|d| d.with_year(date.year() - 1)))
            .unwrap_or(date);
        self.resolve(earlier.and_time(local.time()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_series_carries_what_every_rollup_answer_does() {
        let text = r#"{"site":"s","from":"2026-01-01T00:00:00Z","to":"2026-01-02T00:00:00Z","points":[{"events":1}]}"#;
        let v: Value = serde_json::from_str(&stamped(text.into(), Some(1_000)).expect("stamped"))
            .expect("JSON");
        assert_eq!(v["source"], "rollups");
        assert_eq!(v["fresh_through"], "1970-01-01T00:00:01.000Z");
        assert_eq!(
            v["range"],
            json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"})
        );
        assert_eq!(v["points"], json!([{"events": 1}]));
        let v: Value =
            serde_json::from_str(&stamped(text.into(), None).expect("stamped")).expect("JSON");
        assert_eq!(v["fresh_through"], Value::Null);
        assert!(stamped("[1]".into(), None).is_err());
    }

    fn q(op: Op, query: &str) -> Result<Question, QueryError> {
        Question::parse(op, "s", &Params::from_query(query)?, 1_790_000_000_000)
    }

    #[test]
    fn the_rollups_answer_only_what_they_keep() {
        let cases = [
            (Op::Summary, "", true),
            (Op::Summary, "metrics=events&country=FR", true),
            (Op::Summary, "metrics=events&filters=country==FR", true),
            (
                Op::Summary,
                "metrics=events,pageviews&name=signup&filters=path==/",
                true,
            ),
            (Op::Summary, "country=FR", false),
            (Op::Summary, "metrics=users&country=FR", false),
            (Op::Summary, "metrics=events&filters=country==FR|DE", false),
            (Op::Summary, "metrics=events&filters=country!=FR", false),
            (
                Op::Summary,
                "metrics=events&filters=country==FR;path==/",
                false,
            ),
            (Op::Summary, "metrics=events&filters=props.plan==pro", false),
            (Op::Summary, "metrics=visitors", false),
            (Op::Breakdown, "dimension=path", false),
            (
                Op::Breakdown,
                "dimension=path&metric=events&metrics=events",
                true,
            ),
            (Op::Breakdown, "dimension=path&metric=events", false),
            (
                Op::Breakdown,
                "dimension=referrer&metric=events&metrics=events",
                false,
            ),
            (
                Op::Breakdown,
                "dimension=entry_page&metric=sessions&metrics=sessions",
                true,
            ),
            (Op::Properties, "", false),
        ];
        for (op, query, rollups) in cases {
            let question = q(op, query).expect(query);
            let p = Params::from_query(query).expect(query);
            assert_eq!(question.rollup_params(&p).is_some(), rollups, "{query}");
        }
    }

    #[test]
    fn bad_questions_are_refused() {
        let cases = [
            (Op::Summary, "compare=last_week", "compare"),
            (Op::Summary, "compare=custom", "compare_from"),
            (Op::Summary, "compare_from=-2d", "compare=custom"),
            (Op::Properties, "metrics=events", "does not apply"),
            (Op::Breakdown, "", "dimension is required"),
            (Op::Breakdown, "dimension=goal", "unknown dimension"),
            (Op::Summary, "filters=colour==red", "unknown dimension"),
        ];
        for (op, query, expected) in cases {
            let err = q(op, query).expect_err(query);
            assert_eq!(err.status, 400, "{query}");
            assert!(err.message.contains(expected), "{query}: {err}");
        }
    }

    #[test]
    fn a_year_before_keeps_the_local_time() {
        let c = Clock::new("Europe/Berlin".parse().expect("zone"), 0);
        let t = c.instant("from", "2026-07-01", false).expect("date");
        assert_eq!(c.render(c.year_before(t)), "2025-07-01T00:00:00+02:00");
        let leap = c.instant("from", "2028-02-29", false).expect("date");
        assert_eq!(c.render(c.year_before(leap)), "2027-02-28T00:00:00+01:00");
    }
}
