//! `thoughtflow check`: valid recipes pass; every mistake in a bad recipe is reported with the
//! file, the key and the problem, and nothing runs.

use crate::util::{bin, run_ok};
use std::path::Path;

/// Checks `recipe` (written into a temp dir with a small source file); returns (code, stderr).
fn check(recipe: &str) -> (i32, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("q.jsonl"),
        "{\"id\": \"1\", \"question\": \"x\"}\n",
    )
    .unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, recipe).unwrap();
    let out = bin()
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        file.display().to_string(),
    )
}

const SOURCE: &str = "[[sources]]\nname = \"s\"\npath = \"q.jsonl\"\ndomain = \"math\"\n";

fn assert_reports(recipe: &str, expected: &[(&str, &str)]) {
    let (code, err, file) = check(recipe);
    assert_eq!(code, 2, "check should fail with exit code 2:\n{err}");
    for (key, problem) in expected {
        let line = format!("{file}: {key}: ");
        let found = err
            .lines()
            .any(|l| l.contains(&line) && l.contains(problem));
        assert!(found, "expected `{key}: ...{problem}...` in:\n{err}");
    }
    let n = err
        .lines()
        .filter(|l| l.contains(&format!("{file}: ")))
        .count();
    assert_eq!(
        n,
        expected.len(),
        "expected exactly {} problems:\n{err}",
        expected.len()
    );
}

#[test]
fn shipped_recipes_are_valid() {
    let mut checked = 0;
    for dir in ["pipelines", "pipelines/ablations"] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // benchmarks.toml is a catalog that recipes include, not a recipe.
            if path.extension().is_some_and(|x| x == "toml") && !path.ends_with("benchmarks.toml") {
                run_ok(&["check", path.to_str().unwrap()]);
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 11,
        "the demo, OpenThoughts3 and 9 ablation recipes"
    );
}

#[test]
fn five_mistakes_five_messages() {
    let recipe = format!(
        "{SOURCE}
[[steps]]
id = \"a\"
type = \"dedup\"
mode = \"exakt\"

[[steps]]
id = \"b\"
type = \"length_guard\"
max_tokens = \"many\"

[[steps]]
id = \"c\"
type = \"decontaminate\"
ngrm = 13

[[steps]]
id = \"a\"
type = \"filter\"
"
    );
    assert_reports(
        &recipe,
        &[
            (
                "steps[0].mode",
                "\"exakt\" is not one of exact, none, fuzzy, minhash (did you mean \"exact\"?)",
            ),
            ("steps[1].max_tokens", "expected an integer, got a string"),
            (
                "steps[2].type",
                "decontaminate needs at least one [[benchmarks]] entry",
            ),
            ("steps[2].ngrm", "unknown key (did you mean \"ngram\"?)"),
            ("steps[3].id", "step id \"a\" is used twice"),
            (
                "steps[3].type",
                "\"filter\" is not one of decontaminate, length_guard",
            ),
        ],
    );
}

#[test]
fn missing_files_and_bad_references() {
    let recipe = "
[[sources]]
name = \"s\"
path = \"nope.jsonl\"
domain = \"poetry\"

[[teachers]]
name = \"teacher\"
kind = \"synthetic\"

[[steps]]
id = \"f\"
type = \"fanout\"
teacher = \"tacher\"

[[steps]]
id = \"late\"
type = \"length_guard\"
max_tokens = 10
";
    assert_reports(
        recipe,
        &[
            ("sources[0].path", "does not exist"),
            (
                "sources[0].domain",
                "\"poetry\" is not one of math, code, science",
            ),
            (
                "steps[0].teacher",
                "no teacher named \"tacher\" (did you mean \"teacher\"?)",
            ),
            (
                "steps[1].type",
                "length_guard works on questions: put it before the fanout step",
            ),
        ],
    );
}

#[test]
fn token_ngram_and_phrase_list_errors() {
    // unit = "token" without a tokenizer; a tokenizer file that is not one; a benchmark's
    // phrase list that does not exist; `tokenize` without the token unit.
    let recipe = format!(
        "{SOURCE}
[[benchmarks]]
name = \"b\"
path = \"q.jsonl\"
ignore_phrases = \"no-such-phrases.txt\"

[[steps]]
id = \"d1\"
type = \"decontaminate\"
unit = \"token\"

[[steps]]
id = \"d2\"
type = \"decontaminate\"
unit = \"token\"
tokenizer = \"q.jsonl\"

[[steps]]
id = \"d3\"
type = \"decontaminate\"
tokenize = \"raw\"
"
    );
    assert_reports(
        &recipe,
        &[
            ("benchmarks[0].ignore_phrases", "no-such-phrases.txt"),
            ("steps[0].unit", "unit = \"token\" needs `tokenizer = "),
            (
                "steps[1].tokenizer",
                "is not a tokenizer.json the tokenizers library reads",
            ),
            ("steps[2].tokenize", "only used with unit = \"token\""),
        ],
    );
}

#[test]
fn structure_errors() {
    assert_reports(
        "[recipe]\nname = \"x\"\ncolour = 1\n",
        &[
            ("recipe.colour", "unknown key"),
            ("sources", "at least one [[sources]] entry"),
            ("steps", "at least one [[steps]] entry"),
        ],
    );
    let (code, err, file) = check("[[sources]\nname = 1");
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{file}: line 1, column")) && err.contains("not valid TOML"),
        "{err}"
    );
    let recipe = format!(
        "{SOURCE}
[[steps]]
id = \"s\"
type = \"select\"
mode = \"top_n\"
per = \"domain\"
n = {{ math = 10, poetry = 3 }}

[[steps]]
id = \"d\"
type = \"answer_dedup\"
"
    );
    assert_reports(
        &recipe,
        &[
            ("steps[0].n.poetry", "not a domain"),
            (
                "steps[1].type",
                "answer_dedup works on answers: put it after the fanout step",
            ),
        ],
    );
}

#[test]
fn run_refuses_a_bad_recipe_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, "[[sources]]\nname = \"s\"\npath = \"missing.jsonl\"\n[[steps]]\nid = \"x\"\ntype = \"dedup\"\n").unwrap();
    let out_dir = tmp.path().join("out");
    let out = bin()
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sources[0].path"));
    assert!(
        !Path::new(&out_dir).exists(),
        "nothing may run for a bad recipe"
    );
}
