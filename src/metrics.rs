//! Prometheus metrics: `thoughtflow run --metrics-addr 127.0.0.1:9464` serves `GET /metrics` in
//! the Prometheus text format (0.0.4) from a small HTTP server on its own thread.
//!
//! The numbers are the ones `stats.json` holds (the [`Observer`] gets each epoch's stats as it
//! is written) plus the LLM service's live counters, read at scrape time. Every metric is
//! prefixed `thoughtflow_`:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `epoch` | gauge | | the last published epoch |
//! | `epochs_total` | counter | | epochs run |
//! | `epoch_duration_seconds` | gauge | | wall time of the last epoch (read to published) |
//! | `epoch_lag_seconds` | gauge | | seconds since the last epoch was published (at scrape) |
//! | `step_rows_in`, `step_rows_out` | gauge | `step`, `type` | live rows into / out of a step |
//! | `step_rows_rejected` | gauge | `step`, `reason` | live rejections of a step |
//! | `step_work_total` | counter | `step` | updates a step processed |
//! | `source_questions` | gauge | `source` | live questions per source |
//! | `ingest_rejected` | gauge | `source`, `reason` | live bad input lines / messages |
//! | `dataset_rows` | gauge | `domain` | published rows |
//! | `dataset_questions` | gauge | | questions with a published row |
//! | `dataset_changes_total` | counter | `op` (`upsert`, `delete`) | changes published |
//! | `contamination_matches` | gauge | `benchmark` | live benchmark matches |
//! | `sink_shards_written_total`, `sink_shards_unchanged_total` | counter | | dataset shards rewritten / re-rendered unchanged |
//! | `kafka_partition_lag`, `kafka_partition_next_offset` | gauge | `topic`, `partition` | Kafka source positions |
//! | `llm_calls_total` | counter | `endpoint`, `outcome` (`done`, `cached`, `failed`, `not_issued`, `retried`) | LLM calls |
//! | `llm_calls_in_flight`, `llm_calls_queued` | gauge | `endpoint` | calls running / waiting |
//! | `llm_cache_hit_ratio` | gauge | `endpoint` | cached / (cached + done) |
//! | `llm_tokens_total` | counter | `endpoint`, `kind` (`prompt`, `completion`) | tokens used |
//! | `llm_cost_usd_total` | counter | `endpoint` | spend (prices from `--prices`) |

use crate::llm::service::Service;
use crate::progress::{EpochReport, Observer};
use anyhow::{Context, Result};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Labels = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Raises a counter to `to` (counters only go up; a lower value is ignored).
fn raise(c: &Counter, to: u64) {
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

fn raise_f(c: &CounterF, to: f64) {
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

/// The run's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    last_epoch_at: Mutex<Option<Instant>>,
    llm: Mutex<Option<Arc<Service>>>,
    epoch: Gauge,
    epochs: Counter,
    epoch_duration: GaugeF,
    epoch_lag: GaugeF,
    step_in: Family<Labels, Gauge>,
    step_out: Family<Labels, Gauge>,
    step_rejected: Family<Labels, Gauge>,
    step_work: Family<Labels, Counter>,
    source_questions: Family<Labels, Gauge>,
    ingest_rejected: Family<Labels, Gauge>,
    dataset_rows: Family<Labels, Gauge>,
    dataset_questions: Gauge,
    changes: Family<Labels, Counter>,
    matches: Family<Labels, Gauge>,
    shards_written: Counter,
    shards_unchanged: Counter,
    kafka_lag: Family<Labels, Gauge>,
    kafka_offset: Family<Labels, Gauge>,
    llm_calls: Family<Labels, Counter>,
    llm_in_flight: Family<Labels, Gauge>,
    llm_queued: Family<Labels, Gauge>,
    llm_hit_ratio: Family<Labels, GaugeF>,
    llm_tokens: Family<Labels, Counter>,
    llm_cost: Family<Labels, CounterF>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("thoughtflow");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            last_epoch_at: Mutex::new(None),
            llm: Mutex::new(None),
            epoch: Gauge::default(),
            epochs: Counter::default(),
            epoch_duration: GaugeF::default(),
            epoch_lag: GaugeF::default(),
            step_in: Family::default(),
            step_out: Family::default(),
            step_rejected: Family::default(),
            step_work: Family::default(),
            source_questions: Family::default(),
            ingest_rejected: Family::default(),
            dataset_rows: Family::default(),
            dataset_questions: Gauge::default(),
            changes: Family::default(),
            matches: Family::default(),
            shards_written: Counter::default(),
            shards_unchanged: Counter::default(),
            kafka_lag: Family::default(),
            kafka_offset: Family::default(),
            llm_calls: Family::default(),
            llm_in_flight: Family::default(),
            llm_queued: Family::default(),
            llm_hit_ratio: Family::default(),
            llm_tokens: Family::default(),
            llm_cost: Family::default(),
        };
        r.register("epoch", "The last published epoch", m.epoch.clone());
        r.register("epochs", "Epochs run", m.epochs.clone());
        r.register(
            "epoch_duration_seconds",
            "Wall time of the last epoch, from reading its inputs to publishing it",
            m.epoch_duration.clone(),
        );
        r.register(
            "epoch_lag_seconds",
            "Seconds since the last epoch was published",
            m.epoch_lag.clone(),
        );
        r.register("step_rows_in", "Live rows into a step", m.step_in.clone());
        r.register(
            "step_rows_out",
            "Live rows out of a step",
            m.step_out.clone(),
        );
        r.register(
            "step_rows_rejected",
            "Live rows a step rejected, by reason",
            m.step_rejected.clone(),
        );
        r.register(
            "step_work",
            "Updates a step processed (inserts and retractions)",
            m.step_work.clone(),
        );
        r.register(
            "source_questions",
            "Live questions per source",
            m.source_questions.clone(),
        );
        r.register(
            "ingest_rejected",
            "Live bad input lines or messages per source and reason",
            m.ingest_rejected.clone(),
        );
        r.register(
            "dataset_rows",
            "Published dataset rows per domain",
            m.dataset_rows.clone(),
        );
        r.register(
            "dataset_questions",
            "Questions with at least one published row",
            m.dataset_questions.clone(),
        );
        r.register(
            "dataset_changes",
            "Dataset changes published, by op",
            m.changes.clone(),
        );
        r.register(
            "contamination_matches",
            "Live benchmark matches per benchmark",
            m.matches.clone(),
        );
        r.register(
            "sink_shards_written",
            "Dataset shards whose files were rewritten",
            m.shards_written.clone(),
        );
        r.register(
            "sink_shards_unchanged",
            "Dataset shards re-rendered with the same bytes and left untouched",
            m.shards_unchanged.clone(),
        );
        r.register(
            "kafka_partition_lag",
            "Messages behind the high watermark, per Kafka source partition",
            m.kafka_lag.clone(),
        );
        r.register(
            "kafka_partition_next_offset",
            "Next offset to read, per Kafka source partition",
            m.kafka_offset.clone(),
        );
        r.register(
            "llm_calls",
            "LLM calls by endpoint and outcome",
            m.llm_calls.clone(),
        );
        r.register(
            "llm_calls_in_flight",
            "LLM calls running",
            m.llm_in_flight.clone(),
        );
        r.register(
            "llm_calls_queued",
            "LLM calls waiting for a permit or the rate limits",
            m.llm_queued.clone(),
        );
        r.register(
            "llm_cache_hit_ratio",
            "Share of answered LLM requests served from the call cache",
            m.llm_hit_ratio.clone(),
        );
        r.register(
            "llm_tokens",
            "LLM tokens by endpoint and kind",
            m.llm_tokens.clone(),
        );
        r.register(
            "llm_cost_usd",
            "LLM spend in USD (from --prices)",
            m.llm_cost.clone(),
        );
        *m.registry.lock().expect("registry") = r;
        m
    }

    /// Updates the metrics from a `stats.json` value.
    pub fn update_from_stats(&self, s: &Value) {
        let _guard = self.registry.lock().expect("registry");
        self.epoch.set(s["epoch"].as_i64().unwrap_or(0));
        raise(&self.epochs, s["epochs_run"].as_u64().unwrap_or(0));
        self.step_in.clear();
        self.step_out.clear();
        self.step_rejected.clear();
        for st in s["steps"].as_array().into_iter().flatten() {
            let id = st["id"].as_str().unwrap_or("?");
            let kind = st["type"].as_str().unwrap_or("?");
            let l = labels(&[("step", id), ("type", kind)]);
            self.step_in
                .get_or_create(&l)
                .set(st["in"].as_i64().unwrap_or(0));
            self.step_out
                .get_or_create(&l)
                .set(st["out"].as_i64().unwrap_or(0));
            for (reason, v) in st["rejected"].as_object().into_iter().flatten() {
                self.step_rejected
                    .get_or_create(&labels(&[("step", id), ("reason", reason)]))
                    .set(v.as_i64().unwrap_or(0));
            }
            raise(
                &self.step_work.get_or_create(&labels(&[("step", id)])),
                st["work"]["total"].as_u64().unwrap_or(0),
            );
        }
        self.source_questions.clear();
        self.ingest_rejected.clear();
        for (name, src) in s["sources"].as_object().into_iter().flatten() {
            self.source_questions
                .get_or_create(&labels(&[("source", name)]))
                .set(src["questions"].as_i64().unwrap_or(0));
            for (reason, v) in src["rejected"].as_object().into_iter().flatten() {
                self.ingest_rejected
                    .get_or_create(&labels(&[("source", name), ("reason", reason)]))
                    .set(v.as_i64().unwrap_or(0));
            }
        }
        let d = &s["dataset"];
        self.dataset_rows.clear();
        for (domain, v) in d["by_domain"].as_object().into_iter().flatten() {
            self.dataset_rows
                .get_or_create(&labels(&[("domain", domain)]))
                .set(v.as_i64().unwrap_or(0));
        }
        self.dataset_questions
            .set(d["questions"].as_i64().unwrap_or(0));
        let shards = &d["shards"]["total"];
        raise(
            &self.shards_written,
            shards["rewritten"].as_u64().unwrap_or(0),
        );
        raise(
            &self.shards_unchanged,
            shards["unchanged"].as_u64().unwrap_or(0),
        );
        for op in ["upsert", "delete"] {
            raise(
                &self.changes.get_or_create(&labels(&[("op", op)])),
                d["changes_total"][format!("{op}s")].as_u64().unwrap_or(0),
            );
        }
        self.matches.clear();
        for (b, v) in s["contamination"]["by_benchmark"]
            .as_object()
            .into_iter()
            .flatten()
        {
            self.matches
                .get_or_create(&labels(&[("benchmark", b)]))
                .set(v.as_i64().unwrap_or(0));
        }
        for p in s["kafka"]["partitions"].as_array().into_iter().flatten() {
            let topic = p["topic"].as_str().unwrap_or("?");
            let part = p["partition"].to_string();
            let l = labels(&[("topic", topic), ("partition", &part)]);
            self.kafka_lag
                .get_or_create(&l)
                .set(p["lag"].as_i64().unwrap_or(0));
            self.kafka_offset
                .get_or_create(&l)
                .set(p["next_offset"].as_i64().unwrap_or(0));
        }
        if self.llm.lock().expect("llm").is_none() && s["llm"].is_object() {
            self.update_llm(&s["llm"]);
        }
    }

    /// Updates the LLM metrics from a service report (`stats.json`'s `llm`).
    fn update_llm(&self, report: &Value) {
        for (endpoint, c) in report["endpoints"].as_object().into_iter().flatten() {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            for (outcome, key) in [
                ("done", "done"),
                ("cached", "cached"),
                ("failed", "failed"),
                ("not_issued", "not_issued"),
                ("retried", "retries"),
            ] {
                raise(
                    &self
                        .llm_calls
                        .get_or_create(&labels(&[("endpoint", endpoint), ("outcome", outcome)])),
                    n(key),
                );
            }
            let e = labels(&[("endpoint", endpoint)]);
            self.llm_in_flight
                .get_or_create(&e)
                .set(n("in_flight") as i64);
            self.llm_queued.get_or_create(&e).set(n("queued") as i64);
            let answered = n("done") + n("cached");
            self.llm_hit_ratio.get_or_create(&e).set(if answered == 0 {
                0.0
            } else {
                n("cached") as f64 / answered as f64
            });
            for (kind, key) in [
                ("prompt", "prompt_tokens"),
                ("completion", "completion_tokens"),
            ] {
                raise(
                    &self
                        .llm_tokens
                        .get_or_create(&labels(&[("endpoint", endpoint), ("kind", kind)])),
                    n(key),
                );
            }
            raise_f(
                &self.llm_cost.get_or_create(&e),
                c["cost_usd"].as_f64().unwrap_or(0.0),
            );
        }
    }

    /// The exposition (Prometheus text format 0.0.4), with live values refreshed.
    pub fn render(&self) -> String {
        let live = self.llm.lock().expect("llm").clone();
        let report = live.map(|s| s.report());
        let registry = self.registry.lock().expect("registry");
        if let Some(r) = &report {
            self.update_llm(r);
        }
        if let Some(at) = *self.last_epoch_at.lock().expect("epoch time") {
            self.epoch_lag.set(at.elapsed().as_secs_f64());
        }
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).expect("encoding metrics");
        out
    }

    /// Serves `GET /metrics` on `addr` from a background thread; returns the bound address.
    pub fn serve(self: &Arc<Self>, addr: &str) -> Result<SocketAddr> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        let bound = listener.local_addr()?;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if let Err(e) = me.answer(stream) {
                        tracing::debug!("metrics: {e}");
                    }
                }
            })
            .context("starting the metrics thread")?;
        tracing::info!(addr = %bound, "serving Prometheus metrics at http://{bound}/metrics");
        Ok(bound)
    }

    fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let mut first = head.lines().next().unwrap_or("").split_whitespace();
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        let (status, ctype, body) = match (method, path) {
            ("GET", "/metrics") | ("HEAD", "/metrics") => {
                ("200 OK", prometheus_text::CONTENT_TYPE, self.render())
            }
            ("GET", "/") | ("HEAD", "/") => (
                "200 OK",
                "text/plain; charset=utf-8",
                "thoughtflow: metrics at /metrics\n".to_string(),
            ),
            ("GET", _) | ("HEAD", _) => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: try /metrics\n".to_string(),
            ),
            _ => (
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "only GET\n".to_string(),
            ),
        };
        let mut resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            resp.extend_from_slice(body.as_bytes());
        }
        stream.write_all(&resp)?;
        stream.flush()
    }
}

impl Observer for Metrics {
    fn llm_started(&self, service: &Arc<Service>) {
        *self.llm.lock().expect("llm") = Some(Arc::clone(service));
    }

    fn epoch(&self, report: &EpochReport) {
        self.update_from_stats(report.stats);
        let _guard = self.registry.lock().expect("registry");
        self.epoch_duration.set(report.duration.as_secs_f64());
        *self.last_epoch_at.lock().expect("epoch time") = Some(Instant::now());
        self.epoch_lag.set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_stats_as_prometheus_text() {
        let m = Metrics::new();
        m.update_from_stats(&serde_json::json!({
            "epoch": 2, "epochs_run": 3,
            "steps": [{"id": "dedup", "type": "dedup", "in": 10, "out": 7,
                       "rejected": {"duplicate": 3}, "work": {"total": 12}}],
            "sources": {"a": {"questions": 10, "rejected": {"malformed_json": 1}}},
            "dataset": {"by_domain": {"math": 7}, "questions": 7,
                        "changes_total": {"upserts": 9, "deletes": 2}},
            "contamination": {"by_benchmark": {"aime": 1}},
            "llm": {"endpoints": {"t": {"done": 4, "cached": 4, "cost_usd": 0.5,
                                        "prompt_tokens": 100, "completion_tokens": 50}}},
        }));
        let text = m.render();
        for line in [
            "thoughtflow_epoch 2",
            "thoughtflow_epochs_total 3",
            "thoughtflow_step_rows_in{step=\"dedup\",type=\"dedup\"} 10",
            "thoughtflow_step_rows_out{step=\"dedup\",type=\"dedup\"} 7",
            "thoughtflow_step_rows_rejected{step=\"dedup\",reason=\"duplicate\"} 3",
            "thoughtflow_step_work_total{step=\"dedup\"} 12",
            "thoughtflow_dataset_changes_total{op=\"delete\"} 2",
            "thoughtflow_llm_calls_total{endpoint=\"t\",outcome=\"cached\"} 4",
            "thoughtflow_llm_cache_hit_ratio{endpoint=\"t\"} 0.5",
            "thoughtflow_llm_cost_usd_total{endpoint=\"t\"} 0.5",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
