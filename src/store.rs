//! The process-wide store: question and answer texts, and what the sink needs to name things.
//!
//! Dataflow records carry ids and hashes only (DESIGN.md decision 3). The store maps them back:
//! [`TextRef`] to text (content-addressed, [`MemTexts`]), [`QuestionId`] to the question's
//! source and external id, [`SourceId`] to the source's name. Every worker of a process shares
//! one store; ingest writes a question's entries before the question enters the dataflow, so
//! any step or sink that sees the question finds them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use thoughtflow_operators::record::{QuestionId, SourceId, TextRef};
use thoughtflow_operators::text::{MemTexts, TextLookup};

const SHARDS: usize = 64;

/// External identity of a question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuestionName {
    pub source: SourceId,
    pub id: Arc<str>,
}

pub struct Store {
    pub texts: Arc<MemTexts>,
    names: Vec<RwLock<HashMap<QuestionId, QuestionName>>>,
    sources: RwLock<HashMap<SourceId, Arc<str>>>,
}

impl Store {
    pub fn new() -> Arc<Store> {
        Arc::new(Store {
            texts: MemTexts::new(),
            names: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sources: RwLock::new(HashMap::new()),
        })
    }

    pub fn put_text(&self, key: TextRef, text: &str) {
        self.texts.put_with_key(key, text);
    }

    pub fn text(&self, key: TextRef) -> Option<Arc<str>> {
        self.texts.get(key)
    }

    pub fn register_source(&self, id: SourceId, name: &str) {
        self.sources
            .write()
            .expect("store lock")
            .entry(id)
            .or_insert_with(|| Arc::from(name));
    }

    /// The source's name, or its id in hex when this process has not seen it.
    pub fn source_name(&self, id: SourceId) -> Arc<str> {
        self.sources
            .read()
            .expect("store lock")
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::from(id.to_string()))
    }

    pub fn put_name(&self, qid: QuestionId, source: SourceId, id: &str) {
        let shard = &self.names[(qid.0 as usize) % SHARDS];
        if shard.read().expect("store lock").contains_key(&qid) {
            return;
        }
        shard.write().expect("store lock").insert(
            qid,
            QuestionName {
                source,
                id: Arc::from(id),
            },
        );
    }

    /// The question's source, if this process has seen the question.
    pub fn question_source(&self, qid: QuestionId) -> Option<SourceId> {
        self.names[(qid.0 as usize) % SHARDS]
            .read()
            .expect("store lock")
            .get(&qid)
            .map(|n| n.source)
    }

    /// The question's external id, or its hash in hex when this process has not seen it.
    pub fn question_name(&self, qid: QuestionId) -> Arc<str> {
        self.names[(qid.0 as usize) % SHARDS]
            .read()
            .expect("store lock")
            .get(&qid)
            .map(|n| n.id.clone())
            .unwrap_or_else(|| Arc::from(qid.to_string()))
    }
}
