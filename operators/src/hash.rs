//! Text normalization and every persisted hash.
//!
//! All persisted hashes go through this module: xxh3 with fixed seeds and a version number, so a
//! hash written by one release is understood by the next ([`HASH_VERSION`]). Never use
//! `DefaultHasher` for anything that is stored or compared across processes.
//!
//! Normalization (for content hashes and n-grams): Unicode NFKC, lowercase, whitespace runs
//! collapsed to one space, trimmed. ASCII text takes a fast path that allocates once.

use crate::record::{ContentHash, QuestionId, SourceId, TextRef};
use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

/// Bumped whenever normalization or hashing changes; part of every cache key.
pub const HASH_VERSION: u32 = 1;

const SEED_CONTENT: u64 = 0x7468_6f75_6768_7401; // "thought" v1
const SEED_TEXT: u64 = 0x7468_6f75_6768_7402;
const SEED_ID: u64 = 0x7468_6f75_6768_7403;
const SEED_WORD: u64 = 0x7468_6f75_6768_7404;
const SEED_GRAM: u64 = 0x7468_6f75_6768_7405;

/// NFKC, lowercase, collapse whitespace, trim.
pub fn normalize(text: &str) -> String {
    if text.is_ascii() {
        return normalize_ascii(text.as_bytes());
    }
    normalize_unicode(text)
}

fn normalize_unicode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    };
    for c in text.nfkc() {
        for l in c.to_lowercase() {
            push(l, &mut out);
        }
    }
    out
}

/// [`normalize`] of ASCII text (NFKC is the identity there): words copied whole, then
/// lowercased in one pass.
fn normalize_ascii(text: &[u8]) -> String {
    // Most texts are single-spaced already: then normalizing is lowercasing. One branch-free
    // pass finds out (no whitespace but ' ', no "  ", no space at either end).
    let mut irregular = false;
    let mut previous_space = true; // a leading space counts as irregular
    for &b in text {
        let space = b == b' ';
        irregular |= (b'\t'..=b'\r').contains(&b) | (space & previous_space);
        previous_space = space;
    }
    irregular |= previous_space && !text.is_empty();
    if !irregular {
        let mut out = text.to_vec();
        out.make_ascii_lowercase();
        return String::from_utf8(out).expect("ASCII in, ASCII out");
    }
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    // `char::is_whitespace` on ASCII: space and \t \n \x0b \x0c \r.
    for word in text
        .split(|&b| b == b' ' || (b'\t'..=b'\r').contains(&b))
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out.make_ascii_lowercase();
    String::from_utf8(out).expect("ASCII in, ASCII out")
}

/// Content hash: xxh3-128 of the normalized text.
pub fn content_hash(text: &str) -> ContentHash {
    ContentHash(xxh3_128_with_seed(normalize(text).as_bytes(), SEED_CONTENT))
}

/// Content hash of text that is already normalized.
pub fn content_hash_normalized(normalized: &str) -> ContentHash {
    ContentHash(xxh3_128_with_seed(normalized.as_bytes(), SEED_CONTENT))
}

/// Store key of a raw text.
pub fn text_ref(text: &str) -> TextRef {
    TextRef(xxh3_128_with_seed(text.as_bytes(), SEED_TEXT))
}

/// A question's identity: its source and external id.
pub fn question_id(source: &str, id: &str) -> QuestionId {
    let mut buf = Vec::with_capacity(source.len() + id.len() + 1);
    buf.extend_from_slice(source.as_bytes());
    buf.push(0);
    buf.extend_from_slice(id.as_bytes());
    QuestionId(xxh3_64_with_seed(&buf, SEED_ID))
}

/// A source's identity: its name.
pub fn source_id(name: &str) -> SourceId {
    SourceId(xxh3_64_with_seed(name.as_bytes(), SEED_ID ^ 1))
}

/// A stable 64-bit hash of arbitrary bytes (sharding, sampling seeds).
pub fn hash64(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, SEED_GRAM ^ 7)
}

/// A stable 128-bit hash of arbitrary bytes.
pub fn hash128(bytes: &[u8]) -> u128 {
    xxh3_128_with_seed(bytes, SEED_GRAM ^ 11)
}

/// Whitespace-separated tokens of a raw text (the `length_guard` measure).
pub fn whitespace_tokens(text: &str) -> u32 {
    if !text.is_ascii() {
        return text.split_whitespace().count() as u32;
    }
    let mut count = 0u32;
    let mut in_token = false;
    for &b in text.as_bytes() {
        let space = b == b' ' || (b'\t'..=b'\r').contains(&b);
        count += (!space && !in_token) as u32;
        in_token = !space;
    }
    count
}

/// The words of an already normalized text: maximal runs of alphanumeric characters.
///
/// Punctuation and markup separate words and are otherwise ignored, so `$(0,3)$` and `( 0, 3 )`
/// give the same words.
pub fn words(normalized: &str) -> impl Iterator<Item = &str> {
    normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Calls `f` with each of [`words`] of `normalized` (faster on ASCII text: bytes, not chars).
pub fn for_each_word(normalized: &str, mut f: impl FnMut(&str)) {
    if !normalized.is_ascii() {
        words(normalized).for_each(f);
        return;
    }
    let bytes = normalized.as_bytes();
    let mut start = None;
    for (i, b) in bytes.iter().enumerate() {
        match (b.is_ascii_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                f(&normalized[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&normalized[s..]);
    }
}

/// The hash of one (normalized) word.
pub fn word_hash(word: &str) -> u64 {
    xxh3_64_with_seed(word.as_bytes(), SEED_WORD)
}

/// Hashes of the word n-grams of a raw text (normalized first). Texts with fewer than `n`
/// words have none.
pub fn word_ngrams(text: &str, n: usize) -> Vec<u64> {
    let normalized = normalize(text);
    let word_hashes: Vec<u64> = words(&normalized).map(word_hash).collect();
    ngrams_of_hashes(&word_hashes, n)
}

/// Hashes of the character n-grams of a raw text (normalized first, whitespace kept as one space).
pub fn char_ngrams(text: &str, n: usize) -> Vec<u64> {
    let normalized = normalize(text);
    let chars: Vec<u64> = normalized.chars().map(|c| c as u64).collect();
    ngrams_of_hashes(&chars, n)
}

/// n-gram hashes over a sequence of unit hashes (words, characters or tokenizer ids).
pub fn ngrams_of_hashes(units: &[u64], n: usize) -> Vec<u64> {
    if n == 0 || units.len() < n {
        return Vec::new();
    }
    // The hash of a window is xxh3 of its units' little-endian bytes. On a little-endian
    // machine those bytes are the window's memory: hashed in place, without a copy.
    #[cfg(target_endian = "little")]
    {
        // SAFETY: a `[u64]` window is `8 * n` initialized bytes, any alignment is fine for u8.
        let bytes = unsafe {
            std::slice::from_raw_parts(units.as_ptr() as *const u8, std::mem::size_of_val(units))
        };
        (0..=units.len() - n)
            .map(|i| xxh3_64_with_seed(&bytes[i * 8..(i + n) * 8], SEED_GRAM))
            .collect()
    }
    #[cfg(not(target_endian = "little"))]
    {
        let mut buf = Vec::with_capacity(n * 8);
        units
            .windows(n)
            .map(|w| {
                buf.clear();
                for u in w {
                    buf.extend_from_slice(&u.to_le_bytes());
                }
                xxh3_64_with_seed(&buf, SEED_GRAM)
            })
            .collect()
    }
}

/// The hash of one window of units: the element of [`ngrams_of_hashes`] for that window.
#[inline]
pub fn ngram_of_window(window: &[u64]) -> u64 {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: a `[u64]` slice is `8 * len` initialized bytes, any alignment is fine for u8.
        let bytes = unsafe {
            std::slice::from_raw_parts(window.as_ptr() as *const u8, std::mem::size_of_val(window))
        };
        xxh3_64_with_seed(bytes, SEED_GRAM)
    }
    #[cfg(not(target_endian = "little"))]
    {
        let buf: Vec<u8> = window.iter().flat_map(|u| u.to_le_bytes()).collect();
        xxh3_64_with_seed(&buf, SEED_GRAM)
    }
}

/// The normalized words of the `index`-th word n-gram of a text (for audit spans).
pub fn word_ngram_span(text: &str, n: usize, index: usize) -> String {
    let normalized = normalize(text);
    words(&normalized)
        .skip(index)
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_collapses_case_width_and_space() {
        assert_eq!(normalize("  Hello\t\nWORLD  "), "hello world");
        // NFKC folds full-width letters and ligatures.
        assert_eq!(normalize("ＡＢＣ ﬁx"), "abc fix");
        assert_eq!(content_hash("Find  x."), content_hash("find x."));
        assert_ne!(content_hash("find x."), content_hash("find y."));
    }

    #[test]
    fn words_ignore_punctuation() {
        let n = normalize("Convert $(0,3)$ to polar!");
        assert_eq!(
            words(&n).collect::<Vec<_>>(),
            ["convert", "0", "3", "to", "polar"]
        );
    }

    #[test]
    fn ngram_hashes_are_xxh3_of_little_endian_windows() {
        let units: Vec<u64> = (0..40u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for n in [1, 3, 13] {
            let expected: Vec<u64> = units
                .windows(n)
                .map(|w| {
                    let bytes: Vec<u8> = w.iter().flat_map(|u| u.to_le_bytes()).collect();
                    xxh3_64_with_seed(&bytes, SEED_GRAM)
                })
                .collect();
            assert_eq!(ngrams_of_hashes(&units, n), expected);
        }
    }

    #[test]
    fn ngrams_are_stable_and_positional() {
        let a = word_ngrams("a b c d", 2);
        assert_eq!(a.len(), 3);
        assert_eq!(a, word_ngrams("A, b; C  d", 2));
        assert!(word_ngrams("a b", 3).is_empty());
        assert_eq!(word_ngram_span("A b C d", 2, 1), "b c");
    }

    #[test]
    fn ascii_fast_paths_equal_the_general_ones() {
        // Every ASCII byte, whitespace of each kind and runs of it, in pseudo-random strings.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let text: String = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = (x % 128) as u8;
                    (if x % 5 == 0 {
                        b" \t\n\x0b\x0c\r"[(x % 6) as usize]
                    } else {
                        b
                    }) as char
                })
                .collect();
            assert_eq!(
                normalize_ascii(text.as_bytes()),
                normalize_unicode(&text),
                "{text:?}"
            );
            let mut fast = Vec::new();
            for_each_word(&text, |w| fast.push(w.to_string()));
            assert_eq!(fast, words(&text).collect::<Vec<_>>(), "{text:?}");
            let single = normalize_unicode(&text);
            assert_eq!(normalize_ascii(single.as_bytes()), single, "{single:?}");
            assert_eq!(
                normalize_ascii(single.to_uppercase().as_bytes()),
                single,
                "{single:?}"
            );
            assert_eq!(
                whitespace_tokens(&text),
                text.split_whitespace().count() as u32,
                "{text:?}"
            );
        }
    }

    #[test]
    fn ids_separate_source_and_id() {
        assert_ne!(question_id("ab", "c"), question_id("a", "bc"));
        assert_eq!(question_id("s", "1"), question_id("s", "1"));
    }
}

/// A fast hasher for keys that are already well mixed (n-gram hashes, ids derived from xxh3):
/// one rotate-xor-multiply per word (FxHash's step), instead of SipHash's rounds.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
/// A `HashSet` with [`FastHasher`].
pub type FastSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<FastHasher>>;
