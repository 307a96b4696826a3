//! `run --follow`: new, rewritten and deleted files flow through as deltas; a new benchmark
//! retracts the rows it contaminates, and removing it restores them.

use crate::util::{dataset, read_jsonl, step, write_jsonl, Following};
use serde_json::{json, Value};
use std::path::Path;

fn question(id: &str, text: &str) -> Value {
    json!({"id": id, "question": text})
}

/// A small recipe over `dir/src/` and `dir/bench/`, with dedup, a threshold and 2 samples.
fn setup(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    std::fs::create_dir_all(dir.join("mirror")).unwrap();
    let rows: Vec<Value> = (0..40)
        .map(|i| question(&format!("a{i}"), &format!("Question number {i}: compute the sum of the first {i} odd numbers and explain why the pattern holds for every n.")))
        .collect();
    write_jsonl(&dir.join("src/a.jsonl"), &rows);
    write_jsonl(
        &dir.join("bench/old_bench.jsonl"),
        &[
            json!({"id": "o1", "question": "An unrelated benchmark item about the boiling point of water at altitude and pressure."}),
        ],
    );
    let recipe = dir.join("r.toml");
    std::fs::write(
        &recipe,
        r#"
[[sources]]
name = "main"
path = "src"
domain = "math"

# A lower-priority mirror: its duplicates lose to the main source.
[[sources]]
name = "mirror"
path = "mirror"
domain = "math"
priority = 9

[[benchmarks]]
name = "evals"
path = "bench"

[[teachers]]
name = "t"
kind = "synthetic"
answer_words = 20

[[steps]]
id = "decontam"
type = "decontaminate"
ngram = 8

[[steps]]
id = "dedup"
type = "dedup"

[[steps]]
id = "fan"
type = "fanout"
teacher = "t"
samples = 2
"#,
    )
    .unwrap();
    recipe
}

fn changes(out: &Path, epoch: u64) -> Vec<Value> {
    read_jsonl(&out.join(format!("changes/{epoch:08}.jsonl")))
}

#[test]
fn new_rewritten_and_deleted_files_flow_as_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let out = tmp.path().join("out");
    let run = Following::start(&recipe, &out, &[]);
    let s0 = run.wait_for("initial build", |s| s["dataset"]["rows"] == 80);
    assert_eq!(step(&s0, "decontam")["work"]["total"], 40);

    // A new file: 5 new questions.
    let rows: Vec<Value> = (0..5)
        .map(|i| question(&format!("b{i}"), &format!("A brand new question {i} about primes, gaps between them, and twin prime pairs below one hundred.")))
        .collect();
    write_jsonl(&tmp.path().join("src/b.jsonl"), &rows);
    let s1 = run.next_change(&s0);
    let e1 = s1["last_changed_epoch"].as_u64().unwrap();
    assert_eq!(s1["dataset"]["rows"], 90, "5 new questions x 2 samples");
    // Only the delta was processed.
    assert_eq!(step(&s1, "decontam")["work"]["last_epoch"], 5);
    assert_eq!(step(&s1, "decontam")["work"]["total"], 45);
    assert_eq!(s1["ingest"]["work"]["last_epoch"], 5);
    let c1 = changes(&out, e1);
    assert_eq!(c1.len(), 10);
    assert!(c1.iter().all(|c| c["op"] == "upsert"));
    let data = dataset(&out);
    assert!(data.contains_key("main/b0/t/0") && data.contains_key("main/b4/t/1"));

    // A duplicate (other case and spacing) in the lower-priority mirror: rejected, nothing
    // published changes.
    write_jsonl(
        &tmp.path().join("mirror/m.jsonl"),
        &[question("m7", "question NUMBER 7:  compute the sum of the first 7 odd numbers and explain why the pattern holds for every n.")],
    );
    let s2 = run.next_change(&s1);
    assert_eq!(step(&s2, "dedup")["rejected"]["duplicate"], 1);
    assert_eq!(s2["dataset"]["rows"], 90);
    assert_eq!(s2["dataset"]["last_epoch"]["upserts"], 0);
    let dup = read_jsonl(&out.join("rejections/dedup.jsonl"));
    assert_eq!(dup[0]["row"]["id"], "m7");
    assert_eq!(dup[0]["detail"]["kept"]["id"], "a7");

    // Rewrite: b0 removed, b1 changed.
    let mut rows2 = rows.clone();
    rows2.remove(0);
    rows2[0] = question("b1", "A changed question about the distribution of primes and the prime number theorem's error term.");
    write_jsonl(&tmp.path().join("src/b.jsonl"), &rows2);
    let s3 = run.next_change(&s2);
    let c3 = changes(&out, s3["last_changed_epoch"].as_u64().unwrap());
    let deletes: Vec<&str> = c3
        .iter()
        .filter(|c| c["op"] == "delete")
        .map(|c| c["row_id"].as_str().unwrap())
        .collect();
    assert_eq!(deletes, ["main/b0/t/0", "main/b0/t/1"]);
    let upserts: Vec<&str> = c3
        .iter()
        .filter(|c| c["op"] == "upsert")
        .map(|c| c["row"]["row_id"].as_str().unwrap())
        .collect();
    assert_eq!(upserts, ["main/b1/t/0", "main/b1/t/1"]);
    assert!(c3
        .iter()
        .filter(|c| c["op"] == "upsert")
        .all(|c| c["row"]["conversations"][0]["value"]
            .as_str()
            .unwrap()
            .starts_with("A changed question")));
    assert_eq!(s3["dataset"]["rows"], 88);

    // Delete the original of the duplicate: the mirror's copy takes its place.
    let rows_a: Vec<Value> = read_jsonl(&tmp.path().join("src/a.jsonl"))
        .into_iter()
        .filter(|r| r["id"] != "a7")
        .collect();
    write_jsonl(&tmp.path().join("src/a.jsonl"), &rows_a);
    let s4 = run.next_change(&s3);
    assert_eq!(s4["dataset"]["rows"], 88);
    assert_eq!(step(&s4, "dedup")["rejected"]["duplicate"], Value::Null);
    let data = dataset(&out);
    assert!(data.contains_key("mirror/m7/t/0") && !data.contains_key("main/a7/t/0"));

    // Delete a whole file: its questions are tombstoned.
    std::fs::remove_file(tmp.path().join("src/b.jsonl")).unwrap();
    let s5 = run.next_change(&s4);
    assert_eq!(s5["dataset"]["rows"], 80);
    assert!(dataset(&out).keys().all(|k| !k.starts_with("main/b")));
    run.stop();
}

#[test]
fn a_new_benchmark_retracts_published_rows_and_removing_it_restores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let out = tmp.path().join("out");
    let run = Following::start(&recipe, &out, &["--workers", "2"]);
    let s0 = run.wait_for("initial build", |s| s["dataset"]["rows"] == 80);
    assert!(dataset(&out).contains_key("main/a12/t/0"));

    // A new benchmark whose item copies question a12 (with different case and spacing).
    write_jsonl(
        &tmp.path().join("bench/new_eval.jsonl"),
        &[
            json!({"id": "item-7", "question": "QUESTION number 12:   compute the sum of the first 12 odd numbers"}),
        ],
    );
    let s1 = run.next_change(&s0);
    assert_eq!(s1["dataset"]["rows"], 78);
    assert_eq!(s1["contamination"]["by_benchmark"]["new_eval"], 1);
    let c1 = changes(&out, s1["last_changed_epoch"].as_u64().unwrap());
    let deleted: Vec<&str> = c1
        .iter()
        .filter(|c| c["op"] == "delete")
        .map(|c| c["row_id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, ["main/a12/t/0", "main/a12/t/1"]);
    assert!(!dataset(&out).contains_key("main/a12/t/0"));
    let matches = read_jsonl(&out.join("contamination/matches.jsonl"));
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0]["benchmark"], "new_eval");
    assert_eq!(matches[0]["item"], "item-7");
    assert_eq!(matches[0]["question"]["id"], "a12");
    let rej = read_jsonl(&out.join("rejections/decontam.jsonl"));
    assert_eq!(rej[0]["reason"], "contaminated");
    // Only the new benchmark item flowed in; no question was re-ingested.
    assert_eq!(s1["ingest"]["work"]["last_epoch"], 1);

    // Remove the benchmark: the rows come back, the match and the rejection are retracted.
    std::fs::remove_file(tmp.path().join("bench/new_eval.jsonl")).unwrap();
    let s2 = run.next_change(&s1);
    assert_eq!(s2["dataset"]["rows"], 80);
    assert!(dataset(&out).contains_key("main/a12/t/0"));
    assert!(read_jsonl(&out.join("contamination/matches.jsonl")).is_empty());
    run.stop();
}
