//! Tokenizers for token n-grams: a Hugging Face `tokenizer.json`, loaded once and shared.
//!
//! The OpenThoughts3 authors matched 13-grams of *tokens* (their teacher's tokenizer). A
//! [`TokenizerRef`] wraps a `tokenizers::Tokenizer` read from a `tokenizer.json` file (any model
//! the `tokenizers` library reads: BPE, WordPiece, Unigram, WordLevel). Reading the file is I/O,
//! but it happens once, when a recipe is read; the steps only call [`TokenizerRef::tokens`].
//!
//! Two references are equal when their files' bytes hash the same (xxh3-64), whatever the path.

use crate::hash;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A loaded tokenizer and where it came from.
#[derive(Clone)]
pub struct TokenizerRef {
    /// The file it was read from (for messages).
    pub path: String,
    /// xxh3-64 of the file's bytes: what equality and the recipe's identity use.
    pub digest: u64,
    inner: Arc<tokenizers::Tokenizer>,
}

/// The tokens of one text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSeq {
    /// Token ids, in text order (no special tokens added).
    pub ids: Vec<u64>,
    /// Byte range of each token in the input text.
    pub offsets: Vec<(usize, usize)>,
    /// Whether a token has no letter (digits, punctuation, spaces): n-grams made only of such
    /// tokens are "numeric" for `skip_numeric`.
    pub numeric: Vec<bool>,
}

impl TokenizerRef {
    /// Reads a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<TokenizerRef, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::from_bytes(&path.display().to_string(), &bytes)
    }

    /// Parses the contents of a `tokenizer.json` (named `path` in messages).
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<TokenizerRef, String> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| {
            format!("{path} is not a tokenizer.json the tokenizers library reads: {e}")
        })?;
        Ok(TokenizerRef {
            path: path.to_string(),
            digest: hash::hash64(bytes),
            inner: Arc::new(inner),
        })
    }

    /// Tokenizes `text` (no special tokens added). A text the tokenizer fails on yields no
    /// tokens (so it matches nothing by n-grams; the fuzzy method still sees it).
    pub fn tokens(&self, text: &str) -> TokenSeq {
        let Ok(enc) = self.inner.encode(text, false) else {
            return TokenSeq::default();
        };
        let bytes = text.as_bytes();
        let numeric = enc
            .get_offsets()
            .iter()
            .map(|&(a, b)| {
                let piece = bytes.get(a..b.min(bytes.len())).unwrap_or_default();
                !String::from_utf8_lossy(piece)
                    .chars()
                    .any(char::is_alphabetic)
            })
            .collect();
        TokenSeq {
            ids: enc.get_ids().iter().map(|&i| i as u64).collect(),
            offsets: enc.get_offsets().to_vec(),
            numeric,
        }
    }
}

impl PartialEq for TokenizerRef {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for TokenizerRef {}

impl fmt::Debug for TokenizerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenizerRef({}, {:016x})", self.path, self.digest)
    }
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    path: String,
    digest: u64,
}

impl Serialize for TokenizerRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Persisted {
            path: self.path.clone(),
            digest: self.digest,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TokenizerRef {
    /// Reloads the file, and refuses it when its contents changed.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = Persisted::deserialize(d)?;
        let t = TokenizerRef::load(Path::new(&p.path)).map_err(serde::de::Error::custom)?;
        if t.digest != p.digest {
            return Err(serde::de::Error::custom(format!(
                "{} changed since it was recorded",
                p.path
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::word_level_tokenizer as word_level;

    #[test]
    fn ids_offsets_and_numeric_flags() {
        let t = word_level(&["the", "cat", "sat", "3", "."]);
        let seq = t.tokens("the cat sat 3 dogs.");
        assert_eq!(seq.ids, vec![1, 2, 3, 4, 0, 5]);
        assert_eq!(seq.offsets[4], (14, 18));
        assert_eq!(seq.numeric, vec![false, false, false, true, false, true]);
    }

    #[test]
    fn equal_by_contents_and_bad_files_named() {
        let a = word_level(&["a"]);
        let b = word_level(&["a"]);
        assert_eq!(a, b);
        assert_ne!(a, word_level(&["b"]));
        let e = TokenizerRef::from_bytes("x.json", b"{\"not\": 1}").unwrap_err();
        assert!(e.starts_with("x.json is not a tokenizer.json"), "{e}");
    }
}
