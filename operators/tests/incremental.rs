//! Every step, incrementally, equals its batch reference at every epoch, on one and two workers.
//!
//! Scripts are random sequences of upserts (insertions, replacements, deletions and
//! re-insertions) over a small key space, so that duplicates, ties, winner retractions and
//! selection churn happen often.

use differential_dataflow::VecCollection;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use thoughtflow_operators::record::*;
use thoughtflow_operators::steps::decontam::{
    self, DecontamConfig, DecontamMemo, FuzzyConfig, MemoHooks, MemoTable, NgramConfig, NgramUnit,
    Tokens,
};
use thoughtflow_operators::steps::fanout::{self, Answers, LookupBy, LookupKey};
use thoughtflow_operators::steps::select::{self, GroupBy, GroupKey, GroupSizes, Selection};
use thoughtflow_operators::steps::{answer_dedup, answer_select, dedup, length, StepOutput};
use thoughtflow_operators::testing::{
    accumulate_script, bag, run_script, upserts_to_updates, Bag, Build,
};
use thoughtflow_operators::text::MemTexts;

const STEP: StepId = StepId(3);

/// A step's output as one collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Out {
    Passed(QuestionId, Question),
    Row(RowKey, Row),
    Rejected(Rejection),
    Match(Match),
}

fn combine<'s>(o: StepOutput<'s>) -> VecCollection<'s, Epoch, Out> {
    o.passed
        .map(|(id, q)| Out::Passed(id, q))
        .concat(o.rejected.map(Out::Rejected))
}

fn expect_questions(passed: Vec<Question>, rejected: Vec<Rejection>) -> Bag<Out> {
    bag(passed
        .into_iter()
        .map(|q| Out::Passed(q.id, q))
        .chain(rejected.into_iter().map(Out::Rejected)))
}

/// The value part of a question (the key is its id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Body {
    domain: u8,
    source: u8,
    priority: u32,
    hash: u8,
    tokens: u32,
    score: Option<i64>,
}

fn body() -> impl Strategy<Value = Body> {
    (
        0u8..3,
        0u8..2,
        0u32..2,
        0u8..5,
        0u32..30,
        proptest::option::weighted(0.9, 0i64..6),
    )
        .prop_map(|(domain, source, priority, hash, tokens, score)| Body {
            domain,
            source,
            priority,
            hash,
            tokens,
            score,
        })
}

fn question(key: &u8, b: &Body) -> Question {
    Question {
        id: QuestionId(*key as u64 * 7919),
        source: SourceId(b.source as u64),
        priority: b.priority,
        domain: Domain::ALL[b.domain as usize],
        hash: ContentHash(b.hash as u128 * 1_000_003),
        text: TextRef(b.hash as u128),
        tokens: b.tokens,
        chars: b.tokens * 5,
        score: b.score.into(),
        difficulty: None.into(),
    }
}

fn script() -> impl Strategy<Value = Vec<Vec<(Question, isize)>>> {
    prop::collection::vec(
        prop::collection::vec((0u8..10, proptest::option::weighted(0.75, body())), 0..8),
        1..6,
    )
    .prop_map(|epochs| upserts_to_updates(&epochs, question))
}

/// Checks a question step on 1 and 2 workers against `reference` at every epoch.
fn check<B, F>(script: &[Vec<(Question, isize)>], make: impl Fn() -> B, reference: F)
where
    B: Build<Question, Out>,
    F: Fn(&[Question]) -> Bag<Out>,
{
    let inputs = accumulate_script(script);
    for workers in [1, 2] {
        let outputs = run_script(workers, script, make());
        for (epoch, (input, output)) in inputs.iter().zip(&outputs).enumerate() {
            let live: Vec<Question> = input.keys().cloned().collect();
            assert_eq!(
                output,
                &reference(&live),
                "epoch {epoch} on {workers} worker(s), input {live:?}"
            );
        }
    }
}

struct Length(u32);
impl Build<Question, Out> for Length {
    fn build<'s>(
        &self,
        input: VecCollection<'s, Epoch, Question>,
    ) -> VecCollection<'s, Epoch, Out> {
        combine(length::length_guard(STEP, input.map(|q| (q.id, q)), self.0))
    }
}

struct Select(Selection);
impl Build<Question, Out> for Select {
    fn build<'s>(
        &self,
        input: VecCollection<'s, Epoch, Question>,
    ) -> VecCollection<'s, Epoch, Out> {
        combine(select::select(
            STEP,
            input.map(|q| (q.id, q)),
            self.0.clone(),
        ))
    }
}

struct Dedup;
impl Build<Question, Out> for Dedup {
    fn build<'s>(
        &self,
        input: VecCollection<'s, Epoch, Question>,
    ) -> VecCollection<'s, Epoch, Out> {
        combine(dedup::dedup_exact(STEP, input.map(|q| (q.id, q))))
    }
}

fn selections() -> impl Strategy<Value = Selection> {
    let sizes = (0u64..4, 0u64..4).prop_map(|(d, m)| {
        let mut s = GroupSizes::uniform(d);
        s.per_group.insert(GroupKey::Domain(Domain::Math), m);
        s.per_group.insert(GroupKey::Source(SourceId(1)), m);
        s
    });
    let per = prop_oneof![
        Just(GroupBy::All),
        Just(GroupBy::Source),
        Just(GroupBy::Domain)
    ];
    prop_oneof![
        (proptest::option::of(0i64..4), proptest::option::of(2i64..6))
            .prop_map(|(min, max)| Selection::Threshold { min, max }),
        (per.clone(), sizes.clone()).prop_map(|(per, n)| Selection::TopN { per, n }),
        (per, sizes).prop_map(|(per, n)| Selection::Sample { per, n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn length_guard_matches_reference(script in script(), max in 0u32..30) {
        check(&script, || Length(max), |qs| {
            let (mut p, mut r) = (vec![], vec![]);
            for q in qs {
                match length::verdict(STEP, q, max) { None => p.push(q.clone()), Some(x) => r.push(x) }
            }
            expect_questions(p, r)
        });
    }

    #[test]
    fn select_matches_reference(script in script(), selection in selections()) {
        check(&script, || Select(selection.clone()), |qs| {
            let (p, r) = select::reference(STEP, qs, &selection);
            expect_questions(p, r)
        });
    }

    #[test]
    fn dedup_matches_reference(script in script()) {
        check(&script, || Dedup, |qs| {
            let (p, r) = dedup::reference(STEP, qs);
            expect_questions(p, r)
        });
    }
}

// ---- decontaminate: two inputs (questions and benchmark items) and texts in a store.

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum DIn {
    Q(Question),
    B(BenchItem),
}

const WORDS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn text_of(seed: u8, len: usize) -> String {
    // Few words, short texts: shared n-grams are frequent.
    let mut s = seed as u64 * 2654435761 + 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            WORDS[(s % 4) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A decontamination script's input as questions and benchmark items.
#[allow(clippy::type_complexity)]
fn split_decontam<'s>(
    input: VecCollection<'s, Epoch, DIn>,
) -> (
    VecCollection<'s, Epoch, (QuestionId, Question)>,
    VecCollection<'s, Epoch, BenchItem>,
) {
    let questions = input.clone().flat_map(|d| match d {
        DIn::Q(q) => Some((q.id, q)),
        _ => None,
    });
    let items = input.flat_map(|d| match d {
        DIn::B(b) => Some(b),
        _ => None,
    });
    (questions, items)
}

struct Decontam {
    cfg: DecontamConfig,
    texts: Arc<MemTexts>,
    /// Verdicts of an earlier run to reuse, and where this run's go when its inputs end.
    memo: Option<(Arc<DecontamMemo>, Arc<Mutex<Vec<MemoTable>>>)>,
    /// Hand the verdicts an arrangement of the questions (as the runtime hands the first step
    /// the ingest's upsert arrangement) instead of letting them arrange their own.
    arranged: bool,
}
impl Build<DIn, Out> for Decontam {
    fn build<'s>(&self, input: VecCollection<'s, Epoch, DIn>) -> VecCollection<'s, Epoch, Out> {
        let memo = self.memo.as_ref().map(|(previous, saved)| {
            let saved = Arc::clone(saved);
            MemoHooks {
                previous: Arc::clone(previous),
                save: Box::new(move |t| saved.lock().unwrap().push(t)),
            }
        });
        let (questions, items) = split_decontam(input);
        let matches = decontam::ngram_matches(
            questions.clone().map(|(id, q)| (id, q.text)),
            items,
            self.cfg.clone(),
            self.texts.clone(),
            memo,
        );
        let arranged = self.arranged.then(|| questions.clone().arrange_by_key());
        let out = decontam::apply_matches(STEP, questions, matches.clone(), arranged);
        combine(out).concat(matches.map(Out::Match))
    }
}

fn decontam_script() -> impl Strategy<Value = (Vec<Vec<(DIn, isize)>>, Vec<String>)> {
    let q_ups = prop::collection::vec(
        (
            0u8..8,
            proptest::option::weighted(0.8, (0u8..20, 2usize..7)),
        ),
        0..6,
    );
    let b_ups = prop::collection::vec(
        (
            0u8..4,
            proptest::option::weighted(0.7, (0u8..20, 2usize..6)),
        ),
        0..3,
    );
    prop::collection::vec((q_ups, b_ups), 1..6).prop_map(|epochs| {
        let mut texts = Vec::new();
        let qs: Vec<Vec<_>> = epochs.iter().map(|(q, _)| q.clone()).collect();
        let bs: Vec<Vec<_>> = epochs.iter().map(|(_, b)| b.clone()).collect();
        let q_updates = upserts_to_updates(&qs, |k: &u8, (seed, len): &(u8, usize)| {
            let text = text_of(*seed, *len);
            DIn::Q(Question {
                id: QuestionId(*k as u64),
                source: SourceId(0),
                priority: 0,
                domain: Domain::Math,
                hash: thoughtflow_operators::hash::content_hash(&text),
                text: thoughtflow_operators::hash::text_ref(&text),
                tokens: *len as u32,
                chars: text.len() as u32,
                score: None.into(),
                difficulty: None.into(),
            })
        });
        let b_updates = upserts_to_updates(&bs, |k: &u8, (seed, len): &(u8, usize)| {
            DIn::B(BenchItem {
                bench: format!("bench{}", k % 2),
                item: format!("item{k}"),
                text: text_of(seed.wrapping_add(100), *len),
            })
        });
        for epoch in &epochs {
            for (_, v) in &epoch.0 {
                if let Some((seed, len)) = v {
                    texts.push(text_of(*seed, *len));
                }
            }
        }
        let script = q_updates
            .into_iter()
            .zip(b_updates)
            .map(|(mut a, b)| {
                a.extend(b);
                a
            })
            .collect();
        (script, texts)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn decontaminate_matches_reference(
        (script, texts) in decontam_script(),
        n in 1usize..4,
        unit in 0u8..4,
        fuzzy in proptest::option::of(prop_oneof![Just(6000u32), Just(7500), Just(9000)]),
        candidate_ngram in 1usize..4,
        min_shared_pct in prop_oneof![Just(0u32), Just(20), Just(50), Just(100)],
        skip_numeric in any::<bool>(),
        ignore_for_b1 in any::<bool>(),
    ) {
        // Word, character, and token n-grams (normalized or raw text) from a word-level
        // tokenizer that knows only some of the words (the others are all [UNK]).
        let tokens = |normalized| NgramUnit::Token(Tokens { tokenizer: thoughtflow_operators::testing::word_level_tokenizer(&WORDS[..3]), normalized });
        let ngram = match unit {
            0 => NgramConfig { n, unit: NgramUnit::Word },
            1 => NgramConfig { n: n + 6, unit: NgramUnit::Char },
            2 => NgramConfig { n, unit: tokens(true) },
            _ => NgramConfig { n, unit: tokens(false) },
        };
        // Benchmark "bench1" ignores the n-grams of one phrase (its own "too common" list).
        let mut ignored_by_bench = BTreeMap::new();
        if ignore_for_b1 {
            let mut own = ngram.grams(&WORDS[..n.max(2)].join(" "));
            own.sort_unstable();
            ignored_by_bench.insert("bench1".to_string(), own);
        }
        // The indexed path must find exactly the pairs the candidate rule admits (the reference
        // applies the rule to every pair). The rule's recall is measured on real data.
        let cfg = DecontamConfig {
            ngram: Some(ngram),
            skip_numeric,
            ignored: Vec::new(),
            ignored_by_bench,
            fuzzy: fuzzy.map(|threshold_bp| FuzzyConfig { threshold_bp, candidate_ngram, normalize: true, min_shared_pct }),
        };
        let store = MemTexts::new();
        let mut text_by_ref = BTreeMap::new();
        for t in &texts { text_by_ref.insert(store.put(t), t.clone()); }
        // A first run saves its verdicts (the memo); then the script is checked without a memo,
        // reusing the memo, and as a restart's replay (the final state in one epoch) reusing it.
        let saved = Arc::new(Mutex::new(Vec::new()));
        let first = Decontam { cfg: cfg.clone(), texts: store.clone(), memo: Some((Arc::new(DecontamMemo::default()), Arc::clone(&saved))), arranged: false };
        let _ = run_script(1, &script, first);
        let mut memo = DecontamMemo::default();
        for t in saved.lock().unwrap().drain(..) { memo.add(t); }
        let memo = Arc::new(memo);
        let last = accumulate_script(&script).pop().unwrap_or_default();
        let replay: Vec<Vec<(DIn, isize)>> = vec![last.into_iter().collect()];
        for (script, memo, arranged) in [(&script, None, false), (&script, None, true), (&script, Some(&memo), false), (&replay, Some(&memo), true)] {
        let inputs = accumulate_script(script);
        for workers in [1, 2] {
            let memo = memo.map(|m| (Arc::clone(m), Arc::new(Mutex::new(Vec::new()))));
            let outputs = run_script(workers, script, Decontam { cfg: cfg.clone(), texts: store.clone(), memo, arranged });
            for (epoch, (input, output)) in inputs.iter().zip(&outputs).enumerate() {
                let qs: Vec<Question> = input.keys().filter_map(|d| match d { DIn::Q(q) => Some(q.clone()), _ => None }).collect();
                let items: Vec<BenchItem> = input.keys().filter_map(|d| match d { DIn::B(b) => Some(b.clone()), _ => None }).collect();
                let pairs: Vec<(QuestionId, String)> = qs.iter().map(|q| (q.id, text_by_ref[&q.text].clone())).collect();
                let matches = decontam::reference_matches(&cfg, &pairs, &items);
                let mut expected = Bag::new();
                for m in &matches { *expected.entry(Out::Match(m.clone())).or_insert(0) += 1; }
                for q in &qs {
                    let first = matches.iter().filter(|m| m.question == q.id).map(|m| (m.bench.clone(), m.item.clone())).min();
                    let out = match first {
                        None => Out::Passed(q.id, q.clone()),
                        Some((bench, item)) => Out::Rejected(Rejection { subject: Subject::Question(q.id), step: STEP, reason: Reason::Contaminated, detail: Detail::Contamination(Box::new(thoughtflow_operators::record::ItemRef { bench, item })) }),
                    };
                    *expected.entry(out).or_insert(0) += 1;
                }
                prop_assert_eq!(output, &expected, "epoch {} on {} worker(s)", epoch, workers);
            }
        }
        }
    }
}

// ---- fanout (keyed answers) and answer dedup: questions and answers as inputs.

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum FIn {
    Q(Question),
    A((LookupKey, u16), Answer),
}

struct Fanout {
    by: LookupBy,
    samples: u16,
    dedup_answers: bool,
    select: Option<(answer_select::Keep, usize)>,
}

/// Answer length for the `answer_select` property: few values, so ties are common.
fn answer_len(a: &Answer) -> u64 {
    (a.hash.0 % 3) as u64
}
impl Build<FIn, Out> for Fanout {
    fn build<'s>(&self, input: VecCollection<'s, Epoch, FIn>) -> VecCollection<'s, Epoch, Out> {
        let questions = input.clone().flat_map(|d| match d {
            FIn::Q(q) => Some((q.id, q)),
            _ => None,
        });
        let answers = input.flat_map(|d| match d {
            FIn::A(k, a) => Some((k, a)),
            _ => None,
        });
        let out = fanout::fanout(
            STEP,
            questions,
            TeacherId(1),
            self.samples,
            Answers::Keyed {
                by: self.by,
                answers,
                missing: fanout::Missing::Reject,
            },
        );
        let (rows, mut rejected) = (out.passed, out.rejected);
        let rows = if self.dedup_answers {
            let d = answer_dedup::answer_dedup(StepId(4), rows);
            rejected = rejected.concat(d.rejected);
            d.passed
        } else {
            rows
        };
        let rows = match self.select {
            Some((keep, k)) => {
                let s = answer_select::answer_select(
                    StepId(5),
                    rows,
                    keep,
                    k,
                    std::sync::Arc::new(answer_len),
                );
                rejected = rejected.concat(s.rejected);
                s.passed
            }
            None => rows,
        };
        rows.map(|(k, r)| Out::Row(k, r))
            .concat(rejected.map(Out::Rejected))
    }
}

fn fanout_script() -> impl Strategy<Value = Vec<Vec<(FIn, isize)>>> {
    let q_ups = prop::collection::vec((0u8..6, proptest::option::weighted(0.8, body())), 0..6);
    let a_ups = prop::collection::vec(
        ((0u8..6, 0u16..3), proptest::option::weighted(0.8, 0u8..3)),
        0..6,
    );
    prop::collection::vec((q_ups, a_ups), 1..6).prop_map(|epochs| {
        let qs: Vec<Vec<_>> = epochs.iter().map(|(q, _)| q.clone()).collect();
        let ans: Vec<Vec<_>> = epochs.iter().map(|(_, a)| a.clone()).collect();
        let q_updates = upserts_to_updates(&qs, |k: &u8, b: &Body| FIn::Q(question(k, b)));
        let a_updates = upserts_to_updates(&ans, |(k, s): &(u8, u16), v: &u8| {
            // Answers keyed by id of question k, and (same numbers) by content hash k.
            let key = if k % 2 == 0 {
                LookupKey::Id(QuestionId(*k as u64 * 7919))
            } else {
                LookupKey::Hash(ContentHash(*k as u128 * 1_000_003))
            };
            FIn::A(
                (key, *s),
                Answer {
                    hash: ContentHash(*v as u128),
                    text: AnswerText::Stored(TextRef(*v as u128)),
                },
            )
        });
        q_updates
            .into_iter()
            .zip(a_updates)
            .map(|(mut a, b)| {
                a.extend(b);
                a
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn fanout_and_answer_steps_match_reference(script in fanout_script(), by_hash in any::<bool>(), samples in 1u16..4, dedup_answers in any::<bool>(), select in proptest::option::of((any::<bool>(), 0usize..3))) {
        let select = select.map(|(longest, k)| (if longest { answer_select::Keep::Longest } else { answer_select::Keep::Shortest }, k));
        let by = if by_hash { LookupBy::Hash } else { LookupBy::Id };
        let inputs = accumulate_script(&script);
        for workers in [1, 2] {
            let outputs = run_script(workers, &script, Fanout { by, samples, dedup_answers, select });
            for (epoch, (input, output)) in inputs.iter().zip(&outputs).enumerate() {
                let qs: Vec<Question> = input.keys().filter_map(|d| match d { FIn::Q(q) => Some(q.clone()), _ => None }).collect();
                let mut answers: BTreeMap<(LookupKey, u16), Vec<Answer>> = BTreeMap::new();
                for d in input.keys() { if let FIn::A(k, a) = d { answers.entry(*k).or_default().push(a.clone()); } }
                let (rows, mut rejected) = fanout::reference_keyed(STEP, &qs, TeacherId(1), samples, by, &answers);
                let rows = if dedup_answers {
                    let (p, r) = answer_dedup::reference(StepId(4), &rows);
                    rejected.extend(r);
                    p
                } else { rows };
                let rows = match select {
                    Some((keep, k)) => {
                        let (p, r) = answer_select::reference(StepId(5), &rows, keep, k, &answer_len);
                        rejected.extend(r);
                        p
                    }
                    None => rows,
                };
                let expected = bag(rows.into_iter().map(|r| Out::Row(r.key, r)).chain(rejected.into_iter().map(Out::Rejected)));
                prop_assert_eq!(output, &expected, "epoch {} on {} worker(s)", epoch, workers);
            }
        }
    }
}

#[test]
fn synthetic_teacher_is_deterministic_and_sized() {
    let h = ContentHash(42);
    let a = fanout::synthetic_text(h, 0, 50);
    assert_eq!(a, fanout::synthetic_text(h, 0, 50));
    assert_ne!(a, fanout::synthetic_text(h, 1, 50));
    assert!(a.split_whitespace().count() >= 50);
    assert_eq!(
        fanout::synthetic_answer(h, 0, 50),
        fanout::synthetic_answer(h, 0, 50)
    );
}

// ---- near-duplicate dedup (fuzzy and MinHash), with texts in a store.

use thoughtflow_operators::steps::near_dedup::{self, NearDedupConfig, Shingle, Similarity};

struct NearDedup {
    cfg: NearDedupConfig,
    texts: Arc<MemTexts>,
}
impl Build<Question, Out> for NearDedup {
    fn build<'s>(
        &self,
        input: VecCollection<'s, Epoch, Question>,
    ) -> VecCollection<'s, Epoch, Out> {
        combine(near_dedup::near_dedup(
            STEP,
            input.map(|q| (q.id, q)),
            self.cfg.clone(),
            self.texts.clone(),
        ))
    }
}

/// Texts built from a few bases and small edits, so that near-duplicates are common.
fn near_text(base: u8, variant: u8) -> String {
    const BASES: [&str; 4] = [
        "how many ways can eight rooks be placed on a chessboard",
        "find the remainder when two to the tenth is divided by seven",
        "a train leaves the station at noon going sixty miles an hour",
        "compute the area of a triangle with sides five five and six",
    ];
    let mut t = BASES[base as usize % 4].to_string();
    match variant {
        0 => {}
        1 => t.push_str(" exactly"),
        2 => t = t.replacen(' ', "  ", 2).to_uppercase(),
        _ => t = t.replace("the", "a"),
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn near_dedup_matches_reference(
        epochs in prop::collection::vec(prop::collection::vec((0u8..8, proptest::option::weighted(0.8, (0u8..4, 0u8..4, 0u32..2))), 0..6), 1..6),
        which in 0usize..3,
    ) {
        let store = MemTexts::new();
        let mut by_ref: BTreeMap<TextRef, String> = BTreeMap::new();
        for (b, v) in (0..4).flat_map(|b| (0..4).map(move |v| (b, v))) {
            let t = near_text(b, v);
            by_ref.insert(store.put(&t), t);
        }
        let script = upserts_to_updates(&epochs, |k: &u8, (b, v, prio): &(u8, u8, u32)| {
            let text = near_text(*b, *v);
            Question {
                id: QuestionId(*k as u64 * 31),
                source: SourceId(0),
                priority: *prio,
                domain: Domain::Math,
                hash: thoughtflow_operators::hash::content_hash(&text),
                text: thoughtflow_operators::hash::text_ref(&text),
                tokens: 1,
                chars: text.len() as u32,
                score: None.into(),
                difficulty: None.into(),
            }
        });
        let cfg = match which {
            0 => NearDedupConfig::fuzzy(9000),
            1 => NearDedupConfig { max_bucket: 1, ..NearDedupConfig::fuzzy(8000) },
            _ => NearDedupConfig {
                similarity: Similarity::Jaccard { threshold_pct: 50, words: 2 },
                shingle: Shingle::Words(2),
                permutations: 16,
                bands: 8,
                max_bucket: 64,
            },
        };
        let inputs = accumulate_script(&script);
        for workers in [1, 2] {
            let outputs = run_script(workers, &script, NearDedup { cfg: cfg.clone(), texts: store.clone() });
            for (epoch, (input, output)) in inputs.iter().zip(&outputs).enumerate() {
                let live: Vec<Question> = input.keys().cloned().collect();
                let (p, r) = near_dedup::reference(STEP, &live, &cfg, &|t| by_ref[&t].clone());
                prop_assert_eq!(output, &expect_questions(p, r), "epoch {} on {} worker(s)", epoch, workers);
            }
        }
    }
}

/// Counts the texts a matcher reads.
struct Counting(Arc<MemTexts>, std::sync::atomic::AtomicUsize);
impl thoughtflow_operators::text::TextLookup for Counting {
    fn get(&self, key: TextRef) -> Option<Arc<str>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.get(key)
    }
}

struct MemoRun {
    cfg: DecontamConfig,
    texts: Arc<Counting>,
    previous: Arc<DecontamMemo>,
    saved: Arc<Mutex<Vec<MemoTable>>>,
}
impl Build<DIn, Out> for MemoRun {
    fn build<'s>(&self, input: VecCollection<'s, Epoch, DIn>) -> VecCollection<'s, Epoch, Out> {
        let (questions, items) = split_decontam(input);
        let saved = Arc::clone(&self.saved);
        let memo = MemoHooks {
            previous: Arc::clone(&self.previous),
            save: Box::new(move |t| saved.lock().unwrap().push(t)),
        };
        let texts: Arc<dyn thoughtflow_operators::text::TextLookup> = self.texts.clone();
        decontam::ngram_matches(
            questions.map(|(id, q)| (id, q.text)),
            items,
            self.cfg.clone(),
            texts,
            Some(memo),
        )
        .map(Out::Match)
    }
}

/// A restart's replay takes every verdict from the memo (reading no question text), gives the
/// same matches, and a changed benchmark set invalidates the memo (every text is read again).
#[test]
fn decontam_memo_serves_a_replay_and_expires_with_the_benchmarks() {
    let texts = MemTexts::new();
    let question = |id: u64, text: &str| {
        DIn::Q(Question {
            id: QuestionId(id),
            source: SourceId(0),
            priority: 0,
            domain: Domain::Math,
            hash: thoughtflow_operators::hash::content_hash(text),
            text: texts.put(text),
            tokens: 1,
            chars: 1,
            score: None.into(),
            difficulty: None.into(),
        })
    };
    let item = |id: &str, text: &str| {
        DIn::B(BenchItem {
            bench: "b".into(),
            item: id.into(),
            text: text.into(),
        })
    };
    let epoch0 = vec![
        (
            question(1, "the quick brown fox jumps over the lazy dog"),
            1,
        ),
        (
            question(2, "an entirely different question about primes"),
            1,
        ),
        (
            question(3, "the quick brown fox jumps over the lazy dog"),
            1,
        ),
        (
            item("i1", "so the quick brown fox jumps over the lazy dog again"),
            1,
        ),
    ];
    let cfg = DecontamConfig::ngram_only(NgramConfig {
        n: 4,
        unit: NgramUnit::Word,
    });
    let run = |script: &[Vec<(DIn, isize)>], previous: Arc<DecontamMemo>, workers: usize| {
        let counting = Arc::new(Counting(texts.clone(), Default::default()));
        let saved = Arc::new(Mutex::new(Vec::new()));
        let out = run_script(
            workers,
            script,
            MemoRun {
                cfg: cfg.clone(),
                texts: Arc::clone(&counting),
                previous,
                saved: Arc::clone(&saved),
            },
        );
        let reads = counting.1.load(std::sync::atomic::Ordering::SeqCst);
        let mut memo = DecontamMemo::default();
        for t in saved.lock().unwrap().drain(..) {
            memo.add(t);
        }
        (out, reads, memo)
    };
    let script = vec![epoch0.clone()];
    let (first, reads, memo) = run(&script, Arc::default(), 2);
    // Questions 1 and 3 share a text and a worker (exchanged by id: 1 and 3 are odd): each
    // distinct text is read once.
    assert_eq!(reads, 2, "a first run reads every distinct text once");
    assert_eq!(first[0].len(), 2, "questions 1 and 3 match: {:?}", first[0]);
    assert_eq!(memo.len(), 2, "two distinct texts have a verdict");
    let memo = Arc::new(memo);
    for workers in [1, 2] {
        let (again, reads, _) = run(&script, Arc::clone(&memo), workers);
        assert_eq!(reads, 0, "a replay reads no text on {workers} worker(s)");
        assert_eq!(again, first);
    }
    // Another benchmark item: a different index, so nothing is reused.
    let mut changed = epoch0.clone();
    changed.push((item("i2", "an entirely different question about primes"), 1));
    let (out, reads, _) = run(&[changed], Arc::clone(&memo), 2);
    assert_eq!(reads, 2);
    assert_eq!(out[0].len(), 3, "question 2 now matches i2: {:?}", out[0]);
}
