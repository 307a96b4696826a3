//! Decontamination (n-gram, fuzzy) and dedup (exact, fuzzy, MinHash) throughput, in questions
//! per second, at 10k, 100k and 1M questions against the ~3,000 shipped benchmark items.
//!
//! `cargo bench --bench decontam` (criterion). Questions are the demo's ~3,300 real questions,
//! varied (a numbered prefix and suffix) to reach each size. Matching runs on 2 threads, as the
//! 2 timely workers of this machine would (each worker owns half of the questions).
//! `DECONTAM_BENCH_SIZES=10000,100000` limits the sizes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::collections::HashMap;
use std::time::Duration;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{BenchItem, QuestionId};
use thoughtflow_operators::steps::decontam::{
    BenchmarkIndex, DecontamConfig, FuzzyConfig, NgramConfig, NgramUnit, Tokens,
};
use thoughtflow_operators::steps::near_dedup::{band_keys, NearDedupConfig};
use thoughtflow_operators::tokenize::TokenizerRef;

fn lines(path: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(format!(
        "{}/pipelines/data/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

fn items() -> Vec<BenchItem> {
    let mut out = Vec::new();
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
        for v in lines(&format!("benchmarks/{f}.jsonl")) {
            out.push(BenchItem {
                bench: f.into(),
                item: v["id"].to_string(),
                text: v["problem"].as_str().unwrap().into(),
            });
        }
    }
    out
}

fn questions(n: usize) -> Vec<String> {
    let mut base = Vec::new();
    for f in ["mathqa", "champ", "codeio", "cuda", "physics", "arc"] {
        for v in lines(&format!("sources/{f}.jsonl")) {
            base.push(v["problem"].as_str().unwrap().to_string());
        }
    }
    (0..n)
        .map(|i| {
            format!(
                "Problem {i}. {} (variant {})",
                base[i % base.len()],
                i / base.len()
            )
        })
        .collect()
}

/// Runs `f` over `qs` on 2 threads.
fn par<F: Fn(usize, &str) -> usize + Sync>(qs: &[String], f: F) -> usize {
    let half = qs.len() / 2;
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            qs[..half]
                .iter()
                .enumerate()
                .map(|(i, q)| f(i, q))
                .sum::<usize>()
        });
        let b: usize = qs[half..]
            .iter()
            .enumerate()
            .map(|(i, q)| f(half + i, q))
            .sum();
        a.join().unwrap() + b
    })
}

fn sizes() -> Vec<usize> {
    std::env::var("DECONTAM_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000])
}

fn decontamination(c: &mut Criterion) {
    let items = items();
    let ngram = DecontamConfig {
        ngram: Some(NgramConfig::default()),
        skip_numeric: true,
        ignored: Vec::new(),
        ignored_by_bench: Default::default(),
        fuzzy: None,
    };
    let fuzzy = DecontamConfig {
        ngram: None,
        fuzzy: Some(FuzzyConfig {
            threshold_bp: 7500,
            candidate_ngram: 3,
            normalize: true,
            min_shared_pct: 10,
        }),
        ..ngram.clone()
    };
    let both = DecontamConfig {
        ngram: ngram.ngram.clone(),
        ..fuzzy.clone()
    };
    // Token 13-grams with SmolLM2's tokenizer (written by `scripts/services install`), when
    // present: the paper's mode.
    let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/tokenizers/smollm2-135m.json");
    let token = match TokenizerRef::load(&tokenizer) {
        Ok(tokenizer) => Some(DecontamConfig {
            ngram: Some(NgramConfig {
                n: 13,
                unit: NgramUnit::Token(Tokens {
                    tokenizer,
                    normalized: true,
                }),
            }),
            ..ngram.clone()
        }),
        Err(e) => {
            eprintln!("token13 skipped: {e} (run scripts/services install)");
            None
        }
    };
    let mut g = c.benchmark_group("decontaminate");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in sizes() {
        let qs = questions(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut cases = vec![("ngram13", &ngram), ("fuzzy75", &fuzzy), ("both", &both)];
        if let Some(t) = &token {
            cases.push(("token13", t));
        }
        for (name, cfg) in cases {
            let index = BenchmarkIndex::build(cfg, items.iter());
            g.bench_with_input(BenchmarkId::new(name, n), &qs, |b, qs| {
                b.iter(|| par(qs, |i, q| index.matches(cfg, QuestionId(i as u64), q).len()))
            });
        }
    }
    g.finish();
}

fn dedup(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in sizes() {
        let qs = questions(n);
        g.throughput(Throughput::Elements(n as u64));
        // Exact: content hash and a group per hash.
        g.bench_with_input(BenchmarkId::new("exact", n), &qs, |b, qs| {
            b.iter(|| {
                let mut groups: HashMap<u128, usize> = HashMap::with_capacity(qs.len());
                for q in qs {
                    *groups.entry(hash::content_hash(q).0).or_insert(0) += 1;
                }
                groups.len()
            })
        });
        // Fuzzy (Indel >= 90) and MinHash (Jaccard >= 0.8): the per-question cost, LSH band keys.
        for (name, cfg) in [
            ("fuzzy90_lsh", NearDedupConfig::fuzzy(9000)),
            ("minhash_lsh", NearDedupConfig::minhash(80)),
        ] {
            g.bench_with_input(BenchmarkId::new(name, n), &qs, |b, qs| {
                b.iter(|| par(qs, |_, q| band_keys(&cfg, q).len()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, decontamination, dedup);
criterion_main!(benches);
