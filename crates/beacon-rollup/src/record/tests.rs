use std::collections::BTreeMap;

use base64::Engine;

use super::*;
use crate::bucket::Granularity;
use crate::cell::CellKey;

#[test]
fn part_headers_round_trip() {
    let h = PartHeader {
        kind: Kind::Snapshot,
        id: "agg-1-7".into(),
        part: 2,
        parts: 3,
    };
    assert_eq!(PartHeader::parse(&h.render()), Some(h));
    assert_eq!(PartHeader::parse("delta x"), None);
    assert_eq!(PartHeader::parse("nope x 1/1"), None);
    assert_eq!(PartHeader::parse("delta x 0/1"), None);
    assert_eq!(PartHeader::parse("delta x 3/2"), None);
}

fn part(kind: Kind, id: &str, part: usize, parts: usize) -> String {
    PartHeader {
        kind,
        id: id.into(),
        part,
        parts,
    }
    .render()
}

#[test]
fn a_record_counts_only_when_its_parts_follow_each_other() {
    let mut a = Assembler::default();
    let v = Some("2");
    assert!(
        a.push(Some(&part(Kind::Delta, "a", 1, 2)), v, b"x")
            .is_none()
    );
    assert!(a.is_open());
    // Another record's part in between: the first is dropped.
    assert!(
        a.push(Some(&part(Kind::Delta, "b", 2, 2)), v, b"y")
            .is_none()
    );
    assert!(!a.is_open());
    assert!(
        a.push(Some(&part(Kind::Delta, "c", 1, 2)), v, b"ab")
            .is_none()
    );
    let r = a
        .push(Some(&part(Kind::Delta, "c", 2, 2)), v, b"cd")
        .expect("complete");
    assert_eq!((r.kind, r.bytes.as_slice()), (Kind::Delta, &b"abcd"[..]));
    // A message without the header breaks an open record too.
    assert!(
        a.push(Some(&part(Kind::Snapshot, "d", 1, 2)), v, b"")
            .is_none()
    );
    assert!(a.push(None, v, b"").is_none());
    assert!(!a.is_open());
}

fn sample_delta() -> Delta {
    let mut delta = Delta {
        through_seq: 42,
        top_n: 100,
        applied: 3,
        ..Delta::default()
    };
    let key = CellKey {
        site: "shop".into(),
        granularity: Granularity::Hour,
        start: 3_600_000,
    };
    let cell = delta.cells.entry(key).or_default();
    cell.counters.events.add("pageview", 3);
    cell.counters.pageviews = 3;
    cell.users.insert(7);
    delta
}

#[test]
fn todays_format_round_trips_and_says_its_version() {
    let delta = sample_delta();
    let mut a = Assembler::default();
    let record = a
        .push(
            Some(&part(Kind::Delta, "x", 1, 1)),
            Some(&FORMAT_VERSION.to_string()),
            &encode_delta(&delta),
        )
        .expect("complete");
    assert_eq!(record.version(), Ok(FORMAT_VERSION));
    match record.decode() {
        Ok(Change::Delta(back)) => assert_eq!(back, delta),
        other => panic!("not the delta: {other:?}"),
    }
}

#[test]
fn an_unknown_format_is_refused_with_what_to_do() {
    for found in ["4", "99", "two", ""] {
        let mut a = Assembler::default();
        let record = a
            .push(
                Some(&part(Kind::Delta, "x", 1, 1)),
                Some(found),
                &encode_delta(&sample_delta()),
            )
            .expect("complete");
        let err = record.decode().expect_err("refused");
        assert_eq!(
            err,
            RecordError::Unsupported {
                found: found.into()
            }
        );
        let text = err.to_string();
        assert!(text.contains("beacon replay"), "{text}");
        assert!(
            text.contains(&format!("formats 1 to {FORMAT_VERSION}")),
            "{text}"
        );
    }
}

#[test]
fn garbage_is_unreadable_not_a_panic() {
    for version in [None, Some("2")] {
        let mut a = Assembler::default();
        let record = a
            .push(Some(&part(Kind::Snapshot, "x", 1, 1)), version, &[0xff; 9])
            .expect("complete");
        assert!(matches!(
            record.decode(),
            Err(RecordError::Unreadable { .. })
        ));
    }
}

/// One message of the golden log: as stored by the release that wrote it.
struct Message {
    subject: String,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// The golden rollup log of a format (see tests/fixtures/README.md).
fn golden(version: u32) -> Vec<Message> {
    let path = format!(
        "{}/tests/fixtures/rollups-v{version}.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).expect("the golden fixture");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let headers = v["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|kv| {
                    (
                        kv[0].as_str().expect("name").to_owned(),
                        kv[1].as_str().expect("value").to_owned(),
                    )
                })
                .collect();
            Message {
                subject: v["subject"].as_str().expect("subject").to_owned(),
                headers,
                payload: base64::engine::general_purpose::STANDARD
                    .decode(v["payload"].as_str().expect("payload"))
                    .expect("base64"),
            }
        })
        .collect()
}

/// Read a golden log of `version` into partition states, checking what every
/// golden log holds: every kind of record, four partitions, 6,000 events
/// counted once in every granularity; and that the converted states write
/// and read back in today's format.
fn read_golden(version: u32) -> BTreeMap<String, PartitionState> {
    let mut assemblers: BTreeMap<String, Assembler> = BTreeMap::new();
    let mut states: BTreeMap<String, PartitionState> = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    for m in golden(version) {
        let format = m.headers.get(FORMAT_HEADER).map(String::as_str);
        if version == 1 {
            assert_eq!(format, None, "format 1 had no header");
        } else {
            assert_eq!(format, Some(version.to_string().as_str()));
        }
        let record = assemblers.entry(m.subject.clone()).or_default().push(
            m.headers.get(RECORD_HEADER).map(String::as_str),
            format,
            &m.payload,
        );
        let Some(record) = record else { continue };
        assert_eq!(record.version(), Ok(version));
        *kinds.entry(record.kind.as_str()).or_insert(0) += 1;
        let state = states.entry(m.subject).or_default();
        match record.decode().expect("the golden log decodes") {
            Change::Takeover => {}
            Change::Delta(d) => state.apply(&d),
            Change::Snapshot(s) => *state = s,
        }
    }
    // The log has every kind of record (see the fixture's README).
    for kind in ["takeover", "delta", "snapshot"] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "{kind}: {kinds:?}"
        );
    }
    assert_eq!(states.len(), 4, "four partitions");
    // 6,000 events were counted, once each in every granularity.
    let applied: u64 = states.values().map(|s| s.applied).sum();
    assert_eq!(applied, 6_000);
    for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
        let events: i64 = states
            .values()
            .flat_map(|s| s.cells.iter())
            .filter(|(k, _)| k.granularity == g)
            .map(|(_, c)| c.counters.total_events())
            .sum();
        assert_eq!(events, 6_000, "{g:?}");
    }
    // And the converted state writes and reads back in today's format.
    for state in states.values() {
        let mut a = Assembler::default();
        let record = a
            .push(
                Some(&part(Kind::Snapshot, "s", 1, 1)),
                Some(&FORMAT_VERSION.to_string()),
                &encode_snapshot(state),
            )
            .expect("complete");
        match record.decode() {
            Ok(Change::Snapshot(back)) => assert_eq!(&back, state),
            other => panic!("not a snapshot: {other:?}"),
        }
    }
    states
}

#[test]
fn the_golden_v1_log_reads_and_converts() {
    read_golden(1);
}

#[test]
fn the_golden_v2_log_reads_and_converts() {
    let states = read_golden(2);
    // The dimensions format 3 added count every old event under (none),
    // so each adds up to the cell's events like the old ones; by name too.
    for cell in states.values().flat_map(|s| s.cells.values()) {
        let c = &cell.counters;
        for d in crate::cell::DIMENSIONS {
            assert_eq!(c.dims[d.index()].total(), c.total_events(), "{d:?}");
        }
        for d in &crate::cell::DIMENSIONS[6..] {
            let values: Vec<_> = c.dims[d.index()].iter().map(|(v, _)| v).collect();
            assert!(values.iter().all(|v| *v == crate::cell::NONE), "{values:?}");
        }
        for (name, dims) in c.by_name.iter() {
            for d in crate::cell::DIMENSIONS {
                assert_eq!(dims[d.index()].total(), dims[0].total(), "{name} {d:?}");
            }
        }
        assert_eq!(c.engagement, crate::cell::Engagement::default());
        assert!(c.filtered.is_empty());
    }
}
