//! Live views of a run: the observer hook the runtime calls after each published epoch, and the
//! progress display built on it.
//!
//! The runtime writes `stats.json` after every epoch (worker 0) and hands the same JSON to each
//! [`Observer`] ([`EpochReport`]); observers that want live LLM numbers also get the LLM
//! service once it starts and read [`Service::report`] whenever they like. Two observers exist:
//! [`Progress`] (here) and [`crate::metrics::Metrics`] (Prometheus).
//!
//! `--progress auto|always|never`: on a terminal (`auto` when stderr is a tty, or `always`)
//! [`Progress`] draws one indicatif bar per step (rows in → out, rejections by reason), a header
//! (epoch, dataset rows, epoch time) and, with LLM steps, an LLM bar (calls done of known, in
//! flight, cache hit rate, cost so far, ETA). Log lines are then printed above the bars
//! ([`Progress::log_writer`]). Otherwise it emits structured log lines (`step` per step and
//! changed epoch, `llm progress` every 2 s while calls are outstanding) in the
//! `--log-format` of the run.

use crate::llm::service::Service;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one published epoch looked like.
pub struct EpochReport<'a> {
    /// The `stats.json` just written.
    pub stats: &'a Value,
    /// The epoch's number.
    pub epoch: u64,
    /// Wall time from reading the epoch's inputs to its publication.
    pub duration: Duration,
    /// Whether the dataset changed in this epoch.
    pub changed: bool,
}

/// Something that watches a run.
pub trait Observer: Send + Sync {
    /// The LLM service started (recipes with LLM scorers or teachers).
    fn llm_started(&self, _service: &Arc<Service>) {}
    /// An epoch was published (called by worker 0, after `stats.json` is written).
    fn epoch(&self, _report: &EpochReport) {}
    /// The run ended (successfully or not).
    fn finished(&self) {}
}

/// The observers of a run (a field of [`crate::runtime::RunOptions`]).
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<dyn Observer>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.len())
    }
}

impl Observers {
    pub fn push(&mut self, o: Arc<dyn Observer>) {
        self.0.push(o);
    }
    pub fn llm_started(&self, service: &Arc<Service>) {
        for o in &self.0 {
            o.llm_started(service);
        }
    }
    pub fn epoch(&self, report: &EpochReport) {
        for o in &self.0 {
            o.epoch(report);
        }
    }
    pub fn finished(&self) {
        for o in &self.0 {
            o.finished();
        }
    }
}

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, log lines otherwise.
    Auto,
    /// Bars, even when stderr is not a terminal.
    Always,
    /// Log lines only.
    Never,
}

impl ProgressMode {
    /// Whether this mode draws bars, given whether stderr is a terminal.
    pub fn bars(self, tty: bool) -> bool {
        match self {
            ProgressMode::Auto => tty,
            ProgressMode::Always => true,
            ProgressMode::Never => false,
        }
    }
}

/// The progress display of a run: bars or log lines.
pub struct Progress {
    inner: Arc<Inner>,
    llm: Mutex<Option<Arc<Service>>>,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<(std::thread::JoinHandle<()>, Instant)>>,
}

struct Inner {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    steps: Mutex<Vec<(String, ProgressBar)>>,
    llm: Mutex<Option<ProgressBar>>,
}

impl Progress {
    /// A display in `mode`; bars draw on stderr.
    pub fn new(mode: ProgressMode) -> Arc<Progress> {
        let bars = mode.bars(std::io::stderr().is_terminal()).then(|| {
            let target = match mode {
                ProgressMode::Always => ProgressDrawTarget::term_like_with_hz(
                    Box::new(console::Term::buffered_stderr()),
                    10,
                ),
                _ => ProgressDrawTarget::stderr_with_hz(10),
            };
            let multi = MultiProgress::with_draw_target(target);
            let header = multi.add(ProgressBar::new_spinner());
            header.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("template"),
            );
            header.set_message("starting");
            header.enable_steady_tick(Duration::from_millis(120));
            Bars {
                multi,
                header,
                steps: Mutex::new(Vec::new()),
                llm: Mutex::new(None),
            }
        });
        Arc::new(Progress {
            inner: Arc::new(Inner { bars }),
            llm: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            ticker: Mutex::new(None),
        })
    }

    /// A display that shows nothing (for commands other than `run`).
    pub fn disabled() -> Arc<Progress> {
        Progress::new(ProgressMode::Never)
    }

    /// Whether bars are drawn.
    pub fn has_bars(&self) -> bool {
        self.inner.bars.is_some()
    }

    /// A writer for log lines that keeps the bars intact (lines print above them).
    pub fn log_writer(self: &Arc<Self>) -> LogWriter {
        LogWriter {
            multi: self.inner.bars.as_ref().map(|b| b.multi.clone()),
        }
    }
}

impl Inner {
    fn update_llm(&self, service: &Service, started: Instant) -> Value {
        let r = service.report();
        let t = &r["total"];
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        let finished = n("done") + n("cached") + n("failed") + n("not_issued") + n("would_call");
        let known = finished + service.outstanding() as u64;
        let looked_up = n("done") + n("cached");
        let hit_rate = if looked_up == 0 {
            0.0
        } else {
            n("cached") as f64 / looked_up as f64
        };
        let cost = t["cost_usd"].as_f64().unwrap_or(0.0);
        let eta = eta_secs(finished, known, started.elapsed());
        if let Some(bars) = &self.bars {
            let mut slot = bars.llm.lock().expect("llm bar");
            let bar = slot.get_or_insert_with(|| {
                let b = bars.multi.add(ProgressBar::new(0));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>16} [{bar:30.magenta/blue}] {pos}/{len} {msg} eta {eta}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                b.set_prefix("llm calls");
                b
            });
            bar.set_length(known.max(finished));
            bar.set_position(finished);
            bar.set_message(format!(
                "· in flight {} · queued {} · failed {} · cache hit {:.0}% · ${:.4}",
                n("in_flight"),
                n("queued"),
                n("failed"),
                hit_rate * 100.0,
                cost
            ));
        }
        serde_json::json!({
            "finished": finished, "known": known, "in_flight": n("in_flight"),
            "queued": n("queued"), "failed": n("failed"), "cache_hit_rate": hit_rate,
            "cost_usd": cost, "eta_s": eta,
        })
    }
}

/// Seconds left at the average rate so far, when anything has finished.
fn eta_secs(finished: u64, known: u64, elapsed: Duration) -> Option<f64> {
    if finished == 0 || known <= finished {
        return (known <= finished).then_some(0.0);
    }
    let rate = finished as f64 / elapsed.as_secs_f64().max(1e-3);
    Some(((known - finished) as f64 / rate * 10.0).round() / 10.0)
}

/// `reason count, reason count` of a step's rejections.
fn reasons(step: &Value) -> (i64, String) {
    let mut total = 0;
    let mut parts = Vec::new();
    if let Some(m) = step["rejected"].as_object() {
        for (k, v) in m {
            let v = v.as_i64().unwrap_or(0);
            total += v;
            parts.push(format!("{k} {v}"));
        }
    }
    (total, parts.join(", "))
}

impl Observer for Progress {
    fn llm_started(&self, service: &Arc<Service>) {
        *self.llm.lock().expect("llm") = Some(Arc::clone(service));
        // The ticker reads the service's counters: the bar every 200 ms, a log line every 2 s
        // while calls are outstanding.
        let service = Arc::clone(service);
        let stop = Arc::clone(&self.stop);
        let inner = Arc::clone(&self.inner);
        let started = Instant::now();
        let t = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let mut last_log = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    if inner.bars.is_some() {
                        inner.update_llm(&service, started);
                    } else if service.outstanding() > 0
                        && last_log.elapsed() >= Duration::from_secs(2)
                    {
                        last_log = Instant::now();
                        log_llm(&inner.update_llm(&service, started));
                    }
                }
            })
            .expect("progress thread");
        *self.ticker.lock().expect("ticker") = Some((t, started));
    }

    fn epoch(&self, report: &EpochReport) {
        let s = report.stats;
        let steps = s["steps"].as_array().cloned().unwrap_or_default();
        if let Some(bars) = &self.inner.bars {
            let mut have = bars.steps.lock().expect("step bars");
            for (i, st) in steps.iter().enumerate() {
                let id = st["id"].as_str().unwrap_or("?").to_string();
                if have.len() <= i {
                    let b = ProgressBar::new(0);
                    b.set_style(
                        ProgressStyle::with_template("{prefix:>16} [{bar:30.cyan/blue}] {msg}")
                            .expect("template")
                            .progress_chars("=> "),
                    );
                    b.set_prefix(id.clone());
                    let b = match have.last() {
                        Some((_, last)) => bars.multi.insert_after(last, b),
                        None => bars.multi.insert_after(&bars.header, b),
                    };
                    have.push((id.clone(), b));
                }
                let bar = &have[i].1;
                let (rin, rout) = (
                    st["in"].as_i64().unwrap_or(0).max(0) as u64,
                    st["out"].as_i64().unwrap_or(0).max(0) as u64,
                );
                bar.set_length(rin.max(rout).max(1));
                bar.set_position(rout);
                let (rejected, why) = reasons(st);
                bar.set_message(format!(
                    "{} in {rin} → out {rout}{}",
                    st["type"].as_str().unwrap_or(""),
                    if rejected > 0 {
                        format!(" · rejected {rejected} ({why})")
                    } else {
                        String::new()
                    }
                ));
            }
            let d = &s["dataset"];
            bars.header.set_message(format!(
                "epoch {} · {} rows ({} questions) · last change +{} −{} · epoch took {:.2}s",
                report.epoch,
                d["rows"],
                d["questions"],
                d["last_epoch"]["upserts"],
                d["last_epoch"]["deletes"],
                report.duration.as_secs_f64()
            ));
        } else if report.changed || report.epoch == 0 {
            for st in &steps {
                let (rejected, why) = reasons(st);
                tracing::info!(
                    epoch = report.epoch,
                    step = st["id"].as_str().unwrap_or("?"),
                    kind = st["type"].as_str().unwrap_or("?"),
                    rows_in = st["in"].as_i64().unwrap_or(0),
                    rows_out = st["out"].as_i64().unwrap_or(0),
                    rejected,
                    reasons = %if why.is_empty() { "-" } else { &why },
                    work = st["work"]["last_epoch"].as_i64().unwrap_or(0),
                    "step"
                );
            }
        }
    }

    fn finished(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let started = match self.ticker.lock().expect("ticker").take() {
            Some((t, started)) => {
                let _ = t.join();
                started
            }
            None => Instant::now(),
        };
        if let Some(service) = self.llm.lock().expect("llm").clone() {
            let v = self.inner.update_llm(&service, started);
            if self.inner.bars.is_none() {
                log_llm(&v);
            }
        }
        if let Some(bars) = &self.inner.bars {
            if let Some(b) = bars.llm.lock().expect("llm bar").as_ref() {
                b.abandon();
            }
            for (_, b) in bars.steps.lock().expect("step bars").iter() {
                b.abandon();
            }
            bars.header.abandon();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn log_llm(v: &Value) {
    tracing::info!(
        calls_finished = v["finished"].as_u64().unwrap_or(0),
        calls_known = v["known"].as_u64().unwrap_or(0),
        in_flight = v["in_flight"].as_u64().unwrap_or(0),
        queued = v["queued"].as_u64().unwrap_or(0),
        failed = v["failed"].as_u64().unwrap_or(0),
        cache_hit_rate = v["cache_hit_rate"].as_f64().unwrap_or(0.0),
        cost_usd = v["cost_usd"].as_f64().unwrap_or(0.0),
        eta_s = v["eta_s"].as_f64(),
        "llm progress"
    );
}

/// A line-buffered stderr writer that prints above the bars.
#[derive(Clone)]
pub struct LogWriter {
    multi: Option<MultiProgress>,
}

/// One log event's bytes, written on drop.
pub struct LogLine {
    multi: Option<MultiProgress>,
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let write = move || {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&buf);
            let _ = e.flush();
        };
        match &self.multi {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine {
            multi: self.multi.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}
