//! An OpenAI-compatible HTTP client (vLLM, SGLang, llama.cpp's server, hosted APIs):
//! chat completions and completions, with timeouts, retries (backoff with jitter, honouring
//! `Retry-After`) and usage accounting. Async, for the tokio side of the LLM edge.

use serde_json::{json, Value};
use std::time::Duration;

/// Which OpenAI endpoint a call uses.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Api {
    Chat,
    Completions,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

/// Sampling parameters of a call (part of its cache key).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    pub temperature: f64,
    pub max_tokens: u32,
    pub top_p: Option<f64>,
    /// Ask for JSON matching this schema (OpenAI `response_format` json_schema).
    pub json_schema: Option<Value>,
}

impl Sampling {
    /// A canonical text form for cache keys.
    pub fn canonical(&self) -> String {
        format!(
            "t={}|m={}|p={}|schema={}",
            self.temperature,
            self.max_tokens,
            self.top_p
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            self.json_schema
                .as_ref()
                .map(|s| format!(
                    "{:016x}",
                    thoughtflow_operators::hash::hash64(s.to_string().as_bytes())
                ))
                .unwrap_or_else(|| "-".into())
        )
    }
}

/// A completed call.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why a call failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq)]
pub struct CallError {
    pub message: String,
    pub retryable: bool,
    /// The server's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

fn retryable(message: String) -> CallError {
    CallError {
        message,
        retryable: true,
        retry_after: None,
    }
}

fn fatal(message: String) -> CallError {
    CallError {
        message,
        retryable: false,
        retry_after: None,
    }
}

/// One endpoint: where it is and which model it serves.
#[derive(Clone)]
pub struct Client {
    pub base_url: String,
    pub model: String,
    api_key: Option<String>,
    structured: super::Structured,
    http: reqwest::Client,
}

impl Client {
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
        structured: super::Structured,
    ) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .build()
            .expect("http client");
        Client {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key,
            structured,
            http,
        }
    }

    /// The request body of a call.
    pub fn body(&self, api: Api, prompt: &str, sampling: &Sampling, seed: Option<u64>) -> Value {
        let mut body = match api {
            Api::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
            }),
            Api::Completions => json!({"model": self.model, "prompt": prompt}),
        };
        body["temperature"] = json!(sampling.temperature);
        body["max_tokens"] = json!(sampling.max_tokens);
        if let Some(p) = sampling.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(seed) = seed {
            body["seed"] = json!(seed);
        }
        if let (Api::Chat, Some(schema)) = (api, &sampling.json_schema) {
            match self.structured {
                super::Structured::JsonSchema => {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": schema, "strict": true},
                    })
                }
                super::Structured::JsonObject => {
                    body["response_format"] = json!({"type": "json_object", "schema": schema})
                }
                super::Structured::None => {}
            }
        }
        body
    }

    /// One attempt.
    pub async fn call_once(
        &self,
        api: Api,
        prompt: &str,
        sampling: &Sampling,
        seed: Option<u64>,
    ) -> Result<Completion, CallError> {
        let url = format!(
            "{}/{}",
            self.base_url,
            match api {
                Api::Chat => "chat/completions",
                Api::Completions => "completions",
            }
        );
        let mut req = self
            .http
            .post(&url)
            .json(&self.body(api, prompt, sampling, seed));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            retryable(if e.is_timeout() {
                format!("timed out calling {url}")
            } else {
                format!("calling {url}: {}", error_chain(&e))
            })
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)));
        let bytes = resp.bytes().await.map_err(|e| {
            retryable(format!(
                "reading the response of {url} (HTTP {status}): {}",
                error_chain(&e)
            ))
        })?;
        if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
            return Err(CallError {
                message: format!("HTTP {status} from {url}: {}", excerpt(&bytes)),
                retryable: true,
                retry_after,
            });
        }
        if !status.is_success() {
            return Err(fatal(format!(
                "HTTP {status} from {url}: {}",
                excerpt(&bytes)
            )));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            retryable(format!(
                "response of {url} is not JSON ({e}): {}",
                excerpt(&bytes)
            ))
        })?;
        parse_completion(api, &v).ok_or_else(|| {
            retryable(format!(
                "response of {url} has no completion: {}",
                excerpt(&bytes)
            ))
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else if s.is_empty() {
        "(empty body)".into()
    } else {
        s.to_string()
    }
}

/// Reads a completion out of an OpenAI-format response.
pub fn parse_completion(api: Api, v: &Value) -> Option<Completion> {
    let choice = v.get("choices")?.get(0)?;
    let text = match api {
        Api::Chat => choice.get("message")?.get("content")?.as_str()?,
        Api::Completions => choice.get("text")?.as_str()?,
    };
    let usage = v.get("usage");
    let tokens = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(|t| t.as_u64())
            .unwrap_or(0)
    };
    Some(Completion {
        text: text.to_string(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(|f| f.as_str())
            .map(|s| s.to_string()),
        prompt_tokens: tokens("prompt_tokens"),
        completion_tokens: tokens("completion_tokens"),
    })
}

/// Backoff before attempt `attempt` (1-based): exponential from `base`, capped, with full
/// jitter; a server's `Retry-After` is a floor.
pub fn backoff(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
    match retry_after {
        Some(r) => r.max(jittered.min(r + base)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chat_and_completions() {
        let chat = json!({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        let c = parse_completion(Api::Chat, &chat).unwrap();
        assert_eq!(
            (c.text.as_str(), c.prompt_tokens, c.completion_tokens),
            ("hi", 3, 1)
        );
        let comp = json!({"choices": [{"text": "yo"}]});
        assert_eq!(
            parse_completion(Api::Completions, &comp).unwrap().text,
            "yo"
        );
        assert!(parse_completion(Api::Chat, &json!({"error": "x"})).is_none());
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 1..10 {
            let b = backoff(attempt, base, cap, None);
            assert!(b <= cap);
        }
        let b = backoff(1, base, cap, Some(Duration::from_secs(3)));
        assert!(b >= Duration::from_secs(3));
    }
}
