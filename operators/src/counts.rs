//! A multiset of keys kept as a sorted vector and an overlay of changes.
//!
//! Steps that hold one entry per live question (decontamination's pairs, top-n's members) get
//! millions of them in a run's first epoch, already sorted and consolidated, and few per epoch
//! after that. A B-tree or hash table built from them costs a copy of every entry into fresh
//! pages (at the paper's scale, hundreds of megabytes per worker that the kernel zeroes) and a
//! second or so of a replay. [`SortedCounts`] keeps the first epoch's vector as it is, and the
//! later changes in a small ordered map that is merged into the vector when it passes a
//! quarter of it and [`MERGE_FLOOR`] (so a change costs a logarithm, and the merges a constant
//! per change).

use std::collections::BTreeMap;

/// Changes [`SortedCounts`] holds apart at least (small in unit tests, so that they merge).
const MERGE_FLOOR: usize = if cfg!(test) { 8 } else { 1024 };

/// Keys with their counts (never zero): a vector sorted by key, and the keys changed since it
/// was made, with their count now (zero for a key gone).
#[derive(Clone, Debug)]
pub struct SortedCounts<K> {
    base: Vec<(K, isize)>,
    changed: BTreeMap<K, isize>,
    /// Keys whose count is not zero.
    len: usize,
}

impl<K> Default for SortedCounts<K> {
    fn default() -> Self {
        SortedCounts {
            base: Vec::new(),
            changed: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Ord + Clone> SortedCounts<K> {
    /// `entries` sorted by key, with no repeated key and no zero count (as a consolidation
    /// leaves them), taken as they are.
    pub fn from_sorted(entries: Vec<(K, isize)>) -> SortedCounts<K> {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(entries.iter().all(|(_, c)| *c != 0));
        SortedCounts {
            len: entries.len(),
            base: entries,
            changed: BTreeMap::new(),
        }
    }

    /// The keys held (count not zero).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The count of `key` (zero when absent).
    pub fn get(&self, key: &K) -> isize {
        match self.changed.get(key) {
            Some(c) => *c,
            None => self
                .base
                .binary_search_by(|(k, _)| k.cmp(key))
                .map_or(0, |i| self.base[i].1),
        }
    }

    /// Sets the count of `key`.
    pub fn set(&mut self, key: K, count: isize) {
        let before = self.get(&key);
        self.set_from(key, before, count);
    }

    /// [`SortedCounts::set`] of a key whose count is `before`.
    fn set_from(&mut self, key: K, before: isize, count: isize) {
        self.len = self.len + (count != 0) as usize - (before != 0) as usize;
        self.changed.insert(key, count);
        if self.changed.len() > self.base.len() / 4 + MERGE_FLOOR {
            self.merge();
        }
    }

    /// Adds `diff` to the count of `key`; returns the count before and after.
    pub fn add(&mut self, key: K, diff: isize) -> (isize, isize) {
        let before = self.get(&key);
        if diff != 0 {
            self.set_from(key, before, before + diff);
        }
        (before, before + diff)
    }

    /// Folds the changes into the sorted vector.
    fn merge(&mut self) {
        let all: Vec<(K, isize)> = self.iter().map(|(k, c)| (k.clone(), c)).collect();
        self.changed = BTreeMap::new();
        self.base = all;
    }

    /// Every key with its count, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, isize)> + Clone + '_ {
        let mut base = self.base.iter().peekable();
        let mut changed = self.changed.iter().peekable();
        std::iter::from_fn(move || loop {
            let next = match (base.peek(), changed.peek()) {
                (None, None) => return None,
                (Some(_), None) => base.next().map(|(k, c)| (k, *c)),
                (None, Some(_)) => changed.next().map(|(k, c)| (k, *c)),
                (Some((b, _)), Some((c, _))) => match b.cmp(c) {
                    std::cmp::Ordering::Less => base.next().map(|(k, c)| (k, *c)),
                    std::cmp::Ordering::Greater => changed.next().map(|(k, c)| (k, *c)),
                    std::cmp::Ordering::Equal => {
                        base.next();
                        changed.next().map(|(k, c)| (k, *c))
                    }
                },
            };
            match next {
                Some((_, 0)) => continue,
                other => return other,
            }
        })
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + Clone + '_ {
        self.iter().map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The counts hold what a map of counts holds, in order, through enough changes to be
        /// merged into the sorted vector several times.
        #[test]
        fn sorted_counts_hold_what_a_map_holds(
            first in proptest::collection::btree_map(0u32..300, -2isize..3, 0..200),
            changes in proptest::collection::vec((0u32..300, -2isize..3), 0..3000),
        ) {
            let mut model: BTreeMap<u32, isize> = first.into_iter().filter(|(_, c)| *c != 0).collect();
            let mut counts = SortedCounts::from_sorted(model.iter().map(|(k, c)| (*k, *c)).collect());
            for (i, &(k, d)) in changes.iter().enumerate() {
                prop_assert_eq!(counts.get(&k), model.get(&k).copied().unwrap_or(0));
                let (before, after) = counts.add(k, d);
                let was = model.get(&k).copied().unwrap_or(0);
                prop_assert_eq!((before, after), (was, was + d));
                if was + d == 0 { model.remove(&k); } else { model.insert(k, was + d); }
                prop_assert_eq!(counts.len(), model.len());
                prop_assert_eq!(counts.is_empty(), model.is_empty());
                if i % 97 == 0 {
                    let all: Vec<(u32, isize)> = counts.iter().map(|(k, c)| (*k, c)).collect();
                    prop_assert_eq!(all, model.iter().map(|(k, c)| (*k, *c)).collect::<Vec<_>>());
                }
            }
            let all: Vec<(u32, isize)> = counts.iter().map(|(k, c)| (*k, c)).collect();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        }
    }
}
