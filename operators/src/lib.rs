//! thoughtflow-operators: the records, hashing and incremental dataflow steps of thoughtflow.
//!
//! This crate does no I/O: no files, no network, no async runtime. Every step is a function
//! from differential-dataflow collections to collections, deterministic and testable alone,
//! with a batch reference that its property test compares against at every epoch, on one and
//! on two workers (see [`testing`]).
//!
//! - [`record`]: questions, benchmark items, matches, rejections, rows.
//! - [`hash`]: normalization and every persisted hash (xxh3, fixed seeds, versioned).
//! - [`text`]: the content-addressed text store steps read texts from.
//! - [`steps`]: `decontaminate`, `length_guard`, `score`, `select`, `dedup`, `fanout`,
//!   `answer_dedup`.
//! - [`tokenize`]: Hugging Face tokenizers for token n-grams.
//! - [`epoch`]: the operator shape for steps that keep their own per-epoch state.
//! - [`upsert`]: the ingest's keyed upserts, arranged by key.
//! - [`split`]: one read of a stream that two consumers would otherwise copy.

pub mod counts;
pub mod epoch;
pub mod fuzzy;
pub mod hash;
pub mod record;
pub mod split;
pub mod steps;
pub mod testing;
pub mod text;
pub mod tokenize;
pub mod upsert;

pub use record::*;
