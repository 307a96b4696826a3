//! The dataset's changelog topic: one Kafka transaction per epoch.
//!
//! ```text
//!  DatasetShards --changes--> exchange(worker 0) --> [Changelog operator] --batch--> producer thread
//!                                                          ^                          |
//!                                                          +------- ack + activate ---+
//! ```
//!
//! **Encoding.** Key = row id; value = the row as published in `dataset/` (OpenThoughts3 schema,
//! JSON); a deleted row is a tombstone (null value), so a compacted topic holds the dataset.
//! With `progress = true`, every partition also gets a marker after each epoch: key
//! `__thoughtflow.progress`, header `thoughtflow-progress`, value
//! `{"epoch", "upserts", "deletes"}`, so a consumer of any partition knows the epoch is complete.
//!
//! **Sinking.** The producer is idempotent and transactional (`transactional.id` derived from
//! `--kafka-group`): an epoch's changes and markers are committed together, or not at all for a
//! `read_committed` consumer. The operator holds the epoch's capability until the transaction
//! commits, so the probe (and the source offset commits after it) wait for it.
//!
//! **Exactly once across restarts.** At start the thread reads the topic back (read_committed) to
//! learn what was published; the first epoch it sinks (the whole dataset, as the run rebuilds
//! its state from its inputs) is reconciled against that: rows published with the same value
//! are skipped, published rows that no longer exist are tombstoned. A crash at any point
//! therefore leaves the topic's compacted view equal to a clean run's, without duplicates.
//! Reading back costs one pass over the topic at start (it is what a new consumer reads anyway).
//!
//! **Retries.** A failed transaction is aborted and retried with backoff (an outage of the broker
//! stalls publication; nothing is lost or doubled). A fenced producer (another instance took the
//! transactional id) is an error that stops the run.

use super::KafkaSettings;
use crate::recipe::KafkaSinkSpec;
use differential_dataflow::VecCollection;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thoughtflow_operators::hash;
use thoughtflow_operators::record::Epoch;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::scheduling::SyncActivator;

pub const PROGRESS_KEY: &str = "__thoughtflow.progress";

pub use crate::sink::Change;

struct Batch {
    epoch: Epoch,
    changes: Vec<Change>,
}

/// Handle to the producer thread; the thread gives up retrying when the handle is dropped.
pub struct Changelog {
    batches: Option<Sender<Batch>>,
    acks: Receiver<Result<Epoch, String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Changelog {
    /// Starts the producer thread; `activator` wakes the sink operator when an epoch commits.
    pub fn start(
        settings: KafkaSettings,
        topic: String,
        progress: bool,
        activator: SyncActivator,
    ) -> Changelog {
        let (btx, brx) = mpsc::channel::<Batch>();
        let (atx, arx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kafka-changelog".into())
            .spawn(move || {
                let t = Thread {
                    settings,
                    topic,
                    progress,
                    activator,
                    stop: s2,
                };
                t.run(brx, atx);
            })
            .expect("spawn changelog thread");
        Changelog {
            batches: Some(btx),
            acks: arx,
            stop,
            thread: Some(thread),
        }
    }

    pub fn send(&self, epoch: Epoch, mut changes: Vec<Change>) {
        changes.sort();
        if let Some(b) = &self.batches {
            let _ = b.send(Batch { epoch, changes });
        }
    }

    pub fn try_ack(&self) -> Option<Result<Epoch, String>> {
        self.acks.try_recv().ok()
    }
}

impl Drop for Changelog {
    fn drop(&mut self) {
        self.batches.take();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Thread {
    settings: KafkaSettings,
    topic: String,
    progress: bool,
    activator: SyncActivator,
    stop: Arc<AtomicBool>,
}

impl Thread {
    fn producer(&self) -> Result<BaseProducer, KafkaError> {
        let mut c = self.settings.client();
        c.set("enable.idempotence", "true")
            .set(
                "transactional.id",
                format!("{}.changelog", self.settings.group),
            )
            .set("linger.ms", "5")
            .set("transaction.timeout.ms", "60000");
        let p: BaseProducer = c.create()?;
        p.init_transactions(Duration::from_secs(10))?;
        Ok(p)
    }

    /// Sleeps for `backoff` (doubling it, up to 30 s); false if the run is stopping.
    fn pause(&self, backoff: &mut Duration) -> bool {
        let until = Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
        while Instant::now() < until {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.stop.load(Ordering::SeqCst)
    }

    fn run(&self, batches: Receiver<Batch>, acks: Sender<Result<Epoch, String>>) {
        let mut backoff = Duration::from_millis(500);
        let mut producer: Option<BaseProducer> = None;
        let mut reconciled = false;
        for batch in batches {
            let mut changes = batch.changes;
            if !reconciled {
                let published = loop {
                    match self.read_back() {
                        Ok(p) => break p,
                        Err(e) => {
                            tracing::warn!(
                                "kafka changelog: reading back {}: {e}; retrying in {:.1}s",
                                self.topic,
                                backoff.as_secs_f64()
                            );
                            if !self.pause(&mut backoff) {
                                return;
                            }
                        }
                    }
                };
                tracing::info!(topic = %self.topic, rows = published.len(), "kafka changelog: reconciling with the published rows");
                changes = reconcile(published, changes);
                reconciled = true;
            }
            loop {
                if producer.is_none() {
                    match self.producer() {
                        Ok(p) => producer = Some(p),
                        Err(e) => {
                            tracing::warn!(
                                "kafka changelog: starting the producer: {e}; retrying in {:.1}s",
                                backoff.as_secs_f64()
                            );
                            if !self.pause(&mut backoff) {
                                return;
                            }
                            continue;
                        }
                    }
                }
                let p = producer.as_ref().expect("started");
                match self.transaction(p, batch.epoch, &changes) {
                    Ok(()) => {
                        backoff = Duration::from_millis(500);
                        tracing::debug!(
                            epoch = batch.epoch,
                            changes = changes.len(),
                            "kafka changelog: epoch committed"
                        );
                        let _ = acks.send(Ok(batch.epoch));
                        let _ = self.activator.activate();
                        break;
                    }
                    Err(e) => {
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
                        ) {
                            let _ = acks.send(Err(format!(
                                "kafka changelog: producer fenced by another instance: {e}"
                            )));
                            let _ = self.activator.activate();
                            return;
                        }
                        tracing::warn!(
                            "kafka changelog: epoch {} transaction failed: {e}; retrying in {:.1}s",
                            batch.epoch,
                            backoff.as_secs_f64()
                        );
                        let _ = p.abort_transaction(Duration::from_secs(10));
                        // A producer in an unknown state is rebuilt.
                        producer = None;
                        if !self.pause(&mut backoff) {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn transaction(
        &self,
        p: &BaseProducer,
        epoch: Epoch,
        changes: &[Change],
    ) -> Result<(), KafkaError> {
        p.begin_transaction()?;
        let (mut ups, mut dels) = (0u64, 0u64);
        for c in changes {
            let mut record = BaseRecord::<str, str>::to(&self.topic).key(c.row_id.as_str());
            match &c.value {
                Some(v) => {
                    record = record.payload(v.as_str());
                    ups += 1;
                }
                None => dels += 1,
            }
            send(p, record)?;
        }
        if self.progress {
            let partitions = self.partitions(p)?;
            let value =
                serde_json::json!({"epoch": epoch, "upserts": ups, "deletes": dels}).to_string();
            for part in 0..partitions {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "thoughtflow-progress",
                    value: Some("1"),
                });
                let record = BaseRecord::<str, str>::to(&self.topic)
                    .key(PROGRESS_KEY)
                    .payload(value.as_str())
                    .partition(part)
                    .headers(headers);
                send(p, record)?;
            }
        }
        p.flush(Duration::from_secs(30))?;
        p.commit_transaction(Duration::from_secs(30))
    }

    fn partitions(&self, p: &BaseProducer) -> Result<i32, KafkaError> {
        let md = p
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        Ok(md
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(1)
            .max(1))
    }

    /// The topic's current (committed) content: row id -> hash of the value.
    fn read_back(&self) -> Result<HashMap<String, u64>, KafkaError> {
        let mut c = self.settings.client();
        c.set(
            "group.id",
            format!("{}.changelog-readback", self.settings.group),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<super::Quiet> = c.create_with_context(super::Quiet)?;
        let md = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut out = HashMap::new();
        if parts.is_empty() {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut eof: BTreeMap<i32, bool> = parts.iter().map(|p| (*p, false)).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while eof.values().any(|e| !e) {
            if Instant::now() > deadline {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p, true);
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    eof.insert(m.partition(), false);
                    let Some(key) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
                        continue;
                    };
                    if key == PROGRESS_KEY {
                        continue;
                    }
                    match m.payload() {
                        Some(v) => {
                            out.insert(key, hash::hash64(v));
                        }
                        None => {
                            out.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn send(p: &BaseProducer, mut record: BaseRecord<'_, str, str>) -> Result<(), KafkaError> {
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                p.poll(Duration::from_millis(50));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The first epoch's changes (the whole dataset as upserts) against what the topic holds:
/// only rows that differ, plus tombstones for rows that are gone.
pub fn reconcile(published: HashMap<String, u64>, changes: Vec<Change>) -> Vec<Change> {
    let mut remaining = published;
    let mut out = Vec::new();
    for c in changes {
        let before = remaining.remove(&c.row_id);
        match &c.value {
            Some(v) if before == Some(hash::hash64(v.as_bytes())) => {}
            _ => out.push(c),
        }
    }
    let mut gone: Vec<String> = remaining.into_keys().filter(|k| !k.is_empty()).collect();
    gone.sort();
    out.extend(gone.into_iter().map(|row_id| Change {
        row_id,
        value: None,
    }));
    out
}

/// The changelog sink operator: all changes go to worker 0, which publishes one transaction
/// per epoch and holds the epoch's capability until it commits. Fatal errors go to `errors`.
pub fn changelog_sink<'s>(
    changes: VecCollection<'s, Epoch, Change>,
    settings: KafkaSettings,
    spec: KafkaSinkSpec,
    errors: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
) -> VecCollection<'s, Epoch, ()> {
    use differential_dataflow::AsCollection;
    let scope = changes.scope();
    changes
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((), Epoch, isize)>>, _, _, _>(
            Exchange::new(|_: &(Change, Epoch, isize)| 0),
            "KafkaChangelog",
            move |_cap, info| {
                let sink = (scope.index() == 0).then(|| {
                    let activator = scope.worker().sync_activator_for(info.address.to_vec());
                    Changelog::start(settings, spec.topic.clone(), spec.progress, activator)
                });
                let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<Change>)> = BTreeMap::new();
                let mut in_flight: Option<(Epoch, Capability<Epoch>)> = None;
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        for (c, t, r) in data.drain(..) {
                            let slot = pending
                                .entry(t)
                                .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                            for _ in 0..r.max(0) {
                                slot.1.push(c.clone());
                            }
                        }
                    });
                    let Some(sink) = &sink else { return };
                    while let Some(ack) = sink.try_ack() {
                        match ack {
                            Ok(e) if in_flight.as_ref().is_some_and(|(f, _)| *f == e) => in_flight = None,
                            Ok(_) => {}
                            Err(msg) => {
                                errors.borrow_mut().push(msg);
                                in_flight = None;
                            }
                        }
                    }
                    if in_flight.is_none() {
                        if let Some((&t, _)) = pending.first_key_value() {
                            if !frontier.less_equal(&t) {
                                let (_, (cap, batch)) = pending.pop_first().expect("just peeked");
                                sink.send(t, batch);
                                in_flight = Some((t, cap));
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_skips_published_and_tombstones_gone_rows() {
        let published: HashMap<String, u64> = [
            ("same".to_string(), hash::hash64(b"v1")),
            ("changed".to_string(), hash::hash64(b"old")),
            ("gone".to_string(), hash::hash64(b"x")),
        ]
        .into_iter()
        .collect();
        let changes = vec![
            Change {
                row_id: "changed".into(),
                value: Some("new".into()),
            },
            Change {
                row_id: "fresh".into(),
                value: Some("f".into()),
            },
            Change {
                row_id: "same".into(),
                value: Some("v1".into()),
            },
        ];
        let out = reconcile(published, changes);
        let ids: Vec<(&str, bool)> = out
            .iter()
            .map(|c| (c.row_id.as_str(), c.value.is_some()))
            .collect();
        assert_eq!(ids, [("changed", true), ("fresh", true), ("gone", false)]);
    }
}
