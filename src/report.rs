//! `thoughtflow report OUT`: one self-contained HTML page about a run's output folder,
//! `OUT/report/index.html`.
//!
//! The page is built from what a run leaves in OUT: `stats.json`, `dataset/*.jsonl`,
//! `rejections/*.jsonl`, `contamination/matches.jsonl` and the last `changes/EPOCH.jsonl`.
//! Tables are rendered here; charts are drawn in the browser by a small inline script (SVG
//! elements, each chart container marked `data-drawn` once drawn) from a JSON block embedded
//! in the page. Nothing is fetched at view time: no CDN, no fonts, no images.
//!
//! Sections: the funnel from sources to rows (a stacked bar per stage, split by domain), counts
//! per source and per domain, step-by-step rejections by reason, histograms of scores and of
//! question and answer lengths, contamination per benchmark with examples, dedup cluster sizes,
//! teachers and their LLM cost, and the last refresh (rows added and removed, and why).
//!
//! The domain of a rejected question is not in its rejection: it is taken from its source when
//! the source's published rows (or its ingested questions) have one domain; the rest of a
//! stage's count is shown as "unattributed".

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const DOMAINS: [&str; 3] = ["math", "code", "science"];

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// Histogram bins over `values` split by domain: `bins` linear bins from the minimum to the
/// 99th percentile, the last one open-ended.
fn histogram(values: &[(String, f64)], bins: usize) -> Value {
    if values.is_empty() {
        return json!({"edges": [], "series": {}});
    }
    let mut sorted: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let lo = sorted[0];
    let p99 = sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize];
    let hi = if p99 > lo { p99 } else { lo + 1.0 };
    let width = ((hi - lo) / bins as f64).max(1e-9);
    let integral = values.iter().all(|(_, v)| v.fract() == 0.0);
    let width = if integral { width.ceil() } else { width };
    let edges: Vec<f64> = (0..=bins).map(|i| lo + width * i as f64).collect();
    let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (d, v) in values {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        series.entry(d.clone()).or_insert_with(|| vec![0; bins])[i] += 1;
    }
    json!({"edges": edges, "series": series, "max": sorted[sorted.len() - 1], "n": values.len()})
}

/// One benchmark's matches: name, matches, distinct questions, methods, examples.
type BenchMatches = (String, usize, usize, BTreeSet<String>, Vec<Value>);

/// What the page shows, gathered from an output folder.
struct Gathered {
    stats: Value,
    data: Value,
    sources: Vec<(String, i64, i64, i64, String)>,
    domains: Vec<(String, i64, i64)>,
    steps: Vec<Value>,
    contamination: Vec<BenchMatches>,
    clusters: Vec<(String, String, Vec<String>)>,
    llm: Option<Value>,
    teachers: BTreeMap<String, u64>,
    refresh: Option<Refresh>,
    dataset_files: usize,
}

struct Refresh {
    file: String,
    epoch: String,
    upserts: usize,
    deletes: usize,
    upserts_by: BTreeMap<String, usize>,
    deletes_by: BTreeMap<String, Vec<String>>,
    upsert_examples: Vec<String>,
}

fn gather(out: &Path) -> Result<Gathered> {
    let stats_path = out.join("stats.json");
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats_path).with_context(|| {
        format!(
            "no {}: is {} a run's output folder? (thoughtflow run RECIPE --out {})",
            stats_path.display(),
            out.display(),
            out.display()
        )
    })?)
    .with_context(|| format!("{} is not JSON", stats_path.display()))?;

    // Dataset rows.
    let dataset_files = files(&out.join("dataset"), "jsonl");
    let mut rows = Vec::new();
    for f in &dataset_files {
        rows.extend(read_jsonl(f));
    }
    let mut source_domains: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut teachers: BTreeMap<String, u64> = BTreeMap::new();
    let mut questions_seen: BTreeSet<(String, String)> = BTreeSet::new();
    let (mut scores, mut qlen, mut alen) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let src = text_of(&r["source"]);
        let dom = text_of(&r["domain"]);
        source_domains
            .entry(src.clone())
            .or_default()
            .insert(dom.clone());
        *teachers.entry(text_of(&r["teacher"])).or_default() += 1;
        let conv = r["conversations"].as_array().cloned().unwrap_or_default();
        if let Some(a) = conv.get(1) {
            alen.push((dom.clone(), text_of(&a["value"]).chars().count() as f64));
        }
        if questions_seen.insert((src, text_of(&r["question_id"]))) {
            if let Some(q) = conv.first() {
                qlen.push((dom.clone(), text_of(&q["value"]).chars().count() as f64));
            }
            if let Some(s) = r["score"].as_f64() {
                scores.push((dom.clone(), s));
            }
        }
    }
    let domain_of_source = |s: &str| -> Option<String> {
        source_domains
            .get(s)
            .filter(|d| d.len() == 1)
            .and_then(|d| d.iter().next().cloned())
    };

    // Rejections, per step file.
    let mut rejections: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in files(&out.join("rejections"), "jsonl") {
        let step = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        rejections.insert(step, read_jsonl(&f));
    }

    // Funnel: ingested, then each step's output, split by domain.
    let steps: Vec<Value> = stats["steps"].as_array().cloned().unwrap_or_default();
    let mut domains_seen: Vec<String> = DOMAINS.iter().map(|d| d.to_string()).collect();
    for d in stats["domains"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if !domains_seen.contains(d) {
            domains_seen.push(d.clone());
        }
    }
    let rejected_by_domain = |step: &str| -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for r in rejections.get(step).into_iter().flatten() {
            if let Some(d) = domain_of_source(&text_of(&r["row"]["source"])) {
                *m.entry(d).or_insert(0) += 1;
            }
        }
        m
    };
    let fanout_at = steps.iter().position(|s| s["type"] == "fanout");
    let n_stages = steps.len() + 1;
    let mut per_domain: Vec<BTreeMap<String, i64>> = vec![BTreeMap::new(); n_stages];
    let mut totals: Vec<i64> = Vec::with_capacity(n_stages);
    let ingested: i64 = steps
        .first()
        .and_then(|s| s["in"].as_i64())
        .unwrap_or_else(|| {
            stats["domains"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, v)| v["questions"].as_i64().unwrap_or(0))
                .sum()
        });
    totals.push(ingested);
    for s in &steps {
        totals.push(s["out"].as_i64().unwrap_or(0));
    }
    for d in &domains_seen {
        per_domain[0].insert(
            d.clone(),
            stats["domains"][d]["questions"].as_i64().unwrap_or(0),
        );
    }
    // Forward through the question steps (up to and including the fanout's rejections).
    let forward_until = fanout_at.unwrap_or(steps.len());
    for (i, s) in steps.iter().enumerate().take(forward_until) {
        let rej = rejected_by_domain(s["id"].as_str().unwrap_or(""));
        let prev = per_domain[i].clone();
        for (d, v) in prev {
            per_domain[i + 1].insert(d.clone(), (v - rej.get(&d).copied().unwrap_or(0)).max(0));
        }
    }
    // Backward from the published rows through the row steps.
    if let Some(f) = fanout_at {
        let last = steps.len();
        for d in &domains_seen {
            per_domain[last].insert(
                d.clone(),
                stats["dataset"]["by_domain"][d].as_i64().unwrap_or(0),
            );
        }
        for i in (f + 1..last).rev() {
            let rej = rejected_by_domain(steps[i]["id"].as_str().unwrap_or(""));
            let next = per_domain[i + 1].clone();
            for (d, v) in next {
                per_domain[i].insert(d.clone(), v + rej.get(&d).copied().unwrap_or(0));
            }
        }
    }
    let mut stage_labels = vec!["ingested".to_string()];
    stage_labels.extend(steps.iter().map(|s| text_of(&s["id"])));
    let mut funnel_series = Map::new();
    let mut unattributed = vec![0i64; n_stages];
    for d in &domains_seen {
        let vals: Vec<i64> = (0..n_stages)
            .map(|i| per_domain[i].get(d).copied().unwrap_or(0))
            .collect();
        if vals.iter().any(|v| *v > 0) {
            funnel_series.insert(d.clone(), json!(vals));
        }
    }
    for i in 0..n_stages {
        let attributed: i64 = per_domain[i].values().sum();
        unattributed[i] = (totals[i] - attributed).max(0);
    }
    if unattributed.iter().any(|v| *v > 0) {
        funnel_series.insert("unattributed".into(), json!(unattributed));
    }

    // Per source and per domain.
    let mut sources = Vec::new();
    for (name, s) in stats["sources"].as_object().into_iter().flatten() {
        let rejected: i64 = s["rejected"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_i64().unwrap_or(0))
            .sum();
        let doms = source_domains
            .get(name)
            .map(|d| d.iter().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        sources.push((
            name.clone(),
            s["questions"].as_i64().unwrap_or(0),
            rejected,
            stats["dataset"]["by_source"][name].as_i64().unwrap_or(0),
            doms,
        ));
    }
    let domains: Vec<(String, i64, i64)> = stats["domains"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(d, v)| {
            (
                d.clone(),
                v["questions"].as_i64().unwrap_or(0),
                v["rows"].as_i64().unwrap_or(0),
            )
        })
        .collect();

    // Contamination per benchmark.
    let matches = read_jsonl(&out.join("contamination/matches.jsonl"));
    let mut by_bench: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in matches {
        by_bench
            .entry(text_of(&m["benchmark"]))
            .or_default()
            .push(m);
    }
    let contamination: Vec<BenchMatches> = by_bench
        .into_iter()
        .map(|(b, ms)| {
            let questions: BTreeSet<String> = ms
                .iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        text_of(&m["question"]["source"]),
                        text_of(&m["question"]["id"])
                    )
                })
                .collect();
            let methods: BTreeSet<String> = ms.iter().map(|m| text_of(&m["method"])).collect();
            let n = ms.len();
            let examples: Vec<Value> = ms.into_iter().take(5).collect();
            (b, n, questions.len(), methods, examples)
        })
        .collect();

    // Dedup clusters: winner + the duplicates naming it.
    let mut clusters_map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (step, rs) in &rejections {
        for r in rs.iter().filter(|r| r["reason"] == "duplicate") {
            let k = &r["detail"]["kept"];
            let mut kept = format!("{}/{}", text_of(&k["source"]), text_of(&k["id"]));
            if !k["teacher"].is_null() {
                let _ = write!(
                    kept,
                    "/{}/{}",
                    text_of(&k["teacher"]),
                    text_of(&k["sample"])
                );
            }
            let mut member = format!(
                "{}/{}",
                text_of(&r["row"]["source"]),
                text_of(&r["row"]["id"])
            );
            if !r["row"]["teacher"].is_null() {
                let _ = write!(
                    member,
                    "/{}/{}",
                    text_of(&r["row"]["teacher"]),
                    text_of(&r["row"]["sample"])
                );
            }
            clusters_map
                .entry((step.clone(), kept))
                .or_default()
                .push(member);
        }
    }
    let mut clusters: Vec<(String, String, Vec<String>)> = clusters_map
        .into_iter()
        .map(|((s, k), m)| (s, k, m))
        .collect();
    clusters.sort_by(|a, b| b.2.len().cmp(&a.2.len()).then(a.1.cmp(&b.1)));
    let mut sizes: BTreeMap<String, BTreeMap<usize, u64>> = BTreeMap::new();
    for (step, _, members) in &clusters {
        *sizes
            .entry(step.clone())
            .or_default()
            .entry(members.len() + 1)
            .or_default() += 1;
    }
    let max_size = sizes
        .values()
        .flat_map(|m| m.keys().copied())
        .max()
        .unwrap_or(1);
    let size_labels: Vec<String> = (2..=max_size.max(2)).map(|s| s.to_string()).collect();
    let mut size_series = Map::new();
    for (step, m) in &sizes {
        let v: Vec<u64> = (2..=max_size.max(2))
            .map(|s| m.get(&s).copied().unwrap_or(0))
            .collect();
        size_series.insert(step.clone(), json!(v));
    }

    // Last refresh: the highest changes/EPOCH.jsonl.
    let refresh = files(&out.join("changes"), "jsonl").last().map(|f| {
        let changes = read_jsonl(f);
        let mut upserts_by: BTreeMap<String, usize> = BTreeMap::new();
        let mut upsert_examples = Vec::new();
        let mut deletes_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let (mut upserts, mut deletes) = (0, 0);
        // Why a question is out now: its rejections.
        let mut why: BTreeMap<String, String> = BTreeMap::new();
        for (step, rs) in &rejections {
            for r in rs {
                let key = format!(
                    "{}/{}",
                    text_of(&r["row"]["source"]),
                    text_of(&r["row"]["id"])
                );
                let mut reason = format!("{step}: {}", text_of(&r["reason"]));
                let d = &r["detail"];
                if let Some(b) = d["benchmark"].as_str() {
                    let _ = write!(reason, " ({b})");
                } else if !d["kept"].is_null() {
                    let _ = write!(
                        reason,
                        " (of {}/{})",
                        text_of(&d["kept"]["source"]),
                        text_of(&d["kept"]["id"])
                    );
                }
                why.entry(key).or_insert(reason);
            }
        }
        let epoch_of = |c: &Value| c["epoch"].to_string();
        let mut epoch = String::new();
        for c in &changes {
            epoch = epoch_of(c);
            if c["op"] == "delete" {
                deletes += 1;
                let id = text_of(&c["row_id"]);
                let mut parts = id.splitn(3, '/');
                let q = format!(
                    "{}/{}",
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or("")
                );
                let reason = why
                    .get(&q)
                    .cloned()
                    .unwrap_or_else(|| "question retracted or changed at its source".into());
                deletes_by.entry(reason).or_default().push(id);
            } else {
                upserts += 1;
                let r = &c["row"];
                *upserts_by
                    .entry(format!(
                        "{} / {}",
                        text_of(&r["source"]),
                        text_of(&r["domain"])
                    ))
                    .or_default() += 1;
                if upsert_examples.len() < 10 {
                    upsert_examples.push(text_of(&r["row_id"]));
                }
            }
        }
        Refresh {
            file: f
                .strip_prefix(out)
                .unwrap_or(f.as_path())
                .to_string_lossy()
                .to_string(),
            epoch,
            upserts,
            deletes,
            upserts_by,
            deletes_by,
            upsert_examples,
        }
    });

    let llm = stats["llm"].is_object().then(|| stats["llm"].clone());
    let contamination_chart: Vec<(String, usize)> = contamination
        .iter()
        .map(|(b, n, _, _, _)| (b.clone(), *n))
        .collect();
    let rejection_chart = {
        let mut reasons: BTreeSet<String> = BTreeSet::new();
        for s in &steps {
            for (r, _) in s["rejected"].as_object().into_iter().flatten() {
                reasons.insert(r.clone());
            }
        }
        let mut m = Map::new();
        for r in &reasons {
            let v: Vec<i64> = steps
                .iter()
                .map(|s| s["rejected"][r].as_i64().unwrap_or(0))
                .collect();
            m.insert(r.clone(), json!(v));
        }
        json!({"labels": steps.iter().map(|s| text_of(&s["id"])).collect::<Vec<_>>(), "series": m})
    };
    let data = json!({
        "funnel": {"labels": stage_labels, "series": funnel_series, "totals": totals},
        "sources": {
            "labels": sources.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            "series": {
                "questions": sources.iter().map(|s| s.1).collect::<Vec<_>>(),
                "rows": sources.iter().map(|s| s.3).collect::<Vec<_>>(),
            },
        },
        "domains": {
            "labels": domains.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
            "series": {
                "questions": domains.iter().map(|d| d.1).collect::<Vec<_>>(),
                "rows": domains.iter().map(|d| d.2).collect::<Vec<_>>(),
            },
        },
        "rejections": rejection_chart,
        "scores": histogram(&scores, 20),
        "question_length": histogram(&qlen, 20),
        "answer_length": histogram(&alen, 20),
        "contamination": {
            "labels": contamination_chart.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
            "series": {"matches": contamination_chart.iter().map(|c| c.1).collect::<Vec<_>>()},
        },
        "clusters": {"labels": size_labels, "series": size_series},
        "teachers": {
            "labels": teachers.keys().cloned().collect::<Vec<_>>(),
            "series": {"rows": teachers.values().copied().collect::<Vec<_>>()},
        },
    });
    Ok(Gathered {
        stats,
        data,
        sources,
        domains,
        steps,
        contamination,
        clusters,
        llm,
        teachers,
        refresh,
        dataset_files: dataset_files.len(),
    })
}

/// A chart container: the script draws into it and marks it `data-drawn`.
fn chart(id: &str, kind: &str, caption: &str) -> String {
    format!(
        "<figure class=\"chart\" id=\"{id}\" data-chart=\"{kind}\"><figcaption>{}</figcaption></figure>\n",
        esc(caption)
    )
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        v => esc(&text_of(v)),
    }
}

/// Renders the page.
fn render(g: &Gathered, out: &Path) -> String {
    let s = &g.stats;
    let mut h = String::new();
    let recipe = text_of(&s["recipe"]);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>thoughtflow report: {}</title><style>{}</style></head><body>\n",
        esc(&recipe),
        CSS
    );
    let _ = writeln!(
        h,
        "<header><h1>thoughtflow report: <code>{}</code></h1><p>{} · epoch {} ({} run) · \
         {} rows, {} questions in {} dataset file(s)</p></header>",
        esc(&recipe),
        esc(&out.display().to_string()),
        num(&s["epoch"]),
        num(&s["epochs_run"]),
        num(&s["dataset"]["rows"]),
        num(&s["dataset"]["questions"]),
        g.dataset_files
    );
    h.push_str("<pre id=\"errors\" hidden></pre>\n<main>\n");

    // Funnel.
    h.push_str("<section id=\"funnel-section\"><h2>Funnel: sources to rows</h2>");
    h.push_str(&chart(
        "funnel",
        "stacked",
        "Rows after each stage, by domain (a rejected question's domain is its source's)",
    ));
    h.push_str("<table><thead><tr><th>step</th><th>type</th><th class=n>in</th><th class=n>out</th><th>rejected by reason</th></tr></thead><tbody>");
    for st in &g.steps {
        let reasons: Vec<String> = st["rejected"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{} {}", esc(k), num(v)))
            .collect();
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            esc(&text_of(&st["id"])),
            esc(&text_of(&st["type"])),
            num(&st["in"]),
            num(&st["out"]),
            if reasons.is_empty() { "—".into() } else { reasons.join(", ") }
        );
    }
    h.push_str("</tbody></table>");
    h.push_str(&chart(
        "rejections",
        "stacked",
        "Rejections per step, by reason",
    ));
    h.push_str("</section>\n");

    // Sources and domains.
    h.push_str("<section><h2>Sources and domains</h2><div class=cols><div>");
    h.push_str("<table><thead><tr><th>source</th><th>domains (in rows)</th><th class=n>questions</th><th class=n>bad lines</th><th class=n>rows</th></tr></thead><tbody>");
    for (name, q, bad, rows, doms) in &g.sources {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=n>{q}</td><td class=n>{bad}</td><td class=n>{rows}</td></tr>",
            esc(name),
            esc(doms)
        );
    }
    h.push_str("</tbody></table>");
    h.push_str(&chart(
        "sources",
        "grouped",
        "Questions ingested and rows published, per source",
    ));
    h.push_str("</div><div><table><thead><tr><th>domain</th><th class=n>questions</th><th class=n>rows</th></tr></thead><tbody>");
    for (d, q, r) in &g.domains {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=n>{q}</td><td class=n>{r}</td></tr>",
            esc(d)
        );
    }
    h.push_str("</tbody></table>");
    h.push_str(&chart(
        "domains",
        "grouped",
        "Questions and rows per domain",
    ));
    h.push_str("</div></div></section>\n");

    // Histograms.
    h.push_str("<section><h2>Scores and lengths (published rows)</h2><div class=cols3>");
    h.push_str(&chart("scores", "histogram", "Score per question"));
    h.push_str(&chart(
        "question_length",
        "histogram",
        "Question length (characters)",
    ));
    h.push_str(&chart(
        "answer_length",
        "histogram",
        "Answer length (characters)",
    ));
    h.push_str("</div></section>\n");

    // Contamination.
    h.push_str("<section><h2>Contamination</h2>");
    if g.contamination.is_empty() {
        h.push_str("<p>No benchmark matches.</p>");
    }
    h.push_str(&chart("contamination", "grouped", "Matches per benchmark"));
    if !g.contamination.is_empty() {
        h.push_str("<table><thead><tr><th>benchmark</th><th class=n>matches</th><th class=n>questions</th><th>methods</th><th>examples (question · item · method · score · span)</th></tr></thead><tbody>");
        for (b, n, q, methods, examples) in &g.contamination {
            let ex: Vec<String> = examples
                .iter()
                .map(|m| {
                    format!(
                        "<li><code>{}/{}</code> · item <code>{}</code> · {} · {} · <q>{}</q></li>",
                        esc(&text_of(&m["question"]["source"])),
                        esc(&text_of(&m["question"]["id"])),
                        esc(&text_of(&m["item"])),
                        esc(&text_of(&m["method"])),
                        num(&m["score"]),
                        esc(&short(&text_of(&m["span"]), 120))
                    )
                })
                .collect();
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td class=n>{n}</td><td class=n>{q}</td><td>{}</td><td><ul>{}</ul></td></tr>",
                esc(b),
                esc(&methods.iter().cloned().collect::<Vec<_>>().join(", ")),
                ex.join("")
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>\n");

    // Dedup.
    h.push_str("<section><h2>Dedup clusters</h2>");
    h.push_str(&chart(
        "clusters",
        "stacked",
        "Clusters by size (the kept question and its duplicates), per dedup step",
    ));
    if g.clusters.is_empty() {
        h.push_str("<p>No duplicates were removed.</p>");
    } else {
        let _ = write!(
            h,
            "<p>{} cluster(s), {} duplicate(s) removed. Largest:</p><table><thead><tr><th>step</th><th>kept</th><th class=n>size</th><th>duplicates</th></tr></thead><tbody>",
            g.clusters.len(),
            g.clusters.iter().map(|c| c.2.len()).sum::<usize>()
        );
        for (step, kept, members) in g.clusters.iter().take(10) {
            let m: Vec<String> = members
                .iter()
                .take(8)
                .map(|m| format!("<code>{}</code>", esc(m)))
                .collect();
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td class=n>{}</td><td>{}{}</td></tr>",
                esc(step),
                esc(kept),
                members.len() + 1,
                m.join(" "),
                if members.len() > 8 { " …" } else { "" }
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>\n");

    // Teachers and cost.
    h.push_str("<section><h2>Teachers and cost</h2>");
    h.push_str(&chart("teachers", "grouped", "Published rows per teacher"));
    match &g.llm {
        None => h.push_str("<p>No LLM calls in this run (no LLM scorer or teacher): cost $0.</p>"),
        Some(l) => {
            h.push_str("<table><thead><tr><th>endpoint</th><th class=n>calls</th><th class=n>cached</th><th class=n>failed</th><th class=n>not issued</th><th class=n>prompt tokens</th><th class=n>completion tokens</th><th class=n>cost (USD)</th></tr></thead><tbody>");
            let mut rows: Vec<(String, Value)> = l["endpoints"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            rows.push(("total".into(), l["total"].clone()));
            for (name, c) in rows {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{:.4}</td></tr>",
                    esc(&name),
                    num(&c["done"]),
                    num(&c["cached"]),
                    num(&c["failed"]),
                    num(&c["not_issued"]),
                    num(&c["prompt_tokens"]),
                    num(&c["completion_tokens"]),
                    c["cost_usd"].as_f64().unwrap_or(0.0)
                );
            }
            h.push_str("</tbody></table>");
            if let Some(why) = l["budget"]["exhausted"].as_str() {
                let _ = write!(h, "<p class=warn>Budget exhausted: {}</p>", esc(why));
            }
        }
    }
    if !g.teachers.is_empty() {
        let t: Vec<String> = g
            .teachers
            .iter()
            .map(|(k, v)| format!("<code>{}</code> {v}", esc(k)))
            .collect();
        let _ = write!(h, "<p>Rows per teacher: {}</p>", t.join(", "));
    }
    h.push_str("</section>\n");

    // Last refresh.
    h.push_str("<section id=\"refresh\"><h2>Last refresh</h2>");
    match &g.refresh {
        None => h.push_str("<p>No changes file.</p>"),
        Some(r) => {
            let initial = r.epoch == "0";
            let _ = write!(
                h,
                "<p><code>{}</code> (epoch {}{}): <strong>{} row(s) added or updated</strong>, <strong>{} row(s) removed</strong>.</p>",
                esc(&r.file),
                esc(&r.epoch),
                if initial { ", the initial build" } else { "" },
                r.upserts,
                r.deletes
            );
            if !r.upserts_by.is_empty() {
                h.push_str("<h3>Added or updated, by source / domain</h3><table><tbody>");
                for (k, v) in &r.upserts_by {
                    let _ = write!(h, "<tr><td>{}</td><td class=n>{v}</td></tr>", esc(k));
                }
                h.push_str("</tbody></table>");
                let ex: Vec<String> = r
                    .upsert_examples
                    .iter()
                    .map(|e| format!("<code>{}</code>", esc(e)))
                    .collect();
                let _ = write!(h, "<p>e.g. {}</p>", ex.join(" "));
            }
            if !r.deletes_by.is_empty() {
                h.push_str("<h3>Removed, and why</h3><table><thead><tr><th>why</th><th class=n>rows</th><th>e.g.</th></tr></thead><tbody>");
                for (why, ids) in &r.deletes_by {
                    let ex: Vec<String> = ids
                        .iter()
                        .take(5)
                        .map(|e| format!("<code>{}</code>", esc(e)))
                        .collect();
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td class=n>{}</td><td>{}</td></tr>",
                        esc(why),
                        ids.len(),
                        ex.join(" ")
                    );
                }
                h.push_str("</tbody></table>");
            }
        }
    }
    h.push_str("</section>\n</main>\n");
    // The data, as JSON ('<' escaped so that no string can close the script element).
    let data = serde_json::to_string(&g.data)
        .expect("json")
        .replace('<', "\\u003c");
    let _ = write!(
        h,
        "<script id=\"data\" type=\"application/json\">{data}</script>\n<script>{JS}</script>\n</body></html>\n"
    );
    h
}

/// Writes `OUT/report/index.html`; returns its path.
pub fn write(out: &Path) -> Result<PathBuf> {
    let g = gather(out)?;
    let html = render(&g, out);
    let dir = out.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("index.html");
    crate::sink::write_atomic(&path, html.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

const CSS: &str = r##"
:root{--fg:#1d2330;--mut:#5b6475;--bg:#fff;--line:#dde2ea;--acc:#3559c7}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);margin:0}
header{padding:18px 28px;border-bottom:1px solid var(--line);background:#f6f8fb}
header h1{font-size:20px;margin:0 0 4px} header p{margin:0;color:var(--mut)}
main{padding:8px 28px 40px;max-width:1240px}
section{margin:22px 0;border-bottom:1px solid var(--line);padding-bottom:18px}
h2{font-size:17px;margin:0 0 10px} h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left;vertical-align:top}
th{color:var(--mut);font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td ul{margin:0;padding-left:16px} code{font:12px ui-monospace,Menlo,Consolas,monospace}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}
.cols3{display:grid;grid-template-columns:1fr 1fr 1fr;gap:16px}
figure.chart{margin:10px 0;min-height:40px} figcaption{color:var(--mut);font-size:12px;margin-bottom:4px}
svg text{font:11px system-ui,sans-serif;fill:var(--mut)} svg .val{fill:var(--fg)}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:12px;color:var(--mut)}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
#errors{background:#fde8e8;color:#8a1111;padding:8px 28px;margin:0;white-space:pre-wrap}
.warn{color:#8a4b00}
"##;

const JS: &str = r##"
(function(){
  "use strict";
  var errorsEl = document.getElementById("errors");
  var nErrors = 0;
  function report(msg){
    nErrors++;
    errorsEl.hidden = false;
    errorsEl.textContent += msg + "\n";
    document.body.setAttribute("data-errors", String(nErrors));
  }
  window.addEventListener("error", function(e){ report("error: " + e.message); });
  document.body.setAttribute("data-errors", "0");
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = {math:"#3559c7", code:"#2e9e6b", science:"#d9822b", unattributed:"#a7adb8",
                 questions:"#8aa4e8", rows:"#3559c7", matches:"#c73a3a"};
  var EXTRA = ["#7a4fc2","#c2497a","#4f9fc2","#9fae2e","#6b6b6b","#e0b000","#2ec2b5","#b05b2e"];
  function color(name, i){ return PALETTE[name] || EXTRA[i % EXTRA.length]; }
  function el(tag, attrs, parent){
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v){
    if (Math.abs(v) >= 1e6) return (v/1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v/1e3).toFixed(0) + "k";
    if (Math.abs(v) >= 1e3) return (v/1e3).toFixed(1) + "k";
    return String(Math.round(v*100)/100);
  }
  function legend(fig, names){
    var d = document.createElement("div"); d.className = "legend";
    names.forEach(function(n, i){
      var s = document.createElement("span");
      var sw = document.createElement("i"); sw.style.background = color(n, i);
      s.appendChild(sw); s.appendChild(document.createTextNode(n)); d.appendChild(s);
    });
    fig.appendChild(d);
  }
  function empty(fig){
    var p = document.createElement("p"); p.textContent = "(nothing to draw)";
    p.className = "empty"; fig.appendChild(p);
  }
  // Vertical bars: labels along x, series stacked (or grouped side by side).
  function bars(fig, labels, series, stacked){
    var names = Object.keys(series);
    if (!labels.length || !names.length) { empty(fig); return 0; }
    var W = Math.max(fig.clientWidth || 600, 320), H = 260, L = 60, R = 10, T = 14, B = 78;
    var totals = labels.map(function(_, i){
      return stacked ? names.reduce(function(a, n){ return a + (series[n][i] || 0); }, 0)
                     : Math.max.apply(null, names.map(function(n){ return series[n][i] || 0; }));
    });
    var raw = Math.max.apply(null, totals.concat([1]));
    var p10 = Math.pow(10, Math.floor(Math.log10(raw / 4))), f = raw / 4 / p10;
    var nice = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].filter(function(x){ return x >= f; })[0] || 10;
    var max = nice * p10 * 4;
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img"}, fig);
    var pw = W - L - R, ph = H - T - B, step = pw / labels.length;
    var bw = Math.max(2, step * 0.7);
    for (var g = 0; g <= 4; g++) {
      var y = T + ph - ph * g / 4;
      el("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eef1f5"}, svg);
      el("text", {x: L - 6, y: y + 4, "text-anchor": "end"}, svg).textContent = fmt(max * g / 4);
    }
    var n = 0;
    labels.forEach(function(lab, i){
      var x0 = L + step * i + (step - bw) / 2, base = 0;
      names.forEach(function(name, j){
        var v = series[name][i] || 0;
        if (v <= 0) return;
        var h = ph * v / max, x = x0, w = bw, y;
        if (stacked) { y = T + ph - ph * (base + v) / max; base += v; }
        else { w = bw / names.length; x = x0 + w * j; y = T + ph - h; }
        var r = el("rect", {x: x, y: y, width: Math.max(w - 1, 1), height: Math.max(h, 0.5),
                            fill: color(name, j), "data-series": name}, svg);
        el("title", {}, r).textContent = lab + " · " + name + ": " + v;
        n++;
      });
      var tx = L + step * i + step / 2;
      var t = el("text", {x: tx, y: T + ph + 12, "text-anchor": "end",
                          transform: "rotate(-35 " + tx + " " + (T + ph + 12) + ")"}, svg);
      t.textContent = lab.length > 18 ? lab.slice(0, 17) + "…" : lab;
      el("title", {}, t).textContent = lab;
      if (stacked && totals[i] > 0) {
        var v = el("text", {x: tx, y: T + ph - ph * totals[i] / max - 3, "text-anchor": "middle", "class": "val"}, svg);
        v.textContent = fmt(totals[i]);
      }
    });
    el("line", {x1: L, x2: W - R, y1: T + ph, y2: T + ph, stroke: "#9aa3b2"}, svg);
    legend(fig, names);
    return n;
  }
  function histogram(fig, h){
    if (!h.edges || !h.edges.length) { empty(fig); return 0; }
    var labels = [];
    for (var i = 0; i + 1 < h.edges.length; i++) {
      labels.push(fmt(h.edges[i]) + (i + 2 === h.edges.length ? "+" : ""));
    }
    var n = bars(fig, labels, h.series, true);
    var p = document.createElement("p"); p.className = "legend";
    p.textContent = h.n + " values, max " + fmt(h.max);
    fig.appendChild(p);
    return n;
  }
  var data = JSON.parse(document.getElementById("data").textContent);
  var drawn = 0;
  Array.prototype.forEach.call(document.querySelectorAll("figure.chart"), function(fig){
    try {
      var d = data[fig.id], kind = fig.getAttribute("data-chart"), n;
      if (!d) throw new Error("no data for chart " + fig.id);
      if (kind === "histogram") n = histogram(fig, d);
      else n = bars(fig, d.labels, d.series, kind === "stacked");
      fig.setAttribute("data-drawn", String(n));
      drawn++;
    } catch (e) {
      report("chart " + fig.id + ": " + (e && e.stack || e));
      console.error(e);
    }
  });
  document.body.setAttribute("data-charts-drawn", String(drawn));
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_everything() {
        let v: Vec<(String, f64)> = (0..100).map(|i| ("math".into(), i as f64)).collect();
        let h = histogram(&v, 10);
        let total: u64 = h["series"]["math"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum();
        assert_eq!(total, 100);
        assert_eq!(h["edges"].as_array().unwrap().len(), 11);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
