//! What a segment holds: one row per event of `BEACON_EVENTS`, typed columns for
//! the built-in dimensions, exact decimal revenue, and the custom properties as a
//! string map SQL reads by key (`props['plan']`).
//!
//! The layout is versioned ([`SEGMENT_FORMAT_VERSION`], stored in every Parquet
//! file's key-value metadata) because segments outlive the process that wrote
//! them: a reader checks the version before trusting the columns.

use std::sync::Arc;

use beacon_core::Event;
use datafusion::arrow::array::{
    ArrayRef, Decimal128Builder, MapBuilder, MapFieldNames, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use rust_decimal::Decimal;
use serde_json::Value;

/// The version of the segment layout this build writes. A reader refuses a
/// segment written with a newer one and upgrades older ones as it reads them.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

/// Parquet key-value metadata key that carries [`SEGMENT_FORMAT_VERSION`].
pub const FORMAT_KEY: &str = "beacon.segment.format";

/// Decimal places kept for revenue amounts: far more than any currency uses;
/// an amount written with more is rounded half-even to this many.
pub const REVENUE_SCALE: i8 = 18;
/// Digits of the revenue column: amounts up to 10^20, beyond the 10^12 one event may carry.
pub const REVENUE_PRECISION: u8 = 38;

/// Timezone of the time columns: event time is UTC throughout Beacon.
const UTC: &str = "UTC";

/// The nullable text columns for the event's context, in schema order. One list
/// so the schema and the row builder cannot drift apart.
const CONTEXT_COLUMNS: [&str; 18] = [
    "path",
    "referrer_host",
    "referrer_source",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "country",
    "region",
    "city",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device",
    "bot",
];

fn context_values(event: &Event) -> [Option<&str>; 18] {
    let c = &event.context;
    [
        c.path.as_deref(),
        c.referrer_host.as_deref(),
        c.referrer_source.as_deref(),
        c.channel.as_deref(),
        c.utm_source.as_deref(),
        c.utm_medium.as_deref(),
        c.utm_campaign.as_deref(),
        c.utm_term.as_deref(),
        c.utm_content.as_deref(),
        c.country.as_deref(),
        c.region.as_deref(),
        c.city.as_deref(),
        c.browser.as_deref(),
        c.browser_version.as_deref(),
        c.os.as_deref(),
        c.os_version.as_deref(),
        c.device.as_deref(),
        c.bot.as_deref(),
    ]
}

fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

fn props_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
            ]
            .into(),
        ),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// The event time's column (`ts`) in [`segment_schema`] and [`read_schema`].
pub(crate) const TS_COLUMN: usize = 2;

/// The Arrow schema of every segment of this format version.
pub fn segment_schema() -> SchemaRef {
    let mut fields = vec![
        // Stream sequence in BEACON_EVENTS: with the partition, a row's identity.
        Field::new("seq", DataType::UInt64, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("ts", time_type(), false),
        Field::new("received_at", time_type(), false),
        Field::new("site", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("user_key", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("anonymous_id", DataType::Utf8, true),
        // Event-time session as the writer placed it when the row was written;
        // null for rows not yet in a segment (the query node's in-memory tail).
        Field::new("session_id", DataType::UInt64, true),
    ];
    fields.extend(
        CONTEXT_COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true)),
    );
    fields.extend([
        Field::new(
            "revenue_amount",
            DataType::Decimal128(REVENUE_PRECISION, REVENUE_SCALE),
            true,
        ),
        Field::new("revenue_currency", DataType::Utf8, true),
        Field::new("props", props_type(), true),
    ]);
    Arc::new(Schema::new(fields))
}

/// [`segment_schema`] as the SQL engine reads it: top-level text columns as
/// string views. Parquet's dictionary pages then decode into views of the
/// dictionary's bytes instead of a copy of every value, and comparisons and
/// groupings test the inline prefix first: the scan of "users per day" spent
/// a sixth of its time copying strings. Answers leave the engine with plain
/// strings again ([`plain_text`]).
pub fn read_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = segment_schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                    _ => f.as_ref().clone(),
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// `data_type` with every string or binary view, at any depth, as its plain
/// counterpart: the types an answer carries out of the engine.
fn plain_type(data_type: &DataType) -> DataType {
    let field =
        |f: &FieldRef| Arc::new(f.as_ref().clone().with_data_type(plain_type(f.data_type())));
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(field(f)),
        DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        other => other.clone(),
    }
}

/// `schema` without view types ([`plain_type`]); the same `Arc` when it has none.
pub fn plain_text(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
        .collect();
    if fields
        .iter()
        .zip(schema.fields())
        .all(|(a, b)| a == b.as_ref())
    {
        return schema.clone();
    }
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` recast to `schema`, which has its columns in order with types the
/// engine can cast to (string views to strings and back).
pub fn recast(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema_ref() == schema {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                datafusion::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// One event as the store keeps it: the event, where the stream holds it, and
/// the session the writer placed it in (`None` when no session state is at hand).
#[derive(Debug, Clone, Copy)]
pub struct StoredEvent<'a> {
    pub seq: u64,
    pub event: &'a Event,
    pub session_id: Option<u64>,
}

/// Column builders for a batch of rows; [`Rows::finish`] makes the record batch.
pub struct Rows {
    seq: UInt64Builder,
    partition: UInt32Builder,
    ts: TimestampMillisecondBuilder,
    received_at: TimestampMillisecondBuilder,
    site: StringBuilder,
    id: StringBuilder,
    name: StringBuilder,
    user_key: StringBuilder,
    user_id: StringBuilder,
    anonymous_id: StringBuilder,
    session_id: UInt64Builder,
    context: Vec<StringBuilder>,
    revenue_amount: Decimal128Builder,
    revenue_currency: StringBuilder,
    props: MapBuilder<StringBuilder, StringBuilder>,
    len: usize,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").field("len", &self.len).finish()
    }
}

impl Default for Rows {
    fn default() -> Self {
        Rows::new()
    }
}

impl Rows {
    pub fn new() -> Self {
        let names = MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        };
        Rows {
            seq: UInt64Builder::new(),
            partition: UInt32Builder::new(),
            ts: TimestampMillisecondBuilder::new().with_timezone(UTC),
            received_at: TimestampMillisecondBuilder::new().with_timezone(UTC),
            site: StringBuilder::new(),
            id: StringBuilder::new(),
            name: StringBuilder::new(),
            user_key: StringBuilder::new(),
            user_id: StringBuilder::new(),
            anonymous_id: StringBuilder::new(),
            session_id: UInt64Builder::new(),
            context: CONTEXT_COLUMNS
                .iter()
                .map(|_| StringBuilder::new())
                .collect(),
            revenue_amount: Decimal128Builder::new(),
            revenue_currency: StringBuilder::new(),
            props: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()),
            len: 0,
        }
    }

    /// Rows added since the last [`Rows::finish`].
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add one event as a row.
    pub fn push(&mut self, row: StoredEvent<'_>) {
        let event = row.event;
        self.seq.append_value(row.seq);
        self.partition.append_value(event.partition);
        self.ts.append_value(event.ts.timestamp_millis());
        self.received_at
            .append_value(event.received_at.timestamp_millis());
        self.site.append_value(&event.site);
        self.id.append_value(&event.id);
        self.name.append_value(&event.name);
        self.user_key.append_value(event.user_key());
        self.user_id.append_option(event.user_id.as_deref());
        self.anonymous_id
            .append_option(event.anonymous_id.as_deref());
        self.session_id.append_option(row.session_id);
        for (builder, value) in self.context.iter_mut().zip(context_values(event)) {
            builder.append_option(value);
        }
        match &event.revenue {
            Some(revenue) => {
                self.revenue_amount
                    .append_option(revenue_units(revenue.amount));
                self.revenue_currency.append_value(&revenue.currency);
            }
            None => {
                self.revenue_amount.append_null();
                self.revenue_currency.append_null();
            }
        }
        if event.props.is_empty() {
            self.props.append(false).ok();
        } else {
            for (key, value) in &event.props {
                self.props.keys().append_value(key);
                match value {
                    Value::String(text) => self.props.values().append_value(text),
                    Value::Null => self.props.values().append_null(),
                    other => self.props.values().append_value(other.to_string()),
                }
            }
            // Only fails when keys and values differ in length, which the loop rules out.
            self.props.append(true).ok();
        }
        self.len += 1;
    }

    /// The rows added so far as one record batch of [`segment_schema`]; the
    /// builders start empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.site.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.user_key.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.anonymous_id.finish()),
            Arc::new(self.session_id.finish()),
        ];
        columns.extend(
            self.context
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(
            self.revenue_amount
                .finish()
                .with_precision_and_scale(REVENUE_PRECISION, REVENUE_SCALE)?,
        ));
        columns.push(Arc::new(self.revenue_currency.finish()));
        columns.push(Arc::new(self.props.finish()));
        self.len = 0;
        RecordBatch::try_new(segment_schema(), columns)
    }
}

/// An amount as an integer count of 10^-[`REVENUE_SCALE`] units; `None` only
/// if it cannot fit, which validation (|amount| ≤ 10^12) rules out.
pub fn revenue_units(amount: Decimal) -> Option<i128> {
    let rounded = amount.round_dp(REVENUE_SCALE.unsigned_abs().into());
    let missing = u32::from(REVENUE_SCALE.unsigned_abs()).checked_sub(rounded.scale())?;
    rounded.mantissa().checked_mul(10i128.checked_pow(missing)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use beacon_core::{Context, Revenue};
    use chrono::{TimeZone, Utc};
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, UInt64Type};

    fn event(i: usize) -> Event {
        let mut props = serde_json::Map::new();
        if i.is_multiple_of(2) {
            props.insert("plan".into(), Value::String("pro".into()));
            props.insert("seats".into(), serde_json::json!(3));
        }
        Event {
            id: format!("e{i}"),
            site: "shop".into(),
            name: "purchase".into(),
            user_id: Some(format!("u{i}")),
            anonymous_id: None,
            ts: Utc
                .timestamp_millis_opt(1_700_000_000_000 + i as i64)
                .unwrap(),
            received_at: Utc.timestamp_millis_opt(1_700_000_000_500).unwrap(),
            partition: 3,
            props,
            revenue: i.is_multiple_of(3).then(|| Revenue {
                amount: Decimal::new(1999, 2),
                currency: "USD".into(),
            }),
            context: Context {
                path: Some("/cart".into()),
                country: Some("DE".into()),
                utm_campaign: Some("spring".into()),
                ..Context::default()
            },
        }
    }

    #[test]
    fn rows_match_the_schema_and_keep_every_value() {
        let events: Vec<Event> = (0..6).map(event).collect();
        let mut rows = Rows::new();
        for (i, e) in events.iter().enumerate() {
            rows.push(StoredEvent {
                seq: 100 + i as u64,
                event: e,
                session_id: Some(7),
            });
        }
        assert_eq!(rows.len(), 6);
        let batch = rows.finish().expect("batch matches schema");
        assert!(rows.is_empty());
        assert_eq!(batch.num_rows(), 6);
        assert_eq!(batch.schema(), segment_schema());
        let seq = batch
            .column_by_name("seq")
            .expect("column")
            .as_primitive::<UInt64Type>();
        assert_eq!(seq.value(5), 105);
        let revenue = batch
            .column_by_name("revenue_amount")
            .expect("column")
            .as_primitive::<Decimal128Type>();
        assert_eq!(revenue.value(0), 19_990_000_000_000_000_000);
        assert!(revenue.is_null(1));
        let props = batch.column_by_name("props").expect("column").as_map();
        assert!(props.is_valid(0) && props.is_null(1));
        assert_eq!(props.value(0).len(), 2);
        let campaign = batch
            .column_by_name("utm_campaign")
            .expect("column")
            .as_string::<i32>();
        assert_eq!(campaign.value(2), "spring");
    }

    #[test]
    fn rows_read_as_views_and_answer_as_plain_strings() {
        let mut rows = Rows::new();
        for (i, e) in (0..4).map(event).enumerate() {
            rows.push(StoredEvent {
                seq: i as u64,
                event: &e,
                session_id: None,
            });
        }
        let written = rows.finish().expect("batch matches schema");
        let read = recast(&written, &read_schema()).expect("text casts to views");
        assert_eq!(
            read.column_by_name("site").expect("column").data_type(),
            &DataType::Utf8View
        );
        // The map's keys and values stay as written: only top-level text is a view.
        assert_eq!(
            read.column_by_name("props").expect("column").data_type(),
            &props_type()
        );
        assert_eq!(plain_text(&read_schema()), segment_schema());
        let back = recast(&read, &plain_text(&read.schema())).expect("views cast back");
        assert_eq!(back, written);

        // Answers can nest views (array_agg of a text column): none survive.
        let nested = Arc::new(Schema::new(vec![Field::new(
            "paths",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true))),
            true,
        )]));
        let plain = plain_text(&nested);
        assert_eq!(
            plain.field(0).data_type(),
            &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        );
        let unchanged = segment_schema();
        assert!(Arc::ptr_eq(&plain_text(&unchanged), &unchanged));
    }

    #[test]
    fn revenue_units_are_exact_and_round_beyond_the_scale() {
        assert_eq!(
            revenue_units(Decimal::new(-5, 1)),
            Some(-500_000_000_000_000_000)
        );
        assert_eq!(
            revenue_units(Decimal::from(1_000_000_000_000i64)),
            Some(1_000_000_000_000 * 10i128.pow(18))
        );
        let tiny = Decimal::from_i128_with_scale(15, 19);
        assert_eq!(revenue_units(tiny), Some(2));
    }
}
