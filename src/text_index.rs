//! The sorted base of a text store's index (`texts-P.sorted` beside `texts-P.idx`).
//!
//! A [`DiskTexts`](crate::store::DiskTexts) appends an index entry per text to its log
//! (`texts-P.idx`, in file order). Loading that log into hash maps when a run starts took
//! 1.5 s at the paper's scale (4M texts), alone on one core before any worker began.
//!
//! This file is the same entries, sorted by key, under a directory of bucket offsets. A run
//! maps it into memory and looks keys up in place, so opening costs nothing however many texts
//! there are. Only the log entries written after it (its tail) are loaded into hash maps.
//!
//! It is written at the end of a run whose tail has grown past a sixteenth of the base
//! ([`write_merged`]). It is a cache of the log: written to a temporary file, synced, then
//! renamed into place. It covers the log's first `covers_entries` entries and the texts
//! file's first `covers_bytes` bytes. A base that covers more than what is on disk is
//! ignored and removed, and the whole log is loaded instead. That happens when a crash cut
//! the log or the texts back.
//!
//! Layout, little-endian:
//!
//! ```text
//! [magic 8]["covers_entries" u64]["covers_bytes" u64][n u64][dir_bits u32][zero 28]   (64 bytes)
//! n entries of [key u128][offset u64][length u32], ascending by key                   (28 each)
//! 2^dir_bits + 1 offsets u32: the entries of bucket b (keys whose top dir_bits bits
//! are b) are entries[dir[b]..dir[b + 1]]
//! ```

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use thoughtflow_operators::record::TextRef;

const MAGIC: &[u8; 8] = b"TFTXIDX1";
const HEADER: usize = 64;
/// Bytes of one entry: the same as a log entry.
pub const ENTRY: usize = 16 + 8 + 4;

/// One index entry: a text's key, offset and length in the texts file.
pub type Entry = (TextRef, u64, u32);

/// Parses a 28-byte entry (of the log or of a base).
pub fn parse_entry(b: &[u8]) -> Entry {
    (
        TextRef(u128::from_le_bytes(b[..16].try_into().expect("16"))),
        u64::from_le_bytes(b[16..24].try_into().expect("8")),
        u32::from_le_bytes(b[24..28].try_into().expect("4")),
    )
}

/// Encodes an entry as 28 bytes (of the log or of a base).
pub fn encode_entry((key, at, len): Entry) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..16].copy_from_slice(&{ key.0 }.to_le_bytes());
    e[16..24].copy_from_slice(&at.to_le_bytes());
    e[24..].copy_from_slice(&len.to_le_bytes());
    e
}

use thoughtflow_operators::hash::dir_bits;

fn bucket(key: TextRef, bits: u32) -> usize {
    thoughtflow_operators::hash::dir_bucket(key.0, bits)
}

/// A read-only memory map of a whole file.
struct Mapped {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and private, and lives until `drop`; the file it maps is
// only ever replaced by a rename, never written in place, so its bytes do not change under us.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    fn map(file: &std::fs::File, len: usize) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only private mapping of `len` bytes of an open file; checked for
        // failure before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr: ptr as *const u8,
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `self` is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// A mapped base: sorted entries and their bucket directory.
pub struct SortedIndex {
    map: Mapped,
    n: usize,
    bits: u32,
    /// How many log entries, and how many bytes of the texts file, it covers.
    pub covers_entries: u64,
    pub covers_bytes: u64,
}

impl SortedIndex {
    /// Maps the base at `path`, if there is one and it is whole and covers no more than the
    /// log's `log_entries` entries and the texts file's `data_len` bytes. Anything else (no
    /// file, a foreign or stale one) is `None`, and a file that is there but unusable is
    /// removed.
    pub fn open(path: &Path, log_entries: u64, data_len: u64) -> Option<SortedIndex> {
        let file = std::fs::File::open(path).ok()?;
        let usable = Self::map(&file)
            .filter(|b| b.covers_entries <= log_entries && b.covers_bytes <= data_len);
        if usable.is_none() {
            tracing::info!(file = %path.display(), "text index base does not match the log: loading the log");
            let _ = std::fs::remove_file(path);
        }
        usable
    }

    fn map(file: &std::fs::File) -> Option<SortedIndex> {
        let len = file.metadata().ok()?.len() as usize;
        let mut head = [0u8; HEADER];
        file.read_exact_at(&mut head, 0).ok()?;
        if &head[..8] != MAGIC {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8"));
        let (covers_entries, covers_bytes, n) = (word(8), word(16), word(24));
        let bits = u32::from_le_bytes(head[32..36].try_into().expect("4"));
        if bits != dir_bits(n) {
            return None;
        }
        let expected = HEADER as u64 + n * ENTRY as u64 + ((1u64 << bits) + 1) * 4;
        if len as u64 != expected {
            return None;
        }
        let base = SortedIndex {
            map: Mapped::map(file, len).ok()?,
            n: n as usize,
            bits,
            covers_entries,
            covers_bytes,
        };
        (base.dir(1 << bits) as usize == base.n).then_some(base)
    }

    /// Entries it holds.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn dir(&self, b: usize) -> u32 {
        let at = HEADER + self.n * ENTRY + b * 4;
        u32::from_le_bytes(self.map.bytes()[at..at + 4].try_into().expect("4"))
    }

    fn entry(&self, i: usize) -> Entry {
        let at = HEADER + i * ENTRY;
        parse_entry(&self.map.bytes()[at..at + ENTRY])
    }

    fn key(&self, i: usize) -> u128 {
        let at = HEADER + i * ENTRY;
        u128::from_le_bytes(self.map.bytes()[at..at + 16].try_into().expect("16"))
    }

    /// The offset and length of `key`'s text, if the base holds it.
    pub fn get(&self, key: TextRef) -> Option<(u64, u32)> {
        let b = bucket(key, self.bits);
        let (mut lo, mut hi) = (self.dir(b) as usize, self.dir(b + 1) as usize);
        let k = key.0;
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(&k) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let (_, at, len) = self.entry(mid);
                    return Some((at, len));
                }
            }
        }
        None
    }

    /// Its entries, in key order.
    fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.n).map(|i| self.entry(i))
    }
}

/// Writes a base at `path` (atomically: a synced temporary file, then a rename) holding the
/// entries of `base` (if any) and `tail` (log entries after what `base` covers, no key of
/// `base` among them), covering `covers_entries` log entries and `covers_bytes` text bytes.
pub fn write_merged(
    path: &Path,
    base: Option<&SortedIndex>,
    mut tail: Vec<Entry>,
    covers_entries: u64,
    covers_bytes: u64,
) -> std::io::Result<()> {
    tail.sort_unstable_by_key(|e| e.0);
    let n = base.map_or(0, SortedIndex::len) as u64 + tail.len() as u64;
    if n > u32::MAX as u64 {
        return Err(std::io::Error::other("over 4G texts in one store"));
    }
    let bits = dir_bits(n);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut head = [0u8; HEADER];
    head[..8].copy_from_slice(MAGIC);
    head[8..16].copy_from_slice(&covers_entries.to_le_bytes());
    head[16..24].copy_from_slice(&covers_bytes.to_le_bytes());
    head[24..32].copy_from_slice(&n.to_le_bytes());
    head[32..36].copy_from_slice(&bits.to_le_bytes());
    w.write_all(&head)?;
    // Per bucket, how many entries: the directory is their running sum.
    let mut counts = vec![0u32; (1usize << bits) + 1];
    let mut from_base = base.into_iter().flat_map(SortedIndex::entries).peekable();
    let mut from_tail = tail.into_iter().peekable();
    loop {
        let next = match (from_base.peek(), from_tail.peek()) {
            (Some(a), Some(b)) if { a.0 .0 } <= { b.0 .0 } => from_base.next(),
            (Some(_), Some(_)) | (None, Some(_)) => from_tail.next(),
            (Some(_), None) => from_base.next(),
            (None, None) => break,
        };
        let e = next.expect("peeked");
        counts[bucket(e.0, bits) + 1] += 1;
        w.write_all(&encode_entry(e))?;
    }
    let mut sum = 0u32;
    for c in counts {
        sum += c;
        w.write_all(&sum.to_le_bytes())?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A base written from a base and a tail finds every key of both, with its place, and
        /// no other key; entries come out sorted.
        #[test]
        fn merged_base_finds_every_key(
            first in proptest::collection::btree_set(any::<u128>(), 0..300),
            second in proptest::collection::btree_set(any::<u128>(), 0..300),
            absent in proptest::collection::vec(any::<u128>(), 0..50),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("texts-0.sorted");
            let entry = |k: u128| (TextRef(k), (k as u64) >> 3, k as u32 & 0xffff);
            let first: Vec<Entry> = first.into_iter().map(entry).collect();
            let second: Vec<Entry> = second
                .into_iter()
                .filter(|k| !first.iter().any(|e| e.0 .0 == *k))
                .map(entry)
                .collect();
            write_merged(&path, None, first.clone(), 3, 100).unwrap();
            let base = SortedIndex::open(&path, 3, 100).expect("a whole base");
            prop_assert_eq!(base.len(), first.len());
            write_merged(&path, Some(&base), second.clone(), 7, 200).unwrap();
            drop(base);
            prop_assert!(SortedIndex::open(&path, 6, 200).is_none(), "covers more of the log");
            write_merged(&path, None, first.iter().chain(&second).copied().collect(), 7, 200).unwrap();
            prop_assert!(SortedIndex::open(&path, 7, 199).is_none(), "covers more of the texts");
            write_merged(&path, None, first.iter().chain(&second).copied().collect(), 7, 200).unwrap();
            let merged = SortedIndex::open(&path, 7, 200).expect("a whole base");
            prop_assert_eq!((merged.covers_entries, merged.covers_bytes), (7, 200));
            let all: Vec<Entry> = merged.entries().collect();
            let ascending = all.windows(2).all(|w| { w[0].0 .0 } < { w[1].0 .0 });
            prop_assert!(ascending, "entries in key order");
            prop_assert_eq!(all.len(), first.len() + second.len());
            for e in first.iter().chain(&second) {
                prop_assert_eq!(merged.get(e.0), Some((e.1, e.2)));
            }
            for k in absent {
                if !all.iter().any(|e| e.0 .0 == k) {
                    prop_assert_eq!(merged.get(TextRef(k)), None);
                }
            }
        }
    }

    /// A truncated or foreign file is not mapped, and is removed.
    #[test]
    fn a_torn_base_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("texts-0.sorted");
        let entries: Vec<Entry> = (0..100u128)
            .map(|k| {
                (
                    TextRef(k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
                    k as u64,
                    1,
                )
            })
            .collect();
        write_merged(&path, None, entries, 100, 1000).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert!(SortedIndex::open(&path, 100, 1000).is_none());
        assert!(!path.exists(), "an unusable base is removed");
        std::fs::write(&path, [0u8; 200]).unwrap();
        assert!(SortedIndex::open(&path, 100, 1000).is_none());
        assert!(!path.exists());
    }
}
