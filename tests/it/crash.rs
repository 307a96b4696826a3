//! Crash anywhere, restart, same dataset, no paid call repeated (issue 6).
//!
//! The recipe grades a few hundred questions with an LLM scorer and fans the graded ones out
//! to an OpenAI teacher, both served by the deterministic in-process stand-in
//! ([`StandIn::deterministic`]: each answer is a function of the request body and comes after a
//! short delay). A clean, uninterrupted run gives the reference: the files under
//! `OUT/dataset` and `OUT/rejections` (and a manifest, if the sink writes one, timestamps
//! aside) and the number of distinct calls answered.
//!
//! Then the same command is SIGKILLed at many points, and restarted on the same `--out` and
//! `--cache` until it completes: at named points (the runtime's `THOUGHTFLOW_TEST_PAUSE_AT`
//! hook: while reading the sources, with an answer received but not yet cached, cached but not
//! yet in the dataflow, a worker about to rewrite its shards while the other may be writing its
//! own, an epoch's data written but not its changes and stats), once the server has received N
//! requests (teacher calls in flight), and at seeded random times. After the last restart:
//!
//! - every reference file is byte-identical (so no row is lost or duplicated), and no other file
//!   is there (no torn or temporary file);
//! - the distinct calls answered equal the clean run's;
//! - **no call whose answer was cached is ever made again**: at every kill, the test reads the
//!   cache (`thoughtflow cache export`; each stand-in answer names the request it answers), and
//!   no request for a cached call arrives after that kill.
//!
//! What is honestly allowed: a call in flight at the kill (received by the server, its answer
//! not yet in the cache: not answered yet, answered but unread, or read but not committed) may
//! be sent again after the restart, because the killed process never durably got it. A real
//! endpoint bills such a call twice; the number of these is bounded by the calls in flight plus
//! the answers awaiting their cache commit at the moment of the kill, and the test checks that
//! the answers billed beyond the distinct ones never exceed the answered-but-uncached calls
//! counted at the kills.

use crate::standin::StandIn;
use crate::util::{bin, write_jsonl, Following};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const DELAY: Duration = Duration::from_millis(4);

/// Questions in two files (a few planted exact duplicates and bad lines), and the recipe.
fn fixture(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let question = |i: usize| {
        format!(
            "Question {i}: how many integer solutions does x^2 + {} y^2 = {} have with |x|, |y| < {}?",
            i % 7 + 1,
            1000 + 37 * i,
            50 + i
        )
    };
    let a: Vec<Value> = (0..160)
        .map(|i| json!({"id": format!("a{i:03}"), "question": question(i)}))
        .collect();
    let mut b: Vec<Value> = (160..300)
        .map(|i| json!({"id": format!("b{i:03}"), "question": question(i)}))
        .collect();
    // Exact copies of a's questions: dedup keeps a's, rejects these.
    b.extend((0..12).map(|i| json!({"id": format!("copy{i:02}"), "question": question(i * 13)})));
    write_jsonl(&dir.join("src/a.jsonl"), &a);
    write_jsonl(&dir.join("src/b.jsonl"), &b);
    let mut text = std::fs::read_to_string(dir.join("src/b.jsonl")).unwrap();
    text.push_str("{not json\n{\"id\": \"nofield\"}\n");
    std::fs::write(dir.join("src/b.jsonl"), text).unwrap();
    let recipe = dir.join("crash.toml");
    std::fs::write(
        &recipe,
        r#"
[[sources]]
name = "s"
path = "src"
domain = "math"

[[teachers]]
name = "t"
kind = "openai"
endpoint = "teacher"
temperature = 0.7
max_tokens = 32
samples = 2

[[steps]]
id = "difficulty"
type = "score"
scorer = "llm_difficulty"
endpoint = "grader"
max_tokens = 40

[[steps]]
id = "graded"
type = "select"
mode = "threshold"
min = 5

[[steps]]
id = "dedup"
type = "dedup"
mode = "exact"

[[steps]]
id = "answers"
type = "fanout"
teacher = "t"

[sink]
shards = 8
"#,
    )
    .unwrap();
    recipe
}

fn llm_args(server: &StandIn) -> Vec<String> {
    let url = server.url();
    vec![
        "--llm".into(),
        format!("grader={url},model=stand-in,concurrency=8,timeout=30"),
        "--llm".into(),
        format!("teacher={url},model=stand-in,concurrency=8,timeout=30"),
    ]
}

/// One invocation of the run, stderr to `log`.
fn spawn(
    recipe: &Path,
    out: &Path,
    cache: &Path,
    server: &StandIn,
    pause: Option<&str>,
    log: &Path,
) -> Child {
    let mut cmd = bin();
    cmd.args(["run", recipe.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(["--cache", cache.to_str().unwrap()])
        .args(["--workers", "2"])
        .args(llm_args(server))
        .env("RUST_LOG", "info")
        .env_remove("THOUGHTFLOW_TEST_PAUSE_AT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(p) = pause {
        cmd.env("THOUGHTFLOW_TEST_PAUSE_AT", p);
    }
    cmd.spawn().expect("spawn thoughtflow")
}

/// The files a run publishes, by path under OUT (a manifest's timestamps dropped).
fn published(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for dir in ["dataset", "rejections"] {
        let Ok(entries) = std::fs::read_dir(out.join(dir)) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if !p.is_file() {
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut bytes = std::fs::read(&p).unwrap();
            if name.starts_with("manifest") {
                // What the files hold is compared; when and by which run they were written
                // is history, which restarts change.
                let mut v: Value = serde_json::from_slice(&bytes).expect("manifest is JSON");
                drop_history(&mut v);
                bytes = serde_json::to_vec(&v).unwrap();
            }
            files.insert(format!("{dir}/{name}"), bytes);
        }
    }
    files
}

fn drop_history(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|k, _| {
                let k = k.to_ascii_lowercase();
                !(["run", "epoch", "epoch_written", "run_written"].contains(&k.as_str())
                    || ["time", "unix", "_at", "created", "updated", "started"]
                        .iter()
                        .any(|t| k.contains(t)))
            });
            o.values_mut().for_each(drop_history);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_history),
        _ => {}
    }
}

/// The stand-in request ids whose answers are in the cache (each answer names its request).
fn cached_requests(cache: &Path) -> HashSet<String> {
    if !cache.exists() {
        return HashSet::new();
    }
    let out = bin()
        .args(["cache", "export", "--cache", cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cache export after a kill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let text = v["text"].as_str().unwrap().to_string();
            let at = text.find("#h=").expect("a stand-in answer") + 3;
            text[at..at + 16].to_string()
        })
        .collect()
}

/// Where to kill an attempt.
#[derive(Clone, Debug)]
enum Kill {
    /// At a `THOUGHTFLOW_TEST_PAUSE_AT` point (`POINT[:N]`).
    At(&'static str),
    /// Once the server has received this many requests in this attempt.
    Received(usize),
    /// After this long.
    After(Duration),
}

struct Reference {
    files: BTreeMap<String, Vec<u8>>,
    distinct_calls: usize,
    took: Duration,
    rows: usize,
}

fn wait_done(child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{what} failed ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn clean_run(dir: &Path, recipe: &Path) -> Reference {
    let server = StandIn::deterministic(DELAY);
    let out = dir.join("clean");
    let log = dir.join("clean.log");
    let started = Instant::now();
    let mut child = spawn(recipe, &out, &dir.join("clean.redb"), &server, None, &log);
    wait_done(&mut child, &log, "the clean run");
    let took = started.elapsed();
    let (distinct, total) = server.ledger.finished_counts();
    assert_eq!(distinct, total, "a clean run calls each request once");
    let files = published(&out);
    let rows: usize = files
        .iter()
        .filter(|(k, _)| k.starts_with("dataset/"))
        .map(|(_, v)| v.iter().filter(|b| **b == b'\n').count())
        .sum();
    assert!(rows > 200, "the fixture should publish a few hundred rows");
    assert!(files.contains_key("rejections/dedup.jsonl"));
    assert!(files.contains_key("rejections/ingest.jsonl"));
    Reference {
        files,
        distinct_calls: distinct,
        took,
        rows,
    }
}

/// Kills the run at each of `kills` in turn, restarting it each time, then lets it finish;
/// checks the outcome against `reference`. Returns how many kills landed.
fn crash_and_restart(
    dir: &Path,
    recipe: &Path,
    name: &str,
    kills: &[Kill],
    reference: &Reference,
) -> usize {
    let server = StandIn::deterministic(DELAY);
    let out = dir.join(name);
    let cache = dir.join(format!("{name}.redb"));
    let mut landed = 0;
    // Answered requests not in the cache at a kill: the only ones that may be sent again.
    let mut resendable = 0usize;
    // Per cached request, how many times it had been received when it was found cached.
    let mut frozen: HashMap<String, usize> = HashMap::new();
    for (n, kill) in kills.iter().enumerate() {
        let log = dir.join(format!("{name}.{n}.log"));
        let before = server.requests.load(Ordering::SeqCst);
        let pause = match kill {
            Kill::At(p) => Some(*p),
            _ => None,
        };
        let mut child = spawn(recipe, &out, &cache, &server, pause, &log);
        let started = Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{name}: attempt {n} failed ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                break true;
            }
            let now = match kill {
                Kill::At(p) => std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(&format!("test pause at {}", p.split(':').next().unwrap())),
                Kill::Received(k) => server.requests.load(Ordering::SeqCst) >= before + k,
                Kill::After(d) => started.elapsed() >= *d,
            };
            if now {
                child.kill().unwrap();
                child.wait().unwrap();
                break false;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name}: attempt {n} hangs"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        if finished {
            assert!(
                !matches!(kill, Kill::At(_)),
                "{name}: the run finished before reaching {kill:?}"
            );
            eprintln!("{name}: attempt {n} finished before {kill:?}");
            break;
        }
        landed += 1;
        server.ledger.settle();
        let cached = cached_requests(&cache);
        let received = server.ledger.received.lock().unwrap().clone();
        let answered = server.ledger.finished.lock().unwrap().clone();
        for id in &cached {
            assert!(
                answered.contains_key(id),
                "{name}: the cache holds an answer the server never gave ({id})"
            );
            frozen.entry(id.clone()).or_insert(received[id]);
        }
        resendable += answered.keys().filter(|id| !cached.contains(*id)).count();
        eprintln!(
            "{name}: kill {n} ({kill:?}) after {:?}: {} answered, {} cached",
            started.elapsed(),
            answered.len(),
            cached.len()
        );
    }
    // The last restart runs to the end.
    let log = dir.join(format!("{name}.last.log"));
    let mut child = spawn(recipe, &out, &cache, &server, None, &log);
    wait_done(&mut child, &log, &format!("{name}: the final restart"));

    let files = published(&out);
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&files),
        names(&reference.files),
        "{name}: the published files differ from the clean run's"
    );
    for (path, bytes) in &reference.files {
        assert!(
            &files[path] == bytes,
            "{name}: {path} differs from the clean run's"
        );
    }
    let received = server.ledger.received.lock().unwrap().clone();
    for (id, at_kill) in &frozen {
        assert_eq!(
            received[id], *at_kill,
            "{name}: request {id} was sent again after its answer was cached"
        );
    }
    let (distinct, total) = server.ledger.finished_counts();
    assert_eq!(
        distinct, reference.distinct_calls,
        "{name}: distinct calls answered differ from the clean run's"
    );
    assert!(
        total - distinct <= resendable,
        "{name}: {} answers billed twice, but only {resendable} were answered and uncached at a kill",
        total - distinct
    );
    assert_eq!(
        cached_requests(&cache).len(),
        reference.distinct_calls,
        "{name}: every answer ends in the cache"
    );
    landed
}

/// A small seeded generator (xorshift), so the random kill points are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn killed_anywhere_a_restart_publishes_the_clean_dataset_and_pays_no_call_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = fixture(tmp.path());
    let reference = clean_run(tmp.path(), &recipe);
    eprintln!(
        "clean run: {} rows, {} calls, {:?}",
        reference.rows, reference.distinct_calls, reference.took
    );
    let named: Vec<(&str, Vec<Kill>)> = vec![
        ("ingest", vec![Kill::At("ingest")]),
        ("answered_first", vec![Kill::At("llm-answered")]),
        ("cached_first", vec![Kill::At("llm-cached")]),
        (
            "answered_then_cached",
            vec![Kill::At("llm-answered:150"), Kill::At("llm-cached:40")],
        ),
        ("teachers_in_flight", vec![Kill::Received(380)]),
        ("shard_write", vec![Kill::At("sink:1")]),
        ("later_shard_write", vec![Kill::At("sink:4")]),
        ("before_publish", vec![Kill::At("publish:2")]),
        (
            "before_last_publish_then_ingest",
            vec![Kill::At("publish:3"), Kill::At("ingest")],
        ),
    ];
    // A rerun over the same inputs and cache is a replay: every answer from the cache.
    let server = StandIn::deterministic(DELAY);
    let log = tmp.path().join("replay.log");
    let replay_out = tmp.path().join("replay");
    let mut child = spawn(
        &recipe,
        &replay_out,
        &tmp.path().join("clean.redb"),
        &server,
        None,
        &log,
    );
    wait_done(&mut child, &log, "the replay");
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    assert!(published(&replay_out) == reference.files);
    let replay = &crate::util::stats(&replay_out)["replay"];
    eprintln!("replay: {replay}");
    assert_eq!(replay["llm_cached"], reference.distinct_calls as u64);
    assert_eq!(replay["llm_called"], 0);
    assert_eq!(replay["questions"], 312, "300 questions and 12 copies");
    let mut landed = 0;
    for (name, kills) in &named {
        landed += crash_and_restart(tmp.path(), &recipe, name, kills, &reference);
    }
    let mut rng = Rng(0x5eed_cafe_f00d_0006);
    let span = (reference.took.as_millis() as u64 * 9 / 10).max(50);
    for r in 0..4 {
        let kills: Vec<Kill> = (0..3)
            .map(|_| Kill::After(Duration::from_millis(30 + rng.below(span))))
            .collect();
        landed += crash_and_restart(
            tmp.path(),
            &recipe,
            &format!("random{r}"),
            &kills,
            &reference,
        );
    }
    assert!(landed >= 12, "only {landed} kills landed");
}

#[test]
fn sigterm_stops_a_following_run_cleanly_and_a_restart_finishes_the_same_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = fixture(tmp.path());
    let reference = clean_run(tmp.path(), &recipe);
    // Start following with only the first file; the second arrives while it runs.
    let b = std::fs::read(tmp.path().join("src/b.jsonl")).unwrap();
    std::fs::remove_file(tmp.path().join("src/b.jsonl")).unwrap();
    let server = StandIn::deterministic(DELAY * 4);
    let out = tmp.path().join("follow");
    let cache = tmp.path().join("follow.redb");
    let args = llm_args(&server);
    let mut extra: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    extra.extend(["--cache", cache.to_str().unwrap(), "--workers", "2"]);
    let run = Following::start(&recipe, &out, &extra);
    std::fs::write(tmp.path().join("src/b.jsonl"), &b).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests.load(Ordering::SeqCst) < 250 {
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = run.log.clone();
    run.stop(); // SIGTERM; asserts a clean exit
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("stopped on request after publishing epoch"),
        "no stop message:\n{text}"
    );
    let before = server.ledger.finished_counts().0;
    assert!(
        before < reference.distinct_calls,
        "the run should be stopped mid-way"
    );
    // A restart (not following) continues to the same dataset, reusing every cached answer.
    let cached = cached_requests(&cache);
    let received = server.ledger.received.lock().unwrap().clone();
    let log = tmp.path().join("restart.log");
    let mut child = spawn(&recipe, &out, &cache, &server, None, &log);
    wait_done(&mut child, &log, "the restart after SIGTERM");
    assert!(published(&out) == reference.files, "the restart differs");
    let after = server.ledger.received.lock().unwrap().clone();
    for id in &cached {
        assert_eq!(after[id], received[id], "cached call {id} made again");
    }
    assert_eq!(server.ledger.finished_counts().0, reference.distinct_calls);
}
