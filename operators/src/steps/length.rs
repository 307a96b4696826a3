//! `length_guard`: drop questions longer than a token budget.
//!
//! **What it computes.** A question passes iff its whitespace-token count is at most
//! `max_tokens`; otherwise it is rejected (`too_long`, with its length and the budget). The
//! paper drops questions longer than 16,384 teacher tokens; whitespace tokens stand in until a
//! teacher tokenizer is configured.
//!
//! **Incrementally.** Stateless: each update is decided on its own, so a retraction retracts
//! exactly the verdict it caused. No state, at any scale.

use crate::record::{Detail, Epoch, Question, QuestionId, Reason, Rejection, StepId, Subject};
use crate::split::split;
use crate::steps::StepOutput;
use differential_dataflow::VecCollection;

/// The verdict for one question: `None` if it passes.
pub fn verdict(step: StepId, q: &Question, max_tokens: u32) -> Option<Rejection> {
    (q.tokens > max_tokens).then_some(Rejection {
        subject: Subject::Question(q.id),
        step,
        reason: Reason::TooLong,
        detail: Detail::Tokens {
            tokens: q.tokens,
            max: max_tokens,
        },
    })
}

pub fn length_guard<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    max_tokens: u32,
) -> StepOutput<'s> {
    let (passed, rejected) = split(questions, "length_guard", move |(id, q)| {
        match verdict(step, &q, max_tokens) {
            None => Ok((id, q)),
            Some(r) => Err(r),
        }
    });
    StepOutput { passed, rejected }
}
