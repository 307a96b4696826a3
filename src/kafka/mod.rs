//! Kafka: question and benchmark topics in, the dataset's changelog out.
//!
//! ```text
//!  reader thread (per worker) --channel--> timely worker (per epoch: drain, upsert, commit)
//!    one BaseConsumer per topic, partitions assigned explicitly:
//!    (topic, p) belongs to worker (xxh3(topic) + p) % workers; new topics matching a
//!    recipe pattern are discovered from metadata every second and assigned without restart.
//! ```
//!
//! **Reading.** Every worker's reader thread owns its consumers, so no timely worker ever waits
//! on the network: the worker drains what the thread has queued. An epoch covers, per
//! partition, the span of offsets drained for it. Messages are upserts keyed by the message
//! key (the question id; the value's id field if there is no key); a null value is a tombstone.
//! Partitions are read from the beginning at start: the dataflow's state is rebuilt by replay
//! (DESIGN.md decision 9), and the changelog sink reconciles with what it already published.
//!
//! **Committing.** A worker commits its partitions' offsets (consumer group `--kafka-group`)
//! only after the probe has seen every sink publish the epoch that contains them.
//!
//! **Failures.** A broker that is down at start or goes away is retried with backoff (errors
//! logged, rate-limited); librdkafka reconnects on its own. Nothing is dropped: a message is
//! only consumed once it is in an epoch. Bad messages become rejections with
//! `topic/partition@offset` (see [`crate::ingest`]).
//!
//! **Not handled.** Consumer-group rebalancing (partitions are assigned explicitly); tansu
//! reports wrong "latest" offsets after batched produces, so lag is computed from fetched
//! watermarks and may read high on it.

#[cfg(feature = "kafka")]
pub mod changelog;
#[cfg(feature = "kafka")]
pub mod ingest;
#[cfg(feature = "kafka")]
pub mod reader;

use crate::recipe::KafkaTopics;

/// Where Kafka is and how to talk to it (flags and environment, never the recipe).
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    pub options: Vec<(String, String)>,
    /// Consumer group for committed offsets; also names the changelog transaction.
    pub group: String,
}

impl KafkaSettings {
    /// A client config with the brokers and pass-through options.
    #[cfg(feature = "kafka")]
    pub fn client(&self) -> rdkafka::config::ClientConfig {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "thoughtflow");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// A client context that routes librdkafka's logs to `tracing` and drops the "partition EOF"
/// notices that `enable.partition.eof` turns into global errors.
#[cfg(feature = "kafka")]
pub struct Quiet;

#[cfg(feature = "kafka")]
impl rdkafka::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                tracing::warn!(target: "librdkafka", "{fac}: {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            tracing::warn!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

#[cfg(feature = "kafka")]
impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Parses `key=value` pairs (from `--kafka-option` or `THOUGHTFLOW_KAFKA_OPTIONS`, comma
/// separated).
pub fn parse_options(items: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in items.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("kafka option {item:?} is not key=value"))?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

/// The worker that reads `(topic, partition)`.
pub fn owner(topic: &str, partition: i32, peers: usize) -> usize {
    let h = thoughtflow_operators::hash::hash64(topic.as_bytes());
    ((h.wrapping_add(partition as u64)) % peers as u64) as usize
}

/// Which recipe entry a topic belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Index into the recipe's sources.
    Questions(usize),
    /// Index into the recipe's benchmarks.
    Benchmarks(usize),
}

/// The recipe's Kafka entries, in recipe order (sources first).
#[derive(Clone, Debug, Default)]
pub struct Subscriptions {
    pub entries: Vec<(Role, KafkaTopics)>,
}

impl Subscriptions {
    pub fn role_of(&self, topic: &str) -> Option<Role> {
        if topic.starts_with("__") {
            return None;
        }
        self.entries
            .iter()
            .find(|(_, t)| t.matches(topic))
            .map(|(r, _)| *r)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_reject() {
        let o = parse_options(&["security.protocol=SASL_SSL,sasl.mechanism=PLAIN".into()]).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o[1], ("sasl.mechanism".into(), "PLAIN".into()));
        assert!(parse_options(&["nonsense".into()]).is_err());
    }

    #[test]
    fn partitions_spread_over_workers() {
        let mut counts = [0; 3];
        for p in 0..30 {
            counts[owner("questions.math", p, 3)] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn roles_follow_recipe_order_and_patterns() {
        let subs = Subscriptions {
            entries: vec![
                (
                    Role::Questions(0),
                    KafkaTopics {
                        topics: vec![],
                        pattern: Some("questions\\..*".into()),
                    },
                ),
                (
                    Role::Benchmarks(0),
                    KafkaTopics {
                        topics: vec!["benchmarks".into()],
                        pattern: None,
                    },
                ),
            ],
        };
        assert_eq!(subs.role_of("questions.code"), Some(Role::Questions(0)));
        assert_eq!(subs.role_of("benchmarks"), Some(Role::Benchmarks(0)));
        assert_eq!(subs.role_of("questionsX"), None);
        assert_eq!(subs.role_of("__consumer_offsets"), None);
    }
}
