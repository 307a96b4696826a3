//! Recipes: what to compute, as TOML data in `pipelines/`.
//!
//! A recipe names its question sources, its benchmarks, its teachers, and an ordered list of
//! steps, each with an `id`. Where and how to run (output folder, workers, brokers, endpoints,
//! keys) are flags and environment, never recipe keys.
//!
//! Reading a recipe has two phases: [`Recipe::load`] parses and validates everything (unknown
//! keys, types, ranges, references between sections, files that must exist) and returns either
//! a [`Recipe`] or *every* problem found ([`RecipeErrors`]), each naming the file, the key and
//! the problem; rendering ([`crate::render`]) only ever sees a valid recipe.
//!
//! Relative paths are relative to the recipe file's folder. `pipelines/README.md` documents
//! every key and its default.

pub mod walk;

pub use crate::llm::client::{Api, Sampling};
pub use crate::llm::prompts::Template;
use crate::recipe::walk::{suggest, Issues, Obj, RecipeErrors};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use thoughtflow_operators::record::Domain;
use thoughtflow_operators::steps::answer_select::Keep;
use thoughtflow_operators::steps::decontam::{
    DecontamConfig, FuzzyConfig, NgramConfig, NgramUnit, Tokens,
};
use thoughtflow_operators::steps::fanout::LookupBy;
use thoughtflow_operators::steps::near_dedup::{NearDedupConfig, Shingle, Similarity};
use thoughtflow_operators::steps::score::Heuristic;
use thoughtflow_operators::steps::select::GroupBy;
use thoughtflow_operators::tokenize::TokenizerRef;

/// Which fields of an input record hold what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMap {
    pub id: String,
    pub question: String,
    pub domain: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            id: "id".into(),
            question: "question".into(),
            domain: "domain".into(),
        }
    }
}

/// Kafka topics a source or benchmark entry reads: listed names and/or a regex pattern
/// (anchored) that also picks up topics created while running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTopics {
    pub topics: Vec<String>,
    pub pattern: Option<String>,
}

impl KafkaTopics {
    /// Whether `topic` belongs to this entry.
    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            || self.pattern.as_ref().is_some_and(|p| {
                regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|r| r.is_match(topic))
            })
    }
}

/// Where an entry's records come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A JSONL file, or a folder of them (watched by `--follow`).
    Files(PathBuf),
    /// Kafka topics (brokers come from flags/environment).
    Kafka(KafkaTopics),
}

impl Input {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Input::Files(p) => Some(p),
            Input::Kafka(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Input::Files(p) => p.display().to_string(),
            Input::Kafka(k) => {
                let mut parts: Vec<String> =
                    k.topics.iter().map(|t| format!("kafka:{t}")).collect();
                if let Some(p) = &k.pattern {
                    parts.push(format!("kafka:/{p}/"));
                }
                parts.join(" + ")
            }
        }
    }
}

/// A question source: a JSONL file, a folder of them, or Kafka topics (each topic is a source
/// of its own, named by the topic).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    pub name: String,
    pub input: Input,
    /// Domain of records that carry none.
    pub domain: Option<Domain>,
    /// Dedup priority: lower wins. Default: the source's position in the recipe.
    pub priority: u32,
    pub fields: FieldMap,
    /// Records longer than this (bytes) are rejected as `too_large`.
    pub max_record_bytes: usize,
}

/// A benchmark: a JSONL file (one benchmark), a folder (one benchmark per file, named by the
/// file stem), or a Kafka topic (items keyed by message key; the benchmark named by the
/// value's `benchmark` field, else the entry's name).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchmarkSpec {
    pub name: String,
    pub input: Input,
    pub fields: FieldMap,
    /// A file of phrases (one a line) whose n-grams never count against this benchmark's items.
    pub ignore_phrases: Option<PathBuf>,
}

/// Fields of a replay teacher's answer file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayFields {
    pub id: String,
    pub source: String,
    pub question: String,
    pub answer: String,
}

/// An LLM call as a recipe describes it: which endpoint (resolved by flags), which API, which
/// sampling, which prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmCall {
    pub endpoint: String,
    pub api: Api,
    pub sampling: Sampling,
    pub prompt: Template,
}

/// How a `score` step scores.
#[derive(Clone, Debug, PartialEq)]
pub enum Scorer {
    Heuristic(Heuristic),
    /// A 1-10 grade from an LLM, one rubric per domain.
    LlmDifficulty {
        call: LlmCall,
        prompts: BTreeMap<Domain, Template>,
    },
    /// The length in characters of one LLM answer.
    LlmResponseLength {
        call: LlmCall,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum TeacherKind {
    /// Deterministic text from the question hash and sample index.
    Synthetic { answer_words: u32 },
    /// An OpenAI-compatible model (endpoint from flags): k samples per question, memoized.
    OpenAi { call: LlmCall },
    /// Answers read from a JSONL file, keyed by question id or content hash.
    Replay {
        path: PathBuf,
        key: LookupBy,
        fields: ReplayFields,
        /// Source name for lines keyed by id that name no source.
        source: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TeacherSpec {
    pub name: String,
    pub kind: TeacherKind,
    /// Domains this teacher answers; `None` = all.
    pub domains: Option<Vec<Domain>>,
    /// Samples per question, overriding the fanout step's `samples`.
    pub samples: Option<u16>,
}

/// How many questions a selection keeps: a default, and per group name (domain or source).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Sizes {
    pub default: Option<u64>,
    pub per_name: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SelectSpec {
    Threshold { min: Option<i64>, max: Option<i64> },
    TopN { per: GroupBy, n: Sizes },
    Sample { per: GroupBy, n: Sizes },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupMode {
    Exact,
    None,
    /// Fuzzy (Indel ratio) or MinHash (Jaccard) near-duplicates, clustered.
    Near(NearDedupConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    Decontaminate {
        config: DecontamConfig,
        /// Benchmark names; `None` = all.
        benchmarks: Option<Vec<String>>,
    },
    LengthGuard {
        max_tokens: u32,
    },
    Score {
        scorer: Scorer,
        as_difficulty: bool,
    },
    Select(SelectSpec),
    Dedup {
        mode: DedupMode,
    },
    Fanout {
        teachers: Vec<String>,
        samples: u16,
    },
    AnswerDedup,
    /// Keep the shortest or longest k answers of each question.
    AnswerSelect {
        keep: Keep,
        k: usize,
    },
    /// Reject rows whose answer matches a benchmark item.
    AnswerDecontaminate {
        config: DecontamConfig,
        benchmarks: Option<Vec<String>>,
    },
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Decontaminate { .. } => "decontaminate",
            StepKind::LengthGuard { .. } => "length_guard",
            StepKind::Score { .. } => "score",
            StepKind::Select(_) => "select",
            StepKind::Dedup { .. } => "dedup",
            StepKind::Fanout { .. } => "fanout",
            StepKind::AnswerDedup => "answer_dedup",
            StepKind::AnswerSelect { .. } => "answer_select",
            StepKind::AnswerDecontaminate { .. } => "answer_decontaminate",
        }
    }

    /// Row steps come after the fan-out; question steps before.
    pub fn is_row_step(&self) -> bool {
        matches!(
            self,
            StepKind::AnswerDedup
                | StepKind::AnswerSelect { .. }
                | StepKind::AnswerDecontaminate { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StepSpec {
    pub id: String,
    /// Domains the step applies to; the others bypass it. `None` = all.
    pub domains: Option<Vec<Domain>>,
    pub kind: StepKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    /// Number of dataset shards (by range of the question's content hash).
    pub shards: u32,
    /// The dataset shards' file format(s).
    pub format: SinkFormat,
    /// The dataset's changelog topic, if any.
    pub kafka: Option<KafkaSinkSpec>,
    /// What `changes/` logs.
    pub changes: ChangeLog,
}

/// What `changes/EPOCH.jsonl` logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeLog {
    /// Every change, including a fresh build's first epoch (the whole dataset as upserts).
    #[default]
    All,
    /// Every change except a fresh build's first epoch (its rows are the dataset itself, so
    /// a large first build does not write them twice); restarts and later epochs are logged.
    Updates,
    /// Nothing.
    None,
}

/// The dataset shards' file format: `part-SSSSS.jsonl`, `part-SSSSS.parquet`, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SinkFormat {
    #[default]
    Jsonl,
    Parquet,
    Both,
}

impl SinkFormat {
    pub fn jsonl(self) -> bool {
        matches!(self, SinkFormat::Jsonl | SinkFormat::Both)
    }
    pub fn parquet(self) -> bool {
        matches!(self, SinkFormat::Parquet | SinkFormat::Both)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SinkFormat::Jsonl => "jsonl",
            SinkFormat::Parquet => "parquet",
            SinkFormat::Both => "both",
        }
    }
}

/// The changelog topic: key = row id, value = the row, tombstone on retraction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSinkSpec {
    pub topic: String,
    /// Also write a progress marker per epoch to every partition.
    pub progress: bool,
}

/// A validated recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub sources: Vec<SourceSpec>,
    pub benchmarks: Vec<BenchmarkSpec>,
    pub teachers: Vec<TeacherSpec>,
    pub steps: Vec<StepSpec>,
    pub sink: SinkSpec,
}

pub const STEP_TYPES: &[&str] = &[
    "decontaminate",
    "length_guard",
    "score",
    "select",
    "dedup",
    "fanout",
    "answer_dedup",
    "answer_select",
    "answer_decontaminate",
];

/// Loading failed: the file could not be read, or the recipe has problems.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading recipe {file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(RecipeErrors),
}

impl Recipe {
    /// Reads and validates a recipe file.
    pub fn load(file: &Path) -> Result<Recipe, LoadError> {
        let text = std::fs::read_to_string(file).map_err(|source| LoadError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        Recipe::parse(file, &text).map_err(LoadError::Invalid)
    }

    /// Validates recipe text; `file` names it in messages and anchors relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<Recipe, RecipeErrors> {
        let issues = Issues::default();
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
                issues.push(
                    format!("line {line}, column {col}"),
                    format!("not valid TOML: {}", e.message()),
                );
                return Err(issues.into_errors(file));
            }
        };
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let recipe = read_recipe(file, &dir, &table, &issues);
        if issues.is_empty() {
            Ok(recipe)
        } else {
            Err(issues.into_errors(file))
        }
    }

    pub fn source(&self, name: &str) -> Option<&SourceSpec> {
        self.sources.iter().find(|s| s.name == name)
    }

    pub fn teacher_index(&self, name: &str) -> Option<usize> {
        self.teachers.iter().position(|t| t.name == name)
    }

    /// The LLM endpoints the recipe calls, with where (key path) each is named.
    pub fn llm_endpoints(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            if let StepKind::Score {
                scorer: Scorer::LlmDifficulty { call, .. } | Scorer::LlmResponseLength { call },
                ..
            } = &s.kind
            {
                out.push((call.endpoint.clone(), format!("steps[{i}] ({})", s.id)));
            }
        }
        for (i, t) in self.teachers.iter().enumerate() {
            if let TeacherKind::OpenAi { call } = &t.kind {
                out.push((call.endpoint.clone(), format!("teachers[{i}] ({})", t.name)));
            }
        }
        out
    }

    /// Whether any source, benchmark or sink uses Kafka.
    pub fn uses_kafka(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.input, Input::Kafka(_)))
            || self
                .benchmarks
                .iter()
                .any(|b| matches!(b.input, Input::Kafka(_)))
            || self.sink.kafka.is_some()
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

fn read_recipe(file: &Path, dir: &Path, table: &toml::Table, issues: &Issues) -> Recipe {
    let root = Obj::new("", table, issues);
    let (name, description) = match root.opt_table("recipe") {
        Some(r) => {
            let name = r.opt_str("name");
            let description = r.opt_str("description").unwrap_or_default();
            r.finish();
            (name, description)
        }
        None => (None, String::new()),
    };
    let name = name.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "recipe".into())
    });

    let sources = read_sources(&root, dir);
    let benchmarks = read_benchmarks(&root, dir);
    let teachers = read_teachers(&root, dir);
    let steps = read_steps(&root, dir, &sources, &benchmarks, &teachers);
    let sink = match root.opt_table("sink") {
        Some(s) => {
            let shards = s.opt_int("shards", 1, 4096).unwrap_or(4) as u32;
            let format = match s
                .opt_choice("format", &["jsonl", "parquet", "both"])
                .as_deref()
            {
                Some("parquet") => SinkFormat::Parquet,
                Some("both") => SinkFormat::Both,
                _ => SinkFormat::Jsonl,
            };
            let changes = match s
                .opt_choice("changes", &["all", "updates", "none"])
                .as_deref()
            {
                Some("updates") => ChangeLog::Updates,
                Some("none") => ChangeLog::None,
                _ => ChangeLog::All,
            };
            let kafka = s.opt_table("kafka").and_then(|k| {
                let topic = k.req_str("topic");
                let progress = k.opt_bool("progress").unwrap_or(true);
                k.finish();
                topic.map(|topic| KafkaSinkSpec { topic, progress })
            });
            s.finish();
            SinkSpec {
                shards,
                format,
                kafka,
                changes,
            }
        }
        None => SinkSpec {
            shards: 4,
            format: SinkFormat::Jsonl,
            kafka: None,
            changes: ChangeLog::All,
        },
    };
    root.finish();
    Recipe {
        file: file.to_path_buf(),
        name,
        description,
        sources,
        benchmarks,
        teachers,
        steps,
        sink,
    }
}

fn read_fields(obj: &Obj, defaults: FieldMap) -> FieldMap {
    let Some(f) = obj.opt_table("fields") else {
        return defaults;
    };
    let pick = |key: &str, default: String| -> String {
        match f.opt_str(key) {
            Some(s) if s.is_empty() => {
                f.issue(key, "field name must not be empty");
                default
            }
            Some(s) => s,
            None => default,
        }
    };
    let out = FieldMap {
        id: pick("id", defaults.id),
        question: pick("question", defaults.question),
        domain: pick("domain", defaults.domain),
    };
    f.finish();
    out
}

/// A path relative to the recipe's folder, which must exist.
fn existing_path(obj: &Obj, key: &str, dir: &Path) -> Option<PathBuf> {
    let raw = obj.req_str(key)?;
    let path = dir.join(&raw);
    if path.exists() {
        Some(path)
    } else {
        obj.issue(
            key,
            format!(
                "{} does not exist (paths are relative to the recipe's folder {})",
                path.display(),
                dir.display()
            ),
        );
        None
    }
}

/// `path = "..."` (which must exist) or `kafka = { topics = [..], pattern = ".." }`.
fn read_input(obj: &Obj, dir: &Path, single_topic: bool) -> Option<Input> {
    match (obj.has("path"), obj.has("kafka")) {
        (true, true) => {
            obj.issue("kafka", "give either `path` or `kafka`, not both");
            None
        }
        (false, true) => {
            let k = obj.opt_table("kafka")?;
            let mut topics = k.opt_str_list("topics").unwrap_or_default();
            if let Some(t) = k.opt_str("topic") {
                topics.push(t);
            }
            let pattern = if single_topic {
                None
            } else {
                k.opt_str("pattern")
            };
            if let Some(p) = &pattern {
                if let Err(e) = regex::Regex::new(p) {
                    k.issue("pattern", format!("not a valid regular expression: {e}"));
                }
            }
            if topics.is_empty() && pattern.is_none() {
                k.issue(
                    if single_topic { "topic" } else { "topics" },
                    if single_topic {
                        "missing (required): the topic name"
                    } else {
                        "name topics (`topics = [..]`) or a `pattern`"
                    },
                );
            }
            for t in &topics {
                if t.is_empty()
                    || t.len() > 249
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    k.issue("topics", format!("{t:?} is not a valid Kafka topic name"));
                }
            }
            k.finish();
            Some(Input::Kafka(KafkaTopics { topics, pattern }))
        }
        _ => existing_path(obj, "path", dir).map(Input::Files),
    }
}

fn unique_name(obj: &Obj, seen: &mut BTreeSet<String>, what: &str) -> Option<String> {
    let name = obj.req_str("name")?;
    if !seen.insert(name.clone()) {
        obj.issue("name", format!("{what} {name:?} is defined twice"));
    }
    Some(name)
}

fn read_sources(root: &Obj, dir: &Path) -> Vec<SourceSpec> {
    let mut seen = BTreeSet::new();
    let entries = root.tables("sources");
    if entries.is_empty() {
        root.issue("sources", "a recipe needs at least one [[sources]] entry");
    }
    let mut out = Vec::new();
    for (i, s) in entries.iter().enumerate() {
        let name = unique_name(s, &mut seen, "source");
        let input = read_input(s, dir, false);
        let domain = s.opt_str("domain").and_then(|d| {
            let parsed = Domain::parse(&d);
            if parsed.is_none() {
                s.issue("domain", format!("{d:?} is not one of math, code, science"));
            }
            parsed
        });
        let priority = s
            .opt_int("priority", 0, u32::MAX as i64)
            .unwrap_or(i as i64) as u32;
        let max_record_bytes =
            s.opt_int("max_record_bytes", 1, 1 << 30).unwrap_or(1 << 20) as usize;
        let fields = read_fields(s, FieldMap::default());
        if let Some(format) = s.opt_str("format") {
            if format != "jsonl" {
                s.issue(
                    "format",
                    format!("{format:?} is not supported (supported: jsonl)"),
                );
            }
        }
        if let (Some(name), Some(input)) = (name, input) {
            out.push(SourceSpec {
                name,
                input,
                domain,
                priority,
                fields,
                max_record_bytes,
            });
        }
    }
    for s in entries {
        s.finish();
    }
    out
}

fn read_benchmarks(root: &Obj, dir: &Path) -> Vec<BenchmarkSpec> {
    let mut seen = BTreeSet::new();
    let entries = root.tables("benchmarks");
    let mut out = Vec::new();
    for b in &entries {
        // `include = "benchmarks.toml"`: the [[benchmarks]] entries of a catalog file.
        if let Some(file) = b.opt_str("include") {
            let path = dir.join(&file);
            match std::fs::read_to_string(&path) {
                Ok(text) => match toml::from_str::<toml::Table>(&text) {
                    Ok(table) => {
                        let issues = Issues::default();
                        let catalog = Obj::new("", &table, &issues);
                        let catalog_dir = path.parent().unwrap_or(dir).to_path_buf();
                        for e in catalog.tables("benchmarks") {
                            let optional = e.opt_bool("optional").unwrap_or(false);
                            let _ = e.opt_str("paper");
                            let _ = e.opt_str("note");
                            if optional
                                && e.opt_str("path")
                                    .is_some_and(|p| !catalog_dir.join(p).exists())
                            {
                                continue;
                            }
                            if let (Some(name), Some(input)) = (
                                unique_name(&e, &mut seen, "benchmark"),
                                read_input(&e, &catalog_dir, true),
                            ) {
                                let fields = read_fields(&e, FieldMap::default());
                                let ignore_phrases = read_phrase_file(&e, &catalog_dir);
                                out.push(BenchmarkSpec {
                                    name,
                                    input,
                                    fields,
                                    ignore_phrases,
                                });
                            }
                            e.finish();
                        }
                        catalog.finish();
                        for issue in issues.take() {
                            b.issue(
                                "include",
                                format!("{}: {}: {}", path.display(), issue.key, issue.problem),
                            );
                        }
                    }
                    Err(e) => b.issue(
                        "include",
                        format!("{} is not valid TOML: {}", path.display(), e.message()),
                    ),
                },
                Err(e) => b.issue("include", format!("reading {}: {e}", path.display())),
            }
            continue;
        }
        let name = unique_name(b, &mut seen, "benchmark");
        let input = read_input(b, dir, true);
        let fields = read_fields(b, FieldMap::default());
        let ignore_phrases = read_phrase_file(b, dir);
        if let (Some(name), Some(input)) = (name, input) {
            out.push(BenchmarkSpec {
                name,
                input,
                fields,
                ignore_phrases,
            });
        }
    }
    for b in entries {
        b.finish();
    }
    out
}

/// `ignore_phrases = "FILE"`: a readable file of phrases, relative to the recipe.
fn read_phrase_file(obj: &Obj, dir: &Path) -> Option<PathBuf> {
    let file = obj.opt_str("ignore_phrases")?;
    let path = dir.join(&file);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Some(path),
        Ok(_) => {
            obj.issue(
                "ignore_phrases",
                format!("{} is not a file", path.display()),
            );
            None
        }
        Err(e) => {
            obj.issue("ignore_phrases", format!("reading {}: {e}", path.display()));
            None
        }
    }
}

/// The benchmark names a spec's items carry: its name, and for a directory the stem of each
/// file in it (read when the recipe is read).
fn bench_names(b: &BenchmarkSpec) -> Vec<String> {
    let mut names = vec![b.name.clone()];
    if let Some(dir) = b.input.path().filter(|p| p.is_dir()) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if let Some(stem) = e.path().file_stem() {
                    names.push(stem.to_string_lossy().into_owned());
                }
            }
        }
    }
    names
}

/// The n-gram hashes of every phrase (one a line, `#` comments) of a phrase file, sorted.
fn phrase_grams(ng: &NgramConfig, text: &str) -> Vec<u64> {
    let mut out: Vec<u64> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| ng.grams(l))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn read_teachers(root: &Obj, dir: &Path) -> Vec<TeacherSpec> {
    let mut seen = BTreeSet::new();
    let entries = root.tables("teachers");
    let mut out = Vec::new();
    for t in &entries {
        let name = unique_name(t, &mut seen, "teacher");
        let kind = match t
            .opt_choice("kind", &["synthetic", "replay", "openai"])
            .as_deref()
        {
            Some("openai") => read_llm_call(t, dir, 1.0, 16_800, "teacher.v1.txt")
                .map(|call| TeacherKind::OpenAi { call }),
            Some("synthetic") => Some(TeacherKind::Synthetic {
                answer_words: t.opt_int("answer_words", 1, 1_000_000).unwrap_or(300) as u32,
            }),
            Some("replay") => {
                let path = existing_path(t, "path", dir);
                let key = match t.opt_choice("key", &["id", "hash"]).as_deref() {
                    Some("hash") => LookupBy::Hash,
                    _ => LookupBy::Id,
                };
                let source = t.opt_str("source");
                let fields = match t.opt_table("fields") {
                    Some(f) => {
                        let r = ReplayFields {
                            id: f.opt_str("id").unwrap_or_else(|| "id".into()),
                            source: f.opt_str("source").unwrap_or_else(|| "source".into()),
                            question: f.opt_str("question").unwrap_or_else(|| "question".into()),
                            answer: f.opt_str("answer").unwrap_or_else(|| "answer".into()),
                        };
                        f.finish();
                        r
                    }
                    None => ReplayFields {
                        id: "id".into(),
                        source: "source".into(),
                        question: "question".into(),
                        answer: "answer".into(),
                    },
                };
                path.map(|path| TeacherKind::Replay {
                    path,
                    key,
                    fields,
                    source,
                })
            }
            _ => {
                if !t.has("kind") {
                    t.issue("kind", "missing (required): synthetic, replay or openai");
                }
                None
            }
        };
        let domains = read_domains(t);
        let samples = t.opt_int("samples", 1, 1024).map(|n| n as u16);
        if let (Some(name), Some(kind)) = (name, kind) {
            out.push(TeacherSpec {
                name,
                kind,
                domains,
                samples,
            });
        }
    }
    for t in entries {
        t.finish();
    }
    out
}

/// The shipped prompt templates, compiled in so that any recipe can use them by default.
pub fn builtin_template(name: &str) -> Option<Template> {
    let text = match name {
        "difficulty-math.v1.txt" => include_str!("../../pipelines/prompts/difficulty-math.v1.txt"),
        "difficulty-code.v1.txt" => include_str!("../../pipelines/prompts/difficulty-code.v1.txt"),
        "difficulty-science.v1.txt" => {
            include_str!("../../pipelines/prompts/difficulty-science.v1.txt")
        }
        "answer.v1.txt" => include_str!("../../pipelines/prompts/answer.v1.txt"),
        "teacher.v1.txt" => include_str!("../../pipelines/prompts/teacher.v1.txt"),
        _ => return None,
    };
    Some(Template {
        name: name.to_string(),
        text: text.to_string(),
    })
}

fn template_at(obj: &Obj, key: &str, raw: &str, dir: &Path) -> Option<Template> {
    let path = dir.join(raw);
    if !path.exists() {
        if let Some(t) = builtin_template(raw.rsplit('/').next().unwrap_or(raw)) {
            return Some(t);
        }
    }
    match Template::load(&path) {
        Ok(t) => Some(t),
        Err(e) => {
            obj.issue(key, e);
            None
        }
    }
}

/// The common keys of an LLM call: `endpoint` (required), `api`, `temperature`,
/// `max_tokens`, `top_p`, `prompt`.
fn read_llm_call(
    obj: &Obj,
    dir: &Path,
    temperature: f64,
    max_tokens: u32,
    default_prompt: &str,
) -> Option<LlmCall> {
    let endpoint = obj.req_str("endpoint");
    let api = match obj.opt_choice("api", &["chat", "completions"]).as_deref() {
        Some("completions") => Api::Completions,
        _ => Api::Chat,
    };
    let float = |key: &str, default: f64, min: f64, max: f64| -> f64 {
        match obj.raw(key) {
            None => default,
            Some(toml::Value::Float(f)) if *f >= min && *f <= max => *f,
            Some(toml::Value::Integer(i)) if (*i as f64) >= min && (*i as f64) <= max => *i as f64,
            Some(_) => {
                obj.issue(key, format!("expected a number in {min}..={max}"));
                default
            }
        }
    };
    let temperature = float("temperature", temperature, 0.0, 2.0);
    let top_p = obj.has("top_p").then(|| float("top_p", 1.0, 0.0, 1.0));
    let max_tokens = obj
        .opt_int("max_tokens", 1, 1_000_000)
        .map(|m| m as u32)
        .unwrap_or(max_tokens);
    let prompt = match obj.opt_str("prompt") {
        Some(p) => template_at(obj, "prompt", &p, dir)?,
        None => builtin_template(default_prompt).unwrap_or_else(Template::plain),
    };
    Some(LlmCall {
        endpoint: endpoint?,
        api,
        sampling: Sampling {
            temperature,
            max_tokens,
            top_p,
            json_schema: None,
        },
        prompt,
    })
}

fn read_decontam(
    s: &Obj,
    dir: &Path,
    benchmarks: &[BenchmarkSpec],
) -> (DecontamConfig, Option<Vec<String>>) {
    {
        let n = s.opt_int("ngram", 0, 1000).unwrap_or(13) as usize;
        let tokenize = s.opt_choice("tokenize", &["normalized", "raw"]);
        let tokenizer = s.opt_str("tokenizer");
        let unit_choice = s.opt_choice("unit", &["word", "char", "token"]);
        let unit = match unit_choice.as_deref() {
            Some("char") => NgramUnit::Char,
            Some("token") => match &tokenizer {
                None => {
                    s.issue(
                        "unit",
                        "unit = \"token\" needs `tokenizer = \"path/to/tokenizer.json\"` (a Hugging Face tokenizer file, e.g. the teacher's)",
                    );
                    NgramUnit::Word
                }
                Some(file) => match TokenizerRef::load(&dir.join(file)) {
                    Ok(tokenizer) => NgramUnit::Token(Tokens {
                        tokenizer,
                        normalized: tokenize.as_deref() != Some("raw"),
                    }),
                    Err(e) => {
                        s.issue("tokenizer", e);
                        NgramUnit::Word
                    }
                },
            },
            _ => NgramUnit::Word,
        };
        if unit_choice.as_deref() != Some("token") {
            if tokenizer.is_some() {
                s.issue(
                    "tokenizer",
                    "a tokenizer is only used with unit = \"token\"",
                );
            }
            if tokenize.is_some() {
                s.issue("tokenize", "`tokenize` is only used with unit = \"token\"");
            }
        }
        let fuzzy = match s.raw("fuzzy") {
            None => None,
            Some(toml::Value::Integer(t)) if (1..=100).contains(t) => Some(*t as f64),
            Some(toml::Value::Float(t)) if *t > 0.0 && *t <= 100.0 => Some(*t),
            Some(_) => {
                s.issue(
                    "fuzzy",
                    "expected an Indel ratio threshold in 1..=100 (the paper: 75)",
                );
                None
            }
        };
        let candidate_ngram = s.opt_int("fuzzy_candidates", 1, 50).unwrap_or(3) as usize;
        let min_shared_pct = s.opt_int("fuzzy_min_shared", 0, 100).unwrap_or(10) as u32;
        let normalize = s.opt_bool("fuzzy_normalize").unwrap_or(true);
        let skip_numeric = s.opt_bool("skip_numeric").unwrap_or(true);
        let ngram = (n > 0).then_some(NgramConfig { n, unit });
        let mut ignored = Vec::new();
        if let Some(file) = s.opt_str("ignore_phrases") {
            let path = dir.join(&file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Some(ng) = &ngram {
                        ignored = phrase_grams(ng, &text);
                    }
                }
                Err(e) => s.issue("ignore_phrases", format!("reading {}: {e}", path.display())),
            }
        }
        let mut ignored_by_bench = BTreeMap::new();
        if let Some(ng) = &ngram {
            for b in benchmarks {
                if let Some(path) = &b.ignore_phrases {
                    match std::fs::read_to_string(path) {
                        Ok(text) => {
                            let grams = phrase_grams(ng, &text);
                            // A directory of files is one benchmark per file (named by stem):
                            // the list applies to each file there.
                            for name in bench_names(b) {
                                ignored_by_bench.insert(name, grams.clone());
                            }
                        }
                        Err(e) => s.issue(
                            "benchmarks",
                            format!("{}: reading {}: {e}", b.name, path.display()),
                        ),
                    }
                }
            }
        }
        if ngram.is_none() && fuzzy.is_none() {
            s.issue("ngram", "ngram = 0 turns the n-gram method off, and no `fuzzy` threshold is set: nothing would be matched");
        }
        let names = s.opt_str_list("benchmarks");
        if let Some(names) = &names {
            for n in names {
                if !benchmarks.iter().any(|b| &b.name == n) {
                    s.issue(
                        "benchmarks",
                        format!(
                            "no benchmark named {n:?}{}",
                            suggest(n, benchmarks.iter().map(|b| b.name.as_str()))
                        ),
                    );
                }
            }
        }
        if benchmarks.is_empty() {
            s.issue(
                "type",
                "decontaminate needs at least one [[benchmarks]] entry",
            );
        }
        (
            DecontamConfig {
                ngram,
                skip_numeric,
                ignored,
                ignored_by_bench,
                fuzzy: fuzzy.map(|t| FuzzyConfig {
                    threshold_bp: (t * 100.0).round() as u32,
                    candidate_ngram,
                    normalize,
                    min_shared_pct,
                }),
            },
            names,
        )
    }
}

fn read_domains(obj: &Obj) -> Option<Vec<Domain>> {
    let list = obj.opt_str_list("domains")?;
    let mut out = Vec::new();
    for d in list {
        match Domain::parse(&d) {
            Some(x) => out.push(x),
            None => obj.issue(
                "domains",
                format!("{d:?} is not one of math, code, science"),
            ),
        }
    }
    Some(out)
}

fn read_sizes(obj: &Obj, per: GroupBy, sources: &[SourceSpec]) -> Sizes {
    let mut sizes = Sizes::default();
    match obj.raw("n") {
        None => obj.issue(
            "n",
            "missing (required): a number, or a table of numbers per group",
        ),
        Some(toml::Value::Integer(n)) if *n >= 0 => sizes.default = Some(*n as u64),
        Some(toml::Value::Table(t)) => {
            let table = obj.nested("n", t);
            for (k, v) in table.entries() {
                let n = match v {
                    toml::Value::Integer(n) if *n >= 0 => *n as u64,
                    _ => {
                        table.issue(k, "expected a non-negative integer");
                        continue;
                    }
                };
                if k == "default" {
                    sizes.default = Some(n);
                    continue;
                }
                let known: Vec<&str> = match per {
                    GroupBy::Domain => vec!["math", "code", "science"],
                    GroupBy::Source => sources.iter().map(|s| s.name.as_str()).collect(),
                    GroupBy::All => vec![],
                };
                if !known.contains(&k.as_str()) {
                    let what = match per {
                        GroupBy::Domain => "domain",
                        GroupBy::Source => "source",
                        GroupBy::All => "group (per = \"all\" takes a single number)",
                    };
                    table.issue(
                        k,
                        format!("not a {what}{}", suggest(k, known.iter().copied())),
                    );
                }
                sizes.per_name.insert(k.clone(), n);
            }
        }
        Some(_) => obj.issue(
            "n",
            "expected a non-negative integer, or a table like { math = 100, code = 50 }",
        ),
    }
    sizes
}

fn read_steps(
    root: &Obj,
    dir: &Path,
    sources: &[SourceSpec],
    benchmarks: &[BenchmarkSpec],
    teachers: &[TeacherSpec],
) -> Vec<StepSpec> {
    let entries = root.tables("steps");
    if entries.is_empty() {
        root.issue("steps", "a recipe needs at least one [[steps]] entry");
    }
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    let mut fanout_at: Option<usize> = None;
    for (i, s) in entries.iter().enumerate() {
        let id = s.req_str("id");
        if let Some(id) = &id {
            if !ids.insert(id.clone()) {
                s.issue("id", format!("step id {id:?} is used twice"));
            }
        }
        let domains = read_domains(s);
        let kind = match s.opt_choice("type", STEP_TYPES).as_deref() {
            Some("decontaminate") => {
                let (config, names) = read_decontam(s, dir, benchmarks);
                Some(StepKind::Decontaminate {
                    config,
                    benchmarks: names,
                })
            }
            Some("answer_decontaminate") => {
                if fanout_at.is_none() {
                    s.issue(
                        "type",
                        "answer_decontaminate works on answers: put it after the fanout step",
                    );
                }
                let (config, names) = read_decontam(s, dir, benchmarks);
                Some(StepKind::AnswerDecontaminate {
                    config,
                    benchmarks: names,
                })
            }
            Some("answer_select") => {
                if fanout_at.is_none() {
                    s.issue(
                        "type",
                        "answer_select works on answers: put it after the fanout step",
                    );
                }
                let keep = match s.opt_choice("keep", &["shortest", "longest"]).as_deref() {
                    Some("longest") => Keep::Longest,
                    Some(_) => Keep::Shortest,
                    None => {
                        if !s.has("keep") {
                            s.issue("keep", "missing (required): shortest or longest");
                        }
                        Keep::Shortest
                    }
                };
                let k = s.opt_int("k", 1, 1024).unwrap_or_else(|| {
                    if !s.has("k") {
                        s.issue(
                            "k",
                            "missing (required): how many answers per question to keep",
                        );
                    }
                    1
                }) as usize;
                Some(StepKind::AnswerSelect { keep, k })
            }
            Some("length_guard") => s
                .opt_int("max_tokens", 1, u32::MAX as i64)
                .or_else(|| {
                    if !s.has("max_tokens") {
                        s.issue("max_tokens", "missing (required)");
                    }
                    None
                })
                .map(|m| StepKind::LengthGuard {
                    max_tokens: m as u32,
                }),
            Some("score") => {
                let scorer = match s
                    .opt_choice(
                        "scorer",
                        &[
                            "length_chars",
                            "length_tokens",
                            "constant",
                            "llm_difficulty",
                            "llm_response_length",
                        ],
                    )
                    .as_deref()
                {
                    Some("length_chars") => Some(Scorer::Heuristic(Heuristic::Chars)),
                    Some("length_tokens") => Some(Scorer::Heuristic(Heuristic::Tokens)),
                    Some("constant") => Some(Scorer::Heuristic(Heuristic::Constant(
                        s.opt_int("value", i64::MIN, i64::MAX).unwrap_or(0),
                    ))),
                    Some("llm_difficulty") => {
                        let mut prompts = BTreeMap::new();
                        let given = s.opt_table("prompts");
                        for d in Domain::ALL {
                            let default = format!("difficulty-{}.v1.txt", d.as_str());
                            let t = match given
                                .as_ref()
                                .and_then(|g| g.opt_str(d.as_str()).map(|p| (g, p)))
                            {
                                Some((g, p)) => template_at(g, d.as_str(), &p, dir),
                                None => builtin_template(&default),
                            };
                            if let Some(t) = t {
                                prompts.insert(d, t);
                            }
                        }
                        if let Some(g) = given {
                            g.finish();
                        }
                        read_llm_call(s, dir, 0.0, 256, "answer.v1.txt").map(|mut call| {
                            call.sampling.json_schema = s
                                .opt_bool("structured")
                                .unwrap_or(true)
                                .then(crate::llm::prompts::difficulty_schema);
                            Scorer::LlmDifficulty { call, prompts }
                        })
                    }
                    Some("llm_response_length") => {
                        read_llm_call(s, dir, 1.0, 4096, "answer.v1.txt")
                            .map(|call| Scorer::LlmResponseLength { call })
                    }
                    _ => {
                        if !s.has("scorer") {
                            s.issue(
                                "scorer",
                                "missing (required): length_chars, length_tokens, constant, llm_difficulty or llm_response_length",
                            );
                        }
                        None
                    }
                };
                let default_difficulty = matches!(scorer, Some(Scorer::LlmDifficulty { .. }));
                let as_difficulty = s.opt_bool("as_difficulty").unwrap_or(default_difficulty);
                scorer.map(|scorer| StepKind::Score {
                    scorer,
                    as_difficulty,
                })
            }
            Some("select") => {
                let per = match s.opt_choice("per", &["all", "source", "domain"]).as_deref() {
                    Some("source") => GroupBy::Source,
                    Some("domain") => GroupBy::Domain,
                    _ => GroupBy::All,
                };
                match s
                    .opt_choice("mode", &["threshold", "top_n", "sample"])
                    .as_deref()
                {
                    Some("threshold") => {
                        let min = s.opt_int("min", i64::MIN, i64::MAX);
                        let max = s.opt_int("max", i64::MIN, i64::MAX);
                        if min.is_none() && max.is_none() {
                            s.issue("min", "threshold selection needs min, max or both");
                        }
                        Some(StepKind::Select(SelectSpec::Threshold { min, max }))
                    }
                    Some("top_n") => Some(StepKind::Select(SelectSpec::TopN {
                        per,
                        n: read_sizes(s, per, sources),
                    })),
                    Some("sample") => Some(StepKind::Select(SelectSpec::Sample {
                        per,
                        n: read_sizes(s, per, sources),
                    })),
                    _ => {
                        if !s.has("mode") {
                            s.issue("mode", "missing (required): threshold, top_n or sample");
                        }
                        None
                    }
                }
            }
            Some("dedup") => match s
                .opt_choice("mode", &["exact", "none", "fuzzy", "minhash"])
                .as_deref()
            {
                Some("none") => Some(StepKind::Dedup {
                    mode: DedupMode::None,
                }),
                Some(mode @ ("fuzzy" | "minhash")) => {
                    let fuzzy = mode == "fuzzy";
                    let mut cfg = if fuzzy {
                        NearDedupConfig::fuzzy(9000)
                    } else {
                        NearDedupConfig::minhash(80)
                    };
                    match s.raw("threshold") {
                        None => {}
                        Some(v) => {
                            let t = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
                            match (t, fuzzy) {
                                (Some(t), true) if t > 0.0 && t <= 100.0 => {
                                    cfg.similarity = Similarity::Indel {
                                        threshold_bp: (t * 100.0).round() as u32,
                                    }
                                }
                                (Some(t), false) if t > 0.0 && t <= 1.0 => {
                                    cfg.similarity = Similarity::Jaccard {
                                        threshold_pct: (t * 100.0).round() as u32,
                                        words: 5,
                                    }
                                }
                                _ => s.issue(
                                    "threshold",
                                    if fuzzy {
                                        "expected an Indel ratio in 1..=100 (default 90)"
                                    } else {
                                        "expected a Jaccard similarity in 0..1 (default 0.8)"
                                    },
                                ),
                            }
                        }
                    }
                    if let Some(sh) = s.opt_str("shingle") {
                        let parsed = sh.split_once(':').and_then(|(kind, n)| {
                            let n: usize = n.parse().ok().filter(|n| *n >= 1 && *n <= 64)?;
                            match kind {
                                "char" => Some(Shingle::Chars(n)),
                                "word" => Some(Shingle::Words(n)),
                                _ => None,
                            }
                        });
                        match parsed {
                            Some(p) => {
                                cfg.shingle = p;
                                if let (
                                    Similarity::Jaccard { threshold_pct, .. },
                                    Shingle::Words(n),
                                ) = (cfg.similarity, p)
                                {
                                    cfg.similarity = Similarity::Jaccard {
                                        threshold_pct,
                                        words: n,
                                    };
                                }
                            }
                            None => s.issue("shingle", format!("{sh:?} is not char:N or word:N")),
                        }
                    }
                    cfg.permutations = s
                        .opt_int("permutations", 1, 4096)
                        .map(|n| n as usize)
                        .unwrap_or(cfg.permutations);
                    cfg.bands = s
                        .opt_int("bands", 1, 4096)
                        .map(|n| n as usize)
                        .unwrap_or(cfg.bands);
                    if cfg.bands > cfg.permutations || cfg.permutations % cfg.bands != 0 {
                        s.issue(
                            "bands",
                            format!(
                                "bands ({}) must divide permutations ({})",
                                cfg.bands, cfg.permutations
                            ),
                        );
                    }
                    cfg.max_bucket = s
                        .opt_int("max_bucket", 2, 1_000_000)
                        .map(|n| n as usize)
                        .unwrap_or(cfg.max_bucket);
                    Some(StepKind::Dedup {
                        mode: DedupMode::Near(cfg),
                    })
                }
                _ => Some(StepKind::Dedup {
                    mode: DedupMode::Exact,
                }),
            },
            Some("fanout") => {
                let names = s
                    .opt_str_list("teachers")
                    .or_else(|| s.opt_str("teacher").map(|t| vec![t]));
                let names = names.unwrap_or_else(|| {
                    s.issue(
                        "teacher",
                        "missing (required): the name of a [[teachers]] entry",
                    );
                    Vec::new()
                });
                for n in &names {
                    if !teachers.iter().any(|t| &t.name == n) {
                        s.issue(
                            "teacher",
                            format!(
                                "no teacher named {n:?}{}",
                                suggest(n, teachers.iter().map(|t| t.name.as_str()))
                            ),
                        );
                    }
                }
                let samples = s.opt_int("samples", 1, 1024).unwrap_or(1) as u16;
                if let Some(prev) = fanout_at {
                    s.issue(
                        "type",
                        format!("only one fanout step is allowed (steps[{prev}] is one)"),
                    );
                }
                fanout_at = Some(i);
                Some(StepKind::Fanout {
                    teachers: names,
                    samples,
                })
            }
            Some("answer_dedup") => {
                if fanout_at.is_none() {
                    s.issue(
                        "type",
                        "answer_dedup works on answers: put it after the fanout step",
                    );
                }
                Some(StepKind::AnswerDedup)
            }
            _ => {
                if !s.has("type") {
                    s.issue(
                        "type",
                        format!("missing (required): one of {}", STEP_TYPES.join(", ")),
                    );
                }
                None
            }
        };
        if let Some(kind) = &kind {
            if fanout_at.is_some_and(|f| f < i) && !kind.is_row_step() {
                s.issue(
                    "type",
                    format!(
                        "{} works on questions: put it before the fanout step",
                        kind.type_name()
                    ),
                );
            }
            if domains.is_some() && (kind.is_row_step() || matches!(kind, StepKind::Fanout { .. }))
            {
                s.issue(
                    "domains",
                    format!(
                        "{} applies to every domain: remove `domains`",
                        kind.type_name()
                    ),
                );
            }
        }
        if let (Some(id), Some(kind)) = (id, kind) {
            out.push(StepSpec { id, domains, kind });
        }
    }
    for s in entries {
        s.finish();
    }
    out
}
