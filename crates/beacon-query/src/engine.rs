//! Answers from the merged rollups: time series, breakdowns and summaries of a
//! site over any range, in any time zone. Pure functions of a [`View`], the
//! parameters and the time: HTTP and the NATS service both call them, so the
//! same question gets the same answer however it is asked.
//!
//! A range is read from the coarsest rollup buckets that fit it exactly (whole
//! days in the middle, hours and minutes at the edges), so a month costs about
//! as much as a day. Minute buckets are kept for a shorter time than hours and
//! days; a range whose edges need minutes that are gone is refused with the
//! kind `not_in_rollups`, never answered approximately, and the planner
//! ([`crate::planner`]) then asks the event store.

use std::collections::BTreeMap;

use beacon_rollup::view::Merged;
use beacon_rollup::{Counters, DIMENSIONS, Dimension, Granularity, OTHER, PAGEVIEW, View};
use chrono::{DateTime, Datelike, LocalResult, NaiveDate, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::QueryError;

/// Most points one time series may have.
pub const MAX_POINTS: usize = 1500;
/// Most rows one breakdown may return.
pub const MAX_LIMIT: u32 = 1000;

/// Parameters every operation on a site's numbers takes: the range, the time
/// zone and the filters.
pub const COMMON_PARAMS: [&str; 19] = [
    "filters",
    "from",
    "to",
    "tz",
    "name",
    "path",
    "referrer_source",
    "browser",
    "os",
    "device",
    "country",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "region",
    "city",
];
/// Parameters only some operations take, by operation.
pub use crate::planner::{BREAKDOWN_PARAMS, PROPERTIES_PARAMS, SUMMARY_PARAMS, TIMESERIES_PARAMS};

/// The parameters of every operation, as given in a URL query or a NATS
/// request's `params`. Each operation says which it takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub from: Option<String>,
    pub to: Option<String>,
    pub interval: Option<String>,
    pub tz: Option<String>,
    pub metrics: Option<String>,
    pub dimension: Option<String>,
    pub metric: Option<String>,
    pub limit: Option<u32>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub referrer_source: Option<String>,
    pub browser: Option<String>,
    pub os: Option<String>,
    pub device: Option<String>,
    pub country: Option<String>,
    pub channel: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    /// The filter language ([`crate::filter`]), AND-ed with the shorthands above.
    pub filters: Option<String>,
    /// `previous_period`, `previous_year` or `custom` (with the two below).
    pub compare: Option<String>,
    pub compare_from: Option<String>,
    pub compare_to: Option<String>,
    // Goals, funnels and retention (`crate::analysis`).
    /// Funnel steps, `;`-separated: `event:<name>`, `path:<pattern>`, `goal:<name>`.
    pub steps: Option<String>,
    /// Funnel conversion window (`30m`, `1d`, `7d`).
    pub window: Option<String>,
    /// A saved funnel's name, instead of `steps`.
    pub funnel: Option<String>,
    /// Retention cohorts by `day` or `week`.
    pub period: Option<String>,
    /// Retention: return periods shown after each cohort's own.
    pub periods: Option<u32>,
    /// Retention: the event that puts a user in a cohort (default: any).
    pub cohort_event: Option<String>,
    /// Retention: the event that counts as coming back (default: any).
    pub return_event: Option<String>,
}

impl Params {
    /// Parse a URL query string.
    pub fn from_query(query: &str) -> Result<Params, QueryError> {
        serde_urlencoded::from_str(query)
            .map_err(|e| QueryError::bad_request(format!("bad query parameters: {e}")))
    }

    /// Refuse parameters the operation does not take.
    fn only(&self, op: &str, allowed: &[&str]) -> Result<(), QueryError> {
        let given = [
            ("interval", self.interval.is_some()),
            ("metrics", self.metrics.is_some()),
            ("dimension", self.dimension.is_some()),
            ("metric", self.metric.is_some()),
            ("limit", self.limit.is_some()),
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
}

/// What can be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Events,
    Users,
    Pageviews,
    Sessions,
    BounceRate,
    AvgSessionDuration,
    Revenue,
    AvgEngagedTime,
    AvgScrollDepth,
    Filtered,
    /// The same figure as users, by the name Plausible gives it.
    Visitors,
    /// Users with a selected event / all users in range, percent.
    ConversionRate,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Events,
        Metric::Users,
        Metric::Pageviews,
        Metric::Sessions,
        Metric::BounceRate,
        Metric::AvgSessionDuration,
        Metric::Revenue,
        Metric::AvgEngagedTime,
        Metric::AvgScrollDepth,
        Metric::Filtered,
    ];
    /// Every metric a question may name (the event store answers all of them).
    pub const KNOWN: [Metric; 12] = [
        Metric::Events,
        Metric::Users,
        Metric::Pageviews,
        Metric::Sessions,
        Metric::BounceRate,
        Metric::AvgSessionDuration,
        Metric::Revenue,
        Metric::AvgEngagedTime,
        Metric::AvgScrollDepth,
        Metric::Filtered,
        Metric::Visitors,
        Metric::ConversionRate,
    ];
    /// What the rollups keep per dimension value: answerable under filters.
    pub const FILTERABLE: [Metric; 2] = [Metric::Events, Metric::Pageviews];

    pub const fn name(self) -> &'static str {
        match self {
            Metric::Events => "events",
            Metric::Users => "users",
            Metric::Pageviews => "pageviews",
            Metric::Sessions => "sessions",
            Metric::BounceRate => "bounce_rate",
            Metric::AvgSessionDuration => "avg_session_duration",
            Metric::Revenue => "revenue",
            Metric::AvgEngagedTime => "avg_engaged_time",
            Metric::AvgScrollDepth => "avg_scroll_depth",
            Metric::Filtered => "filtered",
            Metric::Visitors => "visitors",
            Metric::ConversionRate => "conversion_rate",
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Metric, QueryError> {
        Metric::KNOWN
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                QueryError::bad_request(format!(
                    "unknown metric {name:?} (known: {})",
                    names(&Metric::KNOWN)
                ))
            })
    }
}

fn names(metrics: &[Metric]) -> String {
    metrics
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The filters of a question: an event name and at most one dimension value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub name: Option<String>,
    pub dim: Option<(Dimension, String)>,
}

impl Filters {
    fn parse(p: &Params) -> Result<Filters, QueryError> {
        let given: Vec<(Dimension, &String)> = [
            (Dimension::Path, &p.path),
            (Dimension::ReferrerSource, &p.referrer_source),
            (Dimension::Browser, &p.browser),
            (Dimension::Os, &p.os),
            (Dimension::Device, &p.device),
            (Dimension::Country, &p.country),
            (Dimension::Channel, &p.channel),
            (Dimension::UtmSource, &p.utm_source),
            (Dimension::UtmMedium, &p.utm_medium),
            (Dimension::UtmCampaign, &p.utm_campaign),
            (Dimension::UtmTerm, &p.utm_term),
            (Dimension::UtmContent, &p.utm_content),
            (Dimension::Region, &p.region),
            (Dimension::City, &p.city),
        ]
        .into_iter()
        .filter_map(|(d, v)| v.as_ref().map(|v| (d, v)))
        .collect();
        if given.len() > 1 {
            return Err(QueryError::bad_request(format!(
                "filters on {} at once are not supported: the rollups count events per single dimension; filter on one of them (an event name may be added)",
                given
                    .iter()
                    .map(|(d, _)| d.name())
                    .collect::<Vec<_>>()
                    .join(" and ")
            )));
        }
        Ok(Filters {
            name: p.name.clone(),
            dim: given.first().map(|(d, v)| (*d, (*v).clone())),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.dim.is_none()
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(n) = &self.name {
            m.insert("name".into(), n.clone().into());
        }
        if let Some((d, v)) = &self.dim {
            m.insert(d.name().into(), v.clone().into());
        }
        m
    }

    /// Events in `c` that pass the filters.
    fn events(&self, c: &Counters) -> i64 {
        match (&self.name, &self.dim) {
            (None, None) => c.total_events(),
            (Some(n), None) => c.events.get(n),
            (None, Some((d, v))) => c.dims[d.index()].get(v),
            (Some(n), Some((d, v))) => c.name_dims(n).map_or(0, |x| x[d.index()].get(v)),
        }
    }

    /// Page views in `c` that pass the filters.
    fn pageviews(&self, c: &Counters) -> i64 {
        match (&self.name, &self.dim) {
            (Some(n), _) if n != PAGEVIEW => 0,
            (_, None) => c.pageviews,
            (_, Some((d, v))) => c.name_dims(PAGEVIEW).map_or(0, |x| x[d.index()].get(v)),
        }
    }

    /// Whether answering needs name × dimension counts, which only hour and
    /// day buckets keep.
    fn needs_hours(&self, metrics: &[Metric]) -> bool {
        self.dim.is_some() && (self.name.is_some() || metrics.contains(&Metric::Pageviews))
    }
}

/// Set the shorthand parameter of dimension `d` to `value`.
pub(crate) fn set_dimension(p: &mut Params, d: Dimension, value: String) {
    let field = match d {
        Dimension::Path => &mut p.path,
        Dimension::ReferrerSource => &mut p.referrer_source,
        Dimension::Browser => &mut p.browser,
        Dimension::Os => &mut p.os,
        Dimension::Device => &mut p.device,
        Dimension::Country => &mut p.country,
        Dimension::Channel => &mut p.channel,
        Dimension::UtmSource => &mut p.utm_source,
        Dimension::UtmMedium => &mut p.utm_medium,
        Dimension::UtmCampaign => &mut p.utm_campaign,
        Dimension::UtmTerm => &mut p.utm_term,
        Dimension::UtmContent => &mut p.utm_content,
        Dimension::Region => &mut p.region,
        Dimension::City => &mut p.city,
    };
    *field = Some(value);
}

/// A half-open range of Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: i64,
    pub to: i64,
}

/// Time-zone arithmetic for bucket edges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    tz: Tz,
    now: i64,
}

impl Clock {
    pub(crate) fn new(tz: Tz, now: i64) -> Clock {
        Clock { tz, now }
    }

    pub(crate) fn now(&self) -> i64 {
        self.now
    }

    pub(crate) fn tz_name(&self) -> &'static str {
        self.tz.name()
    }

    /// `ms` as RFC 3339 in this zone, to the millisecond: read back as the same instant.
    pub(crate) fn rfc3339(&self, ms: i64) -> String {
        self.local(ms)
            .to_rfc3339_opts(SecondsFormat::Millis, self.tz == chrono_tz::UTC)
    }

    /// `from` and `to` of `p` as asked (`to` defaults to now, `from` to
    /// `default_back` before `to`), checked to be in order.
    pub(crate) fn range(&self, p: &Params, default_back: i64) -> Result<Span, QueryError> {
        let to = match &p.to {
            Some(t) => self.instant("to", t, true)?,
            None => self.now,
        };
        let from = match &p.from {
            Some(f) => self.instant("from", f, false)?,
            None => to - default_back,
        };
        if from >= to {
            return Err(QueryError::bad_request(format!(
                "from ({}) must be before to ({})",
                self.render(from),
                self.render(to)
            )));
        }
        Ok(Span { from, to })
    }

    /// `span` widened to whole `g` buckets of this zone.
    pub(crate) fn align(&self, span: Span, g: Granularity) -> Span {
        Span {
            from: self.floor(g, span.from),
            to: self.ceil(g, span.to),
        }
    }

    /// The instant of a local date and time (the later side of a DST gap).
    pub(crate) fn resolve(&self, t: chrono::NaiveDateTime) -> i64 {
        let mut t = t;
        for _ in 0..4 {
            match self.tz.from_local_datetime(&t) {
                LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => {
                    return d.timestamp_millis();
                }
                LocalResult::None => match t.checked_add_signed(chrono::Duration::minutes(30)) {
                    Some(later) => t = later,
                    None => break,
                },
            }
        }
        t.and_utc().timestamp_millis()
    }

    pub(crate) fn local(&self, ms: i64) -> DateTime<Tz> {
        self.tz
            .timestamp_millis_opt(ms)
            .single()
            .unwrap_or_else(|| Utc::now().with_timezone(&self.tz))
    }

    pub(crate) fn render(&self, ms: i64) -> String {
        // Whole seconds as before; an exact range from the store keeps its milliseconds.
        let format = if ms % 1000 == 0 {
            SecondsFormat::Secs
        } else {
            SecondsFormat::Millis
        };
        self.local(ms)
            .to_rfc3339_opts(format, self.tz == chrono_tz::UTC)
    }

    /// The first instant of `date` in this zone (midnight, or the end of a DST gap).
    fn midnight(&self, date: NaiveDate) -> i64 {
        self.resolve(date.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// Start of the `g` bucket (in this zone) holding `ms`.
    fn floor(&self, g: Granularity, ms: i64) -> i64 {
        match g {
            Granularity::Minute => Granularity::Minute.bucket_start(ms),
            Granularity::Hour => {
                let offset = self.local(ms).offset().fix().local_minus_utc() as i64 * 1000;
                Granularity::Hour.bucket_start(ms + offset) - offset
            }
            Granularity::Day => self.midnight(self.local(ms).date_naive()),
        }
    }

    /// Start of the `g` bucket after the one starting at `start`.
    pub(crate) fn next(&self, g: Granularity, start: i64) -> i64 {
        match g {
            Granularity::Minute | Granularity::Hour => start + g.millis(),
            Granularity::Day => {
                let date = self.local(start).date_naive();
                self.midnight(date.succ_opt().unwrap_or(date))
            }
        }
    }

    fn ceil(&self, g: Granularity, ms: i64) -> i64 {
        let floor = self.floor(g, ms);
        if floor == ms { ms } else { self.next(g, floor) }
    }

    /// `from` or `to`: an RFC 3339 time, a date (whole days in this zone; `to`
    /// includes its day), `now`, or `-<n>m|h|d` before now. Total: any text
    /// gives an instant within [`EARLIEST`, `LATEST`] or a 400, so no later
    /// arithmetic on it can overflow.
    pub(crate) fn instant(&self, field: &str, text: &str, end: bool) -> Result<i64, QueryError> {
        let ms = self.parse_instant(field, text, end)?;
        if !(EARLIEST..=LATEST).contains(&ms) {
            return Err(QueryError::bad_request(format!(
                "{field}: {text:?} is outside the times Beacon answers for (1970-01-01 to 9999-12-31)"
            )));
        }
        Ok(ms)
    }

    fn parse_instant(&self, field: &str, text: &str, end: bool) -> Result<i64, QueryError> {
        if text == "now" {
            return Ok(self.now);
        }
        if let Some(ago) = text.strip_prefix('-') {
            return self.ago(field, text, ago);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(t.timestamp_millis());
        }
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            // Checked before any zone arithmetic, which is only total on sane dates.
            if !(1970..=9999).contains(&date.year()) {
                return Err(QueryError::bad_request(format!(
                    "{field}: {text:?} is outside the times Beacon answers for (1970-01-01 to 9999-12-31)"
                )));
            }
            let date = if end {
                date.succ_opt().unwrap_or(date)
            } else {
                date
            };
            return Ok(self.midnight(date));
        }
        Err(QueryError::bad_request(format!(
            "{field}: {text:?} is not a time (give RFC 3339 like 2026-11-25T10:00:00Z, a date like 2026-11-25, now, or -30m / -24h / -7d)"
        )))
    }

    /// `-<n>m|h|d`: `n` is plain decimal digits, at most [`MAX_AGO`].
    fn ago(&self, field: &str, text: &str, ago: &str) -> Result<i64, QueryError> {
        let refuse = || {
            QueryError::bad_request(format!(
                "{field}: {text:?} is not a time before now (give -<n>m, -<n>h or -<n>d with n a whole number up to {MAX_AGO}, e.g. -30m / -24h / -7d)"
            ))
        };
        let (n, unit_ms) = match ago.as_bytes().split_last() {
            Some((b'm', n)) => (n, 60_000),
            Some((b'h', n)) => (n, 3_600_000),
            Some((b'd', n)) => (n, 86_400_000),
            _ => return Err(refuse()),
        };
        if n.is_empty() || n.len() > 6 || !n.iter().all(u8::is_ascii_digit) {
            return Err(refuse());
        }
        let n = n.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        if n > MAX_AGO {
            return Err(refuse());
        }
        // n ≤ 100,000 days is under 10^13 ms: no overflow; the result is checked against EARLIEST.
        Ok(self.now - n * unit_ms)
    }
}

/// `from` and `to` of an export, read as the other operations read them
/// (in UTC; a date as `to` includes its day).
pub fn span(from: &str, to: &str, now: i64) -> Result<Span, QueryError> {
    let clock = Clock {
        tz: chrono_tz::UTC,
        now,
    };
    let span = Span {
        from: clock.instant("from", from, false)?,
        to: clock.instant("to", to, true)?,
    };
    if span.from >= span.to {
        return Err(QueryError::bad_request(format!(
            "from ({}) must be before to ({})",
            clock.render(span.from),
            clock.render(span.to)
        )));
    }
    Ok(span)
}

/// The earliest instant a range may name: the Unix epoch.
pub const EARLIEST: i64 = 0;
/// The latest: 10000-01-01T00:00:00Z, the end of four-digit years.
pub const LATEST: i64 = 253_402_300_800_000;
/// The largest `n` of a relative time `-<n>m|h|d`.
pub const MAX_AGO: i64 = 100_000;
/// Most rollup buckets one range may be read from: about a century of whole
/// days. Checked from the range's length before tiling, so no range can make
/// a query node build an unbounded list.
pub const MAX_TILES: i64 = 40_000;

/// The parts of a question every operation has.
#[derive(Debug, Clone)]
struct Common {
    site: String,
    span: Span,
    clock: Clock,
    filters: Filters,
}

pub(crate) fn parse_tz(p: &Params) -> Result<Tz, QueryError> {
    match p.tz.as_deref() {
        None | Some("") => Ok(chrono_tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| {
            QueryError::bad_request(format!(
                "tz: unknown time zone {name:?} (use an IANA name such as Europe/Berlin)"
            ))
        }),
    }
}

pub(crate) fn parse_interval(p: &Params) -> Result<Granularity, QueryError> {
    match p.interval.as_deref() {
        None => Ok(Granularity::Hour),
        Some(label) => Granularity::ALL
            .into_iter()
            .find(|g| g.label() == label)
            .ok_or_else(|| {
                QueryError::bad_request(format!("interval: {label:?} is not one of 1m, 1h, 1d"))
            }),
    }
}

/// Site, range (aligned outwards to `align` in the zone), zone and filters.
fn common(
    site: &str,
    p: &Params,
    now: i64,
    align: Granularity,
    default_back: i64,
) -> Result<Common, QueryError> {
    let clock = Clock {
        tz: parse_tz(p)?,
        now,
    };
    let to = match &p.to {
        Some(t) => clock.instant("to", t, true)?,
        None => now,
    };
    let from = match &p.from {
        Some(f) => clock.instant("from", f, false)?,
        None => to - default_back,
    };
    let span = Span {
        from: clock.floor(align, from),
        to: clock.ceil(align, to),
    };
    if span.from >= span.to {
        return Err(QueryError::bad_request(format!(
            "from ({}) must be before to ({})",
            clock.render(from),
            clock.render(to)
        )));
    }
    Ok(Common {
        site: site.to_owned(),
        span,
        clock,
        filters: Filters::parse(p)?,
    })
}

fn parse_metrics(p: &Params, filters: &Filters) -> Result<Vec<Metric>, QueryError> {
    let metrics = match p.metrics.as_deref() {
        None | Some("") if filters.is_empty() => Metric::ALL.to_vec(),
        None | Some("") => Metric::FILTERABLE.to_vec(),
        Some(list) => list
            .split(',')
            .map(|m| Metric::parse(m.trim()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    check_filterable(&metrics, filters)?;
    Ok(metrics)
}

fn check_filterable(metrics: &[Metric], filters: &Filters) -> Result<(), QueryError> {
    if filters.is_empty() {
        return Ok(());
    }
    match metrics.iter().find(|m| !Metric::FILTERABLE.contains(m)) {
        Some(m) => Err(QueryError::bad_request(format!(
            "metric {} is not available with filters: the rollups keep counts of events per name and dimension value, not users or sessions (with filters: {})",
            m.name(),
            names(&Metric::FILTERABLE)
        ))),
        None => Ok(()),
    }
}

/// The rollup buckets that exactly tile `span`, coarsest first where they fit,
/// none finer than `finest`; refused where the buckets needed are gone.
fn cover(
    view: &View,
    clock: &Clock,
    span: Span,
    finest: Granularity,
) -> Result<Vec<(Granularity, i64)>, QueryError> {
    // Bound the work before doing it: the tiles needed follow from the range's
    // arithmetic (whole days, plus at most 23 hours and 59 minutes at each end),
    // and the first tile starts at `span.from`, so a range reaching past every
    // kept bucket is refused without building anything.
    let kept = oldest_kept(view);
    let len = span.to.saturating_sub(span.from);
    let most_tiles = len / Granularity::Day.millis() + 2 * (23 + 59) + 1;
    if most_tiles > MAX_TILES {
        return Err(QueryError::not_in_rollups(format!(
            "range too large: at most about {} days can be asked at once",
            MAX_TILES - 2 * (23 + 59) - 1
        )));
    }
    let earliest_kept = Granularity::ALL
        .into_iter()
        .filter(|g| *g >= finest)
        .map(|g| kept[g.index()])
        .min()
        .unwrap_or(i64::MIN);
    if span.from < earliest_kept {
        return Err(QueryError::not_in_rollups(format!(
            "range too large: no buckets are kept back to {}; the oldest kept starts at {}",
            clock.render(span.from),
            clock.render(earliest_kept)
        )));
    }
    let mut out = Vec::new();
    let mut t = span.from;
    while t < span.to {
        let g = [Granularity::Day, Granularity::Hour, Granularity::Minute]
            .into_iter()
            .filter(|g| *g >= finest)
            .find(|g| t % g.millis() == 0 && t + g.millis() <= span.to)
            .ok_or_else(|| {
                QueryError::not_in_rollups(format!(
                    "this question needs whole {}s and {} is not on one (the counts it needs are kept per hour and day only)",
                    if finest == Granularity::Hour { "hour" } else { "day" },
                    clock.render(t)
                ))
            })?;
        out.push((g, t));
        t += g.millis();
    }
    for g in Granularity::ALL {
        if let Some((_, start)) = out.iter().find(|(cg, _)| *cg == g)
            && *start < kept[g.index()]
        {
            return Err(QueryError::not_in_rollups(format!(
                "range too large for its interval: {} buckets are kept back to {} only, and the range starts at {}; use a coarser interval or a range on whole {}s",
                g.label(),
                clock.render(kept[g.index()]),
                clock.render(span.from),
                match g {
                    Granularity::Minute => "hour",
                    _ => "day",
                }
            )));
        }
    }
    Ok(out)
}

/// Per granularity, the oldest bucket start still kept (retention).
fn oldest_kept(view: &View) -> [i64; 3] {
    let mut kept = [i64::MIN; 3];
    for state in view.partitions() {
        for (k, c) in kept.iter_mut().zip(state.cutoffs) {
            *k = (*k).max(c);
        }
    }
    kept
}

/// Figures summed over a set of buckets.
#[derive(Debug, Default)]
struct Sums<'a> {
    events: i64,
    pageviews: i64,
    sessions: i64,
    bounces: i64,
    duration_ms: i64,
    revenue: BTreeMap<&'a str, Decimal>,
    engaged_ms: i64,
    scroll_sum: i64,
    scrolled: i64,
    filtered: BTreeMap<&'a str, i64>,
    cells: Vec<&'a Merged>,
    /// The buckets of `cells`, in the same order.
    buckets: Vec<(Granularity, i64)>,
    /// The view and site the cells are of.
    of: Option<(&'a View, &'a str)>,
}

/// A site's merged cells of every granularity over a span, read once in
/// order so each bucket of a long series is found without building a key.
struct Cells<'a> {
    view: &'a View,
    site: &'a str,
    by: [Vec<(i64, &'a Merged)>; 3],
}

impl<'a> Cells<'a> {
    fn new(view: &'a View, site: &'a str, span: Span) -> Self {
        Cells {
            view,
            site,
            by: Granularity::ALL.map(|g| view.buckets(site, g, span.from..span.to).collect()),
        }
    }

    fn get(&self, g: Granularity, start: i64) -> Option<&'a Merged> {
        let cells = &self.by[g.index()];
        cells
            .binary_search_by_key(&start, |(s, _)| *s)
            .ok()
            .map(|i| cells[i].1)
    }
}

impl<'a> Sums<'a> {
    fn of(cells: &Cells<'a>, buckets: &[(Granularity, i64)], f: &Filters) -> Self {
        let mut sums = Sums::default();
        for (g, start) in buckets {
            let Some(cell) = cells.get(*g, *start) else {
                continue;
            };
            let c = &cell.counters;
            sums.events += f.events(c);
            sums.pageviews += f.pageviews(c);
            sums.sessions += c.sessions.started;
            sums.bounces += c.sessions.bounces;
            sums.duration_ms += c.sessions.duration_ms;
            for (currency, amount) in &c.revenue {
                let sum = sums.revenue.entry(currency.as_str()).or_default();
                *sum = sum.saturating_add(*amount);
            }
            let e = &c.engagement;
            sums.engaged_ms += e.engaged_ms.total();
            sums.scroll_sum += e.scroll_sum.total();
            sums.scrolled += e.scrolled.total();
            for (reason, n) in c.filtered.iter() {
                *sums.filtered.entry(reason).or_default() += n;
            }
            sums.cells.push(cell);
            sums.buckets.push((*g, *start));
        }
        sums.of = Some((cells.view, cells.site));
        sums
    }

    fn users(&self) -> f64 {
        match (self.cells.as_slice(), self.of) {
            ([], _) | (_, None) => 0.0,
            ([one], _) => one.users_estimate,
            (_, Some((view, site))) => view.users_over(site, &self.buckets),
        }
    }

    /// One metric's figure as JSON (for summaries): the same figure
    /// [`Sums::values`] writes into a time series.
    fn value(&self, m: Metric) -> Value {
        let mut figures = serde_json::to_value(self.values(&[m], None)).unwrap_or_default();
        figures[m.name()].take()
    }

    /// The figures of `metrics`, typed: a long time series is written
    /// straight into its answer rather than built as a tree of maps first.
    fn values(&self, metrics: &[Metric], start: Option<String>) -> Values<'a> {
        let per_session = |x: f64| (self.sessions > 0).then(|| x / self.sessions as f64);
        let mut v = Values {
            start,
            ..Values::default()
        };
        for m in metrics {
            match m {
                Metric::Events => v.events = Some(self.events),
                Metric::Users => v.users = Some(self.users().round() as i64),
                Metric::Pageviews => v.pageviews = Some(self.pageviews),
                Metric::Sessions => v.sessions = Some(self.sessions),
                Metric::BounceRate => {
                    v.bounce_rate = Some(per_session(self.bounces as f64).map(|r| round(r, 4)));
                }
                Metric::AvgSessionDuration => {
                    v.avg_session_duration =
                        Some(per_session(self.duration_ms as f64 / 1000.0).map(|r| round(r, 3)));
                }
                Metric::Revenue => {
                    v.revenue = Some(Revenue(
                        self.revenue
                            .iter()
                            .map(|(c, a)| (*c, a.normalize()))
                            .collect(),
                    ));
                }
                Metric::AvgEngagedTime => {
                    v.avg_engaged_time = Some((self.pageviews > 0).then(|| {
                        round(self.engaged_ms as f64 / 1000.0 / self.pageviews as f64, 3)
                    }));
                }
                Metric::AvgScrollDepth => {
                    v.avg_scroll_depth = Some(
                        (self.scrolled > 0)
                            .then(|| round(self.scroll_sum as f64 / self.scrolled as f64, 1)),
                    );
                }
                // The planner sends these to the event store, never here.
                Metric::Visitors | Metric::ConversionRate => {}
                Metric::Filtered => {
                    v.filtered = Some(
                        self.filtered
                            .iter()
                            .filter(|(_, n)| **n != 0)
                            .map(|(r, n)| (*r, *n))
                            .collect(),
                    );
                }
            }
        }
        v
    }
}

/// One point of a time series (with its `start`), or the totals (without).
#[derive(Debug, Default, Serialize)]
struct Values<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pageviews: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<i64>,
    /// `Some(None)`: asked for, but no sessions to divide by (`null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    bounce_rate: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_session_duration: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revenue: Option<Revenue<'a>>,
    /// Seconds of engaged time per page view.
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_engaged_time: Option<Option<f64>>,
    /// Mean scroll depth (0–100) of the engagement pings that carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_scroll_depth: Option<Option<f64>>,
    /// Filtered traffic (bots) by reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    filtered: Option<BTreeMap<&'a str, i64>>,
}

/// Revenue per currency, written as exact decimal strings without building them first.
#[derive(Debug, Default)]
struct Revenue<'a>(Vec<(&'a str, Decimal)>);

impl Serialize for Revenue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (currency, amount) in &self.0 {
            map.serialize_entry(currency, &format_args!("{amount}"))?;
        }
        map.end()
    }
}

/// A time series answer, serialized as it is.
#[derive(Debug, Serialize)]
struct Series<'a> {
    site: &'a str,
    from: String,
    to: String,
    tz: &'a str,
    filters: Map<String, Value>,
    interval: &'static str,
    metrics: Vec<&'static str>,
    points: Vec<Values<'a>>,
    totals: Values<'a>,
}

/// Serialize an answer.
fn to_json(value: &impl Serialize) -> Result<String, QueryError> {
    serde_json::to_string(value).map_err(|e| QueryError::unavailable(e.to_string()))
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn header(c: &Common) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("site".into(), c.site.clone().into());
    m.insert("from".into(), c.clock.render(c.span.from).into());
    m.insert("to".into(), c.clock.render(c.span.to).into());
    m.insert("tz".into(), c.clock.tz.name().into());
    m.insert("filters".into(), Value::Object(c.filters.to_json()));
    m
}

fn finest(filters: &Filters, metrics: &[Metric]) -> Granularity {
    if filters.needs_hours(metrics) {
        Granularity::Hour
    } else {
        Granularity::Minute
    }
}

/// Figures per bucket of `interval` over the range, and their totals.
pub fn timeseries(view: &View, site: &str, p: &Params, now: i64) -> Result<String, QueryError> {
    p.only("timeseries", &["interval", "metrics"])?;
    let interval = parse_interval(p)?;
    let c = common(site, p, now, interval, 86_400_000)?;
    let metrics = parse_metrics(p, &c.filters)?;
    let finest = finest(&c.filters, &metrics);
    let mut starts = vec![c.span.from];
    while let Some(&last) = starts.last() {
        let next = c.clock.next(interval, last);
        if next >= c.span.to {
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
    let whole = cover(view, &c.clock, c.span, finest)?;
    let cells = Cells::new(view, site, c.span);
    let mut points = Vec::with_capacity(starts.len());
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(c.span.to);
        let span = Span {
            from: *start,
            to: end,
        };
        let buckets = cover(view, &c.clock, span, finest)?;
        let sums = Sums::of(&cells, &buckets, &c.filters);
        points.push(sums.values(&metrics, Some(c.clock.render(*start))));
    }
    to_json(&Series {
        site,
        from: c.clock.render(c.span.from),
        to: c.clock.render(c.span.to),
        tz: c.clock.tz.name(),
        filters: c.filters.to_json(),
        interval: interval.label(),
        metrics: metrics.iter().map(|m| m.name()).collect(),
        points,
        totals: Sums::of(&cells, &whole, &c.filters).values(&metrics, None),
    })
}

/// Totals over the range and over the period of equal length just before it.
pub fn summary(view: &View, site: &str, p: &Params, now: i64) -> Result<String, QueryError> {
    p.only("summary", &["metrics"])?;
    let c = common(site, p, now, Granularity::Minute, 86_400_000)?;
    let metrics = parse_metrics(p, &c.filters)?;
    let finest = finest(&c.filters, &metrics);
    let len = c.span.to - c.span.from;
    let previous = Span {
        from: c.span.from - len,
        to: c.span.from,
    };
    let cells = Cells::new(
        view,
        site,
        Span {
            from: previous.from,
            to: c.span.to,
        },
    );
    let now_sums = Sums::of(&cells, &cover(view, &c.clock, c.span, finest)?, &c.filters);
    // The previous period may reach past retention; it is then left out
    // rather than making the whole answer fail.
    let before = cover(view, &c.clock, previous, finest)
        .ok()
        .map(|b| Sums::of(&cells, &b, &c.filters));
    let mut figures = Map::new();
    for m in &metrics {
        let value = now_sums.value(*m);
        let prev = before.as_ref().map(|b| b.value(*m)).unwrap_or(Value::Null);
        let change = change(*m, &value, &prev);
        figures.insert(
            m.name().into(),
            json!({"value": value, "previous": prev, "change": change}),
        );
    }
    let mut out = header(&c);
    out.insert(
        "previous".into(),
        json!({"from": c.clock.render(previous.from), "to": c.clock.render(previous.to), "available": before.is_some()}),
    );
    out.insert("metrics".into(), Value::Object(figures));
    to_json(&out)
}

/// Relative change (0.25 is +25 %); for bounce rate, the difference in rate.
pub(crate) fn change(m: Metric, now: &Value, before: &Value) -> Value {
    let rel = |a: f64, b: f64| (b != 0.0).then(|| round((a - b) / b, 4));
    match (m, now, before) {
        // Per currency, or per reason of filtered traffic.
        (Metric::Revenue | Metric::Filtered, Value::Object(a), Value::Object(b)) => Value::Object(
            a.iter()
                .chain(b.iter())
                .map(|(currency, _)| {
                    let amount = |o: &Map<String, Value>| {
                        o.get(currency)
                            .and_then(|v| {
                                v.as_f64()
                                    .or_else(|| v.as_str().and_then(|s| s.parse::<f64>().ok()))
                            })
                            .unwrap_or(0.0)
                    };
                    (currency.clone(), rel(amount(a), amount(b)).into())
                })
                .collect(),
        ),
        (Metric::BounceRate, a, b) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => round(a - b, 4).into(),
            _ => Value::Null,
        },
        (_, a, b) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => rel(a, b).into(),
            _ => Value::Null,
        },
    }
}

/// What a breakdown ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Dim(Dimension),
    Name,
    EntryPage,
    ExitPage,
}

impl By {
    fn parse(name: &str) -> Result<By, QueryError> {
        match name {
            "name" | "event" => Ok(By::Name),
            "entry_page" => Ok(By::EntryPage),
            "exit_page" => Ok(By::ExitPage),
            _ => Dimension::parse(name).map(By::Dim).ok_or_else(|| {
                QueryError::bad_request(format!(
                    "unknown dimension {name:?} (known: name, {}, entry_page, exit_page)",
                    DIMENSIONS.map(|d| d.name()).join(", ")
                ))
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            By::Dim(d) => d.name(),
            By::Name => "name",
            By::EntryPage => "entry_page",
            By::ExitPage => "exit_page",
        }
    }
}

/// The top `limit` values of a dimension by a metric, with the rest as `(other)`.
pub fn breakdown(view: &View, site: &str, p: &Params, now: i64) -> Result<String, QueryError> {
    p.only("breakdown", &["dimension", "metric", "limit"])?;
    let by = By::parse(p.dimension.as_deref().ok_or_else(|| {
        QueryError::bad_request(format!(
            "dimension is required (name, {}, entry_page, exit_page)",
            DIMENSIONS.map(|d| d.name()).join(", ")
        ))
    })?)?;
    let default_metric = match by {
        By::EntryPage | By::ExitPage => Metric::Sessions,
        _ => Metric::Events,
    };
    let metric = p
        .metric
        .as_deref()
        .map(Metric::parse)
        .transpose()?
        .unwrap_or(default_metric);
    let limit = p.limit.unwrap_or(10);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(QueryError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let c = common(site, p, now, Granularity::Minute, 86_400_000)?;
    let f = &c.filters;
    let refuse = |why: &str| {
        Err(QueryError::bad_request(format!(
            "breakdown by {} with metric {}{}: {why}",
            by.name(),
            metric.name(),
            if f.is_empty() {
                ""
            } else {
                " and these filters"
            }
        )))
    };
    // Which counts to add, and whether they need name × dimension (hours).
    let (finest, pick): (Granularity, Pick) = match (by, metric) {
        (By::Dim(d), Metric::Events) => match (&f.name, &f.dim) {
            (None, None) => (
                Granularity::Minute,
                Box::new(move |c, out| add(out, c.dims[d.index()].iter())),
            ),
            (None, Some((fd, v))) if *fd == d => {
                let v = v.clone();
                (
                    Granularity::Minute,
                    Box::new(move |c, out| {
                        add(
                            out,
                            std::iter::once((v.as_str(), c.dims[d.index()].get(&v))),
                        )
                    }),
                )
            }
            (Some(n), None) => {
                let n = n.clone();
                (
                    Granularity::Hour,
                    Box::new(move |c, out| {
                        if let Some(x) = c.name_dims(&n) {
                            add(out, x[d.index()].iter())
                        }
                    }),
                )
            }
            _ => {
                return refuse(
                    "the rollups count events per single dimension, so one dimension cannot be broken down by another",
                );
            }
        },
        (By::Dim(d), Metric::Pageviews) => match (&f.name, &f.dim) {
            (Some(n), _) if n != PAGEVIEW => (Granularity::Minute, Box::new(|_, _| {})),
            (_, None) => (
                Granularity::Hour,
                Box::new(move |c, out| {
                    if let Some(x) = c.name_dims(PAGEVIEW) {
                        add(out, x[d.index()].iter())
                    }
                }),
            ),
            _ => return refuse("the rollups count events per single dimension"),
        },
        (By::Name, Metric::Events) => match (&f.name, &f.dim) {
            (None, None) => (
                Granularity::Minute,
                Box::new(|c, out| add(out, c.events.iter())),
            ),
            (Some(n), None) => {
                let n = n.clone();
                (
                    Granularity::Minute,
                    Box::new(move |c, out| {
                        add(out, std::iter::once((n.as_str(), c.events.get(&n))))
                    }),
                )
            }
            (name, Some((d, v))) => {
                let (d, v, only) = (*d, v.clone(), name.clone());
                (
                    Granularity::Hour,
                    Box::new(move |c, out| {
                        for (n, dims) in c.by_name.iter() {
                            if only.as_ref().is_none_or(|o| o == n) {
                                add(out, std::iter::once((n, dims[d.index()].get(&v))));
                            }
                        }
                    }),
                )
            }
        },
        (By::EntryPage | By::ExitPage, Metric::Sessions) if f.is_empty() => (
            Granularity::Minute,
            Box::new(move |c, out| {
                let s = &c.sessions;
                add(
                    out,
                    if by == By::EntryPage {
                        s.entries.iter()
                    } else {
                        s.exits.iter()
                    },
                )
            }),
        ),
        (By::EntryPage | By::ExitPage, Metric::Sessions) => {
            return refuse("sessions are not kept per filter value");
        }
        (By::EntryPage | By::ExitPage, _) => {
            return refuse("entry and exit pages are ranked by sessions");
        }
        (By::Name, _) => return refuse("event names are ranked by events"),
        (By::Dim(_), _) => {
            return refuse("dimensions are ranked by events or pageviews");
        }
    };
    let mut counts = BTreeMap::new();
    let cells = Cells::new(view, site, c.span);
    for (g, start) in cover(view, &c.clock, c.span, finest)? {
        if let Some(cell) = cells.get(g, start) {
            pick(&cell.counters, &mut counts);
        }
    }
    let total: i64 = counts.values().sum();
    let mut ranked: Vec<(String, i64)> = counts
        .into_iter()
        .filter(|(k, v)| k != OTHER && *v != 0)
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total_rows = ranked.len();
    ranked.truncate(limit as usize);
    let shown: i64 = ranked.iter().map(|(_, v)| v).sum();
    let rows: Vec<Value> = ranked
        .into_iter()
        .map(|(value, count)| json!({"value": value, "count": count}))
        .collect();
    let mut out = header(&c);
    out.insert("dimension".into(), by.name().into());
    out.insert("metric".into(), metric.name().into());
    out.insert("rows".into(), rows.into());
    out.insert("other".into(), (total - shown).into());
    out.insert("total".into(), total.into());
    out.insert("total_rows".into(), total_rows.into());
    to_json(&out)
}

/// Adds one cell's counts of a breakdown into the running totals.
type Pick = Box<dyn Fn(&Counters, &mut BTreeMap<String, i64>)>;

fn add<'a>(out: &mut BTreeMap<String, i64>, values: impl Iterator<Item = (&'a str, i64)>) {
    for (k, v) in values {
        if v != 0 {
            *out.entry(k.to_owned()).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(tz: &str) -> Clock {
        Clock {
            tz: tz.parse().expect("zone"),
            now: 1_790_000_000_000,
        }
    }

    #[test]
    fn days_follow_the_zone_and_its_daylight_saving() {
        let c = clock("Europe/Berlin");
        // 2026-10-25 is 25 hours long in Berlin (clocks go back).
        let start = c.instant("from", "2026-10-25", false).expect("date");
        let end = c.next(Granularity::Day, start);
        assert_eq!(end - start, 25 * 3_600_000);
        assert_eq!(c.render(start), "2026-10-25T00:00:00+02:00");
        assert_eq!(c.render(end), "2026-10-26T00:00:00+01:00");
        assert_eq!(c.floor(Granularity::Day, end + 5_000), end);
        // Half-hour zones put local hours on UTC half hours.
        let k = clock("Asia/Kolkata");
        let h = k.floor(Granularity::Hour, 1_790_000_000_000);
        assert_eq!(h % 3_600_000, 1_800_000);
    }

    #[test]
    fn times_are_parsed_or_refused_with_the_formats() {
        let c = clock("UTC");
        assert_eq!(c.instant("from", "now", false), Ok(c.now));
        assert_eq!(c.instant("from", "-2h", false), Ok(c.now - 7_200_000));
        assert_eq!(
            c.instant("to", "2026-01-01", true),
            Ok(c.instant("from", "2026-01-02", false).expect("date"))
        );
        let err = c.instant("from", "yesterday", false).expect_err("refused");
        assert_eq!(err.status, 400);
        assert!(err.message.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn a_range_is_tiled_by_the_coarsest_buckets_that_fit() {
        let c = clock("UTC");
        let day = 86_400_000;
        let span = Span {
            from: 10 * day - 90 * 60_000,
            to: 12 * day + 2 * 3_600_000 + 60_000,
        };
        let tiles = cover(&View::default(), &c, span, Granularity::Minute).expect("cover");
        let count = |g| tiles.iter().filter(|(t, _)| *t == g).count();
        assert_eq!(count(Granularity::Day), 2);
        assert_eq!(count(Granularity::Hour), 1 + 2);
        assert_eq!(count(Granularity::Minute), 30 + 1);
        let covered: i64 = tiles.iter().map(|(g, _)| g.millis()).sum();
        assert_eq!(covered, span.to - span.from);
        let err = cover(&View::default(), &c, span, Granularity::Hour).expect_err("minutes");
        assert!(err.message.contains("whole hours"), "{err}");
    }

    type Answer = fn(&View, &str, &Params, i64) -> Result<String, QueryError>;

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let v = View::default();
        let ask = |q: &str, op: Answer| op(&v, "shop", &Params::from_query(q)?, 1_790_000_000_000);
        let cases: [(&str, Answer, &str); 9] = [
            ("interval=5m", timeseries, "interval"),
            ("interval=1m&from=-30d", timeseries, "range too large"),
            ("metrics=events,visits", timeseries, "unknown metric"),
            (
                "metrics=users&path=/a",
                timeseries,
                "not available with filters",
            ),
            ("path=/a&browser=Firefox", timeseries, "at once"),
            ("tz=Mars/Olympus", summary, "unknown time zone"),
            ("dimension=colour", breakdown, "unknown dimension"),
            (
                "dimension=path&browser=Firefox",
                breakdown,
                "single dimension",
            ),
            ("bogus=1", timeseries, "unknown field"),
        ];
        for (query, op, expected) in cases {
            let err = ask(query, op).expect_err(query);
            assert_eq!(err.status, 400, "{query}");
            assert!(err.message.contains(expected), "{query}: {err}");
        }
        assert!(ask("dimension=path&limit=0", breakdown).is_err());
        assert!(ask("from=-1h&to=-2h", summary).is_err());
    }
}
