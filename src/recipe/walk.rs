//! A small TOML walker that collects every problem instead of stopping at the first.
//!
//! `serde`'s derive stops at the first error and cannot say "did you mean"; a curator who
//! made five mistakes wants five messages, each naming the file, the key and the problem.
//! [`Obj`] reads one table, remembers which keys were read, and reports the rest as unknown.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub key: String,
    pub problem: String,
}

/// Every problem found in one recipe file.
#[derive(Debug)]
pub struct RecipeErrors {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
}

impl fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "recipe {} has {} problem{}:",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(
                f,
                "  {}: {}: {}",
                self.file.display(),
                issue.key,
                issue.problem
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeErrors {}

/// Collects issues while a recipe is read.
#[derive(Default)]
pub struct Issues {
    list: RefCell<Vec<Issue>>,
}

impl Issues {
    pub fn push(&self, key: impl Into<String>, problem: impl Into<String>) {
        self.list.borrow_mut().push(Issue {
            key: key.into(),
            problem: problem.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.borrow().is_empty()
    }

    /// The issues collected so far (emptying the list).
    pub fn take(&self) -> Vec<Issue> {
        std::mem::take(&mut *self.list.borrow_mut())
    }

    pub fn into_errors(self, file: &Path) -> RecipeErrors {
        RecipeErrors {
            file: file.to_path_buf(),
            issues: self.list.into_inner(),
        }
    }
}

/// One TOML table being read, with its key path (`steps[2]`).
pub struct Obj<'a> {
    pub path: String,
    table: &'a toml::Table,
    used: RefCell<BTreeSet<String>>,
    issues: &'a Issues,
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl<'a> Obj<'a> {
    pub fn new(path: impl Into<String>, table: &'a toml::Table, issues: &'a Issues) -> Self {
        Obj {
            path: path.into(),
            table,
            used: RefCell::new(BTreeSet::new()),
            issues,
        }
    }

    /// A table found under `key` by hand (e.g. a value that may be a number or a table).
    pub fn nested(&self, key: &str, table: &'a toml::Table) -> Obj<'a> {
        Obj::new(self.key(key), table, self.issues)
    }

    pub fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub fn issue(&self, key: &str, problem: impl Into<String>) {
        self.issues.push(self.key(key), problem);
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    fn wrong(&self, key: &str, expected: &str, got: &toml::Value) {
        self.issue(key, format!("expected {expected}, got {}", type_name(got)));
    }

    pub fn opt_str(&self, key: &str) -> Option<String> {
        match self.raw(key)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.wrong(key, "a string", other);
                None
            }
        }
    }

    pub fn req_str(&self, key: &str) -> Option<String> {
        if !self.has(key) {
            self.raw(key);
            self.issue(key, "missing (required)");
            return None;
        }
        let s = self.opt_str(key)?;
        if s.trim().is_empty() {
            self.issue(key, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn opt_int(&self, key: &str, min: i64, max: i64) -> Option<i64> {
        match self.raw(key)? {
            toml::Value::Integer(i) if *i >= min && *i <= max => Some(*i),
            toml::Value::Integer(i) => {
                self.issue(key, format!("{i} is out of range {min}..={max}"));
                None
            }
            other => {
                self.wrong(key, "an integer", other);
                None
            }
        }
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        match self.raw(key)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.wrong(key, "a boolean (true or false)", other);
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    pub fn opt_choice(&self, key: &str, choices: &[&str]) -> Option<String> {
        let s = self.opt_str(key)?;
        if choices.contains(&s.as_str()) {
            Some(s)
        } else {
            self.issue(
                key,
                format!(
                    "{s:?} is not one of {}{}",
                    choices.join(", "),
                    suggest(&s, choices.iter().copied())
                ),
            );
            None
        }
    }

    pub fn opt_str_list(&self, key: &str) -> Option<Vec<String>> {
        match self.raw(key)? {
            toml::Value::String(s) => Some(vec![s.clone()]),
            toml::Value::Array(items) => {
                let mut out = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    match v {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => self.issue(
                            &format!("{key}[{i}]"),
                            format!("expected a string, got {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong(key, "a string or an array of strings", other);
                None
            }
        }
    }

    pub fn opt_table(&self, key: &str) -> Option<Obj<'a>> {
        match self.raw(key)? {
            toml::Value::Table(t) => Some(Obj::new(self.key(key), t, self.issues)),
            other => {
                self.wrong(key, "a table", other);
                None
            }
        }
    }

    /// `[[key]]` entries (an absent key is an empty list).
    pub fn tables(&self, key: &str) -> Vec<Obj<'a>> {
        match self.raw(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    toml::Value::Table(t) => {
                        Some(Obj::new(format!("{}[{i}]", self.key(key)), t, self.issues))
                    }
                    other => {
                        self.issue(
                            &format!("{key}[{i}]"),
                            format!("expected a table, got {}", type_name(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.wrong(key, &format!("an array of tables ([[{key}]])"), other);
                Vec::new()
            }
        }
    }

    /// Every key of the table, for tables whose keys are data (per-group sizes).
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a toml::Value)> {
        for k in self.table.keys() {
            self.used.borrow_mut().insert(k.clone());
        }
        self.table.iter()
    }

    /// Reports every key that was never read.
    pub fn finish(self) {
        let used = self.used.borrow();
        for key in self.table.keys() {
            if !used.contains(key) {
                self.issue(
                    key,
                    format!(
                        "unknown key{}",
                        suggest(key, used.iter().map(|s| s.as_str()))
                    ),
                );
            }
        }
    }
}

/// ` (did you mean "x"?)` when a known word is close to `word`.
pub fn suggest<'b>(word: &str, known: impl Iterator<Item = &'b str>) -> String {
    known
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_close_words() {
        assert_eq!(
            suggest("ngrm", ["ngram", "unit"].into_iter()),
            " (did you mean \"ngram\"?)"
        );
        assert_eq!(suggest("zzzzzz", ["ngram"].into_iter()), "");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_all_reported() {
        let table: toml::Table = toml::from_str("a = 1\nb = \"x\"\nc = true").unwrap();
        let issues = Issues::default();
        let obj = Obj::new("root", &table, &issues);
        assert_eq!(obj.opt_str("a"), None);
        assert_eq!(obj.opt_int("b", 0, 10), None);
        obj.finish();
        let errs = issues.into_errors(Path::new("r.toml"));
        let keys: Vec<_> = errs.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["root.a", "root.b", "root.c"]);
    }
}
