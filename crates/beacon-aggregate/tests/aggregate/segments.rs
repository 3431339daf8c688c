//! The event store's writer: every event in exactly one committed segment,
//! across changes of owner and compaction; a stale writer refused; orphans
//! swept; retention dropping whole old segments only.

use std::time::Duration;

use beacon_aggregate::segments::{Buckets, WriteError, Writer, read_manifest};
use beacon_testing::truth::{Shape, arrive_late, generate, publish};

use super::stored::{Summary, read, wait_stored};
use super::support::{PARTITIONS, aggregator, settings, setup, store_settings};

const DAY_MS: i64 = 86_400_000;

fn shape(seed: u64, events: usize, end_ms: i64) -> Shape {
    Shape {
        seed,
        sites: 2,
        users: 2_000,
        events,
        days: 1,
        end_ms,
        partitions: PARTITIONS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_hold_every_event_once_across_owner_changes_and_compaction() {
    let s = setup().await;
    let mut events = generate(shape(21, 30_000, chrono::Utc::now().timestamp_millis()));
    arrive_late(&mut events, 21, 0.1, 3_600_000);
    let expected = Summary::of_events(&events);
    let (first, rest) = events.split_at(10_000);
    let (second, third) = rest.split_at(10_000);

    let a = aggregator(&s.client, settings());
    publish(&s.js, first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A second aggregator joins: half the partitions change owner mid-stream.
    let b = aggregator(&s.client, settings());
    publish(&s.js, second).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first leaves: the rest move too.
    a.shutdown().await;
    publish(&s.js, third).await;
    wait_stored(&s.js, PARTITIONS, Duration::from_secs(120)).await;
    // Compaction runs in the background; wait (bounded) for a merge.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, manifests) = read(&s.js, PARTITIONS).await;
        if manifests
            .iter()
            .any(|m| m.segments.iter().any(|s| s.level > 0))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no segments were merged"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.shutdown().await;

    let (summary, manifests) = read(&s.js, PARTITIONS).await;
    assert_eq!(summary.rows(), 30_000);
    let diffs = summary.differences(&expected);
    assert!(diffs.is_empty(), "{diffs:#?}");
    for m in &manifests {
        m.check().expect("no overlapping segments");
    }
}

#[tokio::test]
async fn a_stale_writer_cannot_commit_and_uncommitted_segments_are_swept() {
    let s = setup().await;
    let buckets = Buckets::open(&s.js).await.expect("buckets");
    let settings = beacon_aggregate::StoreSettings {
        orphan_grace: Duration::ZERO,
        compaction: false,
        ..store_settings()
    };
    let events = generate(shape(5, 100, chrono::Utc::now().timestamp_millis()));
    let mut old = Writer::take(buckets.clone(), settings.clone(), 3, "old")
        .await
        .expect("first writer");
    for (i, e) in events[..50].iter().enumerate() {
        old.push(i as u64 + 1, e, None);
    }
    old.flush().await.expect("first writer commits");
    for (i, e) in events[50..60].iter().enumerate() {
        old.push(i as u64 + 51, e, None);
    }

    // A new owner takes the partition over: it resumes after the commit.
    let mut new = Writer::take(buckets.clone(), settings, 3, "new")
        .await
        .expect("second writer");
    assert_eq!(new.reached(), 50);
    let stale = old.flush().await;
    assert!(matches!(stale, Err(WriteError::Fenced(3))), "{stale:?}");
    for (i, e) in events[50..].iter().enumerate() {
        new.push(i as u64 + 51, e, Some(7));
    }
    new.flush().await.expect("new writer commits");

    // A writer killed between upload and commit leaves an object no
    // manifest names: the owner deletes it once it is past the grace.
    let segments = &buckets.segments;
    segments
        .put(
            "p3/00000000000000000101-00000000000000000200-dead.parquet",
            &mut &b"never committed"[..],
        )
        .await
        .expect("upload");
    new.maintain(chrono::Utc::now().timestamp_millis())
        .await
        .expect("upkeep");
    let (manifest, _) = read_manifest(&buckets.manifests, 3)
        .await
        .expect("manifest");
    let mut names: Vec<String> =
        futures::TryStreamExt::try_collect::<Vec<_>>(segments.list().await.expect("list"))
            .await
            .expect("listed")
            .into_iter()
            .map(|o| o.name)
            .collect();
    names.sort();
    let mut committed: Vec<String> = manifest.segments.iter().map(|s| s.name.clone()).collect();
    committed.sort();
    assert_eq!(names, committed, "only committed segments are left");
    assert_eq!(
        (manifest.through_seq, manifest.writer.as_str()),
        (100, "new")
    );
    assert_eq!(manifest.segments.len(), 2);

    let (summary, _) = read(&s.js, PARTITIONS).await;
    let diffs = summary.differences(&Summary::of_events(&events));
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[tokio::test]
async fn retention_drops_whole_old_segments_only() {
    let s = setup().await;
    let buckets = Buckets::open(&s.js).await.expect("buckets");
    let now = chrono::Utc::now().timestamp_millis();
    let settings = beacon_aggregate::StoreSettings {
        retention: Some(Duration::from_secs(5 * 86_400)),
        compaction: false,
        ..store_settings()
    };
    let old = generate(shape(8, 50, now - 10 * DAY_MS));
    let new = generate(shape(9, 50, now));
    let mut writer = Writer::take(buckets.clone(), settings, 0, "w")
        .await
        .expect("writer");
    let mut seq = 0;
    let mut segment = |writer: &mut Writer, events: &[beacon_core::Event]| {
        for e in events {
            seq += 1;
            writer.push(seq, e, None);
        }
    };
    // All old; one old and one new; all new.
    segment(&mut writer, &old[..49]);
    writer.flush().await.expect("flush");
    segment(&mut writer, &[old[49].clone(), new[0].clone()]);
    writer.flush().await.expect("flush");
    segment(&mut writer, &new[1..]);
    writer.flush().await.expect("flush");
    writer.maintain(now).await.expect("upkeep");

    let (manifest, _) = read_manifest(&buckets.manifests, 0)
        .await
        .expect("manifest");
    assert_eq!(
        manifest.segments.len(),
        2,
        "only the wholly old segment goes"
    );
    assert_eq!(manifest.through_seq, 100, "the store still reaches the end");
    let (summary, _) = read(&s.js, PARTITIONS).await;
    let mut kept = vec![old[49].clone()];
    kept.extend(new);
    let diffs = summary.differences(&Summary::of_events(&kept));
    assert!(diffs.is_empty(), "{diffs:#?}");
}
