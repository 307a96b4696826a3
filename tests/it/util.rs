//! Helpers: run the real binary, read its outputs, wait for a following run.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_thoughtflow"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary; panics with its output if it fails.
pub fn run_ok(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("run thoughtflow");
    assert!(
        out.status.success(),
        "thoughtflow {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// Every dataset row, by row id.
pub fn dataset(out: &Path) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("dataset"))
        .expect("dataset folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for row in read_jsonl(&f) {
            let id = row["row_id"].as_str().expect("row_id").to_string();
            assert!(
                rows.insert(id.clone(), row).is_none(),
                "row {id} published twice"
            );
        }
    }
    rows
}

pub fn stats(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("stats.json")).expect("stats.json"))
        .expect("stats.json is JSON")
}

pub fn step<'a>(stats: &'a Value, id: &str) -> &'a Value {
    stats["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in stats"))
}

/// Writes a JSONL file from values.
pub fn write_jsonl(path: &Path, rows: &[Value]) {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A `thoughtflow run --follow` in the background; stopped with SIGTERM on drop.
pub struct Following {
    pub child: Child,
    pub out: PathBuf,
    /// The run's stderr.
    pub log: PathBuf,
}

static LOGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Following {
    pub fn start(recipe: &Path, out: &Path, extra: &[&str]) -> Following {
        let n = LOGS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = out.with_extension(format!("log{n}"));
        let log = std::fs::File::create(&log_path).expect("log file");
        // A restart on the same folder must not be mistaken for the earlier run.
        let _ = std::fs::remove_file(out.join("stats.json"));
        let mut cmd = bin();
        cmd.args([
            "run",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--follow", "--poll-ms", "50"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log);
        let f = Following {
            child: cmd.spawn().expect("spawn thoughtflow --follow"),
            out: out.to_path_buf(),
            log: log_path,
        };
        f.wait_for("first epoch", |s| {
            s["epochs_run"].as_u64().unwrap_or(0) >= 1
        });
        f
    }

    /// Waits (up to 60 s) until stats.json satisfies `pred`; returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        loop {
            if let Ok(bytes) = std::fs::read(self.out.join("stats.json")) {
                if let Ok(s) = serde_json::from_slice::<Value>(&bytes) {
                    if pred(&s) {
                        return s;
                    }
                    last = s;
                }
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "timed out waiting for {what}; last stats: epoch {} dataset {}\nlog tail:\n{}",
                    last["epoch"],
                    last["dataset"],
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the run has published an epoch after the current one.
    pub fn next_change(&self, after: &Value) -> Value {
        let seen = after["last_changed_epoch"].as_u64();
        self.wait_for("a new epoch with changes", |s| {
            s["last_changed_epoch"].as_u64() > seen
                && s["epoch"].as_u64() >= s["last_changed_epoch"].as_u64()
        })
    }

    /// Stops the run with SIGTERM and checks that it exits cleanly.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "follow run exited with {status}: {err}");
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Every published file (dataset, rejections, contamination, changes) with its bytes, sorted.
pub fn read_outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in ["dataset", "rejections", "contamination", "changes"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            files.push((name, std::fs::read(&p).unwrap()));
        }
    }
    files
}

/// `stats.json` without what depends on batching or timing (work counters, replay speed): the
/// sizes, which must not depend on the number of workers or processes.
pub fn sizes(mut s: Value) -> Value {
    if let Some(steps) = s["steps"].as_array_mut() {
        for st in steps {
            st.as_object_mut().unwrap().remove("work");
        }
    }
    if let Some(ingest) = s["ingest"].as_object_mut() {
        ingest.remove("work");
    }
    s.as_object_mut().unwrap().remove("replay");
    s
}
