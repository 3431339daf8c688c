//! A segment file: rows of [`crate::segment_schema`] as Parquet, compressed
//! with zstd and dictionary-encoded, its format version in the file's
//! key-value metadata, and the [`SegmentMeta`] the manifest keeps about it.

use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::kernels::aggregate::{max, min};
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use crate::manifest::SegmentMeta;
use crate::schema::{FORMAT_KEY, SEGMENT_FORMAT_VERSION, segment_schema};

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
    let properties = WriterProperties::builder()
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
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer.write(batch)?;
        meta.rows += batch.num_rows() as u64;
        let seq = batch.column(0).as_primitive::<UInt64Type>();
        meta.first_seq = meta.first_seq.min(min(seq).unwrap_or(u64::MAX));
        meta.last_seq = meta.last_seq.max(max(seq).unwrap_or(0));
        let ts = batch.column(2).as_primitive::<TimestampMillisecondType>();
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
            encode("p1/x.parquet", 1, 0, std::slice::from_ref(&batch)).expect("segment");
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
        assert_eq!(
            back[0].slice(0, 1000.min(back[0].num_rows())),
            batch.slice(0, back[0].num_rows())
        );
        assert!(matches!(encode("e", 1, 0, &[]), Err(SegmentError::Empty)));
    }
}
