//! Observability: `--metrics-addr` serves Prometheus text that agrees with stats.json; log
//! lines are valid JSON with `--log-format json` and free of colour codes when piped;
//! `--progress always` draws the per-step bars.

use crate::util::{self, bin, repo, Following};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over HTTP/1.1 on 127.0.0.1; returns (status line, body).
fn get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// Parses the exposition: every line is a comment or `name{labels} value`. Returns
/// `name{labels}` -> value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let sample = regex::Regex::new(
        r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*,?)?\})? (\S+)$"#,
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let c = sample
            .captures(line)
            .unwrap_or_else(|| panic!("not a Prometheus sample line: {line:?}"));
        let value: f64 = match &c[7] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let key = format!("{}{}", &c[1], c.get(2).map_or("", |m| m.as_str()));
        out.insert(key, value);
    }
    out
}

#[test]
fn metrics_endpoint_matches_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let run = Following::start(
        &repo().join("pipelines/demo.toml"),
        &out,
        &["--metrics-addr", &addr, "--log-format", "json"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (stats, metrics, text) = loop {
        let stats = util::stats(&out);
        let (status, body) = get(port, "/metrics").expect("GET /metrics");
        assert!(status.contains("200"), "GET /metrics: {status}");
        let m = parse(&body);
        let agrees = util::step(&stats, "dedup")["out"].as_f64()
            == m.get("thoughtflow_step_rows_out{step=\"dedup\",type=\"dedup\"}")
                .copied();
        if agrees || Instant::now() > deadline {
            break (stats, m, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Every step's rows in/out and rejections by reason, as stats.json has them.
    for st in stats["steps"].as_array().unwrap() {
        let (id, kind) = (st["id"].as_str().unwrap(), st["type"].as_str().unwrap());
        for (metric, key) in [("step_rows_in", "in"), ("step_rows_out", "out")] {
            let name = format!("thoughtflow_{metric}{{step=\"{id}\",type=\"{kind}\"}}");
            assert_eq!(
                metrics.get(&name).copied(),
                st[key].as_f64(),
                "{name} in:\n{text}"
            );
        }
        for (reason, n) in st["rejected"].as_object().unwrap() {
            let name =
                format!("thoughtflow_step_rows_rejected{{step=\"{id}\",reason=\"{reason}\"}}");
            assert_eq!(metrics.get(&name).copied(), n.as_f64(), "{name}");
        }
        let work = format!("thoughtflow_step_work_total{{step=\"{id}\"}}");
        assert!(
            metrics[&work] >= st["work"]["total"].as_f64().unwrap(),
            "{work}"
        );
    }
    for (domain, n) in stats["dataset"]["by_domain"].as_object().unwrap() {
        let name = format!("thoughtflow_dataset_rows{{domain=\"{domain}\"}}");
        assert_eq!(metrics.get(&name).copied(), n.as_f64(), "{name}");
    }
    for (bench, n) in stats["contamination"]["by_benchmark"].as_object().unwrap() {
        let name = format!("thoughtflow_contamination_matches{{benchmark=\"{bench}\"}}");
        assert_eq!(metrics.get(&name).copied(), n.as_f64(), "{name}");
    }
    assert_eq!(
        metrics["thoughtflow_dataset_changes_total{op=\"upsert\"}"],
        stats["dataset"]["changes_total"]["upserts"]
            .as_f64()
            .unwrap()
    );
    assert!(metrics["thoughtflow_epochs_total"] >= 1.0);
    assert!(metrics["thoughtflow_epoch"] >= 0.0);
    assert!(metrics["thoughtflow_epoch_duration_seconds"] > 0.0);
    assert!(metrics.contains_key("thoughtflow_epoch_lag_seconds"));
    assert!(metrics.contains_key("thoughtflow_sink_shards_written_total"));
    for help in [
        "# HELP thoughtflow_step_rows_in ",
        "# TYPE thoughtflow_step_rows_in gauge",
        "# TYPE thoughtflow_step_work_total counter",
    ] {
        assert!(text.contains(help), "missing {help:?}");
    }
    // Epochs keep coming (--poll-ms 50): the epoch counter moves.
    let before = metrics["thoughtflow_epochs_total"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = parse(&get(port, "/metrics").unwrap().1);
        if m["thoughtflow_epochs_total"] > before {
            break;
        }
        assert!(Instant::now() < deadline, "epochs_total did not move");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = get(port, "/nope").unwrap();
    assert!(status.contains("404"), "{status}");
    let log = run.log.clone();
    run.stop();
    // --log-format json: every stderr line is a JSON object with a level and fields.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 3, "too few log lines:\n{text}");
    assert!(
        text.contains("\"message\":\"step\""),
        "no per-step progress lines:\n{text}"
    );
    assert!(text.contains("/metrics"), "no metrics address logged");
}

#[test]
fn metrics_addr_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "pipelines/demo.toml", "--out"])
        .arg(tmp.path().join("out"))
        .args(["--metrics-addr", &addr])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains("cannot listen"),
        "{err}"
    );
}

#[test]
fn pretty_logs_when_piped_and_forced_bars() {
    let tmp = tempfile::tempdir().unwrap();
    // Piped stderr, auto progress: plain log lines, one per step, no colour codes.
    let out = bin()
        .args(["run", "pipelines/demo.toml", "--out"])
        .arg(tmp.path().join("a"))
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in piped logs:\n{err}"
    );
    assert!(
        err.contains(" step ") && err.contains("rows_in=") && err.contains("decontaminate"),
        "{err}"
    );
    // --progress always draws the bars even when piped.
    let out = bin()
        .args([
            "run",
            "pipelines/demo.toml",
            "--progress",
            "always",
            "--out",
        ])
        .arg(tmp.path().join("b"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("decontaminate in ")
            && err.contains("→ out")
            && err.contains("(contaminated "),
        "no step bars:\n{err}"
    );
}

/// LLM metrics (calls by outcome, tokens, cost, cache hits) agree with stats.json, live while
/// the run follows; `--progress always` draws the LLM bar.
#[test]
fn llm_metrics_match_stats() {
    let server = crate::standin::StandIn::deterministic(Duration::from_millis(5));
    let tmp = tempfile::tempdir().unwrap();
    let questions: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            serde_json::json!({"id": format!("q{i}"),
                "question": format!("Question {i}: how many primes are below {}?", 100 + 7 * i)})
        })
        .collect();
    util::write_jsonl(&tmp.path().join("q.jsonl"), &questions);
    let recipe = tmp.path().join("llm.toml");
    std::fs::write(
        &recipe,
        r#"
[[sources]]
name = "s"
path = "q.jsonl"
domain = "math"

[[teachers]]
name = "t"
kind = "openai"
endpoint = "teacher"
max_tokens = 16
samples = 2

[[steps]]
id = "difficulty"
type = "score"
scorer = "llm_difficulty"
endpoint = "grader"
max_tokens = 40

[[steps]]
id = "answers"
type = "fanout"
teacher = "t"
"#,
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let url = server.url();
    let cache = tmp.path().join("calls.redb");
    let grader = format!("grader={url},model=stand-in,concurrency=4,timeout=30");
    let teacher = format!("teacher={url},model=stand-in,concurrency=4,timeout=30");
    let out = tmp.path().join("out");
    let run = Following::start(
        &recipe,
        &out,
        &[
            "--cache",
            cache.to_str().unwrap(),
            "--llm",
            &grader,
            "--llm",
            &teacher,
            "--metrics-addr",
            &addr,
            "--progress",
            "always",
        ],
    );
    let stats = run.wait_for("every LLM call answered", |s| {
        s["llm"]["outstanding"].as_u64() == Some(0)
            && s["llm"]["total"]["done"].as_u64().unwrap_or(0) >= 40 + 80
    });
    let m = parse(&get(port, "/metrics").unwrap().1);
    for endpoint in ["grader", "teacher"] {
        let c = &stats["llm"]["endpoints"][endpoint];
        for (outcome, key) in [("done", "done"), ("cached", "cached"), ("failed", "failed")] {
            let name = format!(
                "thoughtflow_llm_calls_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"
            );
            assert_eq!(m.get(&name).copied(), c[key].as_f64(), "{name}");
        }
        let tokens =
            format!("thoughtflow_llm_tokens_total{{endpoint=\"{endpoint}\",kind=\"completion\"}}");
        assert_eq!(m.get(&tokens).copied(), c["completion_tokens"].as_f64());
        assert!(m.contains_key(&format!(
            "thoughtflow_llm_cost_usd_total{{endpoint=\"{endpoint}\"}}"
        )));
        assert_eq!(
            m[&format!("thoughtflow_llm_calls_in_flight{{endpoint=\"{endpoint}\"}}")],
            0.0
        );
    }
    let log = run.log.clone();
    run.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("llm calls"), "no LLM bar:\n{text}");
    assert!(text.contains("cache hit"), "no cache hit rate:\n{text}");
}
