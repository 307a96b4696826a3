//! Ingest: JSONL records become questions (or rejections), and files become upserts.
//!
//! [`parse_question`] turns one line into a [`Question`] (text stored, content hash computed)
//! or a rejection with its reason (`malformed_json`, `missing_field`, `empty_text`,
//! `invalid_utf8`, `too_large`, `unknown_domain`): bad input never stops a run.
//!
//! [`FileTracker`] watches a source's path (a file, or a folder of `*.jsonl`) and turns each new
//! or rewritten file into upserts keyed by question id: every record is an upsert, and an id
//! that a rewritten (or deleted) file no longer holds becomes a tombstone. A file's earlier
//! rejections are retracted when it is rewritten. An id belongs to the last file that sent it.
//!
//! [`BenchmarkTracker`] does the same for benchmark items, from `.jsonl`, `.json` (a top-level
//! array of objects) and `.parquet` files ([`benchmark_records`]).

use crate::recipe::{BenchmarkSpec, FieldMap, SourceSpec};
use crate::store::Store;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{
    BenchItem, Detail, Domain, Question, QuestionId, Reason, Rejection, SourceId, StepId, Subject,
};

/// A parsed question: the dataflow record and its external id.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub question: Question,
    pub ext_id: String,
}

/// Why a line did not become a question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub reason: Reason,
    pub message: String,
}

fn err(reason: Reason, message: impl Into<String>) -> LineError {
    LineError {
        reason,
        message: message.into(),
    }
}

pub fn field_string(
    obj: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<String, LineError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(err(
            Reason::MissingField,
            format!("missing field {field:?}"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(err(
            Reason::MalformedJson,
            format!(
                "field {field:?} is {}, expected a string",
                match other {
                    Value::Bool(_) => "a boolean",
                    Value::Array(_) => "an array",
                    Value::Object(_) => "an object",
                    _ => "not a string",
                }
            ),
        )),
    }
}

/// Parses one JSON object (bytes of one line) into an object map.
pub fn parse_object(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<serde_json::Map<String, Value>, LineError> {
    if bytes.len() > max_bytes {
        return Err(err(
            Reason::TooLarge,
            format!(
                "record of {} bytes is over the limit of {max_bytes}",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| err(Reason::InvalidUtf8, format!("invalid UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(err(Reason::MalformedJson, "expected a JSON object")),
        Err(e) => Err(err(Reason::MalformedJson, format!("invalid JSON: {e}"))),
    }
}

/// Where a record comes from: the source it belongs to (a file source, or a Kafka topic).
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub spec: &'a SourceSpec,
    /// The source's name: the entry's name for files, the topic for Kafka.
    pub name: &'a str,
    pub source: SourceId,
}

/// Parses one record of a question source, storing its text and name on success. `id` (a
/// Kafka message key) takes precedence over the id field.
pub fn parse_question(
    origin: Origin,
    bytes: &[u8],
    id: Option<&str>,
    store: &Store,
) -> Result<Parsed, LineError> {
    let spec = origin.spec;
    let obj = parse_object(bytes, spec.max_record_bytes)?;
    let fields: &FieldMap = &spec.fields;
    let ext_id = match id {
        Some(id) => id.to_string(),
        None => field_string(&obj, &fields.id)?,
    };
    let text = field_string(&obj, &fields.question)?;
    if text.trim().is_empty() {
        return Err(err(
            Reason::EmptyText,
            format!("field {:?} is empty", fields.question),
        ));
    }
    let domain = match obj.get(&fields.domain) {
        Some(Value::String(d)) => Domain::parse(d).ok_or_else(|| {
            err(
                Reason::UnknownDomain,
                format!("domain {d:?} is not one of math, code, science"),
            )
        })?,
        Some(Value::Null) | None => spec.domain.ok_or_else(|| {
            err(
                Reason::UnknownDomain,
                format!(
                    "no domain: the record has no {:?} field and source {:?} sets no domain",
                    fields.domain, spec.name
                ),
            )
        })?,
        Some(_) => {
            return Err(err(
                Reason::UnknownDomain,
                format!("field {:?} is not a string", fields.domain),
            ))
        }
    };
    let id = hash::question_id(origin.name, &ext_id);
    let text_ref = hash::text_ref(&text);
    store.put_text(text_ref, &text);
    store.put_name(id, origin.source, &ext_id);
    Ok(Parsed {
        question: Question {
            id,
            source: origin.source,
            priority: spec.priority,
            domain,
            hash: hash::content_hash(&text),
            text: text_ref,
            tokens: hash::whitespace_tokens(&text),
            chars: text.chars().count() as u32,
            score: None.into(),
            difficulty: None.into(),
        },
        ext_id,
    })
}

/// The lines of a file's bytes, with 1-based line numbers; blank lines are skipped.
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(|b| b.is_ascii_whitespace()))
}

/// The files a path stands for: the file itself, or the `*.jsonl` files of a folder (sorted).
pub fn list_files(path: &Path) -> Vec<PathBuf> {
    list_files_with(path, &["jsonl", "json"])
}

/// The files a benchmark path stands for: the file itself, or the `*.jsonl`, `*.json` and
/// `*.parquet` files of a folder (sorted).
pub fn list_benchmark_files(path: &Path) -> Vec<PathBuf> {
    list_files_with(path, &["jsonl", "json", "parquet"])
}

fn list_files_with(path: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file()
                            && p.extension()
                                .is_some_and(|x| extensions.iter().any(|e| x == *e))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    }
}

/// Which worker owns a file.
pub fn owner(path: &Path, peers: usize) -> usize {
    (hash::hash64(path.to_string_lossy().as_bytes()) % peers as u64) as usize
}

/// A file's `stat` as far as telling a rewrite apart goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileStat {
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
    inode: u64,
    device: u64,
}

fn file_stat(path: &Path) -> Option<FileStat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStat {
        len: m.len(),
        modified_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        changed_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        inode: m.ino(),
        device: m.dev(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// What one poll of a question source produced.
#[derive(Default)]
pub struct SourceDelta {
    /// `(id, Some(question))` upserts and `(id, None)` tombstones.
    pub upserts: Vec<(QuestionId, Option<Question>)>,
    /// Rejections to add (+1) and retract (-1).
    pub rejections: Vec<(Rejection, isize)>,
    pub files_read: usize,
    pub bytes_read: u64,
}

struct FileState {
    fingerprint: Fingerprint,
    content: u128,
    /// The ids the file holds, sorted.
    ids: Vec<QuestionId>,
    rejections: Vec<Rejection>,
}

/// What a file parsed into: its questions in file order (the last record of an id wins), their
/// external ids, and its rejections.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct ParsedFile {
    pub questions: Vec<Question>,
    /// The questions' external ids, side by side; `ends[i]` is where question `i`'s ends.
    pub names: String,
    pub ends: Vec<u32>,
    pub rejections: Vec<Rejection>,
    /// The store's mark when the parse was saved, its texts written through: a store that
    /// still covers it holds every text the parse refers to.
    pub texts: Option<crate::store::TextsMark>,
}

impl ParsedFile {
    fn name(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.names[start..self.ends[i] as usize]
    }
}

/// Version of the parse cache's key and format: bump it when parsing or the `Question` record
/// changes (normalization and hashing changes bump [`hash::HASH_VERSION`], also in the key).
const PARSE_CACHE_VERSION: u32 = 2;

/// Parses kept across runs (`OUT/.store/parsed`), one bincode [`ParsedFile`] per file read,
/// named by a hash of the parse cache version, the source's settings, the file's path and
/// its content. A restart's replay of an unchanged file loads its parse instead of parsing,
/// normalizing and hashing every record again: at the paper's scale that was 40% of a replay.
/// A parse is used only if every text it refers to is in the store (the store outlives runs,
/// see [`crate::store::DiskTexts`]); otherwise the file is parsed again. The store's mark,
/// saved with the parse, tells that at once; without it (a store made anew or cut back since),
/// each text is looked up. One per process,
/// shared by its workers' trackers. Not used in a cluster, whose processes learn each other's
/// texts only from what ingest journals.
#[derive(Debug)]
pub struct ParseCache {
    dir: PathBuf,
    /// Files whose parse was loaded, and files parsed.
    pub loaded: std::sync::atomic::AtomicU64,
    pub parsed: std::sync::atomic::AtomicU64,
    /// The entries of the files the workers hold now.
    live: std::sync::Mutex<BTreeSet<PathBuf>>,
}

impl ParseCache {
    pub fn new(dir: PathBuf) -> ParseCache {
        ParseCache {
            dir,
            loaded: Default::default(),
            parsed: Default::default(),
            live: Default::default(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.live.lock().expect("parse cache lock")
    }

    fn path(&self, spec: &SourceSpec, file: &Path, content: u128) -> PathBuf {
        let key = format!(
            "{PARSE_CACHE_VERSION}.{}\n{spec:?}\n{}\n{content:032x}",
            hash::HASH_VERSION,
            file.display()
        );
        self.dir
            .join(format!("{:032x}.bin", hash::hash128(key.as_bytes())))
    }

    /// The parse of `file` (content hash `content`): loaded when its entry is usable (the
    /// questions' names then go into the store), else made by `parse` and saved.
    fn get_or_parse(
        &self,
        spec: &SourceSpec,
        source: SourceId,
        (file, content): (&Path, u128),
        store: &Store,
        parse: impl FnOnce() -> (ParsedFile, bool),
    ) -> ParsedFile {
        use std::sync::atomic::Ordering::Relaxed;
        let at = self.path(spec, file, content);
        let parsed = match self.load(&at, store) {
            Some(parsed) => {
                self.loaded.fetch_add(1, Relaxed);
                store.put_names(
                    source,
                    parsed
                        .questions
                        .iter()
                        .enumerate()
                        .map(|(i, q)| (q.id, parsed.name(i))),
                );
                parsed
            }
            None => {
                self.parsed.fetch_add(1, Relaxed);
                let (mut parsed, of_content) = parse();
                if of_content {
                    self.save(&at, &mut parsed, store);
                }
                parsed
            }
        };
        self.live().insert(at);
        parsed
    }

    /// Where the content hash of `file` is kept with the `stat` it was read under.
    fn stat_path(&self, file: &Path) -> PathBuf {
        let key = format!("{PARSE_CACHE_VERSION}\n{}", file.display());
        self.dir
            .join(format!("{:032x}.stat", hash::hash128(key.as_bytes())))
    }

    /// The content hash of `file` as a previous read recorded it, if the file's `stat` (size,
    /// modification and change times in ns, inode) is still what it was then: a restart then
    /// neither reads nor hashes a file it has a parse of (2.2 GB at the paper's scale).
    fn known_content(&self, file: &Path, stat: &FileStat) -> Option<u128> {
        let bytes = std::fs::read(self.stat_path(file)).ok()?;
        let (recorded, content): (FileStat, u128) = bincode::deserialize(&bytes).ok()?;
        (recorded == *stat).then_some(content)
    }

    /// Records that `file`, under `stat` (taken before it was read), has content hash `content`.
    fn remember_content(&self, file: &Path, stat: &FileStat, content: u128) {
        let path = self.stat_path(file);
        let bytes = bincode::serialize(&(stat, content)).expect("serializes");
        if let Err(e) = crate::sink::write_atomic(&path, &bytes) {
            tracing::warn!(file = %path.display(), "could not record a file's content hash: {e}");
        }
    }

    /// Removes the entry of a file's earlier content (rewritten or deleted).
    fn forget(&self, spec: &SourceSpec, file: &Path, content: u128) {
        let at = self.path(spec, file, content);
        self.live().remove(&at);
        let _ = std::fs::remove_file(at);
    }

    /// After a run that ended cleanly: removes the entries of files no worker holds (files
    /// rewritten or deleted while no run was watching them).
    pub fn sweep(&self) {
        let live = self.live();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "bin") && !live.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn load(&self, path: &Path, store: &Store) -> Option<ParsedFile> {
        let bytes = std::fs::read(path).ok()?;
        let parsed: ParsedFile = bincode::deserialize(&bytes)
            .map_err(|e| tracing::warn!(file = %path.display(), "ignoring an unreadable parse cache entry: {e}"))
            .ok()?;
        let complete = parsed.ends.len() == parsed.questions.len()
            && parsed
                .ends
                .last()
                .is_none_or(|e| *e as usize == parsed.names.len())
            && (parsed.texts.is_some_and(|m| store.covers(m))
                || parsed.questions.iter().all(|q| store.has_text(q.text)));
        complete.then_some(parsed)
    }

    fn save(&self, path: &Path, parsed: &mut ParsedFile, store: &Store) {
        // The texts first: a parse is only of use with its texts in the store.
        let saved = store
            .flush_texts()
            .and_then(|mark| {
                parsed.texts = mark;
                std::fs::create_dir_all(&self.dir)
            })
            .and_then(|_| bincode::serialize(&*parsed).map_err(std::io::Error::other))
            .and_then(|bytes| crate::sink::write_atomic(path, &bytes));
        if let Err(e) = saved {
            tracing::warn!(file = %path.display(), "could not save a parse cache entry: {e}");
        }
    }
}

/// Tracks the files of one question source that this worker owns.
pub struct FileTracker {
    pub spec: SourceSpec,
    pub source: SourceId,
    files: BTreeMap<PathBuf, FileState>,
    cache: Option<std::sync::Arc<ParseCache>>,
}

impl FileTracker {
    pub fn new(spec: SourceSpec, store: &Store, cache: Option<std::sync::Arc<ParseCache>>) -> Self {
        let source = hash::source_id(&spec.name);
        store.register_source(source, &spec.name);
        FileTracker {
            spec,
            source,
            files: BTreeMap::new(),
            cache,
        }
    }

    /// Reads new, rewritten and deleted files owned by `worker`; returns their upserts.
    pub fn poll(&mut self, worker: usize, peers: usize, store: &Store) -> SourceDelta {
        let mut delta = SourceDelta::default();
        let present: Vec<PathBuf> = self
            .spec
            .input
            .path()
            .map(list_files)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| owner(p, peers) == worker)
            .collect();
        // Deleted files: tombstones for their ids, their rejections retracted.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let state = self.files.remove(&path).expect("listed");
            self.forget_parse(&path, state.content);
            delta
                .upserts
                .extend(state.ids.into_iter().map(|id| (id, None)));
            delta
                .rejections
                .extend(state.rejections.into_iter().map(|r| (r, -1)));
        }
        for path in present {
            let Some(fp) = fingerprint(&path) else {
                continue;
            };
            if self.files.get(&path).is_some_and(|s| s.fingerprint == fp) {
                continue;
            }
            // With a parse cache, a file whose stat is what it was when its content was hashed
            // is not read (unless its parse has to be made again).
            let stat = self.cache.as_ref().and_then(|_| file_stat(&path));
            let known = match (&self.cache, &stat) {
                (Some(c), Some(stat)) => c.known_content(&path, stat),
                _ => None,
            };
            let (mut bytes, content) = match known {
                Some(content) => (None, content),
                None => {
                    let Ok(bytes) = std::fs::read(&path) else {
                        continue;
                    };
                    let content = hash::hash128(&bytes);
                    (Some(bytes), content)
                }
            };
            if let Some(state) = self.files.get_mut(&path) {
                if state.content == content {
                    state.fingerprint = fp;
                    continue;
                }
            }
            delta.files_read += 1;
            delta.bytes_read += fp.len;
            let parsed = match &self.cache {
                Some(c) => {
                    let parsed =
                        c.get_or_parse(&self.spec, self.source, (&path, content), store, || {
                            // (The file's bytes: read now if its stat stood for them.)
                            let bytes = bytes.take().or_else(|| std::fs::read(&path).ok());
                            match bytes {
                                Some(bytes) => {
                                    // Rewritten since its stat was taken: parsed as it is now,
                                    // not kept under the older content's key; the next poll
                                    // sees the new stat and settles it.
                                    let same = hash::hash128(&bytes) == content;
                                    (self.read_file(&path, &bytes, store), same)
                                }
                                None => (ParsedFile::default(), false),
                            }
                        });
                    if known.is_none() {
                        if let Some(stat) = &stat {
                            c.remember_content(&path, stat, content);
                        }
                    }
                    parsed
                }
                None => self.read_file(&path, bytes.as_deref().expect("read"), store),
            };
            let mut ids: Vec<QuestionId> = parsed.questions.iter().map(|q| q.id).collect();
            ids.sort_unstable();
            if let Some(old) = self.files.remove(&path) {
                self.forget_parse(&path, old.content);
                delta.upserts.extend(
                    old.ids
                        .iter()
                        .filter(|id| ids.binary_search(id).is_err())
                        .map(|id| (*id, None)),
                );
                delta
                    .rejections
                    .extend(old.rejections.into_iter().map(|r| (r, -1)));
            }
            delta
                .upserts
                .extend(parsed.questions.into_iter().map(|q| (q.id, Some(q))));
            delta
                .rejections
                .extend(parsed.rejections.iter().cloned().map(|r| (r, 1)));
            self.files.insert(
                path,
                FileState {
                    fingerprint: fp,
                    content,
                    ids,
                    rejections: parsed.rejections,
                },
            );
        }
        delta
    }

    /// Removes the cached parse of a file's earlier content (rewritten or deleted).
    fn forget_parse(&self, path: &Path, content: u128) {
        if let Some(c) = &self.cache {
            c.forget(&self.spec, path, content);
        }
    }

    fn read_file(&self, path: &Path, bytes: &[u8], store: &Store) -> ParsedFile {
        // The last record of an id in a file wins.
        let mut latest: HashMap<QuestionId, (Question, String)> = HashMap::new();
        let mut order = Vec::new();
        let mut rejections = Vec::new();
        for (line, record) in lines(bytes) {
            let origin = Origin {
                spec: &self.spec,
                name: &self.spec.name,
                source: self.source,
            };
            match parse_question(origin, record, None, store) {
                Ok(p) => {
                    let id = p.question.id;
                    if latest.insert(id, (p.question, p.ext_id)).is_none() {
                        order.push(id);
                    }
                }
                Err(e) => rejections.push(Rejection {
                    subject: Subject::Input {
                        source: self.source,
                        location: format!("{}:{line}", path.display()),
                    },
                    step: StepId::INGEST,
                    reason: e.reason,
                    detail: Detail::Text(e.message.into()),
                }),
            }
        }
        let mut parsed = ParsedFile {
            questions: Vec::with_capacity(order.len()),
            ends: Vec::with_capacity(order.len()),
            rejections,
            ..ParsedFile::default()
        };
        for id in order {
            let (q, name) = latest.remove(&id).expect("recorded");
            parsed.questions.push(q);
            parsed.names.push_str(&name);
            parsed.ends.push(
                u32::try_from(parsed.names.len()).expect("a file's external ids under 4 GiB"),
            );
        }
        parsed
    }
}

/// Tracks the files of one benchmark entry that this worker owns; emits item diffs.
pub struct BenchmarkTracker {
    pub spec: BenchmarkSpec,
    files: BTreeMap<PathBuf, (Fingerprint, Vec<BenchItem>)>,
}

impl BenchmarkTracker {
    pub fn new(spec: BenchmarkSpec) -> Self {
        BenchmarkTracker {
            spec,
            files: BTreeMap::new(),
        }
    }

    /// The benchmark name of a file: the entry's name for a file, the file stem in a folder.
    fn bench_name(&self, file: &Path) -> String {
        if self.spec.input.path().is_some_and(|p| p.is_dir()) {
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.spec.name.clone())
        } else {
            self.spec.name.clone()
        }
    }

    /// Item diffs for new, rewritten and deleted files owned by `worker`, and the problems
    /// found in them (benchmark lines that cannot be read are reported, not fatal).
    pub fn poll(&mut self, worker: usize, peers: usize) -> (Vec<(BenchItem, isize)>, Vec<String>) {
        let mut diffs = Vec::new();
        let mut problems = Vec::new();
        let present: Vec<PathBuf> = self
            .spec
            .input
            .path()
            .map(list_benchmark_files)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| owner(p, peers) == worker)
            .collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let (_, items) = self.files.remove(&path).expect("listed");
            diffs.extend(items.into_iter().map(|i| (i, -1)));
        }
        for path in present {
            let Some(fp) = fingerprint(&path) else {
                continue;
            };
            if self.files.get(&path).is_some_and(|(f, _)| *f == fp) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let bench = self.bench_name(&path);
            let mut by_id: BTreeMap<String, BenchItem> = BTreeMap::new();
            for record in benchmark_records(&path, &bytes, &self.spec.fields) {
                match record {
                    Ok((item, text)) if !text.trim().is_empty() => {
                        by_id.insert(
                            item.clone(),
                            BenchItem {
                                bench: bench.clone(),
                                item,
                                text,
                            },
                        );
                    }
                    Ok(_) => {}
                    Err(problem) => problems.push(problem),
                }
            }
            let items: Vec<BenchItem> = by_id.into_values().collect();
            let old = self.files.remove(&path).map(|(_, i)| i).unwrap_or_default();
            let old_set: HashSet<&BenchItem> = old.iter().collect();
            let new_set: HashSet<&BenchItem> = items.iter().collect();
            diffs.extend(
                old.iter()
                    .filter(|i| !new_set.contains(i))
                    .cloned()
                    .map(|i| (i, -1)),
            );
            diffs.extend(
                items
                    .iter()
                    .filter(|i| !old_set.contains(i))
                    .cloned()
                    .map(|i| (i, 1)),
            );
            self.files.insert(path, (fp, items));
        }
        (diffs, problems)
    }
}

/// A benchmark record, `(item id, text)`, or why it cannot be read (naming the file).
pub type BenchRecord = Result<(String, String), String>;

/// The `(item id, text)` records of a benchmark file, by its extension: `.parquet` (columns
/// named by the field map: strings or integers), `.json` (a top-level array of objects; a
/// `.json` file that is not an array is read as JSONL) or JSONL. A record or file that cannot
/// be read is an `Err` naming the file (and the line, item or row).
pub fn benchmark_records(path: &Path, bytes: &[u8], fields: &FieldMap) -> Vec<BenchRecord> {
    let record = |obj: &serde_json::Map<String, Value>| -> Result<(String, String), LineError> {
        Ok((
            field_string(obj, &fields.id)?,
            field_string(obj, &fields.question)?,
        ))
    };
    let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
    if ext == "parquet" {
        return parquet_records(path, fields)
            .unwrap_or_else(|e| vec![Err(format!("{}: {e}", path.display()))]);
    }
    let trimmed = bytes.trim_ascii_start();
    if ext == "json" && trimmed.starts_with(b"[") {
        return match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(obj) => record(obj)
                        .map_err(|e| format!("{}: item {i}: {}", path.display(), e.message)),
                    _ => Err(format!(
                        "{}: item {i}: expected a JSON object",
                        path.display()
                    )),
                })
                .collect(),
            Ok(_) => vec![Err(format!(
                "{}: expected a top-level JSON array of objects",
                path.display()
            ))],
            Err(e) => vec![Err(format!("{}: invalid JSON: {e}", path.display()))],
        };
    }
    lines(bytes)
        .map(|(line, bytes)| {
            parse_object(bytes, 64 << 20)
                .and_then(|obj| record(&obj))
                .map_err(|e| format!("{}:{line}: {}", path.display(), e.message))
        })
        .collect()
}

/// The records of a Parquet benchmark file; `Err` for a file that cannot be read at all.
fn parquet_records(path: &Path, fields: &FieldMap) -> Result<Vec<BenchRecord>, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let mut out = Vec::new();
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| format!("reading Parquet rows: {e}"))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column {name:?}"))
        };
        let (ids, texts) = (column(&fields.id)?, column(&fields.question)?);
        for i in 0..batch.num_rows() {
            let cell = |col: &arrow_array::ArrayRef, name: &str| {
                cell_string(col, i)
                    .and_then(|v| v.ok_or_else(|| format!("missing field {name:?}")))
                    .map_err(|e| format!("{}: row {}: {e}", path.display(), row + i))
            };
            out.push(cell(ids, &fields.id).and_then(|id| Ok((id, cell(texts, &fields.question)?))));
        }
        row += batch.num_rows();
    }
    Ok(out)
}

/// A Parquet cell as a string: string columns as they are, integers in decimal; `None` for
/// a null.
fn cell_string(col: &arrow_array::ArrayRef, i: usize) -> Result<Option<String>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type};
    use arrow_array::types::{UInt16Type, UInt32Type, UInt64Type, UInt8Type};
    use arrow_schema::DataType;
    if col.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => col.as_string_view().value(i).to_string(),
        DataType::Int8 => col.as_primitive::<Int8Type>().value(i).to_string(),
        DataType::Int16 => col.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => col.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => col.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::UInt8 => col.as_primitive::<UInt8Type>().value(i).to_string(),
        DataType::UInt16 => col.as_primitive::<UInt16Type>().value(i).to_string(),
        DataType::UInt32 => col.as_primitive::<UInt32Type>().value(i).to_string(),
        DataType::UInt64 => col.as_primitive::<UInt64Type>().value(i).to_string(),
        other => return Err(format!("a {other} column, expected strings or integers")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SourceSpec {
        SourceSpec {
            name: "s".into(),
            input: crate::recipe::Input::Files(PathBuf::from("/nonexistent")),
            domain: Some(Domain::Math),
            priority: 0,
            fields: FieldMap {
                question: "problem".into(),
                ..FieldMap::default()
            },
            max_record_bytes: 1000,
        }
    }

    fn reason(line: &[u8]) -> Reason {
        let store = Store::new();
        let spec = spec();
        let origin = Origin {
            spec: &spec,
            name: "s",
            source: SourceId(1),
        };
        parse_question(origin, line, None, &store)
            .expect_err("should be rejected")
            .reason
    }

    #[test]
    fn bad_lines_get_reasons() {
        assert_eq!(reason(b"{not json"), Reason::MalformedJson);
        assert_eq!(reason(b"[1,2]"), Reason::MalformedJson);
        assert_eq!(reason(br#"{"id": "1"}"#), Reason::MissingField);
        assert_eq!(reason(br#"{"problem": "x"}"#), Reason::MissingField);
        assert_eq!(
            reason(br#"{"id": "1", "problem": "  "}"#),
            Reason::EmptyText
        );
        assert_eq!(
            reason(b"{\"id\": \"1\", \"problem\": \"\xff\"}"),
            Reason::InvalidUtf8
        );
        assert_eq!(
            reason(br#"{"id": "1", "problem": "x", "domain": "poetry"}"#),
            Reason::UnknownDomain
        );
        assert_eq!(reason(&vec![b'x'; 2000]), Reason::TooLarge);
    }

    #[test]
    fn good_line_is_stored() {
        let store = Store::new();
        let spec = spec();
        let origin = Origin {
            spec: &spec,
            name: "s",
            source: SourceId(1),
        };
        let p = parse_question(
            origin,
            br#"{"id": 7, "problem": "What is  2+2?"}"#,
            None,
            &store,
        )
        .unwrap();
        assert_eq!(p.ext_id, "7");
        assert_eq!(p.question.tokens, 3);
        assert_eq!(&*store.text(p.question.text).unwrap(), "What is  2+2?");
        assert_eq!(&*store.question_name(p.question.id), "7");
    }
}
