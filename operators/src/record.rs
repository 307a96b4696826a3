//! The records that flow through thoughtflow's dataflows.
//!
//! Dataflow records carry ids, hashes, scores and lengths only; question and answer texts live in
//! a content-addressed store ([`TextLookup`](crate::text::TextLookup)) keyed by [`TextRef`] and are joined
//! in by the sink (DESIGN.md decision 3). The exceptions are small, rare collections (benchmark
//! items, contamination matches, rejections of unparsable input), which carry their strings.
//!
//! Every record is `Ord` (differential dataflow consolidates by sorting), so scores are integers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An epoch: one batch of source input (a file, a span of Kafka offsets).
pub type Epoch = u64;

/// Identity of a question: xxh3-64 of `(source name, external id)`, see [`crate::hash::question_id`].
///
/// Upserts are keyed by it: a re-sent id replaces the question, a tombstone deletes it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct QuestionId(pub u64);

/// xxh3-128 of normalized text (see [`crate::hash::content_hash`]): equal for exact duplicates.
///
/// Aligned to 8 bytes, not 16 (`packed(8)`): records that carry it (a question carries two)
/// are then not padded to a multiple of 16, which at the paper's scale is a sixth of every
/// copy of the question stream. Read its value by copy (`h.0`), not by reference.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[repr(C, packed(8))]
pub struct ContentHash(pub u128);

/// xxh3-128 of the raw text bytes: the key of a text in the content-addressed store.
///
/// Aligned to 8 bytes, not 16 (`packed(8)`): records that carry it (a question carries two)
/// are then not padded to a multiple of 16, which at the paper's scale is a sixth of every
/// copy of the question stream. Read its value by copy (`h.0`), not by reference.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[repr(C, packed(8))]
pub struct TextRef(pub u128);

/// Identity of a source (a file source or a Kafka topic): xxh3-64 of its name.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SourceId(pub u64);

/// Position of a step in its recipe (0-based). Ingest uses [`StepId::INGEST`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct StepId(pub u16);

impl StepId {
    /// Rejections made before any step runs (unparsable input).
    pub const INGEST: StepId = StepId(u16::MAX);
}

/// Index of a teacher in its recipe's teacher list.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TeacherId(pub u16);

macro_rules! hex_display {
    ($($t:ty, $w:literal);*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:0", $w, "x}"), { self.0 })
            }
        }
    )*};
}
hex_display!(QuestionId, 16; ContentHash, 32; TextRef, 32; SourceId, 16);

/// The three domains of the OpenThoughts3 recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Domain {
    Math,
    Code,
    Science,
}

impl Domain {
    pub const ALL: [Domain; 3] = [Domain::Math, Domain::Code, Domain::Science];

    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Math => "math",
            Domain::Code => "code",
            Domain::Science => "science",
        }
    }

    /// Parses `math`, `code` or `science` (case-insensitive).
    pub fn parse(s: &str) -> Option<Domain> {
        match s.trim().to_ascii_lowercase().as_str() {
            "math" => Some(Domain::Math),
            "code" => Some(Domain::Code),
            "science" => Some(Domain::Science),
            _ => None,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A question as the dataflow sees it: no text, only its references and measures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Question {
    pub id: QuestionId,
    pub source: SourceId,
    /// Dedup priority of the source: lower wins.
    pub priority: u32,
    pub domain: Domain,
    /// Hash of the normalized text (dedup, sampling, memoization key).
    pub hash: ContentHash,
    /// The raw text in the store.
    pub text: TextRef,
    /// Whitespace-separated tokens of the raw text.
    pub tokens: u32,
    /// Unicode scalar values of the raw text.
    pub chars: u32,
    /// Set by `score` steps; `select` reads it.
    pub score: OptI64,
    /// Set by difficulty scorers; published as the dataset's `difficulty` column.
    pub difficulty: OptI64,
}

/// An `Option<i64>` in 8 bytes (`None` is `i64::MIN`, so `Some(i64::MIN)` is kept as
/// `i64::MIN + 1`), ordered, printed and serialized as the `Option` is. A question is held
/// once per arranged step: at the paper's 4M questions the two options' 16 bytes of tags
/// were some 200 MB.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OptI64(i64);

impl OptI64 {
    pub const NONE: OptI64 = OptI64(i64::MIN);

    pub fn get(self) -> Option<i64> {
        (self != Self::NONE).then_some(self.0)
    }

    pub fn is_some(self) -> bool {
        self != Self::NONE
    }

    pub fn is_none(self) -> bool {
        self == Self::NONE
    }

    pub fn unwrap_or(self, default: i64) -> i64 {
        self.get().unwrap_or(default)
    }
}

impl Default for OptI64 {
    fn default() -> Self {
        Self::NONE
    }
}

impl From<Option<i64>> for OptI64 {
    fn from(v: Option<i64>) -> Self {
        match v {
            None => Self::NONE,
            Some(x) => OptI64(x.max(i64::MIN + 1)),
        }
    }
}

impl From<OptI64> for Option<i64> {
    fn from(v: OptI64) -> Self {
        v.get()
    }
}

impl std::fmt::Debug for OptI64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl Serialize for OptI64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for OptI64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<i64>::deserialize(d).map(OptI64::from)
    }
}

/// A benchmark item (a small collection: it carries its text).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BenchItem {
    pub bench: String,
    pub item: String,
    pub text: String,
}

/// How a contamination match was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MatchMethod {
    /// Shares at least one n-gram with the benchmark item.
    Ngram,
    /// Indel similarity ratio at or above the threshold.
    Fuzzy,
}

impl MatchMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchMethod::Ngram => "ngram",
            MatchMethod::Fuzzy => "fuzzy",
        }
    }
}

/// A recorded contamination: which benchmark item a question matched, and how well.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Match {
    pub question: QuestionId,
    pub bench: String,
    pub item: String,
    pub method: MatchMethod,
    /// n-gram method: number of shared n-grams; fuzzy: ratio x 100 (0..=10000).
    pub score: u32,
    /// The first shared n-gram (normalized words), for the audit.
    pub span: String,
}

/// What a rejection is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Subject {
    Question(QuestionId),
    Row(RowKey),
    /// A piece of input that never became a question: `path:line`, `topic/partition@offset`.
    Input {
        source: SourceId,
        location: String,
    },
}

/// Why a step dropped something. Stable snake-case names appear in the audit output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    MalformedJson,
    MissingField,
    EmptyText,
    InvalidUtf8,
    TooLarge,
    UnknownDomain,
    Contaminated,
    TooLong,
    NoScore,
    BelowThreshold,
    AboveThreshold,
    NotSelected,
    Duplicate,
    NoAnswer,
    DuplicateAnswer,
    ScoreFailed,
    TeacherFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::EmptyText => "empty_text",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::TooLarge => "too_large",
            Reason::UnknownDomain => "unknown_domain",
            Reason::Contaminated => "contaminated",
            Reason::TooLong => "too_long",
            Reason::NoScore => "no_score",
            Reason::BelowThreshold => "below_threshold",
            Reason::AboveThreshold => "above_threshold",
            Reason::NotSelected => "not_selected",
            Reason::Duplicate => "duplicate",
            Reason::NoAnswer => "no_answer",
            Reason::DuplicateAnswer => "duplicate_answer",
            Reason::ScoreFailed => "score_failed",
            Reason::TeacherFailed => "teacher_failed",
        }
    }
}

/// The benchmark item a contaminated question or row matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemRef {
    pub bench: String,
    pub item: String,
}

/// Step-specific evidence attached to a rejection.
///
/// The texts are boxed so that a rejection stays 64 bytes (88 with them inline): millions of
/// `not_selected` rejections flow, are stashed and are kept by the audit sink at the paper's
/// scale. Serialized as before (serde sees through the boxes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Detail {
    None,
    Text(Box<str>),
    Contamination(Box<ItemRef>),
    Tokens { tokens: u32, max: u32 },
    Score { score: i64, bound: i64 },
    Rank { score: i64 },
    DuplicateOf(QuestionId),
    DuplicateOfRow(RowKey),
}

/// A dropped question, row or input record, with the step and the reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    pub subject: Subject,
    pub step: StepId,
    pub reason: Reason,
    pub detail: Detail,
}

/// One dataset row: a question, one teacher, one sample.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct RowKey {
    pub question: QuestionId,
    pub teacher: TeacherId,
    pub sample: u16,
}

/// Where an answer's text comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AnswerText {
    /// No teacher step: the row has the question only.
    None,
    /// A text in the store.
    Stored(TextRef),
    /// Generated on demand by the synthetic teacher (a pure function of these).
    Synthetic {
        question: ContentHash,
        sample: u16,
        words: u32,
    },
}

/// A teacher's answer: its content identity and where its text is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Answer {
    /// Identity for answer dedup: the text hash, or a hash of the synthetic generator's inputs.
    pub hash: ContentHash,
    pub text: AnswerText,
}

/// A dataset row as the dataflow sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Row {
    pub key: RowKey,
    pub question: Question,
    pub answer: Answer,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The question stream's records stay small: hashes aligned to 8, no padding to 16.
    #[test]
    fn rejections_stay_small() {
        assert!(std::mem::size_of::<Detail>() <= 24);
        assert!(std::mem::size_of::<Rejection>() <= 64);
    }

    #[test]
    fn question_records_are_not_padded() {
        assert_eq!(std::mem::align_of::<ContentHash>(), 8);
        assert_eq!(std::mem::align_of::<TextRef>(), 8);
        assert!(std::mem::size_of::<Question>() <= 80);
        assert!(std::mem::size_of::<((QuestionId, Question), Epoch, isize)>() <= 104);
    }

    /// `OptI64` orders, prints and serializes (JSON and bincode) as `Option<i64>` does.
    #[test]
    fn opt_i64_is_an_option() {
        let values = [
            None,
            Some(i64::MIN + 1),
            Some(-5),
            Some(0),
            Some(7),
            Some(i64::MAX),
        ];
        for a in values {
            let o = OptI64::from(a);
            assert_eq!(o.get(), a);
            assert_eq!(format!("{o:?}"), format!("{a:?}"));
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                serde_json::to_string(&a).unwrap()
            );
            assert_eq!(
                bincode::serialize(&o).unwrap(),
                bincode::serialize(&a).unwrap()
            );
            let back: OptI64 = bincode::deserialize(&bincode::serialize(&a).unwrap()).unwrap();
            assert_eq!(back, o);
            for b in values {
                assert_eq!(o.cmp(&OptI64::from(b)), a.cmp(&b));
            }
        }
        // The one value it cannot hold keeps its place among the others.
        assert_eq!(OptI64::from(Some(i64::MIN)).get(), Some(i64::MIN + 1));
    }
}
