//! `dedup`: keep one question per content hash (exact duplicates after normalization).
//!
//! **What it computes.** Questions are grouped by content hash; the winner of a group is the
//! minimum by `(source priority, question id)` (priority: lower wins; the question id is the
//! stable xxh3 of source and id). The winner passes; every other member is rejected
//! (`duplicate`, detail = the winner's id).
//!
//! **Incrementally.** Questions go to a worker by content hash; each worker keeps its groups
//! (hash -> members) in a hash map and, per epoch, judges every touched group before and after
//! the epoch's updates and emits the difference. When the winner is retracted, the next member
//! takes its place and its rejection is retracted. A change costs only its group, and a build
//! or a replay costs one hash-map insert per question (no sorted arrangement of the questions,
//! no semijoin arranging them again).

use crate::epoch::epoch_unary_batches;
use crate::hash::FastMap as HashMap;
use crate::record::{
    ContentHash, Detail, Epoch, Question, QuestionId, Reason, Rejection, StepId, Subject,
};
use crate::steps::{StepOutput, Verdict};
use differential_dataflow::VecCollection;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::Exchange;

/// The winner order: smaller wins.
pub fn winner_key(q: &Question) -> (u32, QuestionId) {
    (q.priority, q.id)
}

/// Exact dedup by content hash.
pub fn dedup_exact<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
) -> StepOutput<'s> {
    let mut groups = Groups::default();
    let verdicts = epoch_unary_batches(
        questions,
        Exchange::new(|u: &((QuestionId, Question), Epoch, isize)| (u.0).1.hash.0 as u64),
        "Dedup",
        move |epoch, batches, emit| {
            // The groups this epoch touches, and the verdicts of those that had members before
            // it (taken when the group is first touched); the updates go straight in.
            // (By slot: the second pass does not look the hash up again, and takes it from a
            // member: every touched group has one until its zero counts go. 4 bytes a group,
            // where (hash, slot) took 32: 64 MB per worker in a replay's first epoch.)
            let mut touched: Vec<u32> = Vec::new();
            let mut before: HashMap<ContentHash, Vec<(Verdict, isize)>> = HashMap::default();
            // Room for as many new groups as updates, made once (a run's first epoch brings
            // millions: grown by doubling, each step rehashes or copies into fresh pages).
            let n: usize = batches.iter().map(Vec::len).sum();
            groups.reserve(n);
            touched.reserve(n);
            // The questions move from the batches into the groups (each batch freed once read:
            // in a run's first epoch the stash and the groups are not both whole at once).
            let updates = std::mem::take(batches)
                .into_iter()
                .flat_map(|batch| batch.into_iter().map(|((_, q), _, r)| (q, r)));
            for (q, r) in updates {
                let (slot, group) = groups.entry(q.hash);
                if group.touched != epoch {
                    group.touched = epoch;
                    touched.push(slot);
                    if !group.members.is_empty() {
                        let mut v = Vec::new();
                        verdicts(step, &group.members, &mut v);
                        before.insert(q.hash, v);
                    }
                }
                match group.members.iter_mut().find(|(m, _)| *m == q) {
                    Some(slot) => slot.1 += r,
                    None => group.members.push((q, r)),
                }
            }
            let mut after = Vec::new();
            for slot in touched {
                let group = groups.slot(slot);
                let hash = group.members[0].0.hash;
                group.members.retain(|(_, c)| *c != 0);
                after.clear();
                verdicts(step, &group.members, &mut after);
                if group.members.is_empty() {
                    groups.remove(hash);
                }
                if let Some(was) = before.remove(&hash) {
                    after.extend(was.into_iter().map(|(v, r)| (v, -r)));
                    differential_dataflow::consolidation::consolidate(&mut after);
                }
                for (v, r) in after.drain(..) {
                    emit(v, r);
                }
            }
        },
    );
    StepOutput::from_verdicts(verdicts, "dedup")
}

/// The questions of one content hash, and the last epoch that touched them.
struct Group {
    touched: Epoch,
    members: SmallVec<[(Question, isize); 1]>,
}

/// A worker's groups: a hash map from content hash to a slot, and the slots in one vector.
/// The map's buckets (a quarter to a half of them empty) then cost 24 bytes, not a group's
/// 120: at the paper's scale, several hundred megabytes per worker.
#[derive(Default)]
struct Groups {
    index: HashMap<ContentHash, u32>,
    slots: Vec<Group>,
    free: Vec<u32>,
}

impl Groups {
    /// Makes room for `n` more groups.
    fn reserve(&mut self, n: usize) {
        let new = n.saturating_sub(self.free.len());
        self.index.reserve(n);
        self.slots.reserve(new);
    }

    /// The group of `hash` (made empty if there is none) and its slot.
    fn entry(&mut self, hash: ContentHash) -> (u32, &mut Group) {
        let slots = &mut self.slots;
        let free = &mut self.free;
        let slot = *self.index.entry(hash).or_insert_with(|| {
            free.pop().unwrap_or_else(|| {
                slots.push(Group {
                    touched: Epoch::MAX,
                    members: SmallVec::new(),
                });
                (slots.len() - 1) as u32
            })
        });
        (slot, &mut self.slots[slot as usize])
    }

    /// The group in `slot` (as [`Groups::entry`] returned it, the group not removed since).
    fn slot(&mut self, slot: u32) -> &mut Group {
        &mut self.slots[slot as usize]
    }

    fn remove(&mut self, hash: ContentHash) {
        if let Some(slot) = self.index.remove(&hash) {
            let g = &mut self.slots[slot as usize];
            g.touched = Epoch::MAX;
            g.members = SmallVec::new();
            self.free.push(slot);
        }
    }
}

/// The verdicts of one group of questions with equal content hash (members with their counts).
fn verdicts(step: StepId, members: &[(Question, isize)], out: &mut Vec<(Verdict, isize)>) {
    let Some(winner) = members.iter().map(|(q, _)| winner_key(q)).min() else {
        return;
    };
    let mut losers: Vec<QuestionId> = Vec::new();
    for (q, c) in members {
        if winner_key(q) == winner {
            out.push((Ok((q.id, q.clone())), *c));
        } else {
            losers.push(q.id);
        }
    }
    // One rejection per distinct member, whatever its multiplicity.
    losers.sort();
    losers.dedup();
    for member in losers {
        out.push((
            Err(Rejection {
                subject: Subject::Question(member),
                step,
                reason: Reason::Duplicate,
                detail: Detail::DuplicateOf(winner.1),
            }),
            1,
        ));
    }
}

pub fn reference(step: StepId, questions: &[Question]) -> (Vec<Question>, Vec<Rejection>) {
    let mut groups: BTreeMap<_, Vec<&Question>> = BTreeMap::new();
    for q in questions {
        groups.entry(q.hash).or_default().push(q);
    }
    let (mut passed, mut rejected) = (Vec::new(), Vec::new());
    for (_, mut members) in groups {
        members.sort_by_key(|q| winner_key(q));
        let winner = members[0].id;
        for q in members {
            if q.id == winner {
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
    }
    (passed, rejected)
}
