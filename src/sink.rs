//! Sinks: the published dataset, its manifest, its per-epoch changes, the audit outputs.
//!
//! ```text
//!  rows --exchange(question id)--> DatasetChanges (per worker: the change partitions it owns)
//!        |  each epoch: apply row diffs, write the epoch's change fragment per partition,
//!        |  report counts (and changelog events) as stats
//!        v
//!  OUT/changes/.parts/EEEEEEEE-PPPPP.jsonl  (worker 0 joins them into OUT/changes/EEEEEEEE.jsonl)
//!
//!  rows --exchange(content-hash shard)--> DatasetFiles (per worker: the shards it owns)
//!        |  each epoch: apply row diffs, render the changed shards (every owned shard in a
//!        |  run's first epoch), write each file whose checksum differs from the manifest's
//!        |  (temp file + rename), write the worker's manifest file (its shards' entries),
//!        |  count rewritten and unchanged shards. Runs on a thread of its own per worker.
//!        v
//!  OUT/dataset/part-SSSSS.jsonl | .parquet   OUT/dataset/.manifest/worker-W-of-P.json
//!                                    (worker 0 joins them into OUT/dataset/manifest.json,
//!                                     after the epoch's shards, before stats.json)
//!  rejections --exchange(last worker)--> OUT/rejections/<step id>.jsonl (current state, per step;
//!                                        written on a thread of its own, beside the shards)
//!  matches    --exchange(0)--> OUT/contamination/matches.jsonl (current state)
//! ```
//!
//! Shards are ranges of the question's content hash ([`shard_of`]), so all rows of a question
//! share a shard and a change to one question rewrites one shard. `[sink] format` picks the
//! files: JSONL, Parquet (the OpenThoughts3 schema: `difficulty` int64, `source`, `domain`,
//! `conversations` list<struct<from, value>>, plus `row_id`, `question_id`, `teacher`,
//! `sample`, `score`), or both, with the same rows in the same order. Files are replaced
//! atomically (written beside, renamed in), so a reader never sees half a shard. Row order
//! within a shard is by row key: the same input gives byte-identical files whatever the number
//! of workers.
//!
//! Durable refresh: the dataset folder survives a rerun on the same OUT (when the manifest's
//! version, shard count and format match the recipe's; otherwise it starts afresh). A run
//! reads the previous `manifest.json`, checks each listed file (size and xxh3-64 checksum),
//! and in its first epoch re-renders every shard but writes only the files whose bytes differ:
//! an unchanged shard keeps its file, inode and mtime, and its manifest entry (`epoch_written`,
//! `run_written`). `stats.json` counts the shards rewritten and unchanged per epoch. Changes
//! (`changes/`, the changelog topic) are relative to the run's start, as before: a rerun's
//! first epoch lists every row as an upsert.
//!
//! A rewrite is spliced: a JSONL shard (and an audit group) remembers where each of its rows'
//! lines is in its file ([`LineIndex`], [`AuditTable`]'s `Held`), and a refresh copies the lines
//! of the rows the epoch did not touch from the file in place and renders only the others, with
//! the same bytes as a full render. Parquet shards are rendered whole.
//!
//! Changes are partitioned by question id ([`change_part_of`]), not by shard: a question whose
//! text changes may move to another shard, and its change must stay one upsert.
//!
//! Texts are joined in here, from the store (DESIGN.md decision 3).

use crate::recipe::{SinkFormat, SinkSpec};
use crate::stats::StatKey;
use crate::store::Store;
use crate::teachers::answer_text;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{
    AnswerText, ContentHash, Detail, Domain, Epoch, Match, QuestionId, Rejection, Row, RowKey,
    SourceId, StepId, Subject,
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
    /// `dataset/manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.dataset().join("manifest.json")
    }
    /// `dataset/.rows/`: per change partition, the rows the last cleanly ended run published
    /// (key, digest, row id), so that a restart logs only what changed since.
    pub fn rows_state(&self) -> PathBuf {
        self.dataset().join(".rows")
    }
    /// `dataset/.manifest/`: one file per worker (`worker-W-of-P.json`): the entries of the
    /// shards it owns and what `stat` said of their files.
    pub fn manifest_parts(&self) -> PathBuf {
        self.dataset().join(".manifest")
    }

    /// Creates the folders for a run of `sink`, removing the outputs of an earlier run except
    /// its dataset, which is kept (for [`DatasetFiles`] to refresh in place) when its manifest
    /// says the same version, shard count and format. Leftover temporary files are removed.
    pub fn prepare(&self, sink: &SinkSpec) -> std::io::Result<()> {
        let keep = read_manifest(&self.manifest()).is_some_and(|m| {
            m.format_version == MANIFEST_VERSION
                && m.shard_count == sink.shards
                && m.shards.len() == sink.shards as usize
                && m.format == sink.format.as_str()
        });
        // The audit folders stay: their tables rewrite only what differs (see [`AuditTable`]).
        let mut remove = vec![self.changes()];
        if !keep {
            remove.push(self.dataset());
        }
        for d in remove {
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
        }
        let _ = std::fs::remove_file(self.stats());
        for d in [
            self.dataset(),
            self.manifest_parts(),
            self.parts(),
            self.rejections(),
            self.contamination(),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        for d in [
            self.dataset(),
            self.manifest_parts(),
            self.rejections(),
            self.contamination(),
        ] {
            for e in std::fs::read_dir(&d)?.filter_map(|e| e.ok()) {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
        Ok(())
    }
}

/// Writes `contents` to `path` atomically: a temporary file beside it, then a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let (tmp, mut w) = temp_writer(path)?;
    w.write_all(contents)?;
    commit_temp(&tmp, w, path)
}

/// Like [`write_atomic`], without syncing: for files rewritten at every run's start (a
/// worker's manifest file), which a crash may leave stale or empty but never half-replaced,
/// and which nothing reads across a crash without checking.
fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let (tmp, mut w) = temp_writer(path)?;
    w.write_all(contents)?;
    w.into_inner().map_err(|e| e.into_error())?;
    std::fs::rename(tmp, path)
}

/// The dataset shard of a question's rows: the range of its content hash, in `shards` equal
/// ranges of the hash's low 64 bits. (Not the high bits: `select` with `mode = "sample"` keeps
/// the smallest hashes, which would crowd the kept questions into the first shards.)
pub fn shard_of(hash: ContentHash, shards: u32) -> u32 {
    (((hash.0 as u64 as u128) * shards as u128) >> 64) as u32
}

/// How many change partitions a dataset of `shards` shards has: as many as shards, up to 64.
/// (Each partition keeps a state file and writes a fragment per epoch: thousands of shards,
/// which make a refresh rewrite fewer bytes, need not make thousands of those.)
pub fn change_parts(shards: u32) -> u32 {
    shards.min(64)
}

/// The change partition of a question (by question id: a question's change fragment does not
/// move when its text, and so its shard, changes).
pub fn change_part_of(question: QuestionId, parts: u32) -> u32 {
    (hash::hash64(&question.0.to_le_bytes()) % parts as u64) as u32
}

/// The name of a shard's file in `dataset/`, for extension `ext` (`jsonl`, `parquet`).
pub fn shard_file_name(shard: u32, ext: &str) -> String {
    format!("part-{shard:05}.{ext}")
}

pub fn shard_file(dirs: &OutDirs, shard: u32) -> PathBuf {
    dirs.dataset().join(shard_file_name(shard, "jsonl"))
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
        self.with_row_out(row, |out| serde_json::to_value(out).expect("a row renders"))
    }

    /// Writes [`Naming::render_row`]'s JSON (the same bytes) without building it as a
    /// `Value`: at the paper's scale the shard writers render 1.2M rows of several KB each.
    pub fn write_row(&self, row: &Row, w: &mut dyn Write) -> std::io::Result<()> {
        self.with_row_out(row, |out| serde_json::to_writer(w, out))
            .map_err(std::io::Error::from)
    }

    /// Calls `f` with a row as published (borrowing the texts it looks up).
    fn with_row_out<R>(&self, row: &Row, f: impl FnOnce(&RowOut) -> R) -> R {
        let q = &row.question;
        let source = self.store.source_name(q.source);
        let id = self.store.question_name(q.id);
        let question = self.store.text(q.text);
        let answer = answer_text(&row.answer, &self.store);
        let has_teacher = !matches!(row.answer.text, AnswerText::None);
        let mut conversations = vec![Turn {
            from: "human",
            value: question.as_deref().unwrap_or(""),
        }];
        if let Some(a) = answer.as_deref() {
            conversations.push(Turn {
                from: "gpt",
                value: a,
            });
        }
        f(&RowOut {
            conversations,
            difficulty: q.difficulty.get(),
            domain: q.domain.as_str(),
            question_id: &id,
            row_id: self.row_id(&row.key, &source, &id, has_teacher),
            sample: row.key.sample,
            score: q.score.get(),
            source: &source,
            teacher: if has_teacher {
                self.teachers
                    .get(row.key.teacher.0 as usize)
                    .map(|t| t.as_str())
            } else {
                None
            },
        })
    }

    /// A question as audit records name it, with `kind`, `sample` and `teacher` when given.
    fn question_out(&self, qid: QuestionId) -> RefOut<'static> {
        match self.store.question_source(qid) {
            Some(source) => RefOut {
                id: Some(Name(self.store.question_name(qid))),
                source: Some(Name(self.store.source_name(source))),
                ..RefOut::default()
            },
            None => RefOut {
                question_id: Some(qid.to_string()),
                ..RefOut::default()
            },
        }
    }

    fn row_ref_out(&self, key: &RowKey) -> RefOut<'static> {
        RefOut {
            sample: Some(key.sample),
            teacher: Some(self.teachers.get(key.teacher.0 as usize).cloned()),
            ..self.question_out(key.question)
        }
    }

    /// A rejection as the audit table publishes it.
    pub fn render_rejection(&self, r: &Rejection) -> Value {
        serde_json::to_value(self.rejection_out(r)).expect("a rejection renders")
    }

    /// Writes [`Naming::render_rejection`]'s JSON (the same bytes) without building it as a
    /// `Value`: at the paper's scale the rejection table holds about 4M records.
    pub fn write_rejection(&self, r: &Rejection, w: &mut dyn Write) -> std::io::Result<()> {
        serde_json::to_writer(w, &self.rejection_out(r)).map_err(std::io::Error::from)
    }

    fn rejection_out<'a>(&self, r: &'a Rejection) -> RejectionOut<'a> {
        let row = match &r.subject {
            Subject::Question(q) => RefOut {
                kind: Some("question"),
                ..self.question_out(*q)
            },
            Subject::Row(k) => RefOut {
                kind: Some("row"),
                ..self.row_ref_out(k)
            },
            Subject::Input { source, location } => RefOut {
                kind: Some("input"),
                location: Some(location),
                source: Some(Name(self.store.source_name(*source))),
                ..RefOut::default()
            },
        };
        let detail = match &r.detail {
            Detail::None => None,
            Detail::Text(t) => Some(DetailOut {
                message: Some(t),
                ..DetailOut::default()
            }),
            Detail::Contamination(c) => Some(DetailOut {
                benchmark: Some(&c.bench),
                item: Some(&c.item),
                ..DetailOut::default()
            }),
            Detail::Tokens { tokens, max } => Some(DetailOut {
                tokens: Some(*tokens),
                max_tokens: Some(*max),
                ..DetailOut::default()
            }),
            Detail::Score { score, bound } => Some(DetailOut {
                score: Some(*score),
                bound: Some(*bound),
                ..DetailOut::default()
            }),
            Detail::Rank { score } => Some(DetailOut {
                score: Some(*score),
                ..DetailOut::default()
            }),
            Detail::DuplicateOf(q) => Some(DetailOut {
                kept: Some(self.question_out(*q)),
                ..DetailOut::default()
            }),
            Detail::DuplicateOfRow(k) => Some(DetailOut {
                kept: Some(self.row_ref_out(k)),
                ..DetailOut::default()
            }),
        };
        RejectionOut {
            detail,
            reason: r.reason.as_str(),
            row,
            step: self.step_name(r.step),
        }
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

    /// [`Naming::step_name`] for a sink that names every record it gets: the names are made
    /// once, and each call hands out a shared one.
    pub fn step_namer(&self) -> impl Fn(StepId) -> Arc<str> + 'static {
        let ingest: Arc<str> = Arc::from(self.step_name(StepId::INGEST));
        let named: Vec<Arc<str>> = (0..self.steps.len())
            .map(|i| Arc::from(self.step_name(StepId(i as u16))))
            .collect();
        move |step| {
            if step == StepId::INGEST {
                Arc::clone(&ingest)
            } else {
                match named.get(step.0 as usize) {
                    Some(n) => Arc::clone(n),
                    None => Arc::from(format!("step{}", step.0)),
                }
            }
        }
    }

    /// A digest of the names rendering uses besides the store's (steps, teachers): audit
    /// files rendered under another digest are rewritten.
    pub fn context_digest(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for names in [&self.steps, &self.teachers] {
            h.update(&(names.len() as u64).to_le_bytes());
            for n in names.iter() {
                h.update(&(n.len() as u64).to_le_bytes());
                h.update(n.as_bytes());
            }
        }
        h.digest128()
    }

    pub fn render_match(&self, m: &Match) -> Value {
        json!({
            "question": self.question_out(m.question),
            "benchmark": m.bench,
            "item": m.item,
            "method": m.method.as_str(),
            "score": m.score,
            "span": m.span,
        })
    }
}

// The published records' shapes, defined once: written straight to JSON (the sinks), or
// converted to a `Value` (Parquet, the change log). A `Value` object writes its keys sorted,
// so each struct declares its fields in that order, and both give the same bytes; an absent
// field is skipped where there is no key (a `null` one is `Some(None)`).

#[derive(serde::Serialize)]
struct Turn<'a> {
    from: &'static str,
    value: &'a str,
}

#[derive(serde::Serialize)]
struct RowOut<'a> {
    conversations: Vec<Turn<'a>>,
    difficulty: Option<i64>,
    domain: &'static str,
    question_id: &'a str,
    row_id: String,
    sample: u16,
    score: Option<i64>,
    source: &'a str,
    teacher: Option<&'a str>,
}

/// A name from the store, written as a JSON string.
struct Name(Arc<str>);

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(serde::Serialize, Default)]
struct RefOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    question_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    teacher: Option<Option<String>>,
}

#[derive(serde::Serialize, Default)]
struct DetailOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    benchmark: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bound: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<RefOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<u32>,
}

#[derive(serde::Serialize)]
struct RejectionOut<'a> {
    detail: Option<DetailOut<'a>>,
    reason: &'static str,
    row: RefOut<'a>,
    step: String,
}

/// A writer that hashes (xxh3-64) and counts what it writes.
struct Hashing<W: Write> {
    inner: W,
    hasher: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file written under a temporary name (`NAME.tmp`), renamed into place by its owner.
fn temp_writer(path: &Path) -> std::io::Result<(PathBuf, std::io::BufWriter<std::fs::File>)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = std::fs::File::create(&tmp)?;
    // 64 KiB: a buffer the allocator reuses. (A 1 MiB one is a fresh mapping for every file,
    // zeroed page by page: a refresh of 456 of 4096 shards spent a third of its time there.)
    Ok((tmp, std::io::BufWriter::with_capacity(64 << 10, f)))
}

/// Starts writing a file's dirty pages to disk without waiting (Linux `sync_file_range`;
/// nothing elsewhere). The `fdatasync` that follows then mostly finds them written: a refresh
/// that writes hundreds of shards starts their writeback one by one and waits once per shard
/// at the end, instead of waiting for each disk write in turn.
fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Flushes and syncs a file from [`temp_writer`] and renames it to `path`.
fn commit_temp(
    tmp: &Path,
    w: std::io::BufWriter<std::fs::File>,
    path: &Path,
) -> std::io::Result<()> {
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_data()?;
    std::fs::rename(tmp, path)
}

/// An epoch's change fragments, one file per change partition, streamed line by line (an
/// epoch that publishes a whole dataset never holds it in memory).
struct Fragments {
    dir: PathBuf,
    epoch: Epoch,
    open: BTreeMap<u32, (PathBuf, std::io::BufWriter<std::fs::File>)>,
    /// Whether to write at all (`[sink] changes`).
    write: bool,
}

impl Fragments {
    fn new(dir: PathBuf, epoch: Epoch, write: bool) -> Self {
        Fragments {
            dir,
            epoch,
            open: BTreeMap::new(),
            write,
        }
    }

    fn path(&self, part: u32) -> PathBuf {
        self.dir.join(format!("{:08}-{part:05}.jsonl", self.epoch))
    }

    fn push(&mut self, part: u32, change: &Value) -> std::io::Result<()> {
        if !self.write {
            return Ok(());
        }
        if !self.open.contains_key(&part) {
            let w = temp_writer(&self.path(part))?;
            self.open.insert(part, w);
        }
        let (_, w) = self.open.get_mut(&part).expect("opened");
        serde_json::to_writer(&mut *w, change)?;
        w.write_all(b"\n")
    }

    /// Syncs and renames every fragment into place.
    fn finish(self) -> std::io::Result<()> {
        let paths: Vec<PathBuf> = self.open.keys().map(|p| self.path(*p)).collect();
        for ((tmp, w), path) in self.open.into_values().zip(paths) {
            commit_temp(&tmp, w, &path)?;
        }
        Ok(())
    }
}

/// Consolidates `updates` in place into the order (bucket, data), `bucket(d) < buckets`, and
/// returns each non-empty bucket with its length, in order: diffs of equal data summed, zeros
/// dropped.
///
/// An epoch's rows are put in their buckets by one in-place counting sort (each moved about
/// once), then each bucket is sorted on its own: small sorts that stay in cache, where one sort
/// of a first epoch's 600k rows per worker moves each row some twenty times through memory.
fn consolidate_buckets<D: Ord>(
    updates: &mut Vec<(D, isize)>,
    buckets: usize,
    bucket: impl Fn(&D) -> usize,
) -> Vec<(usize, usize)> {
    let mut ids: Vec<u32> = updates.iter().map(|(d, _)| bucket(d) as u32).collect();
    let mut starts = vec![0usize; buckets + 1];
    for b in &ids {
        starts[*b as usize + 1] += 1;
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    // American flag sort: each slot takes the element that belongs there.
    let mut next = starts.clone();
    for b in 0..buckets {
        while next[b] < starts[b + 1] {
            let i = next[b];
            let home = ids[i] as usize;
            if home == b {
                next[b] += 1;
            } else {
                let j = next[home];
                updates.swap(i, j);
                ids.swap(i, j);
                next[home] += 1;
            }
        }
    }
    drop(ids);
    let mut out = Vec::new();
    let mut write = 0;
    for b in 0..buckets {
        let (from, to) = (starts[b], starts[b + 1]);
        if from == to {
            continue;
        }
        let kept = differential_dataflow::consolidation::consolidate_slice(&mut updates[from..to]);
        for k in 0..kept {
            updates.swap(write + k, from + k);
        }
        write += kept;
        if kept > 0 {
            out.push((b, kept));
        }
    }
    updates.truncate(write);
    out
}

/// Counts summed per key as they are pushed: an epoch's counts go out as one update per key,
/// not one per row (1.2M rows at the paper's scale, two or three counts each).
#[derive(Default)]
struct StatTally(BTreeMap<StatKey, isize>);

impl StatTally {
    fn push(&mut self, (key, d): (StatKey, isize)) {
        match self.0.get_mut(&key) {
            Some(n) => *n += d,
            None => {
                self.0.insert(key, d);
            }
        }
    }

    fn into_iter(self) -> impl Iterator<Item = (StatKey, isize)> {
        self.0.into_iter().filter(|(_, d)| *d != 0)
    }
}

/// The dataset's changes, for the change partitions one worker owns (by question id).
pub struct DatasetChanges {
    dirs: OutDirs,
    naming: Naming,
    /// Whether to report each change as a [`SinkEvent::Change`] (for a changelog topic).
    pub report_changes: bool,
    /// What to write to `changes/`.
    pub log: crate::recipe::ChangeLog,
    /// partition -> row key -> what the change log needs of the row (not the row: at the
    /// paper's scale, 1.2M rows, whole rows here and in the epoch's bookkeeping took 1.4 GB)
    shards: BTreeMap<u32, BTreeMap<RowKey, RowMeta>>,
    /// Whether the run's first epoch has been handled.
    started: bool,
}

/// What a cleanly ended run leaves per change partition: every row's key, digest and id.
#[derive(serde::Serialize, serde::Deserialize)]
struct RowsState {
    version: String,
    parts: u32,
    rows: Vec<(RowKey, u64, String)>,
}

/// [`RowsState`] as read: the ids borrowed from the file's bytes (bincode writes a `String`
/// and a `&str` alike), so that a restart does not allocate 1.2M of them to find that none
/// was deleted.
#[derive(serde::Deserialize)]
struct RowsStateRef<'a> {
    #[serde(borrow)]
    version: &'a str,
    parts: u32,
    #[serde(borrow)]
    rows: Vec<(RowKey, u64, &'a str)>,
}

/// The row state's version: rows render differently across versions.
fn state_version() -> String {
    format!("{RENDER_VERSION}/{}", env!("CARGO_PKG_VERSION"))
}

fn row_digest(row: &Row) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    hash_serialized(&mut h, row);
    h.digest()
}

/// Feeds `value`'s bincode bytes to `h` in one update, serialized into a buffer the thread
/// reuses: no allocation per value, and not one update call per field of a few bytes. (The
/// same digest as hashing `bincode::serialize(value)`: XXH3's streaming digest does not depend
/// on how the bytes are cut.)
fn hash_serialized<V: serde::Serialize>(h: &mut xxhash_rust::xxh3::Xxh3, value: &V) {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        bincode::serialize_into(&mut *buf, value).expect("rows serialize");
        h.update(&buf);
    });
}

/// What the change log keeps of a published row: whether it changed (its digest), what it
/// counts under, and what names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowMeta {
    digest: u64,
    source: SourceId,
    domain: Domain,
    has_teacher: bool,
}

impl RowMeta {
    fn of(row: &Row) -> RowMeta {
        RowMeta {
            digest: row_digest(row),
            source: row.question.source,
            domain: row.question.domain,
            has_teacher: !matches!(row.answer.text, AnswerText::None),
        }
    }
}

impl Naming {
    /// A kept row's id (as [`Naming::render_row_id`] names the row).
    fn meta_row_id(&self, key: &RowKey, meta: &RowMeta) -> String {
        let source = self.store.source_name(meta.source);
        let id = self.store.question_name(key.question);
        self.row_id(key, &source, &id, meta.has_teacher)
    }
}

impl DatasetChanges {
    fn state_file(&self, part: u32) -> PathBuf {
        self.dirs.rows_state().join(format!("part-{part:05}.bin"))
    }

    /// Writes, for each owned partition, the rows it holds now: called when a run ends
    /// cleanly (every epoch it handled published), so that the next run's first epoch logs
    /// only the rows that differ.
    pub fn save_state(&self, parts: u32) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dirs.rows_state())?;
        for (part, rows) in &self.shards {
            let state = RowsState {
                version: state_version(),
                parts,
                rows: rows
                    .iter()
                    .map(|(k, m)| (*k, m.digest, self.naming.meta_row_id(k, m)))
                    .collect(),
            };
            write_atomic(
                &self.state_file(*part),
                &bincode::serialize(&state).expect("state serializes"),
            )?;
        }
        Ok(())
    }

    /// The previous run's state file of `part`, removed as it is read: a run that does not
    /// end cleanly leaves none, and the run after it logs its whole first epoch.
    fn take_state_bytes(&self, part: u32) -> Option<Vec<u8>> {
        let path = self.state_file(part);
        let bytes = std::fs::read(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        Some(bytes)
    }

    /// The previous run's rows of every owned partition, as read from the state files
    /// ([`DatasetChanges::take_state_bytes`]), sorted by key, ids borrowed from the bytes;
    /// none with a changelog topic, which reconciles with the topic's content instead.
    fn previous_states<'b>(
        &self,
        files: &'b [(u32, Vec<u8>)],
        shard_count: u32,
    ) -> BTreeMap<u32, Vec<(RowKey, u64, &'b str)>> {
        let version = state_version();
        files
            .iter()
            .filter_map(|(part, bytes)| {
                let state: RowsStateRef<'b> = bincode::deserialize(bytes).ok()?;
                if state.version != version || state.parts != shard_count {
                    return None;
                }
                let mut rows = state.rows;
                if !rows.is_sorted_by_key(|r| r.0) {
                    rows.sort_unstable_by_key(|r| r.0);
                }
                Some((*part, rows))
            })
            .collect()
    }

    fn state_files(&self) -> Vec<(u32, Vec<u8>)> {
        if self.report_changes {
            return Vec::new();
        }
        self.shards
            .keys()
            .filter_map(|part| Some((*part, self.take_state_bytes(*part)?)))
            .collect()
    }

    /// The previous run's rows of every owned partition, by key (see
    /// [`DatasetChanges::previous_states`]).
    fn previous_rows(&self, shard_count: u32) -> BTreeMap<u32, BTreeMap<RowKey, (u64, String)>> {
        let files = self.state_files();
        self.previous_states(&files, shard_count)
            .into_iter()
            .map(|(part, rows)| {
                let rows = rows
                    .into_iter()
                    .map(|(k, d, id)| (k, (d, id.to_string())))
                    .collect();
                (part, rows)
            })
            .collect()
    }

    /// The change log entry of an upserted row (and its changelog event).
    fn upsert_change(
        &self,
        epoch: Epoch,
        row: &Row,
        events: &mut Vec<(SinkEvent, isize)>,
    ) -> serde_json::Value {
        let row = self.naming.render_row(row);
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

    /// [`DatasetChanges::epoch`] for a run's first epoch when it only inserts (a build, a
    /// restart's replay): the same changes and counts, without the bookkeeping of keys before
    /// and after. `net` is consolidated in (partition, key) order, in `runs` (partition,
    /// length); each partition's rows are walked beside the previous run's (both sorted) and
    /// its map is built in one go (full B-tree nodes: inserting ascending keys one by one
    /// leaves them about half full).
    fn first_epoch(
        &mut self,
        epoch: Epoch,
        shard_count: u32,
        net: Vec<((RowKey, Row), isize)>,
        runs: Vec<(usize, usize)>,
        events: &mut Vec<(SinkEvent, isize)>,
    ) -> std::io::Result<()> {
        let mut stats = StatTally::default();
        let files = self.state_files();
        let mut previous = self.previous_states(&files, shard_count);
        let write = match self.log {
            crate::recipe::ChangeLog::All => true,
            crate::recipe::ChangeLog::Updates => !previous.is_empty(),
            crate::recipe::ChangeLog::None => false,
        };
        self.started = true;
        let mut changes = Fragments::new(self.dirs.parts(), epoch, write);
        let mut deleted: Vec<(u32, RowKey, &str)> = Vec::new();
        let mut last_question = None;
        let mut net = net.into_iter();
        for (part, len) in runs {
            let part = part as u32;
            let mut metas: Vec<(RowKey, RowMeta)> = Vec::with_capacity(len);
            let mut before = previous
                .remove(&part)
                .unwrap_or_default()
                .into_iter()
                .peekable();
            for ((key, row), _) in net.by_ref().take(len) {
                let meta = RowMeta::of(&row);
                metas.push((key, meta));
                if last_question != Some(key.question) {
                    stats.push((StatKey::DatasetQuestions, 1));
                    last_question = Some(key.question);
                }
                stats.push((StatKey::Rows(meta.source, meta.domain), 1));
                let mut published = None;
                while let Some((k, d, id)) = before.next_if(|(k, _, _)| *k <= key) {
                    if k == key {
                        published = Some(d);
                    } else {
                        deleted.push((part, k, id));
                    }
                }
                if published == Some(meta.digest) {
                    // Published as it is by the previous run: nothing to log.
                    continue;
                }
                stats.push((StatKey::ChangeUpserts, 1));
                if !write && !self.report_changes {
                    continue;
                }
                let change = self.upsert_change(epoch, &row, events);
                changes.push(part, &change)?;
            }
            deleted.extend(before.map(|(k, _, id)| (part, k, id)));
            self.shards.insert(part, metas.into_iter().collect());
        }
        for (part, rows) in previous {
            deleted.extend(rows.into_iter().map(|(k, _, id)| (part, k, id)));
        }
        deleted.sort_unstable_by_key(|(part, k, _)| (*part, *k));
        for (part, _, row_id) in deleted {
            stats.push((StatKey::ChangeDeletes, 1));
            changes.push(
                part,
                &json!({"op": "delete", "epoch": epoch, "row_id": row_id}),
            )?;
        }
        events.extend(stats.into_iter().map(|(k, d)| (SinkEvent::Stat(k), d)));
        changes.finish()
    }

    /// Rows the previous run published that this run does not have: deleted.
    fn log_deleted(
        &self,
        epoch: Epoch,
        previous: BTreeMap<u32, BTreeMap<RowKey, (u64, String)>>,
        stats: &mut StatTally,
        changes: &mut Fragments,
    ) -> std::io::Result<()> {
        for (shard, rows) in previous {
            for (_, (_, row_id)) in rows {
                stats.push((StatKey::ChangeDeletes, 1));
                changes.push(
                    shard,
                    &json!({"op": "delete", "epoch": epoch, "row_id": row_id}),
                )?;
            }
        }
        Ok(())
    }

    /// Owns the partitions `p` with `p % peers == worker`.
    pub fn new(dirs: OutDirs, naming: Naming, parts: u32, worker: usize, peers: usize) -> Self {
        let owned = (0..parts)
            .filter(|p| *p as usize % peers == worker)
            .map(|p| (p, BTreeMap::new()))
            .collect();
        DatasetChanges {
            dirs,
            naming,
            report_changes: false,
            log: crate::recipe::ChangeLog::All,
            shards: owned,
            started: false,
        }
    }

    /// Applies one epoch of row changes and writes the epoch's change fragments. Pushes
    /// counts for stats (and changes, for a changelog).
    pub fn epoch(
        &mut self,
        epoch: Epoch,
        shard_count: u32,
        mut net: Vec<((RowKey, Row), isize)>,
        events: &mut Vec<(SinkEvent, isize)>,
    ) -> std::io::Result<()> {
        let mut stats = StatTally::default();
        // Consolidated in place, in (partition, row key) order, not copied.
        let runs = consolidate_buckets(&mut net, shard_count as usize, |(k, _)| {
            change_part_of(k.question, shard_count) as usize
        });
        if !self.started
            && net.iter().all(|(_, d)| *d > 0)
            && self.shards.values().all(|rows| rows.is_empty())
        {
            return self.first_epoch(epoch, shard_count, net, runs, events);
        }
        // The value of every touched key before this epoch, and its question's presence.
        let mut before: BTreeMap<RowKey, Option<RowMeta>> = BTreeMap::new();
        let mut questions_before: BTreeMap<QuestionId, bool> = BTreeMap::new();
        for ((key, _), _) in &net {
            let rows = self
                .shards
                .entry(change_part_of(key.question, shard_count))
                .or_default();
            before.entry(*key).or_insert_with(|| rows.get(key).copied());
            questions_before
                .entry(key.question)
                .or_insert_with(|| has_question(rows, key.question));
        }
        // Retractions first, then insertions.
        for ((key, row), _) in net.iter().filter(|(_, d)| *d < 0) {
            let rows = self
                .shards
                .get_mut(&change_part_of(key.question, shard_count))
                .expect("shard");
            if rows.get(key).map(|m| m.digest) == Some(row_digest(row)) {
                rows.remove(key);
            }
        }
        // The rows this epoch inserts, by key (for rendering them).
        let mut inserted: BTreeMap<RowKey, &Row> = BTreeMap::new();
        for ((key, row), _) in net.iter().filter(|(_, d)| *d > 0) {
            let rows = self
                .shards
                .get_mut(&change_part_of(key.question, shard_count))
                .expect("shard");
            rows.insert(*key, RowMeta::of(row));
            inserted.insert(*key, row);
        }
        // A restart's first epoch: the rows the previous run published, per owned partition
        // (not with a changelog topic, which reconciles with the topic's content instead).
        let mut previous = if self.started {
            BTreeMap::new()
        } else {
            self.previous_rows(shard_count)
        };
        let restart = !previous.is_empty();
        let write = match self.log {
            crate::recipe::ChangeLog::All => true,
            crate::recipe::ChangeLog::Updates => self.started || restart,
            crate::recipe::ChangeLog::None => false,
        };
        self.started = true;
        // Changes, per shard in row-key order, streamed to the shard's fragment file.
        let mut changes = Fragments::new(self.dirs.parts(), epoch, write);
        for (key, old) in &before {
            let shard = change_part_of(key.question, shard_count);
            let new = self.shards[&shard].get(key);
            if old.as_ref() == new {
                continue;
            }
            if let Some(o) = old {
                stats.push((StatKey::Rows(o.source, o.domain), -1));
            }
            let published = previous
                .get_mut(&shard)
                .and_then(|p| p.remove(key))
                .map(|(d, _)| d);
            if let (Some(n), Some(d)) = (new, published) {
                if n.digest == d {
                    // Published as it is by the previous run: nothing to log.
                    stats.push((StatKey::Rows(n.source, n.domain), 1));
                    continue;
                }
            }
            let change = match new {
                Some(n) => {
                    stats.push((StatKey::Rows(n.source, n.domain), 1));
                    stats.push((StatKey::ChangeUpserts, 1));
                    if !write && !self.report_changes {
                        // Counted, not logged: nothing to render.
                        continue;
                    }
                    self.upsert_change(epoch, inserted[key], events)
                }
                None => {
                    let o = old.as_ref().expect("changed");
                    stats.push((StatKey::ChangeDeletes, 1));
                    let row_id = self.naming.meta_row_id(key, o);
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
            changes.push(shard, &change)?;
        }
        self.log_deleted(epoch, previous, &mut stats, &mut changes)?;
        for (q, was) in questions_before {
            let is = has_question(&self.shards[&change_part_of(q, shard_count)], q);
            if was != is {
                stats.push((StatKey::DatasetQuestions, if is { 1 } else { -1 }));
            }
        }
        events.extend(stats.into_iter().map(|(k, d)| (SinkEvent::Stat(k), d)));
        changes.finish()
    }
}

fn has_question(rows: &BTreeMap<RowKey, RowMeta>, q: QuestionId) -> bool {
    let start = RowKey {
        question: q,
        ..RowKey::default()
    };
    rows.range(start..)
        .next()
        .is_some_and(|(k, _)| k.question == q)
}

/// The manifest's format version.
pub const MANIFEST_VERSION: u64 = 1;

/// One file of a shard, as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Relative to `dataset/`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// xxh3-64 of the file's bytes, 16 hex digits.
    pub checksum: String,
}

/// One shard, as the manifest lists it (and as its owner's file in `dataset/.manifest/` holds
/// it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardEntry {
    pub shard: u32,
    pub files: Vec<FileEntry>,
    /// The epoch (of run `run_written`) that last wrote a file of the shard.
    pub epoch_written: Epoch,
    pub run_written: u64,
    /// xxh3-64 of the shard's rows as the dataflow holds them (ids, hashes, numbers: see
    /// [`rows_digest`]), with the rendering's version: when a restart rebuilds the same rows,
    /// the shard is kept without rendering a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_digest: Option<String>,
}

/// Bumped when the rendering of rows into files changes (a digest from an older version then
/// never matches, so its shards are rendered again).
const RENDER_VERSION: &str = "1";

/// The digest of a shard's rows (in key order) for `format`: equal digests render to equal
/// files, since rows carry every id, hash and number their rendering reads and the texts are
/// content-addressed.
pub fn rows_digest<'a>(rows: impl Iterator<Item = &'a Row>, format: SinkFormat) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(RENDER_VERSION.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(format.as_str().as_bytes());
    for r in rows {
        hash_serialized(&mut h, r);
    }
    format!("{:016x}", h.digest())
}

/// `dataset/manifest.json`: what the dataset's files hold, written last after each epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format_version: u64,
    /// Runs on this output folder that kept its dataset: 1, 2, ...
    pub run: u64,
    /// The run's epoch this manifest describes.
    pub epoch: Epoch,
    /// `jsonl`, `parquet` or `both`.
    pub format: String,
    pub shard_count: u32,
    pub shards: Vec<ShardEntry>,
    pub total_rows: u64,
}

/// Reads a manifest; `None` when it is missing or unreadable.
pub fn read_manifest(path: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// xxh3-64 of bytes, as the manifest writes it.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// What `stat` said of a shard file when this process last wrote or checksummed it. While it
/// still says so (size, modification and change times to the nanosecond, inode), the file is
/// the one checksummed: any write, replacement or `touch` changes the change time. Kept in
/// the owner's `dataset/.manifest/worker-W-of-P.json`, never in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileStat {
    path: String,
    checksum: String,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

fn file_stat(dir: &Path, file: &FileEntry) -> Option<FileStat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join(&file.path)).ok()?;
    Some(FileStat {
        path: file.path.clone(),
        checksum: file.checksum.clone(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        ino: m.ino(),
    })
}

/// What one worker of a run with `peers` workers publishes of its shards:
/// `dataset/.manifest/worker-W-of-P.json`. Worker 0 joins these into `manifest.json`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct WorkerManifest {
    /// The entries of the shards the worker owns.
    entries: Vec<ShardEntry>,
    /// shard -> what `stat` says of its files (for the next run's [`verify`]).
    stats: BTreeMap<u32, Vec<FileStat>>,
}

fn worker_manifest_name(worker: usize, peers: usize) -> String {
    format!("worker-{worker}-of-{peers}.json")
}

/// The `stat` records of every worker file in `dataset/.manifest/` (of any worker count: a
/// record that still matches its file is right whichever run wrote it), by shard.
fn known_stats(dirs: &OutDirs) -> BTreeMap<u32, Vec<FileStat>> {
    let mut known: BTreeMap<u32, Vec<FileStat>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(dirs.manifest_parts()) else {
        return known;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("worker-") && name.ends_with(".json")) {
            continue;
        }
        let Some(m) = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<WorkerManifest>(&b).ok())
        else {
            continue;
        };
        for (shard, stats) in m.stats {
            known.entry(shard).or_default().extend(stats);
        }
    }
    known
}

/// Whether every file of `entry` is on disk with its size and checksum: by `stat` when the
/// file is as this process last saw it (`known`), else by reading it.
fn verify(dirs: &OutDirs, entry: &ShardEntry, known: &[FileStat]) -> bool {
    let dir = dirs.dataset();
    entry.files.iter().all(|f| {
        let now = file_stat(&dir, f);
        if now.as_ref().is_some_and(|n| known.contains(n)) {
            return true;
        }
        now.is_some_and(|n| n.len == f.bytes)
            && std::fs::read(dir.join(&f.path)).is_ok_and(|b| checksum(&b) == f.checksum)
    })
}

/// A shard whose new files are written but not yet in place.
struct Uncommitted {
    entry: ShardEntry,
    /// (temporary file, its descriptor, the file's name) per file written.
    files: Vec<(PathBuf, std::fs::File, PathBuf)>,
    /// The JSONL file being replaced, open until its successor is in place.
    replaced: Option<std::fs::File>,
}

/// Shards at most waiting to be committed at once (each holds up to three descriptors).
const UNCOMMITTED_MAX: usize = 64;

/// The dataset shards one worker owns: their rows, files and manifest entries.
pub struct DatasetFiles {
    dirs: OutDirs,
    naming: Naming,
    format: SinkFormat,
    shard_count: u32,
    /// This run's number (the previous manifest's + 1).
    run: u64,
    /// Whether the run's first epoch has been handled.
    started: bool,
    /// shard -> row key -> row
    shards: BTreeMap<u32, BTreeMap<RowKey, Row>>,
    /// shard -> what its files hold now (the previous run's verified entry, or as written).
    entries: BTreeMap<u32, ShardEntry>,
    /// shard -> where each row's line is in its JSONL file (JSONL-only datasets): a refresh
    /// copies the lines of the rows an epoch did not touch instead of rendering them again.
    lines: BTreeMap<u32, LineIndex>,
    /// Shards whose JSONL file holds exactly their rows (verified at the run's start) but has
    /// no [`LineIndex`] yet: it is built from the file when an epoch first touches the shard.
    unindexed: BTreeSet<u32>,
    /// Rows whose lines were copied from the file in place rather than rendered (this run).
    pub spliced: u64,
    /// Rows whose lines were rendered (this run).
    pub rendered: u64,
    /// shard -> what `stat` said of its files when this run wrote or verified them.
    stats: BTreeMap<u32, Vec<FileStat>>,
    /// Whether an entry changed since this worker's manifest file was last written.
    unpublished: bool,
    /// Shard files written under their temporary names, their writeback started, to be synced
    /// and renamed into place (see [`DatasetFiles::commit`]).
    uncommitted: Vec<Uncommitted>,
    worker: usize,
    peers: usize,
}

/// Where each row of a shard's JSONL file is: (row key, byte offset, line length with its
/// newline), in the file's order (by row key).
type LineIndex = Vec<(RowKey, u64, u32)>;

/// Builds a [`LineIndex`] for a JSONL file that holds `keys`' rows, one line each in order;
/// `None` if its line count differs.
fn index_lines<'a>(
    path: &Path,
    keys: impl ExactSizeIterator<Item = &'a RowKey>,
) -> std::io::Result<Option<LineIndex>> {
    let (ends, base) = line_ends(path)?;
    if ends.len() != keys.len() || ends.last().copied().unwrap_or(0) != base {
        return Ok(None);
    }
    let mut start = 0;
    Ok(Some(
        keys.zip(ends)
            .map(|(k, end)| {
                let line = (*k, start, (end - start) as u32);
                start = end;
                line
            })
            .collect(),
    ))
}

/// The offsets just past each newline of a file, and its length (read in chunks: an audit
/// group's file can be a gigabyte).
fn line_ends(path: &Path) -> std::io::Result<(Vec<u64>, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut ends = Vec::new();
    // No bigger than the file: a dataset shard is a megabyte or two, and there are thousands.
    let size = file.metadata()?.len().saturating_add(1).min(8 << 20);
    let mut buf = vec![0u8; size as usize];
    let mut base = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ends.extend(memchr::memchr_iter(b'\n', &buf[..n]).map(|i| base + i as u64 + 1));
        base += n as u64;
    }
    Ok((ends, base))
}

/// Where a [`LineWriter`] writes: any writer (copies are read into memory and written), or a
/// buffered file (copies are made by the kernel, file to file, without passing through
/// memory: `copy_file_range`).
enum LinesOut<'a> {
    Any(&'a mut dyn Write),
    File(&'a mut std::io::BufWriter<std::fs::File>),
}

impl LinesOut<'_> {
    fn out(&mut self) -> &mut dyn Write {
        match self {
            LinesOut::Any(w) => *w,
            LinesOut::File(w) => *w,
        }
    }
}

/// Writes a file line by line, each line either copied from the file it replaces (the line
/// has not changed) or rendered; adjacent copies are joined into one. Knows where each
/// line lands in the new file.
struct LineWriter<'a> {
    out: LinesOut<'a>,
    /// The file being replaced, when its lines can be copied.
    from: Option<std::fs::File>,
    /// A run of bytes of `from` still to copy.
    pending: Option<(u64, u64)>,
    buf: Vec<u8>,
    /// Bytes written so far, pending copies included.
    pos: u64,
}

impl<'a> LineWriter<'a> {
    /// Bytes read at most at once (copies through memory).
    const MAX_READ: u64 = 8 << 20;

    fn new(out: &'a mut dyn Write, from: Option<std::fs::File>) -> Self {
        Self::to(LinesOut::Any(out), from)
    }

    /// A writer into a file whose unchanged lines the kernel copies.
    fn to_file(
        out: &'a mut std::io::BufWriter<std::fs::File>,
        from: Option<std::fs::File>,
    ) -> Self {
        Self::to(LinesOut::File(out), from)
    }

    fn to(out: LinesOut<'a>, from: Option<std::fs::File>) -> Self {
        LineWriter {
            out,
            from,
            pending: None,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Whether lines can be copied.
    fn copies(&self) -> bool {
        self.from.is_some()
    }

    /// Copies `len` bytes at `offset` of the replaced file; returns where they land.
    fn copy(&mut self, offset: u64, len: u32) -> std::io::Result<u64> {
        let end = offset + len as u64;
        let limit = match self.out {
            LinesOut::Any(_) => Self::MAX_READ,
            LinesOut::File(_) => u64::MAX,
        };
        match &mut self.pending {
            Some((start, pend)) if *pend == offset && end - *start <= limit => *pend = end,
            _ => {
                self.flush()?;
                self.pending = Some((offset, end));
            }
        }
        let at = self.pos;
        self.pos += len as u64;
        Ok(at)
    }

    /// Writes `line` (with its newline) `times` times; returns where they land and their length.
    fn write(&mut self, line: &[u8], times: usize) -> std::io::Result<(u64, u32)> {
        self.flush()?;
        for _ in 0..times {
            self.out.out().write_all(line)?;
        }
        let (at, len) = (self.pos, (line.len() * times) as u64);
        self.pos += len;
        Ok((at, len as u32))
    }

    /// Writes one line that `f` renders (without its newline); returns where it lands and its
    /// length.
    fn render(
        &mut self,
        f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<(u64, u32)> {
        struct Counted<'w>(&'w mut dyn Write, u64);
        impl Write for Counted<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.0.write(buf)?;
                self.1 += n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        self.flush()?;
        let mut out = Counted(self.out.out(), 0);
        f(&mut out)?;
        out.write_all(b"\n")?;
        let (at, len) = (self.pos, out.1);
        self.pos += len;
        Ok((at, len as u32))
    }

    /// Writes the pending copy.
    fn flush(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (Some((start, end)), Some(from)) = (self.pending.take(), &self.from) else {
            return Ok(());
        };
        match &mut self.out {
            LinesOut::Any(out) => {
                self.buf.resize((end - start) as usize, 0);
                from.read_exact_at(&mut self.buf, start)?;
                out.write_all(&self.buf)
            }
            LinesOut::File(out) => {
                out.flush()?;
                copy_range(from, start, end - start, out.get_mut())
            }
        }
    }

    /// Starts the writeback of what is written so far (a file output only; see
    /// [`start_writeback`]).
    fn start_writeback(&mut self) -> std::io::Result<()> {
        self.flush()?;
        if let LinesOut::File(w) = &mut self.out {
            w.flush()?;
            start_writeback(w.get_ref());
        }
        Ok(())
    }

    /// Starts the writeback every 64 MiB (`synced_to`: where it last started), so that the
    /// sync at the end waits for the last part only.
    fn writeback_every_64_mib(&mut self, synced_to: &mut u64) -> std::io::Result<()> {
        if self.pos >= *synced_to + (64 << 20) {
            self.start_writeback()?;
            *synced_to = self.pos;
        }
        Ok(())
    }

    /// Hands back the replaced file, still open: closing the last descriptor of a file
    /// already replaced (renamed over) frees its pages, which [`close_later`] does on
    /// another thread.
    fn into_from(mut self) -> std::io::Result<Option<std::fs::File>> {
        self.flush()?;
        Ok(self.from.take())
    }
}

/// Appends `len` bytes of `from` at `offset` to `to` (at its position). On Linux the kernel
/// copies them (`copy_file_range`: no pass through this process's memory); elsewhere, or where
/// the kernel declines, they are read and written.
fn copy_range(
    from: &std::fs::File,
    offset: u64,
    len: u64,
    to: &mut std::fs::File,
) -> std::io::Result<()> {
    let (mut offset, mut left) = (offset, len);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        while left > 0 {
            let mut off_in = offset as libc::loff_t;
            // SAFETY: both descriptors are open; `off_in` outlives the call; a null output
            // offset means the output file's position, which the call advances.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    &mut off_in,
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    left as usize,
                    0,
                )
            };
            if n > 0 {
                offset += n as u64;
                left -= n as u64;
                continue;
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file being replaced is shorter than its lines",
                ));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => break,
                _ => return Err(e),
            }
        }
    }
    if left > 0 {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; left.min(8 << 20) as usize];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            from.read_exact_at(&mut buf[..n], offset)?;
            to.write_all(&buf[..n])?;
            offset += n as u64;
            left -= n as u64;
        }
    }
    Ok(())
}

/// Closes files on a thread of its own. The last close of a file that has been renamed over
/// frees its page cache and blocks; a refresh that replaces a 540 MB audit file or hundreds of
/// shards hands that work off instead of waiting for it.
fn close_later(file: std::fs::File) {
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::{Mutex, OnceLock};
    static CLOSER: OnceLock<Mutex<Option<SyncSender<std::fs::File>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        // Bounded: when the thread lags, a sender waits rather than holding thousands of
        // descriptors open (a refresh of every shard replaces 4096 files).
        let (tx, rx) = sync_channel::<std::fs::File>(256);
        let spawned = std::thread::Builder::new()
            .name("file-closer".into())
            .spawn(move || rx.into_iter().for_each(drop));
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let sent = match closer.lock() {
        Ok(tx) => match tx.as_ref() {
            Some(tx) => tx.send(file).map_err(|e| e.0),
            None => Err(file),
        },
        Err(_) => Err(file),
    };
    // Without the thread, here.
    drop(sent);
}

impl DatasetFiles {
    /// Owns the shards `s` with `s % peers == worker`; takes their entries from the previous
    /// run's manifest where the files still match them.
    pub fn new(
        dirs: OutDirs,
        naming: Naming,
        sink: &SinkSpec,
        worker: usize,
        peers: usize,
    ) -> Self {
        let previous = read_manifest(&dirs.manifest());
        let run = previous.as_ref().map(|m| m.run + 1).unwrap_or(1);
        let mut old: BTreeMap<u32, ShardEntry> = previous
            .map(|m| m.shards.into_iter().map(|e| (e.shard, e)).collect())
            .unwrap_or_default();
        let mut shards = BTreeMap::new();
        let mut entries = BTreeMap::new();
        let known = if old.is_empty() {
            BTreeMap::new()
        } else {
            known_stats(&dirs)
        };
        for s in (0..sink.shards).filter(|s| *s as usize % peers == worker) {
            shards.insert(s, BTreeMap::new());
            let known = known.get(&s).map(|k| k.as_slice()).unwrap_or(&[]);
            if let Some(e) = old.remove(&s).filter(|e| verify(&dirs, e, known)) {
                entries.insert(s, e);
            }
        }
        DatasetFiles {
            dirs,
            naming,
            format: sink.format,
            shard_count: sink.shards,
            run,
            started: false,
            shards,
            entries,
            lines: BTreeMap::new(),
            unindexed: BTreeSet::new(),
            spliced: 0,
            rendered: 0,
            stats: BTreeMap::new(),
            unpublished: true,
            uncommitted: Vec::new(),
            worker,
            peers,
        }
    }

    /// Applies one epoch of row changes and refreshes the shards they touch (in the run's
    /// first epoch, every owned shard). Pushes the shards rewritten and unchanged as stats.
    pub fn epoch(
        &mut self,
        epoch: Epoch,
        mut net: Vec<((RowKey, Row), isize)>,
        stats: &mut Vec<(StatKey, isize)>,
    ) -> std::io::Result<()> {
        // Consolidated in place, in (shard, row key) order, not copied.
        let shard_count = self.shard_count;
        let runs = consolidate_buckets(&mut net, shard_count as usize, |(_, row)| {
            shard_of(row.question.hash, shard_count) as usize
        });
        let mut dirty: BTreeSet<u32> = BTreeSet::new();
        if !self.started {
            dirty.extend(self.shards.keys().copied());
        }
        // The keys this epoch touches (sorted): their lines are rendered anew. (Only a shard
        // with a line index asks.)
        let mut touched: Vec<RowKey> = if self.lines.is_empty() && self.unindexed.is_empty() {
            Vec::new()
        } else {
            net.iter().map(|((k, _), _)| *k).collect()
        };
        touched.sort_unstable();
        touched.dedup();
        // A shard's file is indexed before its rows change (the index pairs its lines with
        // the rows it holds).
        let hit: Vec<u32> = runs
            .iter()
            .map(|(shard, _)| *shard as u32)
            .filter(|s| self.unindexed.contains(s))
            .collect();
        for shard in hit {
            self.unindexed.remove(&shard);
            let path = self.dirs.dataset().join(shard_file_name(shard, "jsonl"));
            if let Some(index) = index_lines(&path, self.shards[&shard].keys())? {
                self.lines.insert(shard, index);
            }
        }
        // Shard by shard: retractions first, then insertions (a row whose question's text
        // changed may move to another shard). The inserted rows move into the shards (no
        // copy). A shard that holds none yet is built in one go from its rows (sorted): full
        // B-tree nodes, where inserting ascending keys one by one leaves them about half full.
        let mut net = net.into_iter();
        let mut updates: Vec<((RowKey, Row), isize)> = Vec::new();
        for (shard, len) in runs {
            let shard = shard as u32;
            updates.clear();
            updates.extend(net.by_ref().take(len));
            let rows = self.shards.entry(shard).or_default();
            for ((key, row), _) in updates.iter().filter(|(_, d)| *d < 0) {
                if rows.get(key) == Some(row) {
                    rows.remove(key);
                    dirty.insert(shard);
                }
            }
            let mut inserted = updates.drain(..).filter(|(_, d)| *d > 0).peekable();
            if inserted.peek().is_some() {
                dirty.insert(shard);
            }
            if rows.is_empty() {
                *rows = inserted.map(|((key, row), _)| (key, row)).collect();
            } else {
                for ((key, row), _) in inserted {
                    rows.insert(key, row);
                }
            }
        }
        let (spliced, rendered) = (self.spliced, self.rendered);
        for shard in dirty {
            let key = if self.refresh(shard, epoch, &touched)? {
                StatKey::ShardsRewritten
            } else {
                StatKey::ShardsUnchanged
            };
            stats.push((key, 1));
        }
        stats.push((StatKey::RowsCopied, (self.spliced - spliced) as isize));
        stats.push((StatKey::RowsRendered, (self.rendered - rendered) as isize));
        self.commit()?;
        self.started = true;
        if self.unpublished {
            self.write_worker_manifest()?;
        }
        Ok(())
    }

    /// Writes this worker's manifest file: its shards' entries and `stat` records. Not
    /// synced: the manifest (synced) is what a restart trusts; this file is written again in
    /// every run's first epoch, and a record that does not parse only makes the next start
    /// checksum the shard's files.
    fn write_worker_manifest(&mut self) -> std::io::Result<()> {
        let m = WorkerManifest {
            entries: self.entries.values().cloned().collect(),
            stats: std::mem::take(&mut self.stats),
        };
        let bytes = serde_json::to_vec(&m).expect("json");
        self.stats = m.stats;
        let path = self
            .dirs
            .manifest_parts()
            .join(worker_manifest_name(self.worker, self.peers));
        replace_file(&path, &bytes)?;
        self.unpublished = false;
        Ok(())
    }

    /// Renders a shard and writes each of its files whose bytes differ from what its entry
    /// says; records its manifest entry. Returns whether a file was written.
    ///
    /// A JSONL-only shard with a [`LineIndex`] is spliced: the lines of rows whose keys are not
    /// in `touched` (sorted) are copied from the file in place, in runs, and only the touched
    /// rows are rendered. The bytes are the same as a full render's.
    fn refresh(&mut self, shard: u32, epoch: Epoch, touched: &[RowKey]) -> std::io::Result<bool> {
        let digest = rows_digest(self.shards[&shard].values(), self.format);
        if let Some(old) = self.entries.get(&shard) {
            if old.rows_digest.as_deref() == Some(digest.as_str()) {
                // The same rows as the files hold (verified at start): nothing to render.
                if !self.started {
                    let old = old.clone();
                    self.record_entry(&old)?;
                    if self.format == SinkFormat::Jsonl {
                        self.unindexed.insert(shard);
                    }
                }
                return Ok(false);
            }
        }
        // Rendered and written in chunks, each file under a temporary name, hashed as it is
        // written: a shard is never held in memory whole. A file whose bytes turn out equal
        // to what the entry says is dropped, not renamed.
        let names: Vec<String> = [
            (self.format.jsonl(), "jsonl"),
            (self.format.parquet(), "parquet"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, ext)| shard_file_name(shard, ext))
        .collect();
        let dataset = self.dirs.dataset();
        let mut jsonl_out = None;
        let mut parquet_out = None;
        for name in &names {
            let (tmp, w) = temp_writer(&dataset.join(name))?;
            if name.ends_with(".jsonl") {
                jsonl_out = Some((name.clone(), tmp, Hashing::new(w)));
            } else {
                let writer = parquet_writer(Hashing::new(w)).map_err(std::io::Error::other)?;
                parquet_out = Some((name.clone(), tmp, writer));
            }
        }
        let rows = self.shards[&shard].len() as u64;
        let all: Vec<&Row> = self.shards[&shard].values().collect();
        // The old file and its index, when the shard can be spliced (JSONL only).
        let splicing = self.format == SinkFormat::Jsonl;
        let old_lines = self.lines.remove(&shard).unwrap_or_default();
        let mut index: LineIndex = Vec::new();
        let mut jsonl = jsonl_out.as_mut().map(|(name, _, w)| {
            let from = (splicing && !old_lines.is_empty())
                .then(|| std::fs::File::open(dataset.join(&*name)).ok())
                .flatten();
            LineWriter::new(w, from)
        });
        let mut old_at = 0;
        for chunk in all.chunks(SHARD_CHUNK_ROWS) {
            if let Some(w) = jsonl.as_mut() {
                for r in chunk {
                    let kept = if w.copies() && touched.binary_search(&r.key).is_err() {
                        while old_at < old_lines.len() && old_lines[old_at].0 < r.key {
                            old_at += 1;
                        }
                        old_lines.get(old_at).filter(|(k, _, _)| *k == r.key)
                    } else {
                        None
                    };
                    let (at, len) = match kept {
                        Some(&(_, offset, len)) => {
                            self.spliced += 1;
                            (w.copy(offset, len)?, len)
                        }
                        None => {
                            self.rendered += 1;
                            w.render(|out| self.naming.write_row(r, out))?
                        }
                    };
                    if splicing {
                        index.push((r.key, at, len));
                    }
                }
            }
            if let Some((_, _, w)) = parquet_out.as_mut() {
                if jsonl.is_none() {
                    self.rendered += chunk.len() as u64;
                }
                let values: Vec<Value> = chunk.iter().map(|r| self.naming.render_row(r)).collect();
                w.write(&parquet_batch(&values).map_err(std::io::Error::other)?)
                    .map_err(std::io::Error::other)?;
            }
        }
        // The replaced file stays open until its successor is renamed over it, and is closed
        // on another thread (see `close_later`).
        let replaced = match jsonl {
            Some(w) => w.into_from()?,
            None => None,
        };
        let mut written: Vec<(String, PathBuf, Hashing<std::io::BufWriter<std::fs::File>>)> =
            Vec::new();
        if let Some((name, tmp, w)) = jsonl_out {
            written.push((name, tmp, w));
        }
        if let Some((name, tmp, w)) = parquet_out {
            written.push((name, tmp, w.into_inner().map_err(std::io::Error::other)?));
        }
        let old = self.entries.get(&shard);
        let mut files = Vec::new();
        let mut to_commit = Vec::new();
        for (name, tmp, mut w) in written {
            w.flush()?;
            let file = FileEntry {
                path: name.clone(),
                rows,
                bytes: w.bytes,
                checksum: format!("{:016x}", w.hasher.digest()),
            };
            if old.is_some_and(|o| o.files.contains(&file)) {
                drop(w);
                std::fs::remove_file(&tmp)?;
            } else {
                let f = w.inner.into_inner().map_err(|e| e.into_error())?;
                start_writeback(&f);
                to_commit.push((tmp, f, dataset.join(&name)));
            }
            files.push(file);
        }
        let wrote = !to_commit.is_empty();
        let entry = match old {
            Some(o) if !wrote && o.files == files => ShardEntry {
                rows_digest: Some(digest),
                ..o.clone()
            },
            _ => ShardEntry {
                shard,
                files,
                epoch_written: epoch,
                run_written: self.run,
                rows_digest: Some(digest),
            },
        };
        let record = !self.started || old != Some(&entry);
        self.entries.insert(shard, entry.clone());
        if splicing {
            self.lines.insert(shard, index);
        }
        if wrote {
            // Synced and renamed into place with the epoch's other shards (see `commit`);
            // the entry is recorded once its files are there.
            self.uncommitted.push(Uncommitted {
                entry,
                files: to_commit,
                replaced,
            });
            if self.uncommitted.len() >= UNCOMMITTED_MAX {
                self.commit()?;
            }
        } else {
            if let Some(f) = replaced {
                close_later(f);
            }
            if record {
                self.record_entry(&entry)?;
            }
        }
        Ok(wrote)
    }

    /// Puts the shard files written so far in place: syncs each (its writeback began when it
    /// was written), renames it over the old file, and records its entry. The old files are
    /// closed on another thread (see [`close_later`]).
    fn commit(&mut self) -> std::io::Result<()> {
        for u in std::mem::take(&mut self.uncommitted) {
            for (tmp, f, path) in u.files {
                f.sync_data()?;
                std::fs::rename(tmp, path)?;
            }
            if let Some(f) = u.replaced {
                close_later(f);
            }
            self.record_entry(&u.entry)?;
        }
        Ok(())
    }

    /// One step of work between epochs: indexes the lines of up to 64 shards a restart left
    /// unindexed, so that the next epoch that touches them need not. Returns whether more is
    /// left.
    pub fn idle_step(&mut self) -> std::io::Result<bool> {
        let batch: Vec<u32> = self.unindexed.iter().take(64).copied().collect();
        for shard in batch {
            self.unindexed.remove(&shard);
            let path = self.dirs.dataset().join(shard_file_name(shard, "jsonl"));
            if let Some(index) = index_lines(&path, self.shards[&shard].keys())? {
                self.lines.insert(shard, index);
            }
        }
        Ok(!self.unindexed.is_empty())
    }

    /// Records a shard's entry for this worker's manifest file, with what `stat` says of its
    /// files now (for the next run's [`verify`]).
    fn record_entry(&mut self, entry: &ShardEntry) -> std::io::Result<()> {
        let stats: Vec<FileStat> = entry
            .files
            .iter()
            .filter_map(|f| file_stat(&self.dirs.dataset(), f))
            .collect();
        self.stats.insert(entry.shard, stats);
        self.unpublished = true;
        Ok(())
    }
}

/// Joins the workers' manifest files (`dataset/.manifest/worker-W-of-P.json`) into
/// `dataset/manifest.json` (worker 0, after an epoch's shards are written).
pub struct ManifestWriter {
    run: u64,
    peers: usize,
    last: Option<(Vec<ShardEntry>, u64)>,
    /// Whether files of other layouts (another worker count, an older version's per-shard
    /// fragments) have been removed from `dataset/.manifest/` (after the run's first manifest).
    tidied: bool,
}

impl ManifestWriter {
    /// Reads the previous run's manifest (before this run writes one) for the run number.
    pub fn open(dirs: &OutDirs, peers: usize) -> Self {
        ManifestWriter {
            run: read_manifest(&dirs.manifest())
                .map(|m| m.run + 1)
                .unwrap_or(1),
            peers,
            last: None,
            tidied: false,
        }
    }

    /// Writes the manifest of `epoch` when its shard entries changed (or on the run's first
    /// epoch). Returns whether it wrote.
    pub fn publish(
        &mut self,
        dirs: &OutDirs,
        sink: &SinkSpec,
        epoch: Epoch,
    ) -> std::io::Result<bool> {
        let mut shards: Vec<Option<ShardEntry>> = vec![None; sink.shards as usize];
        for w in 0..self.peers {
            let path = dirs
                .manifest_parts()
                .join(worker_manifest_name(w, self.peers));
            let bytes = std::fs::read(&path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            })?;
            let m: WorkerManifest = serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::other(format!("reading {}: {e}", path.display())))?;
            for e in m.entries {
                if let Some(slot) = shards.get_mut(e.shard as usize) {
                    *slot = Some(e);
                }
            }
        }
        let shards: Vec<ShardEntry> = shards
            .into_iter()
            .enumerate()
            .map(|(s, e)| {
                e.ok_or_else(|| {
                    std::io::Error::other(format!(
                        "no worker's manifest file in {} lists shard {s}",
                        dirs.manifest_parts().display()
                    ))
                })
            })
            .collect::<std::io::Result<_>>()?;
        let total_rows: u64 = shards
            .iter()
            .map(|e| e.files.first().map(|f| f.rows).unwrap_or(0))
            .sum();
        let now = (shards, total_rows);
        if self.last.as_ref() == Some(&now) {
            return Ok(false);
        }
        let manifest = Manifest {
            format_version: MANIFEST_VERSION,
            run: self.run,
            epoch,
            format: sink.format.as_str().to_string(),
            shard_count: sink.shards,
            shards: now.0.clone(),
            total_rows: now.1,
        };
        let mut text = serde_json::to_vec_pretty(&manifest).expect("json");
        text.push(b'\n');
        write_atomic(&dirs.manifest(), &text)?;
        self.last = Some(now);
        if !self.tidied {
            self.tidied = true;
            let keep: BTreeSet<String> = (0..self.peers)
                .map(|w| worker_manifest_name(w, self.peers))
                .collect();
            for e in std::fs::read_dir(dirs.manifest_parts())?.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json") && !keep.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(true)
    }
}

/// The Parquet schema of a dataset shard: the OpenThoughts3 columns, then the ids.
pub fn parquet_schema() -> arrow_schema::SchemaRef {
    use arrow_schema::{DataType, Field, Schema};
    let turn = DataType::Struct(turn_fields());
    Arc::new(Schema::new(vec![
        Field::new("difficulty", DataType::Int64, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("domain", DataType::Utf8, false),
        Field::new(
            "conversations",
            DataType::List(Arc::new(Field::new("item", turn, false))),
            false,
        ),
        Field::new("row_id", DataType::Utf8, false),
        Field::new("question_id", DataType::Utf8, false),
        Field::new("teacher", DataType::Utf8, true),
        Field::new("sample", DataType::Int64, false),
        Field::new("score", DataType::Int64, true),
    ]))
}

fn turn_fields() -> arrow_schema::Fields {
    use arrow_schema::{DataType, Field};
    arrow_schema::Fields::from(vec![
        Field::new("from", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ])
}

/// Encodes rendered rows (see [`Naming::render_row`]) as one Parquet file (snappy).
/// Rows rendered and written at a time per shard (and rows per Parquet row group: a row group
/// is buffered until it is complete, so this bounds the sink's memory too).
const SHARD_CHUNK_ROWS: usize = 4096;

/// A Parquet writer of the dataset schema (Snappy, row groups of [`SHARD_CHUNK_ROWS`]).
fn parquet_writer<W: Write + Send>(
    out: W,
) -> Result<parquet::arrow::ArrowWriter<W>, parquet::errors::ParquetError> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(SHARD_CHUNK_ROWS))
        .build();
    parquet::arrow::ArrowWriter::try_new(out, parquet_schema(), Some(props))
}

/// A shard's rows (rendered) as one Parquet file.
pub fn parquet_shard(rows: &[Value]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut writer = parquet_writer(Vec::new())?;
    for chunk in rows.chunks(SHARD_CHUNK_ROWS) {
        writer.write(&parquet_batch(chunk)?)?;
    }
    writer.into_inner()
}

/// Rendered rows as a record batch of the dataset schema.
fn parquet_batch(
    rows: &[Value],
) -> Result<arrow_array::RecordBatch, parquet::errors::ParquetError> {
    use arrow_array::{ArrayRef, Int64Array, ListArray, RecordBatch, StringArray, StructArray};
    let schema = parquet_schema();
    let strings = |key: &str| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| r[key].as_str())
                .collect::<StringArray>(),
        )
    };
    let ints = |key: &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| r[key].as_i64()).collect::<Int64Array>())
    };
    let mut lengths = Vec::with_capacity(rows.len());
    let (mut from, mut value) = (Vec::new(), Vec::new());
    for r in rows {
        let turns = r["conversations"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or(&[]);
        lengths.push(turns.len());
        for t in turns {
            from.push(t["from"].as_str().unwrap_or_default());
            value.push(t["value"].as_str().unwrap_or_default());
        }
    }
    let turns = StructArray::new(
        turn_fields(),
        vec![
            Arc::new(StringArray::from(from)) as ArrayRef,
            Arc::new(StringArray::from(value)) as ArrayRef,
        ],
        None,
    );
    let item = match schema
        .field_with_name("conversations")
        .map(|f| f.data_type())
    {
        Ok(arrow_schema::DataType::List(item)) => Arc::clone(item),
        _ => unreachable!("conversations is a list"),
    };
    let conversations = ListArray::new(
        item,
        arrow_buffer::OffsetBuffer::from_lengths(lengths),
        Arc::new(turns),
        None,
    );
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            ints("difficulty"),
            strings("source"),
            strings("domain"),
            Arc::new(conversations),
            strings("row_id"),
            strings("question_id"),
            strings("teacher"),
            ints("sample"),
            ints("score"),
        ],
    )?;
    Ok(batch)
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
    // Copied file to file: a first epoch's changes are the whole dataset.
    let path = dirs.changes().join(format!("{epoch:08}.jsonl"));
    let (tmp, mut w) = temp_writer(&path)?;
    for p in &parts {
        std::io::copy(&mut std::fs::File::open(p)?, &mut w)?;
    }
    commit_temp(&tmp, w, &path)?;
    for p in parts {
        std::fs::remove_file(p)?;
    }
    Ok(true)
}

/// How an [`AuditTable`] names a record's group (its file).
type GroupOf<T> = Box<dyn Fn(&T) -> Arc<str> + Send>;

/// A current-state audit table kept by worker 0 and rewritten per group when it changes.
///
/// Its files outlive a run: a restart's first epoch rewrites only the groups whose content
/// differs from what the files hold (by a digest of the group's records and the naming they
/// are rendered with, kept in `<dir>/.digests.json` with each file's size), and removes the
/// files of groups that are gone.
pub struct AuditTable<T: Ord + Clone + Hash> {
    groups: BTreeMap<String, BTreeMap<T, Held>>,
    dir: PathBuf,
    /// A digest of what rendering depends on besides the records (step and teacher names).
    context: u128,
    /// The group a record belongs to (its file's name).
    group: GroupOf<T>,
    /// group -> (digest, file size) of what its file holds; loaded at the first epoch.
    written: Option<BTreeMap<String, (String, u64)>>,
    /// Groups whose file holds exactly their records (checked at the first epoch) but whose
    /// records do not know their lines yet: read from the file when an epoch first changes
    /// the group.
    unindexed: BTreeSet<String>,
    /// Groups whose file holds exactly their records, and whose records are not a table
    /// yet: written from their records (sorted and consolidated) when they first appeared, or
    /// split from `shared` (as they came). Made a table only when an epoch changes the group
    /// or between epochs of a following run: a build does not hold them twice while it writes
    /// them.
    pending: BTreeMap<String, Vec<(T, isize)>>,
    /// The records of groups that a restart's first epoch found their files holding, in the
    /// batches they came in (groups mixed, unsorted, unconsolidated): a restart whose audit
    /// is unchanged (3.87M `not_selected` records at the paper's scale) neither moves, sorts
    /// nor indexes them. Moving them into a vector per group took a second of fresh pages at
    /// that scale, after the workers had finished. Split into `pending` (see
    /// [`AuditTable::unshare`]) when one of these groups is needed.
    shared: Vec<Vec<(T, Epoch, isize)>>,
    /// The groups whose records are in `shared`, with how many of them each has.
    shared_groups: BTreeMap<String, usize>,
    /// group -> the sum, over its records, of multiplicity x 128-bit hash (see
    /// [`AuditTable::digest`]), kept up to date update by update: an epoch that changes 10k of
    /// a group's 3.87M records hashes those 10k, not the group.
    sums: BTreeMap<String, u128>,
    /// Records whose lines were copied from the file in place rather than rendered (this run).
    pub spliced: u64,
}

/// A record of an [`AuditTable`]: its multiplicity and where its lines are in the group's
/// file (`len == 0`: not there as it stands, so rendered at the next rewrite).
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    count: i32,
    len: u32,
    at: u64,
}

/// A run of an epoch's records of one group (see [`AuditTable::epoch`]).
struct Run<T> {
    group: Arc<str>,
    /// The run's share of the group's hash sum.
    sum: u128,
    /// The run's records, when the group held none before the epoch (it is then kept pending:
    /// see [`AuditTable::pending`]).
    fresh: Option<Vec<(T, isize)>>,
}

/// Groups seen in a pass over records, each looked up once per run of its records (records
/// come in runs of one group: a step's rejections), not once per record.
struct GroupIndex<V> {
    names: Vec<Arc<str>>,
    values: Vec<V>,
    last: usize,
}

impl<V: Default> GroupIndex<V> {
    fn new() -> Self {
        GroupIndex {
            names: Vec::new(),
            values: Vec::new(),
            last: 0,
        }
    }

    fn of(&mut self, g: Arc<str>) -> &mut V {
        if self.names.get(self.last).is_none_or(|n| **n != *g) {
            self.last = match self.names.iter().position(|n| **n == *g) {
                Some(i) => i,
                None => {
                    self.names.push(g);
                    self.values.push(V::default());
                    self.names.len() - 1
                }
            };
        }
        &mut self.values[self.last]
    }

    fn into_pairs(self) -> impl Iterator<Item = (Arc<str>, V)> {
        self.names.into_iter().zip(self.values)
    }
}

impl<T: Ord + Clone + Hash> AuditTable<T> {
    /// A table of records grouped into files by `group`.
    pub fn new(
        dir: PathBuf,
        context: u128,
        group: impl Fn(&T) -> Arc<str> + Send + 'static,
    ) -> Self {
        AuditTable {
            groups: BTreeMap::new(),
            dir,
            context,
            group: Box::new(group),
            written: None,
            unindexed: BTreeSet::new(),
            pending: BTreeMap::new(),
            shared: Vec::new(),
            shared_groups: BTreeMap::new(),
            sums: BTreeMap::new(),
            spliced: 0,
        }
    }

    fn digests_path(&self) -> PathBuf {
        self.dir.join(".digests.json")
    }

    /// A record's share of its group's sum: multiplicity x the record's 128-bit hash. A
    /// group's digest is made from the sum of its records' shares: a sum does not depend on
    /// order, so records are counted as they come, unsorted and unconsolidated, and an update
    /// changes it by its own share.
    fn record_term(one: &mut xxhash_rust::xxh3::Xxh3, t: &T, d: isize) -> u128 {
        one.reset();
        t.hash(one);
        one.digest128().wrapping_mul(d as i128 as u128)
    }

    /// The digest of a group whose records' sum (see [`AuditTable::record_term`]) is `sum`,
    /// with the rendering context.
    fn digest(&self, sum: u128) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.context.to_le_bytes());
        h.update(RENDER_VERSION.as_bytes());
        h.update(&sum.to_le_bytes());
        format!("{:032x}", h.digest128())
    }

    /// Whether group `g`'s records are held but not as a table (see `pending`, `shared`).
    fn is_pending(&self, g: &str) -> bool {
        self.pending.contains_key(g) || self.shared_groups.contains_key(g)
    }

    /// Moves the records of `shared` into a vector per group in `pending`, batch by batch
    /// (each batch freed once read).
    fn unshare(&mut self) {
        let shared = std::mem::take(&mut self.shared);
        let groups = std::mem::take(&mut self.shared_groups);
        let split = self.split_by_group(&groups, shared.into_iter().flatten());
        self.pending.extend(split);
    }

    /// Moves `records` into a vector per group of `sizes` (each made room for its count once:
    /// millions of records grown by doubling cost a copy and fresh pages per doubling);
    /// records of other groups are dropped.
    fn split_by_group(
        &self,
        sizes: &BTreeMap<String, usize>,
        records: impl Iterator<Item = (T, Epoch, isize)>,
    ) -> BTreeMap<String, Vec<(T, isize)>> {
        let mut into: GroupIndex<Vec<(T, isize)>> = GroupIndex::new();
        for (g, n) in sizes {
            *into.of(Arc::from(g.as_str())) = Vec::with_capacity(*n);
        }
        let known = into.names.len();
        for (t, _, d) in records {
            into.of((self.group)(&t)).push((t, d));
        }
        into.into_pairs()
            .take(known)
            .map(|(g, records)| (g.to_string(), records))
            .collect()
    }

    /// Makes a pending group (see `pending`, `shared`) a table whose lines are read from its
    /// file before it changes.
    fn materialize(&mut self, g: &str) {
        if self.shared_groups.contains_key(g) {
            self.unshare();
        }
        if let Some(records) = self.pending.remove(g) {
            self.groups.insert(g.to_string(), Self::table_of(records));
            self.unindexed.insert(g.to_string());
        }
    }

    /// A table of records (any order, diffs not yet summed), built in one go.
    fn table_of(mut records: Vec<(T, isize)>) -> BTreeMap<T, Held> {
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        differential_dataflow::consolidation::consolidate(&mut records);
        records
            .into_iter()
            .map(|(t, d)| {
                let held = Held {
                    count: d as i32,
                    len: 0,
                    at: 0,
                };
                (t, held)
            })
            .collect()
    }

    /// Pairs a group's records with the lines of its file, which holds exactly them (each
    /// record's line `count` times, in order). Leaves them unpaired if the file disagrees.
    fn index_group(&mut self, g: &str) -> std::io::Result<()> {
        let Some(table) = self.groups.get_mut(g) else {
            return Ok(());
        };
        let (ends, file_len) = line_ends(&self.dir.join(format!("{g}.jsonl")))?;
        let mut ends = ends.into_iter();
        let mut at = 0u64;
        let mut located = Vec::with_capacity(table.len());
        for held in table.values() {
            let mut end = at;
            for _ in 0..held.count.max(0) {
                match ends.next() {
                    Some(e) => end = e,
                    None => return Ok(()),
                }
            }
            located.push((at, (end - at) as u32));
            at = end;
        }
        if ends.next().is_some() || at != file_len {
            return Ok(());
        }
        for (held, (at, len)) in table.values_mut().zip(located) {
            (held.at, held.len) = (at, len);
        }
        Ok(())
    }

    /// One step of work between epochs: splits the records a restart kept as they came,
    /// makes a group that a restart left pending a table, or pairs a group's records with
    /// its file's lines, so that the next epoch that changes it need not (3.87M records
    /// sorted and a 540 MB file read at the paper's scale). Returns whether more is left.
    pub fn idle_step(&mut self) -> std::io::Result<bool> {
        if !self.shared_groups.is_empty() {
            self.unshare();
        } else if let Some(g) = self.pending.keys().next().cloned() {
            self.materialize(&g);
        } else if let Some(g) = self.unindexed.iter().next().cloned() {
            self.unindexed.remove(&g);
            self.index_group(&g)?;
        }
        Ok(!self.pending.is_empty() || !self.unindexed.is_empty())
    }

    /// Readies group `g` for a run of its records: a pending group is made a table, an
    /// unindexed one is read for its lines (before its records change), and the group is
    /// marked changed.
    ///
    /// A group that held no records gathers the run's in a vector made room for `left` (the
    /// records left in the epoch, at least): records grown by doubling cost a copy and fresh
    /// pages per doubling. Room not filled is never touched, so it takes no memory.
    fn start_run(
        &mut self,
        g: Arc<str>,
        changed: &mut BTreeSet<String>,
        left: usize,
    ) -> std::io::Result<Run<T>> {
        if self.is_pending(&g) {
            self.materialize(&g);
        }
        if !self.unindexed.is_empty() && self.unindexed.remove(&*g) {
            self.index_group(&g)?;
        }
        if !self.groups.contains_key(&*g) {
            self.groups.insert(g.to_string(), BTreeMap::new());
        }
        if !changed.contains(&*g) {
            changed.insert(g.to_string());
        }
        let empty = self.groups[&*g].is_empty();
        Ok(Run {
            group: g,
            sum: 0,
            fresh: empty.then(|| Vec::with_capacity(left)),
        })
    }

    /// Adds a run's hash sum to its group's, and its records, if the group held none, to
    /// those its table will be built from.
    fn end_run(&mut self, r: Run<T>, fresh: &mut BTreeMap<String, Vec<(T, isize)>>) {
        let sum = self.sums.entry(r.group.to_string()).or_insert(0);
        *sum = sum.wrapping_add(r.sum);
        if let Some(mut records) = r.fresh {
            match fresh.get_mut(&*r.group) {
                Some(all) => all.append(&mut records),
                None => {
                    fresh.insert(r.group.to_string(), records);
                }
            }
        }
    }

    /// Applies an epoch's updates to the tables, record by record; returns the records of
    /// groups that held none before, by group.
    fn apply(
        &mut self,
        batches: Vec<Vec<(T, Epoch, isize)>>,
        changed: &mut BTreeSet<String>,
    ) -> std::io::Result<BTreeMap<String, Vec<(T, isize)>>> {
        let mut fresh: BTreeMap<String, Vec<(T, isize)>> = BTreeMap::new();
        let mut one = xxhash_rust::xxh3::Xxh3::new();
        let mut left: usize = batches.iter().map(Vec::len).sum();
        let mut run: Option<Run<T>> = None;
        for (t, _, d) in batches.into_iter().flatten() {
            let g = (self.group)(&t);
            if run.as_ref().is_none_or(|r| *r.group != *g) {
                if let Some(r) = run.take() {
                    self.end_run(r, &mut fresh);
                }
                run = Some(self.start_run(g, changed, left)?);
            }
            left -= 1;
            let r = run.as_mut().expect("started");
            r.sum = r.sum.wrapping_add(Self::record_term(&mut one, &t, d));
            if let Some(records) = r.fresh.as_mut() {
                records.push((t, d));
                continue;
            }
            let table = self.groups.get_mut(&*r.group).expect("made by start_run");
            match table.get_mut(&t) {
                Some(held) => {
                    held.count += d as i32;
                    held.len = 0;
                    if held.count == 0 {
                        table.remove(&t);
                    }
                }
                None if d != 0 => {
                    table.insert(
                        t,
                        Held {
                            count: d as i32,
                            len: 0,
                            at: 0,
                        },
                    );
                }
                None => {}
            }
        }
        if let Some(r) = run.take() {
            self.end_run(r, &mut fresh);
        }
        Ok(fresh)
    }

    /// A table's first epoch (every group holds no records yet): the records are hashed where
    /// they lie, and each group whose file holds them already (by `written`) is kept in the
    /// batches as they came (`shared`); only the others' records are moved into a vector per
    /// group (returned, for writing).
    fn first_epoch(
        &mut self,
        mut batches: Vec<Vec<(T, Epoch, isize)>>,
        written: &BTreeMap<String, (String, u64)>,
    ) -> BTreeMap<String, Vec<(T, isize)>> {
        let mut one = xxhash_rust::xxh3::Xxh3::new();
        let mut seen: GroupIndex<(u128, usize)> = GroupIndex::new();
        for (t, _, d) in batches.iter().flatten() {
            let (sum, count) = seen.of((self.group)(t));
            *sum = sum.wrapping_add(Self::record_term(&mut one, t, *d));
            *count += 1;
        }
        let mut write: BTreeMap<String, usize> = BTreeMap::new();
        for (g, (sum, count)) in seen.into_pairs() {
            let digest = self.digest(sum);
            self.sums.insert(g.to_string(), sum);
            let on_disk = std::fs::metadata(self.dir.join(format!("{g}.jsonl")))
                .map(|m| m.len())
                .ok();
            if written
                .get(&*g)
                .is_some_and(|(d, len)| *d == digest && on_disk == Some(*len))
            {
                self.shared_groups.insert(g.to_string(), count);
            } else {
                write.insert(g.to_string(), count);
            }
        }
        if self.shared_groups.is_empty() {
            // Nothing kept as it came: each batch is freed once read.
            return self.split_by_group(&write, batches.into_iter().flatten());
        }
        let mut split = BTreeMap::new();
        if !write.is_empty() {
            let group = &self.group;
            let moved = batches
                .iter_mut()
                .flat_map(|batch| batch.extract_if(.., |(t, _, _)| write.contains_key(&*group(t))));
            split = self.split_by_group(&write, moved);
            batches.retain(|b| !b.is_empty());
        }
        self.shared = batches;
        split
    }

    /// Applies an epoch's updates, as batches of `(record, epoch, diff)` (grouped by the
    /// table's `group`); rewrites `<dir>/<group>.jsonl` for changed groups (at the first
    /// epoch, for groups whose file does not hold them already). A rewrite copies the lines
    /// of the records the epoch did not change from the file in place and renders the others.
    pub fn epoch(
        &mut self,
        batches: Vec<Vec<(T, Epoch, isize)>>,
        render: impl Fn(&T, &mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        let first = self.written.is_none();
        let mut written = match self.written.take() {
            Some(w) => w,
            None => {
                // First epoch: every group is checked against its file; files of groups that
                // are not here any more go.
                std::fs::read(self.digests_path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default()
            }
        };
        // Records of groups that hold none yet are gathered, not inserted one by one: such a
        // group is kept pending (below) and its table built in one go when it is needed.
        // (A table that holds records already, as after a first epoch whose writing failed,
        // takes them record by record.)
        let empty = self.groups.is_empty() && self.pending.is_empty() && self.shared.is_empty();
        let fresh = if first && empty {
            self.first_epoch(batches, &written)
        } else {
            self.apply(batches, &mut changed)?
        };
        for (g, records) in fresh {
            // Sorted and consolidated in place, written from the vector and kept pending: the
            // group's table (a B-tree) is built when a later epoch changes it or between
            // epochs, not beside the records while the epoch is written (3.87M `not_selected`
            // records at the paper's scale: the peak of a build).
            let mut records = records;
            records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            differential_dataflow::consolidation::consolidate(&mut records);
            changed.insert(g.clone());
            if records.is_empty() {
                self.groups.insert(g, BTreeMap::new());
            } else {
                self.groups.remove(&g);
                self.pending.insert(g, records);
            }
        }
        if first {
            for e in std::fs::read_dir(&self.dir)?.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(g) = name.strip_suffix(".jsonl") {
                    if !self.groups.contains_key(g) && !self.is_pending(g) {
                        changed.insert(g.to_string());
                    }
                }
            }
        }
        let before = written.clone();
        for g in changed {
            let path = self.dir.join(format!("{g}.jsonl"));
            let pending = self.pending.get(&g);
            if pending.is_none() && self.groups.get(&g).is_none_or(|t| t.is_empty()) {
                self.groups.remove(&g);
                self.sums.remove(&g);
                written.remove(&g);
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let digest = self.digest(self.sums.get(&g).copied().unwrap_or(0));
            let on_disk = std::fs::metadata(&path).map(|m| m.len()).ok();
            if written
                .get(&g)
                .is_some_and(|(d, len)| *d == digest && on_disk == Some(*len))
            {
                continue;
            }
            // Streamed to a temporary file (a group can hold millions of records).
            let (tmp, mut w) = temp_writer(&path)?;
            let (len, replaced) = {
                let mut line = Vec::new();
                let mut synced_to = 0u64;
                match pending {
                    // Rendered from the records (a pending group's lines are not known).
                    Some(records) => {
                        let mut lines = LineWriter::to_file(&mut w, None);
                        for (t, count) in records {
                            lines.writeback_every_64_mib(&mut synced_to)?;
                            line.clear();
                            render(t, &mut line)?;
                            line.push(b'\n');
                            lines.write(&line, (*count).max(0) as usize)?;
                        }
                        (lines.pos, lines.into_from()?)
                    }
                    None => {
                        let table = self.groups.get_mut(&g).expect("checked above");
                        let from = std::fs::File::open(&path).ok();
                        let mut lines = LineWriter::to_file(&mut w, from);
                        for (t, held) in table.iter_mut() {
                            lines.writeback_every_64_mib(&mut synced_to)?;
                            (held.at, held.len) = if held.len > 0 && lines.copies() {
                                self.spliced += 1;
                                (lines.copy(held.at, held.len)?, held.len)
                            } else {
                                line.clear();
                                render(t, &mut line)?;
                                line.push(b'\n');
                                lines.write(&line, held.count.max(0) as usize)?
                            };
                        }
                        (lines.pos, lines.into_from()?)
                    }
                }
            };
            commit_temp(&tmp, w, &path)?;
            if let Some(old) = replaced {
                close_later(old);
            }
            written.insert(g, (digest, len));
        }
        if written != before {
            write_atomic(
                &self.digests_path(),
                &serde_json::to_vec(&written).expect("json"),
            )?;
        }
        self.written = Some(written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thoughtflow_operators::record::*;

    /// The direct writers give exactly the bytes of the `Value` renderings, for every shape of
    /// record: names known and unknown, every detail, rows with and without an answer.
    #[test]
    fn direct_writers_match_value_rendering() {
        let store = Store::new();
        let src = SourceId(7);
        store.register_source(src, "src\"quoted");
        let known = QuestionId(11);
        let unknown = QuestionId(12);
        store.put_name(known, src, "q-1");
        let text = thoughtflow_operators::hash::text_ref("What is 2+2? \u{e9}\n");
        store.put_text(text, "What is 2+2? \u{e9}\n");
        let naming = Naming {
            store: Arc::clone(&store),
            teachers: Arc::new(vec!["t0".into()]),
            steps: Arc::new(vec!["s0".into()]),
        };
        let key = |q, teacher| RowKey {
            question: q,
            teacher: TeacherId(teacher),
            sample: 3,
        };
        let details = [
            Detail::None,
            Detail::Text("why \"not\"".into()),
            Detail::Contamination(Box::new(ItemRef {
                bench: "b".into(),
                item: "i".into(),
            })),
            Detail::Tokens { tokens: 9, max: 5 },
            Detail::Score {
                score: -2,
                bound: 4,
            },
            Detail::Rank { score: 8 },
            Detail::DuplicateOf(known),
            Detail::DuplicateOf(unknown),
            Detail::DuplicateOfRow(key(known, 0)),
            Detail::DuplicateOfRow(key(unknown, 9)),
        ];
        let subjects = [
            Subject::Question(known),
            Subject::Question(unknown),
            Subject::Row(key(known, 0)),
            Subject::Row(key(unknown, 5)),
            Subject::Input {
                source: src,
                location: "f.jsonl:3".into(),
            },
        ];
        for subject in &subjects {
            for detail in &details {
                for step in [StepId(0), StepId(4), StepId::INGEST] {
                    let r = Rejection {
                        subject: subject.clone(),
                        step,
                        reason: Reason::Duplicate,
                        detail: detail.clone(),
                    };
                    let mut direct = Vec::new();
                    naming.write_rejection(&r, &mut direct).unwrap();
                    let value = serde_json::to_vec(&naming.render_rejection(&r)).unwrap();
                    assert_eq!(
                        String::from_utf8(direct).unwrap(),
                        String::from_utf8(value).unwrap()
                    );
                }
            }
        }
        let question = |id, score: Option<i64>, difficulty: Option<i64>| Question {
            id,
            source: src,
            text,
            priority: 0,
            domain: Domain::Math,
            hash: ContentHash(1),
            tokens: 4,
            chars: 14,
            score: score.into(),
            difficulty: difficulty.into(),
        };
        let answers = [
            AnswerText::None,
            AnswerText::Stored(text),
            AnswerText::Stored(TextRef(1)),
            AnswerText::Synthetic {
                question: ContentHash(5),
                sample: 1,
                words: 12,
            },
        ];
        for answer in answers {
            for (id, score, difficulty, teacher) in
                [(known, Some(3), None, 0), (unknown, None, Some(-1), 4)]
            {
                let row = Row {
                    key: key(id, teacher),
                    question: question(id, score, difficulty),
                    answer: Answer {
                        hash: ContentHash(2),
                        text: answer.clone(),
                    },
                };
                let mut direct = Vec::new();
                naming.write_row(&row, &mut direct).unwrap();
                let value = serde_json::to_vec(&naming.render_row(&row)).unwrap();
                assert_eq!(
                    String::from_utf8(direct).unwrap(),
                    String::from_utf8(value).unwrap()
                );
            }
        }
    }

    #[test]
    fn shards_are_equal_ranges_of_the_content_hash() {
        assert_eq!(shard_of(ContentHash(0), 16), 0);
        assert_eq!(shard_of(ContentHash(u64::MAX as u128), 16), 15);
        assert_eq!(shard_of(ContentHash(1 << 63), 16), 8);
        // The high bits (what `sample` selection orders by) do not pick the shard.
        assert_eq!(shard_of(ContentHash(u128::MAX << 64), 16), 0);
        assert_eq!(shard_of(ContentHash(12345), 1), 0);
    }

    #[test]
    fn parquet_shards_are_deterministic_and_valid() {
        let rows = vec![json!({
            "row_id": "s/1/t/0", "question_id": "1", "source": "s", "domain": "math",
            "difficulty": 3, "score": null, "teacher": "t", "sample": 0,
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        })];
        let a = parquet_shard(&rows).unwrap();
        assert_eq!(a, parquet_shard(&rows).unwrap());
        assert!(a.starts_with(b"PAR1") && a.ends_with(b"PAR1"));
        let empty = parquet_shard(&[]).unwrap();
        assert!(empty.starts_with(b"PAR1") && empty.ends_with(b"PAR1"));
    }
    /// The `.jsonl` files in `dir`, by name, with their bytes.
    fn jsonl_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// A spliced refresh (unchanged rows' lines copied from the file in place) writes the bytes
    /// a fresh render of the same rows writes, after every epoch of random inserts, retractions
    /// and changes, within a run and after a restart (whose index is built from the file).
    #[test]
    fn spliced_refreshes_equal_a_fresh_render() {
        let store = Store::new();
        let src = SourceId(1);
        store.register_source(src, "s");
        let naming = Naming {
            store: Arc::clone(&store),
            teachers: Arc::new(vec!["t0".into(), "t1".into()]),
            steps: Arc::new(vec!["s0".into()]),
        };
        let sink = SinkSpec {
            shards: 3,
            format: SinkFormat::Jsonl,
            kafka: None,
            changes: crate::recipe::ChangeLog::None,
        };
        let texts: Vec<TextRef> = (0..5)
            .map(|i| {
                let t = format!("question text {i} {}", "x".repeat(i * 7));
                let r = thoughtflow_operators::hash::text_ref(&t);
                store.put_text(r, &t);
                r
            })
            .collect();
        let row = |q: u64, teacher: u16, version: u64| Row {
            key: RowKey {
                question: QuestionId(q),
                teacher: TeacherId(teacher),
                sample: (q % 3) as u16,
            },
            question: Question {
                id: QuestionId(q),
                source: src,
                text: texts[((q + version) % 5) as usize],
                priority: 0,
                domain: Domain::Math,
                // Spread over the shards; a new version may move the row to another shard.
                hash: ContentHash(((q * 7 + version) as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                tokens: 4,
                chars: 14,
                score: Some(q as i64).into(),
                difficulty: None.into(),
            },
            answer: Answer {
                hash: ContentHash(q as u128),
                text: AnswerText::Synthetic {
                    question: ContentHash(q as u128),
                    sample: teacher,
                    words: (5 + version % 4) as u32,
                },
            },
        };
        let files_of = |dir: &Path| jsonl_files(&dir.join("dataset"));
        let tmp = tempfile::tempdir().unwrap();
        let dirs = OutDirs {
            root: tmp.path().join("live"),
        };
        dirs.prepare(&sink).unwrap();
        let mut files = DatasetFiles::new(dirs.clone(), naming.clone(), &sink, 0, 1);
        let mut live: BTreeMap<RowKey, Row> = BTreeMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut spliced = 0;
        for epoch in 0..8u64 {
            let mut net = Vec::new();
            if epoch == 4 {
                // A restart: a new run on the same folder gets every live row in its first epoch.
                spliced += files.spliced;
                let mut manifest = ManifestWriter::open(&dirs, 1);
                manifest.publish(&dirs, &sink, epoch - 1).unwrap();
                files = DatasetFiles::new(dirs.clone(), naming.clone(), &sink, 0, 1);
                net.extend(live.iter().map(|(k, r)| ((*k, r.clone()), 1)));
            } else {
                for _ in 0..if epoch == 0 { 400 } else { 25 } {
                    let q = rng.u64(0..300);
                    let r = row(q, rng.u16(0..2), rng.u64(0..3));
                    match live.get(&r.key).cloned() {
                        Some(old) => {
                            net.push(((old.key, old), -1));
                            live.remove(&r.key);
                            if rng.bool() {
                                net.push(((r.key, r.clone()), 1));
                                live.insert(r.key, r);
                            }
                        }
                        None => {
                            net.push(((r.key, r.clone()), 1));
                            live.insert(r.key, r);
                        }
                    }
                }
            }
            files.epoch(epoch as Epoch, net, &mut Vec::new()).unwrap();
            let fresh = OutDirs {
                root: tmp.path().join(format!("fresh-{epoch}")),
            };
            fresh.prepare(&sink).unwrap();
            let mut reference = DatasetFiles::new(fresh.clone(), naming.clone(), &sink, 0, 1);
            let all = live.iter().map(|(k, r)| ((*k, r.clone()), 1)).collect();
            reference.epoch(0, all, &mut Vec::new()).unwrap();
            assert_eq!(reference.spliced, 0);
            assert_eq!(files_of(&dirs.root), files_of(&fresh.root), "epoch {epoch}");
        }
        spliced += files.spliced;
        assert!(spliced > 500, "lines were copied, not rendered: {spliced}");
        // The restarted run spliced too (its index was read from the files).
        assert!(files.spliced > 100, "after the restart: {}", files.spliced);
    }
    /// An audit table's spliced rewrites (unchanged records' lines copied from the file in
    /// place) write the bytes a fresh table of the same records writes, after every epoch of
    /// random diffs (multiplicities above one included), within a run and after a restart.
    #[test]
    fn spliced_audit_tables_equal_a_fresh_render() {
        let group = |t: &(u32, String)| Arc::<str>::from(format!("g{}", t.0 % 3));
        let batches = |updates: Vec<((u32, String), isize)>| {
            // Cut into a few batches, as a channel delivers them.
            let all: Vec<_> = updates.into_iter().map(|(t, d)| (t, 0, d)).collect();
            all.chunks(7).map(|c| c.to_vec()).collect::<Vec<_>>()
        };
        let render =
            |t: &(u32, String), w: &mut dyn Write| write!(w, "{{\"k\":{},\"v\":{:?}}}", t.0, t.1);
        let read = jsonl_files;
        let tmp = tempfile::tempdir().unwrap();
        let live_dir = tmp.path().join("live");
        std::fs::create_dir_all(&live_dir).unwrap();
        let mut table = AuditTable::new(live_dir.clone(), 1, group);
        let mut live: BTreeMap<(u32, String), isize> = BTreeMap::new();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut spliced = 0;
        for epoch in 0..8 {
            let mut updates = Vec::new();
            if epoch == 4 || epoch == 6 {
                if epoch == 6 {
                    // One group's file is gone: it is written, the others are kept as they came.
                    std::fs::remove_file(live_dir.join("g0.jsonl")).unwrap();
                }
                spliced += table.spliced;
                table = AuditTable::new(live_dir.clone(), 1, group);
                updates.extend(live.iter().map(|(t, c)| (t.clone(), *c)));
            } else {
                for _ in 0..if epoch == 0 { 300 } else { 12 } {
                    let t = (rng.u32(0..200), "x".repeat(rng.usize(0..4)));
                    let d = match live.get(&t) {
                        Some(c) if rng.bool() => -*c,
                        _ => 1,
                    };
                    *live.entry(t.clone()).or_default() += d;
                    live.retain(|_, c| *c != 0);
                    updates.push((t, d));
                }
            }
            table.epoch(batches(updates), render).unwrap();
            if epoch == 4 {
                // The restart found every file holding its group: none sorted or rewritten.
                assert_eq!(table.shared_groups.len(), 3, "groups left as they came");
                assert!(table.pending.is_empty());
                assert!(table.groups.values().all(|t| t.is_empty()));
            }
            if epoch == 6 {
                let kept: Vec<&String> = table.shared_groups.keys().collect();
                assert_eq!(kept, ["g1", "g2"], "the groups whose files hold them");
                let written: Vec<&String> = table.pending.keys().collect();
                assert_eq!(written, ["g0"], "the group written again");
            }
            let fresh_dir = tmp.path().join(format!("fresh-{epoch}"));
            std::fs::create_dir_all(&fresh_dir).unwrap();
            let mut fresh = AuditTable::new(fresh_dir.clone(), 1, group);
            fresh
                .epoch(
                    batches(live.iter().map(|(t, c)| (t.clone(), *c)).collect()),
                    render,
                )
                .unwrap();
            assert_eq!(read(&live_dir), read(&fresh_dir), "epoch {epoch}");
        }
        spliced += table.spliced;
        assert!(spliced > 300, "lines were copied, not rendered: {spliced}");
        assert!(table.spliced > 100, "after the restart: {}", table.spliced);
    }

    /// `consolidate_buckets` gives what a sort by (bucket, data) and a consolidation of each
    /// bucket give, and the buckets' lengths in order.
    #[test]
    fn bucketed_consolidation_matches_a_sort() {
        proptest::proptest!(|(
            updates in proptest::collection::vec((0u32..60, -2isize..3), 0..400),
            buckets in 1usize..9,
        )| {
            let bucket = |d: &u32| (*d as usize * 7) % buckets;
            let mut expected = Vec::new();
            for b in 0..buckets {
                let mut of_b: Vec<(u32, isize)> =
                    updates.iter().filter(|(d, _)| bucket(d) == b).copied().collect();
                differential_dataflow::consolidation::consolidate(&mut of_b);
                expected.extend(of_b);
            }
            let mut runs_expected: Vec<(usize, usize)> = Vec::new();
            for (d, _) in &expected {
                match runs_expected.last_mut() {
                    Some((b, n)) if *b == bucket(d) => *n += 1,
                    _ => runs_expected.push((bucket(d), 1)),
                }
            }
            let mut got = updates;
            let runs = consolidate_buckets(&mut got, buckets, bucket);
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(runs, runs_expected);
        });
    }

    /// The row digests are those of the rows' bincode bytes, as before they were hashed
    /// without a buffer: manifests and row state written by earlier runs stay valid.
    #[test]
    fn row_digests_hash_the_bincode_bytes() {
        let key = RowKey {
            question: QuestionId(3),
            teacher: TeacherId(1),
            sample: 7,
        };
        let rows: Vec<Row> = (0..5u64)
            .map(|i| Row {
                key,
                question: Question {
                    id: QuestionId(i),
                    source: SourceId(2),
                    priority: 1,
                    domain: Domain::Code,
                    hash: ContentHash(u128::from(i) << 70 | 9),
                    text: TextRef(42),
                    tokens: 10 + i as u32,
                    chars: 50,
                    score: Some(i as i64).into(),
                    difficulty: None.into(),
                },
                answer: Answer {
                    hash: ContentHash(i.into()),
                    text: AnswerText::Stored(TextRef(8)),
                },
            })
            .collect();
        for row in &rows {
            let bytes = bincode::serialize(row).unwrap();
            assert_eq!(row_digest(row), xxhash_rust::xxh3::xxh3_64(&bytes));
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(RENDER_VERSION.as_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(SinkFormat::Jsonl.as_str().as_bytes());
        for row in &rows {
            h.update(&bincode::serialize(row).unwrap());
        }
        assert_eq!(
            rows_digest(rows.iter(), SinkFormat::Jsonl),
            format!("{:016x}", h.digest())
        );
    }
}
