//! The runtime: timely workers driving the recipe's dataflow, one epoch per poll of the inputs.
//!
//! Each worker owns a share of the input files (by path hash) and, every epoch, reads the ones
//! that are new, rewritten or deleted, feeds their upserts and rejections into the dataflow,
//! advances to the next epoch, and steps until the probe says every worker has published it.
//! Then worker 0 joins the epoch's change fragments and writes `stats.json`. Without
//! `--follow` a run is one epoch (everything present at start); with it, the loop polls again
//! after `--poll-ms` until it is asked to stop (Ctrl-C / SIGTERM), finishing the epoch in hand.

use crate::ingest::{BenchmarkTracker, FileTracker};
use crate::kafka::KafkaSettings;
use crate::llm::cache::Cache;
use crate::llm::prompts::parse_difficulty;
use crate::llm::service::{Budget, ScoreParse, Service, Target};
use crate::llm::{EndpointConfig, Prices};
use crate::recipe::{Recipe, TeacherKind};
use crate::render;
use crate::sink::{publish_changes, write_atomic, OutDirs};
use crate::stats::{self, StatKey, StatsContext};
use crate::store::Store;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thoughtflow_operators::record::AnswerText;
use thoughtflow_operators::record::{Answer, Epoch};
use thoughtflow_operators::steps::fanout::LookupKey;

/// How and where to run (flags, never recipe keys).
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    pub workers: usize,
    pub follow: bool,
    pub poll: Duration,
    /// Brokers and client settings, for recipes that use Kafka.
    pub kafka: Option<KafkaSettings>,
    /// How long the first epoch waits for Kafka partitions to be read to their end.
    pub kafka_wait: Duration,
    /// LLM endpoints (flags/environment), the call cache, prices, budget, dry run.
    pub llm: LlmOptions,
}

/// How LLM calls are made.
#[derive(Clone, Debug, Default)]
pub struct LlmOptions {
    pub endpoints: Vec<EndpointConfig>,
    pub cache: PathBuf,
    pub prices: Prices,
    pub budget: Budget,
    pub dry_run: bool,
}

/// Partition positions shared by a process's workers (for stats).
type KafkaStatus = Arc<Mutex<BTreeMap<(String, i32), PartitionStatusView>>>;

#[cfg(feature = "kafka")]
type PartitionStatusView = crate::kafka::reader::PartitionStatus;
#[cfg(not(feature = "kafka"))]
type PartitionStatusView = ();

/// What a finished run reports.
#[derive(Debug)]
pub struct RunSummary {
    pub epochs: u64,
    pub stats: serde_json::Value,
    pub elapsed: Duration,
}

type ReplayAnswers = Vec<Option<Vec<((LookupKey, u16), Answer)>>>;

/// Runs `recipe` until its inputs are consumed (or, with `follow`, until `stop` is set).
pub fn run(recipe: Recipe, opts: RunOptions, stop: Arc<AtomicBool>) -> Result<RunSummary> {
    let started = Instant::now();
    if recipe.uses_kafka() {
        if !cfg!(feature = "kafka") {
            return Err(anyhow!(
                "recipe {} uses Kafka, but this thoughtflow was built without the `kafka` feature",
                recipe.file.display()
            ));
        }
        if opts.kafka.is_none() {
            return Err(anyhow!(
                "recipe {} reads or writes Kafka topics, but no brokers are given: pass --kafka-brokers HOST:PORT or set THOUGHTFLOW_KAFKA_BROKERS",
                recipe.file.display()
            ));
        }
    }
    let dirs = OutDirs {
        root: opts.out.clone(),
    };
    dirs.prepare_fresh()
        .with_context(|| format!("preparing output folder {}", dirs.root.display()))?;
    let store = Store::new();
    let replay: ReplayAnswers = recipe
        .teachers
        .iter()
        .map(|t| match t.kind {
            TeacherKind::Replay { .. } => crate::teachers::load_replay(t, &store).map(Some),
            TeacherKind::Synthetic { .. } | TeacherKind::OpenAi { .. } => Ok(None),
        })
        .collect::<Result<_>>()?;
    let replay = Arc::new(replay);
    let wanted = recipe.llm_endpoints();
    let llm = if wanted.is_empty() {
        None
    } else {
        for (name, at) in &wanted {
            if !opts.llm.endpoints.iter().any(|e| &e.name == name) {
                return Err(anyhow!(
                    "recipe {}: {at} calls endpoint {name:?}, which is not configured: pass --llm {name}=URL,model=MODEL or set THOUGHTFLOW_LLM_{}",
                    recipe.file.display(),
                    name.to_ascii_uppercase().replace('-', "_")
                ));
            }
        }
        let cache = Cache::open(&opts.llm.cache)?;
        tracing::info!(cache = %opts.llm.cache.display(), entries = cache.len().unwrap_or(0), "llm call cache");
        Some(
            Service::start(
                cache,
                opts.llm.endpoints.clone(),
                opts.llm.prices.clone(),
                opts.llm.budget.clone(),
                opts.llm.dry_run,
            )
            .context("starting the LLM service")?,
        )
    };
    let recipe = Arc::new(recipe);
    let workers = opts.workers.max(1);
    tracing::info!(recipe = %recipe.name, workers, follow = opts.follow, out = %dirs.root.display(), "starting run");

    let kafka_status: KafkaStatus = Arc::new(Mutex::new(BTreeMap::new()));
    let llm2 = llm.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        drive(
            worker,
            &recipe,
            &store,
            &dirs,
            &opts,
            &replay,
            &stop,
            &kafka_status,
            llm2.as_ref(),
        )
    })
    .map_err(|e| anyhow!("starting timely workers: {e}"))?;
    let mut summary = None;
    for result in guards.join() {
        match result {
            Ok(Ok(Some(s))) => summary = Some(s),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(anyhow!(e)),
            Err(e) => return Err(anyhow!("a worker failed: {e}")),
        }
    }
    let (epochs, stats) = summary.ok_or_else(|| anyhow!("worker 0 reported nothing"))?;
    Ok(RunSummary {
        epochs,
        stats,
        elapsed: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
fn drive(
    worker: &mut timely::worker::Worker,
    recipe: &Arc<Recipe>,
    store: &Arc<Store>,
    dirs: &OutDirs,
    opts: &RunOptions,
    replay: &Arc<ReplayAnswers>,
    stop: &Arc<AtomicBool>,
    kafka_status: &KafkaStatus,
    llm: Option<&Arc<Service>>,
) -> std::result::Result<Option<(u64, serde_json::Value)>, String> {
    let index = worker.index();
    let peers = worker.peers();
    let mut handles = render::build(worker, recipe, store, dirs, opts.kafka.as_ref(), llm);
    let mut inserted: HashSet<([u8; 16], Target)> = HashSet::new();
    #[cfg(feature = "kafka")]
    let mut kafka_in = opts.kafka.as_ref().and_then(|k| {
        crate::kafka::ingest::KafkaIngest::start(k, recipe, index, peers, Arc::clone(kafka_status))
    });
    #[cfg(not(feature = "kafka"))]
    let _ = kafka_status;
    let mut sources: Vec<FileTracker> = recipe
        .sources
        .iter()
        .map(|s| FileTracker::new(s.clone(), store))
        .collect();
    let mut benchmarks: Vec<BenchmarkTracker> = recipe
        .benchmarks
        .iter()
        .map(|b| BenchmarkTracker::new(b.clone()))
        .collect();
    if index == 0 {
        for (t, answers) in replay.iter().enumerate() {
            if let (Some(answers), Some(input)) = (answers, handles.answers[t].as_mut()) {
                for a in answers {
                    input.insert(a.clone());
                }
            }
        }
    }
    let step_names: Vec<(String, String)> = recipe
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.kind.type_name().to_string()))
        .collect();

    let mut epoch: Epoch = 0;
    let mut last_stats = serde_json::Value::Null;
    let mut last_progress = Instant::now();
    loop {
        let epoch_started = Instant::now();
        let mut work = 0isize;
        for b in &mut benchmarks {
            let (diffs, problems) = b.poll(index, peers);
            for p in problems {
                tracing::warn!(benchmark = %b.spec.name, "skipping unreadable benchmark line: {p}");
            }
            work += diffs.len() as isize;
            for (item, d) in diffs {
                handles.benchmarks.update(item, d);
            }
        }
        for s in &mut sources {
            let delta = s.poll(index, peers, store);
            work += (delta.upserts.len() + delta.rejections.len()) as isize;
            if delta.files_read > 0 {
                tracing::debug!(source = %s.spec.name, files = delta.files_read, bytes = delta.bytes_read, upserts = delta.upserts.len(), "read source files");
            }
            for (id, q) in delta.upserts {
                handles.questions.send((id, q, epoch));
            }
            for (r, d) in delta.rejections {
                handles.ingest_rejections.update(r, d);
            }
        }
        #[cfg(feature = "kafka")]
        if let Some(k) = kafka_in.as_mut() {
            let first = epoch == 0;
            let drained = k.drain(&mut handles, epoch, store, first.then_some(opts.kafka_wait));
            work += drained.messages as isize;
            if first && !drained.caught_up {
                let brokers = opts
                    .kafka
                    .as_ref()
                    .map(|k| k.brokers.as_str())
                    .unwrap_or("");
                if !opts.follow {
                    return Err(format!(
                        "kafka: could not read the recipe's topics to their end within {}s (brokers {brokers}); is the broker up?",
                        opts.kafka_wait.as_secs()
                    ));
                }
                tracing::warn!(
                    brokers,
                    "kafka: topics not read to their end yet; following on"
                );
            }
        }
        if let (0, Some(service)) = (index, llm) {
            work += insert_results(service, &mut handles, store, &mut inserted) as isize;
        }
        if work > 0 {
            handles.ingest_work.update(StatKey::IngestWork, work);
        }
        let done = epoch;
        epoch += 1;
        handles.advance_to(epoch);
        while handles.probe.less_than(&epoch) {
            worker.step();
        }
        if let Some(e) = handles.sink_errors.borrow().first() {
            return Err(e.clone());
        }
        #[cfg(feature = "kafka")]
        if let Some(k) = kafka_in.as_mut() {
            k.commit();
        }
        if let Some(state) = &handles.stats {
            let changed =
                publish_changes(dirs, done).map_err(|e| format!("publishing changes: {e}"))?;
            let state = state.borrow();
            let source_name = |s| store.source_name(s).to_string();
            let ctx = StatsContext {
                recipe: &recipe.name,
                steps: &step_names,
                source_name: &source_name,
                epoch: done,
                epochs_run: epoch,
            };
            last_stats = stats::render(&state, &ctx);
            if let Some(service) = llm {
                last_stats["llm"] = service.report();
            }
            #[cfg(feature = "kafka")]
            if opts.kafka.is_some() {
                let parts: Vec<serde_json::Value> = kafka_status
                    .lock()
                    .expect("status lock")
                    .values()
                    .map(|p| {
                        serde_json::json!({
                            "topic": p.topic, "partition": p.partition,
                            "next_offset": p.next_offset, "high_watermark": p.high_watermark,
                            "lag": p.lag(),
                        })
                    })
                    .collect();
                last_stats["kafka"] = serde_json::json!({ "partitions": parts });
            }
            let text = serde_json::to_vec_pretty(&last_stats).expect("json");
            write_atomic(&dirs.stats(), &text).map_err(|e| format!("writing stats.json: {e}"))?;
            if changed || done == 0 {
                tracing::info!(
                    epoch = done,
                    rows = last_stats["dataset"]["rows"].as_i64().unwrap_or(0),
                    upserts = state.last(&StatKey::ChangeUpserts),
                    deletes = state.last(&StatKey::ChangeDeletes),
                    ms = epoch_started.elapsed().as_millis() as u64,
                    "epoch published"
                );
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // LLM answers still to come keep a run going (worker 0 inserts them).
        let awaiting = index == 0 && llm.is_some_and(|s| s.outstanding() > 0);
        if awaiting {
            let service = llm.expect("checked");
            if last_progress.elapsed() >= Duration::from_secs(2) {
                last_progress = Instant::now();
                let r = service.report();
                tracing::info!(
                    outstanding = service.outstanding(),
                    done = r["total"]["done"].as_u64().unwrap_or(0),
                    cached = r["total"]["cached"].as_u64().unwrap_or(0),
                    failed = r["total"]["failed"].as_u64().unwrap_or(0),
                    in_flight = r["total"]["in_flight"].as_u64().unwrap_or(0),
                    queued = r["total"]["queued"].as_u64().unwrap_or(0),
                    "llm calls"
                );
            }
            // Gather answers for a moment, so that an epoch carries a batch of them.
            let until = Instant::now() + opts.poll.min(Duration::from_millis(200));
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                if service.wait_for_result(Duration::from_millis(20)) && service.outstanding() > 64
                {
                    continue;
                }
            }
            continue;
        }
        if !opts.follow {
            break;
        }
        let wake = Instant::now() + opts.poll;
        while Instant::now() < wake && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20).min(opts.poll));
        }
    }
    drop(handles);
    while worker.step_or_park(Some(Duration::from_millis(10))) {}
    Ok((index == 0).then_some((epoch, last_stats)))
}

/// Moves the LLM service's results into the dataflow (worker 0), each target once; returns
/// how many entered.
fn insert_results(
    service: &Arc<Service>,
    handles: &mut render::Handles,
    store: &Store,
    inserted: &mut HashSet<([u8; 16], Target)>,
) -> usize {
    let mut n = 0;
    for r in service.drain_results() {
        if !inserted.insert((r.id, r.target.clone())) {
            continue;
        }
        n += 1;
        match r.target {
            Target::Score {
                step,
                hash,
                domain,
                parse,
            } => {
                let Some((ok, err)) = handles.llm_scores.get_mut(&step) else {
                    continue;
                };
                let key = (hash, domain);
                let parsed = r.outcome.and_then(|c| match parse {
                    ScoreParse::Difficulty => parse_difficulty(&c.text),
                    ScoreParse::Length => Ok(c.text.chars().count() as i64),
                });
                match parsed {
                    Ok(score) => ok.update((key, score), 1),
                    Err(why) => err.update((key, why), 1),
                }
            }
            Target::Teacher {
                teacher,
                hash,
                sample,
            } => {
                let Some((ok, err)) = handles.llm_answers.get_mut(&teacher) else {
                    continue;
                };
                let key = (LookupKey::Hash(hash), sample);
                match r.outcome {
                    Ok(c) => {
                        let text = thoughtflow_operators::hash::text_ref(&c.text);
                        store.put_text(text, &c.text);
                        ok.update(
                            (
                                key,
                                Answer {
                                    hash: thoughtflow_operators::hash::content_hash(&c.text),
                                    text: AnswerText::Stored(text),
                                },
                            ),
                            1,
                        );
                    }
                    Err(why) => err.update((key, why), 1),
                }
            }
        }
    }
    n
}
