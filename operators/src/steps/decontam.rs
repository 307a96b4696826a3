//! `decontaminate`: drop every question that shares an n-gram with a benchmark item.
//!
//! ```text
//!  questions (qid, Question) --exchange(qid)--+
//!                                             +--> [n-gram matcher] --> matches (Match)
//!  benchmark items --------------broadcast----+           |
//!                                                         v
//!  questions --antijoin(matched qids)--> passed      questions --join(first match)--> rejected
//! ```
//!
//! **What it computes.** For the accumulated questions Q and benchmark items B: the set of
//! matches `(q, b)` such that q's n-grams (words of the normalized text by default, `n = 13`)
//! intersect b's, each with the number of shared n-grams and the first shared span; a question
//! with at least one match is rejected (`contaminated`, detail = its smallest match), all others
//! pass unchanged.
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
//! that adding a benchmark re-reads the question texts once (linear, about a second per
//! million questions per worker); adding questions costs only their own n-grams. At 10x the
//! questions the state grows 10x; at 10x the benchmarks only the (small) index grows.

use crate::epoch::{accumulate, epoch_binary};
use crate::hash;
use crate::record::{
    BenchItem, Detail, Epoch, Match, MatchMethod, Question, QuestionId, Reason, Rejection, StepId,
    Subject, TextRef,
};
use crate::steps::StepOutput;
use crate::text::TextLookup;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;

/// What an n-gram is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NgramUnit {
    /// Alphanumeric words of the normalized text.
    Word,
    /// Characters of the normalized text.
    Char,
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
        match self.unit {
            NgramUnit::Word => hash::word_ngrams(text, self.n),
            NgramUnit::Char => hash::char_ngrams(text, self.n),
        }
    }

    /// The normalized text of the n-gram at `position`.
    pub fn span(&self, text: &str, position: usize) -> String {
        match self.unit {
            NgramUnit::Word => hash::word_ngram_span(text, self.n, position),
            NgramUnit::Char => hash::normalize(text)
                .chars()
                .skip(position)
                .take(self.n)
                .collect(),
        }
    }
}

/// A benchmark n-gram index: every live item and, per n-gram hash, the items that contain it.
#[derive(Default)]
pub struct BenchmarkIndex {
    items: Vec<BenchItem>,
    grams: HashMap<u64, Vec<u32>>,
}

impl BenchmarkIndex {
    /// Indexes `items` (each once, whatever its multiplicity).
    pub fn build<'a>(cfg: &NgramConfig, items: impl IntoIterator<Item = &'a BenchItem>) -> Self {
        let mut index = BenchmarkIndex::default();
        for item in items {
            let at = index.items.len() as u32;
            let mut seen = HashSet::new();
            for g in cfg.grams(&item.text) {
                if seen.insert(g) {
                    index.grams.entry(g).or_default().push(at);
                }
            }
            index.items.push(item.clone());
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The matches of one question text against this index.
    pub fn matches(&self, cfg: &NgramConfig, question: QuestionId, text: &str) -> Vec<Match> {
        if self.items.is_empty() {
            return Vec::new();
        }
        let grams = cfg.grams(text);
        // item -> (first position, distinct shared grams)
        let mut hits: BTreeMap<u32, (usize, HashSet<u64>)> = BTreeMap::new();
        for (pos, g) in grams.iter().enumerate() {
            if let Some(items) = self.grams.get(g) {
                for &i in items {
                    hits.entry(i)
                        .or_insert_with(|| (pos, HashSet::new()))
                        .1
                        .insert(*g);
                }
            }
        }
        hits.into_iter()
            .map(|(i, (pos, shared))| {
                let item = &self.items[i as usize];
                Match {
                    question,
                    bench: item.bench.clone(),
                    item: item.item.clone(),
                    method: MatchMethod::Ngram,
                    score: shared.len() as u32,
                    span: cfg.span(text, pos),
                }
            })
            .collect()
    }
}

/// Finds the n-gram matches between questions and benchmark items, incrementally.
///
/// `texts` must hold the text of every question that arrives (the runtime stores it before the
/// question enters the dataflow).
pub fn ngram_matches<'s>(
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    benchmarks: VecCollection<'s, Epoch, BenchItem>,
    cfg: NgramConfig,
    texts: Arc<dyn TextLookup>,
) -> VecCollection<'s, Epoch, Match> {
    let pairs = questions.map(|(qid, q)| (qid, q.text));
    let broadcast = benchmarks.inner.broadcast();
    let mut matcher = Matcher {
        cfg,
        texts,
        live: HashMap::new(),
        items: BTreeMap::new(),
        index: BenchmarkIndex::default(),
        emitted: HashMap::new(),
    };
    epoch_binary(
        pairs,
        differential_dataflow::AsCollection::as_collection(broadcast),
        Exchange::new(|u: &((QuestionId, TextRef), Epoch, isize)| (u.0).0 .0),
        Pipeline,
        "DecontaminateNgram",
        move |_epoch, q_updates, b_updates, out| matcher.epoch(q_updates, b_updates, out),
    )
}

struct Matcher {
    cfg: NgramConfig,
    texts: Arc<dyn TextLookup>,
    /// Live (question, text) pairs and their multiplicities.
    live: HashMap<(QuestionId, TextRef), isize>,
    /// Live benchmark items.
    items: BTreeMap<BenchItem, isize>,
    index: BenchmarkIndex,
    /// The matches currently in the output, per live pair (only non-empty lists).
    emitted: HashMap<(QuestionId, TextRef), Vec<Match>>,
}

impl Matcher {
    fn text(&self, key: TextRef) -> Arc<str> {
        self.texts
            .get(key)
            .expect("decontaminate: question text missing from the store (stored before ingest)")
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
            self.index = BenchmarkIndex::build(
                &self.cfg,
                self.items.iter().filter(|(_, c)| **c > 0).map(|(i, _)| i),
            );
        }

        // 2. Questions: which (question, text) pairs appeared or disappeared.
        let mut changed_pairs: BTreeMap<(QuestionId, TextRef), (isize, isize)> = BTreeMap::new();
        for (pair, r) in q_updates {
            let before = self.live.get(&pair).copied().unwrap_or(0);
            changed_pairs.entry(pair).or_insert((before, before)).1 += r;
            let after = before + r;
            if after == 0 {
                self.live.remove(&pair);
            } else {
                self.live.insert(pair, after);
            }
        }
        changed_pairs.retain(|_, (b, a)| (*b > 0) != (*a > 0));

        // 3. Retract matches of items that disappeared (questions that changed are redone below).
        if !removed.is_empty() {
            for (pair, list) in self.emitted.iter_mut() {
                if changed_pairs.contains_key(pair) {
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

        // 4. Match every unchanged live question against the items that appeared.
        if !added.is_empty() {
            let delta = BenchmarkIndex::build(&self.cfg, added.iter());
            let keys: Vec<(QuestionId, TextRef)> = self
                .live
                .iter()
                .filter(|(p, c)| **c > 0 && !changed_pairs.contains_key(*p))
                .map(|(p, _)| *p)
                .collect();
            for (qid, tref) in keys {
                let text = self.text(tref);
                let found = delta.matches(&self.cfg, qid, &text);
                if !found.is_empty() {
                    out.extend(found.iter().cloned().map(|m| (m, 1)));
                    self.emitted.entry((qid, tref)).or_default().extend(found);
                }
            }
        }

        // 5. Questions that appeared or disappeared: retract what they had, match them anew.
        for ((qid, tref), (_before, after)) in changed_pairs {
            if let Some(old) = self.emitted.remove(&(qid, tref)) {
                out.extend(old.into_iter().map(|m| (m, -1)));
            }
            if after > 0 {
                let text = self.text(tref);
                let found = self.index.matches(&self.cfg, qid, &text);
                if !found.is_empty() {
                    out.extend(found.iter().cloned().map(|m| (m, 1)));
                    self.emitted.insert((qid, tref), found);
                }
            }
        }
    }
}

/// Turns matches into the step's verdicts: contaminated questions are rejected with their
/// smallest match as detail; the others pass.
pub fn apply_matches<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    matches: VecCollection<'s, Epoch, Match>,
) -> StepOutput<'s> {
    // One verdict per question: its smallest (benchmark, item).
    let first = matches
        .map(|m| (m.question, (m.bench, m.item)))
        .reduce(|_qid, input, output| output.push((input[0].0.clone(), 1)));
    let rejected = questions
        .clone()
        .join_map(first.clone(), move |qid, _q, (bench, item)| Rejection {
            subject: Subject::Question(*qid),
            step,
            reason: Reason::Contaminated,
            detail: Detail::Contamination {
                bench: bench.clone(),
                item: item.clone(),
            },
        });
    let passed = questions.antijoin(first.map(|(qid, _)| qid).distinct());
    StepOutput { passed, rejected }
}

/// Batch reference: every match between live questions and live items, brute force (every pair
/// compared through n-gram sets, no index).
pub fn reference_matches(
    cfg: &NgramConfig,
    questions: &[(QuestionId, String)],
    items: &[BenchItem],
) -> BTreeSet<Match> {
    let item_grams: Vec<HashSet<u64>> = items
        .iter()
        .map(|i| cfg.grams(&i.text).into_iter().collect())
        .collect();
    let mut out = BTreeSet::new();
    for (qid, text) in questions {
        let grams = cfg.grams(text);
        for (item, set) in items.iter().zip(&item_grams) {
            let shared: HashSet<u64> = grams.iter().copied().filter(|g| set.contains(g)).collect();
            if let Some(pos) = grams.iter().position(|g| set.contains(g)) {
                out.insert(Match {
                    question: *qid,
                    bench: item.bench.clone(),
                    item: item.item.clone(),
                    method: MatchMethod::Ngram,
                    score: shared.len() as u32,
                    span: cfg.span(text, pos),
                });
            }
        }
    }
    out
}
