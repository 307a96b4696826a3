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

/// Bit masks of a 64-byte block of ASCII: `(alphanumeric, letter, whitespace)`, bit i for
/// byte i. (Whitespace as [`normalize`] has it: ' ' and \t \n \x0b \x0c \r.)
#[cfg(target_arch = "x86_64")]
#[inline]
fn classify64(block: &[u8; 64]) -> (u64, u64, u64) {
    use std::arch::x86_64::*;
    let (mut alnum, mut letter, mut space) = (0u64, 0u64, 0u64);
    for (k, chunk) in block.chunks_exact(16).enumerate() {
        // SAFETY: SSE2 is part of x86_64; the load is unaligned and reads 16 bytes of `chunk`.
        let (a, l, w) = unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
            let set = |b: u8| _mm_set1_epi8(b as i8);
            // ASCII bytes are below 0x80, so signed compares order them as unsigned ones.
            let within = |x, lo: u8, hi: u8| {
                _mm_and_si128(
                    _mm_cmpgt_epi8(x, set(lo - 1)),
                    _mm_cmplt_epi8(x, set(hi + 1)),
                )
            };
            // Setting bit 5 lowercases a letter and maps no other byte into 'a'..='z'.
            let letter = within(_mm_or_si128(v, set(0x20)), b'a', b'z');
            let digit = within(v, b'0', b'9');
            let space = _mm_or_si128(_mm_cmpeq_epi8(v, set(b' ')), within(v, b'\t', b'\r'));
            (
                _mm_movemask_epi8(_mm_or_si128(letter, digit)) as u32 as u64,
                _mm_movemask_epi8(letter) as u32 as u64,
                _mm_movemask_epi8(space) as u32 as u64,
            )
        };
        alnum |= a << (16 * k);
        letter |= l << (16 * k);
        space |= w << (16 * k);
    }
    (alnum, letter, space)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn classify64(block: &[u8; 64]) -> (u64, u64, u64) {
    let (mut alnum, mut letter, mut space) = (0u64, 0u64, 0u64);
    for (i, b) in block.iter().enumerate() {
        alnum |= (b.is_ascii_alphanumeric() as u64) << i;
        letter |= (b.is_ascii_alphabetic() as u64) << i;
        space |= ((*b == b' ' || (b'\t'..=b'\r').contains(b)) as u64) << i;
    }
    (alnum, letter, space)
}

/// Bits `0..n` set (n <= 64).
#[inline]
fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The first bytes of xxh3's default secret: what its paths for inputs of up to 16 bytes read.
const XXH3_SECRET: [u8; 56] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e,
];

const fn secret64(at: usize) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < 8 {
        v |= (XXH3_SECRET[at + i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// `xxh3_64_with_seed(word.to_ascii_lowercase(), SEED_WORD)` for an ASCII alphanumeric word
/// of 1 to 16 bytes, reading the text in place: xxh3's short paths read only the word's own
/// bytes (its first and last 4 or 8), and setting bit 5 of each lowercases a letter and
/// leaves a digit as it is. Checked against the crate by `short_word_hash_is_xxh3`.
#[inline]
fn short_word_hash(word: &[u8]) -> u64 {
    const LOW: u64 = 0x2020_2020_2020_2020;
    let len = word.len();
    let seed = SEED_WORD;
    let xxh3_avalanche = |mut h: u64| {
        h ^= h >> 37;
        h = h.wrapping_mul(0x1656_6791_9E37_79F9);
        h ^ (h >> 32)
    };
    if len > 8 {
        let lo = u64::from_le_bytes(word[..8].try_into().expect("8")) | LOW;
        let hi = u64::from_le_bytes(word[len - 8..].try_into().expect("8")) | LOW;
        let input_lo = lo ^ (secret64(24) ^ secret64(32)).wrapping_add(seed);
        let input_hi = hi ^ (secret64(40) ^ secret64(48)).wrapping_sub(seed);
        let product = input_lo as u128 * input_hi as u128;
        let acc = (len as u64)
            .wrapping_add(input_lo.swap_bytes())
            .wrapping_add(input_hi)
            .wrapping_add(product as u64 ^ (product >> 64) as u64);
        xxh3_avalanche(acc)
    } else if len >= 4 {
        let seed = seed ^ (((seed as u32).swap_bytes() as u64) << 32);
        let first = u32::from_le_bytes(word[..4].try_into().expect("4")) as u64 | (LOW >> 32);
        let last = u32::from_le_bytes(word[len - 4..].try_into().expect("4")) as u64 | (LOW >> 32);
        let flip = (secret64(8) ^ secret64(16)).wrapping_sub(seed);
        let mut h = (last.wrapping_add(first << 32)) ^ flip;
        // xxh3's strong avalanche
        h ^= h.rotate_left(49) ^ h.rotate_left(24);
        h = h.wrapping_mul(0x9FB2_1C65_1E98_DF25);
        h ^= (h >> 35).wrapping_add(len as u64);
        h = h.wrapping_mul(0x9FB2_1C65_1E98_DF25);
        h ^ (h >> 28)
    } else {
        let (c1, c2, c3) = (word[0] | 0x20, word[len >> 1] | 0x20, word[len - 1] | 0x20);
        let combo = (c1 as u32) << 16 | (c2 as u32) << 24 | (c3 as u32) | (len as u32) << 8;
        let flip = ((secret64(0) as u32 ^ (secret64(4) as u32)) as u64).wrapping_add(seed);
        // xxh64's avalanche
        let mut h = combo as u64 ^ flip;
        h ^= h >> 33;
        h = h.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^= h >> 29;
        h = h.wrapping_mul(0x1656_67B1_9E37_79F9);
        h ^ (h >> 32)
    }
}

/// [`word_hash`] of the ASCII alphanumeric word `bytes[start..end]`, lowercased.
#[inline]
fn ascii_word_hash(bytes: &[u8], start: usize, end: usize) -> u64 {
    let len = end - start;
    if len <= 16 {
        return short_word_hash(&bytes[start..end]);
    }
    if len > 64 {
        return xxh3_64_with_seed(&bytes[start..end].to_ascii_lowercase(), SEED_WORD);
    }
    let mut lower = [0u8; 64];
    // Setting bit 5 lowercases letters and leaves digits as they are: 16 bytes at a time
    // while the text lasts (bytes past the word are copied but not hashed).
    let whole = len.div_ceil(16) * 16;
    if start + whole <= bytes.len() {
        for (dst, src) in lower[..whole]
            .chunks_exact_mut(16)
            .zip(bytes[start..start + whole].chunks_exact(16))
        {
            let v = u128::from_le_bytes(src.try_into().expect("16"))
                | 0x2020_2020_2020_2020_2020_2020_2020_2020;
            dst.copy_from_slice(&v.to_le_bytes());
        }
    } else {
        for (dst, src) in lower.iter_mut().zip(&bytes[start..end]) {
            *dst = src | 0x20;
        }
    }
    xxh3_64_with_seed(&lower[..len], SEED_WORD)
}

/// Calls `f(hash, numeric)` for each of [`words`] of [`normalize`]`(text)`, in order: its
/// [`word_hash`] and whether it is all digits; returns the normalized text's length in
/// chars. On ASCII text the normalized text is not built: its words are the text's runs of
/// ASCII alphanumerics, lowercased, found 64 bytes at a time with bit masks, and its length
/// is counted on the way (no allocation).
pub fn for_each_word_hash(text: &str, mut f: impl FnMut(u64, bool)) -> usize {
    if !text.is_ascii() {
        let normalized = normalize(text);
        for_each_word(&normalized, |w| {
            f(word_hash(w), w.chars().all(char::is_numeric))
        });
        return normalized.chars().count();
    }
    let bytes = text.as_bytes();
    const NONE: usize = usize::MAX;
    // A word that runs into the next block: where it started, whether it had a letter.
    let mut open = NONE;
    let mut open_letter = false;
    // The normalized length: bytes but whitespace, plus one space per whitespace run that
    // follows a kept byte (less a trailing one).
    let mut spaces = 0u32;
    let mut gaps = 0u32;
    let mut previous_space = 1u64;
    let mut last_space = true;
    let mut padded = [0u8; 64];
    for (b, chunk) in bytes.chunks(64).enumerate() {
        let base = b * 64;
        let block: &[u8; 64] = match chunk.try_into() {
            Ok(block) => block,
            Err(_) => {
                // The tail, padded with zero bytes (neither words nor whitespace).
                padded[..chunk.len()].copy_from_slice(chunk);
                &padded
            }
        };
        let (alnum, letter, space) = classify64(block);
        spaces += space.count_ones();
        gaps += (space & !((space << 1) | previous_space)).count_ones();
        previous_space = space >> 63;
        last_space = (space >> (chunk.len() - 1)) & 1 == 1;
        let mut bits = alnum;
        if open != NONE {
            let end = (!bits).trailing_zeros();
            open_letter |= letter & low_bits(end) != 0;
            if end == 64 {
                continue;
            }
            f(
                ascii_word_hash(bytes, open, base + end as usize),
                !open_letter,
            );
            open = NONE;
            bits &= !low_bits(end);
        }
        while bits != 0 {
            let s = bits.trailing_zeros();
            let e = (!bits & (u64::MAX << s)).trailing_zeros();
            if e == 64 {
                open = base + s as usize;
                open_letter = letter >> s != 0;
                break;
            }
            let word = low_bits(e) & !low_bits(s);
            let hash = ascii_word_hash(bytes, base + s as usize, base + e as usize);
            f(hash, letter & word == 0);
            bits &= !word;
        }
    }
    if open != NONE {
        f(ascii_word_hash(bytes, open, bytes.len()), !open_letter);
    }
    if last_space && gaps > 0 {
        gaps -= 1;
    }
    bytes.len() - spaces as usize + gaps as usize
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

    proptest::proptest! {
        /// The one-pass word hashes and length are those of the normalized text, built.
        #[test]
        fn word_hashes_and_length_skip_nothing(
            ascii in "[ a-zA-Z0-9$(),.\t\n\r\\x0b_-]{0,300}",
            unicode in "(|é|²x|ﬁ|Ａ Ｂ)",
            long in proptest::bool::ANY,
        ) {
            // ASCII texts take the one-pass path; the others normalize first.
            let text = format!("{ascii}{unicode}");
            let text = if long { format!("{text} {} x", "Ab9".repeat(30)) } else { text };
            let normalized = normalize(&text);
            let expected: Vec<(u64, bool)> = words(&normalized)
                .map(|w| (word_hash(w), w.chars().all(char::is_numeric)))
                .collect();
            let mut got = Vec::new();
            let len = for_each_word_hash(&text, |h, numeric| got.push((h, numeric)));
            proptest::prop_assert_eq!(&got, &expected);
            proptest::prop_assert_eq!(len, normalized.chars().count());
        }
    }

    #[test]
    fn short_word_hash_is_xxh3() {
        let alnum = b"aZ09kQx7MmtT3bY";
        for len in 1..=16 {
            for shift in 0..alnum.len() {
                let word: Vec<u8> = (0..len)
                    .map(|i| alnum[(i * 7 + shift) % alnum.len()])
                    .collect();
                let lower = word.to_ascii_lowercase();
                assert_eq!(
                    short_word_hash(&word),
                    xxh3_64_with_seed(&lower, SEED_WORD),
                    "{}",
                    String::from_utf8_lossy(&word)
                );
            }
        }
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
                    (if x.is_multiple_of(5) {
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

/// Directory bits for a sorted table of `n` uniformly hashed keys: about 8 keys per bucket,
/// between 2^8 and 2^24 buckets.
pub fn dir_bits(n: u64) -> u32 {
    (64 - (n / 8).max(1).leading_zeros()).clamp(8, 24)
}

/// The directory bucket of a uniformly hashed 128-bit key: its top `bits` bits.
pub fn dir_bucket(key: u128, bits: u32) -> usize {
    (key >> (128 - bits)) as usize
}

/// The bucket directory of `keys` (uniformly hashed) under `bits`: bucket `b`'s keys are at
/// `[starts[b]..starts[b + 1]]` once the keys are in bucket order.
fn bucket_starts(keys: impl IntoIterator<Item = u128>, bits: u32) -> Vec<u32> {
    let mut starts = vec![0u32; (1usize << bits) + 1];
    for k in keys {
        starts[dir_bucket(k, bits) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    starts
}

/// A set of text keys as one sorted vector under a bucket directory (a key is found by one
/// directory read and a binary search of about 8 neighbours). Built from sorted lists by
/// merging, with no hashing or rehashing: the decontamination memo loads millions of keys at
/// a run's start this way in a few tens of milliseconds, where a hash set took half a second.
#[derive(Clone, Debug, Default)]
pub struct SortedKeys {
    keys: Vec<crate::record::TextRef>,
    /// Bucket `b`'s keys are `keys[dir[b]..dir[b + 1]]`.
    dir: Vec<u32>,
    bits: u32,
}

impl SortedKeys {
    /// The set of `keys` (in any order, repeats allowed).
    pub fn new(mut keys: Vec<crate::record::TextRef>) -> SortedKeys {
        if !keys.windows(2).all(|w| { w[0].0 } < { w[1].0 }) {
            keys.sort_unstable();
            keys.dedup();
        }
        let bits = dir_bits(keys.len() as u64);
        let dir = bucket_starts(keys.iter().map(|k| k.0), bits);
        SortedKeys { keys, dir, bits }
    }

    /// The union of this set and `more` (sorted or not).
    pub fn union(self, more: Vec<crate::record::TextRef>) -> SortedKeys {
        if self.keys.is_empty() {
            return SortedKeys::new(more);
        }
        let more = SortedKeys::new(more).keys;
        let mut merged = Vec::with_capacity(self.keys.len() + more.len());
        let (mut a, mut b) = (
            self.keys.into_iter().peekable(),
            more.into_iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if { x.0 } < { y.0 } => a.next(),
                (Some(x), Some(y)) if { x.0 } == { y.0 } => {
                    b.next();
                    a.next()
                }
                (_, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        SortedKeys::new(merged)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether each of `keys`, given in ascending order, is in the set: one forward walk
    /// (galloping) instead of a search per key, so that looking millions of keys up reads the
    /// set once, in order, rather than missing the cache at every key.
    pub fn contains_ascending<'a>(
        &'a self,
        keys: impl IntoIterator<Item = crate::record::TextRef> + 'a,
    ) -> impl Iterator<Item = bool> + 'a {
        let mut at = 0usize;
        keys.into_iter().map(move |key| {
            let k = key.0;
            // Gallop to a bound past `k`, then search between.
            let mut step = 1usize;
            let mut hi = at;
            while hi < self.keys.len() && { self.keys[hi].0 } < k {
                at = hi + 1;
                hi = at + step;
                step *= 2;
            }
            let hi = hi.min(self.keys.len());
            at += self.keys[at..hi].partition_point(|x| { x.0 } < k);
            at < self.keys.len() && { self.keys[at].0 } == k
        })
    }

    pub fn contains(&self, key: crate::record::TextRef) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        let b = dir_bucket(key.0, self.bits);
        let bucket = &self.keys[self.dir[b] as usize..self.dir[b + 1] as usize];
        bucket.binary_search_by(|k| { k.0 }.cmp(&{ key.0 })).is_ok()
    }
}

#[cfg(test)]
mod sorted_keys_tests {
    use super::SortedKeys;
    use crate::record::TextRef;
    use proptest::prelude::*;

    proptest! {
        /// A union of sorted key sets holds exactly the keys of its parts.
        #[test]
        fn sorted_keys_hold_their_union(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u128>(), 0..200), 0..4),
            probes in proptest::collection::vec(any::<u128>(), 0..100),
        ) {
            let mut set = SortedKeys::default();
            let mut all = std::collections::BTreeSet::new();
            for p in parts {
                all.extend(p.iter().copied());
                set = set.union(p.into_iter().map(TextRef).collect());
            }
            prop_assert_eq!(set.len(), all.len());
            for k in all.iter().chain(&probes) {
                prop_assert_eq!(set.contains(TextRef(*k)), all.contains(k), "{}", k);
            }
            let mut asked: Vec<u128> = all.iter().chain(&probes).copied().collect();
            asked.sort_unstable();
            let walked: Vec<bool> = set.contains_ascending(asked.iter().map(|k| TextRef(*k))).collect();
            let expected: Vec<bool> = asked.iter().map(|k| all.contains(k)).collect();
            prop_assert_eq!(walked, expected);
        }
    }
}
