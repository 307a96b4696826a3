//! `thoughtflow gen`: a seeded, OpenThoughts3-scale workload to build, benchmark and compare.
//!
//! At scale 1.0 it writes the paper's five question pools (OpenMath 2.9M, OpenCodeReasoning
//! 459k, CodeGolf 116k, Physics 547k, organic chemistry 46k = 4.07M questions) as JSONL files
//! of `{"id", "question"}` under `OUT/sources/<source>/part-NNNNN.jsonl` (100,000 lines per
//! file), scaled by `--scale`. Questions are built from seeded word choices (Zipf-distributed
//! over function words, the domain's terms and 20,000 pseudo-words) with each domain's typical
//! length (math ~60 words, code ~200, science ~80, log-normal spread), so they are distinct;
//! on top of them it plants, at known places:
//!
//! - exact duplicates (3% of the questions by default): another question's text, verbatim, in
//!   the same domain (often in another source);
//! - near duplicates (2%): another question's text with 1-3 words replaced;
//! - benchmark contamination (1,000 items at scale 1.0, at least 20): half verbatim copies of
//!   items of the shipped benchmark sets, half lightly edited copies (1-2 words replaced),
//!   placed in a source of the benchmark's domain.
//!
//! It also writes `OUT/benchmarks/` (the shipped benchmark sets, embedded in the binary),
//! `OUT/ot3.toml` (the full recipe over them: 13-gram + fuzzy 75 decontamination, length
//! guard, length score, exact dedup, per-domain top-N to 75,000 questions x scale, 16
//! synthetic answers each at realistic lengths) and `OUT/truth.json` (where everything was
//! planted). The same seed and options give the same bytes; each record depends only on the
//! seed and its place, so files are written in parallel.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One question pool of the paper's final recipe.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    pub name: &'static str,
    pub domain: &'static str,
    /// Questions at scale 1.0.
    pub size: u64,
    /// Mean question length in words.
    pub mean_words: f64,
}

/// The five pools, domains contiguous (math, code, science).
pub const POOLS: [Pool; 5] = [
    Pool {
        name: "openmath2",
        domain: "math",
        size: 2_900_000,
        mean_words: 60.0,
    },
    Pool {
        name: "opencodereasoning",
        domain: "code",
        size: 459_000,
        mean_words: 200.0,
    },
    Pool {
        name: "codegolf",
        domain: "code",
        size: 116_000,
        mean_words: 200.0,
    },
    Pool {
        name: "physics",
        domain: "science",
        size: 547_000,
        mean_words: 80.0,
    },
    Pool {
        name: "organic_chemistry",
        domain: "science",
        size: 46_000,
        mean_words: 80.0,
    },
];

/// The paper's final sample per domain (75,000 questions), before scaling.
pub const FINAL_SAMPLE: [(&str, f64); 3] =
    [("math", 53_125.0), ("code", 15_625.0), ("science", 6_250.0)];

/// The shipped benchmark sets (pipelines/data/benchmarks), with the domain whose sources get
/// their planted copies.
const BENCHMARKS: [(&str, &str, &str); 9] = [
    (
        "aime2024",
        "math",
        include_str!("../pipelines/data/benchmarks/aime2024.jsonl"),
    ),
    (
        "aime2025_I",
        "math",
        include_str!("../pipelines/data/benchmarks/aime2025_I.jsonl"),
    ),
    (
        "cnmo2024",
        "math",
        include_str!("../pipelines/data/benchmarks/cnmo2024.jsonl"),
    ),
    (
        "gsm8k_test",
        "math",
        include_str!("../pipelines/data/benchmarks/gsm8k_test.jsonl"),
    ),
    (
        "humaneval",
        "code",
        include_str!("../pipelines/data/benchmarks/humaneval.jsonl"),
    ),
    (
        "jee_math",
        "math",
        include_str!("../pipelines/data/benchmarks/jee_math.jsonl"),
    ),
    (
        "math500",
        "math",
        include_str!("../pipelines/data/benchmarks/math500.jsonl"),
    ),
    (
        "mbpp_test",
        "code",
        include_str!("../pipelines/data/benchmarks/mbpp_test.jsonl"),
    ),
    (
        "scicode",
        "science",
        include_str!("../pipelines/data/benchmarks/scicode.jsonl"),
    ),
];

/// Realistic answer lengths in words (QwQ-32B traces run to thousands of words).
pub const ANSWER_WORDS: [(&str, u32); 3] = [("math", 2000), ("code", 3000), ("science", 2000)];

/// Lines per source file.
pub const FILE_RECORDS: u64 = 100_000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub scale: f64,
    pub seed: u64,
    /// Share of questions that are exact copies of another question.
    pub exact_share: f64,
    /// Share of questions that are near copies (1-3 words replaced) of another question.
    pub near_share: f64,
    /// Planted benchmark copies (default: 1,000 x scale, at least 20).
    pub contamination: Option<usize>,
    /// Synthetic answer length in words for every domain (default: [`ANSWER_WORDS`]).
    pub answer_words: Option<u32>,
    /// Answers per question (the paper: 16).
    pub samples: u32,
    /// Writer threads (default: the available parallelism).
    pub threads: Option<usize>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            scale: 1.0,
            seed: 0,
            exact_share: 0.03,
            near_share: 0.02,
            contamination: None,
            answer_words: None,
            samples: 16,
            threads: None,
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct GenSummary {
    pub questions: u64,
    pub files: usize,
    pub bytes: u64,
    pub exact_copies: usize,
    pub near_copies: usize,
    pub contamination: usize,
    pub elapsed: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Plant {
    /// A verbatim copy of the plain question at this global index.
    Exact(u64),
    /// An edited copy of the plain question at this global index.
    Near(u64),
    /// A copy of benchmark item (set, line), verbatim or edited.
    Bench {
        set: usize,
        item: usize,
        edited: bool,
    },
}

struct BenchItem {
    id: String,
    text: String,
}

struct Plan {
    seed: u64,
    /// Questions per pool, and each pool's first global index.
    sizes: Vec<u64>,
    starts: Vec<u64>,
    plants: HashMap<u64, Plant>,
    items: Vec<Vec<BenchItem>>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn rng_for(seed: u64, stream: u64, index: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(splitmix(
        splitmix(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)) ^ index,
    ))
}

const FUNCTION_WORDS: &[&str] = &[
    "the", "of", "a", "and", "to", "is", "in", "that", "for", "with", "each", "be", "if", "are",
    "by", "its", "on", "as", "at", "all", "from", "this", "let", "given", "such", "where", "which",
    "then", "an", "it", "than", "every", "both", "when", "two", "one", "not", "there", "what",
    "how",
];

const MATH_WORDS: &[&str] = &[
    "integer",
    "real",
    "number",
    "numbers",
    "triangle",
    "circle",
    "radius",
    "polynomial",
    "roots",
    "sum",
    "product",
    "prime",
    "divisor",
    "sequence",
    "function",
    "value",
    "values",
    "positive",
    "negative",
    "equation",
    "inequality",
    "area",
    "perimeter",
    "angle",
    "side",
    "sides",
    "point",
    "points",
    "line",
    "segment",
    "square",
    "cube",
    "probability",
    "random",
    "chosen",
    "expected",
    "remainder",
    "divided",
    "modulo",
    "digits",
    "coefficient",
    "maximum",
    "minimum",
    "smallest",
    "largest",
    "distinct",
    "ordered",
    "pairs",
    "set",
    "subset",
    "matrix",
    "determinant",
    "vector",
    "parallel",
    "perpendicular",
    "tangent",
    "chord",
    "diameter",
    "inscribed",
    "circumscribed",
    "regular",
    "hexagon",
    "pentagon",
    "rectangle",
    "length",
    "width",
    "height",
    "volume",
    "ratio",
    "fraction",
    "rational",
    "irrational",
    "complex",
    "imaginary",
    "exponent",
    "logarithm",
    "factorial",
    "binomial",
    "arithmetic",
    "geometric",
    "series",
    "term",
    "terms",
    "compute",
    "find",
    "determine",
    "prove",
    "evaluate",
    "simplify",
    "express",
    "satisfies",
    "satisfying",
    "holds",
    "consecutive",
    "odd",
    "even",
    "multiple",
    "multiples",
    "greatest",
    "common",
    "least",
    "graph",
    "parabola",
    "ellipse",
    "hyperbola",
    "axis",
    "origin",
    "coordinates",
    "slope",
    "intercept",
    "interval",
    "domain",
    "range",
    "integral",
    "derivative",
    "limit",
    "$x$",
    "$y$",
    "$n$",
    "$k$",
    "$a$",
    "$b$",
    "$p(x)$",
    "$f(x)$",
    "$x^2$",
    "$a_n$",
    "$\\frac{1}{2}$",
    "$\\sqrt{2}$",
    "$\\pi$",
    "$ABC$",
    "$AB$",
    "$\\angle A$",
    "$n!$",
    "$\\binom{n}{k}$",
    "$\\log_2$",
    "$m+n$",
];

const CODE_WORDS: &[&str] = &[
    "array",
    "string",
    "integer",
    "integers",
    "query",
    "queries",
    "input",
    "output",
    "print",
    "return",
    "function",
    "program",
    "test",
    "case",
    "cases",
    "line",
    "lines",
    "contains",
    "element",
    "elements",
    "index",
    "indices",
    "length",
    "substring",
    "subsequence",
    "permutation",
    "graph",
    "tree",
    "node",
    "nodes",
    "edge",
    "edges",
    "vertex",
    "path",
    "shortest",
    "cycle",
    "root",
    "leaf",
    "parent",
    "child",
    "weight",
    "grid",
    "cell",
    "cells",
    "row",
    "column",
    "matrix",
    "operation",
    "operations",
    "minimum",
    "maximum",
    "number",
    "count",
    "modulo",
    "answer",
    "first",
    "second",
    "next",
    "following",
    "separated",
    "space",
    "characters",
    "lowercase",
    "uppercase",
    "letters",
    "binary",
    "bits",
    "xor",
    "sorted",
    "sort",
    "increasing",
    "decreasing",
    "segment",
    "interval",
    "prefix",
    "suffix",
    "sum",
    "pairs",
    "distinct",
    "unique",
    "possible",
    "impossible",
    "valid",
    "invalid",
    "bytes",
    "shortest",
    "code",
    "golf",
    "challenge",
    "language",
    "submission",
    "score",
    "stdin",
    "stdout",
    "loop",
    "recursion",
    "stack",
    "queue",
    "heap",
    "hash",
    "map",
    "list",
    "time",
    "limit",
    "memory",
    "constraints",
    "satisfy",
    "guaranteed",
    "exactly",
    "least",
    "most",
    "player",
    "game",
    "move",
    "moves",
    "wins",
    "turn",
    "optimal",
    "strategy",
    "`n`",
    "`k`",
    "`a_i`",
    "`s`",
    "`q`",
    "`10^9+7`",
    "`1 <= n <= 2*10^5`",
    "`O(n log n)`",
];

const SCIENCE_WORDS: &[&str] = &[
    "mass",
    "velocity",
    "acceleration",
    "force",
    "energy",
    "momentum",
    "field",
    "electric",
    "magnetic",
    "charge",
    "current",
    "voltage",
    "resistance",
    "capacitor",
    "circuit",
    "frequency",
    "wavelength",
    "photon",
    "electron",
    "proton",
    "neutron",
    "nucleus",
    "atom",
    "molecule",
    "bond",
    "reaction",
    "mechanism",
    "product",
    "reagent",
    "solvent",
    "acid",
    "base",
    "equilibrium",
    "entropy",
    "enthalpy",
    "temperature",
    "pressure",
    "gas",
    "ideal",
    "heat",
    "work",
    "potential",
    "kinetic",
    "quantum",
    "state",
    "spin",
    "orbital",
    "ring",
    "benzene",
    "carbon",
    "hydrogen",
    "oxygen",
    "nitrogen",
    "alkene",
    "alkyne",
    "ketone",
    "aldehyde",
    "ester",
    "amine",
    "alcohol",
    "chiral",
    "stereocenter",
    "isomer",
    "yield",
    "nucleophile",
    "electrophile",
    "substitution",
    "elimination",
    "addition",
    "oxidation",
    "reduction",
    "spectrum",
    "peak",
    "NMR",
    "IR",
    "pendulum",
    "spring",
    "oscillation",
    "friction",
    "incline",
    "rotation",
    "torque",
    "angular",
    "gravity",
    "orbit",
    "planet",
    "relativity",
    "frame",
    "observer",
    "light",
    "lens",
    "mirror",
    "refraction",
    "wave",
    "interference",
    "diffraction",
    "thermal",
    "conductivity",
    "density",
    "volume",
    "fluid",
    "flow",
    "viscosity",
    "explain",
    "calculate",
    "estimate",
    "why",
    "does",
    "would",
    "experiment",
    "measured",
    "constant",
    "system",
    "particle",
    "particles",
    "collision",
    "m/s",
    "kg",
    "J",
    "N",
    "K",
    "mol",
    "eV",
    "nm",
    "Pa",
    "$\\hbar$",
    "$E=mc^2$",
];

fn vocabulary(domain: &str) -> &'static [&'static str] {
    match domain {
        "math" => MATH_WORDS,
        "code" => CODE_WORDS,
        _ => SCIENCE_WORDS,
    }
}

/// A length with the domain's mean and a log-normal-like spread.
fn length(rng: &mut fastrand::Rng, mean: f64) -> usize {
    let z = (rng.f64() + rng.f64() + rng.f64() + rng.f64() - 2.0) * 1.732;
    let w = mean * (-0.125f64).exp() * (0.5 * z).exp();
    (w.round() as usize).clamp(8, (mean * 8.0) as usize)
}

/// A domain's words by frequency rank: function words, the domain's terms, then 20,000
/// pseudo-words, drawn with Zipf's law (rank r with probability ~ 1/r), as in real text: a
/// few words are everywhere, most are rare, so unrelated questions share few word n-grams.
pub struct Zipf {
    words: Vec<String>,
    /// `QUANTILES + 1` ranks: rank(u) = V^u at u = i / QUANTILES.
    table: Vec<u32>,
}

const QUANTILES: usize = 1 << 14;
const PSEUDO_WORDS: usize = 20_000;
const SYLLABLES: [&str; 24] = [
    "ka", "ro", "mi", "te", "lo", "na", "vi", "su", "pe", "do", "ra", "ne", "li", "to", "ma", "se",
    "ri", "co", "la", "de", "tra", "ben", "gor", "phi",
];

impl Zipf {
    fn new(domain: &str, stream: u64) -> Zipf {
        let mut words: Vec<String> = FUNCTION_WORDS.iter().map(|w| w.to_string()).collect();
        words.extend(vocabulary(domain).iter().map(|w| w.to_string()));
        let mut seen: HashSet<String> = words.iter().cloned().collect();
        let mut rng = rng_for(0x5EED, stream, 0);
        while words.len() < FUNCTION_WORDS.len() + vocabulary(domain).len() + PSEUDO_WORDS {
            let n = rng.usize(2..5);
            let w: String = (0..n)
                .map(|_| SYLLABLES[rng.usize(..SYLLABLES.len())])
                .collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let v = words.len() as f64;
        let table = (0..=QUANTILES)
            .map(|i| (v.powf(i as f64 / QUANTILES as f64) as u32).saturating_sub(1))
            .collect();
        Zipf { words, table }
    }

    fn of(domain: &str) -> &'static Zipf {
        static ZIPF: std::sync::OnceLock<[Zipf; 3]> = std::sync::OnceLock::new();
        let all = ZIPF.get_or_init(|| {
            [
                Zipf::new("math", 1),
                Zipf::new("code", 2),
                Zipf::new("science", 3),
            ]
        });
        match domain {
            "math" => &all[0],
            "code" => &all[1],
            _ => &all[2],
        }
    }

    fn word(&self, rng: &mut fastrand::Rng) -> &str {
        let i = rng.usize(..QUANTILES);
        let (lo, hi) = (self.table[i], self.table[i + 1]);
        let r = if hi > lo { rng.u32(lo..hi) } else { lo };
        &self.words[(r as usize).min(self.words.len() - 1)]
    }
}

fn push_word(out: &mut String, rng: &mut fastrand::Rng, zipf: &Zipf) {
    if rng.u32(..100) < 6 {
        let n = rng.u32(..1000);
        out.push_str(itoa(n, &mut [0u8; 10]));
    } else {
        out.push_str(zipf.word(rng));
    }
}

fn itoa(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("digits")
}

/// The plain (unplanted) question text of pool `pool`, index `i`.
fn base_text(seed: u64, pool: usize, i: u64, out: &mut String) {
    let p = &POOLS[pool];
    let mut rng = rng_for(seed, pool as u64 + 1, i);
    let zipf = Zipf::of(p.domain);
    let words = length(&mut rng, p.mean_words);
    // Code problems have sections; every text is sentences of 6-18 words.
    let sections: &[&str] = if p.domain == "code" {
        &["\n\nInput\n", "\n\nOutput\n", "\n\nExamples\n"]
    } else {
        &[]
    };
    let mut next_section = 0;
    let mut sentence = 0;
    let mut sentence_len = rng.usize(6..19);
    for w in 0..words {
        if !sections.is_empty()
            && next_section < sections.len()
            && w * (sections.len() + 2) >= words * (next_section + 2)
            && sentence == 0
        {
            out.push_str(sections[next_section]);
            next_section += 1;
        } else if w > 0 {
            out.push(' ');
        }
        let start = out.len();
        push_word(out, &mut rng, zipf);
        if sentence == 0 {
            // Capitalize the sentence's first letter (ASCII words only).
            if let Some(b) = out[start..].bytes().next() {
                if b.is_ascii_lowercase() {
                    // SAFETY-free: replace the single ASCII byte.
                    let upper = (b as char).to_ascii_uppercase().to_string();
                    out.replace_range(start..start + 1, &upper);
                }
            }
        }
        sentence += 1;
        if sentence == sentence_len || w + 1 == words {
            out.push(if p.domain == "math" && w + 1 == words {
                '?'
            } else {
                '.'
            });
            sentence = 0;
            sentence_len = rng.usize(6..19);
        }
    }
}

/// Replaces `k` space-separated words of `text` by vocabulary words (never the same word).
fn edit_words(text: &str, k: usize, rng: &mut fastrand::Rng, vocab: &[&str]) -> String {
    let mut tokens: Vec<String> = text.split(' ').map(str::to_string).collect();
    let candidates: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.is_empty() && t.chars().all(|c| c.is_alphabetic()))
        .map(|(i, _)| i)
        .collect();
    let pool: Vec<usize> = if candidates.is_empty() {
        (0..tokens.len()).collect()
    } else {
        candidates
    };
    let mut done = HashSet::new();
    for _ in 0..k.min(pool.len()) {
        let mut at = pool[rng.usize(..pool.len())];
        for _ in 0..8 {
            if !done.contains(&at) {
                break;
            }
            at = pool[rng.usize(..pool.len())];
        }
        done.insert(at);
        let old = tokens[at].to_lowercase();
        let mut new = vocab[rng.usize(..vocab.len())];
        while new.to_lowercase() == old {
            new = vocab[rng.usize(..vocab.len())];
        }
        tokens[at] = new.to_string();
    }
    tokens.join(" ")
}

fn escape_into(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[from..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                from = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(esc);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// A question's external id.
pub fn question_id(pool: usize, i: u64) -> String {
    format!("{}-{i:07}", POOLS[pool].name)
}

impl Plan {
    fn new(opts: &GenOptions) -> Result<Plan> {
        if !(opts.scale > 0.0 && opts.scale.is_finite()) {
            bail!("--scale must be a positive number, not {}", opts.scale);
        }
        if !(0.0..0.4).contains(&opts.exact_share) || !(0.0..0.4).contains(&opts.near_share) {
            bail!("duplicate shares must be in [0, 0.4)");
        }
        let sizes: Vec<u64> = POOLS
            .iter()
            .map(|p| ((p.size as f64 * opts.scale).round() as u64).max(1))
            .collect();
        let mut starts = Vec::new();
        let mut total = 0;
        for s in &sizes {
            starts.push(total);
            total += s;
        }
        let domain_range = |d: &str| -> (u64, u64) {
            let first = POOLS.iter().position(|p| p.domain == d).expect("domain");
            let last = POOLS.iter().rposition(|p| p.domain == d).expect("domain");
            (starts[first], starts[last] + sizes[last])
        };
        let items: Vec<Vec<BenchItem>> = BENCHMARKS
            .iter()
            .map(|(name, _, text)| {
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        let v: Value = serde_json::from_str(l).expect("shipped benchmark line");
                        BenchItem {
                            id: match &v["id"] {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            },
                            text: v["problem"]
                                .as_str()
                                .unwrap_or_else(|| panic!("{name}: problem"))
                                .to_string(),
                        }
                    })
                    .collect()
            })
            .collect();
        let mut rng = rng_for(opts.seed, 0xC0FFEE, 0);
        let mut plants: HashMap<u64, Plant> = HashMap::new();
        let mut used: HashSet<u64> = HashSet::new();
        let pick = |rng: &mut fastrand::Rng, used: &mut HashSet<u64>, lo: u64, hi: u64| {
            for _ in 0..64 {
                let g = rng.u64(lo..hi);
                if used.insert(g) {
                    return Some(g);
                }
            }
            None
        };
        // Contamination first: benchmark items without replacement, in their domain's sources.
        let all_items: Vec<(usize, usize)> = items
            .iter()
            .enumerate()
            .flat_map(|(s, v)| (0..v.len()).map(move |i| (s, i)))
            .collect();
        let want = opts
            .contamination
            .unwrap_or(((1000.0 * opts.scale).round() as usize).max(20))
            .min(all_items.len())
            .min(total as usize / 4);
        let mut order = all_items.clone();
        rng.shuffle(&mut order);
        for (n, &(set, item)) in order.iter().take(want).enumerate() {
            let (lo, hi) = domain_range(BENCHMARKS[set].1);
            if let Some(g) = pick(&mut rng, &mut used, lo, hi) {
                plants.insert(
                    g,
                    Plant::Bench {
                        set,
                        item,
                        edited: n % 2 == 1,
                    },
                );
            }
        }
        // Duplicates: a copy anywhere, its original (a plain question) in the same domain.
        let domain_of = |g: u64| {
            let pool = starts.iter().rposition(|s| *s <= g).expect("pool");
            POOLS[pool].domain
        };
        for (share, near) in [(opts.exact_share, false), (opts.near_share, true)] {
            let n = (total as f64 * share).round() as u64;
            for _ in 0..n {
                let Some(copy) = pick(&mut rng, &mut used, 0, total) else {
                    continue;
                };
                let (lo, hi) = domain_range(domain_of(copy));
                match pick(&mut rng, &mut used, lo, hi) {
                    Some(orig) => {
                        plants.insert(
                            copy,
                            if near {
                                Plant::Near(orig)
                            } else {
                                Plant::Exact(orig)
                            },
                        );
                    }
                    None => {
                        used.remove(&copy);
                    }
                }
            }
        }
        Ok(Plan {
            seed: opts.seed,
            sizes,
            starts,
            plants,
            items,
        })
    }

    fn locate(&self, g: u64) -> (usize, u64) {
        let pool = self.starts.iter().rposition(|s| *s <= g).expect("pool");
        (pool, g - self.starts[pool])
    }

    fn text(&self, g: u64, out: &mut String) {
        out.clear();
        match self.plants.get(&g) {
            None => {
                let (pool, i) = self.locate(g);
                base_text(self.seed, pool, i, out);
            }
            Some(Plant::Exact(orig)) => {
                let (pool, i) = self.locate(*orig);
                base_text(self.seed, pool, i, out);
            }
            Some(Plant::Near(orig)) => {
                let (pool, i) = self.locate(*orig);
                base_text(self.seed, pool, i, out);
                let mut rng = rng_for(self.seed, 0x4EA4, g);
                let k = rng.usize(1..4);
                let edited = edit_words(out, k, &mut rng, vocabulary(POOLS[pool].domain));
                *out = edited;
            }
            Some(Plant::Bench { set, item, edited }) => {
                let text = &self.items[*set][*item].text;
                if *edited {
                    let mut rng = rng_for(self.seed, 0xBE4C, g);
                    let k = rng.usize(1..3);
                    *out = edit_words(text, k, &mut rng, vocabulary(BENCHMARKS[*set].1));
                } else {
                    out.push_str(text);
                }
            }
        }
    }

    fn name(&self, g: u64) -> Value {
        let (pool, i) = self.locate(g);
        json!({ "source": POOLS[pool].name, "id": question_id(pool, i) })
    }
}

/// Writes the workload into `out` (its `sources/` and `benchmarks/` folders are replaced).
pub fn generate(out: &Path, opts: &GenOptions) -> Result<GenSummary> {
    let started = Instant::now();
    let plan = Plan::new(opts)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for dir in ["sources", "benchmarks"] {
        let d = out.join(dir);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    // Benchmarks: the shipped sets, byte for byte.
    std::fs::create_dir_all(out.join("benchmarks"))?;
    for (name, _, text) in BENCHMARKS {
        std::fs::write(out.join("benchmarks").join(format!("{name}.jsonl")), text)?;
    }
    // Sources: one job per file, written by a few threads.
    let mut jobs: Vec<(usize, u64, u64)> = Vec::new();
    for (pool, p) in POOLS.iter().enumerate() {
        std::fs::create_dir_all(out.join("sources").join(p.name))?;
        let mut from = 0;
        while from < plan.sizes[pool] {
            let to = (from + FILE_RECORDS).min(plan.sizes[pool]);
            jobs.push((pool, from, to));
            from = to;
        }
    }
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 16);
    let next = AtomicUsize::new(0);
    let bytes = AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut text = String::new();
                    let mut line = Vec::with_capacity(1 << 16);
                    loop {
                        let j = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&(pool, from, to)) = jobs.get(j) else {
                            return Ok(());
                        };
                        let path = out
                            .join("sources")
                            .join(POOLS[pool].name)
                            .join(format!("part-{:05}.jsonl", from / FILE_RECORDS));
                        let file = std::fs::File::create(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        let mut w = BufWriter::with_capacity(1 << 20, file);
                        let mut written = 0usize;
                        for i in from..to {
                            plan.text(plan.starts[pool] + i, &mut text);
                            line.clear();
                            line.extend_from_slice(b"{\"id\":\"");
                            line.extend_from_slice(question_id(pool, i).as_bytes());
                            line.extend_from_slice(b"\",\"question\":");
                            escape_into(&text, &mut line);
                            line.extend_from_slice(b"}\n");
                            w.write_all(&line)?;
                            written += line.len();
                        }
                        w.flush()?;
                        bytes.fetch_add(written, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer thread")?;
        }
        Ok(())
    })?;

    // Ground truth, in a stable order.
    let mut plants: Vec<(&u64, &Plant)> = plan.plants.iter().collect();
    plants.sort_by_key(|(g, _)| **g);
    let mut contamination: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut exact: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut near: Vec<Value> = Vec::new();
    let (mut verbatim, mut edited_n) = (0, 0);
    for (g, plant) in &plants {
        match plant {
            Plant::Exact(orig) => exact.entry(*orig).or_default().push(**g),
            Plant::Near(orig) => near.push(json!([plan.name(*orig), plan.name(**g)])),
            Plant::Bench { set, item, edited } => {
                if *edited {
                    edited_n += 1;
                } else {
                    verbatim += 1;
                }
                let mut v = plan.name(**g);
                v["item"] = json!(plan.items[*set][*item].id);
                v["kind"] = json!(if *edited { "edited" } else { "verbatim" });
                contamination.entry(BENCHMARKS[*set].0).or_default().push(v);
            }
        }
    }
    let exact_groups: Vec<Value> = exact
        .iter()
        .map(|(orig, copies)| {
            let mut group = vec![plan.name(*orig)];
            group.extend(copies.iter().map(|c| plan.name(*c)));
            Value::Array(group)
        })
        .collect();
    let exact_copies: usize = exact.values().map(Vec::len).sum();
    let questions: u64 = plan.sizes.iter().sum();
    let scaled = |n: f64| ((n * opts.scale).round() as u64).max(1);
    let truth = json!({
        "seed": opts.seed,
        "scale": opts.scale,
        "counts": {
            "questions": questions,
            "by_source": POOLS.iter().zip(&plan.sizes).map(|(p, n)| (p.name.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "exact_duplicate_groups": exact_groups.len(),
            "exact_duplicate_copies": exact_copies,
            "near_duplicate_pairs": near.len(),
            "contamination": verbatim + edited_n,
            "contamination_verbatim": verbatim,
            "contamination_edited": edited_n,
            "selected_questions": FINAL_SAMPLE.iter().map(|(_, n)| scaled(*n)).sum::<u64>(),
        },
        "contamination": contamination,
        "exact_duplicates": exact_groups,
        "near_duplicates": near,
    });
    std::fs::write(out.join("truth.json"), serde_json::to_vec_pretty(&truth)?)?;
    std::fs::write(out.join("ot3.toml"), recipe(opts))?;
    Ok(GenSummary {
        questions,
        files: jobs.len(),
        bytes: bytes.load(Ordering::SeqCst) as u64,
        exact_copies,
        near_copies: near.len(),
        contamination: verbatim + edited_n,
        elapsed: started.elapsed(),
    })
}

/// The generated workload's recipe (paths relative to its folder).
pub fn recipe(opts: &GenOptions) -> String {
    let scaled = |n: f64| ((n * opts.scale).round() as u64).max(1);
    let mut t = String::new();
    t.push_str(&format!(
        "# Generated by `thoughtflow gen --scale {} --seed {}`: the OpenThoughts3 recipe's shape\n\
         # over a synthetic OT3-scale workload (truth.json says what was planted where).\n\
         # decontaminate (13-gram + Indel ratio 75) -> length guard -> length score -> exact dedup\n\
         # -> the longest questions per domain ({} in all) -> {} synthetic answers each.\n\n",
        opts.scale,
        opts.seed,
        FINAL_SAMPLE.iter().map(|(_, n)| scaled(*n)).sum::<u64>(),
        opts.samples
    ));
    t.push_str(&format!(
        "[recipe]\nname = \"ot3-gen\"\ndescription = \"Synthetic OT3-scale workload, scale {}, seed {}\"\n\n",
        opts.scale, opts.seed
    ));
    for p in POOLS {
        t.push_str(&format!(
            "[[sources]]\nname = \"{0}\"\npath = \"sources/{0}\"\ndomain = \"{1}\"\n\n",
            p.name, p.domain
        ));
    }
    t.push_str(
        "# Every file is a benchmark named by its file stem (a new file is a new benchmark).\n\
         [[benchmarks]]\nname = \"benchmarks\"\npath = \"benchmarks\"\nfields = { question = \"problem\" }\n\n",
    );
    for (domain, words) in ANSWER_WORDS {
        t.push_str(&format!(
            "[[teachers]]\nname = \"synthetic_{domain}\"\nkind = \"synthetic\"\nanswer_words = {}\ndomains = [\"{domain}\"]\n\n",
            opts.answer_words.unwrap_or(words)
        ));
    }
    t.push_str(
        "[[steps]]\nid = \"decontaminate\"\ntype = \"decontaminate\"\nngram = 13\nfuzzy = 75\n\n\
         [[steps]]\nid = \"too_long\"\ntype = \"length_guard\"\nmax_tokens = 16384\n\n\
         [[steps]]\nid = \"score\"\ntype = \"score\"\nscorer = \"length_chars\"\n\n\
         # Before the fixed-size selection, so that the selection keeps exactly N per domain.\n\
         [[steps]]\nid = \"dedup\"\ntype = \"dedup\"\nmode = \"exact\"\n\n",
    );
    t.push_str(&format!(
        "[[steps]]\nid = \"hardest\"\ntype = \"select\"\nmode = \"top_n\"\nper = \"domain\"\nn = {{ {} }}\n\n",
        FINAL_SAMPLE
            .iter()
            .map(|(d, n)| format!("{d} = {}", scaled(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    t.push_str(&format!(
        "[[steps]]\nid = \"answers\"\ntype = \"fanout\"\nteachers = [{}]\nsamples = {}\n\n",
        ANSWER_WORDS
            .iter()
            .map(|(d, _)| format!("\"synthetic_{d}\""))
            .collect::<Vec<_>>()
            .join(", "),
        opts.samples
    ));
    // About 300 rows a shard (1 MB at 200-word answers): a refresh rewrites the shards its
    // rows touch, so smaller shards make it rewrite fewer bytes (4096 at scale 1.0).
    let rows = (75_000.0 * opts.scale).ceil() as u64 * opts.samples as u64;
    t.push_str(&format!(
        "[sink]\n# About 300 rows a shard: a refresh rewrites only the shards whose rows changed.\nshards = {}\n# A first build's rows are the dataset: log only what changes after it.\nchanges = \"updates\"\n",
        (rows / 300).next_power_of_two().clamp(4, 4096)
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn same_seed_same_bytes() {
        let opts = |seed, threads| GenOptions {
            scale: 0.0005,
            seed,
            threads: Some(threads),
            ..GenOptions::default()
        };
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let s = generate(a.path(), &opts(7, 1)).unwrap();
        generate(b.path(), &opts(7, 3)).unwrap();
        generate(c.path(), &opts(8, 2)).unwrap();
        let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (k, v) in &fa {
            assert!(
                v == &fb[k],
                "{k} differs between two runs with the same seed"
            );
        }
        assert_ne!(
            fa["sources/openmath2/part-00000.jsonl"], fc["sources/openmath2/part-00000.jsonl"],
            "another seed gives other questions"
        );
        // Every line is JSON with an id and a question; ids are unique; counts add up.
        let mut ids = HashSet::new();
        for (k, v) in &fa {
            if !k.starts_with("sources/") {
                continue;
            }
            for l in std::str::from_utf8(v).unwrap().lines() {
                let r: Value = serde_json::from_str(l).unwrap();
                assert!(!r["question"].as_str().unwrap().is_empty());
                assert!(ids.insert(r["id"].as_str().unwrap().to_string()));
            }
        }
        assert_eq!(ids.len() as u64, s.questions);
        let truth: Value = serde_json::from_slice(&fa["truth.json"]).unwrap();
        assert_eq!(truth["counts"]["questions"], s.questions);
        assert_eq!(truth["counts"]["contamination"], 20);
        assert!(s.exact_copies > 0 && s.near_copies > 0);
    }

    #[test]
    fn texts_have_the_domain_lengths_and_edits_change_a_few_words() {
        let mut s = String::new();
        for (pool, p) in POOLS.iter().enumerate() {
            let mut total = 0;
            for i in 0..2000 {
                s.clear();
                base_text(1, pool, i, &mut s);
                total += s.split_whitespace().count();
            }
            let mean = total as f64 / 2000.0;
            assert!(
                (mean - p.mean_words).abs() < p.mean_words * 0.15,
                "{}: mean {mean} words",
                p.name
            );
        }
        let mut rng = fastrand::Rng::with_seed(3);
        let t = "Find the sum of all integer bases for which the number is a divisor";
        let e = edit_words(t, 2, &mut rng, MATH_WORDS);
        assert_ne!(t, e);
        let changed = t
            .split(' ')
            .zip(e.split(' '))
            .filter(|(a, b)| a != b)
            .count();
        assert!((1..=2).contains(&changed));
    }
}
