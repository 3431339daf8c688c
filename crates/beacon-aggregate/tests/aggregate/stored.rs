//! What the event store holds, read back as any reader would (each
//! partition's manifest, then every segment it names, decoded), summed up to
//! compare with the events that were sent. The binary's tests use it too.

use std::collections::{BTreeMap, BTreeSet};

use beacon_aggregate::segments::{Buckets, download, read_manifest};
use beacon_core::Event;
use beacon_store::arrow::array::{Array, AsArray};
use beacon_store::arrow::datatypes::Decimal128Type;
use beacon_store::schema::revenue_units;
use beacon_store::{Manifest, segment};

/// The figures a ground truth is checked on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows (or events) per event id: every value must be 1.
    pub ids: BTreeMap<String, u32>,
    /// Rows per site and event name.
    pub names: BTreeMap<(String, String), u64>,
    /// User keys per site.
    pub users: BTreeMap<String, BTreeSet<String>>,
    /// Revenue per currency, in units of 10^-18.
    pub revenue: BTreeMap<String, i128>,
}

impl Summary {
    pub fn of_events(events: &[Event]) -> Summary {
        let mut s = Summary::default();
        for e in events {
            *s.ids.entry(e.id.clone()).or_default() += 1;
            *s.names.entry((e.site.clone(), e.name.clone())).or_default() += 1;
            s.users
                .entry(e.site.clone())
                .or_default()
                .insert(e.user_key().to_owned());
            if let Some(r) = &e.revenue {
                *s.revenue.entry(r.currency.clone()).or_default() +=
                    revenue_units(r.amount).expect("fits");
            }
        }
        s
    }

    /// Ids stored more than once.
    pub fn duplicates(&self) -> Vec<(&String, &u32)> {
        self.ids.iter().filter(|(_, n)| **n > 1).collect()
    }

    pub fn rows(&self) -> u64 {
        self.ids.values().map(|n| u64::from(*n)).sum()
    }

    /// The first differences from `expected`, for an assertion message.
    pub fn differences(&self, expected: &Summary) -> Vec<String> {
        let mut out = Vec::new();
        let missing = expected
            .ids
            .keys()
            .filter(|id| !self.ids.contains_key(*id))
            .count();
        if missing > 0 {
            out.push(format!("{missing} events missing"));
        }
        let extra = self
            .ids
            .keys()
            .filter(|id| !expected.ids.contains_key(*id))
            .count();
        if extra > 0 {
            out.push(format!("{extra} rows of events never sent"));
        }
        if !self.duplicates().is_empty() {
            out.push(format!(
                "{} events stored twice or more",
                self.duplicates().len()
            ));
        }
        if self.names != expected.names {
            out.push(format!("names: {:?} vs {:?}", self.names, expected.names));
        }
        for (site, users) in &expected.users {
            let got = self.users.get(site).map_or(0, BTreeSet::len);
            if got != users.len() || self.users.get(site) != Some(users) {
                out.push(format!("users of {site}: {got} vs {}", users.len()));
            }
        }
        if self.revenue != expected.revenue {
            out.push(format!(
                "revenue: {:?} vs {:?}",
                self.revenue, expected.revenue
            ));
        }
        out
    }
}

/// Every partition's manifest and the summary of every row they name.
pub async fn read(
    js: &async_nats::jetstream::Context,
    partitions: u32,
) -> (Summary, Vec<Manifest>) {
    let buckets = Buckets::open(js).await.expect("store buckets");
    let mut summary = Summary::default();
    let mut manifests = Vec::new();
    for p in 0..partitions {
        let (manifest, _) = read_manifest(&buckets.manifests, p)
            .await
            .expect("manifest");
        for meta in &manifest.segments {
            let file = download(&buckets.segments, &meta.name)
                .await
                .expect("segment");
            let mut rows = 0;
            for batch in segment::decode(file).expect("decodes") {
                rows += batch.num_rows() as u64;
                let text = |name: &str| {
                    batch
                        .column_by_name(name)
                        .expect("column")
                        .as_string::<i32>()
                        .clone()
                };
                let (ids, sites, names, users, currencies) = (
                    text("id"),
                    text("site"),
                    text("name"),
                    text("user_key"),
                    text("revenue_currency"),
                );
                let amounts = batch
                    .column_by_name("revenue_amount")
                    .expect("column")
                    .as_primitive::<Decimal128Type>()
                    .clone();
                let seqs = batch
                    .column_by_name("seq")
                    .expect("column")
                    .as_primitive::<beacon_store::arrow::datatypes::UInt64Type>()
                    .clone();
                for i in 0..batch.num_rows() {
                    let seq = seqs.value(i);
                    assert!(
                        (meta.first_seq..=meta.last_seq).contains(&seq),
                        "row at {seq} outside {}'s range",
                        meta.name
                    );
                    *summary.ids.entry(ids.value(i).to_owned()).or_default() += 1;
                    *summary
                        .names
                        .entry((sites.value(i).to_owned(), names.value(i).to_owned()))
                        .or_default() += 1;
                    summary
                        .users
                        .entry(sites.value(i).to_owned())
                        .or_default()
                        .insert(users.value(i).to_owned());
                    if amounts.is_valid(i) {
                        *summary
                            .revenue
                            .entry(currencies.value(i).to_owned())
                            .or_default() += amounts.value(i);
                    }
                }
            }
            assert_eq!(
                rows, meta.rows,
                "{} holds the rows its description says",
                meta.name
            );
        }
        manifests.push(manifest);
    }
    (summary, manifests)
}

/// Wait (bounded) until every partition's manifest reaches the partition's
/// newest event in the stream.
pub async fn wait_stored(
    js: &async_nats::jetstream::Context,
    partitions: u32,
    within: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let behind: Vec<_> = beacon_aggregate::stored(js, partitions)
            .await
            .expect("store progress")
            .into_iter()
            .filter(|p| p.lag() > 0)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store is behind: {behind:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
