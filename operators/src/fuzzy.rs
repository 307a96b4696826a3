//! Indel similarity, as rapidfuzz's `fuzz.ratio`: `100 * (1 - indel distance / (|a| + |b|))`,
//! where the indel distance counts insertions and deletions only, i.e.
//! `|a| + |b| - 2 * LCS(a, b)`.
//!
//! The LCS is computed bit-parallel (Hyyrö's algorithm, 64 characters of the pattern per machine
//! word): `O(|b| * ceil(|a| / 64))` word operations instead of `|a| * |b|` cells. A [`Pattern`]
//! holds the per-character bit masks of one string, built once and matched against many (a
//! benchmark item against every candidate question).

use std::collections::HashMap;

/// A string prepared for bit-parallel LCS against many others.
#[derive(Clone, Debug)]
pub struct Pattern {
    len: usize,
    words: usize,
    /// Masks for ASCII characters: `ascii[c * words + w]`.
    ascii: Vec<u64>,
    other: HashMap<char, Vec<u64>>,
}

impl Pattern {
    pub fn new(chars: &[char]) -> Pattern {
        let words = chars.len().div_ceil(64).max(1);
        let mut ascii = vec![0u64; 128 * words];
        let mut other: HashMap<char, Vec<u64>> = HashMap::new();
        for (i, c) in chars.iter().enumerate() {
            let (w, bit) = (i / 64, 1u64 << (i % 64));
            if (*c as u32) < 128 {
                ascii[*c as usize * words + w] |= bit;
            } else {
                other.entry(*c).or_insert_with(|| vec![0; words])[w] |= bit;
            }
        }
        Pattern {
            len: chars.len(),
            words,
            ascii,
            other,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the longest common subsequence with `text`.
    pub fn lcs(&self, text: &[char]) -> usize {
        if self.len == 0 || text.is_empty() {
            return 0;
        }
        let zeros = vec![0u64; self.words];
        let mut v = vec![u64::MAX; self.words];
        for c in text {
            self.step(&mut v, *c, &zeros);
        }
        self.zeros(&v)
    }

    /// The Indel ratio with `text` if it is at least `threshold`: the scan stops as soon as the
    /// characters left cannot lift the LCS to the needed length.
    pub fn ratio_at_least(&self, text: &[char], threshold: f64) -> Option<f64> {
        let total = self.len + text.len();
        if total == 0 {
            return (threshold <= 100.0).then_some(100.0);
        }
        let needed = (threshold / 100.0 * total as f64 / 2.0).ceil() as usize;
        if needed > self.len.min(text.len()) {
            return None;
        }
        let zeros = vec![0u64; self.words];
        let mut v = vec![u64::MAX; self.words];
        for (i, c) in text.iter().enumerate() {
            self.step(&mut v, *c, &zeros);
            if i % 16 == 15 {
                // With `rest` characters of `text` left, a common subsequence matches at most
                // LCS(pattern[..j], text so far) + min(len - j, rest) for the j where it
                // crosses into the rest; that is largest at j = len - rest.
                let rest = text.len() - i - 1;
                let bound = if rest >= self.len {
                    self.len
                } else {
                    self.zeros_below(&v, self.len - rest) + rest
                };
                if bound < needed {
                    return None;
                }
            }
        }
        let lcs = self.zeros(&v);
        let r = 100.0 * (2 * lcs) as f64 / total as f64;
        (r >= threshold).then_some(r)
    }

    /// One column of the bit-parallel LCS (Hyyrö): folds character `c` into the row vector.
    #[inline]
    fn step(&self, v: &mut [u64], c: char, zeros: &[u64]) {
        let masks: &[u64] = if (c as u32) < 128 {
            let at = c as usize * self.words;
            &self.ascii[at..at + self.words]
        } else {
            self.other.get(&c).map(|m| m.as_slice()).unwrap_or(zeros)
        };
        let mut carry = 0u64;
        for (vw, m) in v.iter_mut().zip(masks) {
            let u = *vw & m;
            let (s1, c1) = vw.overflowing_add(u);
            let (s2, c2) = s1.overflowing_add(carry);
            carry = (c1 | c2) as u64;
            *vw = s2 | (*vw - u);
        }
    }

    /// LCS(pattern[..j], text so far): the zero bits of `v` below bit `j`.
    fn zeros_below(&self, v: &[u64], j: usize) -> usize {
        let (full, part) = (j / 64, j % 64);
        let mut lcs: usize = v[..full].iter().map(|w| w.count_zeros() as usize).sum();
        if part > 0 {
            lcs += (!v[full] & ((1u64 << part) - 1)).count_ones() as usize;
        }
        lcs
    }

    fn zeros(&self, v: &[u64]) -> usize {
        let mut lcs = 0usize;
        for (w, vw) in v.iter().enumerate() {
            let valid = if (w + 1) * 64 <= self.len {
                u64::MAX
            } else {
                (1u64 << (self.len - w * 64)) - 1
            };
            lcs += (!vw & valid).count_ones() as usize;
        }
        lcs
    }

    /// The Indel ratio (0..=100) with `text`.
    pub fn ratio(&self, text: &[char]) -> f64 {
        let total = self.len + text.len();
        if total == 0 {
            return 100.0;
        }
        let lcs = self.lcs(text);
        100.0 * (2 * lcs) as f64 / total as f64
    }
}

/// The Indel ratio of two strings (0..=100), as rapidfuzz's `fuzz.ratio` with no processor.
pub fn ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (short, long) = if a.len() <= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    Pattern::new(short).ratio(long)
}

/// Whether two lengths can reach `threshold` at all: the ratio is at most
/// `200 * min / (min + max)`.
pub fn lengths_allow(a: usize, b: usize, threshold: f64) -> bool {
    let (min, max) = (a.min(b), a.max(b));
    if min + max == 0 {
        return true;
    }
    200.0 * min as f64 / (min + max) as f64 >= threshold
}

/// The length range `[lo, hi]` a string must have to reach `threshold` against one of length `n`.
pub fn length_range(n: usize, threshold: f64) -> (usize, usize) {
    if threshold <= 0.0 {
        return (0, usize::MAX);
    }
    let t = threshold / 100.0;
    let lo = (n as f64 * t / (2.0 - t)).ceil() as usize;
    let hi = if t >= 2.0 {
        n
    } else {
        (n as f64 * (2.0 - t) / t).floor() as usize
    };
    (lo, hi)
}

/// Classic dynamic-programming LCS, the oracle of the bit-parallel one.
pub fn lcs_reference(a: &[char], b: &[char]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // rapidfuzz: fuzz.ratio("this is a test", "this is a test!") == 96.55...
        assert!((ratio("this is a test", "this is a test!") - 96.551724).abs() < 1e-4);
        assert_eq!(ratio("", ""), 100.0);
        assert_eq!(ratio("abc", ""), 0.0);
        assert_eq!(ratio("abc", "abc"), 100.0);
        // rapidfuzz 3.14: fuzz.ratio("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear") == 90.909...
        assert!(
            (ratio("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear") - 90.909090).abs() < 1e-4
        );
    }

    #[test]
    fn length_bounds_are_tight() {
        let (lo, hi) = length_range(100, 75.0);
        assert_eq!((lo, hi), (60, 166));
        assert!(lengths_allow(100, 60, 75.0) && !lengths_allow(100, 59, 75.0));
    }

    proptest! {
        #[test]
        fn early_exit_agrees_with_the_full_ratio(
            a in proptest::collection::vec(prop_oneof![Just('a'), Just('b'), Just('c')], 0..150),
            b in proptest::collection::vec(prop_oneof![Just('a'), Just('b'), Just('c')], 0..150),
            t in 0.0f64..100.0,
        ) {
            let p = Pattern::new(&a);
            let full = p.ratio(&b);
            prop_assert_eq!(p.ratio_at_least(&b, t), (full >= t).then_some(full));
        }

        /// Long texts over a wider alphabet (low similarity, so the scan stops early often),
        /// texts longer and shorter than the pattern, thresholds near the true ratio.
        #[test]
        fn early_exit_agrees_on_long_dissimilar_texts(
            a in proptest::collection::vec(0u8..10, 0..400),
            b in proptest::collection::vec(0u8..10, 0..400),
            delta in -5.0f64..5.0,
        ) {
            let a: Vec<char> = a.into_iter().map(|c| (b'a' + c) as char).collect();
            let b: Vec<char> = b.into_iter().map(|c| (b'a' + c) as char).collect();
            let p = Pattern::new(&a);
            let full = p.ratio(&b);
            let t = (full + delta).clamp(0.0, 100.0);
            prop_assert_eq!(p.ratio_at_least(&b, t), (full >= t).then_some(full));
        }

        #[test]
        fn bit_parallel_lcs_equals_dynamic_programming(
            a in proptest::collection::vec(prop_oneof![Just('a'), Just('b'), Just('c'), Just('é'), Just('字')], 0..200),
            b in proptest::collection::vec(prop_oneof![Just('a'), Just('b'), Just('c'), Just('é'), Just('字')], 0..200),
        ) {
            prop_assert_eq!(Pattern::new(&a).lcs(&b), lcs_reference(&a, &b));
        }
    }
}
