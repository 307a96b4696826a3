//! LLM scorers and teachers: against the real llama.cpp server (SmolLM2-135M, started by the
//! test), then faults, budgets and "never paid twice" against the in-process stand-in.

use crate::standin::StandIn;
use crate::util::{bin, dataset, read_jsonl, repo, run_ok, stats, write_jsonl, Following};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

/// The llama.cpp server on a free port; stopped on drop.
struct Teacher {
    port: u16,
}

impl Teacher {
    fn start() -> Teacher {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        services(&["start-teacher", &port.to_string()]);
        Teacher { port }
    }
}

/// Runs `scripts/services ARGS`; returns its standard output.
fn services(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/services"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/services {} failed (run `scripts/services install`):\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for Teacher {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/services"))
            .args(["stop-teacher", &self.port.to_string()])
            .output();
    }
}

/// A recipe: questions in `q.jsonl`, an LLM difficulty grade, a selection, an LLM teacher.
fn recipe(dir: &Path, select: &str, samples: u32) -> PathBuf {
    let path = dir.join("llm.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[sources]]
name = "s"
path = "q.jsonl"
domain = "math"

[[teachers]]
name = "smol"
kind = "openai"
endpoint = "teacher"
temperature = 0.7
max_tokens = 24
samples = {samples}

[[steps]]
id = "difficulty"
type = "score"
scorer = "llm_difficulty"
endpoint = "grader"
max_tokens = 40

{select}

[[steps]]
id = "answers"
type = "fanout"
teacher = "smol"
"#
        ),
    )
    .unwrap();
    path
}

fn run(recipe: &Path, out: &Path, cache: &Path, extra: &[String]) -> Value {
    let mut args: Vec<String> = [
        "run",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_ok(&refs);
    stats(out)
}

#[test]
fn real_server_grades_and_teaches_then_reruns_from_the_cache() {
    let teacher = Teacher::start();
    let tmp = tempfile::tempdir().unwrap();
    let questions: Vec<Value> =
        std::fs::read_to_string(repo().join("pipelines/data/sources/champ.jsonl"))
            .unwrap()
            .lines()
            .take(4)
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                json!({"id": v["id"], "question": v["problem"]})
            })
            .collect();
    write_jsonl(&tmp.path().join("q.jsonl"), &questions);
    let recipe = recipe(
        tmp.path(),
        "[[steps]]\nid = \"graded\"\ntype = \"select\"\nmode = \"threshold\"\nmin = 1",
        2,
    );
    let url = format!("http://127.0.0.1:{}/v1", teacher.port);
    let llm = vec![
        "--llm".to_string(),
        format!("grader={url},model=smollm2-135m,structured=json_object,concurrency=1"),
        "--llm".to_string(),
        format!("teacher={url},model=smollm2-135m,concurrency=1"),
    ];
    let cache = tmp.path().join("calls.redb");
    let first = run(&recipe, &tmp.path().join("a"), &cache, &llm);
    let l = &first["llm"]["total"];
    let graded = first["steps"][0]["out"].as_u64().unwrap();
    let failed = first["steps"][0]["rejected"]["score_failed"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        graded + failed,
        4,
        "every question is graded or rejected with a reason: {first}"
    );
    assert!(
        graded >= 1,
        "the grammar-constrained grader should grade: {first}"
    );
    assert_eq!(
        first["dataset"]["rows"].as_u64().unwrap(),
        graded * 2,
        "2 samples per graded question"
    );
    assert_eq!(
        l["done"].as_u64().unwrap(),
        4 + graded * 2,
        "one grade per question, one call per sample"
    );
    assert!(
        l["prompt_tokens"].as_u64().unwrap() > 0 && l["completion_tokens"].as_u64().unwrap() > 0
    );
    for row in dataset(&tmp.path().join("a")).values() {
        assert_eq!(row["teacher"], "smol");
        assert!(row["difficulty"]
            .as_i64()
            .is_some_and(|d| (1..=10).contains(&d)));
        assert!(!row["conversations"][1]["value"]
            .as_str()
            .unwrap()
            .is_empty());
    }

    // A rerun (and a restart) makes no call: everything is served from the cache.
    let second = run(&recipe, &tmp.path().join("b"), &cache, &llm);
    assert_eq!(
        second["llm"]["total"]["done"], 0,
        "a rerun must not call again: {second}"
    );
    assert_eq!(
        second["llm"]["total"]["cached"].as_u64().unwrap(),
        4 + graded * 2
    );
    assert!(dataset(&tmp.path().join("a")) == dataset(&tmp.path().join("b")));

    // The cache can be inspected and exported.
    let out = run_ok(&["cache", "stats", "--cache", cache.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("smollm2-135m"));
    let out = run_ok(&["cache", "export", "--cache", cache.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as u64,
        4 + graded * 2
    );
}

fn standin_args(server: &StandIn, extra: &str) -> Vec<String> {
    vec![
        "--llm".into(),
        format!(
            "grader={},model=stand-in,retries=2,retry_base_ms=10,timeout=1{extra}",
            server.url()
        ),
        "--llm".into(),
        format!(
            "teacher={},model=stand-in,retries=2,retry_base_ms=10,timeout=1",
            server.url()
        ),
    ]
}

#[test]
fn faults_end_as_retries_or_rejections_with_reasons() {
    let server = StandIn::start();
    let tmp = tempfile::tempdir().unwrap();
    let markers = [
        "ok",
        "429",
        "flaky",
        "500",
        "slow",
        "truncated",
        "garbage",
        "reset",
        "words",
    ];
    let questions: Vec<Value> = markers
        .iter()
        .map(|m| json!({"id": m, "question": format!("Question {m} [[{m}]]: what is the sum of the first {} primes?", m.len())}))
        .collect();
    write_jsonl(&tmp.path().join("q.jsonl"), &questions);
    let recipe = recipe(
        tmp.path(),
        "[[steps]]\nid = \"graded\"\ntype = \"select\"\nmode = \"threshold\"\nmin = 1",
        1,
    );
    let s = run(
        &recipe,
        &tmp.path().join("out"),
        &tmp.path().join("c.redb"),
        &standin_args(&server, ""),
    );
    // Recovered by retrying: ok, 429 (after Retry-After), flaky (after two 500s).
    let rows = dataset(&tmp.path().join("out"));
    let mut ids: Vec<&str> = rows
        .values()
        .map(|r| r["question_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["429", "flaky", "ok"]);
    assert!(s["llm"]["total"]["retries"].as_u64().unwrap() >= 3);
    // Everything else is a rejection that says why.
    let rejected = read_jsonl(&tmp.path().join("out/rejections/difficulty.jsonl"));
    let why = |id: &str| -> String {
        rejected
            .iter()
            .find(|r| r["row"]["id"] == id)
            .unwrap_or_else(|| panic!("{id} was not rejected: {rejected:?}"))["detail"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(why("500").contains("HTTP 500") && why("500").contains("after 3 attempts"));
    assert!(why("slow").contains("timed out"));
    assert!(
        why("truncated").contains("reading the response") || why("truncated").contains("calling"),
        "{}",
        why("truncated")
    );
    assert!(why("garbage").contains("not JSON"));
    assert!(why("reset").contains("calling"), "{}", why("reset"));
    assert!(why("words").contains("unparsable grade"));
    assert_eq!(rejected.len(), 6);
    assert!(rejected.iter().all(|r| r["reason"] == "score_failed"));
    // Failures are not cached: a rerun tries them again (and serves the others from the cache).
    let before = server.completions.load(Ordering::SeqCst);
    let s2 = run(
        &recipe,
        &tmp.path().join("out2"),
        &tmp.path().join("c.redb"),
        &standin_args(&server, ""),
    );
    // 4 paid grades (one of them unparsable, still paid and cached) + 3 answers.
    assert_eq!(s2["llm"]["total"]["cached"], 7);
    assert!(server.completions.load(Ordering::SeqCst) > before);
}

#[test]
fn a_budget_stops_new_calls_and_says_so() {
    let server = StandIn::start();
    let tmp = tempfile::tempdir().unwrap();
    let questions: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("q{i}"), "question": format!("Budget question {i}: factor {} into primes.", 1000 + i)}))
        .collect();
    write_jsonl(&tmp.path().join("q.jsonl"), &questions);
    let recipe = recipe(
        tmp.path(),
        "[[steps]]\nid = \"graded\"\ntype = \"select\"\nmode = \"threshold\"\nmin = 1",
        1,
    );
    let mut args = standin_args(&server, "");
    args.extend(["--max-calls".to_string(), "3".to_string()]);
    let out = bin()
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--out",
            tmp.path().join("out").to_str().unwrap(),
        ])
        .args(["--cache", tmp.path().join("c.redb").to_str().unwrap()])
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--max-calls 3 reached"), "{stdout}");
    assert_eq!(server.completions.load(Ordering::SeqCst), 3);
    let s = stats(&tmp.path().join("out"));
    // 5 grades refused, then the 3 graded questions' answers refused too.
    assert_eq!(s["llm"]["total"]["not_issued"], 8);
    assert_eq!(s["dataset"]["rows"], 0);
    let rejected = read_jsonl(&tmp.path().join("out/rejections/difficulty.jsonl"));
    assert!(rejected.iter().all(|r| r["detail"]["message"]
        .as_str()
        .unwrap()
        .contains("budget: --max-calls 3 reached")));
}

#[test]
fn a_question_that_leaves_and_returns_is_never_paid_twice() {
    let server = StandIn::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("src")).unwrap();
    write_jsonl(
        &tmp.path().join("src/a.jsonl"),
        &[
            json!({"id": "short", "question": "What is 2 + 2?"}),
            json!({"id": "medium", "question": "What is the sum of the first ten odd numbers?"}),
            json!({"id": "long", "question": "How many ways can eight rooks be placed on a chessboard so that none attack each other?"}),
        ],
    );
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        r#"
[[sources]]
name = "s"
path = "src"
domain = "math"

[[teachers]]
name = "t"
kind = "openai"
endpoint = "teacher"
samples = 2
max_tokens = 16

[[steps]]
id = "score"
type = "score"
scorer = "length_chars"

[[steps]]
id = "top"
type = "select"
mode = "top_n"
n = 2

[[steps]]
id = "answers"
type = "fanout"
teacher = "t"
"#,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let args = standin_args(&server, "");
    let mut extra: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let cache = tmp.path().join("c.redb");
    extra.extend(["--cache", cache.to_str().unwrap()]);
    let run = Following::start(&recipe, &out, &extra);
    let s0 = run.wait_for("answers for the top 2", |s| s["dataset"]["rows"] == 4);
    assert_eq!(server.completions.load(Ordering::SeqCst), 4);
    assert!(dataset(&out).contains_key("s/medium/t/0"));

    // A longer question pushes "medium" out of the top 2: its rows go, 2 new calls are made.
    write_jsonl(
        &tmp.path().join("src/b.jsonl"),
        &[
            json!({"id": "longer", "question": "In how many ways can the vertices of a regular dodecagon be colored with three colors up to rotation and reflection?"}),
        ],
    );
    let s1 = run.wait_for("answers for the new question", |s| {
        s["llm"]["total"]["done"] == 6
            && s["dataset"]["rows"] == 4
            && s["epoch"].as_u64() > s0["epoch"].as_u64()
    });
    assert!(!dataset(&out).contains_key("s/medium/t/0"));
    assert!(dataset(&out).contains_key("s/longer/t/1"));
    assert_eq!(server.completions.load(Ordering::SeqCst), 6);

    // It comes back: its answers are reused, no call is made.
    std::fs::remove_file(tmp.path().join("src/b.jsonl")).unwrap();
    run.wait_for("medium back", |s| {
        s["last_changed_epoch"].as_u64() > s1["last_changed_epoch"].as_u64()
            && s["dataset"]["rows"] == 4
    });
    assert!(dataset(&out).contains_key("s/medium/t/0"));
    assert_eq!(
        server.completions.load(Ordering::SeqCst),
        6,
        "a returning question must not be paid again"
    );
    run.stop();
}

#[test]
fn a_recipe_with_an_unconfigured_endpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_jsonl(
        &tmp.path().join("q.jsonl"),
        &[json!({"id": "1", "question": "x?"})],
    );
    let recipe = recipe(tmp.path(), "", 1);
    let out = bin()
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--out",
            tmp.path().join("o").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoint \"grader\"") && err.contains("--llm grader=URL,model=MODEL"),
        "{err}"
    );
}

#[test]
fn dry_run_counts_calls_without_making_them() {
    let server = StandIn::start();
    let tmp = tempfile::tempdir().unwrap();
    let questions: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("q{i}"), "question": format!("Dry question {i}?")}))
        .collect();
    write_jsonl(&tmp.path().join("q.jsonl"), &questions);
    let recipe = recipe(
        tmp.path(),
        "[[steps]]\nid = \"top\"\ntype = \"select\"\nmode = \"top_n\"\nn = 2",
        3,
    );
    let mut args = standin_args(&server, "");
    args.push("--dry-run".into());
    let s = run(
        &recipe,
        &tmp.path().join("out"),
        &tmp.path().join("c.redb"),
        &args,
    );
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "a dry run makes no call"
    );
    assert_eq!(
        s["llm"]["total"]["would_call"],
        5 + 2 * 3,
        "5 grades, then 3 samples for the 2 selected"
    );
    assert!(
        s["llm"]["total"]["estimated_prompt_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// POST a JSON body over HTTP/1.1 on 127.0.0.1; returns the response body.
fn post_json(port: u16, path: &str, body: &Value) -> Value {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    serde_json::from_str(body).unwrap()
}

/// The paper's token n-gram mode with a real model's tokenizer: the tokenizer.json that
/// `scripts/services install` converts from SmolLM2's GGUF file tokenizes real questions into
/// exactly the ids llama.cpp itself produces, and `unit = "token"` catches planted benchmark
/// copies (normalized text by default; `tokenize = "raw"` is the paper's case-sensitive mode).
#[test]
fn token_ngrams_use_the_models_own_tokenizer() {
    use thoughtflow_operators::tokenize::TokenizerRef;
    let tok_path = repo().join(services(&["tokenizer-path"]).trim());
    let tok = TokenizerRef::load(&tok_path).unwrap();

    let lines = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(repo().join("pipelines/data").join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let bench = lines("benchmarks/math500.jsonl");
    let mathqa = lines("sources/mathqa.jsonl");
    let code = lines("sources/codeio.jsonl");
    let mut texts: Vec<String> = bench
        .iter()
        .take(40)
        .chain(mathqa.iter().take(20))
        .chain(code.iter().take(10))
        .map(|v| v["problem"].as_str().unwrap().to_string())
        .collect();
    texts.push("Ünïcödé — naïve café, 東京 2024: x² + y² = 1 😀".into());
    let teacher = Teacher::start();
    for text in &texts {
        let ours = tok.tokens(text).ids;
        let theirs: Vec<u64> =
            post_json(teacher.port, "/extras/tokenize", &json!({ "input": text }))["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect();
        // llama.cpp adds a BOS control token when the model asks for one; compare the text's.
        let theirs = match theirs.split_first() {
            Some((first, rest)) if rest.len() == ours.len() && *first < 17 => rest.to_vec(),
            _ => theirs,
        };
        assert_eq!(
            ours, theirs,
            "token ids differ from llama.cpp's for {text:?}"
        );
    }
    drop(teacher);

    // Decontamination by 13-grams of tokens: real questions plus planted MATH-500 copies.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let long: Vec<&Value> = bench
        .iter()
        .filter(|v| {
            let p = v["problem"].as_str().unwrap();
            p.split_whitespace().count() >= 30 && !p.contains("[asy]")
        })
        .take(2)
        .collect();
    let mut rows: Vec<Value> = mathqa
        .iter()
        .take(300)
        .map(|v| json!({"id": v["id"], "question": v["problem"]}))
        .collect();
    let verbatim = long[0]["problem"].as_str().unwrap();
    let recased = long[1]["problem"].as_str().unwrap().to_uppercase();
    rows.push(json!({"id": "planted-verbatim", "question": verbatim}));
    rows.push(json!({"id": "planted-recased", "question": recased}));
    write_jsonl(&dir.join("q.jsonl"), &rows);
    std::fs::copy(
        repo().join("pipelines/data/benchmarks/math500.jsonl"),
        dir.join("math500.jsonl"),
    )
    .unwrap();
    let flagged = |name: &str, extra: &str| -> Vec<String> {
        let recipe = dir.join(format!("{name}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "[[sources]]\nname = \"s\"\npath = \"q.jsonl\"\ndomain = \"math\"\n\n[[benchmarks]]\nname = \"math500\"\npath = \"math500.jsonl\"\nfields = {{ question = \"problem\" }}\n\n[[steps]]\nid = \"decontaminate\"\ntype = \"decontaminate\"\nunit = \"token\"\ntokenizer = {:?}\n{extra}\n",
                tok_path.to_str().unwrap()
            ),
        )
        .unwrap();
        let out = dir.join(name);
        run_ok(&[
            "run",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let matches = read_jsonl(&out.join("contamination/matches.jsonl"));
        for m in &matches {
            assert_eq!(m["method"], "ngram");
            assert!(!m["span"].as_str().unwrap().is_empty(), "{m}");
        }
        let mut ids: Vec<String> = matches
            .iter()
            .map(|m| m["question"]["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    assert_eq!(
        flagged("normalized", ""),
        ["planted-recased", "planted-verbatim"],
        "normalized token 13-grams catch both copies and flag no real question"
    );
    assert_eq!(
        flagged("raw", "tokenize = \"raw\""),
        ["planted-verbatim"],
        "raw token 13-grams (the paper's mode) miss the recased copy"
    );
}
