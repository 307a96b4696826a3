//! `thoughtflow explain`: the dataflow a recipe becomes, as text.

use crate::recipe::{DedupMode, Recipe, Scorer, SelectSpec, Sizes, StepKind, TeacherKind};
use std::fmt::Write;
use thoughtflow_operators::steps::decontam::NgramUnit;
use thoughtflow_operators::steps::fanout::LookupBy;
use thoughtflow_operators::steps::score::Heuristic;
use thoughtflow_operators::steps::select::GroupBy;

fn sizes(s: &Sizes) -> String {
    let mut parts: Vec<String> = s.per_name.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(d) = s.default {
        parts.insert(0, format!("default={d}"));
    }
    parts.join(", ")
}

fn per(p: GroupBy) -> &'static str {
    match p {
        GroupBy::All => "overall",
        GroupBy::Source => "per source",
        GroupBy::Domain => "per domain",
    }
}

/// Describes one step's computation.
pub fn describe(kind: &StepKind, recipe: &Recipe) -> String {
    match kind {
        StepKind::Decontaminate { config, benchmarks } => {
            let mut methods = Vec::new();
            if let Some(ng) = &config.ngram {
                methods.push(format!(
                    "sharing a {}-{} n-gram{}{}",
                    ng.n,
                    match &ng.unit {
                        NgramUnit::Word => "word".to_string(),
                        NgramUnit::Char => "character".to_string(),
                        NgramUnit::Token(t) => format!(
                            "token ({}, {} text)",
                            t.tokenizer.path,
                            if t.normalized { "normalized" } else { "raw" }
                        ),
                    },
                    if config.skip_numeric { " (number-only n-grams ignored)" } else { "" },
                    if config.ignored.is_empty() { String::new() } else { format!(" ({} common n-grams ignored)", config.ignored.len()) }
                ));
            }
            if let Some(f) = &config.fuzzy {
                methods.push(format!(
                    "with an Indel ratio >= {} (candidates: {}% of an item's word {}-grams shared + length bound; bit-parallel LCS)",
                    f.threshold(),
                    f.min_shared_pct,
                    f.candidate_ngram
                ));
            }
            format!(
                "drop questions {} with {} (index: benchmark items broadcast to every worker; questions matched on arrival, re-matched when a benchmark arrives)",
                methods.join(" or "),
                match benchmarks {
                    None => format!("any of the {} benchmark entries", recipe.benchmarks.len()),
                    Some(b) => b.join(", "),
                }
            )
        }
        StepKind::LengthGuard { max_tokens } => {
            format!("drop questions longer than {max_tokens} whitespace tokens (stateless)")
        }
        StepKind::Score {
            scorer,
            as_difficulty,
        } => format!(
            "score = {}{}",
            match scorer {
                Scorer::Heuristic(Heuristic::Chars) => "question length in characters (stateless)".to_string(),
                Scorer::Heuristic(Heuristic::Tokens) => "question length in whitespace tokens (stateless)".to_string(),
                Scorer::Heuristic(Heuristic::Constant(c)) => format!("constant {c} (stateless)"),
                Scorer::LlmDifficulty { call, prompts } => format!(
                    "1-10 difficulty graded by endpoint {:?} ({} api, temperature {}, max_tokens {}; rubrics {}); one memoized call per (question text, domain), pending until answered, unparsable grades rejected",
                    call.endpoint,
                    call.api.as_str(),
                    call.sampling.temperature,
                    call.sampling.max_tokens,
                    prompts.values().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
                Scorer::LlmResponseLength { call } => format!(
                    "length in characters of one answer from endpoint {:?} (temperature {}, max_tokens {}); one memoized call per question text",
                    call.endpoint, call.sampling.temperature, call.sampling.max_tokens
                ),
            },
            if *as_difficulty { ", published as difficulty" } else { "" }
        ),
        StepKind::Select(SelectSpec::Threshold { min, max }) => format!(
            "keep questions with {}{}{} (stateless)",
            min.map(|m| format!("score >= {m}")).unwrap_or_default(),
            if min.is_some() && max.is_some() { " and " } else { "" },
            max.map(|m| format!("score <= {m}")).unwrap_or_default()
        ),
        StepKind::Select(SelectSpec::TopN { per: p, n }) => format!(
            "keep the top-N scores {} ({}); ties by content hash (each worker ranks its share, then the group's worker ranks theirs)",
            per(*p),
            sizes(n)
        ),
        StepKind::Select(SelectSpec::Sample { per: p, n }) => format!(
            "keep a uniform sample {}: the N smallest content hashes ({}) (each worker ranks its share, then the group's worker ranks theirs)",
            per(*p),
            sizes(n)
        ),
        StepKind::Dedup { mode: DedupMode::Exact } => {
            "keep one question per content hash; winner = min (source priority, question id) (groups by hash in a hash map, per worker)".into()
        }
        StepKind::Dedup { mode: DedupMode::None } => "no dedup (pass-through)".into(),
        StepKind::Dedup { mode: DedupMode::Near(c) } => format!(
            "cluster near-duplicates ({}; candidates: MinHash-LSH, {} permutations in {} bands over {}, buckets over {} skipped) transitively; keep min (source priority, question id) per cluster",
            match c.similarity {
                thoughtflow_operators::steps::near_dedup::Similarity::Indel { threshold_bp } => format!("Indel ratio >= {}", threshold_bp as f64 / 100.0),
                thoughtflow_operators::steps::near_dedup::Similarity::Jaccard { threshold_pct, words } => format!("Jaccard of word {words}-grams >= {}", threshold_pct as f64 / 100.0),
            },
            c.permutations,
            c.bands,
            match c.shingle {
                thoughtflow_operators::steps::near_dedup::Shingle::Chars(n) => format!("character {n}-grams"),
                thoughtflow_operators::steps::near_dedup::Shingle::Words(n) => format!("word {n}-grams"),
            },
            c.max_bucket
        ),
        StepKind::Fanout { teachers, samples } => {
            let ts: Vec<String> = teachers
                .iter()
                .map(|name| {
                    let t = recipe.teachers.iter().find(|t| &t.name == name);
                    match t.map(|t| &t.kind) {
                        Some(TeacherKind::Synthetic { answer_words }) => {
                            format!("{name} (synthetic, ~{answer_words} words)")
                        }
                        Some(TeacherKind::Replay { path, key, .. }) => format!(
                            "{name} (replay {} by {})",
                            path.display(),
                            match key {
                                LookupBy::Id => "question id",
                                LookupBy::Hash => "content hash",
                            }
                        ),
                        Some(TeacherKind::OpenAi { call }) => format!(
                            "{name} (endpoint {:?}, {} api, temperature {}, max_tokens {}, prompt {}; memoized per sample, pending until answered)",
                            call.endpoint,
                            call.api.as_str(),
                            call.sampling.temperature,
                            call.sampling.max_tokens,
                            call.prompt.name
                        ),
                        None => name.clone(),
                    }
                })
                .collect();
            format!(
                "{samples} sample(s) per question from {} (join with the answer collection; a missing answer is a rejection)",
                ts.join(" + ")
            )
        }
        StepKind::AnswerSelect { keep, k } => format!(
            "keep the {} {k} answer(s) of each question per teacher (reduce per question)",
            match keep {
                thoughtflow_operators::steps::answer_select::Keep::Shortest => "shortest",
                thoughtflow_operators::steps::answer_select::Keep::Longest => "longest",
            }
        ),
        StepKind::AnswerDecontaminate { config, benchmarks } => format!(
            "reject rows whose answer {} (the decontamination matcher on answers)",
            describe(&StepKind::Decontaminate { config: config.clone(), benchmarks: benchmarks.clone() }, recipe)
                .trim_start_matches("drop questions ")
        ),
        StepKind::AnswerDedup => {
            "keep one row per (question hash, answer hash) (reduce per pair)".into()
        }
    }
}

/// The whole graph.
pub fn explain(recipe: &Recipe) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "recipe {:?} ({})", recipe.name, recipe.file.display());
    if !recipe.description.is_empty() {
        let _ = writeln!(o, "  {}", recipe.description);
    }
    let _ = writeln!(
        o,
        "\nsources (upserts keyed by source + id; one epoch per poll):"
    );
    for s in &recipe.sources {
        let _ = writeln!(
            o,
            "  {:<24} {}  domain={} priority={} fields: id={:?} question={:?}",
            s.name,
            s.input.describe(),
            s.domain.map(|d| d.as_str()).unwrap_or("(per record)"),
            s.priority,
            s.fields.id,
            s.fields.question
        );
    }
    if !recipe.benchmarks.is_empty() {
        let _ = writeln!(o, "\nbenchmarks (items broadcast to every worker):");
        for b in &recipe.benchmarks {
            let _ = writeln!(o, "  {:<24} {}", b.name, b.input.describe());
        }
    }
    let _ = writeln!(o, "\ngraph:");
    let _ = writeln!(
        o,
        "  [ingest] parse JSONL -> normalize (NFKC, lowercase, whitespace) -> content hash xxh3-128 -> upsert by id"
    );
    let _ = writeln!(o, "     |   rejects: malformed_json, missing_field, empty_text, invalid_utf8, too_large, unknown_domain");
    for (i, s) in recipe.steps.iter().enumerate() {
        let scope = match &s.domains {
            Some(d) => format!(
                " [{} only; others bypass]",
                d.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            ),
            None => String::new(),
        };
        let _ = writeln!(o, "     v");
        let _ = writeln!(
            o,
            "  [{i}] {} ({}){scope}: {}",
            s.id,
            s.kind.type_name(),
            describe(&s.kind, recipe)
        );
    }
    let _ = writeln!(o, "     v");
    let _ = writeln!(
        o,
        "  [sink] dataset/part-*.{} ({} shards by content-hash range) + manifest.json, changes/EPOCH.jsonl, rejections/<step>.jsonl, contamination/matches.jsonl, stats.json",
        match recipe.sink.format {
            crate::recipe::SinkFormat::Jsonl => "jsonl",
            crate::recipe::SinkFormat::Parquet => "parquet",
            crate::recipe::SinkFormat::Both => "{jsonl,parquet}",
        },
        recipe.sink.shards
    );
    if let Some(k) = &recipe.sink.kafka {
        let _ = writeln!(
            o,
            "  [sink] kafka changelog topic {:?}: key = row id, value = row, tombstone on delete{}; one transaction per epoch",
            k.topic,
            if k.progress { ", progress marker per epoch" } else { "" }
        );
    }
    o
}
