//! Teachers that need no network: `replay` (answers from a JSONL file) and `synthetic`.
//!
//! A replay file holds one answer per line: `{"id", "source"?, "answer"}` (keyed by question
//! id) or `{"question", "answer"}` (keyed by the question's content hash). A key's answers are
//! its samples, in file order: the i-th answer of a question is sample i. Replay answers are
//! loaded once per run and enter the dataflow as the teacher's answer collection.

use crate::ingest::{lines, parse_object};
use crate::recipe::{ReplayFields, TeacherKind, TeacherSpec};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use thoughtflow_operators::hash;
use thoughtflow_operators::record::{Answer, AnswerText};
use thoughtflow_operators::steps::fanout::{LookupBy, LookupKey};

/// Loads a replay teacher's answers, storing their texts.
pub fn load_replay(
    teacher: &TeacherSpec,
    store: &Store,
) -> Result<Vec<((LookupKey, u16), Answer)>> {
    let TeacherKind::Replay {
        path,
        key,
        fields,
        source,
    } = &teacher.kind
    else {
        bail!("teacher {:?} is not a replay teacher", teacher.name);
    };
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading replay answers of teacher {:?}", teacher.name))?;
    let mut samples: BTreeMap<LookupKey, u16> = BTreeMap::new();
    let mut out = Vec::new();
    for (line, record) in lines(&bytes) {
        let at = || format!("{}:{line}", path.display());
        let obj = parse_object(record, 256 << 20)
            .map_err(|e| anyhow::anyhow!("{}: {}", at(), e.message))?;
        let answer = string(&obj, &fields.answer).with_context(at)?;
        let lookup = lookup_key(&obj, *key, fields, source.as_deref()).with_context(at)?;
        let sample = samples.entry(lookup).or_insert(0);
        let text = hash::text_ref(&answer);
        store.put_text(text, &answer);
        out.push((
            (lookup, *sample),
            Answer {
                hash: hash::content_hash(&answer),
                text: AnswerText::Stored(text),
            },
        ));
        *sample += 1;
    }
    Ok(out)
}

fn string(obj: &serde_json::Map<String, Value>, field: &str) -> Result<String> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => bail!("missing string field {field:?}"),
    }
}

fn lookup_key(
    obj: &serde_json::Map<String, Value>,
    key: LookupBy,
    fields: &ReplayFields,
    default_source: Option<&str>,
) -> Result<LookupKey> {
    Ok(match key {
        LookupBy::Hash => LookupKey::Hash(hash::content_hash(&string(obj, &fields.question)?)),
        LookupBy::Id => {
            let id = string(obj, &fields.id)?;
            let source = match (string(obj, &fields.source), default_source) {
                (Ok(s), _) => s,
                (Err(_), Some(d)) => d.to_string(),
                (Err(e), None) => {
                    return Err(e.context("answers keyed by id need the question's source (a field, or `source` on the teacher)"))
                }
            };
            LookupKey::Id(hash::question_id(&source, &id))
        }
    })
}

/// Renders an answer's text for the sink.
pub fn answer_text(answer: &Answer, store: &Store) -> Option<String> {
    match &answer.text {
        AnswerText::None => None,
        AnswerText::Stored(r) => store.text(*r).map(|t| t.to_string()),
        AnswerText::Synthetic {
            question,
            sample,
            words,
        } => Some(thoughtflow_operators::steps::fanout::synthetic_text(
            *question, *sample, *words,
        )),
    }
}
