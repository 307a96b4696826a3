//! `thoughtflow report`: the page is self-contained, and headless Chromium draws every chart
//! without a script error. The screenshot is kept as `target/test-artifacts/report.png`.
//! Chromium is required (`scripts/services install` installs it): no skipping.

use crate::util::{repo, run_ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> PathBuf {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    if let Some(c) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(c);
    }
    for c in candidates {
        if let Ok(o) = Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
        {
            if o.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            }
        }
    }
    panic!(
        "headless Chromium is required for the report test and was not found ({}): \
         install it with `scripts/services install` (Debian package `chromium`), or set CHROMIUM",
        candidates.join(", ")
    );
}

/// Runs headless Chromium on a page with `extra` flags (60 s at most).
fn headless(page: &Path, profile: &Path, extra: &[String]) -> Output {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Drain the pipes on threads so that a large DOM cannot block the browser.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

fn attr(dom: &str, name: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r#"<body[^>]*\s{name}="([^"]*)""#)).unwrap();
    re.captures(dom).map(|c| c[1].to_string())
}

#[test]
fn report_draws_every_chart_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let recipe = repo().join("pipelines/demo.toml");
    run_ok(&["run", recipe.to_str().unwrap(), "--out", out_s]);
    let o = run_ok(&["report", out_s]);
    let page = out.join("report/index.html");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("index.html"),
        "report prints where it wrote the page"
    );
    let html = std::fs::read_to_string(&page).expect("report/index.html");

    // Self-contained: nothing loaded from elsewhere.
    let external =
        regex::Regex::new(r#"(?i)(src|href)\s*=\s*["']?(https?:|//)|<link\b|@import|url\("#)
            .unwrap();
    assert!(
        !external.is_match(&html),
        "the page references something outside it: {:?}",
        external.find(&html).map(|m| m.as_str())
    );
    let charts = html.matches("<figure class=\"chart\"").count();
    assert!(charts >= 8, "only {charts} chart containers");
    for section in [
        "Funnel: sources to rows",
        "Sources and domains",
        "Contamination",
        "Dedup clusters",
        "Teachers and cost",
        "Last refresh",
        "math500",
    ] {
        assert!(html.contains(section), "no {section:?} in the page");
    }

    // The DOM after the scripts ran.
    let profile = tmp.path().join("chromium-profile");
    let dump = headless(&page, &profile, &["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&dump.stdout);
    let log = String::from_utf8_lossy(&dump.stderr);
    assert!(dump.status.success(), "chromium --dump-dom failed:\n{log}");
    assert!(!dom.is_empty(), "empty DOM dump:\n{log}");
    // Console messages are logged as `INFO:CONSOLE:LINE] "message", source: ...`.
    for bad in ["Uncaught", ":CONSOLE", "console error"] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            hits.is_empty(),
            "browser console reported {bad:?}:\n{}",
            hits.join("\n")
        );
    }
    assert_eq!(
        attr(&dom, "data-errors").as_deref(),
        Some("0"),
        "the page's scripts reported errors: {:?}",
        regex::Regex::new(r#"(?s)<pre id="errors"[^>]*>(.*?)</pre>"#)
            .unwrap()
            .captures(&dom)
            .map(|c| c[1].to_string())
    );
    assert_eq!(
        attr(&dom, "data-charts-drawn"),
        Some(charts.to_string()),
        "not every chart was drawn"
    );
    let drawn = regex::Regex::new(
        r#"<figure class="chart" id="([a-z_]+)" data-chart="[a-z]+" data-drawn="(\d+)""#,
    )
    .unwrap();
    let mut seen = 0;
    for c in drawn.captures_iter(&dom) {
        seen += 1;
        let n: usize = c[2].parse().unwrap();
        assert!(n > 0, "chart {} drew no bars", &c[1]);
    }
    assert_eq!(seen, charts, "charts without data-drawn in:\n{dom}");
    let rects = dom.matches("<rect").count();
    assert!(rects >= 60, "only {rects} SVG bars drawn");

    // A screenshot, kept as a test artifact.
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = headless(
        &page,
        &profile,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2000".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    );
    assert!(
        shot.status.success(),
        "chromium --screenshot failed:\n{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "screenshot too small ({} bytes)",
        bytes.len()
    );
}

#[test]
fn report_of_a_folder_without_a_run_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let o = crate::util::bin()
        .args(["report"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("stats.json") && err.contains("thoughtflow run"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn report_explains_the_last_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p");
    copy_dir(&repo().join("pipelines/data"), &p.join("data"));
    std::fs::copy(repo().join("pipelines/demo.toml"), p.join("demo.toml")).unwrap();
    let out = tmp.path().join("out");
    let run = crate::util::Following::start(&p.join("demo.toml"), &out, &[]);
    let before = crate::util::stats(&out);
    // A new benchmark holding a published question verbatim retracts its rows.
    let (row_id, row) = crate::util::dataset(&out).into_iter().next().unwrap();
    let question = row["conversations"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    crate::util::write_jsonl(
        &p.join("data/benchmarks/newbench.jsonl"),
        &[serde_json::json!({"id": "nb1", "problem": question})],
    );
    run.next_change(&before);
    run.stop();
    run_ok(&["report", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    let refresh = &html[html.find("<section id=\"refresh\">").unwrap()..];
    assert!(refresh.contains("Removed, and why"), "{refresh}");
    assert!(
        refresh.contains("decontaminate: contaminated (newbench)"),
        "{refresh}"
    );
    assert!(refresh.contains(&row_id), "{refresh}");
}
