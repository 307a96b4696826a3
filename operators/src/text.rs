//! The content-addressed text store that dataflow records point into.
//!
//! Steps that need a question's words (decontamination) look its text up by [`TextRef`] instead
//! of carrying it through arrangements. [`TextLookup`] is the read side that steps depend on;
//! [`MemTexts`] is the in-memory implementation (sharded, lock per shard) used by tests and by
//! the runtime. A store is shared by the workers of one process; texts are routed to the worker
//! that owns their question, so in cluster mode each process holds the texts it needs.

use crate::record::TextRef;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Read access to stored texts.
pub trait TextLookup: Send + Sync + 'static {
    /// The text stored under `key`, if any.
    fn get(&self, key: TextRef) -> Option<Arc<str>>;

    /// Calls `f` with the text stored under `key`; `false` if there is none. A store may lend
    /// a reused buffer here (no allocation per text), which is why it is a callback.
    fn visit(&self, key: TextRef, f: &mut dyn FnMut(&str)) -> bool {
        match self.get(key) {
            Some(text) => {
                f(&text);
                true
            }
            None => false,
        }
    }

    /// Calls `f(i, text)` for each `keys[i]` that is stored, in an order of the store's
    /// choosing (a store on disk reads in file order, in large sequential reads); returns how
    /// many keys it found. For matching many texts at once (a new benchmark against every
    /// question).
    fn visit_many(&self, keys: &[TextRef], f: &mut dyn FnMut(usize, &str)) -> usize {
        let mut found = 0;
        for (i, key) in keys.iter().enumerate() {
            found += self.visit(*key, &mut |text| f(i, text)) as usize;
        }
        found
    }
}

const SHARDS: usize = 64;

/// An in-memory, thread-safe, content-addressed text store.
pub struct MemTexts {
    shards: Vec<RwLock<HashMap<TextRef, Arc<str>>>>,
}

impl Default for MemTexts {
    fn default() -> Self {
        MemTexts {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl MemTexts {
    pub fn new() -> Arc<MemTexts> {
        Arc::new(MemTexts::default())
    }

    fn shard(&self, key: TextRef) -> &RwLock<HashMap<TextRef, Arc<str>>> {
        &self.shards[(key.0 as usize) % SHARDS]
    }

    /// Stores `text` and returns its key. Storing the same text twice is a no-op.
    pub fn put(&self, text: &str) -> TextRef {
        let key = crate::hash::text_ref(text);
        self.put_with_key(key, text);
        key
    }

    /// Stores `text` under a key the caller already computed with [`crate::hash::text_ref`].
    pub fn put_with_key(&self, key: TextRef, text: &str) {
        let shard = self.shard(key);
        if shard.read().expect("text store lock").contains_key(&key) {
            return;
        }
        shard
            .write()
            .expect("text store lock")
            .entry(key)
            .or_insert_with(|| Arc::from(text));
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("text store lock").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TextLookup for MemTexts {
    fn get(&self, key: TextRef) -> Option<Arc<str>> {
        self.shard(key)
            .read()
            .expect("text store lock")
            .get(&key)
            .cloned()
    }
}
