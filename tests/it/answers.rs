//! Answer steps after the fanout: `answer_decontaminate` rejects rows whose answer copies a
//! benchmark item (and restores them when the item goes); `answer_select` keeps the k
//! shortest answers of each question and re-ranks when a member leaves.

use crate::util::{dataset, read_jsonl, step, write_jsonl, Following};
use serde_json::json;

const LEAK: &str = "the quick brown fox jumps over the lazy dog near the quiet river bank today";

#[test]
fn answer_decontamination_and_selection_follow_benchmark_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for d in ["src", "bench", "answers"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    write_jsonl(
        &dir.join("src/q.jsonl"),
        &[
            json!({"id": "q1", "question": "Explain why the sum of two odd numbers is always even."}),
            json!({"id": "q2", "question": "Describe a sentence that uses every letter of the alphabet."}),
        ],
    );
    // Three answers each; q2's shortest answer quotes the benchmark item below.
    write_jsonl(
        &dir.join("answers/a.jsonl"),
        &[
            json!({"id": "q1", "source": "main", "answer": "Odd numbers are 2a+1 and 2b+1; their sum 2(a+b+1) is even, and that holds for all a and b."}),
            json!({"id": "q1", "source": "main", "answer": "2a+1 + 2b+1 = 2(a+b+1)."}),
            json!({"id": "q1", "source": "main", "answer": "Write them as 2a+1 and 2b+1: the sum is 2(a+b+1), a multiple of two."}),
            json!({"id": "q2", "source": "main", "answer": format!("For example: {LEAK}.")}),
            json!({"id": "q2", "source": "main", "answer": "A pangram such as 'sphinx of black quartz, judge my vow' uses all twenty-six letters at least once."}),
            json!({"id": "q2", "source": "main", "answer": "A pangram: 'pack my box with five dozen liquor jugs', which has every letter of the alphabet in it."}),
        ],
    );
    let recipe = dir.join("r.toml");
    std::fs::write(
        &recipe,
        r#"
[[sources]]
name = "main"
path = "src"
domain = "science"

[[benchmarks]]
name = "evals"
path = "bench"

[[teachers]]
name = "t"
kind = "replay"
path = "answers/a.jsonl"

[[steps]]
id = "fan"
type = "fanout"
teacher = "t"
samples = 3

[[steps]]
id = "answer_decontam"
type = "answer_decontaminate"
ngram = 8

[[steps]]
id = "shortest"
type = "answer_select"
keep = "shortest"
k = 1
"#,
    )
    .unwrap();
    write_jsonl(
        &dir.join("bench/old.jsonl"),
        &[
            json!({"id": "o1", "question": "An unrelated benchmark item about the boiling point of water at altitude and pressure."}),
        ],
    );
    let out = dir.join("out");
    let run = Following::start(&recipe, &out, &[]);
    let s0 = run.wait_for("2 rows", |s| s["dataset"]["rows"] == 2);
    let rows = dataset(&out);
    let ids: Vec<&String> = rows.keys().collect();
    assert_eq!(
        ids,
        ["main/q1/t/1", "main/q2/t/0"],
        "the shortest answer of each question"
    );
    assert_eq!(step(&s0, "shortest")["rejected"]["not_selected"], 4);

    // A benchmark quoting q2's shortest answer: that row is rejected and the next shortest
    // answer of q2 takes its place.
    write_jsonl(
        &dir.join("bench/leak.jsonl"),
        &[json!({"id": "leak-1", "question": format!("Complete the pangram: {LEAK}")})],
    );
    let s1 = run.wait_for("the leaked answer is rejected", |s| {
        step(s, "answer_decontam")["rejected"]["contaminated"] == 1
    });
    let rows = dataset(&out);
    let ids: Vec<&String> = rows.keys().collect();
    assert_eq!(ids, ["main/q1/t/1", "main/q2/t/1"]);
    assert_eq!(step(&s1, "shortest")["rejected"]["not_selected"], 3);
    let rej = read_jsonl(&out.join("rejections/answer_decontam.jsonl"));
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0]["reason"], "contaminated");
    assert_eq!(rej[0]["row"]["sample"], 0);
    assert_eq!(rej[0]["detail"]["benchmark"], "leak");
    assert_eq!(rej[0]["detail"]["item"], "leak-1");

    // The item goes: the answer comes back and wins its question again.
    std::fs::remove_file(dir.join("bench/leak.jsonl")).unwrap();
    run.wait_for("the answer is restored", |s| {
        step(s, "answer_decontam")["rejected"]["contaminated"]
            .as_u64()
            .unwrap_or(0)
            == 0
            && s["dataset"]["rows"] == 2
    });
    let rows = dataset(&out);
    let ids: Vec<&String> = rows.keys().collect();
    assert_eq!(ids, ["main/q1/t/1", "main/q2/t/0"]);
    run.stop();
}
