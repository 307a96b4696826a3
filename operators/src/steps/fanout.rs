//! `fanout`: k samples per question from a teacher; each sample becomes a dataset row.
//!
//! **What it computes.** For every question and `sample in 0..k`, the row
//! `(question, teacher, sample)` with the teacher's answer. Where the answer comes from:
//! - `synthetic`: generated from the question's content hash and the sample index (a pure
//!   function, so no state and nothing to store; the sink renders the text);
//! - keyed answers (`replay` files, and memoized LLM completions): an answer collection keyed by
//!   `(lookup key, sample)`, joined to the wanted rows. A wanted row without an answer is
//!   rejected (`no_answer`) until its answer arrives, which retracts the rejection.
//!
//! **Incrementally.** Synthetic: stateless. Keyed: a join; state is the live wanted rows
//! (k per selected question) and the answers. A retracted question retracts its rows without
//! touching the answers, so if it returns, its answers are still there: nothing is paid twice.

use crate::hash;
use crate::record::{
    Answer, AnswerText, ContentHash, Detail, Epoch, Question, QuestionId, Reason, Rejection, Row,
    RowKey, StepId, Subject, TeacherId,
};
use crate::steps::RowOutput;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// How answers are looked up for a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LookupKey {
    Id(QuestionId),
    Hash(ContentHash),
}

/// Which key a keyed teacher uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupBy {
    Id,
    Hash,
}

impl LookupBy {
    pub fn key(self, q: &Question) -> LookupKey {
        match self {
            LookupBy::Id => LookupKey::Id(q.id),
            LookupBy::Hash => LookupKey::Hash(q.hash),
        }
    }
}

/// Where a teacher's answers come from.
pub enum Answers<'s> {
    /// Deterministic text of about `words` words.
    Synthetic { words: u32 },
    /// An answer collection keyed by `(lookup key, sample)`.
    Keyed {
        by: LookupBy,
        answers: VecCollection<'s, Epoch, ((LookupKey, u16), Answer)>,
        missing: Missing<'s>,
    },
}

/// What a wanted row without an answer means.
pub enum Missing<'s> {
    /// The answer does not exist (a replay file): reject the row (`no_answer`).
    Reject,
    /// The answer is on its way (an LLM call): the row waits; `failures` holds the reasons of
    /// calls that failed, which reject their rows (`teacher_failed`).
    Pending {
        failures: VecCollection<'s, Epoch, ((LookupKey, u16), String)>,
    },
}

/// The synthetic teacher's answer for one sample (its text is rendered by [`synthetic_text`]).
pub fn synthetic_answer(question: ContentHash, sample: u16, words: u32) -> Answer {
    let mut bytes = [0u8; 22];
    bytes[..16].copy_from_slice(&question.0.to_le_bytes());
    bytes[16..18].copy_from_slice(&sample.to_le_bytes());
    bytes[18..22].copy_from_slice(&words.to_le_bytes());
    Answer {
        hash: ContentHash(hash::hash128(&bytes)),
        text: AnswerText::Synthetic {
            question,
            sample,
            words,
        },
    }
}

const VOCABULARY: &[&str] = &[
    "let",
    "we",
    "consider",
    "the",
    "case",
    "where",
    "so",
    "then",
    "therefore",
    "value",
    "equals",
    "since",
    "first",
    "next",
    "check",
    "that",
    "holds",
    "sum",
    "of",
    "and",
    "is",
    "wait",
    "but",
    "hmm",
    "compute",
    "term",
    "gives",
    "answer",
    "each",
    "step",
    "thus",
    "if",
    "not",
    "assume",
    "number",
    "function",
    "returns",
    "loop",
    "over",
    "array",
    "energy",
    "force",
    "mass",
    "field",
];

/// The synthetic teacher's text: a reasoning-shaped answer of `words` words, a pure function of
/// its inputs (xorshift over a small vocabulary), ending in a boxed final answer.
pub fn synthetic_text(question: ContentHash, sample: u16, words: u32) -> String {
    let mut state = (question.0 as u64) ^ ((question.0 >> 64) as u64) ^ ((sample as u64) << 48);
    state |= 1;
    let mut out = String::with_capacity(words as usize * 7 + 32);
    out.push_str("<think>\n");
    for i in 0..words {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if i > 0 {
            out.push(if i % 16 == 0 { '\n' } else { ' ' });
        }
        out.push_str(VOCABULARY[(state % VOCABULARY.len() as u64) as usize]);
    }
    out.push_str("\n</think>\n\nThe answer is $\\boxed{");
    out.push_str(&(state % 1000).to_string());
    out.push_str("}$.");
    out
}

fn row(q: &Question, teacher: TeacherId, sample: u16, answer: Answer) -> (RowKey, Row) {
    let key = RowKey {
        question: q.id,
        teacher,
        sample,
    };
    (
        key,
        Row {
            key,
            question: q.clone(),
            answer,
        },
    )
}

/// Fans each question out to `samples` rows answered by `teacher`.
pub fn fanout<'s>(
    step: StepId,
    questions: VecCollection<'s, Epoch, (QuestionId, Question)>,
    teacher: TeacherId,
    samples: u16,
    answers: Answers<'s>,
) -> RowOutput<'s> {
    match answers {
        Answers::Synthetic { words } => {
            let scope = questions.scope();
            let passed = questions.flat_map(move |(_, q)| {
                (0..samples)
                    .map(|s| row(&q, teacher, s, synthetic_answer(q.hash, s, words)))
                    .collect::<Vec<_>>()
            });
            let rejected =
                differential_dataflow::collection::concatenate(scope, std::iter::empty());
            RowOutput { passed, rejected }
        }
        Answers::Keyed {
            by,
            answers,
            missing,
        } => {
            let wanted = questions.flat_map(move |(_, q)| {
                (0..samples)
                    .map(|s| ((by.key(&q), s), q.clone()))
                    .collect::<Vec<_>>()
            });
            let passed = wanted
                .clone()
                .join_map(answers.clone(), move |(_, s), q, a| {
                    row(q, teacher, *s, a.clone())
                });
            let reject = move |s: u16, q: &Question, reason: Reason, detail: Detail| Rejection {
                subject: Subject::Row(RowKey {
                    question: q.id,
                    teacher,
                    sample: s,
                }),
                step,
                reason,
                detail,
            };
            let rejected = match missing {
                Missing::Reject => wanted
                    .antijoin(answers.map(|(k, _)| k).distinct())
                    .map(move |((_, s), q)| reject(s, &q, Reason::NoAnswer, Detail::None)),
                Missing::Pending { failures } => {
                    wanted.join_map(failures, move |(_, s), q, why| {
                        reject(
                            *s,
                            q,
                            Reason::TeacherFailed,
                            Detail::Text(why.as_str().into()),
                        )
                    })
                }
            };
            RowOutput { passed, rejected }
        }
    }
}

/// Batch reference for [`fanout`] with keyed answers (`answers` accumulated, one per key).
pub fn reference_keyed(
    step: StepId,
    questions: &[Question],
    teacher: TeacherId,
    samples: u16,
    by: LookupBy,
    answers: &std::collections::BTreeMap<(LookupKey, u16), Vec<Answer>>,
) -> (Vec<Row>, Vec<Rejection>) {
    let (mut rows, mut rejected) = (Vec::new(), Vec::new());
    for q in questions {
        for s in 0..samples {
            match answers.get(&(by.key(q), s)) {
                Some(list) if !list.is_empty() => {
                    for a in list {
                        rows.push(row(q, teacher, s, a.clone()).1);
                    }
                }
                _ => rejected.push(Rejection {
                    subject: Subject::Row(RowKey {
                        question: q.id,
                        teacher,
                        sample: s,
                    }),
                    step,
                    reason: Reason::NoAnswer,
                    detail: Detail::None,
                }),
            }
        }
    }
    (rows, rejected)
}
