//! The runtime: timely workers driving the recipe's dataflow, one epoch per poll of the inputs.
//!
//! Each worker owns a share of the input files (by path hash) and, every epoch, reads the ones
//! that are new, rewritten or deleted, feeds their upserts and rejections into the dataflow,
//! advances to the next epoch, and steps until the probe says every worker has published it.
//! Then worker 0 joins the epoch's change fragments and writes `stats.json`. Without
//! `--follow` a run is one epoch (everything present at start); with it, the loop polls again
//! after `--poll-ms` until it is asked to stop (Ctrl-C / SIGTERM), finishing the epoch in hand.

use crate::ingest::{BenchmarkTracker, FileTracker, ParseCache};
use crate::kafka::KafkaSettings;
use crate::llm::cache::Cache;
use crate::llm::prompts::parse_difficulty;
use crate::llm::service::{Budget, ScoreParse, Service, Target};
use crate::llm::{EndpointConfig, Prices};
use crate::recipe::{Recipe, TeacherKind};
use crate::render;
use crate::sink::{publish_changes, write_atomic, ManifestWriter, OutDirs};
use crate::stats::{self, StatKey, StatsContext};
use crate::store::Store;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thoughtflow_operators::record::AnswerText;
use thoughtflow_operators::record::{Answer, Epoch};
use thoughtflow_operators::steps::decontam::DecontamMemo;
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
    /// Who watches the run: progress display, metrics (see [`crate::progress`]).
    pub observers: crate::progress::Observers,
    /// Cluster mode: this process's place among several (timely's own TCP runtime).
    pub cluster: Option<ClusterOptions>,
}

/// Several processes, each with `RunOptions::workers` threads, connected over TCP.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// This process's index, 0..addresses.len().
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl ClusterOptions {
    /// Reads a hostfile (one `host:port` per line; blank lines and `#` comments ignored), or
    /// without one, `127.0.0.1:2101..` for `processes` processes on this machine.
    pub fn new(
        processes: usize,
        process: usize,
        hostfile: Option<&std::path::Path>,
    ) -> Result<ClusterOptions> {
        let addresses: Vec<String> = match hostfile {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading hostfile {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
            None => (0..processes)
                .map(|p| format!("127.0.0.1:{}", 2101 + p))
                .collect(),
        };
        if let Some(path) = hostfile {
            if addresses.len() != processes {
                return Err(anyhow!(
                    "hostfile {} lists {} address(es), but --processes is {processes}: give one host:port line per process",
                    path.display(),
                    addresses.len()
                ));
            }
            if let Some(bad) = addresses.iter().find(|a| !a.contains(':')) {
                return Err(anyhow!(
                    "hostfile {}: {bad:?} is not host:port",
                    path.display()
                ));
            }
        }
        if process >= processes {
            return Err(anyhow!(
                "--process-id {process} is out of range: --processes is {processes}, so ids are 0..{}",
                processes - 1
            ));
        }
        Ok(ClusterOptions { process, addresses })
    }
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
    // In a cluster, process 0 prepares the (shared) output folder; the others start writing
    // only once every process has connected, which is after this.
    let first_process = opts.cluster.as_ref().is_none_or(|c| c.process == 0);
    if first_process {
        dirs.prepare(&recipe.sink)
            .with_context(|| format!("preparing output folder {}", dirs.root.display()))?;
    }
    // Texts live on disk (DESIGN.md decision 3), in a file per process.
    let texts_file = dirs.root.join(".store").join(format!(
        "texts-{}.bin",
        opts.cluster.as_ref().map_or(0, |c| c.process)
    ));
    let store = Store::open(
        &texts_file,
        opts.cluster.as_ref().map(|_| opts.workers.max(1)),
    )
    .with_context(|| format!("creating the text store {}", texts_file.display()))?;
    if store.text_count() > 0 {
        if let Some(tune) = ON_RESTART.get() {
            tune();
            TUNED_FOR_REPLAY.store(true, Ordering::SeqCst);
        }
    }
    let replay: ReplayAnswers = recipe
        .teachers
        .iter()
        .map(|t| match t.kind {
            TeacherKind::Replay { .. } => crate::teachers::load_replay(t, &store).map(Some),
            TeacherKind::Synthetic { .. } | TeacherKind::OpenAi { .. } => Ok(None),
        })
        .collect::<Result<_>>()?;
    let replay = Arc::new(replay);
    // Every process loads the replay answers itself: nothing of this to ship.
    let _ = store.drain_journal();
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
    if let Some(service) = &llm {
        opts.observers.llm_started(service);
    }
    let observers = opts.observers.clone();
    let recipe = Arc::new(recipe);
    let workers = opts.workers.max(1);
    tracing::info!(recipe = %recipe.name, workers, follow = opts.follow, out = %dirs.root.display(), "starting run");

    // Decontamination verdicts of the last clean stop, shared by this process's workers.
    let peers_total = workers * opts.cluster.as_ref().map_or(1, |c| c.addresses.len());
    let memo = Arc::new(crate::memo::load(
        &crate::memo::dir(&dirs.root),
        peers_total,
    ));
    if !memo.is_empty() {
        tracing::info!(verdicts = memo.len(), "decontamination memo");
    }
    let kafka_status: KafkaStatus = Arc::new(Mutex::new(BTreeMap::new()));
    let llm2 = llm.clone();
    let config = match &opts.cluster {
        None => timely::Config::process(workers),
        Some(c) => {
            tracing::info!(process = c.process, processes = c.addresses.len(), addresses = ?c.addresses, "cluster mode: connecting to the other processes");
            timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: workers,
                    process: c.process,
                    addresses: c.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            }
        }
    };
    // In a cluster, a process must journal the texts it reads for the others: no parse cache
    // there (see `ParseCache`).
    let parse_cache = store
        .cluster_threads()
        .is_none()
        .then(|| Arc::new(ParseCache::new(dirs.root.join(".store").join("parsed"))));
    let parse_cache2 = parse_cache.clone();
    let store2 = Arc::clone(&store);
    let guards = timely::execute(config, move |worker| {
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
            (&memo, parse_cache2.as_ref()),
        )
    })
    .map_err(|e| anyhow!("starting timely workers: {e}"))?;
    let mut summary = None;
    let results = guards.join();
    observers.finished();
    for result in results {
        match result {
            Ok(Ok(Some(s))) => summary = Some(s),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(anyhow!(e)),
            Err(e) => return Err(anyhow!("a worker failed: {e}")),
        }
    }
    if let Some(c) = &parse_cache {
        c.sweep();
    }
    // The next run maps the text index's sorted base instead of loading its log.
    match store2.compact_texts() {
        Ok(true) => tracing::debug!("text index base rewritten"),
        Ok(false) => {}
        Err(e) => tracing::warn!("could not rewrite the text index base: {e}"),
    }
    let (epochs, stats) = match summary {
        Some(s) => s,
        // Processes other than 0 publish no stats of their own.
        None if !first_process => (0, serde_json::Value::Null),
        None => return Err(anyhow!("worker 0 reported nothing")),
    };
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
    (memo, parse_cache): (&Arc<DecontamMemo>, Option<&Arc<ParseCache>>),
) -> std::result::Result<Option<(u64, serde_json::Value)>, String> {
    let index = worker.index();
    let peers = worker.peers();
    // The first worker of each process: it moves its process's LLM results into the dataflow.
    let local_leader = store
        .cluster_threads()
        .map_or(index == 0, |t| index.is_multiple_of(t));
    let mut handles = render::build(worker, recipe, store, dirs, opts, llm, memo);
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
        .map(|s| FileTracker::new(s.clone(), store, parse_cache.cloned()))
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
    let mut manifest = (index == 0).then(|| ManifestWriter::open(dirs, peers));
    let mut last_stats = serde_json::Value::Null;
    let mut last_progress = Instant::now();
    // The catch-up of the inputs present at start (a restart's replay), reported once done.
    let catch_up_started = Instant::now();
    let mut replay: Option<serde_json::Value> = None;
    let mut consumed = (0usize, 0u64, 0usize); // files, bytes, records (this worker)
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
            if delta.files_read > 0 {
                test_pause("ingest");
            }
            consumed.0 += delta.files_read;
            consumed.1 += delta.bytes_read;
            consumed.2 += delta.upserts.len() + delta.rejections.len();
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
            if delta.files_read > 0 {
                release_memory();
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
        if let (true, Some(service)) = (local_leader, llm) {
            work += insert_results(service, &mut handles, store, &mut inserted) as isize;
        }
        if let Some(deltas) = handles.store_deltas.as_mut() {
            for d in store.drain_journal() {
                deltas.send(d);
            }
        }
        if work > 0 {
            handles.ingest_work.update(StatKey::IngestWork, work);
        }
        let done = epoch;
        epoch += 1;
        handles.advance_to(epoch);
        // Park when there is nothing to do (another worker is still busy): a spinning worker
        // takes a core from the ones that are not, on a machine with as many cores as workers.
        while handles.probe.less_than(&epoch) {
            step_releasing(worker, Some(Duration::from_millis(2)));
        }
        if let Some(e) = handles.sink_errors.borrow().first() {
            return Err(e.clone());
        }
        // A replay's bulk is its first epoch (LLM calls still in flight may take hours: the
        // allocator is not left tuned for them).
        caught_up();
        #[cfg(feature = "kafka")]
        if let Some(k) = kafka_in.as_mut() {
            k.commit();
        }
        if let Some(state) = &handles.stats {
            test_pause("publish");
            let logged =
                publish_changes(dirs, done).map_err(|e| format!("publishing changes: {e}"))?;
            // Changed rows or shards, whether or not `[sink] changes` logs them.
            let changed = logged || {
                let st = state.borrow();
                st.last_changed_epoch == Some(done)
                    && [
                        StatKey::ChangeUpserts,
                        StatKey::ChangeDeletes,
                        StatKey::ShardsRewritten,
                    ]
                    .iter()
                    .any(|k| st.last(k) != 0)
            };
            if let (Some(m), true) = (manifest.as_mut(), changed || done == 0) {
                m.publish(dirs, &recipe.sink, done)
                    .map_err(|e| format!("writing the dataset manifest: {e}"))?;
            }
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
            if replay.is_none() && llm.is_none_or(|s| s.outstanding() == 0) {
                replay = Some(replay_report(
                    &last_stats,
                    catch_up_started.elapsed(),
                    peers,
                    epoch,
                    memo,
                    parse_cache.map(|c| &**c),
                ));
            }
            if let Some(r) = &replay {
                last_stats["replay"] = r.clone();
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
            opts.observers.epoch(&crate::progress::EpochReport {
                stats: &last_stats,
                epoch: done,
                duration: epoch_started.elapsed(),
                changed,
            });
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
            let outstanding = llm.map_or(0, |s| s.outstanding());
            tracing::info!(
                worker = index,
                last_published_epoch = done,
                files_read = consumed.0,
                bytes_read = consumed.1,
                records_read = consumed.2,
                llm_outstanding = outstanding,
                "stopped on request after publishing epoch {done}: this worker consumed {} file(s), {} record(s); {outstanding} LLM result(s) not awaited (cached calls are reused on restart)",
                consumed.0,
                consumed.2
            );
            break;
        }
        // LLM answers still to come keep a run going (worker 0 inserts them).
        let awaiting = local_leader && llm.is_some_and(|s| s.outstanding() > 0);
        if awaiting {
            let service = llm.expect("checked");
            if last_progress.elapsed() >= Duration::from_secs(2) {
                last_progress = Instant::now();
                let r = service.report();
                tracing::debug!(
                    outstanding = service.outstanding(),
                    done = r["total"]["done"].as_u64().unwrap_or(0),
                    cached = r["total"]["cached"].as_u64().unwrap_or(0),
                    failed = r["total"]["failed"].as_u64().unwrap_or(0),
                    in_flight = r["total"]["in_flight"].as_u64().unwrap_or(0),
                    queued = r["total"]["queued"].as_u64().unwrap_or(0),
                    "llm calls"
                );
            }
            // Gather answers for a moment, so that an epoch carries a batch of them; go at once
            // when every answer awaited is in (a replay served from the cache does not wait).
            let until = Instant::now() + opts.poll.min(Duration::from_millis(200));
            while Instant::now() < until && !stop.load(Ordering::SeqCst) && !service.all_ready() {
                service.wait_for_result(Duration::from_millis(20));
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
    let changes = Rc::clone(&handles.changes);
    let errors = Rc::clone(&handles.sink_errors);
    drop(handles);
    while step_releasing(worker, Some(Duration::from_millis(10))) {}
    // Every epoch handled was published: record the rows, so that the next run's first
    // epoch logs only what changed.
    if errors.borrow().is_empty() {
        changes
            .borrow()
            .save_state(crate::sink::change_parts(recipe.sink.shards))
            .map_err(|e| format!("saving the dataset's row state: {e}"))?;
    }
    Ok((index == 0).then_some((epoch, last_stats)))
}

/// `stats.json`'s `replay`: how fast the inputs present at start were caught up with (for a
/// restart, the replay of what an earlier run saw), how many LLM results the cache served, and
/// how many decontamination verdicts the memo did.
fn replay_report(
    stats: &serde_json::Value,
    took: Duration,
    workers: usize,
    epochs: Epoch,
    memo: &DecontamMemo,
    parses: Option<&ParseCache>,
) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let (loaded, parsed) =
        parses.map_or((0, 0), |p| (p.loaded.load(Relaxed), p.parsed.load(Relaxed)));
    let count = |v: &serde_json::Value| -> u64 {
        v.as_object().map_or(0, |o| {
            o.values()
                .map(|s| s["questions"].as_u64().unwrap_or(0))
                .sum()
        })
    };
    let questions = count(&stats["sources"]);
    let secs = took.as_secs_f64().max(1e-9);
    serde_json::json!({
        "questions": questions,
        "epochs": epochs,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "workers": workers,
        "questions_per_s_per_worker": (questions as f64 / secs / workers.max(1) as f64).round(),
        "llm_cached": stats["llm"]["total"]["cached"].as_u64().unwrap_or(0),
        "llm_called": stats["llm"]["total"]["done"].as_u64().unwrap_or(0),
        // Decontamination verdicts of the last clean stop: loaded, and reused instead of
        // matching (by this process).
        "decontam_memo": { "loaded": memo.len(), "reused": memo.reused() },
        // Source files whose parse was loaded from the parse cache, and files parsed (this
        // process; in a cluster there is no parse cache and both stay 0).
        "parse_cache": { "loaded": loaded, "parsed": parsed },
    })
}

/// Test hook for crash tests: with `THOUGHTFLOW_TEST_PAUSE_AT=POINT[:N]`, the N-th time
/// (default 1) any thread reaches `test_pause(POINT)`, it prints `test pause at POINT` to
/// stderr and sleeps for good, so that a test can SIGKILL the process exactly there. Points:
/// `ingest` (a source's files read, not yet in the dataflow), `llm-answered` (an answer
/// received, not yet cached), `llm-cached` (cached, not yet in the dataflow), `sink` (a
/// worker about to rewrite its dataset shards), `publish` (an epoch's data written, its
/// changes and stats.json not yet). Unset, it costs one load of a `OnceLock`.
pub fn test_pause(point: &str) {
    static AT: std::sync::OnceLock<Option<(String, usize)>> = std::sync::OnceLock::new();
    static HITS: Mutex<usize> = Mutex::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("THOUGHTFLOW_TEST_PAUSE_AT").ok()?;
        let (p, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((p.to_string(), n.parse().unwrap_or(1)))
    });
    let Some((p, n)) = at else { return };
    if p != point {
        return;
    }
    let mut hits = HITS.lock().expect("test pause");
    *hits += 1;
    if *hits == *n {
        eprintln!("test pause at {point}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
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

/// Set by the binary to a function that tunes the allocator for a restart's replay (called
/// when the run opens a store that holds texts already).
pub static ON_RESTART: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Set by the binary to a function that undoes [`ON_RESTART`]'s tuning once a run's first
/// epoch is done (called once after each call of [`ON_RESTART`]).
pub static AFTER_CATCH_UP: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Whether [`ON_RESTART`]'s tuning is in force (until [`caught_up`]).
static TUNED_FOR_REPLAY: AtomicBool = AtomicBool::new(false);

/// Calls [`AFTER_CATCH_UP`] the first time a worker of this process gets here after
/// [`ON_RESTART`]'s tuning.
fn caught_up() {
    if TUNED_FOR_REPLAY.swap(false, Ordering::SeqCst) {
        if let Some(f) = AFTER_CATCH_UP.get() {
            f();
        }
    }
}

/// Set by the binary to a function that returns the allocator's freed memory to the OS.
pub static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// One `step_or_park`, then, if it did bulk work (an operator's epoch at scale), the memory
/// it freed goes back to the OS ([`RELEASE_MEMORY`]).
fn step_releasing(worker: &mut timely::worker::Worker, park: Option<Duration>) -> bool {
    let started = Instant::now();
    let more = worker.step_or_park(park);
    release_after_bulk(started);
    more
}

/// [`release_memory`] after work begun at `started`, if it was bulk work (50 ms or more: an
/// epoch of an operator or a sink at scale), not after every small step.
pub fn release_after_bulk(started: Instant) {
    if started.elapsed() >= Duration::from_millis(50) {
        release_memory();
    }
}

/// Returns the allocator's freed memory to the OS, if the binary said how ([`RELEASE_MEMORY`]).
pub fn release_memory() {
    if let Some(release) = RELEASE_MEMORY.get() {
        release();
    }
}
