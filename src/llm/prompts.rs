//! Prompt templates and reading structured answers.
//!
//! A template is a text file with a `{question}` placeholder (`pipelines/prompts/`). Its
//! version, part of every cache key, is the file name plus the hash of its text: editing a
//! template makes new calls, everything else is served from the cache.

use serde_json::{json, Value};
use std::path::Path;

/// A loaded prompt template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The file name (e.g. `difficulty-math.v1.txt`).
    pub name: String,
    pub text: String,
}

impl Template {
    pub fn load(path: &Path) -> Result<Template, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading prompt template {}: {e}", path.display()))?;
        if !text.contains("{question}") {
            return Err(format!(
                "prompt template {} has no {{question}} placeholder",
                path.display()
            ));
        }
        Ok(Template {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            text,
        })
    }

    /// The identity used in cache keys.
    pub fn version(&self) -> String {
        format!(
            "{}#{:016x}",
            self.name,
            thoughtflow_operators::hash::hash64(self.text.as_bytes())
        )
    }

    pub fn render(&self, question: &str) -> String {
        self.text.replace("{question}", question)
    }

    /// The template that sends the question as is.
    pub fn plain() -> Template {
        Template {
            name: "plain".into(),
            text: "{question}".into(),
        }
    }
}

/// The JSON schema the difficulty grader answers in.
pub fn difficulty_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "difficulty": {"type": "integer", "minimum": 1, "maximum": 10},
            "reason": {"type": "string"}
        },
        "required": ["difficulty", "reason"]
    })
}

fn excerpt(text: &str) -> String {
    let t: String = text.trim().chars().take(120).collect();
    if text.trim().chars().count() > 120 {
        format!("{t}...")
    } else {
        t
    }
}

/// Reads a 1-10 difficulty from a grader's answer: the JSON object it was asked for, or,
/// failing that, a `difficulty: N` phrase or a bare number.
pub fn parse_difficulty(answer: &str) -> Result<i64, String> {
    let from_json = answer.find('{').and_then(|start| {
        let end = answer.rfind('}')?;
        let v: Value = serde_json::from_str(answer.get(start..=end)?).ok()?;
        match v.get("difficulty")? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    });
    let found = from_json.or_else(|| {
        let re = regex::Regex::new(r"(?i)difficulty\D{0,20}?(\d{1,3})").expect("regex");
        re.captures(answer)
            .and_then(|c| c[1].parse().ok())
            .or_else(|| answer.trim().trim_end_matches('.').parse().ok())
    });
    match found {
        Some(n) if (1..=10).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "unparsable grade: difficulty {n} is outside 1..10 in {:?}",
            excerpt(answer)
        )),
        None => Err(format!(
            "unparsable grade: no difficulty in the grader's answer {:?}",
            excerpt(answer)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulties_are_read_from_json_phrases_and_numbers() {
        assert_eq!(
            parse_difficulty(r#"{"difficulty": 7, "reason": "x"}"#),
            Ok(7)
        );
        assert_eq!(
            parse_difficulty(r#"Sure! {"difficulty": "3", "reason": "x"}"#),
            Ok(3)
        );
        assert_eq!(parse_difficulty("Difficulty: 9/10 because ..."), Ok(9));
        assert_eq!(parse_difficulty(" 4 "), Ok(4));
        assert!(parse_difficulty(r#"{"difficulty": 42}"#)
            .unwrap_err()
            .contains("outside 1..10"));
        assert!(parse_difficulty("I cannot rate this.")
            .unwrap_err()
            .contains("unparsable grade"));
    }

    #[test]
    fn templates_need_a_placeholder_and_version_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "Rate: {question}").unwrap();
        let t = Template::load(&p).unwrap();
        assert_eq!(t.render("2+2"), "Rate: 2+2");
        let v1 = t.version();
        std::fs::write(&p, "Rate this: {question}").unwrap();
        assert_ne!(Template::load(&p).unwrap().version(), v1);
        std::fs::write(&p, "no placeholder").unwrap();
        assert!(Template::load(&p).is_err());
    }
}
