//! `thoughtflow gen`: a generated workload runs with its own recipe, and the run finds what was
//! planted (truth.json): every verbatim benchmark copy is rejected as contaminated, every
//! exact duplicate but one per group is rejected as a duplicate.

use crate::util::{dataset, read_jsonl, run_ok, stats, step};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

fn key(v: &Value) -> (String, String) {
    (
        v["source"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

#[test]
fn generated_workload_runs_and_finds_what_was_planted() {
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("gen");
    let out = dir.path().join("out");
    let g = gen.to_str().unwrap();
    run_ok(&[
        "gen",
        g,
        "--scale",
        "0.001",
        "--seed",
        "11",
        "--answer-words",
        "40",
    ]);
    for f in ["ot3.toml", "truth.json", "benchmarks/math500.jsonl"] {
        assert!(gen.join(f).exists(), "gen wrote no {f}");
    }
    let recipe = gen.join("ot3.toml");
    run_ok(&["check", recipe.to_str().unwrap()]);
    run_ok(&[
        "run",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let truth: Value = serde_json::from_slice(&std::fs::read(gen.join("truth.json")).unwrap())
        .expect("truth.json");

    // Every ingested line became a question.
    let s = stats(&out);
    let ingested: u64 = s["sources"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["questions"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(ingested, truth["counts"]["questions"].as_u64().unwrap());

    // Contamination: every verbatim copy rejected as contaminated (and the edited ones too).
    let contaminated: HashMap<(String, String), Value> =
        read_jsonl(&out.join("rejections/decontaminate.jsonl"))
            .into_iter()
            .filter(|r| r["reason"] == "contaminated")
            .map(|r| (key(&r["row"]), r["detail"].clone()))
            .collect();
    let mut verbatim = 0;
    let mut edited = (0, 0);
    for (bench, planted) in truth["contamination"].as_object().unwrap() {
        for p in planted.as_array().unwrap() {
            let found = contaminated.get(&key(p));
            if p["kind"] == "verbatim" {
                verbatim += 1;
                let d = found.unwrap_or_else(|| panic!("verbatim copy {p} was not rejected"));
                assert_eq!(d["benchmark"], bench.as_str(), "{p} matched {d}");
            } else {
                edited.0 += 1;
                edited.1 += found.is_some() as usize;
            }
        }
    }
    assert_eq!(verbatim, truth["counts"]["contamination_verbatim"]);
    assert!(verbatim >= 10);
    assert!(
        edited.1 * 10 >= edited.0 * 9,
        "only {} of {} edited copies were caught",
        edited.1,
        edited.0
    );

    // Exact duplicates: all but one of each group rejected by dedup; at most one published.
    let duplicates: HashSet<(String, String)> = read_jsonl(&out.join("rejections/dedup.jsonl"))
        .into_iter()
        .filter(|r| r["reason"] == "duplicate")
        .map(|r| key(&r["row"]))
        .collect();
    let published: HashSet<(String, String)> = dataset(&out)
        .values()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_string(),
                r["question_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let groups = truth["exact_duplicates"].as_array().unwrap();
    assert!(!groups.is_empty());
    for group in groups {
        let members: Vec<_> = group.as_array().unwrap().iter().map(key).collect();
        let rejected = members.iter().filter(|m| duplicates.contains(m)).count();
        assert_eq!(rejected, members.len() - 1, "group {group}");
        let live = members.iter().filter(|m| published.contains(m)).count();
        assert!(live <= 1, "group {group} published {live} times");
    }
    assert_eq!(
        step(&s, "dedup")["rejected"]["duplicate"].as_u64().unwrap(),
        truth["counts"]["exact_duplicate_copies"].as_u64().unwrap()
    );

    // The selection keeps the scaled 75,000 (53 + 16 + 6), 16 answers each.
    let selected = truth["counts"]["selected_questions"].as_u64().unwrap();
    assert_eq!(s["dataset"]["questions"].as_u64().unwrap(), selected);
    assert_eq!(s["dataset"]["rows"].as_u64().unwrap(), selected * 16);
}
