//! `score`: attach an integer score to each question.
//!
//! **What it computes.** `score = scorer(question)`; a scorer that has no answer for a question
//! rejects it (`no_score`). Built-in heuristic scorers are pure functions of the question's
//! measures; LLM scorers (difficulty grade, answer length) produce a `(content hash, score)`
//! collection from memoized calls, which [`score_from`] joins in.
//!
//! **Incrementally.** Heuristic scoring is stateless. Joined scores keep the question and score
//! arrangements (one entry per live question, ~40 bytes); a score that arrives later re-scores
//! the question, a retracted question retracts its score's effect.

use crate::record::{
    ContentHash, Detail, Domain, Epoch, Question, QuestionId, Reason, Rejection, StepId, Subject,
};
use crate::steps::StepOutput;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// Scores computed from the question itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Heuristic {
    /// Length of the question in characters.
    Chars,
    /// Length of the question in whitespace tokens.
    Tokens,
    /// A fixed score (every question ties; selection then falls back to content hash order).
    Constant(i64),
}

impl Heuristic {
    pub fn score(self, q: &Question) -> i64 {
        match self {
            Heuristic::Chars => q.chars as i64,
            Heuristic::Tokens => q.tokens as i64,
            Heuristic::Constant(c) => c,
        }
    }
}

/// Scores every question with a heuristic. `as_difficulty` also publishes it as `difficulty`.
pub fn score_heuristic<'s>(
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    scorer: Heuristic,
    as_difficulty: bool,
) -> VecCollection<'s, Epoch, (QuestionId, Question)> {
    questions.map(move |(id, mut q)| {
        let s = scorer.score(&q);
        q.score = Some(s).into();
        if as_difficulty {
            q.difficulty = Some(s).into();
        }
        (id, q)
    })
}

/// What an LLM score is keyed by: the question's text and its domain (the rubric).
pub type ScoreKey = (ContentHash, Domain);

/// Scores questions from memoized LLM answers: `scores` holds the parsed scores, `failures`
/// the reasons a score could not be had (a failed call, an unparsable answer). A question
/// with neither is pending: it waits, and neither passes nor is rejected.
pub fn score_from<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    scores: VecCollection<'s, Epoch, (ScoreKey, i64)>,
    failures: VecCollection<'s, Epoch, (ScoreKey, String)>,
    as_difficulty: bool,
) -> StepOutput<'s> {
    let by_key = questions.map(|(id, q)| ((q.hash, q.domain), (id, q)));
    let passed = by_key.clone().join_map(scores, move |_k, (id, q), s| {
        let mut q = q.clone();
        q.score = Some(*s).into();
        if as_difficulty {
            q.difficulty = Some(*s).into();
        }
        (*id, q)
    });
    let rejected = by_key.join_map(failures, move |_k, (id, _), why| Rejection {
        subject: Subject::Question(*id),
        step,
        reason: Reason::ScoreFailed,
        detail: Detail::Text(why.as_str().into()),
    });
    StepOutput { passed, rejected }
}
