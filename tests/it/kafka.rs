//! Kafka against a real broker (tansu on 127.0.0.1, started per test by `scripts/services`):
//! topics in, the changelog topic out, tombstones, benchmarks, bad messages, broker restarts
//! and a killed run.

use crate::util::{bin, dataset, read_jsonl, repo, step, Following};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn services(args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(repo().join("scripts/services"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/services");
    assert!(
        out.status.success(),
        "scripts/services {args:?} failed (run `scripts/services install` first):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker on a free port; stopped on drop.
pub struct Broker {
    pub port: u16,
    storage: &'static str,
}

impl Broker {
    pub fn start(storage: &'static str) -> Broker {
        let b = Broker {
            port: free_port(),
            storage,
        };
        b.up();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn up(&self) {
        services(
            &["start-kafka", &self.port.to_string()],
            &[("TANSU_STORAGE", self.storage)],
        );
    }

    pub fn down(&self) {
        services(&["stop-kafka", &self.port.to_string()], &[]);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/services"))
            .args(["stop-kafka", &self.port.to_string()])
            .output();
    }
}

fn producer(broker: &Broker) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

/// Produces `(key, value)` messages (`None` = tombstone) and waits for delivery.
fn produce(broker: &Broker, topic: &str, messages: &[(&str, Option<String>)]) {
    let p = producer(broker);
    for (k, v) in messages {
        let mut r = BaseRecord::<str, str>::to(topic).key(*k);
        if let Some(v) = v {
            r = r.payload(v.as_str());
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn question(text: &str) -> Option<String> {
    Some(json!({ "question": text }).to_string())
}

/// Everything in a topic (read_committed): all `(key, value)` messages in partition order.
fn read_topic(broker: &Broker, topic: &str) -> Vec<(String, Option<String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", "tests.reader")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut eof = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof.len() < parts.len() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned());
                out.push((key, value));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    out
}

/// The changelog's compacted view (progress markers left out), and how many row messages it has.
fn changelog(broker: &Broker, topic: &str) -> (BTreeMap<String, Value>, usize) {
    let mut view = BTreeMap::new();
    let mut messages = 0;
    for (k, v) in read_topic(broker, topic) {
        if k == "__thoughtflow.progress" {
            continue;
        }
        messages += 1;
        match v {
            Some(v) => {
                view.insert(k, serde_json::from_str(&v).unwrap());
            }
            None => {
                view.remove(&k);
            }
        }
    }
    (view, messages)
}

fn recipe(dir: &Path, samples: u32) -> PathBuf {
    let path = dir.join("kafka.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[sources]]
name = "live"
kafka = {{ pattern = "questions\\..*" }}
domain = "math"
max_record_bytes = 4000

[[benchmarks]]
name = "evals"
kafka = {{ topic = "benchmarks" }}

[[teachers]]
name = "t"
kind = "synthetic"
answer_words = 12

[[steps]]
id = "decontam"
type = "decontaminate"
ngram = 8

[[steps]]
id = "dedup"
type = "dedup"

[[steps]]
id = "answers"
type = "fanout"
teacher = "t"
samples = {samples}

[sink]
kafka = {{ topic = "dataset.changes", progress = true }}
"#
        ),
    )
    .unwrap();
    path
}

/// A question text that shares no 8-word window with any other (topic, i).
fn text(topic: &str, i: usize) -> String {
    const WORDS: [&str; 24] = [
        "lattice", "path", "prime", "graph", "walk", "cycle", "sum", "root", "grid", "cell",
        "modulo", "digit", "vertex", "edge", "matrix", "series", "bound", "chain", "color", "tile",
        "angle", "circle", "vector", "field",
    ];
    let mut state = thoughtflow_operators::hash::hash64(format!("{topic}/{i}").as_bytes()) | 1;
    let words: Vec<&str> = (0..16)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            WORDS[(state % 24) as usize]
        })
        .collect();
    format!("Question {i} of {topic}: {}?", words.join(" "))
}

fn kafka_args(broker: &Broker) -> Vec<String> {
    vec![
        "--kafka-brokers".into(),
        broker.addr(),
        "--kafka-group".into(),
        "tests.run".into(),
    ]
}

#[test]
fn topics_flow_incrementally_with_tombstones_benchmarks_and_bad_messages() {
    let broker = Broker::start("memory");
    for topic in ["questions.alpha", "questions.beta"] {
        let msgs: Vec<(String, Option<String>)> = (0..10)
            .map(|i| (format!("q{i}"), question(&text(topic, i))))
            .collect();
        let refs: Vec<(&str, Option<String>)> =
            msgs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        produce(&broker, topic, &refs);
    }
    produce(
        &broker,
        "questions.alpha",
        &[
            ("bad-json", Some("{not json".into())),
            (
                "bad-missing",
                Some(json!({"text": "no question field"}).to_string()),
            ),
            ("bad-big", question(&"x".repeat(5000))),
            (
                "bad-domain",
                Some(json!({"question": "A question?", "domain": "art"}).to_string()),
            ),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path(), 16);
    let out = tmp.path().join("out");
    let args = kafka_args(&broker);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let run = Following::start(&recipe, &out, &args);
    let s0 = run.wait_for("2 topics x 10 questions x 16 samples", |s| {
        s["dataset"]["rows"] == 320
    });
    assert_eq!(s0["sources"]["questions.alpha"]["questions"], 10);
    assert_eq!(s0["sources"]["questions.beta"]["questions"], 10);

    // Bad messages are rejections with topic, partition and offset; good ones all arrived.
    let rejected = read_jsonl(&out.join("rejections/ingest.jsonl"));
    let mut reasons: Vec<&str> = rejected
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "malformed_json",
            "missing_field",
            "too_large",
            "unknown_domain"
        ]
    );
    for r in &rejected {
        let loc = r["row"]["location"].as_str().unwrap();
        assert!(
            loc.starts_with("questions.alpha/") && loc.contains('@'),
            "{loc}"
        );
    }
    let (view, _) = changelog(&broker, "dataset.changes");
    assert_eq!(view.len(), 320);
    assert_eq!(view["questions.alpha/q3/t/15"]["domain"], "math");

    // A new topic while running: only its delta is processed.
    let gamma: Vec<(String, Option<String>)> = (0..5)
        .map(|i| (format!("g{i}"), question(&text("questions.gamma", i))))
        .collect();
    let refs: Vec<(&str, Option<String>)> =
        gamma.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    produce(&broker, "questions.gamma", &refs);
    let s1 = run.wait_for("the new topic's rows", |s| s["dataset"]["rows"] == 400);
    assert_eq!(step(&s1, "decontam")["work"]["last_epoch"], 5);
    assert_eq!(s1["ingest"]["work"]["last_epoch"], 5);
    assert_eq!(changelog(&broker, "dataset.changes").0.len(), 400);

    // A tombstone deletes the question's 16 rows downstream.
    produce(&broker, "questions.alpha", &[("q3", None)]);
    run.wait_for("the tombstone", |s| s["dataset"]["rows"] == 384);
    let (view, _) = changelog(&broker, "dataset.changes");
    assert_eq!(view.len(), 384);
    assert!(!view.keys().any(|k| k.starts_with("questions.alpha/q3/")));
    assert!(!dataset(&out)
        .keys()
        .any(|k| k.starts_with("questions.alpha/q3/")));

    // A benchmark item that matches a published question retracts its rows.
    produce(
        &broker,
        "benchmarks",
        &[(
            "item-1",
            Some(
                json!({"benchmark": "lattice-eval", "question": text("questions.beta", 4)})
                    .to_string(),
            ),
        )],
    );
    let s3 = run.wait_for("the benchmark retraction", |s| s["dataset"]["rows"] == 368);
    assert_eq!(s3["contamination"]["by_benchmark"]["lattice-eval"], 1);
    let (view, messages) = changelog(&broker, "dataset.changes");
    assert_eq!(view.len(), 368);
    assert!(!view.keys().any(|k| k.starts_with("questions.beta/q4/")));
    // Every row was published once, and each delete once: 400 upserts + 32 tombstones.
    assert_eq!(messages, 432);
    run.stop();

    // Offsets were committed for everything consumed.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", "tests.run")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in ["questions.alpha", "questions.beta", "questions.gamma"] {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for p in md.topics()[0].partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(
        total,
        10 + 4 + 1 + 10 + 5,
        "committed offsets cover every consumed message"
    );
}

#[test]
fn a_broker_restart_loses_and_duplicates_nothing() {
    services(&["install-s3"], &[]);
    let broker = Broker::start("s3");
    let first: Vec<(String, Option<String>)> = (0..10)
        .map(|i| (format!("q{i}"), question(&text("questions.r", i))))
        .collect();
    let refs: Vec<(&str, Option<String>)> =
        first.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    produce(&broker, "questions.r", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path(), 2);
    let out = tmp.path().join("out");
    let args = kafka_args(&broker);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let run = Following::start(&recipe, &out, &args);
    let s0 = run.wait_for("first rows", |s| s["dataset"]["rows"] == 20);

    broker.down();
    std::thread::sleep(Duration::from_secs(3));
    broker.up();
    let more: Vec<(String, Option<String>)> = (10..15)
        .map(|i| (format!("q{i}"), question(&text("questions.r", i))))
        .collect();
    let refs: Vec<(&str, Option<String>)> =
        more.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    produce(&broker, "questions.r", &refs);
    let s1 = run.wait_for("rows after the restart", |s| s["dataset"]["rows"] == 30);
    assert!(s1["epoch"].as_u64() > s0["epoch"].as_u64());
    let (view, messages) = changelog(&broker, "dataset.changes");
    assert_eq!(view.len(), 30);
    assert_eq!(messages, 30, "each row published exactly once");
    run.stop();
}

#[test]
fn a_killed_run_restarts_and_matches_an_uninterrupted_run() {
    let broker = Broker::start("memory");
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path(), 3);
    let args = kafka_args(&broker);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let batch = |topic: &str, range: std::ops::Range<usize>| {
        let msgs: Vec<(String, Option<String>)> = range
            .map(|i| (format!("q{i}"), question(&text(topic, i))))
            .collect();
        let refs: Vec<(&str, Option<String>)> =
            msgs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        produce(&broker, topic, &refs);
    };
    batch("questions.k1", 0..20);
    batch("questions.k2", 0..20);
    let out = tmp.path().join("out");
    let mut run = Following::start(&recipe, &out, &args);
    run.wait_for("first rows", |s| s["dataset"]["rows"] == 120);

    // More input, then SIGKILL while it is (likely) being processed.
    batch("questions.k1", 20..60);
    produce(&broker, "questions.k2", &[("q5", None), ("q6", question("A rewritten question six about random walks on a cycle and their mixing times."))]);
    std::thread::sleep(Duration::from_millis(150));
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    drop(run);

    // Restart on the same output folder and group, now on 2 workers: it converges.
    let mut args2 = args.clone();
    args2.extend(["--workers", "2"]);
    let run = Following::start(&recipe, &out, &args2);
    run.wait_for("all rows after restart", |s| {
        s["dataset"]["rows"] == (60 + 19) * 3
    });
    run.stop();

    // An uninterrupted run over the same topics publishes the same dataset.
    let clean = tmp.path().join("clean");
    let mut cmd = bin();
    cmd.args([
        "run",
        recipe.to_str().unwrap(),
        "--out",
        clean.to_str().unwrap(),
    ])
    .args(&args[..2])
    .args(["--kafka-group", "tests.clean"]);
    let status = cmd.status().unwrap();
    assert!(status.success());
    let (a, b) = (dataset(&out), dataset(&clean));
    assert_eq!(a.len(), b.len());
    assert!(
        a == b,
        "a killed-and-restarted run differs from a clean run"
    );
    // The changelog holds exactly that dataset, with no duplicate publication.
    let (view, _) = changelog(&broker, "dataset.changes");
    assert_eq!(view.len(), a.len());
    for (id, row) in &a {
        assert_eq!(
            &view[id], row,
            "changelog row {id} differs from the dataset"
        );
    }
}

#[test]
fn a_kafka_recipe_without_brokers_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path(), 1);
    let out = bin()
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--out",
            tmp.path().join("o").to_str().unwrap(),
        ])
        .env_remove("THOUGHTFLOW_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kafka-brokers"));
}

#[test]
fn a_broker_down_at_start_is_a_clear_error_or_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path(), 1);
    let port = free_port();
    // Without --follow: a clear error after the wait.
    let out = bin()
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--out",
            tmp.path().join("o").to_str().unwrap(),
        ])
        .args([
            "--kafka-brokers",
            &format!("127.0.0.1:{port}"),
            "--kafka-wait-secs",
            "3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("is the broker up?"),
        "{err}"
    );

    // With --follow: it keeps retrying, and picks up the broker when it comes.
    let broker = Broker {
        port,
        storage: "memory",
    };
    let out_dir = tmp.path().join("f");
    let addr = broker.addr();
    let run = Following::start(
        &recipe,
        &out_dir,
        &["--kafka-brokers", &addr, "--kafka-wait-secs", "1"],
    );
    std::thread::sleep(Duration::from_secs(4));
    broker.up();
    produce(
        &broker,
        "questions.late",
        &[("q0", question(&text("questions.late", 0)))],
    );
    run.wait_for("rows after the broker came up", |s| {
        s["dataset"]["rows"] == 1
    });
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(
        log.contains("unreachable") && log.contains("retrying"),
        "{log}"
    );
    run.stop();
}
