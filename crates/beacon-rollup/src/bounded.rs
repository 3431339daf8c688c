//! A counter map of bounded size: the top N keys by count, the rest folded into
//! `(other)`, so a breakdown's memory stays bounded however many distinct
//! values (paths, referrers, names) arrive.

use serde::{Deserialize, Serialize};

/// The key every folded-away value is counted under.
pub const OTHER: &str = "(other)";

/// Counts per key, sorted by key. Increments may be negative (a session's exit
/// page moves); [`Bounded::truncate`] drops keys at zero and folds the tail
/// into [`OTHER`]. A sorted vector, not a map: rollups hold hundreds of
/// thousands of these, most with a handful of keys, and a vector costs only
/// what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bounded(Vec<(String, i64)>);

impl Bounded {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn add(&mut self, key: &str, n: i64) {
        if n == 0 {
            return;
        }
        match self.find(key) {
            Ok(i) => self.0[i].1 += n,
            Err(_) if n < 0 && self.find(OTHER).is_ok() => {
                // The key was folded into (other) earlier: take it back from there.
                self.add(OTHER, n);
            }
            Err(i) => self.0.insert(i, (key.to_owned(), n)),
        }
    }

    pub fn merge(&mut self, other: &Bounded) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    pub fn get(&self, key: &str) -> i64 {
        self.find(key).map_or(0, |i| self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn total(&self) -> i64 {
        self.0.iter().map(|(_, v)| v).sum()
    }

    /// Keep the `n` largest keys (ties by key, so the result never depends on
    /// insertion order), fold the rest into [`OTHER`], drop zeros.
    pub fn truncate(&mut self, n: usize) {
        self.0.retain(|(_, v)| *v != 0);
        let has_other = self.find(OTHER).is_ok();
        if self.0.len() - usize::from(has_other) <= n {
            return;
        }
        let mut ranked: Vec<(&str, i64)> = self
            .0
            .iter()
            .filter(|(k, _)| k != OTHER)
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let dropped: std::collections::HashSet<String> =
            ranked[n..].iter().map(|(k, _)| (*k).to_owned()).collect();
        let mut folded = 0;
        self.0.retain(|(k, v)| {
            let drop = dropped.contains(k);
            if drop {
                folded += *v;
            }
            !drop
        });
        self.add(OTHER, folded);
        self.0.retain(|(_, v)| *v != 0);
        self.0.shrink_to_fit();
    }

    /// Add `sign` × every count of `other`, key by key, with no folding:
    /// for a merged view kept as the exact sum of bounded maps.
    pub fn shift(&mut self, other: &Bounded, sign: i64) {
        for (k, v) in &other.0 {
            match self.find(k) {
                Ok(i) => self.0[i].1 += sign * v,
                Err(i) => self.0.insert(i, (k.clone(), sign * v)),
            }
        }
    }

    /// Drop keys whose count is zero.
    pub fn drop_zeros(&mut self) {
        self.0.retain(|(_, v)| *v != 0);
    }

    /// Rough heap bytes, for the state-size metric.
    pub fn approx_bytes(&self) -> usize {
        self.0.iter().map(|(k, _)| k.len() + 32).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_tail_is_folded_into_other() {
        let mut b = Bounded::default();
        for (k, n) in [("a", 5), ("b", 3), ("c", 3), ("d", 1)] {
            b.add(k, n);
        }
        b.truncate(2);
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            vec![(OTHER, 4), ("a", 5), ("b", 3)]
        );
        // A decrement of a folded key comes out of (other).
        b.add("d", -1);
        assert_eq!(b.get(OTHER), 3);
        assert_eq!(b.total(), 11);
    }

    proptest! {
        #[test]
        fn truncation_keeps_the_total_and_the_bound(
            adds in proptest::collection::vec(("[a-f]{1,2}", 1i64..50), 0..200),
            n in 1usize..10,
        ) {
            let mut b = Bounded::default();
            let mut total = 0;
            for (k, v) in &adds {
                b.add(k, *v);
                total += v;
            }
            b.truncate(n);
            prop_assert_eq!(b.total(), total);
            prop_assert!(b.len() <= n + 1);
        }
    }
}
