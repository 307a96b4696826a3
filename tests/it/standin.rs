//! An in-process OpenAI-compatible stand-in for fault injection (never the only proof: the
//! real llama.cpp server is tested in `llm.rs`).
//!
//! Behaviour is chosen by a marker in the prompt, for grader prompts (those that ask to grade
//! difficulty); teacher prompts are always answered:
//! `[[429]]` once 429 with `Retry-After: 1`, then OK; `[[flaky]]` twice 500, then OK;
//! `[[500]]` always 500; `[[slow]]` answers after 3 s; `[[truncated]]` sends half a body;
//! `[[garbage]]` 200 with a non-JSON body; `[[reset]]` closes the connection unanswered;
//! `[[words]]` answers a grade in prose with no number.
//!
//! [`StandIn::deterministic`] is the crash tests' server: every answer is a function of the
//! request body (the same request always gets the same grade and text), each answer comes after
//! a delay, and it counts, per distinct request body, requests received and responses whose
//! write completed ([`Ledger`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct StandIn {
    pub port: u16,
    /// Requests answered with a completion (what a real endpoint would bill).
    pub completions: Arc<AtomicUsize>,
    /// Every request received.
    pub requests: Arc<AtomicUsize>,
    /// Per request body (deterministic mode only).
    pub ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
}

/// What a deterministic stand-in saw, per distinct request body, by request id: the FNV-1a
/// hash of the body, in hex, which every answer quotes as `#h=ID`.
#[derive(Default)]
pub struct Ledger {
    /// Requests received, by request id.
    pub received: Mutex<HashMap<String, usize>>,
    /// Responses written in full (each one billed by a real endpoint), by request id.
    pub finished: Mutex<HashMap<String, usize>>,
    /// Requests being handled now.
    pub active: AtomicUsize,
}

impl Ledger {
    /// Distinct bodies answered in full, and all full answers.
    pub fn finished_counts(&self) -> (usize, usize) {
        let f = self.finished.lock().unwrap();
        (f.len(), f.values().sum())
    }

    /// Waits until no request is being handled (a killed client's last calls are settled).
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic mode: the delay before each answer.
#[derive(Clone, Copy)]
struct Mode {
    deterministic: Option<Duration>,
}

impl StandIn {
    pub fn start() -> StandIn {
        Self::start_mode(Mode {
            deterministic: None,
        })
    }

    /// Answers that depend only on the request body, each after `delay`; see [`Ledger`].
    pub fn deterministic(delay: Duration) -> StandIn {
        Self::start_mode(Mode {
            deterministic: Some(delay),
        })
    }

    fn start_mode(mode: Mode) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let completions = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let ledger: Arc<Ledger> = Arc::default();
        let (c2, r2, s2, l2) = (
            Arc::clone(&completions),
            Arc::clone(&requests),
            Arc::clone(&stop),
            Arc::clone(&ledger),
        );
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (c3, r3, seen) = (Arc::clone(&c2), Arc::clone(&r2), Arc::clone(&seen));
                        let l3 = Arc::clone(&l2);
                        std::thread::spawn(move || match mode.deterministic {
                            Some(delay) => serve_deterministic(stream, delay, &c3, &r3, &l3),
                            None => serve(stream, &c3, &r3, &seen),
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        StandIn {
            port,
            completions,
            requests,
            ledger,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_request(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn completion(content: &str) -> String {
    serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    })
    .to_string()
}

fn serve(
    mut stream: TcpStream,
    completions: &AtomicUsize,
    requests: &AtomicUsize,
    seen: &Mutex<HashMap<String, usize>>,
) {
    let Some(body) = read_request(&mut stream) else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let grader = body.contains("grade the difficulty");
    let marker = [
        "429",
        "flaky",
        "500",
        "slow",
        "truncated",
        "garbage",
        "reset",
        "words",
    ]
    .into_iter()
    .find(|m| body.contains(&format!("[[{m}]]")))
    .filter(|_| grader);
    let count = marker.map(|m| {
        let mut s = seen.lock().unwrap();
        let c = s.entry(m.to_string()).or_insert(0);
        *c += 1;
        *c
    });
    let ok = |stream: &mut TcpStream| {
        completions.fetch_add(1, Ordering::SeqCst);
        let content = if grader {
            r#"{"difficulty": 7, "reason": "stand-in"}"#.to_string()
        } else {
            format!("Stand-in answer #{}.", requests.load(Ordering::SeqCst))
        };
        respond(stream, "200 OK", "", &completion(&content));
    };
    match (marker, count.unwrap_or(0)) {
        (Some("429"), 1) => respond(
            &mut stream,
            "429 Too Many Requests",
            "Retry-After: 1\r\n",
            r#"{"error":"slow down"}"#,
        ),
        (Some("flaky"), 1 | 2) => respond(
            &mut stream,
            "500 Internal Server Error",
            "",
            r#"{"error":"flaky"}"#,
        ),
        (Some("500"), _) => respond(
            &mut stream,
            "500 Internal Server Error",
            "",
            r#"{"error":"broken"}"#,
        ),
        (Some("slow"), _) => {
            std::thread::sleep(Duration::from_secs(3));
            ok(&mut stream);
        }
        (Some("truncated"), _) => {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"choices\": [");
            let _ = stream.flush();
        }
        (Some("garbage"), _) => respond(&mut stream, "200 OK", "", "<html>not json</html>"),
        (Some("reset"), _) => {}
        (Some("words"), _) => {
            completions.fetch_add(1, Ordering::SeqCst);
            respond(
                &mut stream,
                "200 OK",
                "",
                &completion("This problem is quite hard, honestly."),
            );
        }
        _ => ok(&mut stream),
    }
}

/// FNV-1a: a stable hash of a request body, so answers do not depend on the process.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn serve_deterministic(
    mut stream: TcpStream,
    delay: Duration,
    completions: &AtomicUsize,
    requests: &AtomicUsize,
    ledger: &Ledger,
) {
    ledger.active.fetch_add(1, Ordering::SeqCst);
    if let Some(body) = read_request(&mut stream) {
        requests.fetch_add(1, Ordering::SeqCst);
        let h = fnv(&body);
        let id = format!("{h:016x}");
        *ledger
            .received
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_insert(0) += 1;
        std::thread::sleep(delay);
        let content = if body.contains("grade the difficulty") {
            format!(
                r#"{{"difficulty": {}, "reason": "stand-in #h={id}"}}"#,
                1 + h % 10
            )
        } else {
            format!("Deterministic answer #h={id}: the result follows from the statement.")
        };
        let body_out = completion(&content);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body_out}",
            body_out.len()
        );
        if stream.write_all(response.as_bytes()).is_ok() && stream.flush().is_ok() {
            completions.fetch_add(1, Ordering::SeqCst);
            *ledger.finished.lock().unwrap().entry(id).or_insert(0) += 1;
        }
    }
    ledger.active.fetch_sub(1, Ordering::SeqCst);
}
