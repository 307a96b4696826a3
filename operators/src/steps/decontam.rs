//! `decontaminate`: drop every question that shares an n-gram with a benchmark item.
//!
//! ```text
//!  questions (qid, Question) --exchange(qid)--+
//!                                             +--> [n-gram matcher] --> matches (Match)
//!  benchmark items --------------broadcast----+           |
//!                                                         v
//!  questions --arrange--join(first match)--> rejected; questions minus those --> passed
//! ```
//!
//! **What it computes.** For the accumulated questions Q and benchmark items B, the set of
//! matches `(q, b, method)`:
//! - `ngram`: q's n-grams (words of the normalized text by default, `n = 13`; or characters)
//!   intersect b's, ignoring n-grams made only of numbers (number runs like "2 3 4 ... 14" are
//!   boilerplate, not contamination) and n-grams of a configured list of common phrases; with the
//!   number of shared n-grams and the first shared span;
//! - `fuzzy`: the Indel ratio of q and b (rapidfuzz's `fuzz.ratio`, on normalized text by
//!   default) is at least the threshold (the paper: 75), for the pairs the candidate rule
//!   admits. **The candidate rule** ([`FuzzyConfig::candidate`]): with `G(x)` the distinct word
//!   `candidate_ngram`-grams (default 3) of x's normalized text, a pair is a candidate when the
//!   lengths allow the threshold (`min/max >= t / (2 - t)`) and either text has no such n-gram
//!   or the question holds at least `min_shared_pct`% (default 10, at least one) of the item's
//!   `G`. Only candidates are verified, with a bit-parallel LCS. The index finds exactly the
//!   candidates, through a prefix filter: each item is listed under its `|G| - m + 1` n-grams
//!   that fewest items hold (`m` the n-grams it needs), and a question that shares `m` of
//!   them must share one of those. The rule is a heuristic (a ratio of 75 allows texts with
//!   no word n-gram in common): the batch reference applies it, and its recall against the
//!   pure brute force is measured on real data by the tests (100% there). Near-copies share
//!   most n-grams; two questions of one template share a few common ones ("what is the"),
//!   and those no longer cost an LCS each.
//!
//! A question with at least one match is rejected (`contaminated`, detail = its smallest
//! match), all others pass unchanged.
//!
//! **Incrementally.** A new or changed question is matched against the whole index. A benchmark
//! item that appears is matched against every live question (their texts are re-read from the
//! store, matched only against the new items); one that disappears retracts its matches. So a
//! benchmark added later retracts rows already published, and a question added later is checked
//! against every benchmark.
//!
//! **State, and why it is not an arrangement.** Each worker keeps: the benchmark index (every
//! item, broadcast: the paper's 12 benchmarks are ~18k items, a few MB), its share of live
//! `(question id, text ref)` pairs (~50 bytes each), and the matches it has emitted (rare).
//! Arranging every question n-gram instead would cost ~30 bytes x 60 n-grams per question:
//! 7 GB at the OpenThoughts3 pool size (4M questions), against ~200 MB here. The price is
//! that adding a benchmark re-reads the question texts once (linear: in file order, each
//! distinct text once, about 3 s per million questions per worker on the development machine);
//! adding questions costs only their own n-grams. At 10x the
//! questions the state grows 10x; at 10x the benchmarks only the (small) index grows.

use crate::counts::SortedCounts;
use crate::epoch::{accumulate, epoch_binary_then};
use crate::fuzzy::Pattern;
use crate::hash;
use crate::hash::{FastMap as HashMap, FastSet as HashSet};
use crate::record::{
    BenchItem, Detail, Epoch, Match, MatchMethod, Question, QuestionId, Reason, Rejection, StepId,
    Subject, TextRef,
};
use crate::steps::StepOutput;
use crate::text::TextLookup;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;

/// What an n-gram is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NgramUnit {
    /// Alphanumeric words of the normalized text.
    Word,
    /// Characters of the normalized text.
    Char,
    /// Token ids of a Hugging Face tokenizer (the paper's mode: it used the teacher's tokenizer).
    Token(Tokens),
}

/// Token n-gram settings: the tokenizer and what it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub tokenizer: crate::tokenize::TokenizerRef,
    /// Tokenize the normalized text (NFKC, lowercase, collapsed whitespace; the default) or the
    /// raw text as the paper did (then case and whitespace count).
    pub normalized: bool,
}

impl Tokens {
    fn input<'a>(&self, raw: &'a str, normalized: &'a str) -> &'a str {
        if self.normalized {
            normalized
        } else {
            raw
        }
    }
}

/// Settings of the n-gram matcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NgramConfig {
    pub n: usize,
    pub unit: NgramUnit,
}

impl Default for NgramConfig {
    fn default() -> Self {
        NgramConfig {
            n: 13,
            unit: NgramUnit::Word,
        }
    }
}

impl NgramConfig {
    /// The n-gram hashes of a raw text, in text order.
    pub fn grams(&self, text: &str) -> Vec<u64> {
        match &self.unit {
            NgramUnit::Word => hash::word_ngrams(text, self.n),
            NgramUnit::Char => hash::char_ngrams(text, self.n),
            NgramUnit::Token(t) => {
                let normalized = hash::normalize(text);
                let ids = t.tokenizer.tokens(t.input(text, &normalized)).ids;
                hash::ngrams_of_hashes(&ids, self.n)
            }
        }
    }

    /// The n-grams of a text that count as evidence: `(position, hash)`, without n-grams made
    /// only of numbers (with `skip_numeric`) and without the `ignored` ones.
    pub fn evidence(&self, text: &str, skip_numeric: bool, ignored: &[u64]) -> Vec<(usize, u64)> {
        if let NgramUnit::Token(_) = &self.unit {
            return self.evidence_prepared(&Prepared::new(text), text, skip_numeric, ignored);
        }
        let grams = self.grams(text);
        let numeric: Vec<bool> =
            if skip_numeric && self.unit == NgramUnit::Word && !grams.is_empty() {
                let normalized = hash::normalize(text);
                let words: Vec<bool> = hash::words(&normalized)
                    .map(|w| w.chars().all(|c| c.is_numeric()))
                    .collect();
                words
                    .windows(self.n)
                    .map(|w| w.iter().all(|x| *x))
                    .collect()
            } else {
                vec![false; grams.len()]
            };
        grams
            .into_iter()
            .enumerate()
            .filter(|(i, g)| {
                !numeric.get(*i).copied().unwrap_or(false) && ignored.binary_search(g).is_err()
            })
            .collect()
    }

    /// [`NgramConfig::evidence_prepared`] for word n-grams, of the windows starting where
    /// `viable` says (the others are not hashed).
    fn word_evidence_where(
        &self,
        p: &Prepared,
        skip_numeric: bool,
        ignored: &[u64],
        viable: impl Fn(usize) -> bool,
    ) -> Vec<(usize, u64)> {
        let n = self.n;
        if n == 0 || p.word_hashes.len() < n {
            return Vec::new();
        }
        (0..=p.word_hashes.len() - n)
            .filter(|i| viable(*i))
            .filter(|i| !(skip_numeric && p.word_numeric[*i..*i + n].iter().all(|x| *x)))
            .map(|i| (i, hash::ngram_of_window(&p.word_hashes[i..i + n])))
            .filter(|(_, g)| ignored.binary_search(g).is_err())
            .collect()
    }

    /// The normalized text of the n-gram at `position`.
    pub fn span(&self, text: &str, position: usize) -> String {
        match &self.unit {
            NgramUnit::Word => hash::word_ngram_span(text, self.n, position),
            NgramUnit::Char => hash::normalize(text)
                .chars()
                .skip(position)
                .take(self.n)
                .collect(),
            NgramUnit::Token(t) => {
                let normalized = hash::normalize(text);
                let input = t.input(text, &normalized);
                let tokens = t.tokenizer.tokens(input);
                match (
                    tokens.offsets.get(position),
                    tokens.offsets.get(position + self.n - 1),
                ) {
                    (Some(first), Some(last)) => input
                        .get(first.0..last.1)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    _ => String::new(),
                }
            }
        }
    }
}

/// A text's word hashes (of its normalized words), and its normalized text when asked for:
/// what both matchers read.
#[derive(Default)]
pub struct Prepared {
    /// Empty unless made with `normalized` (word n-grams never need it).
    pub normalized: String,
    pub word_hashes: Vec<u64>,
    pub word_numeric: Vec<bool>,
    /// The normalized text's length in chars.
    pub normalized_len: usize,
}

impl Prepared {
    pub fn new(text: &str) -> Prepared {
        let mut p = Prepared::default();
        p.fill(text, true);
        p
    }

    /// Prepares `text` in these buffers (no allocation once they are large enough); the
    /// normalized text is made only with `normalized`.
    pub fn fill(&mut self, text: &str, normalized: bool) {
        self.word_hashes.clear();
        self.word_numeric.clear();
        self.normalized.clear();
        let (hashes, numeric) = (&mut self.word_hashes, &mut self.word_numeric);
        if normalized {
            self.normalized = hash::normalize(text);
            hash::for_each_word(&self.normalized, |w| {
                hashes.push(hash::word_hash(w));
                numeric.push(w.chars().all(|c| c.is_numeric()));
            });
            self.normalized_len = self.normalized.chars().count();
        } else {
            self.normalized_len = hash::for_each_word_hash(text, |h, n| {
                hashes.push(h);
                numeric.push(n);
            });
        }
    }
}

/// Buffers reused from one matched text to the next.
#[derive(Default)]
pub struct MatchScratch {
    prepared: Prepared,
    runs: Vec<u32>,
    gram_runs: Vec<u32>,
    grams: Vec<u64>,
    candidates: Vec<u32>,
}

impl NgramConfig {
    /// As [`NgramConfig::evidence`], from a prepared text.
    pub fn evidence_prepared(
        &self,
        p: &Prepared,
        raw: &str,
        skip_numeric: bool,
        ignored: &[u64],
    ) -> Vec<(usize, u64)> {
        let mut token_numeric = Vec::new();
        let grams = match &self.unit {
            NgramUnit::Word => return self.word_evidence_where(p, skip_numeric, ignored, |_| true),
            NgramUnit::Char => {
                let chars: Vec<u64> = p.normalized.chars().map(|c| c as u64).collect();
                hash::ngrams_of_hashes(&chars, self.n)
            }
            NgramUnit::Token(t) => {
                let tokens = t.tokenizer.tokens(t.input(raw, &p.normalized));
                token_numeric = tokens.numeric;
                hash::ngrams_of_hashes(&tokens.ids, self.n)
            }
        };
        let numeric = |i: usize| {
            skip_numeric
                && matches!(self.unit, NgramUnit::Token(_))
                && token_numeric[i..i + self.n].iter().all(|x| *x)
        };
        grams
            .into_iter()
            .enumerate()
            .filter(|(i, g)| !numeric(*i) && ignored.binary_search(g).is_err())
            .collect()
    }
}

/// Settings of the fuzzy (Indel ratio) matcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuzzyConfig {
    /// The ratio threshold in hundredths of a percent (7500 = 75.00).
    pub threshold_bp: u32,
    /// Word n-gram size of the candidate index.
    pub candidate_ngram: usize,
    /// Compare normalized texts (NFKC, lowercase, collapsed whitespace) rather than raw ones.
    pub normalize: bool,
    /// The share of an item's candidate n-grams (percent) a question must hold to be compared
    /// with it (at least one n-gram; 0 = any one).
    pub min_shared_pct: u32,
}

impl FuzzyConfig {
    pub fn threshold(&self) -> f64 {
        self.threshold_bp as f64 / 100.0
    }

    fn prepare(&self, text: &str) -> Vec<char> {
        if self.normalize {
            hash::normalize(text).chars().collect()
        } else {
            text.chars().collect()
        }
    }

    /// The distinct candidate n-grams of a text (`G` of the candidate rule), sorted.
    pub fn candidate_grams(&self, text: &str) -> Vec<u64> {
        let mut g = hash::word_ngrams(text, self.candidate_ngram);
        g.sort_unstable();
        g.dedup();
        g
    }

    /// How many of an item's `item_grams` candidate n-grams a question must share with it.
    pub fn needed(&self, item_grams: usize) -> usize {
        (item_grams * self.min_shared_pct as usize)
            .div_ceil(100)
            .clamp(1, item_grams.max(1))
    }

    /// The candidate rule, on the distinct sorted candidate n-grams of a question and an item
    /// and their compared lengths in chars.
    pub fn candidate(&self, q_grams: &[u64], q_len: usize, i_grams: &[u64], i_len: usize) -> bool {
        crate::fuzzy::lengths_allow(i_len, q_len, self.threshold())
            && (q_grams.is_empty()
                || i_grams.is_empty()
                || shared_count(q_grams, i_grams) >= self.needed(i_grams.len()))
    }

    fn prepare_from(&self, p: &Prepared, raw: &str) -> Vec<char> {
        if self.normalize && !p.normalized.is_empty() {
            p.normalized.chars().collect()
        } else {
            self.prepare(raw)
        }
    }
}

/// The whole decontamination configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecontamConfig {
    /// The n-gram method; `None` turns it off.
    pub ngram: Option<NgramConfig>,
    /// Ignore n-grams made only of numbers.
    pub skip_numeric: bool,
    /// n-gram hashes never to count (common phrases), sorted.
    pub ignored: Vec<u64>,
    /// Per benchmark, n-gram hashes that never count against its items (its own "too common"
    /// list: template phrases that the benchmark shares with many training questions), sorted.
    pub ignored_by_bench: BTreeMap<String, Vec<u64>>,
    /// The fuzzy method; `None` turns it off.
    pub fuzzy: Option<FuzzyConfig>,
}

impl DecontamConfig {
    /// The n-gram evidence of a benchmark item: its n-grams less the global and its benchmark's
    /// ignored ones.
    fn item_evidence(&self, ng: &NgramConfig, item: &BenchItem) -> Vec<(usize, u64)> {
        let mut ev = ng.evidence(&item.text, self.skip_numeric, &self.ignored);
        if let Some(own) = self.ignored_by_bench.get(&item.bench) {
            ev.retain(|(_, g)| own.binary_search(g).is_err());
        }
        ev
    }

    /// Only the n-gram method, every n-gram counting.
    pub fn ngram_only(ngram: NgramConfig) -> Self {
        DecontamConfig {
            ngram: Some(ngram),
            skip_numeric: false,
            ignored: Vec::new(),
            ignored_by_bench: BTreeMap::new(),
            fuzzy: None,
        }
    }
}

/// How many values two sorted, distinct lists share.
fn shared_count(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

struct FuzzyIndex {
    /// A one-hash Bloom filter of `by_gram`'s keys: most question n-grams are in no item.
    gram_bits: GramBits,
    /// A one-hash Bloom filter of every item's candidate n-grams (listed or not).
    all_bits: GramBits,
    chars: Vec<Vec<char>>,
    patterns: Vec<Pattern>,
    /// Per item, its distinct candidate n-grams (sorted).
    grams: Vec<Vec<u64>>,
    /// The prefix-filter lists: per n-gram, the items it is among the `|G| - m + 1` rarest
    /// n-grams of (rarest: held by the fewest items, ties by hash).
    by_gram: HashMap<u64, Vec<u32>>,
    /// Items too short for a candidate n-gram (always candidates).
    short: Vec<u32>,
    /// (length in chars, item) of every item, sorted: for questions too short for a candidate
    /// n-gram, and to tell whether any item's length allows a text's.
    by_len: Vec<(usize, u32)>,
}

impl FuzzyIndex {
    /// Whether some item's length allows `threshold` against a text of `q_len` chars (see
    /// [`crate::fuzzy::lengths_allow`]); when none does, no item can match the text.
    fn some_length_allows(&self, q_len: usize, threshold: f64) -> bool {
        let (lo, hi) = crate::fuzzy::length_range(q_len, threshold);
        // One past each end of the range, checked exactly (the range is computed in floats).
        let start = self
            .by_len
            .partition_point(|(l, _)| l.saturating_add(1) < lo);
        self.by_len[start..]
            .iter()
            .take_while(|(l, _)| *l <= hi.saturating_add(1))
            .any(|(l, _)| crate::fuzzy::lengths_allow(*l, q_len, threshold))
    }
}

/// A benchmark index: every live item, per n-gram hash the items that contain it, and the
/// fuzzy candidate index.
#[derive(Default)]
pub struct BenchmarkIndex {
    items: Vec<BenchItem>,
    grams: HashMap<u64, Vec<u32>>,
    /// A one-hash Bloom filter of `grams`' keys: most question n-grams are in no item, and the
    /// filter (a few hundred KB) answers that without a probe of the map (tens of MB).
    gram_bits: GramBits,
    /// A one-hash Bloom filter of every item's word hashes (normalized words): a word n-gram
    /// that an item holds is made of such words, so a question's windows with another word
    /// are not even hashed (a few benchmark items share few long runs with a question).
    words: GramBits,
    fuzzy: Option<FuzzyIndex>,
}

/// A set of 64-bit hashes as a bit array (a Bloom filter with one hash: the hashes are xxh3
/// outputs, uniform already): `false` means surely absent.
#[derive(Default)]
struct GramBits {
    words: Vec<u64>,
    mask: u64,
}

impl GramBits {
    /// About 16 bits per key (a false positive rate near 6%).
    fn new<'a>(keys: impl ExactSizeIterator<Item = &'a u64>) -> GramBits {
        let bits = (keys.len() * 16).next_power_of_two().max(1 << 12);
        let mut set = GramBits {
            words: vec![0; bits / 64],
            mask: bits as u64 - 1,
        };
        for k in keys {
            let b = k & set.mask;
            set.words[(b >> 6) as usize] |= 1 << (b & 63);
        }
        set
    }

    #[inline]
    fn may_contain(&self, key: u64) -> bool {
        let b = key & self.mask;
        self.words[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
}

fn excerpt(text: &str, n: usize) -> String {
    let t: String = text.chars().take(n).collect();
    if text.chars().count() > n {
        format!("{t}...")
    } else {
        t
    }
}

impl BenchmarkIndex {
    /// Indexes `items` (each once, whatever its multiplicity).
    pub fn build<'a>(cfg: &DecontamConfig, items: impl IntoIterator<Item = &'a BenchItem>) -> Self {
        let mut index = BenchmarkIndex::default();
        let mut fuzzy = cfg.fuzzy.as_ref().map(|_| FuzzyIndex {
            gram_bits: GramBits::default(),
            all_bits: GramBits::default(),
            chars: Vec::new(),
            patterns: Vec::new(),
            grams: Vec::new(),
            by_gram: HashMap::default(),
            short: Vec::new(),
            by_len: Vec::new(),
        });
        let mut words: Vec<u64> = Vec::new();
        for item in items {
            let at = index.items.len() as u32;
            words.extend(Prepared::new(&item.text).word_hashes);
            if let Some(ng) = &cfg.ngram {
                let mut seen = HashSet::default();
                for (_, g) in cfg.item_evidence(ng, item) {
                    if seen.insert(g) {
                        index.grams.entry(g).or_default().push(at);
                    }
                }
            }
            if let (Some(f), Some(fc)) = (fuzzy.as_mut(), cfg.fuzzy.as_ref()) {
                let chars = fc.prepare(&item.text);
                let grams = fc.candidate_grams(&item.text);
                if grams.is_empty() {
                    f.short.push(at);
                }
                f.grams.push(grams);
                f.by_len.push((chars.len(), at));
                f.patterns.push(Pattern::new(&chars));
                f.chars.push(chars);
            }
            index.items.push(item.clone());
        }
        if let (Some(f), Some(fc)) = (fuzzy.as_mut(), cfg.fuzzy.as_ref()) {
            f.by_len.sort_unstable();
            // The prefix filter: a question holding `m` of an item's n-grams holds one of its
            // `|G| - m + 1` first ones in any fixed order; rarest first keeps the lists short
            // (common n-grams such as "what is the" come last and are rarely listed).
            let mut held: HashMap<u64, u32> = HashMap::default();
            for grams in &f.grams {
                for g in grams {
                    *held.entry(*g).or_default() += 1;
                }
            }
            let mut order: Vec<u64> = Vec::new();
            for (at, grams) in f.grams.iter().enumerate() {
                if grams.is_empty() {
                    continue;
                }
                order.clear();
                order.extend_from_slice(grams);
                order.sort_unstable_by_key(|g| (held[g], *g));
                let prefix = grams.len() - fc.needed(grams.len()) + 1;
                for g in &order[..prefix] {
                    f.by_gram.entry(*g).or_default().push(at as u32);
                }
            }
            f.gram_bits = GramBits::new(f.by_gram.keys());
            f.all_bits = GramBits::new(held.keys());
        }
        index.gram_bits = GramBits::new(index.grams.keys());
        words.sort_unstable();
        words.dedup();
        index.words = GramBits::new(words.iter());
        index.fuzzy = fuzzy;
        index
    }

    /// Per word of a prepared question, how many words from it on are item words (by
    /// [`BenchmarkIndex::words`]): a word n-gram starting there can be an item's only if
    /// that run is at least n long.
    fn item_word_runs(&self, p: &Prepared, runs: &mut Vec<u32>) {
        runs.clear();
        runs.resize(p.word_hashes.len() + 1, 0);
        for (i, w) in p.word_hashes.iter().enumerate().rev() {
            // Branch-free: about half of the words of a text are item words.
            runs[i] = (runs[i + 1] + 1) * self.words.may_contain(*w) as u32;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The matches of one question text against this index.
    pub fn matches(&self, cfg: &DecontamConfig, question: QuestionId, text: &str) -> Vec<Match> {
        self.matches_with(cfg, question, text, &mut MatchScratch::default())
    }

    /// [`BenchmarkIndex::matches`], with buffers kept from one text to the next.
    pub fn matches_with(
        &self,
        cfg: &DecontamConfig,
        question: QuestionId,
        text: &str,
        scratch: &mut MatchScratch,
    ) -> Vec<Match> {
        if self.items.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let MatchScratch {
            prepared,
            runs,
            gram_runs,
            grams,
            candidates,
        } = scratch;
        let word_unit = matches!(cfg.ngram.as_ref().map(|ng| &ng.unit), Some(NgramUnit::Word));
        prepared.fill(text, cfg.ngram.is_some() && !word_unit);
        let prepared = &*prepared;
        let words = prepared.word_hashes.len();
        if word_unit || cfg.fuzzy.is_some() {
            self.item_word_runs(prepared, runs);
        }
        // The question's candidate n-grams (fuzzy) that some item holds (windows of item words
        // only are hashed), and per window how many such n-grams start there in a row: a word
        // n-gram of an item (n at least the candidate size) is made of the item's candidate
        // n-grams, so only a window covered by such a run is hashed for the n-gram evidence.
        let cn = cfg.fuzzy.as_ref().map_or(0, |fc| fc.candidate_ngram);
        let by_grams = self.fuzzy.is_some() && cn > 0 && words >= cn;
        // The compared text's length in chars (fuzzy), and whether any item's length allows
        // the threshold against it: most questions are far shorter or longer than every item,
        // and then no fuzzy match is possible and their candidate n-grams are not needed for it.
        let q_len = match &cfg.fuzzy {
            Some(fc) if fc.normalize => prepared.normalized_len,
            Some(_) => text.chars().count(),
            None => 0,
        };
        let fuzzy_possible = match (&self.fuzzy, &cfg.fuzzy) {
            (Some(f), Some(fc)) => f.some_length_allows(q_len, fc.threshold()),
            _ => false,
        };
        // The word n-gram size of the evidence, when windows are selected by candidate n-grams.
        let evidence_n = match &cfg.ngram {
            Some(ng) if word_unit && cn <= ng.n => Some(ng.n),
            _ => None,
        };
        grams.clear();
        gram_runs.clear();
        let mut longest_gram_run = 0;
        if let (Some(f), true) = (&self.fuzzy, by_grams) {
            if fuzzy_possible || evidence_n.is_some() {
                gram_runs.resize(words - cn + 2, 0);
                // A window's candidate n-gram is hashed when the fuzzy part may use it, or
                // when it lies in a window of `n` item words (an evidence n-gram is made of
                // the candidate n-grams starting at its first `n - cn + 1` words, so only
                // those are read).
                let reach = evidence_n.map_or(0, |n| n - cn);
                let mut last_start: Option<usize> = None;
                for i in 0..=words - cn {
                    if evidence_n.is_some_and(|n| runs[i] as usize >= n) {
                        last_start = Some(i);
                    }
                    let wanted = runs[i] as usize >= cn
                        && (fuzzy_possible || last_start.is_some_and(|k| i <= k + reach));
                    if wanted {
                        let g = hash::ngram_of_window(&prepared.word_hashes[i..i + cn]);
                        if f.all_bits.may_contain(g) {
                            if fuzzy_possible {
                                grams.push(g);
                            }
                            gram_runs[i] = 1;
                        }
                    }
                }
                for i in (0..=words - cn).rev() {
                    if gram_runs[i] != 0 {
                        gram_runs[i] = gram_runs[i + 1] + 1;
                        longest_gram_run = longest_gram_run.max(gram_runs[i] as usize);
                    }
                }
            }
        }
        if let Some(ng) = &cfg.ngram {
            // item -> (first position, distinct shared grams)
            let mut hits: BTreeMap<u32, (usize, HashSet<u64>)> = BTreeMap::new();
            let evidence = match &ng.unit {
                // Only windows of item words can be an item's n-gram (the others are not hashed).
                NgramUnit::Word if by_grams && cn <= ng.n && longest_gram_run <= ng.n - cn => {
                    Vec::new()
                }
                NgramUnit::Word if by_grams && cn <= ng.n => {
                    ng.word_evidence_where(prepared, cfg.skip_numeric, &cfg.ignored, |i| {
                        gram_runs[i] as usize > ng.n - cn
                    })
                }
                NgramUnit::Word => {
                    ng.word_evidence_where(prepared, cfg.skip_numeric, &cfg.ignored, |i| {
                        runs[i] as usize >= ng.n
                    })
                }
                _ => ng.evidence_prepared(prepared, text, cfg.skip_numeric, &cfg.ignored),
            };
            for (pos, g) in evidence {
                if !self.gram_bits.may_contain(g) {
                    continue;
                }
                if let Some(items) = self.grams.get(&g) {
                    for &i in items {
                        hits.entry(i)
                            .or_insert_with(|| (pos, HashSet::default()))
                            .1
                            .insert(g);
                    }
                }
            }
            for (i, (pos, shared)) in hits {
                let item = &self.items[i as usize];
                out.push(Match {
                    question,
                    bench: item.bench.clone(),
                    item: item.item.clone(),
                    method: MatchMethod::Ngram,
                    score: shared.len() as u32,
                    span: ng.span(text, pos),
                });
            }
        }
        if let (Some(f), Some(fc), true) = (&self.fuzzy, &cfg.fuzzy, fuzzy_possible) {
            let threshold = fc.threshold();
            // The text itself is made only for a candidate whose length allows the threshold.
            // `grams` holds the question's candidate n-grams that some item holds: the others
            // are in no item's `G`, so neither select nor count. (Sorted and deduplicated only
            // when a candidate needs the count: most questions have none.) `G(q)` is empty
            // when the question has fewer words than the n-gram size.
            let has_grams = by_grams;
            let mut sorted = false;
            candidates.clear();
            candidates.extend_from_slice(&f.short);
            if !has_grams {
                let (lo, hi) = crate::fuzzy::length_range(q_len, threshold);
                let start = f.by_len.partition_point(|(l, _)| *l < lo);
                for (l, i) in &f.by_len[start..] {
                    if *l > hi {
                        break;
                    }
                    candidates.push(*i);
                }
            } else {
                for g in grams.iter() {
                    if !f.gram_bits.may_contain(*g) {
                        continue;
                    }
                    if let Some(items) = f.by_gram.get(g) {
                        candidates.extend(items.iter().copied());
                    }
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
            let mut q: Option<Vec<char>> = None;
            for &i in candidates.iter() {
                let chars = &f.chars[i as usize];
                // The candidate rule ([`FuzzyConfig::candidate`]), on the n-grams that count.
                if !crate::fuzzy::lengths_allow(chars.len(), q_len, threshold) {
                    continue;
                }
                let i_grams = &f.grams[i as usize];
                if has_grams && !i_grams.is_empty() {
                    if !sorted {
                        grams.sort_unstable();
                        grams.dedup();
                        sorted = true;
                    }
                    if shared_count(grams, i_grams) < fc.needed(i_grams.len()) {
                        continue;
                    }
                }
                let q = q.get_or_insert_with(|| fc.prepare_from(prepared, text));
                if let Some(r) = f.patterns[i as usize].ratio_at_least(q, threshold) {
                    let item = &self.items[i as usize];
                    out.push(Match {
                        question,
                        bench: item.bench.clone(),
                        item: item.item.clone(),
                        method: MatchMethod::Fuzzy,
                        score: (r * 100.0).round() as u32,
                        span: excerpt(&q.iter().collect::<String>(), 120),
                    });
                }
            }
        }
        out
    }
}

/// Bump when what [`BenchmarkIndex::matches`] returns for a text can change: it is part of
/// every memo digest, so that verdicts of an older matcher are never reused.
const MEMO_VERSION: u32 = 2;

/// One decontamination operator's verdicts under one benchmark index, for the next run: which
/// texts are clean and what the others matched (question ids zeroed: a verdict is a function
/// of the text and the index alone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoTable {
    /// [`index_digest`] of the configuration and live items the verdicts were computed under.
    pub digest: u128,
    pub clean: Vec<TextRef>,
    pub found: Vec<(TextRef, Vec<Match>)>,
}

#[derive(Default)]
struct MemoLookup {
    clean: crate::hash::SortedKeys,
    found: HashMap<TextRef, Vec<Match>>,
}

/// The verdicts of earlier runs, by index digest: loaded once per process and shared by its
/// workers, so that a restart's replay looks verdicts up instead of matching every question
/// again. A verdict is reused only under the exact configuration and benchmark items (and
/// matcher version) it was computed with.
#[derive(Default)]
pub struct DecontamMemo {
    tables: HashMap<u128, MemoLookup>,
    /// Verdicts reused so far (by every worker sharing it).
    reused: std::sync::atomic::AtomicU64,
}

impl DecontamMemo {
    /// Adds a table (tables of one digest, from several workers, merge).
    pub fn add(&mut self, table: MemoTable) {
        let t = self.tables.entry(table.digest).or_default();
        t.clean = std::mem::take(&mut t.clean).union(table.clean);
        t.found.extend(table.found);
    }

    /// How many verdicts it holds.
    pub fn len(&self) -> usize {
        self.tables
            .values()
            .map(|t| t.clean.len() + t.found.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many verdicts have been reused (looked up instead of computed) so far.
    pub fn reused(&self) -> u64 {
        self.reused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands each pair, with the remembered matches of its text under `digest` (the question
    /// filled in; `None` for a text not seen under that index), to `f`. The pairs come in
    /// ascending text order, so that the clean texts are found by one walk of the memo (a
    /// replay's first epoch asks for millions).
    fn lookup_ascending(
        &self,
        digest: u128,
        pairs: impl Iterator<Item = (QuestionId, TextRef)> + Clone,
        mut f: impl FnMut((QuestionId, TextRef), Option<Vec<Match>>),
    ) {
        let Some(t) = self.tables.get(&digest) else {
            pairs.for_each(|p| f(p, None));
            return;
        };
        let clean = t.clean.contains_ascending(pairs.clone().map(|(_, t)| t));
        let mut reused = 0u64;
        for ((question, text), is_clean) in pairs.zip(clean) {
            let found = if is_clean {
                Some(Vec::new())
            } else {
                t.found.get(&text).map(|list| {
                    list.iter()
                        .map(|m| Match {
                            question,
                            ..m.clone()
                        })
                        .collect()
                })
            };
            reused += found.is_some() as u64;
            f((question, text), found);
        }
        self.reused
            .fetch_add(reused, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a decontamination operator remembers across runs: the verdicts it may reuse, and where
/// it hands its own when its inputs end (a clean stop; a crash leaves the earlier ones).
pub struct MemoHooks {
    pub previous: Arc<DecontamMemo>,
    pub save: Box<dyn FnOnce(MemoTable)>,
}

/// The digest a memo's verdicts are valid under: the matcher version, the configuration and
/// every live benchmark item (in order).
pub fn index_digest<'a>(
    cfg: &DecontamConfig,
    items: impl IntoIterator<Item = &'a BenchItem>,
) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&MEMO_VERSION.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let field = |h: &mut xxhash_rust::xxh3::Xxh3, s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field(&mut h, &format!("{cfg:?}"));
    for item in items {
        field(&mut h, &item.bench);
        field(&mut h, &item.item);
        field(&mut h, &item.text);
    }
    h.digest128()
}

/// Finds the n-gram matches between questions and benchmark items, incrementally.
///
/// `questions` are `(id, text)` pairs (a question's id and where its text is stored). `texts`
/// must hold the text of every question that arrives (the runtime stores it before the
/// question enters the dataflow).
///
/// With `memo`, a question whose text has a verdict under the current index (from an earlier
/// run) takes it instead of being matched, and when the inputs end the operator hands its
/// verdicts to `memo.save`.
pub fn ngram_matches<'s>(
    pairs: VecCollection<'s, Epoch, (QuestionId, TextRef)>,
    benchmarks: VecCollection<'s, Epoch, BenchItem>,
    cfg: DecontamConfig,
    texts: Arc<dyn TextLookup>,
    memo: Option<MemoHooks>,
) -> VecCollection<'s, Epoch, Match> {
    let broadcast = benchmarks.inner.broadcast();
    let (previous, save) = match memo {
        Some(m) => (Some(m.previous), Some(m.save)),
        None => (None, None),
    };
    let matcher = Rc::new(RefCell::new(Matcher {
        digest: index_digest(&cfg, std::iter::empty()),
        cfg,
        texts,
        live: SortedCounts::default(),
        items: BTreeMap::new(),
        index: None,
        emitted: HashMap::default(),
        memo: previous,
    }));
    let at_end = Rc::clone(&matcher);
    epoch_binary_then(
        pairs,
        differential_dataflow::AsCollection::as_collection(broadcast),
        Exchange::new(|u: &((QuestionId, TextRef), Epoch, isize)| (u.0).0 .0),
        Pipeline,
        "DecontaminateNgram",
        move |_epoch, q_updates, b_updates, out| {
            matcher.borrow_mut().epoch(q_updates, b_updates, out)
        },
        move || {
            if let Some(save) = save {
                save(at_end.borrow().memo_table());
            }
        },
    )
}

/// A (question, text) pair ordered by text, then question: the order the operator keeps its
/// pairs in (the memo is walked, and texts are read, in text order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
struct ByText((QuestionId, TextRef));

impl ByText {
    fn order(&self) -> (u128, QuestionId) {
        ({ self.0 .1 .0 }, self.0 .0)
    }
}

impl Ord for ByText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

impl PartialOrd for ByText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct Matcher {
    cfg: DecontamConfig,
    texts: Arc<dyn TextLookup>,
    /// [`index_digest`] of the configuration and the live items.
    digest: u128,
    /// Verdicts of earlier runs.
    memo: Option<Arc<DecontamMemo>>,
    /// Live (question, text) pairs and their multiplicities: at a replay's first epoch, 2M
    /// per worker at the paper's scale, kept as they came (a hash table of them took 100 MB
    /// per worker of fresh pages and a second of the replay).
    live: SortedCounts<ByText>,
    /// Live benchmark items.
    items: BTreeMap<BenchItem, isize>,
    /// The index of the live items, once built.
    index: Option<BenchmarkIndex>,
    /// The matches currently in the output, per live pair (only non-empty lists).
    emitted: HashMap<(QuestionId, TextRef), Vec<Match>>,
}

impl Matcher {
    /// The matches of questions' texts against `index`, each text read once (in the store's
    /// order) however many questions share it; calls `emit(pair, matches)` for every pair with
    /// at least one match.
    fn match_texts(
        texts: &dyn TextLookup,
        cfg: &DecontamConfig,
        index: &BenchmarkIndex,
        mut pairs: Vec<(QuestionId, TextRef)>,
        mut emit: impl FnMut((QuestionId, TextRef), Vec<Match>),
    ) {
        pairs.sort_unstable_by_key(|(q, t)| (*t, *q));
        let mut keys: Vec<TextRef> = pairs.iter().map(|(_, t)| *t).collect();
        keys.dedup();
        // The questions of keys[i]: pairs[starts[i]..starts[i + 1]].
        let mut starts: Vec<usize> = Vec::with_capacity(keys.len() + 1);
        for (at, (_, t)) in pairs.iter().enumerate() {
            if at == 0 || pairs[at - 1].1 != *t {
                starts.push(at);
            }
        }
        starts.push(pairs.len());
        let mut scratch = MatchScratch::default();
        let found = texts.visit_many(&keys, &mut |i, text| {
            let group = &pairs[starts[i]..starts[i + 1]];
            let matches = index.matches_with(cfg, group[0].0, text, &mut scratch);
            if matches.is_empty() {
                return;
            }
            for &(qid, tref) in group {
                let mine = matches
                    .iter()
                    .map(|m| Match {
                        question: qid,
                        ..m.clone()
                    })
                    .collect();
                emit((qid, tref), mine);
            }
        });
        assert_eq!(
            found,
            keys.len(),
            "decontaminate: question text missing from the store (stored before ingest)"
        );
    }

    /// Builds the index of the live items if it is not built yet.
    fn ensure_index(&mut self) {
        if self.index.is_none() {
            let live = self.items.iter().filter(|(_, c)| **c > 0).map(|(i, _)| i);
            self.index = Some(BenchmarkIndex::build(&self.cfg, live));
        }
    }

    /// The verdicts of every live question, for the next run.
    fn memo_table(&self) -> MemoTable {
        let mut table = MemoTable {
            digest: self.digest,
            ..MemoTable::default()
        };
        // Texts shared by several questions are listed once: sorted and deduplicated rather
        // than through a set of every text (at the paper's scale this runs while the sink
        // still works, and a set of 2M texts per worker took 70 MB).
        for (&ByText(pair @ (_, tref)), count) in self.live.iter() {
            if count <= 0 {
                continue;
            }
            match self.emitted.get(&pair) {
                None => table.clean.push(tref),
                Some(list) => table.found.push((
                    tref,
                    list.iter()
                        .map(|m| Match {
                            question: QuestionId(0),
                            ..m.clone()
                        })
                        .collect(),
                )),
            }
        }
        table.clean.sort_unstable();
        table.clean.dedup();
        table.found.sort_unstable_by_key(|a| a.0);
        table.found.dedup_by(|a, b| a.0 == b.0);
        table
    }

    fn epoch(
        &mut self,
        q_updates: Vec<((QuestionId, TextRef), isize)>,
        b_updates: Vec<(BenchItem, isize)>,
        out: &mut Vec<(Match, isize)>,
    ) {
        // 1. Benchmarks: which items appeared and disappeared.
        let changed_items = accumulate(&mut self.items, b_updates);
        let added: Vec<BenchItem> = changed_items
            .iter()
            .filter(|(_, b, a)| *b <= 0 && *a > 0)
            .map(|(i, _, _)| i.clone())
            .collect();
        let removed: HashSet<(String, String)> = changed_items
            .iter()
            .filter(|(_, b, a)| *b > 0 && *a <= 0)
            .map(|(i, _, _)| (i.bench.clone(), i.item.clone()))
            .collect();
        if !changed_items.is_empty() {
            // Built when a question first needs it: a replay served by the memo needs none.
            self.index = None;
            self.digest = index_digest(
                &self.cfg,
                self.items.iter().filter(|(_, c)| **c > 0).map(|(i, _)| i),
            );
        }

        // 2. Questions: which (question, text) pairs appeared or disappeared, in text order (a
        // sorted vector: at a replay's first epoch this is every live question, millions).
        // With no pair live before, the epoch's pairs become the live set as they are, and
        // every one of them that is live appeared: no copy of them, no table of them.
        // (Wrapped in place: the same layout, so the vector is reused.)
        let mut q_updates: Vec<(ByText, isize)> =
            q_updates.into_iter().map(|(p, r)| (ByText(p), r)).collect();
        differential_dataflow::consolidation::consolidate(&mut q_updates);
        let all_new = self.live.is_empty();
        let changed_pairs: Vec<(ByText, isize)> = if all_new {
            self.live = SortedCounts::from_sorted(q_updates);
            Vec::new()
        } else {
            let mut changed = Vec::new();
            for (pair, r) in q_updates {
                let (before, after) = self.live.add(pair, r);
                if (before > 0) != (after > 0) {
                    changed.push((pair, after));
                }
            }
            changed
        };
        let is_changed = |pair: &(QuestionId, TextRef)| {
            all_new
                || changed_pairs
                    .binary_search_by(|(p, _)| p.cmp(&ByText(*pair)))
                    .is_ok()
        };

        // 3. Retract matches of items that disappeared (questions that changed are redone below).
        if !removed.is_empty() {
            for (pair, list) in self.emitted.iter_mut() {
                if is_changed(pair) {
                    continue;
                }
                list.retain(|m| {
                    let gone = removed.contains(&(m.bench.clone(), m.item.clone()));
                    if gone {
                        out.push((m.clone(), -1));
                    }
                    !gone
                });
            }
            self.emitted.retain(|_, l| !l.is_empty());
        }

        // 4. Match every unchanged live question against the items that appeared (none when
        // every live pair changed, as at a first epoch).
        let changed_live = changed_pairs.iter().filter(|(_, after)| *after > 0).count();
        let keys: Vec<(QuestionId, TextRef)> =
            if added.is_empty() || all_new || self.live.len() == changed_live {
                Vec::new()
            } else {
                self.live
                    .iter()
                    .filter(|(p, c)| *c > 0 && !is_changed(&p.0))
                    .map(|(p, _)| p.0)
                    .collect()
            };
        // (In a first epoch every live question is new, and step 5 matches it.)
        if !keys.is_empty() {
            let delta = BenchmarkIndex::build(&self.cfg, added.iter());
            let emitted = &mut self.emitted;
            Self::match_texts(&*self.texts, &self.cfg, &delta, keys, |pair, found| {
                out.extend(found.iter().cloned().map(|m| (m, 1)));
                emitted.entry(pair).or_default().extend(found);
            });
        }

        // 5. Questions that appeared or disappeared: retract what they had, match them anew
        // (with the verdict of an earlier run when there is one), in text order.
        if !self.emitted.is_empty() {
            for (ByText(pair), _) in &changed_pairs {
                if let Some(old) = self.emitted.remove(pair) {
                    out.extend(old.into_iter().map(|m| (m, -1)));
                }
            }
        }
        let appeared = |all: bool| {
            let (live, changed) = (&self.live, &changed_pairs);
            let from_live = all.then(|| live.iter()).into_iter().flatten();
            let from_changed = (!all)
                .then(|| changed.iter().map(|(p, c)| (p, *c)))
                .into_iter()
                .flatten();
            from_live
                .chain(from_changed)
                .filter(|(_, after)| *after > 0)
                .map(|(pair, _)| pair.0)
        };
        let mut unknown = Vec::new();
        let emitted = &mut self.emitted;
        let mut verdict = |pair, found: Option<Vec<Match>>| match found {
            Some(found) if !found.is_empty() => {
                out.extend(found.iter().cloned().map(|m| (m, 1)));
                emitted.insert(pair, found);
            }
            Some(_) => {}
            None => unknown.push(pair),
        };
        match &self.memo {
            Some(m) => m.lookup_ascending(self.digest, appeared(all_new), &mut verdict),
            None => appeared(all_new).for_each(|p| verdict(p, None)),
        }
        if !unknown.is_empty() {
            self.ensure_index();
            let index = self.index.as_ref().expect("just built");
            let emitted = &mut self.emitted;
            Self::match_texts(&*self.texts, &self.cfg, index, unknown, |pair, found| {
                out.extend(found.iter().cloned().map(|m| (m, 1)));
                emitted.insert(pair, found);
            });
        }
    }
}

/// The questions arranged by id (as the ingest's upsert operator holds them).
pub type ArrangedQuestions<'s> = differential_dataflow::operators::arrange::Arranged<
    's,
    crate::upsert::UpsertTrace<QuestionId, Question>,
>;

/// Turns matches into the step's verdicts: contaminated questions are rejected with their
/// smallest match as detail; the others pass.
///
/// `arranged`, when given, must hold exactly `questions` (the ingest's upsert arrangement, when
/// this is the recipe's first step): the join then reads it instead of arranging every
/// question once more.
pub fn apply_matches<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    matches: VecCollection<'s, Epoch, Match>,
    arranged: Option<ArrangedQuestions<'s>>,
) -> StepOutput<'s> {
    // One verdict per question: its smallest (benchmark, item).
    let first = matches
        .map(|m| (m.question, (m.bench, m.item)))
        .reduce(|_qid, input, output| output.push((input[0].0.clone(), 1)));
    // The contaminated questions with their verdict: `first` has one value per question, so
    // this is a semijoin, and the questions that pass are all the others. One arrangement of
    // the questions (a join and an antijoin would arrange them twice).
    let arranged = arranged.unwrap_or_else(|| questions.clone().arrange_by_key());
    let hits = arranged.join_core(first.arrange_by_key(), |qid, q, verdict| {
        Some((*qid, q.clone(), verdict.clone()))
    });
    let rejected = hits.clone().map(move |(qid, _q, (bench, item))| Rejection {
        subject: Subject::Question(qid),
        step,
        reason: Reason::Contaminated,
        detail: Detail::Contamination(Box::new(crate::record::ItemRef { bench, item })),
    });
    let passed = questions.concat(hits.map(|(qid, q, _)| (qid, q)).negate());
    StepOutput { passed, rejected }
}

/// Batch reference: every match between live questions and live items, brute force (every pair
/// compared through n-gram sets, and every pair the fuzzy candidate rule admits through the
/// full Indel ratio; no index).
pub fn reference_matches(
    cfg: &DecontamConfig,
    questions: &[(QuestionId, String)],
    items: &[BenchItem],
) -> BTreeSet<Match> {
    let mut out = BTreeSet::new();
    if let Some(ng) = &cfg.ngram {
        let item_grams: Vec<HashSet<u64>> = items
            .iter()
            .map(|i| {
                cfg.item_evidence(ng, i)
                    .into_iter()
                    .map(|(_, g)| g)
                    .collect()
            })
            .collect();
        for (qid, text) in questions {
            let grams = ng.evidence(text, cfg.skip_numeric, &cfg.ignored);
            for (item, set) in items.iter().zip(&item_grams) {
                let shared: HashSet<u64> = grams
                    .iter()
                    .map(|(_, g)| *g)
                    .filter(|g| set.contains(g))
                    .collect();
                if let Some((pos, _)) = grams.iter().find(|(_, g)| set.contains(g)) {
                    out.insert(Match {
                        question: *qid,
                        bench: item.bench.clone(),
                        item: item.item.clone(),
                        method: MatchMethod::Ngram,
                        score: shared.len() as u32,
                        span: ng.span(text, *pos),
                    });
                }
            }
        }
    }
    if let Some(fc) = &cfg.fuzzy {
        for (qid, text) in questions {
            let q = fc.prepare(text);
            let q_grams = fc.candidate_grams(text);
            for item in items {
                let a = fc.prepare(&item.text);
                if !fc.candidate(&q_grams, q.len(), &fc.candidate_grams(&item.text), a.len()) {
                    continue;
                }
                let r = Pattern::new(&a).ratio(&q);
                if r >= fc.threshold() {
                    out.insert(Match {
                        question: *qid,
                        bench: item.bench.clone(),
                        item: item.item.clone(),
                        method: MatchMethod::Fuzzy,
                        score: (r * 100.0).round() as u32,
                        span: excerpt(&q.iter().collect::<String>(), 120),
                    });
                }
            }
        }
    }
    out
}
