//! End to end at OpenThoughts3 scale: `thoughtflow gen`, then the release binary on the
//! generated recipe, then the incremental cases on the built state with `run --follow`.
//!
//! `cargo bench --bench ot3_scale` (not criterion: each case runs once, the numbers are wall
//! times of the real executable). Per scale factor (env `OT3_SCALES`, default `0.01,0.1`;
//! `1.0` is the paper's 4.07M questions -> 75,000 x 16 rows):
//!
//! - gen: seconds to write the workload;
//! - build: wall time, questions/s, rows/s, peak RSS (VmHWM, polled), dataset bytes and each
//!   step's counts (stats.json);
//! - replay: the same command again on the built state (a restart, after `sync` flushed the
//!   build's writes): its `stats.json` `replay`
//!   (seconds, questions/s per worker, decontamination verdicts reused) and peak RSS;
//! - follow: the same build under `--follow`, then, on the built state, the time until the
//!   published dataset shows (a) a new 10k-question source file, (b) the retractions of a new
//!   500-item benchmark file (copies of published questions), (c) the deletion of a source file.
//!
//! Prints a table and writes `target/ot3_scale.json`. Env: `OT3_WORKERS` (default 2),
//! `OT3_ANSWER_WORDS` (synthetic answer length for every domain; default gen's realistic
//! 2,000-3,000 words), `OT3_SEED` (1), `OT3_KEEP=1` keeps the outputs under `target/ot3_scale/`.
//! Targets (issue 7): scale 1.0 build < 60 s and peak RSS < 4 GiB; a 10k-question file
//! visible < 2 s; a 500-item benchmark's retractions < 5 s.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_thoughtflow"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Peak resident set (VmHWM) of a live process, in bytes.
fn hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs a command to the end, polling its peak RSS; returns (seconds, peak bytes).
fn measured(cmd: &mut Command, log: &Path) -> (f64, u64) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn thoughtflow");
    let mut peak = 0;
    loop {
        if let Some(h) = hwm(child.id()) {
            peak = peak.max(h);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{cmd:?} failed: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return (started.elapsed().as_secs_f64(), peak);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(out: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(out.join("stats.json")).ok()?).ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until stats.json satisfies `pred` (polling every 5 ms, up to `limit`); returns the
/// seconds since `since`, or None on timeout. Tracks the child's peak RSS meanwhile.
fn wait_until(
    out: &Path,
    child: &mut Child,
    peak: &mut u64,
    since: Instant,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<f64> {
    loop {
        if let Some(h) = hwm(child.id()) {
            *peak = (*peak).max(h);
        }
        if let Some(s) = stats(out) {
            if pred(&s) {
                return Some(since.elapsed().as_secs_f64());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the follow run exited early: {status}");
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn source_questions(s: &Value, source: &str) -> u64 {
    s["sources"][source]["questions"].as_u64().unwrap_or(0)
}

/// Writes a file under a temporary name, then renames it into place (a watcher never sees
/// half of it).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// 10,000 new math questions, lengths as in the generated math pool (log-normal around 60
/// words), so about as many enter the selection as their share of the pool.
fn new_source_file(seed: u64) -> String {
    let words = [
        "triangle",
        "integer",
        "prime",
        "sum",
        "the",
        "of",
        "a",
        "is",
        "polynomial",
        "roots",
        "circle",
        "find",
        "value",
        "and",
        "with",
        "each",
        "sequence",
        "divisor",
        "where",
        "let",
        "probability",
        "area",
        "$x$",
        "$n$",
        "such",
        "that",
        "real",
        "positive",
        "number",
        "compute",
        "ratio",
        "points",
        "given",
        "smallest",
        "largest",
    ];
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x10_000);
    let mut text = String::new();
    for i in 0..10_000 {
        let z = (rng.f64() + rng.f64() + rng.f64() + rng.f64() - 2.0) * 1.732;
        let n = ((52.9 * (0.5 * z).exp()) as usize).clamp(8, 480);
        let mut q = String::from("Newly arrived problem.");
        for _ in 0..n {
            q.push(' ');
            if rng.bool() {
                q.push_str(words[rng.usize(..words.len())]);
            } else {
                for _ in 0..rng.usize(2..5) {
                    q.push_str(["ka", "ro", "mi", "te", "lo", "na", "vi", "su"][rng.usize(..8)]);
                }
            }
        }
        q.push('?');
        text.push_str(&json!({ "id": format!("extra-{i:05}"), "question": q }).to_string());
        text.push('\n');
    }
    text
}

/// 500 benchmark items: copies of published math questions (distinct), as a new math
/// benchmark would hold. (Copies of the longest published code questions, ~10k characters,
/// make the fuzzy pass score every long question against many items: see the report.)
fn new_benchmark_file(out: &Path) -> (String, usize) {
    let mut seen = std::collections::BTreeMap::new();
    let mut shards: Vec<PathBuf> = std::fs::read_dir(out.join("dataset"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    shards.sort();
    'outer: for shard in shards {
        let text = std::fs::read_to_string(&shard).unwrap();
        for line in text.lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            if row["domain"] != "math" {
                continue;
            }
            let key = format!("{}/{}", row["source"], row["question_id"]);
            let q = row["conversations"][0]["value"]
                .as_str()
                .unwrap()
                .to_string();
            seen.entry(key).or_insert(q);
            if seen.len() >= 500 {
                break 'outer;
            }
        }
    }
    let mut text = String::new();
    for (i, q) in seen.values().enumerate() {
        text.push_str(&json!({ "id": format!("planted-{i}"), "problem": q }).to_string());
        text.push('\n');
    }
    (text, seen.len())
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn run_scale(scale: f64, root: &Path) -> Value {
    let workers = env_or("OT3_WORKERS", "2");
    let seed: u64 = env_or("OT3_SEED", "1").parse().unwrap();
    let dir = root.join(format!("scale-{scale}"));
    let gen_dir = dir.join("gen");
    let out = dir.join("build");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = |n: &str| dir.join(format!("{n}.log"));

    // gen
    let mut gen = Command::new(bin());
    gen.arg("gen")
        .arg(&gen_dir)
        .args(["--scale", &scale.to_string(), "--seed", &seed.to_string()]);
    if let Ok(w) = std::env::var("OT3_ANSWER_WORDS") {
        gen.args(["--answer-words", &w]);
    }
    let (gen_s, _) = measured(&mut gen, &log("gen"));
    // The generated files are flushed before the build reads them (2.2 GB at scale 1.0): the
    // build is not timed against gen's writeback.
    let _ = Command::new("sync").status();
    let truth: Value =
        serde_json::from_slice(&std::fs::read(gen_dir.join("truth.json")).unwrap()).unwrap();
    let questions = truth["counts"]["questions"].as_u64().unwrap();
    eprintln!("scale {scale}: generated {questions} questions in {gen_s:.2}s");

    // build (one epoch)
    let recipe = gen_dir.join("ot3.toml");
    // One run of the recipe on `out` (the build, then the replay on what it built).
    let run_on_out = |name: &str| {
        measured(
            Command::new(bin())
                .arg("run")
                .arg(&recipe)
                .arg("--out")
                .arg(&out)
                .args(["--workers", &workers]),
            &log(name),
        )
    };
    let (build_s, build_peak) = run_on_out("build");
    let s = stats(&out).expect("stats.json");
    let rows = s["dataset"]["rows"].as_u64().unwrap_or(0);
    let dataset_bytes = dir_bytes(&out.join("dataset"));
    let steps: Vec<Value> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            json!({ "id": st["id"], "in": st["in"], "out": st["out"], "rejected": st["rejected"], "work": st["work"]["total"] })
        })
        .collect();
    eprintln!(
        "scale {scale}: built {rows} rows in {build_s:.2}s, peak RSS {:.2} GiB",
        gib(build_peak)
    );
    let contamination = s["contamination"].clone();
    let epoch_ms = std::fs::read_to_string(log("build"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("epoch published"))
        .and_then(|l| l.split("ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    // replay: a restart on the built state (issue 6: the inputs are replayed, every cached
    // result reused); `stats.json` -> `replay` says how fast. The build's writes (7 GB at
    // scale 1.0) are flushed first, so that the replay is not timed against their writeback.
    let _ = Command::new("sync").status();
    let (replay_wall_s, replay_peak) = run_on_out("replay");
    let replay = stats(&out).map(|s| s["replay"].clone()).unwrap_or_default();
    eprintln!(
        "scale {scale}: replayed in {replay_wall_s:.2}s ({} q/s/worker), peak RSS {:.2} GiB",
        replay["questions_per_s_per_worker"],
        gib(replay_peak)
    );
    if std::env::var("OT3_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&out);
    }

    // follow: build again, then the incremental cases.
    let fout = dir.join("follow");
    let started = Instant::now();
    let mut child = Command::new(bin())
        .arg("run")
        .arg(&recipe)
        .arg("--out")
        .arg(&fout)
        .args(["--workers", &workers, "--follow", "--poll-ms", "50"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log("follow")).unwrap())
        .spawn()
        .expect("spawn thoughtflow --follow");
    let mut peak = 0;
    let limit = Duration::from_secs(1800);
    let follow_build = wait_until(&fout, &mut child, &mut peak, started, limit, |s| {
        s["epochs_run"].as_u64().unwrap_or(0) >= 1
    })
    .expect("follow run built the state");
    let limit = Duration::from_secs(120);

    // (a) a new 10k-question source file.
    let before = stats(&fout).unwrap();
    let base = source_questions(&before, "openmath2");
    let changed = before["last_changed_epoch"].as_u64();
    let file = new_source_file(seed);
    let t0 = Instant::now();
    write_atomically(&gen_dir.join("sources/openmath2/extra-00000.jsonl"), &file);
    let add_source = wait_until(&fout, &mut child, &mut peak, t0, limit, |s| {
        source_questions(s, "openmath2") == base + 10_000
            && s["last_changed_epoch"].as_u64() > changed
    });
    let after_add = stats(&fout).unwrap();

    // (b) a 500-item benchmark file of published questions.
    let (bench, items) = new_benchmark_file(&fout);
    let t0 = Instant::now();
    write_atomically(&gen_dir.join("benchmarks/planted500.jsonl"), &bench);
    let add_bench = wait_until(&fout, &mut child, &mut peak, t0, limit, |s| {
        s["contamination"]["by_benchmark"]["planted500"]
            .as_u64()
            .unwrap_or(0)
            >= items as u64
    });
    let after_bench = stats(&fout).unwrap();

    // (c) a source file deleted.
    let victim = gen_dir.join("sources/organic_chemistry/part-00000.jsonl");
    let t0 = Instant::now();
    std::fs::remove_file(&victim).unwrap();
    let delete_source = wait_until(&fout, &mut child, &mut peak, t0, limit, |s| {
        source_questions(s, "organic_chemistry") == 0
    });
    let after_delete = stats(&fout).unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "follow run exited with {status}");
    if std::env::var("OT3_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let change = |s: &Value| json!({ "upserts": s["dataset"]["last_epoch"]["upserts"], "deletes": s["dataset"]["last_epoch"]["deletes"] });
    json!({
        "scale": scale,
        "workers": workers.parse::<u64>().unwrap_or(0),
        "questions": questions,
        "gen_s": gen_s,
        "build": {
            "wall_s": build_s,
            "epoch_ms": epoch_ms,
            "questions_per_s": questions as f64 / build_s,
            "rows": rows,
            "rows_per_s": rows as f64 / build_s,
            "dataset_bytes": dataset_bytes,
            "peak_rss_bytes": build_peak,
            "steps": steps,
            "contamination": contamination,
        },
        "replay": {
            "wall_s": replay_wall_s,
            "peak_rss_bytes": replay_peak,
            "stats": replay,
        },
        "follow": {
            "build_s": follow_build,
            "peak_rss_bytes": peak,
            "add_10k_source_s": add_source,
            "add_10k_source_changes": change(&after_add),
            "add_500_benchmark_s": add_bench,
            "add_500_benchmark_items": items,
            "add_500_benchmark_changes": change(&after_bench),
            "delete_source_file_s": delete_source,
            "delete_source_file_changes": change(&after_delete),
        },
    })
}

fn main() {
    let scales: Vec<f64> = env_or("OT3_SCALES", "0.01,0.1")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let root = target_dir().join("ot3_scale");
    std::fs::create_dir_all(&root).unwrap();
    let mut results = Vec::new();
    for &scale in &scales {
        results.push(run_scale(scale, &root));
    }
    let secs = |v: &Value| {
        v.as_f64()
            .map_or("timeout".to_string(), |s| format!("{s:.2}"))
    };
    let mut table = String::new();
    table.push_str(
        "scale | questions | gen s | build s | questions/s | rows | rows/s | peak RSS GiB | dataset GiB | replay s | replay q/s/worker | follow build s | +10k source s | +500 bench s | -source file s | follow peak GiB\n",
    );
    table.push_str("---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---\n");
    for r in &results {
        let b = &r["build"];
        let f = &r["follow"];
        table.push_str(&format!(
            "{} | {} | {:.2} | {:.2} | {:.0} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.2}\n",
            r["scale"],
            r["questions"],
            r["gen_s"].as_f64().unwrap_or(0.0),
            b["wall_s"].as_f64().unwrap_or(0.0),
            b["questions_per_s"].as_f64().unwrap_or(0.0),
            b["rows"],
            b["rows_per_s"].as_f64().unwrap_or(0.0),
            gib(b["peak_rss_bytes"].as_u64().unwrap_or(0)),
            gib(b["dataset_bytes"].as_u64().unwrap_or(0)),
            secs(&r["replay"]["stats"]["seconds"]),
            r["replay"]["stats"]["questions_per_s_per_worker"],
            secs(&f["build_s"]),
            secs(&f["add_10k_source_s"]),
            secs(&f["add_500_benchmark_s"]),
            secs(&f["delete_source_file_s"]),
            gib(f["peak_rss_bytes"].as_u64().unwrap_or(0)),
        ));
    }
    println!("{table}");
    for r in &results {
        println!("scale {} steps (in -> out, rejected):", r["scale"]);
        for st in r["build"]["steps"].as_array().unwrap() {
            println!(
                "  {:<14} {:>9} -> {:>9}  {}",
                st["id"].as_str().unwrap_or("?"),
                st["in"],
                st["out"],
                st["rejected"]
            );
        }
    }
    let path = target_dir().join("ot3_scale.json");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(
        serde_json::to_string_pretty(&json!({ "results": results, "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim() }))
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    println!("wrote {}", path.display());
}
