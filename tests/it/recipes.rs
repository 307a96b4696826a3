//! The shipped recipes run end to end: demo golden output, and the same output on 1 and 2
//! workers.

use crate::util::{dataset, read_jsonl, repo, run_ok, stats, step};
use serde_json::Value;
use std::path::Path;

/// A compact, reviewable golden: one line per row (id, domain, teacher, score, content hash).
fn row_summary(out: &Path) -> String {
    let mut s = String::new();
    for (id, row) in dataset(out) {
        let conv = row["conversations"].to_string();
        s.push_str(&format!(
            "{id}\t{}\t{}\t{}\t{:016x}\n",
            row["domain"].as_str().unwrap(),
            row["teacher"].as_str().unwrap_or("-"),
            row["score"],
            thoughtflow_operators::hash::hash64(conv.as_bytes())
        ));
    }
    s
}

fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden {} (run with UPDATE_GOLDEN=1)",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{name} differs from its golden ({} vs {} lines); first differences:\n{}\n(UPDATE_GOLDEN=1 rewrites goldens)",
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn demo_matches_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run_ok(&["run", "pipelines/demo.toml", "--out", out.to_str().unwrap()]);
    golden("demo/rows.tsv", &row_summary(&out));
    let s = stats(&out);
    // Sizes are golden; work counters and speed depend on batching and timing.
    let sizes = crate::util::sizes(s.clone());
    golden(
        "demo/stats.json",
        &(serde_json::to_string_pretty(&sizes).unwrap() + "\n"),
    );

    // The planted contamination is found, and recorded with its benchmark item.
    let matches = read_jsonl(&out.join("contamination/matches.jsonl"));
    for planted in [
        "web-math500-verbatim-0",
        "web-math500-verbatim-1",
        "web-math500-verbatim-2",
        "web-math500-recased-0",
        "web-math500-recased-1",
        "web-humaneval-0",
    ] {
        assert!(
            matches.iter().any(|m| m["question"]["id"] == planted),
            "planted {planted} not found"
        );
    }
    // Planted duplicates lose to the originals (lower priority source).
    let dedup = read_jsonl(&out.join("rejections/dedup.jsonl"));
    let dup_losers: Vec<&Value> = dedup
        .iter()
        .filter(|r| r["row"]["source"] == "web_mix")
        .collect();
    assert!(!dup_losers.is_empty(), "no web_mix duplicate was rejected");
    for r in dup_losers {
        assert_ne!(r["detail"]["kept"]["source"], "web_mix");
    }
    // Bad lines are audited with their location.
    let ingest = read_jsonl(&out.join("rejections/ingest.jsonl"));
    let reasons: Vec<&str> = ingest
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{ingest:?}");
    for reason in ["malformed_json", "missing_field", "unknown_domain"] {
        assert!(reasons.contains(&reason));
    }
    // Every row is in the OpenThoughts3 schema.
    for row in dataset(&out).values() {
        for key in ["difficulty", "source", "domain", "conversations"] {
            assert!(row.get(key).is_some(), "row lacks {key}: {row}");
        }
        assert_eq!(row["conversations"][0]["from"], "human");
        assert_eq!(row["conversations"][1]["from"], "gpt");
    }
    // Counts are consistent: each step's out is the next step's in.
    let steps = s["steps"].as_array().unwrap();
    for w in steps.windows(2) {
        if w[1]["type"] != "answer_dedup" && w[0]["type"] != "fanout" {
            assert_eq!(w[0]["out"], w[1]["in"], "{} -> {}", w[0]["id"], w[1]["id"]);
        }
    }
    assert_eq!(step(&s, "answer_dedup")["out"], s["dataset"]["rows"]);
}

#[test]
fn one_and_two_workers_publish_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    run_ok(&["run", "pipelines/demo.toml", "--out", one.to_str().unwrap()]);
    run_ok(&[
        "run",
        "pipelines/demo.toml",
        "--out",
        two.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    let (a, b) = (
        crate::util::read_outputs(&one),
        crate::util::read_outputs(&two),
    );
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs between 1 and 2 workers");
    }
    let (sa, sb) = (
        crate::util::sizes(stats(&one)),
        crate::util::sizes(stats(&two)),
    );
    assert_eq!(sa, sb);
}

#[test]
fn explain_shows_every_step() {
    let out = run_ok(&["explain", "pipelines/demo.toml"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for id in [
        "decontaminate",
        "too_long",
        "score",
        "hardest",
        "dedup",
        "sample",
        "answers",
        "answer_dedup",
    ] {
        assert!(
            text.contains(&format!("] {id} (")),
            "explain lacks step {id}:\n{text}"
        );
    }
    assert!(text.contains("[sink]"));
}
