//! The `thoughtflow` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thoughtflow::recipe::{LoadError, Recipe};
use thoughtflow::runtime::{self, RunOptions};

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
enum Command {
    /// Validate a recipe without running it; lists every problem with file, key and cause.
    #[command(after_help = "Example:\n  thoughtflow check pipelines/demo.toml")]
    Check { recipe: PathBuf },
    /// Print the dataflow graph a recipe becomes.
    #[command(after_help = "Example:\n  thoughtflow explain pipelines/demo.toml")]
    Explain { recipe: PathBuf },
    /// Build the dataset (and, with --follow, keep it up to date as inputs change).
    #[command(
        after_help = "Examples:\n  thoughtflow run pipelines/demo.toml --out out/demo\n  thoughtflow run pipelines/demo.toml --out out/demo --follow --poll-ms 200"
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
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
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
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    eprintln!("second interrupt: exiting now");
                    std::process::exit(130);
                }
                eprintln!("stopping after the current epoch (interrupt again to exit now)");
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
                },
                stop,
            )?;
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
    }
}
