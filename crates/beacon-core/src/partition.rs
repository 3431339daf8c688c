//! Which partition an event belongs to: hash(site, user) mod P.
//!
//! One user's events always land in one partition, so they stay in order there,
//! which sessions and funnels need. The hash (XXH3, seed 0) is fixed forever:
//! changing it would move users between partitions of an existing stream.

use xxhash_rust::xxh3::xxh3_64;

/// The partition of `user_key`'s events on `site`, in `0..partitions`.
///
/// # Panics
/// If `partitions` is zero; config validation refuses that long before.
pub fn partition_of(site: &str, user_key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be positive");
    let mut key = Vec::with_capacity(site.len() + 1 + user_key.len());
    key.extend_from_slice(site.as_bytes());
    // A separator no site id contains keeps ("ab", "c") apart from ("a", "bc").
    key.push(0);
    key.extend_from_slice(user_key.as_bytes());
    (xxh3_64(&key) % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_values_never_change() {
        // Pinned: a change here would silently reshuffle every existing stream.
        let pinned: Vec<u32> = ["u-1", "u-2", "u-3", "alice"]
            .iter()
            .map(|u| partition_of("shop", u, 16))
            .collect();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u32; 4] = [4, 0, 10, 3];

    #[test]
    fn site_and_user_are_kept_apart() {
        let spread: std::collections::HashSet<bool> = (0..64)
            .map(|i| {
                partition_of("ab", &format!("c{i}"), 1 << 20)
                    == partition_of("a", &format!("bc{i}"), 1 << 20)
            })
            .collect();
        assert_eq!(spread, std::collections::HashSet::from([false]));
    }

    #[test]
    fn spread_is_uniform_over_partitions() {
        let p = 16u32;
        let n = 160_000;
        let mut counts = vec![0u32; p as usize];
        for i in 0..n {
            counts[partition_of("shop", &format!("user-{i}"), p) as usize] += 1;
        }
        let expected = f64::from(n) / f64::from(p);
        // Chi-square with 15 degrees of freedom: 37.7 is the 0.1% critical value.
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(
            chi2 < 37.7,
            "partition counts {counts:?} are not uniform (chi2 {chi2})"
        );
    }

    proptest! {
        #[test]
        fn stable_and_in_range(site in "[a-z0-9_-]{1,20}", user in any::<String>(), p in 1u32..512) {
            let a = partition_of(&site, &user, p);
            prop_assert!(a < p);
            prop_assert_eq!(a, partition_of(&site, &user, p));
        }
    }
}
