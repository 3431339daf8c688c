//! A segment file: rows of [`crate::segment_schema`] as Parquet, compressed
//! with zstd and dictionary-encoded, its format version in the file's
//! key-value metadata, and the [`SegmentMeta`] the manifest keeps about it.

use std::collections::HashMap;

use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::kernels::aggregate::{max, min};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use crate::manifest::SegmentMeta;
use crate::schema::{FORMAT_KEY, SEGMENT_FORMAT_VERSION, TS_COLUMN, segment_schema};

/// Rows per Parquet row group: big enough to compress well, small enough that
/// statistics prune a day's questions to a few groups.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error(
        "segment has format {found}; this build reads up to {SEGMENT_FORMAT_VERSION}: upgrade beacon"
    )]
    TooNew { found: u32 },
    #[error("segment carries no format version")]
    Unversioned,
    #[error("segment holds no rows")]
    Empty,
}

/// Encode `batches` (all of [`segment_schema`]) as one Parquet file, and
/// describe it for the manifest under `name`.
pub fn encode(
    name: &str,
    partition: u32,
    level: u8,
    batches: &[RecordBatch],
) -> Result<(Bytes, SegmentMeta), SegmentError> {
    // A flush (level 0) is written as the stream gave it: it is on the
    // aggregator's path and soon merged; merges group their rows.
    let grouped = if level == 0 {
        concat_batches(&segment_schema(), batches)?
    } else {
        clustered(batches)?
    };
    let grouped = [grouped];
    let mut properties = WriterProperties::builder();
    // Sequences and times rise (almost) steadily within a (site, name) run: their
    // deltas take a byte or two where plain values and a dictionary took four.
    for column in DELTA_COLUMNS {
        properties = properties
            .set_column_encoding(column.into(), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(column.into(), false);
    }
    let properties = properties
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            FORMAT_KEY.to_owned(),
            SEGMENT_FORMAT_VERSION.to_string(),
        )]))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, segment_schema(), Some(properties))?;
    let mut meta = SegmentMeta {
        name: name.to_owned(),
        partition,
        format: SEGMENT_FORMAT_VERSION,
        first_seq: u64::MAX,
        last_seq: 0,
        rows: 0,
        bytes: 0,
        min_ts_ms: i64::MAX,
        max_ts_ms: i64::MIN,
        sites: Vec::new(),
        level,
    };
    for batch in grouped.iter().filter(|b| b.num_rows() > 0) {
        writer.write(batch)?;
        meta.rows += batch.num_rows() as u64;
        let seq = batch.column(0).as_primitive::<UInt64Type>();
        meta.first_seq = meta.first_seq.min(min(seq).unwrap_or(u64::MAX));
        meta.last_seq = meta.last_seq.max(max(seq).unwrap_or(0));
        let ts = batch
            .column(TS_COLUMN)
            .as_primitive::<TimestampMillisecondType>();
        meta.min_ts_ms = meta.min_ts_ms.min(min(ts).unwrap_or(i64::MAX));
        meta.max_ts_ms = meta.max_ts_ms.max(max(ts).unwrap_or(i64::MIN));
        meta.sites.extend(
            batch
                .column(4)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned),
        );
        meta.sites.sort_unstable();
        meta.sites.dedup();
    }
    if meta.rows == 0 {
        return Err(SegmentError::Empty);
    }
    writer.close()?;
    meta.bytes = out.len() as u64;
    Ok((Bytes::from(out), meta))
}

/// Integer columns written as deltas (see [`encode`]).
const DELTA_COLUMNS: [&str; 3] = ["seq", "ts", "received_at"];

/// The rows of `batches` as one batch, grouped by site, then by event name
/// (both in ascending order), each group keeping the rows' order within it.
///
/// Grouping lets the reader skip row groups and pages by site and name (a
/// funnel's steps, `name = 'pageview'`), while keeping the stream order inside
/// a group keeps sequences and times nearly sorted for delta encoding. A
/// stable bucketing by the few (site, name) pairs a segment holds is linear,
/// where a full sort by (site, name, ts) cost the writer a second per million rows.
fn clustered(batches: &[RecordBatch]) -> Result<RecordBatch, SegmentError> {
    let all = concat_batches(&segment_schema(), batches)?;
    let site = all
        .column(all.schema().index_of("site")?)
        .as_string::<i32>();
    let name = all
        .column(all.schema().index_of("name")?)
        .as_string::<i32>();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut groups: Vec<((&str, &str), Vec<u32>)> = Vec::new();
    let mut last: Option<((&str, &str), usize)> = None;
    for row in 0..all.num_rows() {
        let key = (site.value(row), name.value(row));
        // Runs of one key are common: look the group up only when the key changes.
        let at = match last {
            Some((k, at)) if k == key => at,
            _ => {
                let at = *index.entry(key).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                });
                last = Some((key, at));
                at
            }
        };
        groups[at].1.push(row as u32);
    }
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let order = UInt32Array::from_iter_values(groups.into_iter().flat_map(|(_, rows)| rows));
    Ok(take_record_batch(&all, &order)?)
}

/// Compressed bytes per column of a segment file (leaf columns by their path,
/// e.g. `props.entries.keys`), summed over its row groups: where the bytes go.
pub fn column_bytes(file: Bytes) -> Result<Vec<(String, u64)>, SegmentError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let metadata = builder.metadata();
    let mut out: Vec<(String, u64)> = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| (c.path().string(), 0))
        .collect();
    for group in metadata.row_groups() {
        for (slot, column) in out.iter_mut().zip(group.columns()) {
            slot.1 += column.compressed_size().max(0) as u64;
        }
    }
    Ok(out)
}

/// The format version a segment file declares, refusing one newer than this build.
pub fn format_of(file: Bytes) -> Result<u32, SegmentError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let found = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == FORMAT_KEY))
        .and_then(|e| e.value.as_deref()?.parse::<u32>().ok())
        .ok_or(SegmentError::Unversioned)?;
    if found > SEGMENT_FORMAT_VERSION {
        return Err(SegmentError::TooNew { found });
    }
    Ok(found)
}

/// Every row of a segment file, as record batches of [`segment_schema`].
pub fn decode(file: Bytes) -> Result<Vec<RecordBatch>, SegmentError> {
    format_of(file.clone())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(ParquetError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Rows, StoredEvent};
    use beacon_core::{Context, Event};
    use chrono::{TimeZone, Utc};

    fn event(i: u64, site: &str) -> Event {
        Event {
            id: format!("e{i}"),
            site: site.into(),
            name: "pageview".into(),
            user_id: None,
            anonymous_id: Some(format!("a{}", i % 7)),
            ts: Utc
                .timestamp_millis_opt(1_700_000_000_000 + i as i64 * 1_000)
                .unwrap(),
            received_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
            partition: 1,
            props: serde_json::Map::new(),
            revenue: None,
            context: Context {
                path: Some(format!("/p{}", i % 5)),
                ..Context::default()
            },
        }
    }

    #[test]
    fn encodes_describes_and_reads_back_every_row() {
        let events: Vec<Event> = (0..1000)
            .map(|i| event(i, if i % 2 == 0 { "b" } else { "a" }))
            .collect();
        let mut rows = Rows::new();
        for (i, e) in events.iter().enumerate() {
            rows.push(StoredEvent {
                seq: 10 + 2 * i as u64,
                event: e,
                session_id: None,
            });
        }
        let batch = rows.finish().expect("segment");
        let (file, meta) =
            encode("p1/x.parquet", 1, 1, std::slice::from_ref(&batch)).expect("segment");
        assert_eq!(meta.rows, 1000);
        assert_eq!((meta.first_seq, meta.last_seq), (10, 10 + 2 * 999));
        assert_eq!(meta.min_ts_ms, 1_700_000_000_000);
        assert_eq!(meta.max_ts_ms, 1_700_000_000_000 + 999_000);
        assert_eq!(meta.sites, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(meta.bytes, file.len() as u64);
        assert_eq!(
            format_of(file.clone()).expect("segment"),
            SEGMENT_FORMAT_VERSION
        );
        let back = decode(file).expect("segment");
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        // Grouped by site, each group in stream order; every row kept as written.
        let mut previous = ("", 0u64);
        let mut seen = Vec::new();
        for b in &back {
            let sites = b.column(4).as_string::<i32>();
            let seqs = b.column(0).as_primitive::<UInt64Type>();
            for row in 0..b.num_rows() {
                let here = (sites.value(row), seqs.value(row));
                assert!(here > previous, "{here:?} after {previous:?}");
                previous = here;
                let written = ((here.1 - 10) / 2) as usize;
                assert_eq!(b.slice(row, 1), batch.slice(written, 1));
                seen.push(written);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        // A flush (level 0) keeps the stream's order.
        let (flushed, _) =
            encode("p1/y.parquet", 1, 0, std::slice::from_ref(&batch)).expect("segment");
        let back = decode(flushed).expect("segment");
        assert_eq!(back.len(), 1, "one row group");
        assert_eq!(back[0], batch);
        assert!(matches!(encode("e", 1, 0, &[]), Err(SegmentError::Empty)));
    }
}
