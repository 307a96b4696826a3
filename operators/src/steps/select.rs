//! `select`: keep questions by score threshold, top-N per group, or a fixed-size uniform sample.
//!
//! **What it computes.**
//! - `threshold`: a question passes iff `min <= score <= max` (either bound optional).
//! - `top_n`: per group (all, source or domain), the `n` questions with the highest score; ties
//!   go to the smaller content hash, then the smaller question id. This is the paper's filter
//!   ("keep the top 30k per source"), which is global: new data can push a selected question out.
//! - `sample`: per group, the `n` questions with the smallest content hashes: a uniform random
//!   sample (the hash is a random function of the text) that is deterministic and changes
//!   minimally as data arrives (a new question enters only if it beats the current n-th hash).
//!
//! Questions without a score are rejected (`no_score`) by `threshold` and `top_n`.
//!
//! **Incrementally.** `threshold` is stateless. `top_n` and `sample` run in two rounds of an
//! epoch operator: each worker keeps its share of every group (by question id) in rank order
//! and selects its local top n; the group's worker selects the top n of those. Per epoch, a
//! touched group's selection is recomputed from its first n members (cost linear in n, once
//! per epoch) and only the verdicts that changed are emitted. A build or a replay costs a sort
//! of each group's members (kept as that sorted vector: see [`SortedCounts`]), spread over
//! every worker.

use crate::counts::SortedCounts;
use crate::epoch::epoch_unary_batches;
use crate::record::{
    ContentHash, Detail, Domain, Epoch, Question, QuestionId, Reason, Rejection, SourceId, StepId,
    Subject,
};
use crate::split::split;
use crate::steps::{StepOutput, Verdict};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract};

/// What a selection ranks within.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupBy {
    All,
    Source,
    Domain,
}

/// A group's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupKey {
    All,
    Source(SourceId),
    Domain(Domain),
}

impl GroupBy {
    pub fn key(self, q: &Question) -> GroupKey {
        match self {
            GroupBy::All => GroupKey::All,
            GroupBy::Source => GroupKey::Source(q.source),
            GroupBy::Domain => GroupKey::Domain(q.domain),
        }
    }
}

/// How many questions each group keeps: a default and per-group overrides. A group with neither
/// keeps none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSizes {
    pub default: Option<u64>,
    pub per_group: BTreeMap<GroupKey, u64>,
}

impl GroupSizes {
    pub fn uniform(n: u64) -> Self {
        GroupSizes {
            default: Some(n),
            per_group: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &GroupKey) -> u64 {
        self.per_group
            .get(key)
            .copied()
            .or(self.default)
            .unwrap_or(0)
    }
}

/// A selection rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    Threshold { min: Option<i64>, max: Option<i64> },
    TopN { per: GroupBy, n: GroupSizes },
    Sample { per: GroupBy, n: GroupSizes },
}

/// Rank key within a group: smaller ranks first.
type Rank = (Reverse<i64>, ContentHash, QuestionId);

fn rank(selection: &Selection, q: &Question) -> Rank {
    match selection {
        Selection::Sample { .. } => (Reverse(0), q.hash, q.id),
        _ => (Reverse(q.score.unwrap_or(i64::MIN)), q.hash, q.id),
    }
}

fn threshold_verdict(
    step: StepId,
    q: &Question,
    min: Option<i64>,
    max: Option<i64>,
) -> Option<Rejection> {
    let reject = |reason, score, bound| Rejection {
        subject: Subject::Question(q.id),
        step,
        reason,
        detail: Detail::Score { score, bound },
    };
    match q.score.get() {
        None => Some(no_score(step, q.id)),
        Some(s) if min.is_some_and(|m| s < m) => {
            Some(reject(Reason::BelowThreshold, s, min.unwrap()))
        }
        Some(s) if max.is_some_and(|m| s > m) => {
            Some(reject(Reason::AboveThreshold, s, max.unwrap()))
        }
        Some(_) => None,
    }
}

fn no_score(step: StepId, id: QuestionId) -> Rejection {
    Rejection {
        subject: Subject::Question(id),
        step,
        reason: Reason::NoScore,
        detail: Detail::None,
    }
}

fn not_selected(step: StepId, id: QuestionId, score: i64) -> Rejection {
    Rejection {
        subject: Subject::Question(id),
        step,
        reason: Reason::NotSelected,
        detail: Detail::Rank { score },
    }
}

/// Applies a selection rule.
pub fn select<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    selection: Selection,
) -> StepOutput<'s> {
    match selection {
        Selection::Threshold { min, max } => {
            let (passed, rejected) =
                split(questions, "select", move |(id, q)| match threshold_verdict(
                    step, &q, min, max,
                ) {
                    None => Ok((id, q)),
                    Some(r) => Err(r),
                });
            StepOutput { passed, rejected }
        }
        Selection::TopN { per, ref n } | Selection::Sample { per, ref n } => {
            // Each stream below is read by one operator: a second reader would make timely copy
            // every update for it (the scored questions are most of the input).
            let (scored, unscored) = if matches!(selection, Selection::TopN { .. }) {
                let (scored, unscored) = split(questions, "select", move |(id, q)| {
                    if q.score.is_some() {
                        Ok((id, q))
                    } else {
                        Err(no_score(step, id))
                    }
                });
                (scored, Some(unscored))
            } else {
                (questions, None)
            };
            let sizes = Arc::new(n.clone());
            let by_score = matches!(selection, Selection::TopN { .. });
            // Two rounds of the same top-n: each worker first ranks its own share of each group
            // (by question id), then the group's worker ranks the union of those local
            // selections. The global top n is within that union, and what a worker does not
            // select locally is not selected at all: both rounds' rejections together are
            // exactly the questions not selected. The first round spreads the work of a large
            // group over every worker.
            let by_id = Exchange::new(|u: &((QuestionId, Question), Epoch, isize)| (u.0).0 .0);
            let local = ranked(
                by_score,
                scored,
                by_id,
                "SelectLocal",
                step,
                per,
                Arc::clone(&sizes),
            );
            let local = StepOutput::from_verdicts(local, "select");
            let by_group = Exchange::new(move |u: &((QuestionId, Question), Epoch, isize)| {
                group_route(per.key(&(u.0).1))
            });
            let global = ranked(
                by_score,
                local.passed,
                by_group,
                "SelectGlobal",
                step,
                per,
                sizes,
            );
            let global = StepOutput::from_verdicts(global, "select");
            let (passed, mut rejected) = (global.passed, local.rejected.concat(global.rejected));
            if let Some(unscored) = unscored {
                rejected = rejected.concat(unscored);
            }
            StepOutput { passed, rejected }
        }
    }
}

/// [`top_n`] in the order of the rule (`by_score`: top-n; otherwise the sample order).
fn ranked<'s, P>(
    by_score: bool,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    pact: P,
    name: &str,
    step: StepId,
    per: GroupBy,
    sizes: Arc<GroupSizes>,
) -> VecCollection<'s, Epoch, Verdict>
where
    P: ParallelizationContract<Epoch, Vec<((QuestionId, Question), Epoch, isize)>>,
{
    if by_score {
        top_n::<P, true>(questions, pact, name, step, per, sizes)
    } else {
        top_n::<P, false>(questions, pact, name, step, per, sizes)
    }
}

/// Where a group's second round runs.
fn group_route(key: GroupKey) -> u64 {
    match key {
        GroupKey::All => 0,
        GroupKey::Source(s) => s.0,
        GroupKey::Domain(d) => d as u64,
    }
}

/// A member of a group: a question, ordered by its rank first ([`rank`]: by score when
/// `BY_SCORE`, the top-n order; by hash and id only, the sample order), then by the whole
/// question: the order of `(rank, question)`, without keeping the rank (32 bytes a member,
/// some 126 MB at the paper's 4M questions).
#[derive(Clone, PartialEq, Eq)]
struct Member<const BY_SCORE: bool>(Question);

impl<const BY_SCORE: bool> Member<BY_SCORE> {
    fn rank(&self) -> Rank {
        let score = if BY_SCORE {
            self.0.score.unwrap_or(i64::MIN)
        } else {
            0
        };
        (Reverse(score), self.0.hash, self.0.id)
    }
}

impl<const BY_SCORE: bool> Ord for Member<BY_SCORE> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl<const BY_SCORE: bool> PartialOrd for Member<BY_SCORE> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One group's members, in rank order, with the ones currently selected. (The members as a
/// run's first epoch brought them, sorted, and the changes since: a B-tree of a first
/// epoch's 1.9M members per worker at the paper's scale took 170 MB of fresh pages more.)
struct Ranked<const BY_SCORE: bool> {
    members: SortedCounts<Member<BY_SCORE>>,
    selected: BTreeSet<Member<BY_SCORE>>,
}

impl<const BY_SCORE: bool> Default for Ranked<BY_SCORE> {
    fn default() -> Self {
        Ranked {
            members: SortedCounts::default(),
            selected: BTreeSet::new(),
        }
    }
}

/// Top-n per group as an epoch operator: per epoch, the updates go into their groups' members,
/// each touched group's first `n` is recomputed and compared with the ones selected before, and
/// the verdicts that changed are emitted as differences: an update of a member whose verdict
/// stayed emits that verdict with the update's diff; a member that entered or left the
/// selection retracts its old verdict and asserts its new one.
fn top_n<'s, P, const BY_SCORE: bool>(
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    pact: P,
    name: &str,
    step: StepId,
    per: GroupBy,
    sizes: Arc<GroupSizes>,
) -> VecCollection<'s, Epoch, Verdict>
where
    P: ParallelizationContract<Epoch, Vec<((QuestionId, Question), Epoch, isize)>>,
{
    let mut groups: BTreeMap<GroupKey, Ranked<BY_SCORE>> = BTreeMap::new();
    epoch_unary_batches(questions, pact, name, move |_epoch, batches, emit| {
        let verdict = |m: &Member<BY_SCORE>, selected: bool| -> Verdict {
            if selected {
                Ok((m.0.id, m.0.clone()))
            } else {
                Err(not_selected(step, m.0.id, m.0.score.unwrap_or(0)))
            }
        };
        // Groups that have no member yet (all of them in a run's first epoch) take their
        // members out of the batches (moved, each batch freed once read), are sorted and kept
        // as that vector (see [`SortedCounts`]) and emit each member's verdict from the group.
        // The other updates stay for the passes below.
        // Each fresh group's Vec is sized first (by a count of its members): millions of
        // members grown by doubling cost a copy and fresh zeroed pages per doubling.
        let mut sizes_of: BTreeMap<GroupKey, usize> = BTreeMap::new();
        for u in batches.iter().flatten() {
            let key = per.key(&(u.0).1);
            if groups.get(&key).is_none_or(|g| g.members.is_empty()) {
                *sizes_of.entry(key).or_default() += 1;
            }
        }
        let mut fresh: BTreeMap<GroupKey, Vec<(Member<BY_SCORE>, isize)>> = sizes_of
            .into_iter()
            .map(|(key, n)| (key, Vec::with_capacity(n)))
            .collect();
        let mut rest: Vec<((QuestionId, Question), Epoch, isize)> = Vec::new();
        for batch in std::mem::take(batches) {
            for u in batch {
                let key = per.key(&(u.0).1);
                if groups.get(&key).is_none_or(|g| g.members.is_empty()) {
                    let ((_, q), _, r) = u;
                    fresh.entry(key).or_default().push((Member(q), r));
                } else {
                    rest.push(u);
                }
            }
        }
        for (key, mut members) in fresh {
            members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            differential_dataflow::consolidation::consolidate(&mut members);
            if members.is_empty() {
                continue;
            }
            let keep = sizes.get(&key) as usize;
            let group = groups.entry(key).or_default();
            group.members = SortedCounts::from_sorted(members);
            group.selected = group.members.keys().take(keep).cloned().collect();
            for (i, (m, c)) in group.members.iter().enumerate() {
                emit(verdict(m, i < keep), c);
            }
        }
        let updates = || rest.iter().map(|((_, q), _, r)| (q, *r));
        // First pass: the counts go into the groups.
        let mut touched: BTreeSet<GroupKey> = BTreeSet::new();
        for (q, r) in updates() {
            let key = per.key(q);
            touched.insert(key);
            groups
                .entry(key)
                .or_default()
                .members
                .add(Member(q.clone()), r);
        }
        // Each touched group's new selection; the members that entered or left it.
        let mut moved: BTreeMap<GroupKey, BTreeMap<Member<BY_SCORE>, isize>> = BTreeMap::new();
        let mut was_selected: BTreeMap<GroupKey, BTreeSet<Member<BY_SCORE>>> = BTreeMap::new();
        for key in &touched {
            let group = groups.get_mut(key).expect("touched");
            let keep = sizes.get(key) as usize;
            let now: BTreeSet<Member<BY_SCORE>> =
                group.members.keys().take(keep).cloned().collect();
            let changed: BTreeMap<Member<BY_SCORE>, isize> = now
                .symmetric_difference(&group.selected)
                .map(|m| (m.clone(), 0))
                .collect();
            moved.insert(*key, changed);
            was_selected.insert(*key, std::mem::replace(&mut group.selected, now));
        }
        // Second pass: an update of a member whose verdict stayed is that verdict's change;
        // the members that moved are settled from their counts before and after.
        // Past the last member selected before or now, a member is rejected both times (most
        // of a large group): no lookups.
        let bounds: BTreeMap<GroupKey, Option<Member<BY_SCORE>>> = touched
            .iter()
            .map(|key| {
                let now = groups[key].selected.last();
                (*key, now.max(was_selected[key].last()).cloned())
            })
            .collect();
        for (q, r) in updates() {
            let key = per.key(q);
            let m = Member(q.clone());
            if bounds[&key].as_ref().is_none_or(|b| m > *b) {
                emit(verdict(&m, false), r);
            } else if let Some(delta) = moved.get_mut(&key).and_then(|c| c.get_mut(&m)) {
                *delta += r;
            } else {
                let selected = groups.get(&key).is_some_and(|g| g.selected.contains(&m));
                emit(verdict(&m, selected), r);
            }
        }
        for (key, members) in moved {
            let group = groups.get(&key).expect("touched");
            let was = &was_selected[&key];
            for (m, delta) in members {
                let after = group.members.get(&m);
                let before = after - delta;
                if before != 0 {
                    emit(verdict(&m, was.contains(&m)), -before);
                }
                if after != 0 {
                    emit(verdict(&m, group.selected.contains(&m)), after);
                }
            }
        }
        for key in touched {
            if groups.get(&key).is_some_and(|g| g.members.is_empty()) {
                groups.remove(&key);
            }
        }
    })
}

/// Batch reference: the questions that pass, and the rejections, for accumulated `questions`.
pub fn reference(
    step: StepId,
    questions: &[Question],
    selection: &Selection,
) -> (Vec<Question>, Vec<Rejection>) {
    let mut passed = Vec::new();
    let mut rejected = Vec::new();
    match selection {
        Selection::Threshold { min, max } => {
            for q in questions {
                match threshold_verdict(step, q, *min, *max) {
                    None => passed.push(q.clone()),
                    Some(r) => rejected.push(r),
                }
            }
        }
        Selection::TopN { per, n } | Selection::Sample { per, n } => {
            let mut groups: BTreeMap<GroupKey, Vec<&Question>> = BTreeMap::new();
            for q in questions {
                if matches!(selection, Selection::TopN { .. }) && q.score.is_none() {
                    rejected.push(no_score(step, q.id));
                } else {
                    groups.entry(per.key(q)).or_default().push(q);
                }
            }
            for (key, mut members) in groups {
                members.sort_by_key(|q| rank(selection, q));
                let keep = n.get(&key) as usize;
                for (i, q) in members.into_iter().enumerate() {
                    if i < keep {
                        passed.push(q.clone());
                    } else {
                        rejected.push(not_selected(step, q.id, q.score.unwrap_or(0)));
                    }
                }
            }
        }
    }
    (passed, rejected)
}
