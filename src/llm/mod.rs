//! LLM scorers and teachers: OpenAI-compatible calls, memoized per row and per sample.
//!
//! - [`client`]: the HTTP client (chat and completions, retries, usage).
//! - [`cache`]: the durable call cache (redb).
//! - [`prompts`]: versioned prompt templates and structured answers.
//! - [`service`]: the tokio side of the async edge: queue, limits, cancellation, budget.
//!
//! A recipe names endpoints (`endpoint = "teacher"`); where they are and which model they
//! serve are flags or environment: `--llm NAME=URL,model=MODEL[,concurrency=N][,rpm=N]
//! [,tpm=N][,timeout=SECS][,retries=N]` or `THOUGHTFLOW_LLM_<NAME>=...`, the API key from
//! `THOUGHTFLOW_LLM_<NAME>_API_KEY` or `OPENAI_API_KEY`.

pub mod cache;
pub mod client;
pub mod prompts;
pub mod service;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Where an endpoint is and how hard to use it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    pub name: String,
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Requests per minute.
    pub rpm: Option<f64>,
    /// Tokens (prompt + max completion) per minute.
    pub tpm: Option<f64>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    /// How the server takes a JSON schema for structured answers.
    pub structured: Structured,
}

/// How an endpoint is asked for JSON that matches a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structured {
    /// `response_format: {"type": "json_schema", "json_schema": {..}}` (OpenAI, vLLM, SGLang).
    JsonSchema,
    /// `response_format: {"type": "json_object", "schema": {..}}` (llama.cpp's servers).
    JsonObject,
    /// No constraint: the prompt asks for JSON and the answer is parsed leniently.
    None,
}

/// Parses `NAME=URL,model=MODEL,...`.
pub fn parse_endpoint(spec: &str) -> Result<EndpointConfig, String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--llm {spec:?}: expected NAME=URL,model=MODEL[,...]"))?;
    let mut parts = rest.split(',');
    let url = parts.next().unwrap_or_default().trim().to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "--llm {name}: {url:?} is not an http(s) base URL (like http://127.0.0.1:8000/v1)"
        ));
    }
    let mut cfg = EndpointConfig {
        name: name.trim().to_string(),
        base_url: url,
        model: String::new(),
        api_key: None,
        concurrency: 8,
        rpm: None,
        tpm: None,
        timeout: Duration::from_secs(600),
        max_retries: 5,
        retry_base: Duration::from_millis(500),
        structured: Structured::JsonSchema,
    };
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--llm {name}: {p:?} is not key=value"))?;
        let num = |what: &str| -> Result<f64, String> {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0)
                .ok_or_else(|| format!("--llm {name}: {what} must be a positive number, got {v:?}"))
        };
        match k.trim() {
            "model" => cfg.model = v.trim().to_string(),
            "concurrency" => cfg.concurrency = num("concurrency")? as usize,
            "rpm" => cfg.rpm = Some(num("rpm")?),
            "tpm" => cfg.tpm = Some(num("tpm")?),
            "timeout" => cfg.timeout = Duration::from_secs_f64(num("timeout")?),
            "retries" => cfg.max_retries = v.trim().parse().map_err(|_| format!("--llm {name}: retries must be an integer"))?,
            "retry_base_ms" => cfg.retry_base = Duration::from_millis(num("retry_base_ms")? as u64),
            "structured" => {
                cfg.structured = match v.trim() {
                    "json_schema" => Structured::JsonSchema,
                    "json_object" => Structured::JsonObject,
                    "none" => Structured::None,
                    other => return Err(format!("--llm {name}: structured must be json_schema, json_object or none, got {other:?}")),
                }
            }
            other => return Err(format!("--llm {name}: unknown setting {other:?} (model, concurrency, rpm, tpm, timeout, retries, retry_base_ms, structured)")),
        }
    }
    if cfg.model.is_empty() {
        return Err(format!(
            "--llm {name}: model=... is required (it is part of every cache key)"
        ));
    }
    let env_key = format!(
        "THOUGHTFLOW_LLM_{}_API_KEY",
        cfg.name.to_ascii_uppercase().replace('-', "_")
    );
    cfg.api_key = std::env::var(&env_key)
        .ok()
        .or_else(|| std::env::var("OPENAI_API_KEY").ok())
        .filter(|k| !k.is_empty());
    Ok(cfg)
}

/// Endpoints from `--llm` flags and `THOUGHTFLOW_LLM_<NAME>` variables (flags win).
pub fn endpoints_from(flags: &[String]) -> Result<Vec<EndpointConfig>, String> {
    let mut by_name: BTreeMap<String, EndpointConfig> = BTreeMap::new();
    for (k, v) in std::env::vars() {
        if let Some(name) = k.strip_prefix("THOUGHTFLOW_LLM_") {
            if name.ends_with("_API_KEY") {
                continue;
            }
            let cfg = parse_endpoint(&format!("{}={v}", name.to_ascii_lowercase()))?;
            by_name.insert(cfg.name.clone(), cfg);
        }
    }
    for f in flags {
        let cfg = parse_endpoint(f)?;
        by_name.insert(cfg.name.clone(), cfg);
    }
    Ok(by_name.into_values().collect())
}

/// Prices per model, in USD per million tokens.
#[derive(Clone, Debug, Default)]
pub struct Prices {
    pub per_model: BTreeMap<String, (f64, f64)>,
}

impl Prices {
    /// Reads `[models."NAME"] input_per_million = .., output_per_million = ..`.
    pub fn load(path: &Path) -> Result<Prices, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading prices {}: {e}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| format!("prices {}: {}", path.display(), e.message()))?;
        let mut out = Prices::default();
        if let Some(models) = table.get("models").and_then(|m| m.as_table()) {
            for (name, v) in models {
                let get = |k: &str| -> Result<f64, String> {
                    v.get(k)
                        .and_then(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
                        .ok_or_else(|| {
                            format!(
                                "prices {}: models.{name:?}.{k} must be a number",
                                path.display()
                            )
                        })
                };
                out.per_model.insert(
                    name.clone(),
                    (get("input_per_million")?, get("output_per_million")?),
                );
            }
        }
        Ok(out)
    }

    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        match self.per_model.get(model) {
            Some((i, o)) => (prompt_tokens as f64 * i + completion_tokens as f64 * o) / 1e6,
            None => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_specs_parse_and_explain_mistakes() {
        let e =
            parse_endpoint("teacher=http://127.0.0.1:8000/v1,model=QwQ-32B,concurrency=4,rpm=60")
                .unwrap();
        assert_eq!(
            (e.name.as_str(), e.model.as_str(), e.concurrency, e.rpm),
            ("teacher", "QwQ-32B", 4, Some(60.0))
        );
        assert!(parse_endpoint("teacher=localhost:8000")
            .unwrap_err()
            .contains("http(s)"));
        assert!(parse_endpoint("teacher=http://x/v1")
            .unwrap_err()
            .contains("model=... is required"));
        assert!(parse_endpoint("teacher=http://x/v1,model=m,speed=9")
            .unwrap_err()
            .contains("unknown setting"));
    }

    #[test]
    fn prices_cost_per_million() {
        let mut p = Prices::default();
        p.per_model.insert("m".into(), (1.0, 2.0));
        assert!((p.cost("m", 1_000_000, 500_000) - 2.0).abs() < 1e-9);
        assert_eq!(p.cost("unknown", 10, 10), 0.0);
    }
}
