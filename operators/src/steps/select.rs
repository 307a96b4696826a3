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
//! **Incrementally.** `threshold` is stateless. `top_n` and `sample` are a differential
//! `reduce` per group: state is one ~40-byte entry per live question of the group, and a change
//! re-ranks only its group (cost linear in the group, paid once per epoch, not per update).

use crate::record::{
    ContentHash, Detail, Domain, Epoch, Question, QuestionId, Reason, Rejection, SourceId, StepId,
    Subject,
};
use crate::steps::StepOutput;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

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
    match q.score {
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

fn not_selected(step: StepId, q: &Question) -> Rejection {
    Rejection {
        subject: Subject::Question(q.id),
        step,
        reason: Reason::NotSelected,
        detail: Detail::Rank {
            score: q.score.unwrap_or(0),
        },
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
            let rejected = questions
                .clone()
                .flat_map(move |(_, q)| threshold_verdict(step, &q, min, max));
            let passed =
                questions.filter(move |(_, q)| threshold_verdict(step, q, min, max).is_none());
            StepOutput { passed, rejected }
        }
        Selection::TopN { per, ref n } | Selection::Sample { per, ref n } => {
            let needs_score = matches!(selection, Selection::TopN { .. });
            let (scored, unscored) = if needs_score {
                (
                    questions.clone().filter(|(_, q)| q.score.is_some()),
                    Some(questions.clone().filter(|(_, q)| q.score.is_none())),
                )
            } else {
                (questions.clone(), None)
            };
            let sizes = Arc::new(n.clone());
            let rule = Arc::new(selection.clone());
            let selected = scored
                .clone()
                .map(move |(_, q)| (per.key(&q), rank(&rule, &q)))
                .reduce(move |group, ranks, output| {
                    let keep = sizes.get(group) as usize;
                    for (r, _count) in ranks.iter().take(keep) {
                        output.push((r.2, 1));
                    }
                })
                .map(|(_group, id)| id);
            let passed = scored.clone().semijoin(selected);
            // Every other scored question (an antijoin would arrange them all a second time).
            let mut rejected = scored
                .concat(passed.clone().negate())
                .map(move |(_, q)| not_selected(step, &q));
            if let Some(unscored) = unscored {
                rejected = rejected.concat(unscored.map(move |(id, _)| no_score(step, id)));
            }
            StepOutput { passed, rejected }
        }
    }
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
                        rejected.push(not_selected(step, q));
                    }
                }
            }
        }
    }
    (passed, rejected)
}
