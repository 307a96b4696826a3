//! Per-operator benchmarks: hashing, n-gram matching, and dataflow steps over 100k questions.
//!
//! `cargo bench --bench operators` (criterion; throughput in questions per second).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use differential_dataflow::input::Input;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::*;
use thoughtflow_operators::steps::decontam::{BenchmarkIndex, DecontamConfig, NgramConfig};
use thoughtflow_operators::steps::select::{GroupBy, GroupSizes, Selection};
use thoughtflow_operators::steps::{dedup, select};

fn demo_texts() -> Vec<String> {
    let mut out = Vec::new();
    for f in ["mathqa", "codeio", "arc", "champ", "physics", "cuda"] {
        let path = format!(
            "{}/pipelines/data/sources/{f}.jsonl",
            env!("CARGO_MANIFEST_DIR")
        );
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push(v["problem"].as_str().unwrap().to_string());
        }
    }
    out
}

fn benchmark_items() -> Vec<BenchItem> {
    let dir = format!("{}/pipelines/data/benchmarks", env!("CARGO_MANIFEST_DIR"));
    let mut items = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let bench = p.file_stem().unwrap().to_string_lossy().to_string();
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            items.push(BenchItem {
                bench: bench.clone(),
                item: v["id"].to_string(),
                text: v["problem"].as_str().unwrap().to_string(),
            });
        }
    }
    items
}

fn hashing(c: &mut Criterion) {
    let texts = demo_texts();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("content_hash", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| hash::content_hash(t).0)
                .fold(0, |a, h| a ^ h)
        })
    });
    g.bench_function("word_13grams", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| hash::word_ngrams(t, 13).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

fn ngram_matching(c: &mut Criterion) {
    let texts = demo_texts();
    let cfg = DecontamConfig::ngram_only(NgramConfig::default());
    let items = benchmark_items();
    let index = BenchmarkIndex::build(&cfg, items.iter());
    let mut g = c.benchmark_group("decontaminate");
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("match_against_shipped_benchmarks", |b| {
        b.iter(|| {
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| index.matches(&cfg, QuestionId(i as u64), t).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

fn question(i: u64) -> Question {
    let h = hash::hash128(&i.to_le_bytes());
    Question {
        id: QuestionId(i),
        source: SourceId(i % 5),
        priority: (i % 5) as u32,
        domain: Domain::ALL[(i % 3) as usize],
        // ~10% exact duplicates.
        hash: ContentHash(if i.is_multiple_of(10) { h % 1000 } else { h }),
        text: TextRef(h),
        tokens: (h % 500) as u32,
        chars: (h % 3000) as u32,
        score: Some((h % 10_000) as i64).into(),
        difficulty: None.into(),
    }
}

/// Loads `n` questions into a dataflow running `step`, to completion.
fn run_step(n: u64, step: &str) {
    let step = step.to_string();
    timely::execute_directly(move |worker| {
        let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, questions) = scope.new_collection::<(QuestionId, Question), isize>();
            let out = match step.as_str() {
                "dedup" => dedup::dedup_exact(StepId(0), questions),
                "top_n" => select::select(
                    StepId(0),
                    questions,
                    Selection::TopN {
                        per: GroupBy::Domain,
                        n: GroupSizes::uniform(n / 10),
                    },
                ),
                other => unreachable!("no bench for {other}"),
            };
            let (probe, _) = out
                .passed
                .concat(out.rejected.map(|_| (QuestionId(0), question(0))))
                .probe();
            (input, probe)
        });
        for i in 0..n {
            input.insert((QuestionId(i), question(i)));
        }
        input.advance_to(1);
        input.flush();
        while probe.less_than(&1) {
            worker.step();
        }
    });
}

fn dataflow_steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("dataflow");
    g.sample_size(10);
    for n in [10_000u64, 100_000] {
        g.throughput(Throughput::Elements(n));
        for step in ["dedup", "top_n"] {
            g.bench_with_input(BenchmarkId::new(step, n), &n, |b, &n| {
                b.iter(|| run_step(n, step))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, hashing, ngram_matching, dataflow_steps);
criterion_main!(benches);
