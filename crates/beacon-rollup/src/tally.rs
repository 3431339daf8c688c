//! Figures that add up. Every counter a cell keeps is a [`Tally`]: it merges
//! with another (a commit applied), shifts by another exactly (a merged view
//! taking a partition's old cell out and putting the new one in), drops keys
//! counted zero times, bounds its keys to the top N, and estimates its size.
//! Structs of tallies list their fields once in [`tally_fields!`], so adding a
//! figure is one field and one name in that list.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::bounded::Bounded;

pub trait Tally {
    /// Add `other` as a commit does (a bounded map folds keys it no longer
    /// holds into `(other)`).
    fn merge(&mut self, other: &Self);
    /// Add (`sign` 1) or take away (`sign` -1) `other`, exactly, key by key.
    fn shift(&mut self, other: &Self, sign: i64);
    /// Drop keys counted zero times (after a [`Tally::shift`]).
    fn drop_zeros(&mut self);
    /// Bound every map to `top_n` keys.
    fn truncate(&mut self, top_n: usize);
    /// Rough heap bytes, for the state-size metric.
    fn approx_bytes(&self) -> usize;
}

/// Implement [`Tally`] for a struct whose fields are all tallies, field by
/// field in the order given; `after truncate` names a function run after the
/// fields are truncated, for bounds that span fields.
#[macro_export]
macro_rules! tally_fields {
    ($ty:ty { $($field:ident),+ $(,)? } $(after truncate $hook:path)?) => {
        impl $crate::tally::Tally for $ty {
            fn merge(&mut self, other: &Self) {
                $( $crate::tally::Tally::merge(&mut self.$field, &other.$field); )+
            }
            fn shift(&mut self, other: &Self, sign: i64) {
                $( $crate::tally::Tally::shift(&mut self.$field, &other.$field, sign); )+
            }
            fn drop_zeros(&mut self) {
                $( $crate::tally::Tally::drop_zeros(&mut self.$field); )+
            }
            fn truncate(&mut self, top_n: usize) {
                $( $crate::tally::Tally::truncate(&mut self.$field, top_n); )+
                $( $hook(self, top_n); )?
            }
            fn approx_bytes(&self) -> usize {
                0 $( + $crate::tally::Tally::approx_bytes(&self.$field) )+
            }
        }
    };
}

/// A plain count or sum.
impl Tally for i64 {
    fn merge(&mut self, other: &Self) {
        *self = self.saturating_add(*other);
    }
    fn shift(&mut self, other: &Self, sign: i64) {
        *self = self.saturating_add(sign.saturating_mul(*other));
    }
    fn drop_zeros(&mut self) {}
    fn truncate(&mut self, _: usize) {}
    fn approx_bytes(&self) -> usize {
        0
    }
}

impl Tally for Bounded {
    fn merge(&mut self, other: &Self) {
        Bounded::merge(self, other);
    }
    fn shift(&mut self, other: &Self, sign: i64) {
        Bounded::shift(self, other, sign);
    }
    fn drop_zeros(&mut self) {
        Bounded::drop_zeros(self);
    }
    fn truncate(&mut self, top_n: usize) {
        Bounded::truncate(self, top_n);
    }
    fn approx_bytes(&self) -> usize {
        Bounded::approx_bytes(self)
    }
}

/// Exact sums per key (revenue per currency). Amounts are bounded at ingest;
/// saturating keeps even absurd totals from panicking.
impl Tally for BTreeMap<String, Decimal> {
    fn merge(&mut self, other: &Self) {
        self.shift(other, 1);
    }
    fn shift(&mut self, other: &Self, sign: i64) {
        for (key, amount) in other {
            let sum = self.entry(key.clone()).or_default();
            *sum = if sign < 0 {
                sum.saturating_sub(*amount)
            } else {
                sum.saturating_add(*amount)
            };
        }
    }
    fn drop_zeros(&mut self) {
        self.retain(|_, a| !a.is_zero());
    }
    fn truncate(&mut self, _: usize) {}
    fn approx_bytes(&self) -> usize {
        64 * self.len()
    }
}

/// One tally per position (e.g. per dimension).
impl<T: Tally, const N: usize> Tally for [T; N] {
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.iter_mut().zip(other) {
            a.merge(b);
        }
    }
    fn shift(&mut self, other: &Self, sign: i64) {
        for (a, b) in self.iter_mut().zip(other) {
            a.shift(b, sign);
        }
    }
    fn drop_zeros(&mut self) {
        self.iter_mut().for_each(T::drop_zeros);
    }
    fn truncate(&mut self, top_n: usize) {
        for t in self.iter_mut() {
            t.truncate(top_n);
        }
    }
    fn approx_bytes(&self) -> usize {
        self.iter().map(T::approx_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Pair {
        count: i64,
        keys: Bounded,
    }
    tally_fields!(Pair { count, keys });

    #[test]
    fn a_struct_of_tallies_adds_up_field_by_field() {
        let mut a = Pair::default();
        let mut b = Pair {
            count: 2,
            ..Pair::default()
        };
        b.keys.add("x", 3);
        a.merge(&b);
        a.merge(&b);
        assert_eq!((a.count, a.keys.get("x")), (4, 6));
        a.shift(&b, -1);
        a.shift(&b, -1);
        a.drop_zeros();
        assert_eq!(a, Pair::default());
    }
}
