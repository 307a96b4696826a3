//! Bad input becomes rejections with reasons; the run goes on and no good row is lost.

use crate::util::{dataset, read_jsonl, run_ok, stats};

#[test]
fn every_bad_line_is_a_rejection_and_every_good_line_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut bytes: Vec<u8> = Vec::new();
    let mut good = Vec::new();
    for i in 0..50 {
        if i % 10 == 3 {
            bytes.extend_from_slice(b"{\"id\": \"broken\", \"question\": \n");
        }
        let line =
            format!("{{\"id\": \"q{i}\", \"question\": \"What is {i} squared plus one?\"}}\n");
        bytes.extend_from_slice(line.as_bytes());
        good.push(format!("s/q{i}"));
    }
    bytes.extend_from_slice(b"{\"question\": \"no id here\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"no-text\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"empty\", \"question\": \"   \"}\n");
    bytes.extend_from_slice(b"{\"id\": \"latin1\", \"question\": \"caf\xe9\"}\n");
    bytes.extend_from_slice(b"[\"not\", \"an object\"]\n");
    bytes.extend_from_slice(b"{\"id\": \"num\", \"question\": 42.5e}\n");
    bytes.extend_from_slice(b"{\"id\": \"dom\", \"question\": \"Q?\", \"domain\": \"art\"}\n");
    // A 10 MB line.
    bytes.extend_from_slice(b"{\"id\": \"huge\", \"question\": \"");
    bytes.extend(std::iter::repeat_n(b'a', 10 << 20));
    bytes.extend_from_slice(b"\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"last\", \"question\": \"The last good question?\"}\n");
    good.push("s/last".into());
    std::fs::write(dir.join("q.jsonl"), &bytes).unwrap();
    std::fs::write(
        dir.join("r.toml"),
        "[[sources]]\nname = \"s\"\npath = \"q.jsonl\"\ndomain = \"math\"\n\n[[steps]]\nid = \"d\"\ntype = \"dedup\"\n",
    )
    .unwrap();
    let out = dir.join("out");
    run_ok(&[
        "run",
        dir.join("r.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);

    let rows = dataset(&out);
    let ids: Vec<&String> = rows.keys().collect();
    let mut expected = good.clone();
    expected.sort();
    assert_eq!(
        ids,
        expected.iter().collect::<Vec<_>>(),
        "every good line is a row"
    );

    let rejections = read_jsonl(&out.join("rejections/ingest.jsonl"));
    let mut reasons: Vec<(String, String)> = rejections
        .iter()
        .map(|r| {
            (
                r["row"]["location"]
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    reasons.sort_by_key(|(line, _)| line.parse::<u32>().unwrap());
    let got: Vec<&str> = reasons.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        got,
        [
            "malformed_json",
            "malformed_json",
            "malformed_json",
            "malformed_json",
            "malformed_json",
            "missing_field",
            "missing_field",
            "empty_text",
            "invalid_utf8",
            "malformed_json",
            "malformed_json",
            "unknown_domain",
            "too_large"
        ]
    );
    for r in &rejections {
        assert!(r["detail"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(r["row"]["location"].as_str().unwrap().contains("q.jsonl:"));
    }
    let s = stats(&out);
    assert_eq!(s["sources"]["s"]["questions"], good.len());
    assert_eq!(s["ingest"]["rejected"]["malformed_json"], 7);
}
