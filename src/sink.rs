//! Sinks: the published dataset, its per-epoch changes, the audit outputs.
//!
//! ```text
//!  rows --exchange(shard owner)--> DatasetShards (per worker: the shards it owns)
//!        |  each epoch: apply row diffs, rewrite changed shards (temp file + rename),
//!        |  write the epoch's change fragment per shard, report counts as stats
//!        v
//!  OUT/dataset/part-SSSSS.jsonl      OUT/changes/.parts/EEEEEEEE-SSSSS.jsonl
//!                                    (worker 0 joins them into OUT/changes/EEEEEEEE.jsonl)
//!  rejections --exchange(0)--> OUT/rejections/<step id>.jsonl (current state, per step)
//!  matches    --exchange(0)--> OUT/contamination/matches.jsonl (current state)
//! ```
//!
//! Shards are chosen by question id, so all rows of a question share a shard and a change to
//! one question rewrites one shard. Files are replaced atomically (written beside, renamed in),
//! so a reader never sees half a shard. Row order within a shard is by row key: the same
//! input gives byte-identical files whatever the number of workers.
//!
//! Texts are joined in here, from the store (DESIGN.md decision 3). Not handled here yet:
//! Parquet output, the manifest and resumable commit protocol (durable refresh).

use crate::stats::StatKey;
use crate::store::Store;
use crate::teachers::answer_text;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{
    AnswerText, Detail, Epoch, Match, QuestionId, Rejection, Row, RowKey, StepId, Subject,
};

/// One published row change, for the changelog topic: `value` is `None` for a delete.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Change {
    pub row_id: String,
    pub value: Option<String>,
}

/// What the dataset sink reports: counts for stats, and changes for a changelog.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum SinkEvent {
    Stat(StatKey),
    Change(Change),
}

/// The output folder's layout.
#[derive(Clone, Debug)]
pub struct OutDirs {
    pub root: PathBuf,
}

impl OutDirs {
    pub fn dataset(&self) -> PathBuf {
        self.root.join("dataset")
    }
    pub fn changes(&self) -> PathBuf {
        self.root.join("changes")
    }
    pub fn parts(&self) -> PathBuf {
        self.root.join("changes").join(".parts")
    }
    pub fn rejections(&self) -> PathBuf {
        self.root.join("rejections")
    }
    pub fn contamination(&self) -> PathBuf {
        self.root.join("contamination")
    }
    pub fn stats(&self) -> PathBuf {
        self.root.join("stats.json")
    }

    /// Creates the folders, removing the outputs of an earlier run.
    pub fn prepare_fresh(&self) -> std::io::Result<()> {
        for d in [
            self.dataset(),
            self.changes(),
            self.rejections(),
            self.contamination(),
        ] {
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
        }
        let _ = std::fs::remove_file(self.stats());
        for d in [
            self.dataset(),
            self.parts(),
            self.rejections(),
            self.contamination(),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        Ok(())
    }
}

/// Writes `contents` to `path` atomically: a temporary file beside it, then a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// The shard of a question.
pub fn shard_of(question: QuestionId, shards: u32) -> u32 {
    (hash::hash64(&question.0.to_le_bytes()) % shards as u64) as u32
}

pub fn shard_file(dirs: &OutDirs, shard: u32) -> PathBuf {
    dirs.dataset().join(format!("part-{shard:05}.jsonl"))
}

/// Names the sink needs to render rows.
#[derive(Clone)]
pub struct Naming {
    pub store: Arc<Store>,
    pub teachers: Arc<Vec<String>>,
    pub steps: Arc<Vec<String>>,
}

impl Naming {
    pub fn row_id(&self, key: &RowKey, source: &str, id: &str, has_teacher: bool) -> String {
        if has_teacher {
            let teacher = self
                .teachers
                .get(key.teacher.0 as usize)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("{source}/{id}/{teacher}/{}", key.sample)
        } else {
            format!("{source}/{id}")
        }
    }

    /// The published id of a row.
    pub fn render_row_id(&self, row: &Row) -> String {
        let source = self.store.source_name(row.question.source);
        let id = self.store.question_name(row.question.id);
        let has_teacher = !matches!(row.answer.text, AnswerText::None);
        self.row_id(&row.key, &source, &id, has_teacher)
    }

    /// A dataset row in the OpenThoughts3 schema, plus ids.
    pub fn render_row(&self, row: &Row) -> Value {
        let q = &row.question;
        let source = self.store.source_name(q.source);
        let id = self.store.question_name(q.id);
        let question = self
            .store
            .text(q.text)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let answer = answer_text(&row.answer, &self.store);
        let has_teacher = !matches!(row.answer.text, AnswerText::None);
        let mut conversations = vec![json!({"from": "human", "value": question})];
        if let Some(a) = answer {
            conversations.push(json!({"from": "gpt", "value": a}));
        }
        json!({
            "row_id": self.row_id(&row.key, &source, &id, has_teacher),
            "question_id": &*id,
            "source": &*source,
            "domain": q.domain.as_str(),
            "difficulty": q.difficulty,
            "score": q.score,
            "teacher": if has_teacher { self.teachers.get(row.key.teacher.0 as usize).cloned() } else { None },
            "sample": row.key.sample,
            "conversations": conversations,
        })
    }

    pub fn step_name(&self, step: StepId) -> String {
        if step == StepId::INGEST {
            "ingest".into()
        } else {
            self.steps
                .get(step.0 as usize)
                .cloned()
                .unwrap_or_else(|| format!("step{}", step.0))
        }
    }

    fn question_ref(&self, qid: QuestionId) -> Value {
        match self.store.question_source(qid) {
            Some(source) => json!({
                "source": &*self.store.source_name(source),
                "id": &*self.store.question_name(qid),
            }),
            None => json!({"question_id": qid.to_string()}),
        }
    }

    pub fn render_rejection(&self, r: &Rejection) -> Value {
        let row = match &r.subject {
            Subject::Question(q) => {
                let mut v = self.question_ref(*q);
                v["kind"] = json!("question");
                v
            }
            Subject::Row(k) => {
                let mut v = self.question_ref(k.question);
                v["kind"] = json!("row");
                v["teacher"] = json!(self.teachers.get(k.teacher.0 as usize));
                v["sample"] = json!(k.sample);
                v
            }
            Subject::Input { source, location } => {
                json!({"kind": "input", "source": &*self.store.source_name(*source), "location": location})
            }
        };
        let detail = match &r.detail {
            Detail::None => Value::Null,
            Detail::Text(t) => json!({"message": t}),
            Detail::Contamination { bench, item } => json!({"benchmark": bench, "item": item}),
            Detail::Tokens { tokens, max } => json!({"tokens": tokens, "max_tokens": max}),
            Detail::Score { score, bound } => json!({"score": score, "bound": bound}),
            Detail::Rank { score } => json!({"score": score}),
            Detail::DuplicateOf(q) => json!({"kept": self.question_ref(*q)}),
            Detail::DuplicateOfRow(k) => {
                let mut v = self.question_ref(k.question);
                v["teacher"] = json!(self.teachers.get(k.teacher.0 as usize));
                v["sample"] = json!(k.sample);
                json!({"kept": v})
            }
        };
        json!({
            "row": row,
            "step": self.step_name(r.step),
            "reason": r.reason.as_str(),
            "detail": detail,
        })
    }

    pub fn render_match(&self, m: &Match) -> Value {
        json!({
            "question": self.question_ref(m.question),
            "benchmark": m.bench,
            "item": m.item,
            "method": m.method.as_str(),
            "score": m.score,
            "span": m.span,
        })
    }
}

fn jsonl<'a>(values: impl Iterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        serde_json::to_writer(&mut out, v).expect("json");
        out.push(b'\n');
    }
    out
}

/// The dataset shards one worker owns.
pub struct DatasetShards {
    dirs: OutDirs,
    naming: Naming,
    /// Whether to report each change as a [`SinkEvent::Change`] (for a changelog topic).
    pub report_changes: bool,
    /// shard -> row key -> row
    shards: BTreeMap<u32, BTreeMap<RowKey, Row>>,
}

impl DatasetShards {
    /// Owns the shards `s` with `s % peers == worker`; creates their (empty) files.
    pub fn new(dirs: OutDirs, naming: Naming, shards: u32, worker: usize, peers: usize) -> Self {
        let mut owned = BTreeMap::new();
        for s in (0..shards).filter(|s| *s as usize % peers == worker) {
            let path = shard_file(&dirs, s);
            if !path.exists() {
                let _ = write_atomic(&path, b"");
            }
            owned.insert(s, BTreeMap::new());
        }
        DatasetShards {
            dirs,
            naming,
            report_changes: false,
            shards: owned,
        }
    }

    /// Applies one epoch of row changes; rewrites the shards that changed and writes the
    /// epoch's change fragments. Pushes counts for stats.
    pub fn epoch(
        &mut self,
        epoch: Epoch,
        shard_count: u32,
        updates: Vec<((RowKey, Row), isize)>,
        events: &mut Vec<(SinkEvent, isize)>,
    ) -> std::io::Result<()> {
        let mut stats: Vec<(StatKey, isize)> = Vec::new();
        let mut net: BTreeMap<(RowKey, Row), isize> = BTreeMap::new();
        for (kr, d) in updates {
            *net.entry(kr).or_insert(0) += d;
        }
        net.retain(|_, d| *d != 0);
        // The value of every touched key before this epoch, and its question's presence.
        let mut before: BTreeMap<RowKey, Option<Row>> = BTreeMap::new();
        let mut questions_before: BTreeMap<QuestionId, bool> = BTreeMap::new();
        for (key, _) in net.keys() {
            let rows = self
                .shards
                .entry(shard_of(key.question, shard_count))
                .or_default();
            before.entry(*key).or_insert_with(|| rows.get(key).cloned());
            questions_before
                .entry(key.question)
                .or_insert_with(|| has_question(rows, key.question));
        }
        // Retractions first, then insertions.
        for ((key, row), _) in net.iter().filter(|(_, d)| **d < 0) {
            let rows = self
                .shards
                .get_mut(&shard_of(key.question, shard_count))
                .expect("shard");
            if rows.get(key) == Some(row) {
                rows.remove(key);
            }
        }
        for ((key, row), _) in net.iter().filter(|(_, d)| **d > 0) {
            let rows = self
                .shards
                .get_mut(&shard_of(key.question, shard_count))
                .expect("shard");
            rows.insert(*key, row.clone());
        }
        // Changes, per shard in row-key order.
        let mut changes: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
        for (key, old) in &before {
            let shard = shard_of(key.question, shard_count);
            let new = self.shards[&shard].get(key);
            if old.as_ref() == new {
                continue;
            }
            if let Some(o) = old {
                stats.push((StatKey::Rows(o.question.source, o.question.domain), -1));
            }
            let change = match new {
                Some(n) => {
                    stats.push((StatKey::Rows(n.question.source, n.question.domain), 1));
                    stats.push((StatKey::ChangeUpserts, 1));
                    let row = self.naming.render_row(n);
                    if self.report_changes {
                        events.push((
                            SinkEvent::Change(Change {
                                row_id: row["row_id"].as_str().unwrap_or_default().to_string(),
                                value: Some(row.to_string()),
                            }),
                            1,
                        ));
                    }
                    json!({"op": "upsert", "epoch": epoch, "row": row})
                }
                None => {
                    let o = old.as_ref().expect("changed");
                    stats.push((StatKey::ChangeDeletes, 1));
                    let row_id = self.naming.render_row_id(o);
                    if self.report_changes {
                        events.push((
                            SinkEvent::Change(Change {
                                row_id: row_id.clone(),
                                value: None,
                            }),
                            1,
                        ));
                    }
                    json!({"op": "delete", "epoch": epoch, "row_id": row_id})
                }
            };
            changes.entry(shard).or_default().push(change);
        }
        for (q, was) in questions_before {
            let is = has_question(&self.shards[&shard_of(q, shard_count)], q);
            if was != is {
                stats.push((StatKey::DatasetQuestions, if is { 1 } else { -1 }));
            }
        }
        events.extend(stats.into_iter().map(|(k, d)| (SinkEvent::Stat(k), d)));
        for (shard, lines) in &changes {
            self.write_shard(*shard)?;
            let part = self
                .dirs
                .parts()
                .join(format!("{epoch:08}-{shard:05}.jsonl"));
            write_atomic(&part, &jsonl(lines.iter()))?;
        }
        Ok(())
    }

    fn write_shard(&self, shard: u32) -> std::io::Result<()> {
        let path = shard_file(&self.dirs, shard);
        let tmp = path.with_extension("tmp");
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            for row in self.shards[&shard].values() {
                serde_json::to_writer(&mut w, &self.naming.render_row(row))?;
                w.write_all(b"\n")?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        }
        std::fs::rename(&tmp, &path)
    }
}

fn has_question(rows: &BTreeMap<RowKey, Row>, q: QuestionId) -> bool {
    let start = RowKey {
        question: q,
        ..RowKey::default()
    };
    rows.range(start..)
        .next()
        .is_some_and(|(k, _)| k.question == q)
}

/// Joins the change fragments of `epoch` into `changes/EEEEEEEE.jsonl` (shard order).
pub fn publish_changes(dirs: &OutDirs, epoch: Epoch) -> std::io::Result<bool> {
    let prefix = format!("{epoch:08}-");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dirs.parts())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".jsonl")
            })
        })
        .collect();
    if parts.is_empty() {
        return Ok(false);
    }
    parts.sort();
    let mut all = Vec::new();
    for p in &parts {
        all.extend(std::fs::read(p)?);
    }
    write_atomic(&dirs.changes().join(format!("{epoch:08}.jsonl")), &all)?;
    for p in parts {
        std::fs::remove_file(p)?;
    }
    Ok(true)
}

/// A current-state audit table kept by worker 0 and rewritten per group when it changes.
pub struct AuditTable<T: Ord + Clone> {
    groups: BTreeMap<String, BTreeMap<T, isize>>,
    dir: PathBuf,
}

impl<T: Ord + Clone> AuditTable<T> {
    pub fn new(dir: PathBuf) -> Self {
        AuditTable {
            groups: BTreeMap::new(),
            dir,
        }
    }

    /// Applies diffs (grouped by `group`); rewrites `<dir>/<group>.jsonl` for changed groups.
    pub fn epoch(
        &mut self,
        updates: Vec<(T, isize)>,
        group: impl Fn(&T) -> String,
        render: impl Fn(&T) -> Value,
    ) -> std::io::Result<()> {
        let mut changed = BTreeSet::new();
        for (t, d) in updates {
            let g = group(&t);
            let table = self.groups.entry(g.clone()).or_default();
            let c = table.entry(t.clone()).or_insert(0);
            *c += d;
            if *c == 0 {
                table.remove(&t);
            }
            changed.insert(g);
        }
        for g in changed {
            let table = &self.groups[&g];
            let path = self.dir.join(format!("{g}.jsonl"));
            if table.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let mut out = Vec::new();
            for (t, c) in table {
                let line = render(t);
                for _ in 0..(*c).max(0) {
                    serde_json::to_writer(&mut out, &line).expect("json");
                    out.push(b'\n');
                }
            }
            write_atomic(&path, &out)?;
        }
        Ok(())
    }
}
