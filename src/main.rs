//! The `thoughtflow` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thoughtflow::llm::cache::Cache;

// `--features system-alloc` keeps the system allocator, for heap profilers (heaptrack) that
// see only malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use thoughtflow::llm::service::Budget;
use thoughtflow::llm::Prices;
use thoughtflow::recipe::{LoadError, Recipe};
use thoughtflow::runtime::{self, LlmOptions, RunOptions};

#[derive(Parser)]
#[command(
    name = "thoughtflow",
    version,
    about = "Build reasoning-training datasets with the OpenThoughts3 recipe, incrementally",
    after_help = "Examples:\n  thoughtflow check pipelines/demo.toml\n  thoughtflow explain pipelines/demo.toml\n  thoughtflow run pipelines/demo.toml --out out/demo\n  thoughtflow run pipelines/demo.toml --out out/demo --follow --workers 2"
)]
struct Cli {
    /// Log format: pretty (for people) or json (for machines).
    #[arg(long, global = true, default_value = "pretty", value_parser = ["pretty", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, from the command line
enum Command {
    /// Validate a recipe without running it; lists every problem with file, key and cause.
    #[command(after_help = "Example:\n  thoughtflow check pipelines/demo.toml")]
    Check { recipe: PathBuf },
    /// Print the dataflow graph a recipe becomes.
    #[command(after_help = "Example:\n  thoughtflow explain pipelines/demo.toml")]
    Explain { recipe: PathBuf },
    /// Build the dataset (and, with --follow, keep it up to date as inputs change).
    #[command(
        after_help = "Examples:\n  thoughtflow run pipelines/demo.toml --out out/demo\n  thoughtflow run pipelines/demo.toml --out out/demo --follow --poll-ms 200\n  # two processes of two workers on this machine (run each line in its own shell):\n  thoughtflow run pipelines/demo.toml --out out/demo --workers 2 --processes 2 --process-id 0\n  thoughtflow run pipelines/demo.toml --out out/demo --workers 2 --processes 2 --process-id 1"
    )]
    Run {
        recipe: PathBuf,
        /// Output folder (dataset/, changes/, rejections/, contamination/, stats.json).
        #[arg(long)]
        out: PathBuf,
        /// Number of timely workers (threads).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Keep running: watch the source and benchmark paths, process each new, rewritten or
        /// deleted file as a new epoch. Stop with Ctrl-C or SIGTERM.
        #[arg(long)]
        follow: bool,
        /// How often --follow polls the inputs, in milliseconds.
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
        /// Kafka bootstrap servers, for recipes with Kafka sources, benchmarks or changelog.
        #[arg(long, env = "THOUGHTFLOW_KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
        /// Extra librdkafka settings as KEY=VALUE (repeatable; also comma-separated in
        /// THOUGHTFLOW_KAFKA_OPTIONS), e.g. security.protocol=SASL_SSL, sasl.username=...
        #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
        kafka_options: Vec<String>,
        /// Consumer group for committed offsets (default: thoughtflow.RECIPE-NAME).
        #[arg(long, env = "THOUGHTFLOW_KAFKA_GROUP")]
        kafka_group: Option<String>,
        /// Seconds the first epoch waits for Kafka topics to be read to their end.
        #[arg(long, default_value_t = 60)]
        kafka_wait_secs: u64,
        #[command(flatten)]
        llm: LlmArgs,
        /// Make no LLM call: count the calls and tokens the recipe would need given the cache
        /// (placeholder answers let the later steps run), and estimate their cost.
        #[arg(long)]
        dry_run: bool,
        /// Stop issuing new LLM calls after this many (the rest are rejected as not issued).
        #[arg(long)]
        max_calls: Option<u64>,
        /// Stop issuing new LLM calls once this much (USD, from --prices) is spent.
        #[arg(long)]
        max_cost: Option<f64>,
        /// Progress: bars per step on a terminal (auto: when stderr is one), else log lines.
        #[arg(long, value_enum, default_value = "auto")]
        progress: thoughtflow::progress::ProgressMode,
        /// Serve Prometheus metrics at http://ADDR/metrics while running (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        /// Cluster mode: the number of processes (each with --workers threads) that run this
        /// recipe together over TCP (timely's own runtime). Start every process with the same
        /// recipe, --out (a folder all of them share) and hostfile, and its own --process-id.
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// Cluster mode: this process's index, 0..PROCESSES (process 0 writes stats.json).
        #[arg(long, default_value_t = 0)]
        process_id: usize,
        /// Cluster mode: a file with one host:port per process, in process order (default:
        /// 127.0.0.1:2101, 127.0.0.1:2102, ...).
        #[arg(long)]
        hostfile: Option<PathBuf>,
    },
    /// Why a question was removed: its contamination matches and rejections in an output folder.
    #[command(
        after_help = "Example:\n  thoughtflow explain-match out/demo web-math500-verbatim-0"
    )]
    ExplainMatch {
        /// The run's output folder.
        out: PathBuf,
        /// The question's id (as in the source).
        id: String,
        /// The question's source, when ids repeat across sources.
        #[arg(long)]
        source: Option<String>,
    },
    /// Generate a seeded OpenThoughts3-scale workload: 5 source pools (4.07M questions at
    /// scale 1.0) with planted duplicates and benchmark contamination, the benchmark sets, a
    /// recipe (OUT_DIR/ot3.toml) and the ground truth (OUT_DIR/truth.json).
    #[command(
        after_help = "Examples:\n  thoughtflow gen out/ot3-gen --scale 0.01 --seed 7\n  thoughtflow run out/ot3-gen/ot3.toml --out out/ot3-gen/run"
    )]
    Gen {
        /// Output folder (sources/, benchmarks/, ot3.toml, truth.json).
        out: PathBuf,
        /// Size relative to the paper's pools (1.0 = 4.07M questions, 75,000 selected).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Random seed: the same seed and options give the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Share of questions that are exact copies of another question.
        #[arg(long, default_value_t = 0.03)]
        exact_share: f64,
        /// Share of questions that are near copies (1-3 words replaced) of another question.
        #[arg(long, default_value_t = 0.02)]
        near_share: f64,
        /// Planted benchmark copies, half verbatim, half edited (default: 1,000 x scale, >= 20).
        #[arg(long)]
        contamination: Option<usize>,
        /// Synthetic answer length in words for every domain (default: math 2,000, code
        /// 3,000, science 2,000).
        #[arg(long)]
        answer_words: Option<u32>,
        /// Answers per question in the recipe.
        #[arg(long, default_value_t = 16)]
        samples: u32,
    },
    /// Write OUT/report/index.html: a self-contained page (funnel, counts, histograms,
    /// contamination, dedup clusters, cost, last refresh) from a run's output folder.
    #[command(
        after_help = "Example:\n  thoughtflow run pipelines/demo.toml --out out/demo\n  thoughtflow report out/demo   # then open out/demo/report/index.html"
    )]
    Report {
        /// The run's output folder.
        out: PathBuf,
    },
    /// Inspect or trim the LLM call cache.
    #[command(
        after_help = "Examples:\n  thoughtflow cache stats\n  thoughtflow cache export --cache .thoughtflow/calls.redb > calls.jsonl\n  thoughtflow cache prune --model old-model"
    )]
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// The cache file.
        #[arg(
            long,
            global = true,
            default_value = ".thoughtflow/calls.redb",
            env = "THOUGHTFLOW_CACHE"
        )]
        cache: PathBuf,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Entries, models, tokens and size.
    #[command(after_help = "Example:\n  thoughtflow cache stats --cache .thoughtflow/calls.redb")]
    Stats,
    /// Every entry as a JSON line on stdout.
    #[command(after_help = "Example:\n  thoughtflow cache export > calls.jsonl")]
    Export,
    /// Remove entries by model and/or age.
    #[command(
        after_help = "Examples:\n  thoughtflow cache prune --model old-model\n  thoughtflow cache prune --older-than-days 30"
    )]
    Prune {
        /// Remove the entries of this model.
        #[arg(long)]
        model: Option<String>,
        /// Remove entries older than this many days.
        #[arg(long)]
        older_than_days: Option<f64>,
    },
}

/// Where LLM endpoints are and what calls cost (never in a recipe).
#[derive(clap::Args)]
struct LlmArgs {
    /// An LLM endpoint a recipe names: NAME=BASE_URL,model=MODEL[,concurrency=N][,rpm=N]
    /// [,tpm=N][,timeout=SECS][,retries=N] (repeatable; or THOUGHTFLOW_LLM_<NAME>=...). The API
    /// key comes from THOUGHTFLOW_LLM_<NAME>_API_KEY or OPENAI_API_KEY.
    #[arg(long = "llm", value_name = "SPEC")]
    endpoints: Vec<String>,
    /// The durable LLM call cache.
    #[arg(
        long,
        default_value = ".thoughtflow/calls.redb",
        env = "THOUGHTFLOW_CACHE"
    )]
    cache: PathBuf,
    /// Prices per model (TOML: [models."NAME"] input_per_million, output_per_million).
    #[arg(long, default_value = "pipelines/config/prices.toml")]
    prices: PathBuf,
}

fn init_logging(format: &str, writer: thoughtflow::progress::LogWriter) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(writer);
    if format == "json" {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

fn load(path: &std::path::Path) -> Result<Recipe, ExitCode> {
    match Recipe::load(path) {
        Ok(r) => Ok(r),
        Err(LoadError::Invalid(errors)) => {
            eprint!("{errors}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// mimalloc (v3) keeps freed pages committed for a second before it returns them to the OS.
/// A build's phases each allocate and free gigabytes (ingest batches, then each step's epoch),
/// so that delay stacked them in the peak: 4.16 GB at scale 1.0, against 3.83 GB when freed
/// pages went back at once.
///
/// Going back at once has its own cost: an operator's epoch frees its input batches as it
/// fills its output's, and each page freed and taken again is faulted in and zeroed anew. At
/// scale 1.0 a restart's replay faulted in 14 GB for a 3.8 GB peak, and a third of the
/// workers' time was the kernel's. So freed pages wait 20 ms ([`PURGE_DELAY_MS`]), long
/// enough for an operator to take them again, and whatever an operator's epoch, a file's
/// ingest or a sink's epoch left freed goes back as soon as it is done
/// ([`thoughtflow::runtime::RELEASE_MEMORY`]): the peak stays where it was, and the replay
/// faults in 11 GB. `MIMALLOC_PURGE_DELAY` still overrides the delay.
///
/// And in a restart's replay (a store that holds texts already), where the kernel backs memory
/// with transparent huge pages, pages go back in whole huge pages (mimalloc's
/// `allow_thp = 2`), not in 64 KiB pieces (`replay_tuning`). A piece returned splits its huge
/// page, and the memory then comes back 4 KiB fault by 4 KiB fault: a replay at scale 1.0 took
/// 400k page faults, now 90k, and its kernel time fell by a third. A fresh build keeps the
/// 64 KiB pieces: its peak grew from 3.75 to 3.99 GiB with whole huge pages, at the edge of
/// its 4 GiB target. `MIMALLOC_ALLOW_THP` overrides both. Until the first epoch is done,
/// freed pages are not returned at all (the replay allocated 10.5 GB of pages for its 3.6 GB
/// peak, and 4.3 GB for a 3.9 GB peak without purging: 12.3-15.0 s became 10.8-12.0 s,
/// alternated runs at 1.0); then the delay is set back and the held pages go back
/// (`after_catch_up`).
#[cfg(not(feature = "system-alloc"))]
fn tune_allocator() {
    // `mi_option_purge_delay` and `mi_option_allow_thp` in mimalloc.h's `mi_option_e` (v3,
    // the version the crate builds).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    const MI_OPTION_ALLOW_THP: std::ffi::c_int = 43;
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        fn mi_collect(force: bool);
    }
    fn release() {
        // SAFETY: mimalloc's collection entry point, callable from any thread.
        unsafe { mi_collect(true) }
    }
    let _ = thoughtflow::runtime::RELEASE_MEMORY.set(release);
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of mimalloc's option table, called before any worker starts.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
    fn replay_tuning() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // SAFETY: a plain setter of mimalloc's option table, which mimalloc reads when it
            // purges (the minimal purge size becomes the huge page size if the kernel has
            // transparent huge pages) and when it maps memory (THP stays allowed). Called
            // before any worker starts.
            unsafe { mi_option_set(MI_OPTION_ALLOW_THP, 2) }
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // A replay's first epoch passes millions of records from one bulk step to the
            // next: each step's freed pages are kept for the next (-1: never purged) instead
            // of going back to the OS and coming back as fresh pages the kernel zeroes (half
            // of the pages a replay allocated, a quarter of its time in `clear_page`, at
            // scale 1.0). Peak RSS rises by about a tenth; [`after_catch_up`] restores it.
            // SAFETY: as above.
            unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
        }
    }
    fn after_catch_up() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: as above; mimalloc reads the option at each purge. Then the pages held
            // through the replay go back.
            unsafe {
                mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
                mi_collect(true);
            }
        }
    }
    let _ = thoughtflow::runtime::ON_RESTART.set(replay_tuning);
    let _ = thoughtflow::runtime::AFTER_CATCH_UP.set(after_catch_up);
}

/// How long mimalloc keeps a freed page before it returns it to the OS (see `tune_allocator`).
#[cfg(not(feature = "system-alloc"))]
const PURGE_DELAY_MS: std::ffi::c_long = 20;

#[cfg(feature = "system-alloc")]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let progress = match &cli.command {
        Command::Run { progress, .. } => thoughtflow::progress::Progress::new(*progress),
        _ => thoughtflow::progress::Progress::disabled(),
    };
    init_logging(&cli.log_format, progress.log_writer());
    match run(cli.command, progress) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, progress: Arc<thoughtflow::progress::Progress>) -> Result<ExitCode> {
    match command {
        Command::Check { recipe } => {
            let r = match load(&recipe) {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            println!(
                "ok: recipe {:?} ({}): {} sources, {} benchmarks, {} teachers, {} steps",
                r.name,
                recipe.display(),
                r.sources.len(),
                r.benchmarks.len(),
                r.teachers.len(),
                r.steps.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { recipe } => {
            let r = match load(&recipe) {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            print!("{}", thoughtflow::explain::explain(&r));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            recipe,
            out,
            workers,
            follow,
            poll_ms,
            kafka_brokers,
            mut kafka_options,
            kafka_group,
            kafka_wait_secs,
            llm,
            dry_run,
            max_calls,
            max_cost,
            progress: _,
            metrics_addr,
            processes,
            process_id,
            hostfile,
        } => {
            let r = match load(&recipe) {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            if let Ok(env) = std::env::var("THOUGHTFLOW_KAFKA_OPTIONS") {
                kafka_options.insert(0, env);
            }
            let kafka = match kafka_brokers {
                Some(brokers) => Some(thoughtflow::kafka::KafkaSettings {
                    brokers,
                    options: thoughtflow::kafka::parse_options(&kafka_options)
                        .map_err(anyhow::Error::msg)?,
                    group: kafka_group.unwrap_or_else(|| format!("thoughtflow.{}", r.name)),
                }),
                None => None,
            };
            let mut observers = thoughtflow::progress::Observers::default();
            observers.push(progress.clone());
            if let Some(addr) = &metrics_addr {
                let metrics = Arc::new(thoughtflow::metrics::Metrics::new());
                metrics.serve(addr)?;
                observers.push(metrics);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    tracing::warn!("second interrupt: exiting now");
                    std::process::exit(130);
                }
                tracing::info!("stopping after the current epoch (interrupt again to exit now)");
            })
            .context("installing the Ctrl-C handler")?;
            let summary = runtime::run(
                r,
                RunOptions {
                    out: out.clone(),
                    workers,
                    follow,
                    poll: Duration::from_millis(poll_ms),
                    kafka,
                    kafka_wait: Duration::from_secs(kafka_wait_secs),
                    llm: LlmOptions {
                        endpoints: thoughtflow::llm::endpoints_from(&llm.endpoints)
                            .map_err(anyhow::Error::msg)?,
                        cache: llm.cache,
                        prices: if llm.prices.exists() {
                            Prices::load(&llm.prices).map_err(anyhow::Error::msg)?
                        } else {
                            Prices::default()
                        },
                        budget: Budget {
                            max_calls,
                            max_cost,
                        },
                        dry_run,
                    },
                    observers,
                    cluster: if processes > 1 || hostfile.is_some() {
                        Some(runtime::ClusterOptions::new(
                            processes,
                            process_id,
                            hostfile.as_deref(),
                        )?)
                    } else {
                        None
                    },
                },
                stop,
            )?;
            if let Some(l) = summary.stats.get("llm") {
                let t = &l["total"];
                if dry_run {
                    println!(
                        "dry run: {} call(s) would be made ({} served from the cache), ~{} prompt + ~{} completion tokens at most",
                        t["would_call"], t["cached"], t["estimated_prompt_tokens"], t["estimated_completion_tokens"]
                    );
                } else {
                    println!(
                        "llm: {} call(s) made, {} from the cache, {} failed, {} not issued; {} prompt + {} completion tokens, ${:.4}",
                        t["done"], t["cached"], t["failed"], t["not_issued"], t["prompt_tokens"], t["completion_tokens"],
                        t["cost_usd"].as_f64().unwrap_or(0.0)
                    );
                }
                if let Some(why) = l["budget"]["exhausted"].as_str() {
                    println!("llm budget: {why}: later calls were not issued");
                }
            }
            let d = &summary.stats["dataset"];
            println!(
                "done: {} epoch(s) in {:.2}s: {} rows ({} questions) in {}",
                summary.epochs,
                summary.elapsed.as_secs_f64(),
                d["rows"],
                d["questions"],
                out.join("dataset").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ExplainMatch { out, id, source } => {
            let is_it = |q: &serde_json::Value| {
                q["id"] == id.as_str() && source.as_ref().is_none_or(|s| q["source"] == s.as_str())
            };
            let read = |path: &std::path::Path| -> Vec<serde_json::Value> {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            };
            let matches: Vec<serde_json::Value> = read(&out.join("contamination/matches.jsonl"))
                .into_iter()
                .filter(|m| is_it(&m["question"]))
                .collect();
            let mut rejections = Vec::new();
            if let Ok(dir) = std::fs::read_dir(out.join("rejections")) {
                let mut files: Vec<PathBuf> =
                    dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                files.sort();
                for f in files {
                    rejections.extend(read(&f).into_iter().filter(|r| is_it(&r["row"])));
                }
            }
            if matches.is_empty() && rejections.is_empty() {
                println!(
                    "{id}: no contamination match and no rejection in {}",
                    out.display()
                );
                return Ok(ExitCode::from(1));
            }
            for m in &matches {
                println!(
                    "{}/{}: matches {} item {} by {} (score {}{}): {:?}",
                    m["question"]["source"].as_str().unwrap_or("?"),
                    id,
                    m["benchmark"].as_str().unwrap_or("?"),
                    m["item"].as_str().unwrap_or("?"),
                    m["method"].as_str().unwrap_or("?"),
                    if m["method"] == "fuzzy" {
                        format!("{:.2}", m["score"].as_f64().unwrap_or(0.0) / 100.0)
                    } else {
                        m["score"].to_string()
                    },
                    if m["method"] == "fuzzy" {
                        " Indel ratio"
                    } else {
                        " shared n-grams"
                    },
                    m["span"].as_str().unwrap_or("")
                );
            }
            for r in &rejections {
                println!(
                    "{}/{}: rejected by step {:?}: {} {}",
                    r["row"]["source"].as_str().unwrap_or("?"),
                    id,
                    r["step"].as_str().unwrap_or("?"),
                    r["reason"].as_str().unwrap_or("?"),
                    r["detail"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen {
            out,
            scale,
            seed,
            exact_share,
            near_share,
            contamination,
            answer_words,
            samples,
        } => {
            let s = thoughtflow::gen::generate(
                &out,
                &thoughtflow::gen::GenOptions {
                    scale,
                    seed,
                    exact_share,
                    near_share,
                    contamination,
                    answer_words,
                    samples,
                    threads: None,
                },
            )?;
            println!(
                "generated {} questions ({} files, {:.1} MiB; {} exact copies, {} near copies, {} benchmark copies) in {:.2}s: run it with\n  thoughtflow run {} --out {}",
                s.questions,
                s.files,
                s.bytes as f64 / (1 << 20) as f64,
                s.exact_copies,
                s.near_copies,
                s.contamination,
                s.elapsed.as_secs_f64(),
                out.join("ot3.toml").display(),
                out.join("run").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { out } => {
            let path = thoughtflow::report::write(&out)?;
            println!("report: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { action, cache } => {
            if !cache.exists() {
                anyhow::bail!(
                    "no call cache at {} (runs create it; --cache names another)",
                    cache.display()
                );
            }
            let c = Cache::open(&cache)?;
            match action {
                CacheAction::Stats => {
                    let entries = c.entries()?;
                    let mut by_model: std::collections::BTreeMap<String, (u64, u64, u64)> =
                        Default::default();
                    for e in &entries {
                        let m = by_model.entry(e.model.clone()).or_default();
                        m.0 += 1;
                        m.1 += e.completion.prompt_tokens;
                        m.2 += e.completion.completion_tokens;
                    }
                    let size = std::fs::metadata(&cache).map(|m| m.len()).unwrap_or(0);
                    println!(
                        "{}: {} entries, {:.1} MiB",
                        cache.display(),
                        entries.len(),
                        size as f64 / (1 << 20) as f64
                    );
                    for (model, (n, p, o)) in by_model {
                        println!("  {model}: {n} answers, {p} prompt + {o} completion tokens");
                    }
                }
                CacheAction::Export => {
                    use std::io::Write;
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    for e in c.entries()? {
                        serde_json::to_writer(
                            &mut out,
                            &serde_json::json!({
                                "key": e.key, "model": e.model, "text": e.completion.text,
                                "finish_reason": e.completion.finish_reason,
                                "prompt_tokens": e.completion.prompt_tokens,
                                "completion_tokens": e.completion.completion_tokens,
                                "created_unix": e.created_unix, "latency_ms": e.latency_ms,
                            }),
                        )?;
                        out.write_all(b"\n")?;
                    }
                }
                CacheAction::Prune {
                    model,
                    older_than_days,
                } => {
                    if model.is_none() && older_than_days.is_none() {
                        anyhow::bail!("cache prune needs --model and/or --older-than-days");
                    }
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let removed = c.prune(|e| {
                        let by_model = model.as_ref().is_some_and(|m| &e.model == m);
                        let by_age = older_than_days.is_some_and(|d| {
                            (now.saturating_sub(e.created_unix)) as f64 > d * 86400.0
                        });
                        !(by_model || by_age)
                    })?;
                    println!(
                        "removed {removed} entr{} from {}",
                        if removed == 1 { "y" } else { "ies" },
                        cache.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
