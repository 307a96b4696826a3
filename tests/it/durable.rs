//! Durable dataset output: Parquet shards read back by pyarrow, the manifest, a rerun (and a
//! following run) that rewrites only the shards its new rows land in, and benchmarks read from
//! `.json` and `.parquet` files.

use crate::util::{read_jsonl, repo, run_ok, stats, write_jsonl, Following};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's Python (`scripts/services install` puts pyarrow there). Missing is a failure,
/// not a skip.
fn python() -> PathBuf {
    let py = repo().join(".tools/py/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `scripts/services install` (it installs pyarrow)",
        py.display()
    );
    py
}

/// Runs a Python script with arguments; panics with its output if it fails.
fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("dataset/manifest.json")).expect("manifest"))
        .expect("manifest is JSON")
}

/// The manifest's shard entries, by shard.
fn entries(m: &Value) -> BTreeMap<u64, Value> {
    m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["shard"].as_u64().unwrap(), e.clone()))
        .collect()
}

/// Every file the manifest lists is on disk with its size, checksum and row count; returns
/// the total rows.
fn check_manifest(out: &Path, m: &Value) -> u64 {
    assert_eq!(m["format_version"], 1);
    let shards = m["shards"].as_array().unwrap();
    assert_eq!(shards.len() as u64, m["shard_count"].as_u64().unwrap());
    let mut total = 0;
    for (i, e) in shards.iter().enumerate() {
        assert_eq!(e["shard"], i as u64);
        let files = e["files"].as_array().unwrap();
        assert!(!files.is_empty());
        for f in files {
            let path = out.join("dataset").join(f["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(f["bytes"], bytes.len() as u64, "{}", path.display());
            assert_eq!(
                f["checksum"].as_str().unwrap(),
                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
                "{}",
                path.display()
            );
            if path.extension().is_some_and(|x| x == "jsonl") {
                assert_eq!(f["rows"], read_jsonl(&path).len() as u64);
            }
            assert_eq!(f["rows"], files[0]["rows"]);
        }
        total += files[0]["rows"].as_u64().unwrap();
    }
    assert_eq!(m["total_rows"], total);
    total
}

const READ_PARQUET: &str = r#"
import glob, json, os, sys
import pyarrow as pa
import pyarrow.parquet as pq

parquet_dir, jsonl_dir = sys.argv[1], sys.argv[2]
columns = ["difficulty", "source", "domain", "conversations",
           "row_id", "question_id", "teacher", "sample", "score"]
files = sorted(glob.glob(os.path.join(parquet_dir, "part-*.parquet")))
assert files, "no parquet shards in " + parquet_dir
total = 0
for path in files:
    table = pq.read_table(path)
    schema = table.schema
    assert schema.names == columns, (path, schema.names)
    for c in ["difficulty", "sample", "score"]:
        assert schema.field(c).type == pa.int64(), (path, c, schema.field(c).type)
    for c in ["source", "domain", "row_id", "question_id", "teacher"]:
        assert schema.field(c).type == pa.string(), (path, c, schema.field(c).type)
    conv = schema.field("conversations").type
    assert pa.types.is_list(conv), (path, conv)
    turn = conv.value_type
    assert pa.types.is_struct(turn), (path, turn)
    assert [f.name for f in turn] == ["from", "value"], (path, turn)
    assert all(f.type == pa.string() for f in turn), (path, turn)
    rows = table.to_pylist()
    name = os.path.basename(path)[:-len(".parquet")] + ".jsonl"
    with open(os.path.join(jsonl_dir, name)) as f:
        want = [json.loads(line) for line in f if line.strip()]
    assert rows == want, (path, rows[:2], want[:2])
    total += len(rows)
print(json.dumps({"files": len(files), "rows": total}))
"#;

fn questions(prefix: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| {
            json!({
                "id": format!("{prefix}{i}"),
                "question": format!("Question {prefix}{i}: how many lattice paths of length {i} stay below the diagonal, and why does the count for {prefix} grow like a Catalan number?"),
            })
        })
        .collect()
}

/// A recipe over `dir/src/` with `sink` as its `[sink]` table and `steps` as its steps.
fn recipe(dir: &Path, name: &str, sink: &str, steps: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[[sources]]
name = "main"
path = "src"
domain = "math"

[[teachers]]
name = "t"
kind = "synthetic"
answer_words = 12

{steps}

[sink]
{sink}
"#
        ),
    )
    .unwrap();
    path
}

const STEPS_FANOUT: &str = r#"
[[steps]]
id = "score"
type = "score"
scorer = "length_chars"
as_difficulty = true

[[steps]]
id = "dedup"
type = "dedup"

[[steps]]
id = "fan"
type = "fanout"
teacher = "t"
samples = 2
"#;

const STEPS_PLAIN: &str = r#"
[[steps]]
id = "dedup"
type = "dedup"
"#;

#[test]
fn parquet_shards_read_back_with_pyarrow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    write_jsonl(&dir.join("src/a.jsonl"), &questions("q", 0..30));

    // Both formats: the Parquet rows equal the JSONL rows, shard by shard, in order.
    let both = recipe(dir, "both", "shards = 3\nformat = \"both\"", STEPS_FANOUT);
    let out = dir.join("both");
    run_ok(&[
        "run",
        both.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let ds = out.join("dataset");
    let read: Value = serde_json::from_str(&run_python(
        READ_PARQUET,
        &[ds.to_str().unwrap(), ds.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(read, json!({"files": 3, "rows": 60}));
    let m = manifest(&out);
    assert_eq!(m["format"], "both");
    assert_eq!(check_manifest(&out, &m), 60);
    for e in m["shards"].as_array().unwrap() {
        let names: Vec<&str> = e["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        let s = e["shard"].as_u64().unwrap();
        assert_eq!(
            names,
            [format!("part-{s:05}.jsonl"), format!("part-{s:05}.parquet")]
        );
    }

    // Parquet only, without a teacher (null teacher, difficulty and score; one turn): the
    // rows equal a JSONL run's.
    let pq = recipe(dir, "pq", "shards = 2\nformat = \"parquet\"", STEPS_PLAIN);
    let js = recipe(dir, "js", "shards = 2", STEPS_PLAIN);
    let (out_pq, out_js) = (dir.join("pq"), dir.join("js"));
    run_ok(&[
        "run",
        pq.to_str().unwrap(),
        "--out",
        out_pq.to_str().unwrap(),
    ]);
    run_ok(&[
        "run",
        js.to_str().unwrap(),
        "--out",
        out_js.to_str().unwrap(),
    ]);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d.join("dataset"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&out_pq),
        ["manifest.json", "part-00000.parquet", "part-00001.parquet"]
    );
    assert_eq!(
        names(&out_js),
        ["manifest.json", "part-00000.jsonl", "part-00001.jsonl"]
    );
    let read: Value = serde_json::from_str(&run_python(
        READ_PARQUET,
        &[
            out_pq.join("dataset").to_str().unwrap(),
            out_js.join("dataset").to_str().unwrap(),
        ],
    ))
    .unwrap();
    assert_eq!(read, json!({"files": 2, "rows": 30}));
    assert_eq!(check_manifest(&out_pq, &manifest(&out_pq)), 30);
    let row = &read_jsonl(&out_js.join("dataset/part-00000.jsonl"))[0];
    assert!(
        row["teacher"].is_null() && row["difficulty"].is_null(),
        "{row}"
    );

    // A different format on the same folder starts the dataset afresh.
    run_ok(&[
        "run",
        js.to_str().unwrap(),
        "--out",
        out_pq.to_str().unwrap(),
    ]);
    assert_eq!(names(&out_pq), names(&out_js));
    assert_eq!(manifest(&out_pq)["run"], 1);
}

/// Each dataset file by name: (inode, mtime in ns, bytes).
type Snapshot = BTreeMap<String, (u64, i128, Vec<u8>)>;

/// What each dataset file is on disk.
fn snapshot(out: &Path) -> Snapshot {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(out.join("dataset")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file()
            && p.extension()
                .is_some_and(|x| x == "jsonl" || x == "parquet")
        {
            let meta = std::fs::metadata(&p).unwrap();
            let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
            files.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (meta.ino(), mtime, std::fs::read(&p).unwrap()),
            );
        }
    }
    files
}

/// The shards whose JSONL file holds a row of one of the questions `ids` (source `main`).
fn shards_with(out: &Path, ids: &[Value]) -> BTreeSet<u64> {
    let wanted: BTreeSet<&str> = ids.iter().map(|q| q["id"].as_str().unwrap()).collect();
    let mut shards = BTreeSet::new();
    let count = manifest(out)["shards"].as_array().unwrap().len() as u64;
    for s in 0..count {
        let rows = read_jsonl(&out.join(format!("dataset/part-{s:05}.jsonl")));
        if rows
            .iter()
            .any(|r| wanted.contains(r["question_id"].as_str().unwrap()))
        {
            shards.insert(s);
        }
    }
    shards
}

/// Checks that exactly `changed` shards were rewritten between `before` and `after` (new
/// inode, new manifest entry written in `run`) and every other file is untouched.
fn assert_only_rewritten(
    before: (&Snapshot, &Value),
    after: (&Snapshot, &Value),
    changed: &BTreeSet<u64>,
    run: u64,
) {
    let (files0, m0) = before;
    let (files1, m1) = after;
    assert_eq!(
        files0.keys().collect::<Vec<_>>(),
        files1.keys().collect::<Vec<_>>()
    );
    let (e0, e1) = (entries(m0), entries(m1));
    for s in 0..16u64 {
        let name = format!("part-{s:05}.jsonl");
        let (a, b) = (&files0[&name], &files1[&name]);
        if changed.contains(&s) {
            assert_ne!(a.2, b.2, "{name} should hold new rows");
            assert_ne!(a.0, b.0, "{name} should have been replaced");
            assert_eq!(e1[&s]["run_written"], run, "{name}");
            assert_ne!(e0[&s], e1[&s], "{name}");
        } else {
            assert_eq!(a, b, "{name} should be untouched (inode, mtime, bytes)");
            assert_eq!(e0[&s], e1[&s], "{name}'s manifest entry should be kept");
        }
    }
}

#[test]
fn rerun_rewrites_only_the_shards_new_rows_land_in() {
    const SHARDS: u64 = 80;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    write_jsonl(&dir.join("src/a.jsonl"), &questions("a", 0..300));
    let r = recipe(
        dir,
        "r",
        // More shards than change partitions (64): the change log and its state are
        // partitioned apart from the shards.
        &format!("shards = {SHARDS}"),
        r#"
[[steps]]
id = "dedup"
type = "dedup"

[[steps]]
id = "fan"
type = "fanout"
teacher = "t"
"#,
    );
    let out = dir.join("out");
    let args = ["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()];
    run_ok(&args);
    let m1 = manifest(&out);
    assert_eq!(m1["run"], 1);
    assert_eq!(check_manifest(&out, &m1), 300);
    let s1 = stats(&out);
    assert_eq!(s1["dataset"]["shards"]["last_epoch"]["rewritten"], SHARDS);
    assert_eq!(s1["dataset"]["shards"]["last_epoch"]["unchanged"], 0);
    let files1 = snapshot(&out);

    // A plain rerun with nothing new writes nothing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    run_ok(&args);
    let m2 = manifest(&out);
    assert_eq!(m2["run"], 2);
    let s2 = stats(&out);
    assert_eq!(s2["dataset"]["shards"]["last_epoch"]["rewritten"], 0);
    assert_eq!(s2["dataset"]["shards"]["last_epoch"]["unchanged"], SHARDS);
    assert_only_rewritten((&files1, &m1), (&snapshot(&out), &m2), &BTreeSet::new(), 2);
    // ... and logs no change: the restart's first epoch is relative to what run 1 published.
    assert_eq!(s2["dataset"]["last_epoch"]["upserts"], 0);
    assert_eq!(s2["dataset"]["rows"], 300);
    assert!(changes_log(&out).is_empty());

    // A rerun with another worker count owns the shards differently: it still writes nothing,
    // and the manifest folder holds that run's worker files only.
    let mut three = args.to_vec();
    three.extend(["--workers", "3"]);
    run_ok(&three);
    let s = stats(&out);
    assert_eq!(s["dataset"]["shards"]["last_epoch"]["rewritten"], 0);
    assert_eq!(s["dataset"]["shards"]["last_epoch"]["unchanged"], SHARDS);
    let mut parts: Vec<String> = std::fs::read_dir(out.join("dataset/.manifest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    parts.sort();
    assert_eq!(
        parts,
        [
            "worker-0-of-3.json",
            "worker-1-of-3.json",
            "worker-2-of-3.json"
        ]
    );
    let m = manifest(&out);
    assert_eq!(entries(&m), entries(&m2));
    run_ok(&args);
    assert_eq!(entries(&manifest(&out)), entries(&m2));
    assert_eq!(
        stats(&out)["dataset"]["shards"]["last_epoch"]["rewritten"],
        0
    );

    // A new source file with 1% new questions: a rerun rewrites only their shards.
    let new = questions("n", 0..3);
    write_jsonl(&dir.join("src/b.jsonl"), &new);
    run_ok(&args);
    let m3 = manifest(&out);
    assert_eq!(m3["run"], 5);
    assert_eq!(check_manifest(&out, &m3), 303);
    let changed = shards_with(&out, &new);
    assert!(!changed.is_empty() && changed.len() <= 3, "{changed:?}");
    let s3 = stats(&out);
    assert_eq!(
        s3["dataset"]["shards"]["last_epoch"]["rewritten"],
        changed.len() as u64
    );
    assert_eq!(
        s3["dataset"]["shards"]["last_epoch"]["unchanged"],
        SHARDS - changed.len() as u64
    );
    let files3 = snapshot(&out);
    assert_only_rewritten((&files1, &m1), (&files3, &m3), &changed, 5);
    // The log holds exactly the new rows.
    let log = changes_log(&out);
    assert_eq!(log.len(), 3, "{log:?}");
    for c in &log {
        assert_eq!(c["op"], "upsert");
        assert!(
            c["row"]["question_id"].as_str().unwrap().starts_with('n'),
            "{c}"
        );
    }
    for s in &changed {
        assert_eq!(entries(&m3)[s]["epoch_written"], 0);
    }

    // Following: the restart's first epoch writes nothing, and a new file's epoch rewrites
    // only the shards its rows land in, with work in proportion to the delta.
    let run = Following::start(&r, &out, &[]);
    let f0 = run.wait_for("the first epoch", |s| {
        s["dataset"]["rows"] == 303 && dir.join("out/dataset/manifest.json").exists()
    });
    assert_eq!(f0["dataset"]["shards"]["last_epoch"]["rewritten"], 0);
    assert_eq!(f0["dataset"]["shards"]["last_epoch"]["unchanged"], SHARDS);
    let m4 = manifest(&out);
    assert_eq!(m4["run"], 6);
    assert_eq!(entries(&m4), entries(&m3));
    let newer = questions("f", 0..3);
    write_jsonl(&dir.join("src/c.jsonl"), &newer);
    let f1 = run.wait_for("the new file's rows", |s| s["dataset"]["rows"] == 306);
    let epoch = f1["last_changed_epoch"].as_u64().unwrap();
    assert!(epoch > 0);
    let m5 = run_manifest_at(&out, epoch);
    let changed = shards_with(&out, &newer);
    assert!(!changed.is_empty() && changed.len() <= 3, "{changed:?}");
    assert_eq!(
        f1["dataset"]["shards"]["last_epoch"]["rewritten"],
        changed.len() as u64
    );
    assert_eq!(f1["dataset"]["shards"]["last_epoch"]["unchanged"], 0);
    // Only the new rows were rendered: the other rows of their shards were copied from the
    // files in place (whose lines this restarted run indexed when the epoch touched them).
    let in_changed: u64 = changed
        .iter()
        .map(|s| entries(&m5)[s]["files"][0]["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(f1["dataset"]["shards"]["last_epoch"]["rows_rendered"], 3);
    assert_eq!(
        f1["dataset"]["shards"]["last_epoch"]["rows_copied"],
        in_changed - 3
    );
    assert!(
        in_changed > 3,
        "the changed shards held other rows: {in_changed}"
    );
    assert_only_rewritten((&files3, &m3), (&snapshot(&out), &m5), &changed, 6);
    for s in &changed {
        assert_eq!(entries(&m5)[s]["epoch_written"], epoch);
    }
    assert_eq!(f1["dataset"]["last_epoch"]["upserts"], 3);
    assert_eq!(f1["ingest"]["work"]["last_epoch"], 3);
    for st in f1["steps"].as_array().unwrap() {
        let w = st["work"]["last_epoch"].as_i64().unwrap();
        assert!(
            (1..=12).contains(&w),
            "step {} did {w} updates of work for 3 new questions",
            st["id"]
        );
        assert!(st["work"]["total"].as_i64().unwrap() >= 300);
    }
    run.stop();
    check_manifest(&out, &manifest(&out));

    // After a clean stop, removing a source logs its rows as deletes, and only them.
    let before = crate::util::dataset(&out);
    std::fs::remove_file(dir.join("src/b.jsonl")).unwrap();
    run_ok(&args);
    let gone: BTreeSet<String> = before
        .keys()
        .filter(|id| {
            before[*id]["question_id"]
                .as_str()
                .unwrap()
                .starts_with('n')
        })
        .cloned()
        .collect();
    assert_eq!(gone.len(), 3);
    let log = changes_log(&out);
    let deleted: BTreeSet<String> = log
        .iter()
        .map(|c| {
            assert_eq!(c["op"], "delete", "{c}");
            c["row_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(deleted, gone);
    assert_eq!(stats(&out)["dataset"]["rows"], 303);

    // A run that did not end cleanly leaves no row state: the next run logs every row.
    std::fs::remove_dir_all(out.join("dataset/.rows")).unwrap();
    run_ok(&args);
    let log = changes_log(&out);
    assert_eq!(log.len(), 303);
    assert!(log.iter().all(|c| c["op"] == "upsert"));
}

/// Every change the run's first epoch logged (`changes/00000000.jsonl`; none when absent).
fn changes_log(out: &Path) -> Vec<Value> {
    let p = out.join("changes/00000000.jsonl");
    if p.exists() {
        crate::util::read_jsonl(&p)
    } else {
        Vec::new()
    }
}

/// The manifest once it describes `epoch` (it is written before stats.json, so it already
/// does when stats.json shows the epoch).
fn run_manifest_at(out: &Path, epoch: u64) -> Value {
    let m = manifest(out);
    assert_eq!(m["epoch"], epoch, "manifest lags stats.json");
    m
}

const WRITE_PARQUET: &str = r#"
import json, sys
import pyarrow as pa
import pyarrow.parquet as pq

items = json.loads(sys.argv[1])
table = pa.table({
    "id": pa.array([i["id"] for i in items], pa.string()),
    "question": pa.array([i["question"] for i in items], pa.large_string()),
})
pq.write_table(table, sys.argv[2])
"#;

#[test]
fn benchmarks_from_json_and_parquet_contaminate_like_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let items: Vec<Value> = [
        "A ladder leans against a wall and slides down at a constant rate; find the rate at which the top descends.",
        "Prove that the product of four consecutive integers plus one is always a perfect square number.",
        "A tank drains through a hole in its bottom following Torricelli's law; how long until it is empty?",
        "Count the binary strings of length twelve with no two adjacent ones using a Fibonacci recurrence.",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| json!({"id": format!("b{i}"), "question": t}))
    .collect();
    let mut qs = questions("q", 0..10);
    for i in [1, 3] {
        qs.push(json!({"id": format!("leak{i}"), "question": items[i]["question"]}));
    }
    write_jsonl(&dir.join("src/a.jsonl"), &qs);
    write_jsonl(&dir.join("bench.jsonl"), &items);
    std::fs::write(
        dir.join("bench.json"),
        serde_json::to_vec_pretty(&items).unwrap(),
    )
    .unwrap();
    run_python(
        WRITE_PARQUET,
        &[
            &serde_json::to_string(&items).unwrap(),
            dir.join("bench.parquet").to_str().unwrap(),
        ],
    );
    let run_with = |bench: &str| -> (Vec<Value>, Vec<Value>, String) {
        let r = dir.join(format!("r-{bench}.toml"));
        std::fs::write(
            &r,
            format!(
                r#"
[[sources]]
name = "main"
path = "src"
domain = "math"

[[benchmarks]]
name = "evals"
path = "{bench}"

[[steps]]
id = "decontam"
type = "decontaminate"
ngram = 8
"#
            ),
        )
        .unwrap();
        let out = dir.join(format!("out-{bench}"));
        let o = run_ok(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        (
            read_jsonl(&out.join("contamination/matches.jsonl")),
            read_jsonl(&out.join("rejections/decontam.jsonl")),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (m_jsonl, r_jsonl, _) = run_with("bench.jsonl");
    let leaked: BTreeSet<&str> = m_jsonl
        .iter()
        .map(|m| m["question"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(leaked, BTreeSet::from(["leak1", "leak3"]));
    assert_eq!(r_jsonl.len(), 2);
    for bench in ["bench.json", "bench.parquet"] {
        let (m, r, _) = run_with(bench);
        assert_eq!(m, m_jsonl, "{bench}");
        assert_eq!(r, r_jsonl, "{bench}");
    }

    // A folder: good files of each kind are benchmarks named by their stems; a file that
    // cannot be read is reported by name and does not stop the run.
    std::fs::create_dir_all(dir.join("benches")).unwrap();
    std::fs::copy(dir.join("bench.json"), dir.join("benches/one.json")).unwrap();
    std::fs::copy(dir.join("bench.parquet"), dir.join("benches/two.parquet")).unwrap();
    std::fs::write(dir.join("benches/broken.parquet"), b"PAR1 not really").unwrap();
    std::fs::write(dir.join("benches/broken.json"), b"[1, {\"id\": \"x\"}]").unwrap();
    let (m, _, log) = run_with("benches");
    let benches: BTreeSet<&str> = m.iter().map(|m| m["benchmark"].as_str().unwrap()).collect();
    assert_eq!(benches, BTreeSet::from(["one", "two"]));
    assert_eq!(m.len(), 4);
    for bad in [
        "broken.parquet",
        "broken.json: item 0",
        "broken.json: item 1",
    ] {
        assert!(log.contains(bad), "no problem reported for {bad}:\n{log}");
    }
}

#[test]
fn an_unknown_sink_format_is_refused_naming_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "r", "format = \"xml\"", STEPS_PLAIN);
    let out = crate::util::bin()
        .args(["check", r.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "{}: sink.format: \"xml\" is not one of jsonl, parquet, both",
            r.display()
        )),
        "{text}"
    );
}

/// `[sink] changes`: `updates` does not log a fresh build's rows (they are the dataset) but
/// logs what a rerun changed; `none` logs nothing, and epochs are still published.
#[test]
fn the_change_log_can_skip_the_first_build_or_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    write_jsonl(&dir.join("src/a.jsonl"), &questions("a", 0..50));
    let steps = "[[steps]]\nid = \"fan\"\ntype = \"fanout\"\nteacher = \"t\"\n";
    let r = recipe(dir, "u", "changes = \"updates\"", steps);
    let out = dir.join("u");
    let args = ["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()];
    run_ok(&args);
    assert_eq!(stats(&out)["dataset"]["rows"], 50);
    assert_eq!(stats(&out)["dataset"]["last_epoch"]["upserts"], 50);
    assert!(
        changes_log(&out).is_empty(),
        "a fresh build's rows are not logged"
    );
    write_jsonl(&dir.join("src/b.jsonl"), &questions("b", 0..2));
    run_ok(&args);
    let log = changes_log(&out);
    assert_eq!(log.len(), 2, "a rerun logs what changed: {log:?}");
    assert!(log.iter().all(|c| c["op"] == "upsert"));

    let r = recipe(dir, "n", "changes = \"none\"", steps);
    let out = dir.join("n");
    let run = Following::start(&r, &out, &[]);
    run.wait_for("the first epoch", |s| s["dataset"]["rows"] == 52);
    write_jsonl(&dir.join("src/c.jsonl"), &questions("c", 0..3));
    let s = run.wait_for("the new file", |s| s["dataset"]["rows"] == 55);
    let epoch = s["last_changed_epoch"].as_u64().unwrap();
    assert!(epoch > 0);
    assert_eq!(run_manifest_at(&out, epoch)["total_rows"], 55);
    run.stop();
    assert_eq!(
        std::fs::read_dir(out.join("changes"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        0,
        "nothing is logged"
    );
}

/// A clean stop keeps the decontamination verdicts: a rerun reuses every one of them (and
/// publishes the same files), and a changed benchmark set makes them miss, not lie: the
/// question a new benchmark item leaks is rejected on the next run, and restored when the
/// item goes.
#[test]
fn a_rerun_reuses_decontamination_verdicts_until_the_benchmarks_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    // 40 questions of 24 pseudo-random words each: no two share a 13-gram or are near copies.
    const WORDS: [&str; 16] = [
        "prime", "triangle", "integer", "circle", "radius", "sum", "product", "digit", "square",
        "angle", "series", "matrix", "vector", "area", "chord", "root",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let qs: Vec<Value> = (0..40)
        .map(|i| {
            let words: Vec<&str> = (0..24)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    WORDS[(x % 16) as usize]
                })
                .collect();
            json!({"id": format!("q{i}"), "question": words.join(" ")})
        })
        .collect();
    write_jsonl(&dir.join("src/a.jsonl"), &qs);
    let leak = |i: usize| json!({"id": format!("b{i}"), "question": qs[i]["question"]});
    write_jsonl(&dir.join("bench/evals.jsonl"), &[leak(7)]);
    let r = recipe(
        dir,
        "r",
        "shards = 4",
        r#"
[[benchmarks]]
name = "evals"
path = "bench"

[[steps]]
id = "decontam"
type = "decontaminate"
ngram = 13
fuzzy = 90

[[steps]]
id = "fan"
type = "fanout"
teacher = "t"
"#,
    );
    let out = dir.join("out");
    let args = ["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let rejected = |out: &Path| -> BTreeSet<String> {
        std::fs::read_to_string(out.join("rejections/decontam.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["row"]["id"].to_string())
            .collect()
    };
    run_ok(&args);
    let s1 = stats(&out);
    assert_eq!(s1["replay"]["decontam_memo"]["reused"], 0);
    assert_eq!(rejected(&out), BTreeSet::from(["\"q7\"".to_string()]));
    let memo_files = std::fs::read_dir(out.join(".store/decontam"))
        .unwrap()
        .count();
    assert!(memo_files > 0, "a clean stop saves the verdicts");
    let bytes = |out: &Path| -> BTreeMap<String, Vec<u8>> {
        snapshot(out).into_iter().map(|(k, v)| (k, v.2)).collect()
    };
    let files1 = bytes(&out);

    // A rerun takes all 40 verdicts from the memo and publishes the same files.
    run_ok(&args);
    let s2 = stats(&out);
    assert_eq!(s2["replay"]["decontam_memo"]["loaded"], 40);
    assert_eq!(s2["replay"]["decontam_memo"]["reused"], 40);
    assert_eq!(rejected(&out), BTreeSet::from(["\"q7\"".to_string()]));
    assert_eq!(bytes(&out), files1);
    assert_eq!(s2["dataset"]["rows"], s1["dataset"]["rows"]);

    // Another benchmark file: none of the verdicts applies, and q12 is caught.
    write_jsonl(&dir.join("bench/more.jsonl"), &[leak(12)]);
    run_ok(&args);
    let s3 = stats(&out);
    assert_eq!(s3["replay"]["decontam_memo"]["reused"], 0);
    assert_eq!(
        rejected(&out),
        BTreeSet::from(["\"q7\"".to_string(), "\"q12\"".to_string()])
    );
    // Removing it restores q12: the memo now holds the third run's verdicts, which miss.
    std::fs::remove_file(dir.join("bench/more.jsonl")).unwrap();
    run_ok(&args);
    assert_eq!(stats(&out)["replay"]["decontam_memo"]["reused"], 0);
    assert_eq!(rejected(&out), BTreeSet::from(["\"q7\"".to_string()]));
    assert_eq!(bytes(&out), files1);
}

/// A rerun loads each unchanged source file's parse from the parse cache instead of parsing
/// it, and publishes the same files. The cache is checked, not trusted: an unreadable entry,
/// or a text store that lost its texts, makes the file be parsed again, with the same result.
#[test]
fn a_rerun_loads_parses_from_the_cache_and_checks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    write_jsonl(&dir.join("src/a.jsonl"), &questions("a", 0..30));
    // A bad line: its rejection must come back from the cache too.
    let mut b = questions("b", 0..20);
    b.push(json!({"id": "b-empty", "question": "   "}));
    write_jsonl(&dir.join("src/b.jsonl"), &b);
    let r = recipe(dir, "r", "shards = 4", STEPS_FANOUT);
    let out = dir.join("out");
    let args = ["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let published = |out: &Path| -> (BTreeMap<String, Vec<u8>>, String, Value) {
        let files = snapshot(out).into_iter().map(|(k, v)| (k, v.2)).collect();
        let rejections = std::fs::read_to_string(out.join("rejections/ingest.jsonl")).unwrap();
        let s = stats(out);
        (
            files,
            rejections,
            json!([s["dataset"]["rows"], s["sources"]]),
        )
    };
    let parse_cache = |out: &Path| stats(out)["replay"]["parse_cache"].clone();

    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 0, "parsed": 2}));
    let first = published(&out);
    assert!(first.1.contains("empty_text"), "{}", first.1);
    let listed = |ext: &str| -> Vec<PathBuf> {
        std::fs::read_dir(out.join(".store/parsed"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect()
    };
    let entries = listed("bin");
    assert_eq!(entries.len(), 2, "one parse per file");
    // With each file's content hash and the stat it was read under: a rerun reads no file
    // whose stat is unchanged.
    assert_eq!(listed("stat").len(), 2, "one stat record per file");

    // A rerun parses nothing.
    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 2, "parsed": 0}));
    assert_eq!(published(&out), first);

    // An unreadable entry is parsed again (and replaced).
    std::fs::write(&entries[0], b"not bincode").unwrap();
    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 1, "parsed": 1}));
    assert_eq!(published(&out), first);

    // A store without its texts cannot serve the cached parses: both files are parsed.
    std::fs::remove_file(out.join(".store/texts-0.idx")).unwrap();
    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 0, "parsed": 2}));
    assert_eq!(published(&out), first);

    // A rewritten file is parsed, and its old entry removed.
    write_jsonl(&dir.join("src/a.jsonl"), &questions("a", 0..31));
    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 1, "parsed": 1}));
    assert_eq!(listed("bin").len(), 2);

    // A rewrite that keeps the file's size is seen as well (its stat differs from the one its
    // content hash was recorded under): parsed, and published.
    let a = std::fs::read_to_string(dir.join("src/a.jsonl")).unwrap();
    std::fs::write(dir.join("src/a.jsonl"), a.replace("lattice", "LATTICE")).unwrap();
    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 1, "parsed": 1}));
    let shards: String = (0..4)
        .map(|s| {
            std::fs::read_to_string(out.join(format!("dataset/part-{s:05}.jsonl")))
                .unwrap_or_default()
        })
        .collect();
    assert!(shards.contains("LATTICE"), "the rewrite is published");
    run_ok(&args);
    assert_eq!(parse_cache(&out), json!({"loaded": 2, "parsed": 0}));
}
