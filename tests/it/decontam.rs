//! Decontamination and dedup at full fidelity, on real data: planted benchmark copies are
//! caught, clean sources are not flagged, and the indexed paths find every pair the brute force
//! finds.

use crate::util::{read_jsonl, repo, run_ok, stats, step, write_jsonl, Following};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use thoughtflow_operators::fuzzy::Pattern;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{BenchItem, MatchMethod, QuestionId};
use thoughtflow_operators::steps::decontam::{
    self, BenchmarkIndex, DecontamConfig, FuzzyConfig, NgramConfig,
};
use thoughtflow_operators::steps::near_dedup::{band_keys, similar, NearDedupConfig};

fn problems(file: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(repo().join("pipelines/data").join(file))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn benchmark_items() -> Vec<BenchItem> {
    let mut items = Vec::new();
    for f in [
        "math500",
        "aime2024",
        "aime2025_I",
        "cnmo2024",
        "gsm8k_test",
        "humaneval",
        "jee_math",
        "mbpp_test",
        "scicode",
    ] {
        for (id, text) in problems(&format!("benchmarks/{f}.jsonl")) {
            items.push(BenchItem {
                bench: f.into(),
                item: id,
                text,
            });
        }
    }
    items
}

/// The clean sources shipped with the demo (the web_mix file is the planted one).
fn clean_questions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in ["mathqa", "champ", "codeio", "cuda", "physics", "arc"] {
        for (id, text) in problems(&format!("sources/{f}.jsonl")) {
            out.push((format!("{f}/{id}"), text));
        }
    }
    out
}

/// MATH-500 items with enough words for 13-grams, planted four ways.
fn planted() -> Vec<(String, String, &'static str)> {
    let items: Vec<(String, String)> = problems("benchmarks/math500.jsonl")
        .into_iter()
        .filter(|(_, t)| {
            t.split_whitespace().count() >= 30
                && t.chars().filter(|c| c.is_ascii_digit()).count() >= 2
        })
        .take(8)
        .collect();
    let mut out = Vec::new();
    for (i, (id, text)) in items.iter().enumerate() {
        let kind = ["verbatim", "recased", "edited", "renumbered"][i % 4];
        let planted = match kind {
            "verbatim" => text.clone(),
            "recased" => text
                .split_whitespace()
                .collect::<Vec<_>>()
                .join("   ")
                .to_uppercase(),
            "edited" => {
                // Replace three words in different places.
                let mut words: Vec<String> =
                    text.split_whitespace().map(|s| s.to_string()).collect();
                let n = words.len();
                for at in [n / 5, n / 2, 4 * n / 5] {
                    words[at] = "something".into();
                }
                words.join(" ")
            }
            _ => text
                .chars()
                .map(|c| {
                    if c.is_ascii_digit() {
                        char::from(b'0' + ((c as u8 - b'0' + 3) % 10))
                    } else {
                        c
                    }
                })
                .collect(),
        };
        out.push((format!("planted-{kind}-{id}"), planted, kind));
    }
    out
}

fn paper_rule() -> DecontamConfig {
    DecontamConfig {
        ngram: Some(NgramConfig::default()),
        skip_numeric: true,
        ignored: Vec::new(),
        ignored_by_bench: Default::default(),
        fuzzy: Some(FuzzyConfig {
            threshold_bp: 7500,
            candidate_ngram: 3,
            normalize: true,
            min_shared_pct: 10,
        }),
    }
}

#[test]
fn planted_copies_are_caught_and_clean_sources_are_not_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let mut rows: Vec<Value> = clean_questions()
        .into_iter()
        .map(|(id, t)| json!({"id": id, "question": t}))
        .collect();
    let planted = planted();
    for (id, t, _) in &planted {
        rows.push(json!({"id": id, "question": t}));
    }
    write_jsonl(&dir.join("src/all.jsonl"), &rows);
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    for f in std::fs::read_dir(repo().join("pipelines/data/benchmarks")).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, dir.join("bench").join(p.file_name().unwrap())).unwrap();
    }
    let recipe = |extra: &str| {
        format!(
            "[[sources]]\nname = \"s\"\npath = \"src\"\ndomain = \"math\"\n\n[[benchmarks]]\nname = \"b\"\npath = \"bench\"\nfields = {{ question = \"problem\" }}\n\n[[steps]]\nid = \"decontaminate\"\ntype = \"decontaminate\"\n{extra}\n"
        )
    };
    // The paper's rule: 13-gram or Indel ratio >= 75.
    std::fs::write(dir.join("paper.toml"), recipe("ngram = 13\nfuzzy = 75")).unwrap();
    let out = dir.join("paper");
    run_ok(&[
        "run",
        dir.join("paper.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let matches = read_jsonl(&out.join("contamination/matches.jsonl"));
    let methods = |id: &str| -> BTreeSet<String> {
        matches
            .iter()
            .filter(|m| m["question"]["id"] == id)
            .map(|m| m["method"].as_str().unwrap().to_string())
            .collect()
    };
    for (id, _, kind) in &planted {
        let m = methods(id);
        match *kind {
            "verbatim" | "recased" => {
                assert!(m.contains("ngram") && m.contains("fuzzy"), "{id}: {m:?}")
            }
            _ => assert!(
                m.contains("fuzzy"),
                "{id} ({kind}) must be caught by the ratio: {m:?}"
            ),
        }
        assert!(matches
            .iter()
            .any(|x| x["question"]["id"] == id.as_str() && x["benchmark"] == "math500"));
    }
    // Matches are audited with benchmark, item, method, score and span.
    for m in &matches {
        for k in ["benchmark", "item", "method", "score", "span"] {
            assert!(!m[k].is_null(), "match lacks {k}: {m}");
        }
    }

    // The default step (13-grams, number-only n-grams ignored): no clean question is flagged.
    std::fs::write(dir.join("default.toml"), recipe("")).unwrap();
    let out = dir.join("default");
    run_ok(&[
        "run",
        dir.join("default.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let flagged: Vec<String> = read_jsonl(&out.join("contamination/matches.jsonl"))
        .into_iter()
        .map(|m| m["question"]["id"].as_str().unwrap().to_string())
        .filter(|id| !id.starts_with("planted-"))
        .collect();
    assert!(
        flagged.is_empty(),
        "clean questions flagged at the defaults: {flagged:?}"
    );
    let s = stats(&out);
    let caught = step(&s, "decontaminate")["rejected"]["contaminated"]
        .as_u64()
        .unwrap();
    assert!(
        caught >= 4,
        "verbatim and recased copies are caught by 13-grams alone"
    );

    // Without the number guard, number runs in CUDA tasks match MBPP (the boilerplate case).
    std::fs::write(dir.join("raw.toml"), recipe("skip_numeric = false")).unwrap();
    let out = dir.join("raw");
    run_ok(&[
        "run",
        dir.join("raw.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let boiler: Vec<Value> = read_jsonl(&out.join("contamination/matches.jsonl"))
        .into_iter()
        .filter(|m| m["question"]["id"].as_str().unwrap().starts_with("cuda/"))
        .collect();
    assert!(!boiler.is_empty() && boiler.iter().all(|m| m["benchmark"] == "mbpp_test"));

    // The audit gives the boilerplate spans (the first shared n-gram of each match); added to
    // the benchmark's own "too common" list they stop counting, so a few rounds of audit ->
    // list clear the CUDA tasks, and every planted copy is still caught.
    let mut spans: BTreeSet<String> = BTreeSet::new();
    let mut boiler = boiler;
    let listed = recipe("skip_numeric = false").replace(
        "path = \"bench\"\n",
        "path = \"bench\"\nignore_phrases = \"common.txt\"\n",
    );
    std::fs::write(dir.join("listed.toml"), listed).unwrap();
    let mut matched = BTreeSet::new();
    for round in 0..10 {
        assert!(round < 9, "the phrase list does not converge: {spans:?}");
        spans.extend(
            boiler
                .iter()
                .map(|m| m["span"].as_str().unwrap().to_string()),
        );
        std::fs::write(
            dir.join("common.txt"),
            format!(
                "# number runs that MBPP shares with CUDA tasks\n{}\n",
                spans.iter().cloned().collect::<Vec<_>>().join("\n")
            ),
        )
        .unwrap();
        let out = dir.join(format!("listed-{round}"));
        run_ok(&[
            "run",
            dir.join("listed.toml").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let all = read_jsonl(&out.join("contamination/matches.jsonl"));
        matched = all
            .iter()
            .map(|m| m["question"]["id"].as_str().unwrap().to_string())
            .collect();
        boiler = all
            .into_iter()
            .filter(|m| m["question"]["id"].as_str().unwrap().starts_with("cuda/"))
            .collect();
        if boiler.is_empty() {
            break;
        }
    }
    for (id, _, kind) in &planted {
        if matches!(*kind, "verbatim" | "recased") {
            assert!(matched.contains(id), "{id} is still caught");
        }
    }
}

#[test]
fn the_fuzzy_candidate_index_finds_every_pair_the_brute_force_finds() {
    // Real questions (math, science and planted edits) against every shipped benchmark item.
    let mut questions: Vec<(QuestionId, String)> = clean_questions()
        .into_iter()
        .filter(|(id, _)| !id.starts_with("codeio/") && !id.starts_with("cuda/"))
        .enumerate()
        .map(|(i, (_, t))| (QuestionId(i as u64), t))
        .collect();
    for (i, (_, t, _)) in planted().into_iter().enumerate() {
        questions.push((QuestionId(1_000_000 + i as u64), t));
    }
    let items = benchmark_items();
    for threshold_bp in [7500u32, 8000, 9000] {
        let cfg = DecontamConfig {
            ngram: None,
            skip_numeric: true,
            ignored: Vec::new(),
            ignored_by_bench: Default::default(),
            fuzzy: Some(FuzzyConfig {
                threshold_bp,
                candidate_ngram: 3,
                normalize: true,
                min_shared_pct: 10,
            }),
        };
        let index = BenchmarkIndex::build(&cfg, items.iter());
        let indexed: BTreeSet<(QuestionId, String, String)> = questions
            .iter()
            .flat_map(|(id, t)| index.matches(&cfg, *id, t))
            .filter(|m| m.method == MatchMethod::Fuzzy)
            .map(|m| (m.question, m.bench, m.item))
            .collect();
        // Brute force: every pair (only the exact length bound prunes).
        let t = threshold_bp as f64 / 100.0;
        let prepared: Vec<Vec<char>> = items
            .iter()
            .map(|i| hash::normalize(&i.text).chars().collect())
            .collect();
        let patterns: Vec<Pattern> = prepared.iter().map(|c| Pattern::new(c)).collect();
        let fc = cfg.fuzzy.as_ref().unwrap();
        let item_grams: Vec<Vec<u64>> = items.iter().map(|i| fc.candidate_grams(&i.text)).collect();
        let mut brute = BTreeSet::new();
        // The smallest share of an item's candidate n-grams a matching question holds: the
        // margin over the rule's 10%.
        let mut least_share = 1.0f64;
        for (id, text) in &questions {
            let q: Vec<char> = hash::normalize(text).chars().collect();
            let q_grams = fc.candidate_grams(text);
            for (i, item) in items.iter().enumerate() {
                if thoughtflow_operators::fuzzy::lengths_allow(prepared[i].len(), q.len(), t)
                    && patterns[i].ratio(&q) >= t
                {
                    brute.insert((*id, item.bench.clone(), item.item.clone()));
                    let g = &item_grams[i];
                    if !g.is_empty() && !q_grams.is_empty() {
                        let shared = g
                            .iter()
                            .filter(|x| q_grams.binary_search(x).is_ok())
                            .count();
                        least_share = least_share.min(shared as f64 / g.len() as f64);
                    }
                }
            }
        }
        assert!(!brute.is_empty());
        let missed: Vec<_> = brute.difference(&indexed).collect();
        assert!(
            missed.is_empty(),
            "threshold {t}: the index missed {} of {} pairs: {missed:?}",
            missed.len(),
            brute.len()
        );
        assert_eq!(indexed, brute);
        eprintln!(
            "fuzzy decontamination at {t}: {} pairs, recall 100%; least share of an item's candidate n-grams in a match: {:.0}%",
            brute.len(),
            least_share * 100.0
        );
    }
    // The batch reference (brute force) agrees too, for a sample.
    let cfg = paper_rule();
    let sample: Vec<(QuestionId, String)> = questions.iter().rev().take(40).cloned().collect();
    let reference = decontam::reference_matches(&cfg, &sample, &items);
    let index = BenchmarkIndex::build(&cfg, items.iter());
    let indexed: BTreeSet<_> = sample
        .iter()
        .flat_map(|(id, t)| index.matches(&cfg, *id, t))
        .collect();
    assert_eq!(indexed, reference);
}

#[test]
fn minhash_candidates_find_every_near_duplicate_pair_the_brute_force_finds() {
    // Math questions plus near-duplicates made by small edits of some of them.
    let mut texts: Vec<String> = problems("sources/mathqa.jsonl")
        .into_iter()
        .map(|(_, t)| t)
        .take(1200)
        .collect();
    let originals = texts.clone();
    for (i, t) in originals.iter().enumerate().step_by(40) {
        let edited = match i % 3 {
            0 => format!("{t} Explain."),
            1 => t.replacen(' ', "  ", 3).replace("what", "What"),
            _ => t.replacen("the", "a", 1),
        };
        texts.push(edited);
    }
    let cfg = NearDedupConfig::fuzzy(9000);
    let threshold = 90.0;
    let norm: Vec<Vec<char>> = texts
        .iter()
        .map(|t| hash::normalize(t).chars().collect())
        .collect();
    let mut brute = BTreeSet::new();
    for i in 0..texts.len() {
        let p = Pattern::new(&norm[i]);
        for j in i + 1..texts.len() {
            if norm[i] != norm[j]
                && thoughtflow_operators::fuzzy::lengths_allow(
                    norm[i].len(),
                    norm[j].len(),
                    threshold,
                )
                && p.ratio(&norm[j]) >= threshold
            {
                brute.insert((i, j));
            }
        }
    }
    let mut buckets: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, t) in texts.iter().enumerate() {
        for k in band_keys(&cfg, t) {
            buckets.entry(k).or_default().push(i);
        }
    }
    let mut candidates = BTreeSet::new();
    for members in buckets.values().filter(|m| m.len() <= cfg.max_bucket) {
        for a in 0..members.len() {
            for b in a + 1..members.len() {
                candidates.insert((members[a].min(members[b]), members[a].max(members[b])));
            }
        }
    }
    let found: BTreeSet<(usize, usize)> = candidates
        .into_iter()
        .filter(|(i, j)| norm[*i] != norm[*j] && similar(cfg.similarity, &texts[*i], &texts[*j]))
        .collect();
    assert!(
        brute.len() >= 20,
        "the planted near-duplicates are found by the brute force: {}",
        brute.len()
    );
    let missed: Vec<_> = brute.difference(&found).collect();
    assert!(
        missed.is_empty(),
        "LSH missed {} of {} near-duplicate pairs",
        missed.len(),
        brute.len()
    );
    eprintln!("fuzzy dedup at 90: {} pairs, LSH recall 100%", brute.len());
}

#[test]
fn fuzzy_dedup_clusters_near_duplicates_and_hands_over_when_the_representative_goes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("src")).unwrap();
    let base = "A farmer has 17 sheep and all but 9 run away; how many sheep does the farmer have left at the end of the day?";
    write_jsonl(
        &tmp.path().join("src/a.jsonl"),
        &[
            json!({"id": "a1", "question": base}),
            json!({"id": "a2", "question": "What is the capital of the country whose flag has a maple leaf on it?"}),
        ],
    );
    std::fs::create_dir_all(tmp.path().join("mirror")).unwrap();
    std::fs::write(
        tmp.path().join("r.toml"),
        "[[sources]]\nname = \"s\"\npath = \"src\"\ndomain = \"math\"\n\n[[sources]]\nname = \"m\"\npath = \"mirror\"\ndomain = \"math\"\npriority = 9\n\n[[steps]]\nid = \"dedup\"\ntype = \"dedup\"\nmode = \"fuzzy\"\nthreshold = 90\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let run = Following::start(&tmp.path().join("r.toml"), &out, &[]);
    let s0 = run.wait_for("2 rows", |s| s["dataset"]["rows"] == 2);
    // Two near-copies (a word and punctuation changed) in a lower-priority source: one
    // cluster, a1 stays.
    write_jsonl(
        &tmp.path().join("mirror/b.jsonl"),
        &[
            json!({"id": "b1", "question": base.replace("farmer", "Farmer").replace('?', " ?")}),
            json!({"id": "b2", "question": base.replace("at the end of the day", "at the end of a day")}),
        ],
    );
    let s1 = run.next_change(&s0);
    assert_eq!(s1["dataset"]["rows"], 2);
    assert_eq!(step(&s1, "dedup")["rejected"]["duplicate"], 2);
    let dups = read_jsonl(&out.join("rejections/dedup.jsonl"));
    assert!(dups.iter().all(|d| d["detail"]["kept"]["id"] == "a1"));
    // The representative goes: the next member of the cluster takes its place.
    write_jsonl(
        &tmp.path().join("src/a.jsonl"),
        &[
            json!({"id": "a2", "question": "What is the capital of the country whose flag has a maple leaf on it?"}),
        ],
    );
    let s2 = run.next_change(&s1);
    assert_eq!(s2["dataset"]["rows"], 2);
    assert_eq!(step(&s2, "dedup")["rejected"]["duplicate"], 1);
    let kept: Vec<String> = crate::util::dataset(&out).keys().cloned().collect();
    assert!(kept.iter().any(|k| k == "m/b1" || k == "m/b2"), "{kept:?}");
    run.stop();
}
