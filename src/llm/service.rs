//! The LLM service: the tokio side of the async edge (DESIGN.md decision 4).
//!
//! ```text
//!  request sinks (any worker) --submit(batch)--> [cache lookup] --hit--> results
//!                                                      | miss
//!                                  per endpoint: semaphore (concurrency), request and token
//!                                  buckets (rpm, tpm), retries with backoff + jitter
//!                                                      |
//!                  answer --group commit to cache (one fsync per group)--> results
//!  worker 0 <--drain_results-- results   (inserted into the dataflow at the next epoch)
//! ```
//!
//! Timely workers only enqueue (`submit`, `cancel`) and drain; they never wait on the network or
//! the disk. One call per key: a key already in flight gains a target instead of a second call.
//! A retracted request is cancelled if its call has not started. Failures (after retries) come
//! back as results with a reason and are not cached, so a later run tries again. With a budget
//! (`--max-calls`, `--max-cost`), calls past it are not issued and come back as failures that
//! say so. In dry-run mode no call is made: misses are counted, their tokens estimated, and a
//! placeholder answer lets the dataflow go on to the next stage.

use super::cache::{Cache, CallKey, Committer, Entry};
use super::client::{backoff, Client, Completion, Sampling};
use super::{EndpointConfig, Prices};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thoughtflow_operators::record::{ContentHash, Domain};

/// How a scorer reads its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoreParse {
    /// A 1-10 difficulty.
    Difficulty,
    /// The answer's length in characters.
    Length,
}

/// Where a result goes in the dataflow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Score {
        step: u16,
        hash: ContentHash,
        domain: Domain,
        parse: ScoreParse,
    },
    Teacher {
        teacher: u16,
        hash: ContentHash,
        sample: u16,
    },
}

/// One call the dataflow wants.
#[derive(Clone, Debug)]
pub struct Request {
    pub key: CallKey,
    pub endpoint: String,
    pub sampling: Sampling,
    pub seed: Option<u64>,
    pub prompt: String,
    pub target: Target,
}

/// What came back for one target.
#[derive(Clone, Debug)]
pub struct CallResult {
    pub target: Target,
    pub id: [u8; 16],
    pub outcome: Result<Completion, String>,
    pub cached: bool,
}

/// Counts per endpoint.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counters {
    pub queued: u64,
    pub in_flight: u64,
    pub done: u64,
    pub cached: u64,
    pub failed: u64,
    pub retries: u64,
    pub not_issued: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Dry run: calls that would be made, and their estimated tokens.
    pub would_call: u64,
    pub estimated_prompt_tokens: u64,
    pub estimated_completion_tokens: u64,
}

#[derive(Default)]
struct State {
    /// Keys in flight (or waiting to be issued) and the targets waiting for them.
    inflight: HashMap<[u8; 16], Vec<Target>>,
    cancelled: HashSet<[u8; 16]>,
    counters: BTreeMap<String, Counters>,
    calls_issued: u64,
    cost: f64,
    budget_note: Option<String>,
}

/// Limits on what a run may spend.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    pub max_calls: Option<u64>,
    pub max_cost: Option<f64>,
}

struct Endpoint {
    config: EndpointConfig,
    client: Client,
    permits: tokio::sync::Semaphore,
    buckets: tokio::sync::Mutex<Buckets>,
}

struct Buckets {
    requests: f64,
    tokens: f64,
    last: Instant,
}

impl Endpoint {
    /// Waits for the request and token buckets (per minute) to allow a call of `tokens`.
    async fn admit(&self, tokens: f64) {
        loop {
            let wait = {
                let mut b = self.buckets.lock().await;
                let now = Instant::now();
                let secs = now.duration_since(b.last).as_secs_f64();
                b.last = now;
                let rpm = self.config.rpm.unwrap_or(f64::INFINITY);
                let tpm = self.config.tpm.unwrap_or(f64::INFINITY);
                b.requests = (b.requests + secs * rpm / 60.0).min(rpm.max(1.0));
                b.tokens = (b.tokens + secs * tpm / 60.0).min(tpm.max(tokens));
                if b.requests >= 1.0 && b.tokens >= tokens.min(tpm) {
                    b.requests -= 1.0;
                    b.tokens -= tokens.min(tpm);
                    return;
                }
                let need_r = if b.requests >= 1.0 {
                    0.0
                } else {
                    (1.0 - b.requests) * 60.0 / rpm
                };
                let need_t = if b.tokens >= tokens.min(tpm) {
                    0.0
                } else {
                    (tokens.min(tpm) - b.tokens) * 60.0 / tpm
                };
                Duration::from_secs_f64(need_r.max(need_t).clamp(0.001, 60.0))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

pub struct Service {
    rt: tokio::runtime::Runtime,
    cache: Arc<Cache>,
    /// Answers are committed through it, in groups (one fsync for all that are waiting).
    committer: Committer,
    endpoints: HashMap<String, Arc<Endpoint>>,
    state: Arc<Mutex<State>>,
    prices: Prices,
    budget: Budget,
    dry_run: bool,
    results_tx: mpsc::Sender<CallResult>,
    results_rx: Mutex<mpsc::Receiver<CallResult>>,
    /// Targets submitted and not yet drained.
    outstanding: Arc<AtomicUsize>,
    /// Results sent and not yet drained.
    ready: AtomicUsize,
}

impl Service {
    pub fn start(
        cache: Cache,
        endpoints: Vec<EndpointConfig>,
        prices: Prices,
        budget: Budget,
        dry_run: bool,
    ) -> std::io::Result<Arc<Service>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("llm")
            .enable_all()
            .build()?;
        let endpoints = endpoints
            .into_iter()
            .map(|c| {
                let client = Client::new(
                    &c.base_url,
                    &c.model,
                    c.api_key.clone(),
                    c.timeout,
                    c.structured,
                );
                let e = Endpoint {
                    permits: tokio::sync::Semaphore::new(c.concurrency.max(1)),
                    buckets: tokio::sync::Mutex::new(Buckets {
                        requests: c.rpm.unwrap_or(1.0).max(1.0),
                        tokens: c.tpm.unwrap_or(f64::INFINITY),
                        last: Instant::now(),
                    }),
                    client,
                    config: c,
                };
                (e.config.name.clone(), Arc::new(e))
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        let cache = Arc::new(cache);
        Ok(Arc::new(Service {
            rt,
            committer: Committer::start(Arc::clone(&cache))?,
            cache,
            endpoints,
            state: Arc::new(Mutex::new(State::default())),
            prices,
            budget,
            dry_run,
            results_tx: tx,
            results_rx: Mutex::new(rx),
            outstanding: Arc::new(AtomicUsize::new(0)),
            ready: AtomicUsize::new(0),
        }))
    }

    /// The model an endpoint serves (part of cache keys).
    pub fn model(&self, endpoint: &str) -> Option<String> {
        self.endpoints.get(endpoint).map(|e| e.config.model.clone())
    }

    /// Targets submitted whose results have not been drained yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Queues calls. Never waits: the cache lookup and the calls run on the service's runtime.
    pub fn submit(self: &Arc<Self>, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        self.outstanding.fetch_add(batch.len(), Ordering::SeqCst);
        let me = Arc::clone(self);
        self.rt.spawn(async move { me.handle(batch).await });
    }

    /// Cancels calls that have not started (their targets are dropped).
    pub fn cancel(&self, ids: Vec<[u8; 16]>) {
        let mut s = self.state.lock().expect("llm state");
        for id in ids {
            if s.inflight.contains_key(&id) {
                s.cancelled.insert(id);
            }
        }
    }

    /// Results ready now.
    pub fn drain_results(&self) -> Vec<CallResult> {
        let rx = self.results_rx.lock().expect("results lock");
        let out: Vec<CallResult> = rx.try_iter().collect();
        self.ready.fetch_sub(out.len(), Ordering::SeqCst);
        self.outstanding.fetch_sub(out.len(), Ordering::SeqCst);
        out
    }

    /// Whether every result awaited is ready to be drained.
    pub fn all_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) >= self.outstanding()
    }

    /// Waits up to `timeout` for a result to be ready (it stays queued for `drain_results`).
    pub fn wait_for_result(&self, timeout: Duration) -> bool {
        let rx = self.results_rx.lock().expect("results lock");
        match rx.recv_timeout(timeout) {
            Ok(r) => {
                // Put it back at the front: re-send (order among results does not matter).
                let _ = self.results_tx.send(r);
                true
            }
            Err(_) => false,
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Counters per endpoint, totals and the budget, for stats.json.
    pub fn report(&self) -> Value {
        let s = self.state.lock().expect("llm state");
        let mut total = Counters::default();
        for c in s.counters.values() {
            total.queued += c.queued;
            total.in_flight += c.in_flight;
            total.done += c.done;
            total.cached += c.cached;
            total.failed += c.failed;
            total.retries += c.retries;
            total.not_issued += c.not_issued;
            total.prompt_tokens += c.prompt_tokens;
            total.completion_tokens += c.completion_tokens;
            total.cost_usd += c.cost_usd;
            total.would_call += c.would_call;
            total.estimated_prompt_tokens += c.estimated_prompt_tokens;
            total.estimated_completion_tokens += c.estimated_completion_tokens;
        }
        json!({
            "endpoints": s.counters,
            "total": total,
            "outstanding": self.outstanding(),
            "budget": {
                "max_calls": self.budget.max_calls,
                "max_cost_usd": self.budget.max_cost,
                "calls_issued": s.calls_issued,
                "exhausted": s.budget_note,
            },
            "dry_run": self.dry_run,
        })
    }

    fn counters<R>(&self, endpoint: &str, f: impl FnOnce(&mut Counters) -> R) -> R {
        let mut s = self.state.lock().expect("llm state");
        f(s.counters.entry(endpoint.to_string()).or_default())
    }

    fn send(
        &self,
        id: [u8; 16],
        targets: Vec<Target>,
        outcome: Result<Completion, String>,
        cached: bool,
    ) {
        for target in targets {
            self.ready.fetch_add(1, Ordering::SeqCst);
            let _ = self.results_tx.send(CallResult {
                target,
                id,
                outcome: outcome.clone(),
                cached,
            });
        }
    }

    async fn handle(self: Arc<Self>, batch: Vec<Request>) {
        // Cache lookups, one read transaction for the batch.
        let ids: Vec<[u8; 16]> = batch.iter().map(|r| r.key.id()).collect();
        let cache = Arc::clone(&self.cache);
        let ids2 = ids.clone();
        let found = tokio::task::spawn_blocking(move || cache.get_many(&ids2))
            .await
            .expect("cache lookup task");
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("llm: {e}; treating the batch as cache misses");
                vec![None; ids.len()]
            }
        };
        for ((req, id), hit) in batch.into_iter().zip(ids).zip(found) {
            if let Some(entry) = hit {
                self.counters(&req.endpoint, |c| c.cached += 1);
                self.send(id, vec![req.target], Ok(entry.completion), true);
                continue;
            }
            let start = {
                let mut s = self.state.lock().expect("llm state");
                s.cancelled.remove(&id);
                match s.inflight.get_mut(&id) {
                    Some(targets) => {
                        targets.push(req.target.clone());
                        false
                    }
                    None => {
                        s.inflight.insert(id, vec![req.target.clone()]);
                        true
                    }
                }
            };
            if start {
                let me = Arc::clone(&self);
                tokio::spawn(async move { me.call(id, req).await });
            }
        }
    }

    fn finish(&self, id: [u8; 16]) -> Vec<Target> {
        let mut s = self.state.lock().expect("llm state");
        s.cancelled.remove(&id);
        s.inflight.remove(&id).unwrap_or_default()
    }

    fn is_cancelled(&self, id: &[u8; 16]) -> bool {
        self.state.lock().expect("llm state").cancelled.contains(id)
    }

    /// Drops a cancelled call: its targets get no result.
    fn drop_cancelled(&self, id: [u8; 16]) {
        let targets = self.finish(id);
        self.outstanding.fetch_sub(targets.len(), Ordering::SeqCst);
    }

    /// Whether the budget allows one more call; records the refusal once.
    fn within_budget(&self) -> Result<(), String> {
        let mut s = self.state.lock().expect("llm state");
        let over = match (self.budget.max_calls, self.budget.max_cost) {
            (Some(max), _) if s.calls_issued >= max => Some(format!("--max-calls {max} reached")),
            (_, Some(max)) if s.cost >= max => {
                Some(format!("--max-cost {max} reached (spent ${:.4})", s.cost))
            }
            _ => None,
        };
        match over {
            Some(why) => {
                if s.budget_note.is_none() {
                    tracing::warn!(
                        "llm: {why}: no new calls are issued; the rest are rejected as not_issued"
                    );
                    s.budget_note = Some(why.clone());
                }
                Err(format!("budget: {why}; call not issued"))
            }
            None => {
                s.calls_issued += 1;
                Ok(())
            }
        }
    }

    async fn call(self: Arc<Self>, id: [u8; 16], req: Request) {
        let Some(endpoint) = self.endpoints.get(&req.endpoint).cloned() else {
            let targets = self.finish(id);
            self.counters(&req.endpoint, |c| c.failed += 1);
            self.send(
                id,
                targets,
                Err(format!(
                    "no endpoint named {:?} was configured (--llm)",
                    req.endpoint
                )),
                false,
            );
            return;
        };
        let est_prompt = (req.prompt.len() as f64 / 4.0).ceil() + 8.0;
        let est_tokens = est_prompt + req.sampling.max_tokens as f64;
        if self.dry_run {
            self.counters(&req.endpoint, |c| {
                c.would_call += 1;
                c.estimated_prompt_tokens += est_prompt as u64;
                c.estimated_completion_tokens += req.sampling.max_tokens as u64;
            });
            let targets = self.finish(id);
            let text = match &req.target {
                Target::Score {
                    parse: ScoreParse::Difficulty,
                    ..
                } => r#"{"difficulty": 5, "reason": "dry run"}"#.to_string(),
                Target::Score {
                    parse: ScoreParse::Length,
                    ..
                } => "x".repeat(req.sampling.max_tokens as usize * 2),
                Target::Teacher { .. } => "(dry run: no call was made)".to_string(),
            };
            let c = Completion {
                text,
                finish_reason: Some("dry_run".into()),
                prompt_tokens: 0,
                completion_tokens: 0,
            };
            self.send(id, targets, Ok(c), false);
            return;
        }
        self.counters(&req.endpoint, |c| c.queued += 1);
        let max_retries = endpoint.config.max_retries;
        let mut attempt = 0u32;
        let outcome: Result<(Completion, u64), String> = loop {
            let permit = endpoint.permits.acquire().await.expect("semaphore");
            if self.is_cancelled(&id) {
                drop(permit);
                self.counters(&req.endpoint, |c| c.queued -= 1);
                self.drop_cancelled(id);
                return;
            }
            if attempt == 0 {
                if let Err(why) = self.within_budget() {
                    drop(permit);
                    self.counters(&req.endpoint, |c| {
                        c.queued -= 1;
                        c.not_issued += 1;
                    });
                    let targets = self.finish(id);
                    self.send(id, targets, Err(why), false);
                    return;
                }
            }
            endpoint.admit(est_tokens).await;
            self.counters(&req.endpoint, |c| {
                if attempt == 0 {
                    c.queued -= 1;
                }
                c.in_flight += 1;
            });
            let started = Instant::now();
            let r = endpoint
                .client
                .call_once(req.key.api, &req.prompt, &req.sampling, req.seed)
                .await;
            self.counters(&req.endpoint, |c| c.in_flight -= 1);
            drop(permit);
            match r {
                Ok(c) => break Ok((c, started.elapsed().as_millis() as u64)),
                Err(e) if e.retryable && attempt < max_retries => {
                    attempt += 1;
                    self.counters(&req.endpoint, |c| c.retries += 1);
                    let wait = backoff(
                        attempt,
                        endpoint.config.retry_base,
                        Duration::from_secs(30),
                        e.retry_after,
                    );
                    tracing::debug!(
                        "llm: {} (attempt {attempt}, retrying in {:.2}s)",
                        e.message,
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    break Err(format!(
                        "{} (after {} attempt{})",
                        e.message,
                        attempt + 1,
                        if attempt == 0 { "" } else { "s" }
                    ))
                }
            }
        };
        match outcome {
            Ok((completion, latency_ms)) => {
                let price = self.prices.cost(
                    &endpoint.config.model,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                );
                {
                    let mut s = self.state.lock().expect("llm state");
                    s.cost += price;
                }
                self.counters(&req.endpoint, |c| {
                    c.done += 1;
                    c.prompt_tokens += completion.prompt_tokens;
                    c.completion_tokens += completion.completion_tokens;
                    c.cost_usd += price;
                });
                crate::runtime::test_pause("llm-answered");
                // Durable before it enters the dataflow.
                let entry = Entry {
                    key: req.key.text(),
                    model: endpoint.config.model.clone(),
                    completion: completion.clone(),
                    created_unix: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    latency_ms,
                };
                if let Err(e) = self.committer.commit(id, entry).await {
                    tracing::error!("llm: {e}: the answer is used but not cached");
                }
                crate::runtime::test_pause("llm-cached");
                let targets = self.finish(id);
                self.send(id, targets, Ok(completion), false);
            }
            Err(message) => {
                self.counters(&req.endpoint, |c| c.failed += 1);
                tracing::warn!(endpoint = %req.endpoint, "llm call failed: {message}");
                let targets = self.finish(id);
                self.send(id, targets, Err(message), false);
            }
        }
    }
}
