//! The per-worker reader thread: consumers, discovery, offsets, lag.

use super::{owner, KafkaSettings, Quiet, Subscriptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Where one partition stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read.
    pub next_offset: i64,
    pub high_watermark: Option<i64>,
}

impl PartitionStatus {
    pub fn lag(&self) -> Option<i64> {
        self.high_watermark.map(|h| (h - self.next_offset).max(0))
    }
}

#[derive(Debug)]
pub enum Event {
    Message(Msg),
    /// Every assigned partition has been read to its end once (after a successful discovery).
    CaughtUp,
    Status(Vec<PartitionStatus>),
    /// A problem worth telling the operator (already rate-limited).
    Problem(String),
}

pub enum Command {
    /// Commit these next offsets: `(topic, partition, next offset)`.
    Commit(Vec<(String, i32, i64)>),
}

/// Handle to a worker's reader thread; stops it on drop.
pub struct Reader {
    events: Receiver<Event>,
    commands: Sender<Command>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start(
        settings: KafkaSettings,
        subs: Subscriptions,
        worker: usize,
        peers: usize,
    ) -> Reader {
        let (etx, erx) = mpsc::sync_channel(65_536);
        let (ctx, crx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("kafka-reader-{worker}"))
            .spawn(move || {
                let mut r = ReaderThread {
                    settings,
                    subs,
                    worker,
                    peers,
                    events: etx,
                    topics: BTreeMap::new(),
                    discovered: false,
                    announced: false,
                    last_problem: None,
                };
                r.run(&crx, &s2);
            })
            .expect("spawn kafka reader thread");
        Reader {
            events: erx,
            commands: ctx,
            stop,
            thread: Some(thread),
        }
    }

    /// The next queued event, if any (never waits).
    pub fn try_next(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits up to `timeout` for an event.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    pub fn commit(&self, offsets: Vec<(String, i32, i64)>) {
        if !offsets.is_empty() {
            let _ = self.commands.send(Command::Commit(offsets));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock a thread waiting on a full channel.
        while self.events.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Part {
    next: i64,
    eof: bool,
    high: Option<i64>,
}

struct TopicConsumer {
    consumer: BaseConsumer<Quiet>,
    parts: BTreeMap<i32, Part>,
}

struct ReaderThread {
    settings: KafkaSettings,
    subs: Subscriptions,
    worker: usize,
    peers: usize,
    events: SyncSender<Event>,
    topics: BTreeMap<String, TopicConsumer>,
    discovered: bool,
    announced: bool,
    last_problem: Option<(String, Instant)>,
}

impl ReaderThread {
    fn consumer(&self) -> Result<BaseConsumer<Quiet>, KafkaError> {
        let mut c = self.settings.client();
        c.set("group.id", &self.settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            .set("session.timeout.ms", "6000");
        c.create_with_context(Quiet)
    }

    /// Reports a problem, at most once per 10 s for the same text.
    fn problem(&mut self, text: String) {
        let now = Instant::now();
        if let Some((last, at)) = &self.last_problem {
            if *last == text && now.duration_since(*at) < Duration::from_secs(10) {
                return;
            }
        }
        tracing::warn!("kafka: {text}");
        self.last_problem = Some((text.clone(), now));
        let _ = self.events.try_send(Event::Problem(text));
    }

    /// Blocks until the event is queued (backpressure), unless asked to stop.
    fn send(&self, mut event: Event, stop: &AtomicBool) -> bool {
        loop {
            match self.events.try_send(event) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(e)) => {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    event = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn run(&mut self, commands: &Receiver<Command>, stop: &AtomicBool) {
        let meta = loop {
            match self.consumer() {
                Ok(c) => break c,
                Err(e) => {
                    self.problem(format!("creating a consumer: {e}"));
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        let mut next_discovery = Instant::now();
        let mut backoff = Duration::from_millis(500);
        let mut next_status = Instant::now() + Duration::from_secs(2);
        while !stop.load(Ordering::SeqCst) {
            if Instant::now() >= next_discovery {
                match meta.fetch_metadata(None, Duration::from_secs(2)) {
                    Ok(md) => {
                        backoff = Duration::from_millis(500);
                        next_discovery = Instant::now() + Duration::from_secs(1);
                        let mut found: Vec<(String, Vec<i32>)> = Vec::new();
                        for t in md.topics() {
                            if t.error().is_some() || self.subs.role_of(t.name()).is_none() {
                                continue;
                            }
                            let mine: Vec<i32> = t
                                .partitions()
                                .iter()
                                .map(|p| p.id())
                                .filter(|p| owner(t.name(), *p, self.peers) == self.worker)
                                .collect();
                            found.push((t.name().to_string(), mine));
                        }
                        for (topic, parts) in found {
                            self.assign(&topic, &parts);
                        }
                        self.discovered = true;
                    }
                    Err(e) => {
                        self.problem(format!(
                            "brokers {} unreachable ({e}); retrying in {:.1}s",
                            self.settings.brokers,
                            backoff.as_secs_f64()
                        ));
                        next_discovery = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            while let Ok(Command::Commit(offsets)) = commands.try_recv() {
                self.commit(offsets);
            }
            let mut got = 0;
            let mut problems = Vec::new();
            let mut out = Vec::new();
            for (name, tc) in self.topics.iter_mut() {
                for _ in 0..2048 {
                    match tc.consumer.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(m)) => {
                            if let Some(p) = tc.parts.get_mut(&m.partition()) {
                                p.next = m.offset() + 1;
                                p.eof = false;
                            }
                            out.push(Msg {
                                topic: Arc::from(name.as_str()),
                                partition: m.partition(),
                                offset: m.offset(),
                                key: m.key().map(|k| k.to_vec()),
                                payload: m.payload().map(|p| p.to_vec()),
                            });
                            got += 1;
                        }
                        Some(Err(KafkaError::PartitionEOF(p))) => {
                            if let Some(part) = tc.parts.get_mut(&p) {
                                part.eof = true;
                            }
                        }
                        Some(Err(e)) => problems.push(format!("reading {name}: {e}")),
                    }
                }
            }
            for p in problems {
                self.problem(p);
            }
            for m in out {
                if !self.send(Event::Message(m), stop) {
                    return;
                }
            }
            if self.discovered
                && !self.announced
                && self
                    .topics
                    .values()
                    .all(|t| t.parts.values().all(|p| p.eof))
            {
                self.announced = true;
                if !self.send(Event::CaughtUp, stop) {
                    return;
                }
            }
            if Instant::now() >= next_status {
                next_status = Instant::now() + Duration::from_secs(2);
                let status = self.status();
                let _ = self.events.try_send(Event::Status(status));
            }
            if got == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn assign(&mut self, topic: &str, parts: &[i32]) {
        if !self.topics.contains_key(topic) {
            match self.consumer() {
                Ok(consumer) => {
                    tracing::info!(topic, worker = self.worker, partitions = ?parts, "kafka: reading new topic");
                    self.topics.insert(
                        topic.to_string(),
                        TopicConsumer {
                            consumer,
                            parts: BTreeMap::new(),
                        },
                    );
                }
                Err(e) => {
                    self.problem(format!("creating a consumer for {topic}: {e}"));
                    return;
                }
            }
        }
        let tc = self.topics.get_mut(topic).expect("inserted");
        let new: Vec<i32> = parts
            .iter()
            .copied()
            .filter(|p| !tc.parts.contains_key(p))
            .collect();
        if new.is_empty() {
            return;
        }
        for p in &new {
            tc.parts.insert(
                *p,
                Part {
                    next: 0,
                    eof: false,
                    high: None,
                },
            );
        }
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &tc.parts {
            let offset = if new.contains(p) {
                Offset::Beginning
            } else {
                Offset::Offset(part.next)
            };
            if let Err(e) = tpl.add_partition_offset(topic, *p, offset) {
                tracing::warn!("kafka: {topic}/{p}: {e}");
            }
        }
        if let Err(e) = tc.consumer.assign(&tpl) {
            let text = format!("assigning {topic} partitions {new:?}: {e}");
            for p in &new {
                tc.parts.remove(p);
            }
            self.problem(text);
        }
    }

    fn commit(&mut self, offsets: Vec<(String, i32, i64)>) {
        let mut by_topic: BTreeMap<String, TopicPartitionList> = BTreeMap::new();
        for (topic, p, next) in offsets {
            let tpl = by_topic.entry(topic.clone()).or_default();
            let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(next));
        }
        let mut problems = Vec::new();
        for (topic, tpl) in by_topic {
            if let Some(tc) = self.topics.get(&topic) {
                if let Err(e) = tc.consumer.commit(&tpl, CommitMode::Async) {
                    problems.push(format!("committing offsets of {topic}: {e}"));
                }
            }
        }
        for p in problems {
            self.problem(p);
        }
    }

    fn status(&mut self) -> Vec<PartitionStatus> {
        let mut out = Vec::new();
        for (topic, tc) in self.topics.iter_mut() {
            for (p, part) in tc.parts.iter_mut() {
                if let Ok((_, high)) =
                    tc.consumer
                        .fetch_watermarks(topic, *p, Duration::from_millis(500))
                {
                    part.high = Some(high);
                }
                out.push(PartitionStatus {
                    topic: topic.clone(),
                    partition: *p,
                    next_offset: part.next,
                    high_watermark: part.high,
                });
            }
        }
        out
    }
}
