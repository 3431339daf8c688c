//! A stale owner cannot write once a new owner has claimed the partition.

use beacon_aggregate::StoreError;
use beacon_aggregate::store::{Log, load};
use beacon_nats::ROLLUPS_STREAM;
use beacon_rollup::{Delta, Granularity, PartitionState};

use super::support::setup;

fn delta(through_seq: u64, dropped: u64) -> Delta {
    Delta {
        through_seq,
        dropped_late: dropped,
        cutoffs: [i64::MIN; 3],
        forget_before: i64::MIN,
        top_n: 10,
        ..Delta::default()
    }
}

#[tokio::test]
async fn a_stale_owner_is_fenced_after_a_takeover() {
    let s = setup().await;
    let stream = s.js.get_stream(ROLLUPS_STREAM).await.expect("stream");
    let mut old = Log::new(s.js.clone(), stream.clone(), 0, 3, "old", 0);
    old.takeover(0).await.expect("first owner claims");
    old.commit(&delta(10, 1)).await.expect("owner commits");

    // A new owner loads what was committed and claims the log.
    let loaded = load(&stream, 0, 3).await.expect("load");
    assert_eq!(
        (loaded.state.through_seq, loaded.state.dropped_late),
        (10, 1)
    );
    let mut new = Log::new(s.js.clone(), stream.clone(), 0, 3, "new", loaded.last);
    new.takeover(loaded.state.through_seq)
        .await
        .expect("second owner claims");

    // The old owner wakes up and tries to commit work the new one will redo.
    let stale = old.commit(&delta(20, 5)).await;
    assert!(matches!(stale, Err(StoreError::Fenced(3))), "{stale:?}");
    new.commit(&delta(20, 2)).await.expect("new owner commits");

    let state = load(&stream, 0, 3).await.expect("load").state;
    assert_eq!(
        (state.through_seq, state.dropped_late),
        (20, 3),
        "the stale delta never counts"
    );
    // Other partitions are untouched.
    assert_eq!(
        load(&stream, 0, 4).await.expect("load").state,
        PartitionState::default()
    );
    assert!(s.js.get_stream(ROLLUPS_STREAM).await.is_ok());
}

#[tokio::test]
async fn a_record_cut_short_is_ignored_and_snapshots_trim_the_log() {
    let s = setup().await;
    let stream = s.js.get_stream(ROLLUPS_STREAM).await.expect("stream");
    let mut log = Log::new(s.js.clone(), stream.clone(), 0, 0, "a", 0);
    log.takeover(0).await.expect("claim");
    let mut state = PartitionState::default();
    for i in 1..=5 {
        let d = delta(i, 1);
        log.commit(&d).await.expect("commit");
        state.apply(&d);
    }
    // A snapshot larger than one message is split into parts.
    let mut big = state.clone();
    for i in 0..200_000 {
        big.users.insert(
            i as u64,
            beacon_rollup::UserSession {
                start_ms: i,
                last_ms: i,
                pageviews: 1,
                exit: Some("/".into()),
            },
        );
    }
    let size = log.snapshot(&big).await.expect("snapshot");
    assert!(
        size > 1024 * 1024,
        "the snapshot spans several messages ({size} bytes)"
    );
    let loaded = load(&stream, 0, 0).await.expect("load");
    assert_eq!(loaded.state, big);
    let info =
        s.js.get_stream(ROLLUPS_STREAM)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .clone();
    assert!(
        info.messages < 10,
        "deltas before the snapshot were trimmed: {info:?}"
    );

    // A crash in the middle of a multi-part record: a new owner takes over
    // after the first part; that record never counts.
    let _ = Granularity::Day;
    let mut crashed = Log::new(s.js.clone(), stream.clone(), 0, 0, "a", loaded.last);
    let mut bigger = big.clone();
    bigger.dropped_late = 99;
    let mut successor_started = false;
    // Write the parts by hand: take over between them.
    let writer = tokio::spawn(async move { crashed.snapshot(&bigger).await });
    while !successor_started {
        let now = load(&stream, 0, 0).await.expect("load");
        let mut successor = Log::new(s.js.clone(), stream.clone(), 0, 0, "b", now.last);
        if successor.takeover(now.state.through_seq).await.is_ok() {
            successor_started = true;
        }
    }
    let outcome = writer.await.expect("joined");
    let after = load(&stream, 0, 0).await.expect("load").state;
    match outcome {
        // The successor claimed before the whole snapshot landed: it must not count.
        Err(StoreError::Fenced(0)) => assert_eq!(after.dropped_late, big.dropped_late),
        // Or it landed whole before the claim: then it counts whole.
        Ok(_) => assert_eq!(after.dropped_late, 99),
        Err(e) => panic!("unexpected {e}"),
    }
}
