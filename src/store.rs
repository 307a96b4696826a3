//! The process-wide store: question and answer texts, and what the sink needs to name things.
//!
//! Dataflow records carry ids and hashes only (DESIGN.md decision 3). The store maps them back:
//! [`TextRef`] to text (content-addressed: [`DiskTexts`], an append-only file on disk with an
//! in-memory index, for runs; [`MemTexts`] for tests), [`QuestionId`] to the question's
//! source and external id, [`SourceId`] to the source's name. Every worker of a process shares
//! one store; ingest writes a question's entries before the question enters the dataflow, so
//! any step or sink that sees the question finds them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use thoughtflow_operators::record::{QuestionId, SourceId, TextRef};
use thoughtflow_operators::text::{MemTexts, TextLookup};

use crate::text_index::{self, SortedIndex, ENTRY as INDEX_ENTRY};

const SHARDS: usize = 64;

/// One entry of the store, as it travels between the processes of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum StoreDelta {
    Text(TextRef, String),
    Name(QuestionId, SourceId, String),
    Source(SourceId, String),
}

thread_local! {
    /// What this thread put into the store since its last [`Store::drain_journal`] (cluster
    /// mode only): a worker ships it to the other processes with the epoch it ingested.
    static JOURNAL: RefCell<Vec<StoreDelta>> = const { RefCell::new(Vec::new()) };
}

/// Texts on disk: one append-only file of `[key: 16 bytes][length: u32][UTF-8 bytes]` records,
/// and an index from key to (offset, length), about 30 bytes per text instead of the text
/// itself. Reads are positioned reads (`pread`), served by the page cache when hot.
///
/// The store outlives a run: beside the texts, `texts-P.idx` logs the index as fixed-size
/// `[key: 16][offset: u64][length: u32]` entries, appended after their texts, and
/// `texts-P.sorted` holds the log's entries up to some point sorted, mapped into memory and
/// searched in place (see [`crate::text_index`]). Opening the store maps that base and loads
/// only the log entries after it into hash maps. So a restart's replay finds every text it put
/// before, writes none of them again, and does not wait to load millions of entries. A log
/// entry whose text is not wholly in the file (a crash between the two appends) is dropped
/// with everything after it, and both files are cut back to what the kept entries cover.
pub struct DiskTexts {
    /// The sorted, mapped entries of earlier runs.
    base: Option<SortedIndex>,
    /// The entries after the base, by shard.
    index: Vec<RwLock<TextIndex>>,
    writer: Mutex<TextWriter>,
    /// Bytes of the file known to be written through to the OS (readable with `pread`).
    flushed: AtomicU64,
    reader: std::fs::File,
    sorted_path: std::path::PathBuf,
    /// This store's identity (`texts-P.id`): drawn anew when the store is created or a
    /// torn end is cut off, so that a [`TextsMark`] never outlives the texts it counted.
    id: u64,
}

/// A point in a text store's history: its identity and how many texts it held. Every text
/// put before the mark is in the store as long as the store's identity is the same and it
/// holds at least as many texts ([`Store::covers`]): texts are only ever appended, and a store
/// whose end is cut back, or made anew, takes a new identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TextsMark {
    pub store: u64,
    pub texts: u64,
}

/// One shard of a [`DiskTexts`] index's entries after its base: key to (offset, length).
type TextIndex = thoughtflow_operators::hash::FastMap<TextRef, (u64, u32)>;

/// The appending side of a [`DiskTexts`].
struct TextWriter {
    data: std::io::BufWriter<std::fs::File>,
    /// Length of the texts file, counting what is still buffered.
    len: u64,
    index: std::io::BufWriter<std::fs::File>,
    /// Entries of the index log, counting what is still buffered.
    entries: u64,
    /// Entries the base on disk covers, if this store wrote it (its mapped base is older).
    written_base: Option<u64>,
}

impl DiskTexts {
    /// Opens the store file at `path` (created when absent) and its index beside it.
    pub fn open(path: &Path) -> std::io::Result<DiskTexts> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let data = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let index_path = path.with_extension("idx");
        let sorted_path = path.with_extension("sorted");
        let index_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&index_path)?;
        let data_len = data.metadata()?.len();
        let log_entries = index_file.metadata()?.len() / INDEX_ENTRY as u64;
        let base = SortedIndex::open(&sorted_path, log_entries, data_len);
        // The log after the base: entries are appended in file order, the kept ones are a
        // prefix of it.
        let (start, mut end) = base
            .as_ref()
            .map_or((0, 0), |b| (b.covers_entries, b.covers_bytes));
        let mut tail = vec![0u8; ((log_entries - start) as usize) * INDEX_ENTRY];
        index_file.read_exact_at(&mut tail, start * INDEX_ENTRY as u64)?;
        let mut index: Vec<RwLock<TextIndex>> = (0..SHARDS)
            .map(|_| {
                let mut shard = TextIndex::default();
                shard.reserve(tail.len() / INDEX_ENTRY / SHARDS * 9 / 8);
                RwLock::new(shard)
            })
            .collect();
        let mut kept = start;
        for entry in tail.chunks_exact(INDEX_ENTRY) {
            let (key, at, len) = text_index::parse_entry(entry);
            if at < 20 || at + len as u64 > data_len {
                break;
            }
            index[(key.0 as usize) % SHARDS]
                .get_mut()
                .expect("text index lock")
                .insert(key, (at, len));
            kept += 1;
            end = end.max(at + len as u64);
        }
        let id_path = path.with_extension("id");
        let kept_id = std::fs::read(&id_path)
            .ok()
            .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)));
        let cut = kept < log_entries || end < data_len;
        let id = match kept_id {
            Some(id) if !cut && kept > 0 => id,
            _ => {
                let id = fresh_id();
                crate::sink::write_atomic(&id_path, &id.to_le_bytes())?;
                id
            }
        };
        data.set_len(end)?;
        index_file.set_len(kept * INDEX_ENTRY as u64)?;
        let append = |file: &std::fs::File, at: u64| -> std::io::Result<std::fs::File> {
            let mut f = file.try_clone()?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at))?;
            Ok(f)
        };
        Ok(DiskTexts {
            base,
            index,
            writer: Mutex::new(TextWriter {
                data: std::io::BufWriter::with_capacity(1 << 20, append(&data, end)?),
                len: end,
                index: std::io::BufWriter::with_capacity(
                    1 << 16,
                    append(&index_file, kept * INDEX_ENTRY as u64)?,
                ),
                entries: kept,
                written_base: None,
            }),
            flushed: AtomicU64::new(end),
            reader: data,
            sorted_path,
            id,
        })
    }

    fn shard(&self, key: TextRef) -> &RwLock<TextIndex> {
        &self.index[(key.0 as usize) % SHARDS]
    }

    /// Where `key`'s text is: (offset, length).
    fn locate(&self, key: TextRef) -> Option<(u64, u32)> {
        if let Some(found) = self.base.as_ref().and_then(|b| b.get(key)) {
            return Some(found);
        }
        self.shard(key)
            .read()
            .expect("text index lock")
            .get(&key)
            .copied()
    }

    pub fn contains(&self, key: TextRef) -> bool {
        self.locate(key).is_some()
    }

    /// Stores `text` under `key` (a [`thoughtflow_operators::hash::text_ref`]); a no-op when
    /// the key is present. Panics if the disk fails: the run cannot go on without its texts.
    pub fn put_with_key(&self, key: TextRef, text: &str) {
        if self.contains(key) {
            return;
        }
        let mut w = self.writer.lock().expect("text writer lock");
        let mut shard = self.shard(key).write().expect("text index lock");
        if shard.contains_key(&key) {
            return;
        }
        let w = &mut *w;
        let at = w.len + 20;
        let entry = text_index::encode_entry((key, at, text.len() as u32));
        let write = w
            .data
            .write_all(&key.0.to_le_bytes())
            .and_then(|_| w.data.write_all(&(text.len() as u32).to_le_bytes()))
            .and_then(|_| w.data.write_all(text.as_bytes()))
            .and_then(|_| w.index.write_all(&entry));
        if let Err(e) = write {
            panic!("writing the text store: {e}");
        }
        w.len += 20 + text.len() as u64;
        w.entries += 1;
        shard.insert(key, (at, text.len() as u32));
    }

    /// Writes what is buffered through to the OS: the texts, then their index entries.
    pub fn flush(&self) -> std::io::Result<()> {
        self.flush_marked().map(|_| ())
    }

    /// [`DiskTexts::flush`], and the mark of what it wrote through.
    pub fn flush_marked(&self) -> std::io::Result<TextsMark> {
        let mut w = self.writer.lock().expect("text writer lock");
        self.flush_data(&mut w)?;
        w.index.flush()?;
        Ok(TextsMark {
            store: self.id,
            texts: w.entries,
        })
    }

    /// The mark of every text put so far.
    pub fn mark(&self) -> TextsMark {
        TextsMark {
            store: self.id,
            texts: self.writer.lock().expect("text writer lock").entries,
        }
    }

    /// Rewrites the sorted base of the index with every entry logged so far, when the log
    /// past the base has grown to a sixteenth of it or more (at a run's end: the next run
    /// then maps it instead of loading the log). Returns whether it did.
    pub fn compact(&self) -> std::io::Result<bool> {
        let mut w = self.writer.lock().expect("text writer lock");
        self.flush_data(&mut w)?;
        w.index.flush()?;
        let (covers, base_len) = self
            .base
            .as_ref()
            .map_or((0, 0), |b| (b.covers_entries, b.len() as u64));
        let tail = w.entries - covers;
        if tail == 0 || tail * 16 < base_len || w.written_base == Some(w.entries) {
            return Ok(false);
        }
        let mut bytes = vec![0u8; tail as usize * INDEX_ENTRY];
        w.index
            .get_ref()
            .read_exact_at(&mut bytes, covers * INDEX_ENTRY as u64)?;
        let entries = bytes
            .chunks_exact(INDEX_ENTRY)
            .map(text_index::parse_entry)
            .collect();
        drop(bytes);
        text_index::write_merged(
            &self.sorted_path,
            self.base.as_ref(),
            entries,
            w.entries,
            w.len,
        )?;
        w.written_base = Some(w.entries);
        Ok(true)
    }

    /// Writes the buffered texts through to the OS, so that `pread` sees them.
    fn flush_data(&self, w: &mut TextWriter) -> std::io::Result<()> {
        w.data.flush()?;
        self.flushed.store(w.len, Ordering::Release);
        Ok(())
    }

    /// Makes sure the bytes `[at, at + len)` are written through to the OS (so `pread` sees them).
    fn ensure_flushed(&self, at: u64, len: u32) {
        if at + len as u64 > self.flushed.load(Ordering::Acquire) {
            let mut w = self.writer.lock().expect("text writer lock");
            if let Err(e) = self.flush_data(&mut w) {
                panic!("flushing the text store: {e}");
            }
        }
    }

    /// Bytes of the texts file.
    pub fn bytes(&self) -> u64 {
        self.writer.lock().expect("text writer lock").len
    }
}

impl TextLookup for DiskTexts {
    fn get(&self, key: TextRef) -> Option<Arc<str>> {
        let mut text = None;
        self.visit(key, &mut |t| text = Some(Arc::from(t)));
        text
    }

    fn visit(&self, key: TextRef, f: &mut dyn FnMut(&str)) -> bool {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let Some(at) = self.locate(key) else {
            return false;
        };
        self.ensure_flushed(at.0, at.1);
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(at.1 as usize, 0);
            if self.reader.read_exact_at(&mut buf, at.0).is_err() {
                return false;
            }
            match std::str::from_utf8(&buf) {
                Ok(text) => {
                    f(text);
                    true
                }
                Err(_) => false,
            }
        })
    }

    /// Texts in file order: each read takes a text and the wanted ones that follow it within
    /// [`READ_SPAN`], so that matching every question reads the file sequentially, a few
    /// thousand reads in all instead of one per text.
    fn visit_many(&self, keys: &[TextRef], f: &mut dyn FnMut(usize, &str)) -> usize {
        let mut located: Vec<(u64, u32, usize)> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if let Some((at, len)) = self.locate(*key) {
                located.push((at, len, i));
            }
        }
        located.sort_unstable();
        if let Some(end) = located.iter().map(|(at, len, _)| at + *len as u64).max() {
            self.ensure_flushed(end, 0);
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = 0u64;
        let mut found = 0;
        for (k, &(at, len, i)) in located.iter().enumerate() {
            let end = at + len as u64;
            if at < buf_at || end > buf_at + buf.len() as u64 {
                // Read from this text to the end of the last wanted one within reach.
                let reach = located[k..]
                    .iter()
                    .take_while(|(a, l, _)| a + *l as u64 <= at + READ_SPAN.max(len as u64))
                    .map(|(a, l, _)| a + *l as u64)
                    .max()
                    .unwrap_or(end);
                buf.resize((reach - at) as usize, 0);
                if self.reader.read_exact_at(&mut buf, at).is_err() {
                    buf.clear();
                    continue;
                }
                buf_at = at;
            }
            let bytes = &buf[(at - buf_at) as usize..(end - buf_at) as usize];
            if let Ok(text) = std::str::from_utf8(bytes) {
                f(i, text);
                found += 1;
            }
        }
        found
    }
}

/// A store identity: the time, the process and a random draw, hashed.
fn fresh_id() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{now} {} {}", std::process::id(), fastrand::u64(..));
    thoughtflow_operators::hash::hash64(seed.as_bytes())
}

/// Where a store keeps its texts.
pub enum Texts {
    Memory(Arc<MemTexts>),
    Disk(Box<DiskTexts>),
}

impl Texts {
    pub fn put_with_key(&self, key: TextRef, text: &str) {
        match self {
            Texts::Memory(m) => m.put_with_key(key, text),
            Texts::Disk(d) => d.put_with_key(key, text),
        }
    }
}

/// How far a [`DiskTexts::visit_many`] read reaches past the text it starts at, to take the
/// texts that follow with it.
const READ_SPAN: u64 = 1 << 20;

impl TextLookup for Texts {
    fn get(&self, key: TextRef) -> Option<Arc<str>> {
        match self {
            Texts::Memory(m) => m.get(key),
            Texts::Disk(d) => d.get(key),
        }
    }

    fn visit(&self, key: TextRef, f: &mut dyn FnMut(&str)) -> bool {
        match self {
            Texts::Memory(m) => m.visit(key, f),
            Texts::Disk(d) => d.visit(key, f),
        }
    }

    fn visit_many(&self, keys: &[TextRef], f: &mut dyn FnMut(usize, &str)) -> usize {
        match self {
            Texts::Memory(m) => m.visit_many(keys, f),
            Texts::Disk(d) => d.visit_many(keys, f),
        }
    }
}

/// Where a question's external id is kept: its source, and its span of [`Names::ids`].
#[derive(Clone, Copy)]
struct NameAt {
    source: SourceId,
    at: u32,
    len: u32,
}

/// One shard of the question names: the ids side by side in one string, and an index of
/// about 24 bytes per question (a map of `Arc<str>` names took 110 bytes per question, 440 MB
/// at the paper's 4M questions).
#[derive(Default)]
struct Names {
    index: thoughtflow_operators::hash::FastMap<QuestionId, NameAt>,
    ids: String,
}

impl Names {
    fn insert(&mut self, qid: QuestionId, source: SourceId, id: &str) {
        let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(qid) else {
            return;
        };
        // A shard's ids stay under 4 GiB (64 shards: 256 GiB of ids in all).
        u32::try_from(self.ids.len() + id.len())
            .expect("question ids of one store shard over 4 GiB");
        let at = self.ids.len() as u32;
        self.ids.push_str(id);
        slot.insert(NameAt {
            source,
            at,
            len: id.len() as u32,
        });
    }

    fn get(&self, qid: QuestionId) -> Option<&str> {
        self.index
            .get(&qid)
            .map(|n| &self.ids[n.at as usize..(n.at + n.len) as usize])
    }
}

pub struct Store {
    pub texts: Arc<Texts>,
    /// Cluster mode: worker threads per process (the store is then replicated: see
    /// [`StoreDelta`]); `None` for a single process.
    cluster_threads: Option<usize>,
    names: Vec<RwLock<Names>>,
    sources: RwLock<HashMap<SourceId, Arc<str>>>,
}

impl Store {
    /// An in-memory store (tests, tools).
    pub fn new() -> Arc<Store> {
        Self::build(None, Texts::Memory(MemTexts::new()))
    }

    /// A run's store: texts in the file `texts` (kept from earlier runs, see [`DiskTexts`],
    /// except in a cluster). In a cluster (`threads` workers
    /// per process) what this process's workers put is journaled, to be shipped to the other
    /// processes (see `render`).
    pub fn open(texts: &Path, cluster_threads: Option<usize>) -> std::io::Result<Arc<Store>> {
        if cluster_threads.is_some() {
            // A cluster's processes learn each other's texts from what they journal as they
            // put them, and a text already on disk would not be journaled: each run starts
            // its store anew (and uses no parse cache, which needs a kept store).
            for f in [
                texts.to_path_buf(),
                texts.with_extension("idx"),
                texts.with_extension("sorted"),
                texts.with_extension("id"),
            ] {
                match std::fs::remove_file(&f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(Self::build(
            cluster_threads,
            Texts::Disk(Box::new(DiskTexts::open(texts)?)),
        ))
    }

    fn build(cluster_threads: Option<usize>, texts: Texts) -> Arc<Store> {
        Arc::new(Store {
            cluster_threads,
            texts: Arc::new(texts),
            names: (0..SHARDS).map(|_| RwLock::new(Names::default())).collect(),
            sources: RwLock::new(HashMap::new()),
        })
    }

    /// Writes the texts put so far through to the OS (a no-op in memory), and returns the
    /// mark of what it wrote (`None` in memory: no mark outlives a memory store).
    pub fn flush_texts(&self) -> std::io::Result<Option<TextsMark>> {
        match &*self.texts {
            Texts::Memory(_) => Ok(None),
            Texts::Disk(d) => d.flush_marked().map(Some),
        }
    }

    /// Texts the store holds (0 in memory: a memory store is never reopened).
    pub fn text_count(&self) -> u64 {
        match &*self.texts {
            Texts::Memory(_) => 0,
            Texts::Disk(d) => d.mark().texts,
        }
    }

    /// Whether every text put before `mark` is in the store (see [`TextsMark`]); `false`
    /// when that cannot be told from the mark (then ask [`Store::has_text`]).
    pub fn covers(&self, mark: TextsMark) -> bool {
        match &*self.texts {
            Texts::Memory(_) => false,
            Texts::Disk(d) => {
                let now = d.mark();
                now.store == mark.store && now.texts >= mark.texts
            }
        }
    }

    /// At a run's end: rewrites the sorted base of the text index if its log has grown (see
    /// [`DiskTexts::compact`]; a no-op in memory).
    pub fn compact_texts(&self) -> std::io::Result<bool> {
        match &*self.texts {
            Texts::Memory(_) => Ok(false),
            Texts::Disk(d) => d.compact(),
        }
    }

    pub fn has_text(&self, key: TextRef) -> bool {
        match &*self.texts {
            Texts::Memory(m) => m.get(key).is_some(),
            Texts::Disk(d) => d.contains(key),
        }
    }

    pub fn cluster_threads(&self) -> Option<usize> {
        self.cluster_threads
    }

    fn journal(&self, delta: impl FnOnce() -> StoreDelta) {
        if self.cluster_threads.is_some() {
            JOURNAL.with(|j| j.borrow_mut().push(delta()));
        }
    }

    /// Takes what this thread put since the last call (cluster mode).
    pub fn drain_journal(&self) -> Vec<StoreDelta> {
        JOURNAL.with(|j| std::mem::take(&mut *j.borrow_mut()))
    }

    /// Applies an entry another process put (not journaled again).
    pub fn apply(&self, delta: StoreDelta) {
        match delta {
            StoreDelta::Text(key, text) => self.texts.put_with_key(key, &text),
            StoreDelta::Name(qid, source, id) => self.insert_name(qid, source, &id),
            StoreDelta::Source(id, name) => self.insert_source(id, &name),
        }
    }

    pub fn put_text(&self, key: TextRef, text: &str) {
        if self.cluster_threads.is_some() && !self.has_text(key) {
            self.journal(|| StoreDelta::Text(key, text.to_string()));
        }
        self.texts.put_with_key(key, text);
    }

    pub fn text(&self, key: TextRef) -> Option<Arc<str>> {
        self.texts.get(key)
    }

    pub fn register_source(&self, id: SourceId, name: &str) {
        if self.cluster_threads.is_some()
            && !self.sources.read().expect("store lock").contains_key(&id)
        {
            self.journal(|| StoreDelta::Source(id, name.to_string()));
        }
        self.insert_source(id, name);
    }

    fn insert_source(&self, id: SourceId, name: &str) {
        self.sources
            .write()
            .expect("store lock")
            .entry(id)
            .or_insert_with(|| Arc::from(name));
    }

    /// The source's name, or its id in hex when this process has not seen it.
    pub fn source_name(&self, id: SourceId) -> Arc<str> {
        self.sources
            .read()
            .expect("store lock")
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::from(id.to_string()))
    }

    pub fn put_name(&self, qid: QuestionId, source: SourceId, id: &str) {
        if self.cluster_threads.is_some()
            && !self.names[(qid.0 as usize) % SHARDS]
                .read()
                .expect("store lock")
                .index
                .contains_key(&qid)
        {
            self.journal(|| StoreDelta::Name(qid, source, id.to_string()));
        }
        self.insert_name(qid, source, id);
    }

    /// [`Store::put_name`] for many questions of one source (a file's parse): each shard is
    /// locked once, and made room in once.
    pub fn put_names<'a>(
        &self,
        source: SourceId,
        names: impl ExactSizeIterator<Item = (QuestionId, &'a str)>,
    ) {
        if self.cluster_threads.is_some() {
            for (qid, id) in names {
                self.put_name(qid, source, id);
            }
            return;
        }
        let per_shard = names.len() / SHARDS + 1;
        let mut by_shard: Vec<Vec<(QuestionId, &str)>> = (0..SHARDS)
            .map(|_| Vec::with_capacity(per_shard + per_shard / 4))
            .collect();
        for (qid, id) in names {
            by_shard[(qid.0 as usize) % SHARDS].push((qid, id));
        }
        for (shard, names) in self.names.iter().zip(by_shard) {
            if names.is_empty() {
                continue;
            }
            let mut shard = shard.write().expect("store lock");
            shard.index.reserve(names.len());
            for (qid, id) in names {
                shard.insert(qid, source, id);
            }
        }
    }

    fn insert_name(&self, qid: QuestionId, source: SourceId, id: &str) {
        let shard = &self.names[(qid.0 as usize) % SHARDS];
        if shard.read().expect("store lock").index.contains_key(&qid) {
            return;
        }
        shard.write().expect("store lock").insert(qid, source, id);
    }

    /// The question's source, if this process has seen the question.
    pub fn question_source(&self, qid: QuestionId) -> Option<SourceId> {
        self.names[(qid.0 as usize) % SHARDS]
            .read()
            .expect("store lock")
            .index
            .get(&qid)
            .map(|n| n.source)
    }

    /// The question's external id, or its hash in hex when this process has not seen it.
    pub fn question_name(&self, qid: QuestionId) -> Arc<str> {
        self.names[(qid.0 as usize) % SHARDS]
            .read()
            .expect("store lock")
            .get(qid)
            .map(Arc::from)
            .unwrap_or_else(|| Arc::from(qid.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thoughtflow_operators::hash::text_ref;

    fn put(texts: &DiskTexts, text: &str) -> TextRef {
        let key = text_ref(text);
        texts.put_with_key(key, text);
        key
    }

    /// `visit_many` finds every stored key once, with its own text, in file order, across
    /// reads of more than one span (texts larger than a span included), texts still buffered
    /// included, and skips keys that are not stored.
    #[test]
    fn visit_many_reads_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let texts = DiskTexts::open(&dir.path().join("texts-0.bin")).unwrap();
        let mut stored: Vec<(TextRef, String)> = Vec::new();
        for i in 0..3000 {
            // Mostly short texts, a few longer than a read span.
            let text = if i % 1000 == 999 {
                format!("{i} {}", "long ".repeat(READ_SPAN as usize / 4))
            } else {
                format!("text number {i} {}", "ü".repeat(i % 7))
            };
            stored.push((put(&texts, &text), text));
        }
        texts.flush().unwrap();
        let late = "put after the flush, still buffered";
        stored.push((put(&texts, late), late.to_string()));
        // Every other text, in reverse, and two keys that are not stored.
        let mut keys: Vec<TextRef> = stored.iter().rev().step_by(2).map(|(k, _)| *k).collect();
        keys.insert(3, text_ref("absent one"));
        keys.push(text_ref("absent two"));
        let mut seen: Vec<usize> = Vec::new();
        let found = texts.visit_many(&keys, &mut |i, text| {
            let want = stored
                .iter()
                .find(|(k, _)| *k == keys[i])
                .map(|(_, t)| t.as_str());
            assert_eq!(Some(text), want, "key {i}");
            seen.push(i);
        });
        assert_eq!(found, keys.len() - 2);
        assert_eq!(seen.len(), found);
        // In file order: the keys were given newest first, so they come back reversed.
        let mut expected: Vec<usize> = (0..keys.len())
            .filter(|i| *i != 3 && *i != keys.len() - 1)
            .collect();
        expected.reverse();
        assert_eq!(seen, expected);
    }

    /// Texts put by one run are found by the next without being put again, and a torn end
    /// (an index entry whose text never reached the file) is cut off, not believed.
    #[test]
    fn texts_outlive_a_run_and_a_torn_end_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("texts-0.bin");
        let index = path.with_extension("idx");
        let (a, b, c);
        {
            let texts = DiskTexts::open(&path).unwrap();
            a = put(&texts, "first text");
            b = put(&texts, "second, with ünïcode");
            assert_eq!(texts.get(a).as_deref(), Some("first text"));
            texts.flush().unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        {
            let texts = DiskTexts::open(&path).unwrap();
            assert!(texts.contains(a) && texts.contains(b));
            assert_eq!(texts.get(b).as_deref(), Some("second, with ünïcode"));
            // Present texts are not written again.
            put(&texts, "first text");
            texts.flush().unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            c = put(&texts, "third");
            texts.flush().unwrap();
        }
        // A crash after the index entry but before the text's last bytes: the entry goes.
        let full = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full - 2)
            .unwrap();
        // And half an entry at the index's end (a torn append) is ignored.
        let mut idx = std::fs::read(&index).unwrap();
        idx.extend_from_slice(&[7u8; 10]);
        std::fs::write(&index, &idx).unwrap();
        {
            let texts = DiskTexts::open(&path).unwrap();
            assert!(texts.contains(a) && texts.contains(b));
            assert!(
                !texts.contains(c),
                "an entry past the end of the texts is dropped"
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "cut back");
            assert_eq!(
                std::fs::metadata(&index).unwrap().len(),
                2 * INDEX_ENTRY as u64
            );
            // Appends go on from the cut.
            let c2 = put(&texts, "third");
            assert_eq!(c2, c);
            assert_eq!(texts.get(c).as_deref(), Some("third"));
            texts.flush().unwrap();
        }
        let texts = DiskTexts::open(&path).unwrap();
        for (k, t) in [(a, "first text"), (b, "second, with ünïcode"), (c, "third")] {
            assert_eq!(texts.get(k).as_deref(), Some(t));
        }
    }

    /// A compacted store maps its sorted base and loads only the log past it: every text is
    /// found, before and after more are put and compacted again; a base that covers more
    /// than the cut-back log is dropped, and the texts the log keeps are still found.
    #[test]
    fn the_sorted_base_serves_what_the_log_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("texts-0.bin");
        let sorted = path.with_extension("sorted");
        let first: Vec<(TextRef, String)> = (0..500)
            .map(|i| format!("first run text {i}"))
            .map(|t| (text_ref(&t), t))
            .collect();
        {
            let texts = DiskTexts::open(&path).unwrap();
            for (_, t) in &first {
                put(&texts, t);
            }
            assert!(
                texts.compact().unwrap(),
                "a base is written for a fresh log"
            );
            assert!(!texts.compact().unwrap(), "nothing new: no rewrite");
        }
        assert!(sorted.exists());
        let second: Vec<(TextRef, String)> = (0..30)
            .map(|i| format!("second run text {i}"))
            .map(|t| (text_ref(&t), t))
            .collect();
        {
            let texts = DiskTexts::open(&path).unwrap();
            assert_eq!(texts.base.as_ref().map(SortedIndex::len), Some(500));
            assert!(texts.index.iter().all(|s| s.read().unwrap().is_empty()));
            for (k, t) in &first {
                assert_eq!(texts.get(*k).as_deref(), Some(t.as_str()));
            }
            let len = texts.bytes();
            put(&texts, &first[7].1);
            assert_eq!(texts.bytes(), len, "a text of the base is not put again");
            for (_, t) in &second {
                put(&texts, t);
            }
            // 30 past a base of 500: under a sixteenth, kept in the log.
            assert!(!texts.compact().unwrap());
        }
        {
            let texts = DiskTexts::open(&path).unwrap();
            assert_eq!(texts.base.as_ref().map(SortedIndex::len), Some(500));
            for (k, t) in first.iter().chain(&second) {
                assert_eq!(texts.get(*k).as_deref(), Some(t.as_str()));
            }
            put(&texts, "one more");
            put(&texts, "and one more: 32, a sixteenth");
            assert!(texts.compact().unwrap());
        }
        {
            let texts = DiskTexts::open(&path).unwrap();
            assert_eq!(texts.base.as_ref().map(SortedIndex::len), Some(532));
            let keys: Vec<TextRef> = first.iter().chain(&second).map(|(k, _)| *k).collect();
            let mut found = 0;
            texts.visit_many(&keys, &mut |i, text| {
                assert_eq!(text, first.iter().chain(&second).nth(i).unwrap().1);
                found += 1;
            });
            assert_eq!(found, keys.len());
        }
        // A crash that cut the log below what the base covers: the base goes.
        let index = path.with_extension("idx");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .unwrap()
            .set_len(300 * INDEX_ENTRY as u64)
            .unwrap();
        let texts = DiskTexts::open(&path).unwrap();
        assert!(texts.base.is_none() && !sorted.exists());
        for (i, (k, t)) in first.iter().enumerate() {
            let want = (i < 300).then_some(t.as_str());
            assert_eq!(texts.get(*k).as_deref(), want, "text {i}");
        }
    }

    /// A mark is covered while the store only grows; a store cut back or made anew covers
    /// none of its old marks.
    #[test]
    fn marks_outlive_growth_not_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("texts-0.bin");
        let mark = {
            let store = Store::open(&path, None).unwrap();
            store.put_text(text_ref("a"), "a");
            store.put_text(text_ref("b"), "b");
            let mark = store.flush_texts().unwrap().expect("a disk store marks");
            assert!(store.covers(mark));
            mark
        };
        {
            let store = Store::open(&path, None).unwrap();
            assert!(store.covers(mark), "reopened whole");
            store.put_text(text_ref("c"), "c");
            store.flush_texts().unwrap();
        }
        assert!(Store::open(&path, None).unwrap().covers(mark), "grown");
        // Cut back (a torn text at the end), then grown past the mark again with other texts.
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let store = Store::open(&path, None).unwrap();
        store.put_text(text_ref("d"), "d");
        store.put_text(text_ref("e"), "e");
        assert!(!store.covers(mark), "a store cut back covers no old mark");
        drop(store);
        for f in ["bin", "idx", "sorted", "id"] {
            let _ = std::fs::remove_file(path.with_extension(f));
        }
        let store = Store::open(&path, None).unwrap();
        for t in ["a", "b", "c"] {
            store.put_text(text_ref(t), t);
        }
        assert!(!store.covers(mark), "a store made anew covers no old mark");
        assert!(!Store::new().covers(mark), "nor does a memory store");
    }
}
