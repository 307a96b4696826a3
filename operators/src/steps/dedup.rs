//! `dedup`: keep one question per content hash (exact duplicates after normalization).
//!
//! **What it computes.** Questions are grouped by content hash; the winner of a group is the
//! minimum by `(source priority, question id)` (priority: lower wins; the question id is the
//! stable xxh3 of source and id). The winner passes; every other member is rejected
//! (`duplicate`, detail = the winner's id).
//!
//! **Incrementally.** A differential `reduce` per content hash. When the winner is retracted,
//! the next member takes its place and its rejection is retracted. State: one ~40-byte entry
//! per live question, grouped by hash; a change costs only its group.

use crate::record::{Detail, Epoch, Question, QuestionId, Reason, Rejection, StepId, Subject};
use crate::steps::StepOutput;
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;

/// The winner order: smaller wins.
pub fn winner_key(q: &Question) -> (u32, QuestionId) {
    (q.priority, q.id)
}

/// Exact dedup by content hash.
pub fn dedup_exact<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
) -> StepOutput<'s> {
    // For every member: (member, winner of its group).
    let verdicts = questions
        .clone()
        .map(|(_, q)| (q.hash, winner_key(&q)))
        .reduce(|_hash, members, output| {
            let winner = (members[0].0).1;
            for ((_, id), _count) in members {
                output.push(((*id, winner), 1));
            }
        })
        .map(|(_hash, (member, winner))| (member, winner));
    let passed = questions.semijoin(verdicts.clone().filter(|(m, w)| m == w).map(|(m, _)| m));
    let rejected = verdicts
        .filter(|(m, w)| m != w)
        .map(move |(member, winner)| Rejection {
            subject: Subject::Question(member),
            step,
            reason: Reason::Duplicate,
            detail: Detail::DuplicateOf(winner),
        });
    StepOutput { passed, rejected }
}

/// Batch reference for [`dedup_exact`].
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
