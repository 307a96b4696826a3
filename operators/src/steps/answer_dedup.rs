//! `answer_dedup`: keep one row per (question text, answer text) pair.
//!
//! **What it computes.** Rows are grouped by `(question content hash, answer content hash)`;
//! the row with the smallest key `(question id, teacher, sample)` passes, the others are
//! rejected (`duplicate_answer`, detail = the kept row). The paper found answer filtering did
//! not help, so recipes leave it off unless asked.
//!
//! **Incrementally.** A `reduce` per pair; a retracted winner hands over to the next row.

use crate::record::{Detail, Epoch, Reason, Rejection, Row, RowKey, StepId, Subject};
use crate::steps::RowOutput;
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;

pub fn answer_dedup<'s>(
    step: StepId,
    rows: VecCollection<'s, Epoch, (RowKey, Row)>,
) -> RowOutput<'s> {
    let verdicts = rows
        .clone()
        .map(|(k, r)| ((r.question.hash, r.answer.hash), k))
        .reduce(|_pair, members, output| {
            let winner = *members[0].0;
            for (k, _) in members {
                output.push(((**k, winner), 1));
            }
        })
        .map(|(_, v)| v);
    let passed = rows.semijoin(verdicts.clone().filter(|(m, w)| m == w).map(|(m, _)| m));
    let rejected = verdicts
        .filter(|(m, w)| m != w)
        .map(move |(member, winner)| Rejection {
            subject: Subject::Row(member),
            step,
            reason: Reason::DuplicateAnswer,
            detail: Detail::DuplicateOfRow(winner),
        });
    RowOutput { passed, rejected }
}

/// Batch reference for [`answer_dedup`].
pub fn reference(step: StepId, rows: &[Row]) -> (Vec<Row>, Vec<Rejection>) {
    let mut groups: BTreeMap<_, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.question.hash, r.answer.hash))
            .or_default()
            .push(r);
    }
    let (mut passed, mut rejected) = (Vec::new(), Vec::new());
    for (_, mut members) in groups {
        members.sort_by_key(|r| r.key);
        let winner = members[0].key;
        for r in members {
            if r.key == winner {
                passed.push(r.clone());
            } else {
                rejected.push(Rejection {
                    subject: Subject::Row(r.key),
                    step,
                    reason: Reason::DuplicateAnswer,
                    detail: Detail::DuplicateOfRow(winner),
                });
            }
        }
    }
    (passed, rejected)
}
