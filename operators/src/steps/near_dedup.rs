//! `dedup` with `mode = "fuzzy"` or `"minhash"`: near-duplicate questions, clustered.
//!
//! ```text
//!  questions --reduce(hash)--> one node per distinct text, labelled min(priority, question id)
//!      --flat_map(MinHash-LSH band keys)--> (band key, node) --reduce(band key)--> candidate pairs
//!      --verify (Indel ratio or Jaccard)--> edges --propagate(min label)--> cluster label per node
//!  questions --join(label of their node)--> the label's question passes; the others are
//!                                            `duplicate`, detail = the representative
//! ```
//!
//! **What it computes.** Two distinct texts are similar when their Indel ratio (normalized text)
//! is at least the threshold (`fuzzy`, default 90, the paper's fuzzy dedup), or when the
//! Jaccard similarity of their word shingle sets is (`minhash`, default 0.8). Candidate pairs
//! are those sharing a MinHash-LSH band: `permutations` min-hashes of the shingles, cut into
//! `bands` bands of `permutations / bands` rows; two texts with Jaccard `s` collide in some band
//! with probability `1 - (1 - s^r)^b` (r rows, b bands): the S-curve's midpoint is about
//! `(1/b)^(1/r)` (0.5 for the fuzzy defaults 64/16 on character 3-grams; 0.71 for the minhash
//! defaults 128/16 on word 5-grams). Buckets larger than `max_bucket` are not paired (template
//! boilerplate), and counted. Similar pairs are edges; clusters are the connected components
//! (transitive, unlike the paper's greedy matcher); each cluster keeps one question, the
//! minimum by (source priority, question id). Exact duplicates share a node, so they are
//! always clustered.
//!
//! **Incrementally.** Every stage is a differential operator: a new question adds its bands,
//! pairs and edges; a retracted one removes them, and its cluster may split (the label
//! propagation is recomputed for the affected nodes only), so the representative may change.
//!
//! **State.** Per distinct text: `bands` band keys (~16 x 24 bytes), its pairs and edges, and its
//! label. At 4M questions and 16 bands that is ~1.5 GB: this is the ablation's fuzzy dedup, not
//! the final recipe's (exact dedup, one reduce per hash).

use crate::hash;
use crate::record::{
    ContentHash, Detail, Epoch, Question, QuestionId, Reason, Rejection, StepId, Subject, TextRef,
};
use crate::steps::StepOutput;
use crate::text::TextLookup;
use differential_dataflow::algorithms::graphs::propagate::propagate;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// What a shingle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shingle {
    /// Character q-grams of the normalized text.
    Chars(usize),
    /// Word k-grams of the normalized text.
    Words(usize),
}

/// When two texts are near-duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Similarity {
    /// Indel ratio of the normalized texts, in hundredths of a percent (9000 = 90.00).
    Indel { threshold_bp: u32 },
    /// Jaccard similarity of the word k-gram sets, in hundredths (80 = 0.80).
    Jaccard { threshold_pct: u32, words: usize },
}

/// Settings of near-duplicate detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearDedupConfig {
    pub similarity: Similarity,
    pub shingle: Shingle,
    pub permutations: usize,
    pub bands: usize,
    pub max_bucket: usize,
}

impl NearDedupConfig {
    /// The paper's fuzzy dedup: Indel ratio >= 90.
    pub fn fuzzy(threshold_bp: u32) -> Self {
        NearDedupConfig {
            similarity: Similarity::Indel { threshold_bp },
            shingle: Shingle::Chars(3),
            permutations: 64,
            bands: 16,
            max_bucket: 64,
        }
    }

    /// MinHash-LSH dedup for large corpora: Jaccard of word 5-grams >= 0.8.
    pub fn minhash(threshold_pct: u32) -> Self {
        NearDedupConfig {
            similarity: Similarity::Jaccard {
                threshold_pct,
                words: 5,
            },
            shingle: Shingle::Words(5),
            permutations: 128,
            bands: 16,
            max_bucket: 64,
        }
    }
}

fn shingles(shingle: Shingle, normalized: &str) -> Vec<u64> {
    let units: Vec<u64> = match shingle {
        Shingle::Chars(_) => normalized.chars().map(|c| c as u64).collect(),
        Shingle::Words(_) => hash::words(normalized)
            .map(|w| hash::hash64(w.as_bytes()))
            .collect(),
    };
    let n = match shingle {
        Shingle::Chars(q) | Shingle::Words(q) => q,
    };
    let grams = hash::ngrams_of_hashes(&units, n);
    if grams.is_empty() {
        vec![hash::hash64(normalized.as_bytes())]
    } else {
        grams
    }
}

/// The LSH band keys of a text (the band index is part of each key).
pub fn band_keys(cfg: &NearDedupConfig, text: &str) -> Vec<u64> {
    let normalized = hash::normalize(text);
    let set: BTreeSet<u64> = shingles(cfg.shingle, &normalized).into_iter().collect();
    let rows = (cfg.permutations / cfg.bands).max(1);
    let mut mins = vec![u64::MAX; cfg.bands * rows];
    for (i, m) in mins.iter_mut().enumerate() {
        // A universal hash family: odd multiplier and offset per permutation.
        let a = hash::hash64(&(2 * i as u64 + 1).to_le_bytes()) | 1;
        let b = hash::hash64(&(2 * i as u64 + 2).to_le_bytes());
        for s in &set {
            let v = s.wrapping_mul(a).wrapping_add(b);
            if v < *m {
                *m = v;
            }
        }
    }
    (0..cfg.bands)
        .map(|band| {
            let mut bytes = Vec::with_capacity(8 * (rows + 1));
            bytes.extend_from_slice(&(band as u64).to_le_bytes());
            for m in &mins[band * rows..(band + 1) * rows] {
                bytes.extend_from_slice(&m.to_le_bytes());
            }
            hash::hash64(&bytes)
        })
        .collect()
}

/// Whether two texts are near-duplicates.
pub fn similar(similarity: Similarity, a: &str, b: &str) -> bool {
    let (a, b) = (hash::normalize(a), hash::normalize(b));
    match similarity {
        Similarity::Indel { threshold_bp } => {
            let t = threshold_bp as f64 / 100.0;
            let (ac, bc): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            if !crate::fuzzy::lengths_allow(ac.len(), bc.len(), t) {
                return false;
            }
            let (short, long) = if ac.len() <= bc.len() {
                (&ac, &bc)
            } else {
                (&bc, &ac)
            };
            crate::fuzzy::Pattern::new(short).ratio(long) >= t
        }
        Similarity::Jaccard {
            threshold_pct,
            words,
        } => {
            let sa: HashSet<u64> = shingles(Shingle::Words(words), &a).into_iter().collect();
            let sb: HashSet<u64> = shingles(Shingle::Words(words), &b).into_iter().collect();
            let inter = sa.intersection(&sb).count();
            let union = sa.len() + sb.len() - inter;
            union > 0 && (inter as f64 / union as f64) * 100.0 >= threshold_pct as f64
        }
    }
}

type Label = (u32, QuestionId);
type Node = (ContentHash, TextRef);

/// Near-duplicate dedup (see the module doc).
pub fn near_dedup<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    cfg: NearDedupConfig,
    texts: Arc<dyn TextLookup>,
) -> StepOutput<'s> {
    // One node per distinct text, labelled by its best question.
    let nodes = questions
        .clone()
        .map(|(_, q)| (q.hash, (q.priority, q.id, q.text)))
        .reduce(|_h, members, out| {
            let (p, id, t) = *members[0].0;
            out.push(((p, id, t), 1))
        });
    let cfg2 = cfg.clone();
    let t2 = Arc::clone(&texts);
    let keyed = nodes.clone().flat_map(move |(h, (_, _, t))| {
        let text = t2.get(t).map(|s| s.to_string()).unwrap_or_default();
        band_keys(&cfg2, &text)
            .into_iter()
            .map(|k| (k, (h, t)))
            .collect::<Vec<_>>()
    });
    let max_bucket = cfg.max_bucket;
    let pairs = keyed
        .reduce(
            move |_key, members: &[(&Node, isize)], out: &mut Vec<((Node, Node), isize)>| {
                if members.len() > max_bucket {
                    return;
                }
                for (i, (a, _)) in members.iter().enumerate() {
                    for (b, _) in &members[i + 1..] {
                        out.push(((**a, **b), 1));
                    }
                }
            },
        )
        .map(|(_, p)| p)
        .distinct();
    let similarity = cfg.similarity;
    let edges = pairs.flat_map(move |((ha, ta), (hb, tb))| {
        let a = texts.get(ta).map(|s| s.to_string()).unwrap_or_default();
        let b = texts.get(tb).map(|s| s.to_string()).unwrap_or_default();
        if similar(similarity, &a, &b) {
            vec![(ha, hb), (hb, ha)]
        } else {
            Vec::new()
        }
    });
    let labels: VecCollection<'s, Epoch, (ContentHash, Label)> =
        nodes.map(|(h, (p, id, _))| (h, (p, id)));
    let clusters = propagate(edges, labels);
    let verdicts = questions
        .clone()
        .map(|(id, q)| (q.hash, id))
        .join_map(clusters, |_h, id, (_, winner)| (*id, *winner));
    let passed = questions.semijoin(verdicts.clone().filter(|(id, w)| id == w).map(|(id, _)| id));
    let rejected = verdicts
        .filter(|(id, w)| id != w)
        .map(move |(id, winner)| Rejection {
            subject: Subject::Question(id),
            step,
            reason: Reason::Duplicate,
            detail: Detail::DuplicateOf(winner),
        });
    StepOutput { passed, rejected }
}

/// Batch reference: the same candidate rule (LSH buckets, `max_bucket`) and similarity, with
/// union-find clustering from scratch.
pub fn reference(
    step: StepId,
    questions: &[Question],
    cfg: &NearDedupConfig,
    text: &dyn Fn(TextRef) -> String,
) -> (Vec<Question>, Vec<Rejection>) {
    // Nodes.
    let mut nodes: BTreeMap<ContentHash, (Label, TextRef)> = BTreeMap::new();
    for q in questions {
        let e = nodes.entry(q.hash).or_insert(((q.priority, q.id), q.text));
        if ((q.priority, q.id), q.text) < *e {
            *e = ((q.priority, q.id), q.text);
        }
    }
    let keys: Vec<ContentHash> = nodes.keys().copied().collect();
    let index: BTreeMap<ContentHash, usize> =
        keys.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut parent: Vec<usize> = (0..keys.len()).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        let mut y = x;
        while p[y] != r {
            let n = p[y];
            p[y] = r;
            y = n;
        }
        r
    }
    let mut buckets: BTreeMap<u64, BTreeSet<Node>> = BTreeMap::new();
    for (h, (_, t)) in &nodes {
        for k in band_keys(cfg, &text(*t)) {
            buckets.entry(k).or_default().insert((*h, *t));
        }
    }
    for members in buckets.values() {
        if members.len() > cfg.max_bucket {
            continue;
        }
        let m: Vec<&Node> = members.iter().collect();
        for i in 0..m.len() {
            for j in i + 1..m.len() {
                if similar(cfg.similarity, &text(m[i].1), &text(m[j].1)) {
                    let (a, b) = (
                        find(&mut parent, index[&m[i].0]),
                        find(&mut parent, index[&m[j].0]),
                    );
                    parent[a] = b;
                }
            }
        }
    }
    let mut best: BTreeMap<usize, Label> = BTreeMap::new();
    for (i, h) in keys.iter().enumerate() {
        let r = find(&mut parent, i);
        let l = nodes[h].0;
        let e = best.entry(r).or_insert(l);
        if l < *e {
            *e = l;
        }
    }
    let (mut passed, mut rejected) = (Vec::new(), Vec::new());
    for q in questions {
        let r = find(&mut parent, index[&q.hash]);
        let winner = best[&r].1;
        if winner == q.id {
            passed.push(q.clone());
        } else {
            rejected.push(Rejection {
                subject: Subject::Question(q.id),
                step,
                reason: Reason::Duplicate,
                detail: Detail::DuplicateOf(winner),
            });
        }
    }
    (passed, rejected)
}
