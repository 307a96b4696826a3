//! `answer_select`: keep the shortest or longest k answers of each question (per teacher).
//!
//! **What it computes.** Rows are grouped by (question, teacher); within a group they are
//! ranked by answer length in characters (ascending for `shortest`, descending for `longest`;
//! ties by sample index) and the first k pass; the others are rejected (`not_selected`, detail
//! = the answer's length). The paper's ablation found that no answer filter beat keeping all
//! 16, so recipes leave it off unless asked.
//!
//! **Incrementally.** A `reduce` per group: a new or retracted answer re-ranks its group only.

use crate::record::{
    Answer, Detail, Epoch, QuestionId, Reason, Rejection, Row, RowKey, StepId, Subject, TeacherId,
};
use crate::steps::RowOutput;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keep {
    Shortest,
    Longest,
}

type Rank = (Reverse<i64>, u16);

fn rank(keep: Keep, len: u64, sample: u16) -> Rank {
    match keep {
        Keep::Shortest => (Reverse(-(len as i64)), sample),
        Keep::Longest => (Reverse(len as i64), sample),
    }
}

fn reject(step: StepId, key: RowKey, len: u64) -> Rejection {
    Rejection {
        subject: Subject::Row(key),
        step,
        reason: Reason::NotSelected,
        detail: Detail::Rank { score: len as i64 },
    }
}

/// Keeps k answers per (question, teacher); `length` measures an answer.
pub fn answer_select<'s>(
    step: StepId,
    rows: VecCollection<'s, Epoch, (RowKey, Row)>,
    keep: Keep,
    k: usize,
    length: Arc<dyn Fn(&Answer) -> u64 + Send + Sync>,
) -> RowOutput<'s> {
    let l2 = Arc::clone(&length);
    let measured = rows
        .clone()
        .map(move |(key, row)| ((key, l2(&row.answer)), row));
    let selected = measured
        .clone()
        .map(move |((key, len), _)| {
            (
                (key.question, key.teacher),
                (rank(keep, len, key.sample), key),
            )
        })
        .reduce(move |_group, members, out| {
            for ((_, key), _) in members.iter().map(|(v, r)| (*v, r)).take(k) {
                out.push((*key, 1));
            }
        })
        .map(|(_, key)| key);
    let passed = rows.semijoin(selected.clone());
    let rejected = measured
        .map(|((key, len), _)| (key, len))
        .antijoin(selected)
        .map(move |(key, len)| reject(step, key, len));
    RowOutput { passed, rejected }
}

/// Batch reference for [`answer_select`].
pub fn reference(
    step: StepId,
    rows: &[Row],
    keep: Keep,
    k: usize,
    length: &dyn Fn(&Answer) -> u64,
) -> (Vec<Row>, Vec<Rejection>) {
    let mut groups: BTreeMap<(QuestionId, TeacherId), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.key.question, r.key.teacher))
            .or_default()
            .push(r);
    }
    let (mut passed, mut rejected) = (Vec::new(), Vec::new());
    for (_, mut members) in groups {
        members.sort_by_key(|r| (rank(keep, length(&r.answer), r.key.sample), r.key));
        for (i, r) in members.into_iter().enumerate() {
            if i < k {
                passed.push(r.clone());
            } else {
                rejected.push(reject(step, r.key, length(&r.answer)));
            }
        }
    }
    (passed, rejected)
}
