//! The dataflow steps a recipe is made of.
//!
//! Each step is a function from collections to collections, with a batch reference beside it
//! that computes the same result from scratch (the oracle of its property test). Question steps
//! take `(QuestionId, Question)` and return a [`StepOutput`]: the questions that pass and the
//! rejections (with step id, reason and detail) of those that don't. Row steps do the same for
//! `(RowKey, Row)` after the teacher fan-out.

pub mod answer_dedup;
pub mod answer_select;
pub mod decontam;
pub mod dedup;
pub mod fanout;
pub mod length;
pub mod near_dedup;
pub mod score;
pub mod select;

use crate::record::{Domain, Epoch, Question, QuestionId, Rejection, Row, RowKey};
use differential_dataflow::VecCollection;

/// Questions that passed a step, and the rejections it made.
pub struct StepOutput<'s> {
    pub passed: VecCollection<'s, Epoch, (QuestionId, Question)>,
    pub rejected: VecCollection<'s, Epoch, Rejection>,
}

/// A step's verdict on one question: it passes, or it is rejected.
pub type Verdict = Result<(QuestionId, Question), Rejection>;

impl<'s> StepOutput<'s> {
    /// A step's output from a stream of verdicts (one read of it).
    pub fn from_verdicts(verdicts: VecCollection<'s, Epoch, Verdict>, name: &str) -> Self {
        let (passed, rejected) = crate::split::split(verdicts, name, |v| v);
        StepOutput { passed, rejected }
    }
}

/// Rows that passed a row step, and the rejections it made.
pub struct RowOutput<'s> {
    pub passed: VecCollection<'s, Epoch, (RowKey, Row)>,
    pub rejected: VecCollection<'s, Epoch, Rejection>,
}

/// Applies `step` to the questions of `domains` only; the others bypass it unchanged.
///
/// The paper's recipe differs per domain (code: difficulty scores and no dedup; math and
/// science: answer-length scores and exact dedup), which a flat list of steps expresses with a
/// domain scope on each step.
pub fn scoped<'s>(
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    domains: Option<Vec<Domain>>,
    step: impl FnOnce(VecCollection<'s, Epoch, (QuestionId, Question)>) -> StepOutput<'s>,
) -> StepOutput<'s> {
    match domains {
        None => step(questions),
        Some(domains) => {
            let (inside, bypass) = crate::split::split(questions, "scope", move |(id, q)| {
                if domains.contains(&q.domain) {
                    Ok((id, q))
                } else {
                    Err((id, q))
                }
            });
            let out = step(inside);
            StepOutput {
                passed: out.passed.concat(bypass),
                rejected: out.rejected,
            }
        }
    }
}
