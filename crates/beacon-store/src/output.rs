//! How answers and exports leave the engine: SQL answers as JSON rows, Arrow
//! IPC or CSV; exports as Parquet, NDJSON or CSV, encoded batch by batch so
//! an export of any size streams in bounded memory.
//!
//! Decimals (revenue) are written as text in JSON, NDJSON and CSV: a JSON
//! number would be read back as a float, and revenue is never a float.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::Serialize;

/// The encodings a SQL answer comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFormat {
    /// `{"columns": [{"name", "type"}], "rows": [{column: value}]}`.
    Json,
    /// An Arrow IPC stream.
    Arrow,
    /// CSV with a header line.
    Csv,
}

impl SqlFormat {
    pub const NAMES: &'static str = "json, arrow, csv";

    pub fn parse(name: &str) -> Option<SqlFormat> {
        match name {
            "json" => Some(SqlFormat::Json),
            "arrow" => Some(SqlFormat::Arrow),
            "csv" => Some(SqlFormat::Csv),
            _ => None,
        }
    }

    /// The format an `Accept` header asks for, if it names one.
    pub fn from_media_type(accept: &str) -> Option<SqlFormat> {
        accept
            .split(',')
            .find_map(|part| match part.split(';').next().unwrap_or("").trim() {
                "application/json" => Some(SqlFormat::Json),
                "application/vnd.apache.arrow.stream" => Some(SqlFormat::Arrow),
                "text/csv" => Some(SqlFormat::Csv),
                _ => None,
            })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            SqlFormat::Json => "application/json",
            SqlFormat::Arrow => "application/vnd.apache.arrow.stream",
            SqlFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The encodings of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Parquet,
    Ndjson,
    Csv,
}

impl ExportFormat {
    pub const NAMES: &'static str = "parquet, ndjson, csv";

    pub fn parse(name: &str) -> Option<ExportFormat> {
        match name {
            "parquet" => Some(ExportFormat::Parquet),
            "ndjson" => Some(ExportFormat::Ndjson),
            "csv" => Some(ExportFormat::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "application/vnd.apache.parquet",
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "parquet",
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Csv => "csv",
        }
    }
}

/// `batch` with its decimal columns as text, and, for CSV (`flat`), its map,
/// list and struct columns as JSON text.
fn textual(batch: &RecordBatch, flat: bool) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let nested = matches!(
            field.data_type(),
            DataType::Map(..) | DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_)
        );
        let column: ArrayRef = match field.data_type() {
            DataType::Decimal128(..) | DataType::Decimal256(..) => cast(column, &DataType::Utf8)?,
            _ if flat && nested => json_text(column)?,
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
                continue;
            }
        };
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Each value of a nested column as one line of JSON text (null stays null).
fn json_text(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let one = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "v",
            column.data_type().clone(),
            true,
        )])),
        vec![column.clone()],
    )?;
    let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(&textual(&one, false)?)?;
    writer.finish()?;
    let text = writer.into_inner();
    let mut out = StringBuilder::new();
    for (i, line) in text.split(|b| *b == b'\n').take(column.len()).enumerate() {
        if column.is_null(i) {
            out.append_null();
            continue;
        }
        // Each line is {"v": <value>}: keep the value.
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        out.append_value(value.get("v").map(ToString::to_string).unwrap_or_default());
    }
    Ok(Arc::new(out.finish()))
}

#[derive(Serialize)]
struct Column<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: String,
}

/// A whole SQL answer in `format`.
pub fn encode_answer(
    format: SqlFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, ArrowError> {
    match format {
        SqlFormat::Json => {
            let columns: Vec<Column> = schema
                .fields()
                .iter()
                .map(|f| Column {
                    name: f.name(),
                    kind: f.data_type().to_string(),
                })
                .collect();
            let mut out = br#"{"columns":"#.to_vec();
            serde_json::to_writer(&mut out, &columns)
                .map_err(|e| ArrowError::JsonError(e.to_string()))?;
            out.extend_from_slice(br#","rows":"#);
            let texts = batches
                .iter()
                .map(|b| textual(b, false))
                .collect::<Result<Vec<_>, _>>()?;
            let mut writer = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut out);
            for batch in &texts {
                writer.write(batch)?;
            }
            // Writes `[]` when there are no rows.
            writer.finish()?;
            drop(writer);
            out.push(b'}');
            Ok(out)
        }
        SqlFormat::Arrow => {
            let mut out = Vec::new();
            let mut writer =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            drop(writer);
            Ok(out)
        }
        SqlFormat::Csv => {
            let mut out = Vec::new();
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                let empty = RecordBatch::new_empty(schema.clone());
                writer.write(&textual(&empty, true)?)?;
            }
            for batch in batches {
                writer.write(&textual(batch, true)?)?;
            }
            drop(writer);
            Ok(out)
        }
    }
}

/// Encodes an export batch by batch; each call returns the bytes ready to send.
pub struct ExportEncoder {
    format: ExportFormat,
    parquet: Option<ArrowWriter<Vec<u8>>>,
    header_written: bool,
}

impl std::fmt::Debug for ExportEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportEncoder")
            .field("format", &self.format)
            .finish()
    }
}

impl ExportEncoder {
    pub fn new(format: ExportFormat, schema: &SchemaRef) -> Result<Self, ArrowError> {
        let parquet = match format {
            ExportFormat::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(
                        ZstdLevel::try_new(3)
                            .map_err(|e| ArrowError::ParquetError(e.to_string()))?,
                    ))
                    .build();
                Some(
                    ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))
                        .map_err(|e| ArrowError::ParquetError(e.to_string()))?,
                )
            }
            _ => None,
        };
        Ok(ExportEncoder {
            format,
            parquet,
            header_written: false,
        })
    }

    /// Encode `batch`; the bytes complete so far.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, ArrowError> {
        match self.format {
            ExportFormat::Parquet => {
                let Some(writer) = self.parquet.as_mut() else {
                    return Ok(Bytes::new());
                };
                writer
                    .write(batch)
                    .map_err(|e| ArrowError::ParquetError(e.to_string()))?;
                // Whole row groups are written as they fill; send what is written.
                Ok(Bytes::from(std::mem::take(writer.inner_mut())))
            }
            ExportFormat::Ndjson => {
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
                writer.write(&textual(batch, false)?)?;
                writer.finish()?;
                Ok(Bytes::from(writer.into_inner()))
            }
            ExportFormat::Csv => {
                let mut out = Vec::new();
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut out);
                writer.write(&textual(batch, true)?)?;
                drop(writer);
                self.header_written = true;
                Ok(Bytes::from(out))
            }
        }
    }

    /// The last bytes: the Parquet footer, or a CSV header for an empty export.
    pub fn finish(mut self, schema: &SchemaRef) -> Result<Bytes, ArrowError> {
        match self.format {
            ExportFormat::Parquet => match self.parquet.take() {
                Some(writer) => writer
                    .into_inner()
                    .map(Bytes::from)
                    .map_err(|e| ArrowError::ParquetError(e.to_string())),
                None => Ok(Bytes::new()),
            },
            ExportFormat::Csv if !self.header_written => {
                self.batch(&RecordBatch::new_empty(schema.clone()))
            }
            _ => Ok(Bytes::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Decimal128Array, Int64Array, MapBuilder, StringBuilder};

    fn batch() -> RecordBatch {
        let mut props = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        props.keys().append_value("plan");
        props.values().append_value("pro");
        props.append(true).expect("test data");
        props.append(false).expect("test data");
        let amount = Decimal128Array::from(vec![Some(1999), None])
            .with_precision_and_scale(10, 2)
            .expect("test data");
        RecordBatch::try_from_iter(vec![
            ("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("amount", Arc::new(amount) as ArrayRef),
            ("props", Arc::new(props.finish()) as ArrayRef),
        ])
        .expect("test data")
    }

    #[test]
    fn json_keeps_decimals_exact_and_names_the_columns() {
        let b = batch();
        let out = encode_answer(SqlFormat::Json, &b.schema(), std::slice::from_ref(&b))
            .expect("test data");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("test data");
        assert_eq!(v["columns"][1]["name"], "amount");
        assert_eq!(v["rows"][0]["amount"], "19.99");
        assert_eq!(v["rows"][0]["props"]["plan"], "pro");
        assert!(v["rows"][1]["amount"].is_null());
        let empty = encode_answer(SqlFormat::Json, &b.schema(), &[]).expect("test data");
        let v: serde_json::Value = serde_json::from_slice(&empty).expect("test data");
        assert_eq!(v["rows"], serde_json::json!([]));
    }

    #[test]
    fn csv_flattens_maps_to_json_text() {
        let b = batch();
        let out = encode_answer(SqlFormat::Csv, &b.schema(), std::slice::from_ref(&b))
            .expect("test data");
        let text = String::from_utf8(out).expect("test data");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "n,amount,props");
        assert_eq!(lines[1], r#"1,19.99,"{""plan"":""pro""}""#);
        assert_eq!(lines[2], "2,,");
    }

    #[test]
    fn a_streamed_parquet_export_reads_back_whole() {
        let b = batch();
        let schema = b.schema();
        let mut encoder = ExportEncoder::new(ExportFormat::Parquet, &schema).expect("test data");
        let mut file = Vec::new();
        for _ in 0..3 {
            file.extend_from_slice(&encoder.batch(&b).expect("test data"));
        }
        file.extend_from_slice(&encoder.finish(&schema).expect("test data"));
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                Bytes::from(file),
            )
            .expect("test data")
            .build()
            .expect("test data");
        let rows: usize = reader.map(|b| b.expect("test data").num_rows()).sum();
        assert_eq!(rows, 6);
    }
}
