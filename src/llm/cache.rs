//! The durable call cache: every LLM answer, keyed by everything that determines it.
//!
//! Key = (API, model, sampling parameters, prompt template version, question content hash,
//! sample index), written as a canonical text ([`CallKey::text`]) and stored under its xxh3-128.
//! An answer is committed (fsync) before it enters the dataflow, so a crash never loses a paid
//! call, and a question that leaves the selection and comes back, a rerun or a restart are all
//! served from here.
//!
//! Storage: [redb](https://docs.rs/redb), an embedded, pure-Rust, ACID key-value store (one
//! file, copy-on-write B-tree, crash-safe commits). Chosen over sled (unmaintained, unstable
//! format), RocksDB (a large C++ build and LSM tuning for what is a modest, read-mostly table)
//! and SQLite (a C build and SQL we do not need): the cache is a single table of point lookups
//! and appends, which is what redb does simply and well.

use super::client::{Api, Completion};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::ContentHash;

const CALLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("calls");

/// Everything that determines an answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    pub api: Api,
    pub model: String,
    /// [`super::client::Sampling::canonical`].
    pub sampling: String,
    /// Template name and the hash of its text.
    pub template: String,
    pub question: ContentHash,
    pub sample: u16,
}

impl CallKey {
    /// The canonical text of the key (what is hashed; shown by `cache export`).
    pub fn text(&self) -> String {
        format!(
            "v{}|{}|{}|{}|{}|{}|{}",
            hash::HASH_VERSION,
            self.api.as_str(),
            self.model,
            self.sampling,
            self.template,
            self.question,
            self.sample
        )
    }

    pub fn id(&self) -> [u8; 16] {
        hash::hash128(self.text().as_bytes()).to_le_bytes()
    }
}

/// A cached answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub model: String,
    pub completion: Completion,
    pub created_unix: u64,
    pub latency_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("opening the call cache {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("call cache: {0}")]
    Db(String),
}

pub struct Cache {
    db: Database,
}

impl Cache {
    pub fn open(path: &Path) -> Result<Cache, CacheError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let db = Database::create(path).map_err(|source| CacheError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(CALLS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Cache { db })
    }

    /// Looks up many keys in one read transaction.
    pub fn get_many(&self, ids: &[[u8; 16]]) -> Result<Vec<Option<Entry>>, CacheError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CALLS).map_err(db_err)?;
        ids.iter()
            .map(|id| {
                Ok(match table.get(id.as_slice()).map_err(db_err)? {
                    Some(v) => Some(bincode::deserialize(v.value()).map_err(db_err)?),
                    None => None,
                })
            })
            .collect()
    }

    /// Stores answers durably (one fsynced commit).
    pub fn put_many(&self, entries: &[([u8; 16], Entry)]) -> Result<(), CacheError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(CALLS).map_err(db_err)?;
            for (id, e) in entries {
                let bytes = bincode::serialize(e).map_err(db_err)?;
                table
                    .insert(id.as_slice(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, CacheError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CALLS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(bincode::deserialize(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    pub fn len(&self) -> Result<u64, CacheError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(CALLS).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    pub fn is_empty(&self) -> Result<bool, CacheError> {
        Ok(self.len()? == 0)
    }

    /// Removes the entries `keep` rejects; returns how many.
    pub fn prune(&self, keep: impl Fn(&Entry) -> bool) -> Result<u64, CacheError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0;
        {
            let mut table = tx.open_table(CALLS).map_err(db_err)?;
            let mut doomed = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let e: Entry = bincode::deserialize(v.value()).map_err(db_err)?;
                if !keep(&e) {
                    doomed.push(k.value().to_vec());
                }
            }
            for k in doomed {
                table.remove(k.as_slice()).map_err(db_err)?;
                removed += 1;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(removed)
    }
}

type Pending = (
    ([u8; 16], Entry),
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// Group commit: answers handed to [`Committer::commit`] from any task are written by one
/// thread, every answer waiting at the time in one fsynced transaction. A commit costs an
/// fsync whatever it holds, so under load this keeps the window between an answer received
/// (paid) and it durable to about one commit, instead of a queue of one commit per answer.
pub struct Committer {
    tx: std::sync::mpsc::Sender<Pending>,
}

impl Committer {
    pub fn start(cache: std::sync::Arc<Cache>) -> std::io::Result<Committer> {
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        std::thread::Builder::new()
            .name("llm-cache".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let (entries, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let r = cache.put_many(&entries).map_err(|e| e.to_string());
                    for reply in replies {
                        let _ = reply.send(r.clone());
                    }
                }
            })?;
        Ok(Committer { tx })
    }

    /// Commits one answer (with whatever else is waiting); returns once it is durable.
    pub async fn commit(&self, id: [u8; 16], entry: Entry) -> Result<(), String> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(((id, entry), reply))
            .map_err(|_| "call cache: the writer has stopped".to_string())?;
        done.await
            .unwrap_or_else(|_| Err("call cache: the writer has stopped".to_string()))
    }
}

fn db_err<E: std::fmt::Display>(e: E) -> CacheError {
    CacheError::Db(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sample: u16) -> CallKey {
        CallKey {
            api: Api::Chat,
            model: "m".into(),
            sampling: "t=1".into(),
            template: "tpl".into(),
            question: ContentHash(7),
            sample,
        }
    }

    #[test]
    fn entries_survive_reopening_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.redb");
        {
            let c = Cache::open(&path).unwrap();
            let e = Entry {
                key: key(0).text(),
                model: "m".into(),
                completion: Completion {
                    text: "answer".into(),
                    finish_reason: None,
                    prompt_tokens: 1,
                    completion_tokens: 2,
                },
                created_unix: 0,
                latency_ms: 5,
            };
            c.put_many(&[(key(0).id(), e)]).unwrap();
        }
        let c = Cache::open(&path).unwrap();
        let got = c.get_many(&[key(0).id(), key(1).id()]).unwrap();
        assert_eq!(got[0].as_ref().unwrap().completion.text, "answer");
        assert!(got[1].is_none());
        assert_eq!(c.prune(|e| e.model != "m").unwrap(), 1);
        assert!(c.is_empty().unwrap());
    }
}
