//! A worker's Kafka input: messages drained from its reader become upserts, benchmark item
//! diffs or rejections, epoch by epoch; their offsets are committed after the epoch publishes.

use super::reader::{Event, Msg, PartitionStatus, Reader};
use super::{KafkaSettings, Role, Subscriptions};
use crate::ingest::{field_string, parse_object, parse_question, Origin};
use crate::recipe::{Input, Recipe};
use crate::render::Handles;
use crate::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{
    BenchItem, Detail, Epoch, Question, QuestionId, Reason, Rejection, StepId, Subject,
};

/// At most this many messages enter one epoch (the rest wait for the next).
const MAX_PER_EPOCH: usize = 500_000;

/// Partition positions shared by the workers of a process (for stats).
pub type SharedStatus = Arc<Mutex<BTreeMap<(String, i32), PartitionStatus>>>;

pub struct KafkaIngest {
    reader: Reader,
    subs: Subscriptions,
    recipe: Arc<Recipe>,
    /// Live benchmark items by (topic, message key).
    items: HashMap<(Arc<str>, Vec<u8>), BenchItem>,
    /// Next offsets of what this epoch consumed.
    offsets: BTreeMap<(String, i32), i64>,
    caught_up: bool,
    status: SharedStatus,
    /// This epoch's question upserts: within an epoch the last message of a key wins (the
    /// upsert arrangement would otherwise break ties by value, not by offset).
    upserts: HashMap<QuestionId, Option<Question>>,
}

/// What one drain produced.
#[derive(Default, Debug)]
pub struct Drained {
    pub messages: usize,
    pub caught_up: bool,
}

impl KafkaIngest {
    /// Starts the worker's reader, if the recipe reads any topic.
    pub fn start(
        settings: &KafkaSettings,
        recipe: &Arc<Recipe>,
        worker: usize,
        peers: usize,
        status: SharedStatus,
    ) -> Option<KafkaIngest> {
        let mut subs = Subscriptions::default();
        for (i, s) in recipe.sources.iter().enumerate() {
            if let Input::Kafka(t) = &s.input {
                subs.entries.push((Role::Questions(i), t.clone()));
            }
        }
        for (i, b) in recipe.benchmarks.iter().enumerate() {
            if let Input::Kafka(t) = &b.input {
                subs.entries.push((Role::Benchmarks(i), t.clone()));
            }
        }
        if subs.is_empty() {
            return None;
        }
        Some(KafkaIngest {
            reader: Reader::start(settings.clone(), subs.clone(), worker, peers),
            subs,
            recipe: Arc::clone(recipe),
            items: HashMap::new(),
            offsets: BTreeMap::new(),
            caught_up: false,
            status,
            upserts: HashMap::new(),
        })
    }

    /// Feeds what the reader has queued into epoch `epoch`. With `catch_up`, first waits (up
    /// to that long) until every assigned partition has been read to its end once.
    pub fn drain(
        &mut self,
        handles: &mut Handles,
        epoch: Epoch,
        store: &Store,
        catch_up: Option<Duration>,
    ) -> Drained {
        let mut out = Drained::default();
        let deadline = catch_up.map(|d| Instant::now() + d);
        loop {
            let event = match deadline {
                Some(d) if !self.caught_up && Instant::now() < d => {
                    self.reader.next_timeout(Duration::from_millis(20))
                }
                _ => self.reader.try_next(),
            };
            match event {
                Some(Event::Message(m)) => {
                    self.message(m, handles, store);
                    out.messages += 1;
                    if out.messages >= MAX_PER_EPOCH {
                        break;
                    }
                }
                Some(Event::CaughtUp) => self.caught_up = true,
                Some(Event::Status(list)) => {
                    let mut shared = self.status.lock().expect("status lock");
                    for s in list {
                        shared.insert((s.topic.clone(), s.partition), s);
                    }
                }
                Some(Event::Problem(_)) => {}
                None => {
                    let waiting = deadline.is_some_and(|d| !self.caught_up && Instant::now() < d);
                    if !waiting {
                        break;
                    }
                }
            }
        }
        for (id, q) in self.upserts.drain() {
            tracing::trace!(?id, present = q.is_some(), "kafka upsert");
            handles.questions.send((id, q, epoch));
        }
        out.caught_up = self.caught_up;
        out
    }

    /// Commits the offsets of the epoch just published.
    pub fn commit(&mut self) {
        let offsets: Vec<(String, i32, i64)> = std::mem::take(&mut self.offsets)
            .into_iter()
            .map(|((t, p), o)| (t, p, o))
            .collect();
        self.reader.commit(offsets);
    }

    fn message(&mut self, m: Msg, handles: &mut Handles, store: &Store) {
        tracing::trace!(topic = %m.topic, partition = m.partition, offset = m.offset, key = ?m.key.as_deref().map(String::from_utf8_lossy), payload_len = ?m.payload.as_ref().map(|p| p.len()), "kafka message");
        self.offsets
            .insert((m.topic.to_string(), m.partition), m.offset + 1);
        {
            let mut shared = self.status.lock().expect("status lock");
            let entry = shared
                .entry((m.topic.to_string(), m.partition))
                .or_insert_with(|| PartitionStatus {
                    topic: m.topic.to_string(),
                    partition: m.partition,
                    next_offset: 0,
                    high_watermark: None,
                });
            entry.next_offset = entry.next_offset.max(m.offset + 1);
        }
        let source = hash::source_id(&m.topic);
        let location = format!("{}/{}@{}", m.topic, m.partition, m.offset);
        let reject = |handles: &mut Handles, reason: Reason, message: String| {
            handles.ingest_rejections.update(
                Rejection {
                    subject: Subject::Input {
                        source,
                        location: location.clone(),
                    },
                    step: StepId::INGEST,
                    reason,
                    detail: Detail::Text(message.into()),
                },
                1,
            );
        };
        let key = m
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        match self.subs.role_of(&m.topic) {
            None => {}
            Some(Role::Questions(i)) => {
                let spec = &self.recipe.sources[i];
                store.register_source(source, &m.topic);
                match (&m.payload, key.as_deref()) {
                    (None, Some(k)) => {
                        self.upserts.insert(hash::question_id(&m.topic, k), None);
                    }
                    (None, None) => reject(
                        handles,
                        Reason::MissingField,
                        "a tombstone without a key deletes nothing".into(),
                    ),
                    (Some(bytes), key) => {
                        let origin = Origin {
                            spec,
                            name: &m.topic,
                            source,
                        };
                        let key = key.filter(|k| !k.is_empty());
                        match parse_question(origin, bytes, key, store) {
                            Ok(p) => {
                                self.upserts.insert(p.question.id, Some(p.question));
                            }
                            Err(e) => reject(handles, e.reason, e.message),
                        }
                    }
                }
            }
            Some(Role::Benchmarks(i)) => {
                let spec = &self.recipe.benchmarks[i];
                let slot = (Arc::clone(&m.topic), m.key.clone().unwrap_or_default());
                let new = match &m.payload {
                    None => None,
                    Some(bytes) => {
                        let parsed = parse_object(bytes, 64 << 20).and_then(|obj| {
                            let item = match &key {
                                Some(k) if !k.is_empty() => k.clone(),
                                _ => field_string(&obj, &spec.fields.id)?,
                            };
                            let text = field_string(&obj, &spec.fields.question)?;
                            let bench = obj
                                .get("benchmark")
                                .and_then(|b| b.as_str())
                                .unwrap_or(&spec.name)
                                .to_string();
                            Ok(BenchItem { bench, item, text })
                        });
                        match parsed {
                            Ok(item) => Some(item),
                            Err(e) => {
                                reject(handles, e.reason, e.message);
                                return;
                            }
                        }
                    }
                };
                let old = match &new {
                    Some(item) => self.items.insert(slot, item.clone()),
                    None => self.items.remove(&slot),
                };
                if old == new {
                    return;
                }
                if let Some(o) = old {
                    handles.benchmarks.update(o, -1);
                }
                if let Some(n) = new {
                    handles.benchmarks.update(n, 1);
                }
            }
        }
    }
}
