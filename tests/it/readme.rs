//! The README's commands stay true: every `thoughtflow ...` / `cargo run --release -- ...` in
//! its shell code blocks that needs no service (no Kafka, no LLM endpoint) is run with the built
//! binary, in README order, with `out/...` paths moved into a temporary folder; each must
//! succeed. `--follow` runs are stopped with SIGTERM after their first epoch. Every
//! subcommand's `--help` shows an example.

use crate::util::{bin, repo};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Shell words of a command line (quotes and backslash escapes; `#` starts a comment).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    has = true;
                }
            }
            (None, '#') if !has => break,
            (None, c) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (None, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// The thoughtflow commands of the README's `sh` (or unlabelled) code blocks, as argument
/// lists (without the program).
fn readme_commands(readme: &str) -> Vec<(String, Vec<String>)> {
    let mut cmds = Vec::new();
    let mut in_block = false;
    let mut shell = false;
    let mut pending = String::new();
    for line in readme.lines() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            if in_block {
                in_block = false;
            } else {
                in_block = true;
                shell = matches!(lang.trim(), "" | "sh" | "bash" | "shell" | "console");
            }
            continue;
        }
        if !in_block || !shell {
            continue;
        }
        // Continuation lines.
        let (body, continues) = match line.trim_end().strip_suffix('\\') {
            Some(b) => (b.to_string(), true),
            None => (line.to_string(), false),
        };
        pending.push_str(&body);
        pending.push(' ');
        if continues {
            continue;
        }
        let text = std::mem::take(&mut pending);
        let w = words(&text);
        let args: Vec<String> = if w.first().is_some_and(|p| p == "thoughtflow") {
            w[1..].to_vec()
        } else if w.len() > 4 && w[..4] == ["cargo", "run", "--release", "--"] {
            w[4..].to_vec()
        } else {
            continue;
        };
        cmds.push((text.trim().to_string(), args));
    }
    cmds
}

/// Why a README command cannot run here, if it cannot.
fn needs_services(args: &[String]) -> Option<&'static str> {
    for a in args {
        if a.starts_with("--kafka") {
            return Some("needs a Kafka broker");
        }
        if a == "--llm" || a.starts_with("--llm=") {
            return Some("needs an LLM endpoint");
        }
        if a == "..." {
            return Some("elided arguments");
        }
        if a == "--hostfile" || a.starts_with("--hostfile=") {
            return Some("needs other hosts");
        }
    }
    None
}

/// Moves `out/...` (and other `--out` folders) under `tmp`; a `--metrics-addr` gets a free
/// port.
fn relocate(args: &[String], tmp: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev = "";
    for a in args {
        let moved = if prev == "--metrics-addr" {
            "127.0.0.1:0".to_string()
        } else if prev == "--out" || a == "out" || a.starts_with("out/") {
            tmp.join(a.trim_start_matches('/'))
                .to_string_lossy()
                .to_string()
        } else {
            a.clone()
        };
        prev = a;
        out.push(moved);
    }
    out
}

#[test]
fn readme_commands_run() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let cmds = readme_commands(&readme);
    assert!(cmds.len() >= 5, "found only {} commands", cmds.len());
    let tmp = tempfile::tempdir().unwrap();
    // `thoughtflow cache ...` reads a call cache: an empty one.
    let cache = tmp.path().join("calls.redb");
    thoughtflow::llm::cache::Cache::open(&cache).unwrap();
    let mut ran = 0;
    let mut skipped = Vec::new();
    for (text, args) in &cmds {
        if let Some(why) = needs_services(args) {
            skipped.push(format!("{text}  ({why})"));
            continue;
        }
        let args = relocate(args, tmp.path());
        let mut cmd = bin();
        cmd.args(&args)
            .current_dir(repo())
            .env("THOUGHTFLOW_CACHE", &cache)
            .env("RUST_LOG", "warn");
        let started = Instant::now();
        if args.iter().any(|a| a == "--follow") {
            let out_dir = args
                .iter()
                .position(|a| a == "--out")
                .map(|i| std::path::PathBuf::from(&args[i + 1]))
                .expect("a --follow command has --out");
            let _ = std::fs::remove_file(out_dir.join("stats.json"));
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ok = std::fs::read(out_dir.join("stats.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|s| s["epochs_run"].as_u64().unwrap_or(0) >= 1);
                if ok {
                    break;
                }
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("README command `{text}` exited early with {status}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("README command `{text}` published no epoch within 60 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "README command `{text}` (--follow, stopped with SIGTERM) failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "README command `{text}` (run as {args:?}) failed: {}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("ok ({:.1}s): {text}", started.elapsed().as_secs_f64());
        ran += 1;
    }
    for s in &skipped {
        eprintln!("skipped: {s}");
    }
    assert!(ran >= 5, "ran only {ran} README commands");
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(
        words(r#"thoughtflow run "a b" --x 'c d' e\ f   # comment"#),
        ["thoughtflow", "run", "a b", "--x", "c d", "e f"]
    );
    let cmds = readme_commands(
        "```sh\nthoughtflow run r.toml --out out/x \\\n  --follow   # note\n```\n```toml\nthoughtflow = 1\n```\n",
    );
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].1, ["run", "r.toml", "--out", "out/x", "--follow"]);
}

/// Subcommand names from a `--help` text's "Commands:" list.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_subcommand_help_has_an_example() {
    let help = |args: &[&str]| -> String {
        let o = bin().args(args).arg("--help").output().unwrap();
        assert!(o.status.success(), "{args:?} --help failed");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let top = help(&[]);
    assert!(top.contains("Example"), "thoughtflow --help has no example");
    let commands = subcommands(&top);
    assert!(
        commands.iter().any(|c| c == "report") && commands.iter().any(|c| c == "run"),
        "{commands:?}"
    );
    let mut missing = Vec::new();
    for c in &commands {
        let h = help(&[c]);
        if !h.contains("Example") {
            missing.push(c.clone());
        }
        for sub in subcommands(&h) {
            if !help(&[c, &sub]).contains("Example") {
                missing.push(format!("{c} {sub}"));
            }
        }
    }
    assert!(missing.is_empty(), "--help without an example: {missing:?}");
}
