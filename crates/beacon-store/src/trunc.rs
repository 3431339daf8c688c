//! `date_trunc` as the engine's sessions know it: DataFusion's own function,
//! with arithmetic for the time columns Beacon stores.
//!
//! Beacon's times carry the zone `UTC`. For a timestamp with a zone, DataFusion
//! truncates to the hour, day or week through a calendar conversion per value
//! (and formats a string per value on the way), which took a sixth of "users
//! per day" over a month of events. In UTC these units have fixed lengths, so a
//! floor division gives the same instant. Every other case (other zones, no
//! zone, months and years, scalars) is DataFusion's function unchanged.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// The session's `date_trunc`: see the module documentation.
pub fn date_trunc() -> ScalarUDF {
    ScalarUDF::new_from_impl(UtcDateTrunc {
        inner: datafusion::functions::datetime::date_trunc(),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDateTrunc {
    inner: Arc<ScalarUDF>,
}

/// A unit of truncation with a fixed length in UTC.
#[derive(Debug, Clone, Copy)]
enum Unit {
    /// Seconds in the unit.
    Fixed(i64),
    /// A week starting on Monday, as DataFusion's `week`.
    Week,
}

const SECONDS_PER_DAY: i64 = 86_400;

fn unit(granularity: &str) -> Option<Unit> {
    match granularity.to_ascii_lowercase().as_str() {
        "second" => Some(Unit::Fixed(1)),
        "minute" => Some(Unit::Fixed(60)),
        "hour" => Some(Unit::Fixed(3_600)),
        "day" => Some(Unit::Fixed(SECONDS_PER_DAY)),
        "week" => Some(Unit::Week),
        _ => None,
    }
}

fn is_utc(zone: &str) -> bool {
    matches!(zone, "UTC" | "utc" | "+00:00" | "Z")
}

/// The start of `unit` holding `value` (`per_second` values a second), or
/// `None` where that start lies outside the type's range.
fn floor(value: i64, unit: Unit, per_second: i64) -> Option<i64> {
    match unit {
        Unit::Fixed(seconds) => {
            let step = seconds * per_second;
            value.div_euclid(step).checked_mul(step)
        }
        Unit::Week => {
            let day = SECONDS_PER_DAY * per_second;
            let days = value.div_euclid(day);
            // 1970-01-01 was a Thursday: three days after a Monday.
            (days - (days + 3).rem_euclid(7)).checked_mul(day)
        }
    }
}

fn truncate<T: ArrowTimestampType>(
    array: &dyn Array,
    unit: Unit,
    per_second: i64,
) -> Option<ArrayRef> {
    let values = array.as_primitive::<T>();
    let zone = values.timezone().map(str::to_owned);
    let out: PrimitiveArray<T> = values
        .try_unary(|v| floor(v, unit, per_second).ok_or(ArrowError::ComputeError(String::new())))
        .ok()?;
    Some(Arc::new(out.with_timezone_opt(zone)))
}

/// The truncated column when the arithmetic applies; `None` hands the call to DataFusion.
fn fast(args: &[ColumnarValue]) -> Option<ColumnarValue> {
    let [
        ColumnarValue::Scalar(granularity),
        ColumnarValue::Array(array),
    ] = args
    else {
        return None;
    };
    let granularity = match granularity {
        ScalarValue::Utf8(Some(g))
        | ScalarValue::Utf8View(Some(g))
        | ScalarValue::LargeUtf8(Some(g)) => g,
        _ => return None,
    };
    let unit = unit(granularity)?;
    let DataType::Timestamp(time_unit, Some(zone)) = array.data_type() else {
        return None;
    };
    if !is_utc(zone) {
        return None;
    }
    let out = match time_unit {
        TimeUnit::Second => truncate::<TimestampSecondType>(array, unit, 1),
        TimeUnit::Millisecond => truncate::<TimestampMillisecondType>(array, unit, 1_000),
        TimeUnit::Microsecond => truncate::<TimestampMicrosecondType>(array, unit, 1_000_000),
        TimeUnit::Nanosecond => truncate::<TimestampNanosecondType>(array, unit, 1_000_000_000),
    }?;
    Some(ColumnarValue::Array(out))
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match fast(&args.args) {
            Some(out) => Ok(out),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    fn call(udf: &ScalarUDF, granularity: &str, array: ArrayRef) -> ArrayRef {
        let args = vec![
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(granularity.into()))),
            ColumnarValue::Array(array.clone()),
        ];
        let arg_fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("g", DataType::Utf8, false)),
            Arc::new(Field::new("t", array.data_type().clone(), true)),
        ];
        let return_field = Arc::new(Field::new("out", array.data_type().clone(), true));
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: array.len(),
                return_field,
                config_options: Arc::new(ConfigOptions::default()),
            })
            .expect("date_trunc");
        match out {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(s) => s.to_array().expect("array"),
        }
    }

    #[test]
    fn agrees_with_datafusion_in_utc_and_defers_elsewhere() {
        // Instants around the epoch, leap days, a Monday midnight and far dates,
        // before and after 1970, with a null among them.
        let mut values: Vec<Option<i64>> = vec![None, Some(0), Some(-1), Some(1)];
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(Some(x.rem_euclid(8_000_000_000_000) - 4_000_000_000_000));
        }
        values.push(Some(1_709_164_800_000)); // 2024-02-29T00:00:00Z
        values.push(Some(1_764_547_200_000 - 1)); // just before Monday 2025-12-01
        values.push(Some(1_764_547_200_000)); // Monday 2025-12-01
        let builtin = datafusion::functions::datetime::date_trunc();
        let ours = date_trunc();
        for zone in ["UTC", "+00:00", "Europe/Berlin"] {
            let array: ArrayRef =
                Arc::new(TimestampMillisecondArray::from(values.clone()).with_timezone(zone));
            for granularity in ["second", "minute", "hour", "day", "week", "month", "DAY"] {
                let expected = call(&builtin, granularity, array.clone());
                let got = call(&ours, granularity, array.clone());
                assert_eq!(got.as_ref(), expected.as_ref(), "{granularity} in {zone}");
                assert_eq!(got.data_type(), array.data_type());
            }
        }
        assert!(
            fast(&[
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("day".into()))),
                ColumnarValue::Array(Arc::new(TimestampMillisecondArray::from(vec![1i64])))
            ])
            .is_none(),
            "no zone: DataFusion's own arithmetic"
        );
        // A start before the type's range is left to DataFusion (which reports it).
        assert_eq!(floor(i64::MIN, Unit::Fixed(SECONDS_PER_DAY), 1_000), None);
    }
}
