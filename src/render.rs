//! Rendering: a validated recipe becomes one timely worker's dataflow.
//!
//! ```text
//!  question upserts --arrange_upserts(qid)--> questions
//!      step 0 .. step k (each: passed + rejected, scoped to its domains)
//!      fanout (teachers x samples) --> rows --> row steps --> DatasetShards sink
//!  benchmark items ----------------------------------> decontaminate steps
//!  replay answers -----------------------------------> fanout (keyed teachers)
//!  ingest rejections + every step's rejections --------> rejections sink (worker 0)
//!  contamination matches -------------------------------> contamination sink (worker 0)
//!  counts (in/out/rejected/work per step, rows) -------> stats (worker 0)
//! ```
//!
//! Every sink's output stream feeds one probe: when it passes an epoch, every worker has
//! written that epoch.

use crate::llm::cache::CallKey;
use crate::llm::service::{Request, ScoreParse, Service, Target};
use crate::recipe::{
    DedupMode, LlmCall, Recipe, Scorer, SelectSpec, Sizes, StepKind, TeacherKind, Template,
};
use crate::sink::{AuditTable, DatasetChanges, DatasetFiles, Naming, OutDirs, SinkEvent};
use crate::stats::{live, live_all, tally, work_all, StatKey, StatsState};
use crate::store::{Store, StoreDelta};
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use thoughtflow_operators::epoch::{epoch_unary, first_epoch_unary};
use thoughtflow_operators::hash;
use thoughtflow_operators::record::*;
use thoughtflow_operators::steps::fanout::{self, Answers, LookupBy, LookupKey, Missing};
use thoughtflow_operators::steps::score::ScoreKey;
use thoughtflow_operators::steps::select::{GroupBy, GroupKey, GroupSizes, Selection};
use thoughtflow_operators::steps::{
    answer_dedup, decontam, dedup, length, scoped, score, select, StepOutput,
};
use thoughtflow_operators::upsert::arrange_upserts;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Input as TimelyInput;
use timely::dataflow::operators::vec::Map as _;
use timely::dataflow::operators::{Capability, Exchange as _};
use timely::dataflow::StreamVec;
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

/// A question upsert: `(id, Some(question))` or a tombstone `(id, None)`, at an epoch.
pub type Upsert = (QuestionId, Option<Question>, Epoch);

/// A keyed teacher's answer input.
pub type AnswerInput = InputSession<Epoch, ((LookupKey, u16), Answer), isize>;

/// An LLM score step's inputs: parsed scores, and the reasons a score could not be had.
pub type ScoreInputs = (
    InputSession<Epoch, (ScoreKey, i64), isize>,
    InputSession<Epoch, (ScoreKey, String), isize>,
);
/// An LLM teacher's inputs: answers, and the reasons an answer could not be had.
pub type TeacherInputs = (
    AnswerInput,
    InputSession<Epoch, ((LookupKey, u16), String), isize>,
);

/// One worker's handles into its dataflow.
pub struct Handles {
    pub questions: InputHandleVec<Epoch, Upsert>,
    pub benchmarks: InputSession<Epoch, BenchItem, isize>,
    pub ingest_rejections: InputSession<Epoch, Rejection, isize>,
    /// Per teacher: its answer input, for keyed (replay) teachers.
    pub answers: Vec<Option<AnswerInput>>,
    pub ingest_work: InputSession<Epoch, StatKey, isize>,
    /// Per LLM score step (by step index): where its results enter.
    pub llm_scores: BTreeMap<u16, ScoreInputs>,
    /// Per LLM teacher (by teacher index): where its results enter.
    pub llm_answers: BTreeMap<u16, TeacherInputs>,
    pub probe: ProbeHandle<Epoch>,
    /// Cluster mode: what this worker put into its process's store, shipped to the others.
    pub store_deltas: Option<InputHandleVec<Epoch, StoreDelta>>,
    /// Worker 0 only: the accumulated counts.
    pub stats: Option<Rc<RefCell<StatsState>>>,
    /// Errors raised inside sinks (I/O), for the driver to report.
    pub sink_errors: Rc<RefCell<Vec<String>>>,
    /// This worker's dataset change partitions: saved when the run ends cleanly.
    pub changes: Rc<RefCell<DatasetChanges>>,
}

impl Handles {
    pub fn advance_to(&mut self, epoch: Epoch) {
        self.questions.advance_to(epoch);
        self.benchmarks.advance_to(epoch);
        self.ingest_rejections.advance_to(epoch);
        self.ingest_work.advance_to(epoch);
        for a in self.answers.iter_mut().flatten() {
            a.advance_to(epoch);
        }
        for (ok, err) in self.llm_scores.values_mut() {
            ok.advance_to(epoch);
            err.advance_to(epoch);
            ok.flush();
            err.flush();
        }
        for (ok, err) in self.llm_answers.values_mut() {
            ok.advance_to(epoch);
            err.advance_to(epoch);
            ok.flush();
            err.flush();
        }
        if let Some(d) = self.store_deltas.as_mut() {
            d.advance_to(epoch);
            d.flush();
        }
        self.questions.flush();
        self.benchmarks.flush();
        self.ingest_rejections.flush();
        self.ingest_work.flush();
        for a in self.answers.iter_mut().flatten() {
            a.flush();
        }
    }
}

/// Runs one sink operator's epoch, logging (at debug level) how long it took; a long one's
/// freed memory goes back to the OS at once ([`crate::runtime::release_after_bulk`]).
fn timed<R>(operator: &'static str, f: impl FnOnce() -> R) -> R {
    let started = std::time::Instant::now();
    let r = f();
    tracing::debug!(
        operator,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "sink operator epoch"
    );
    crate::runtime::release_after_bulk(started);
    r
}

/// One step of a sink's idle work (`step` says whether more is left; `None`: it failed, and
/// the epochs do that work when they need it). Logged at debug level with its time.
///
/// Only a following run (`--follow`) does idle work: it readies the sinks for the next
/// epoch's changes (a 3.87M-record audit table sorted, the shards' lines indexed), which a run
/// that ends once caught up would do for nothing, beside its last epoch's writes and in its
/// peak memory. An epoch that needs that work does it itself.
fn idle_work(operator: &'static str, step: impl FnOnce() -> Option<bool>) -> bool {
    let started = std::time::Instant::now();
    let more = step();
    tracing::debug!(
        operator,
        ms = started.elapsed().as_secs_f64() * 1e3,
        more = ?more,
        "sink idle work"
    );
    more.unwrap_or(false)
}

/// Counts a step's outcome (what it let through, what it rejected and why) on its way on.
fn tally_outcome<'s, D: Clone + 'static>(
    (passed, rejected): (
        VecCollection<'s, Epoch, D>,
        VecCollection<'s, Epoch, Rejection>,
    ),
    step: u16,
    stats: &mut Vec<VecCollection<'s, Epoch, StatKey>>,
) -> (
    VecCollection<'s, Epoch, D>,
    VecCollection<'s, Epoch, Rejection>,
) {
    let (passed, counts) = tally(passed, vec![live_all(StatKey::StepOut(step))]);
    stats.push(counts);
    let (rejected, counts) = tally(
        rejected,
        vec![live(move |r: &Rejection| {
            Some(StatKey::Rejected(step, r.reason))
        })],
    );
    stats.push(counts);
    (passed, rejected)
}

/// Cluster mode: the store entries each worker journaled are sent to one worker per process,
/// which puts them into its process's store. The returned stream carries no data: its frontier
/// passes an epoch once every process holds every entry of that epoch.
fn replicate_store<'s>(
    deltas: StreamVec<'s, Epoch, StoreDelta>,
    store: &Arc<Store>,
    threads: usize,
    peers: usize,
) -> StreamVec<'s, Epoch, ()> {
    let leaders: Vec<u64> = (0..peers.div_ceil(threads))
        .map(|p| (p * threads) as u64)
        .collect();
    let store = Arc::clone(store);
    deltas
        .flat_map(move |d| {
            leaders
                .iter()
                .map(move |l| (*l, d.clone()))
                .collect::<Vec<_>>()
        })
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|(leader, _): &(u64, StoreDelta)| *leader),
            "ReplicateStore",
            move |_cap, _info| {
                move |input, _output| {
                    input.for_each(|_cap, data| {
                        for (_, d) in data.drain(..) {
                            store.apply(d);
                        }
                    });
                }
            },
        )
}

/// Holds a stream's records of each epoch until `ready` has passed that epoch, so that no
/// operator anywhere in the cluster sees a record before the store entries it refers to.
fn gate<'s, D: Clone + 'static>(
    stream: StreamVec<'s, Epoch, D>,
    ready: &StreamVec<'s, Epoch, ()>,
    name: &str,
) -> StreamVec<'s, Epoch, D> {
    stream.binary_frontier::<_, CapacityContainerBuilder<Vec<D>>, _, _, _, _>(
        ready.clone(),
        Pipeline,
        Pipeline,
        name,
        |_cap, _info| {
            let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<D>)> = BTreeMap::new();
            move |(data_in, _), (ready_in, ready_frontier), output| {
                data_in.for_each(|cap, data| {
                    let t = *cap.least().expect("a totally ordered time");
                    pending
                        .entry(t)
                        .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()))
                        .1
                        .append(data);
                });
                ready_in.for_each(|_, _| {});
                while let Some((&t, _)) = pending.first_key_value() {
                    if ready_frontier.less_equal(&t) {
                        break;
                    }
                    let (_, (cap, data)) = pending.pop_first().expect("just peeked");
                    let mut session = output.session(&cap);
                    for d in data {
                        session.give(d);
                    }
                }
            }
        },
    )
}

/// Resolves per-group sizes named in the recipe to group keys.
fn group_sizes(per: GroupBy, sizes: &Sizes) -> GroupSizes {
    let mut out = GroupSizes {
        default: sizes.default,
        per_group: BTreeMap::new(),
    };
    for (name, n) in &sizes.per_name {
        let key = match per {
            GroupBy::Domain => Domain::parse(name).map(GroupKey::Domain),
            GroupBy::Source => Some(GroupKey::Source(hash::source_id(name))),
            GroupBy::All => Some(GroupKey::All),
        };
        if let Some(k) = key {
            out.per_group.insert(k, *n);
        }
    }
    out
}

pub fn selection(spec: &SelectSpec) -> Selection {
    match spec {
        SelectSpec::Threshold { min, max } => Selection::Threshold {
            min: *min,
            max: *max,
        },
        SelectSpec::TopN { per, n } => Selection::TopN {
            per: *per,
            n: group_sizes(*per, n),
        },
        SelectSpec::Sample { per, n } => Selection::Sample {
            per: *per,
            n: group_sizes(*per, n),
        },
    }
}

/// An LLM request for one question (and sample).
fn call_request(
    call: &LlmCall,
    model: &str,
    template: &Template,
    hash: ContentHash,
    sample: u16,
    question: &str,
    target: Target,
) -> Request {
    let key = CallKey {
        api: call.api,
        model: model.to_string(),
        sampling: call.sampling.canonical(),
        template: template.version(),
        question: hash,
        sample,
    };
    let seed = (hash::hash64(key.text().as_bytes()) >> 1) as u64;
    Request {
        key,
        endpoint: call.endpoint.clone(),
        sampling: call.sampling.clone(),
        seed: Some(seed),
        prompt: template.render(question),
        target,
    }
}

/// Sends the calls a collection wants to the LLM service, epoch by epoch: an insertion submits
/// a call (served from the cache when it can be), a retraction cancels one that has not
/// started. Its (empty) output feeds the probe, so an epoch is done only once its calls are
/// submitted.
fn request_sink<'s, D>(
    wanted: VecCollection<'s, Epoch, D>,
    service: Arc<Service>,
    route: fn(&D) -> u64,
    make: impl Fn(&D) -> Request + 'static,
) -> VecCollection<'s, Epoch, ()>
where
    D: timely::ExchangeData + Ord + Clone,
{
    epoch_unary(
        wanted,
        Exchange::new(move |u: &(D, Epoch, isize)| route(&u.0)),
        "LlmRequests",
        move |_epoch, updates, _out: &mut Vec<((), isize)>| {
            let mut net: BTreeMap<D, isize> = BTreeMap::new();
            for (d, r) in updates {
                *net.entry(d).or_insert(0) += r;
            }
            let mut batch = Vec::new();
            let mut cancel = Vec::new();
            for (d, r) in net {
                if r > 0 {
                    batch.push(make(&d));
                } else if r < 0 {
                    cancel.push(make(&d).key.id());
                }
            }
            service.cancel(cancel);
            service.submit(batch);
        },
    )
}

/// The items of the named benchmarks (all when `names` is `None`).
fn benchmark_subset<'s>(
    benchmarks: &VecCollection<'s, Epoch, BenchItem>,
    names: Option<Vec<String>>,
) -> VecCollection<'s, Epoch, BenchItem> {
    match names {
        None => benchmarks.clone(),
        Some(names) => benchmarks.clone().filter(move |b| {
            names
                .iter()
                .any(|n| b.bench == *n || b.bench.starts_with(&format!("{n}/")))
        }),
    }
}

/// Rejects rows whose answer matches a benchmark item (the decontamination matcher run on
/// answers: each row is matched as a pseudo-question keyed by its row key).
fn answer_decontaminate<'s>(
    step: StepId,
    rows: VecCollection<'s, Epoch, (RowKey, Row)>,
    items: VecCollection<'s, Epoch, BenchItem>,
    config: thoughtflow_operators::steps::decontam::DecontamConfig,
    store: &Arc<Store>,
    memo: decontam::MemoHooks,
) -> thoughtflow_operators::steps::RowOutput<'s> {
    let pseudo_id = |k: &RowKey| {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&k.question.0.to_le_bytes());
        b[8..10].copy_from_slice(&k.teacher.0.to_le_bytes());
        b[10..12].copy_from_slice(&k.sample.to_le_bytes());
        QuestionId(hash::hash64(&b))
    };
    let s2 = Arc::clone(store);
    let keyed = rows.map(move |(k, row)| (pseudo_id(&k), (k, row)));
    // The answer's text is put where `ngram_matches` will read it: on the worker its pseudo id
    // goes to (in a cluster, another process's store would not have it).
    let pseudo = keyed
        .clone()
        .inner
        .exchange(|((id, _), _, _): &((QuestionId, (RowKey, Row)), Epoch, isize)| id.0)
        .as_collection()
        .map(move |(id, (_, row))| {
            let text = crate::teachers::answer_text(&row.answer, &s2).unwrap_or_default();
            let tref = hash::text_ref(&text);
            s2.texts.put_with_key(tref, &text);
            (id, tref)
        });
    let texts: Arc<dyn thoughtflow_operators::text::TextLookup> = store.texts.clone();
    let matches = decontam::ngram_matches(pseudo, items, config, texts, Some(memo));
    let first = matches
        .map(|m| (m.question, (m.bench, m.item)))
        .reduce(|_id, input, output| output.push((input[0].0.clone(), 1)));
    let rejected = keyed
        .clone()
        .join_map(first.clone(), move |_id, (k, _), (bench, item)| Rejection {
            subject: Subject::Row(*k),
            step,
            reason: Reason::Contaminated,
            detail: Detail::Contamination(Box::new(ItemRef {
                bench: bench.clone(),
                item: item.clone(),
            })),
        });
    let passed = keyed
        .antijoin(first.map(|(id, _)| id).distinct())
        .map(|(_, kr)| kr);
    thoughtflow_operators::steps::RowOutput { passed, rejected }
}

/// Builds the recipe's dataflow on `worker`.
pub fn build(
    worker: &mut Worker,
    recipe: &Arc<Recipe>,
    store: &Arc<Store>,
    dirs: &OutDirs,
    opts: &crate::runtime::RunOptions,
    llm: Option<&Arc<Service>>,
    memo: &Arc<decontam::DecontamMemo>,
) -> Handles {
    let follow = opts.follow;
    let memo = Arc::clone(memo);
    let memo_dir = crate::memo::dir(&dirs.root);
    let kafka = opts.kafka.clone();
    let llm = llm.cloned();
    let index = worker.index();
    let peers = worker.peers();
    let recipe = Arc::clone(recipe);
    let store = Arc::clone(store);
    let dirs = dirs.clone();
    worker.dataflow::<Epoch, _, _>(move |scope| {
        let probe = ProbeHandle::new();
        let sink_errors: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
        let naming = Naming {
            store: Arc::clone(&store),
            teachers: Arc::new(recipe.teachers.iter().map(|t| t.name.clone()).collect()),
            steps: Arc::new(recipe.steps.iter().map(|s| s.id.clone()).collect()),
        };

        // Inputs. In cluster mode, records wait at a gate until the store entries they refer to
        // (texts, names) have reached every process.
        let (store_deltas, ready) = match store.cluster_threads() {
            Some(threads) => {
                let (h, deltas) = scope.new_input::<StoreDelta>();
                (
                    Some(h),
                    Some(replicate_store(deltas, &store, threads, peers)),
                )
            }
            None => (None, None),
        };
        let (q_handle, q_stream) = scope.new_input::<Upsert>();
        let q_stream = match &ready {
            Some(r) => gate(q_stream, r, "GateQuestions"),
            None => q_stream,
        };
        let upserts = arrange_upserts(q_stream, "QuestionUpserts");
        let questions = upserts.clone().as_collection(|k, v| (*k, v.clone()));
        // The arrangement of the questions as ingested: the first step, when it takes them all
        // and needs them arranged by id, reads it instead of arranging its own copy.
        let mut as_ingested = Some(upserts);
        let (b_handle, benchmarks) = scope.new_collection::<BenchItem, isize>();
        let (r_handle, ingest_rejections) = scope.new_collection::<Rejection, isize>();
        let ingest_rejections = match &ready {
            Some(r) => gate(ingest_rejections.inner, r, "GateRejections").as_collection(),
            None => ingest_rejections,
        };
        let (w_handle, ingest_work) = scope.new_collection::<StatKey, isize>();
        let mut answer_handles = Vec::new();
        let mut answer_collections = Vec::new();
        for t in &recipe.teachers {
            match t.kind {
                TeacherKind::Replay { .. } => {
                    let (h, c) = scope.new_collection::<((LookupKey, u16), Answer), isize>();
                    answer_handles.push(Some(h));
                    answer_collections.push(Some(c));
                }
                TeacherKind::Synthetic { .. } | TeacherKind::OpenAi { .. } => {
                    answer_handles.push(None);
                    answer_collections.push(None);
                }
            }
        }
        let mut llm_scores = BTreeMap::new();
        let mut llm_answers = BTreeMap::new();

        let (questions, ingested) = tally(
            questions,
            vec![live(|(_, q): &(QuestionId, Question)| {
                Some(StatKey::Ingested(q.source, q.domain))
            })],
        );
        let (ingest_rejections, ingest_rejected) = tally(
            ingest_rejections,
            vec![live(|r: &Rejection| match &r.subject {
                Subject::Input { source, .. } => Some(StatKey::IngestRejected(*source, r.reason)),
                _ => None,
            })],
        );
        let mut stats = vec![ingest_work, ingested, ingest_rejected];
        let mut rejections = vec![ingest_rejections];
        let mut matches_all = Vec::new();

        // Question steps, then the fan-out, then row steps.
        let mut current = questions;
        let mut rows: Option<VecCollection<'_, Epoch, (RowKey, Row)>> = None;
        for (i, step) in recipe.steps.iter().enumerate() {
            let sid = StepId(i as u16);
            let i16 = i as u16;
            if let Some(r) = rows.take() {
                // A row step.
                let (r, counts) = tally(
                    r,
                    vec![live_all(StatKey::StepIn(i16)), work_all(StatKey::Work(i16))],
                );
                stats.push(counts);
                let out = match &step.kind {
                    StepKind::AnswerDedup => answer_dedup::answer_dedup(sid, r),
                    StepKind::AnswerSelect { keep, k } => {
                        let s2 = Arc::clone(&store);
                        let length: Arc<dyn Fn(&Answer) -> u64 + Send + Sync> =
                            Arc::new(move |a: &Answer| {
                                crate::teachers::answer_text(a, &s2)
                                    .map(|t| t.chars().count() as u64)
                                    .unwrap_or(0)
                            });
                        thoughtflow_operators::steps::answer_select::answer_select(
                            sid, r, *keep, *k, length,
                        )
                    }
                    StepKind::AnswerDecontaminate {
                        config,
                        benchmarks: names,
                    } => answer_decontaminate(
                        sid,
                        r,
                        benchmark_subset(&benchmarks, names.clone()),
                        config.clone(),
                        &store,
                        crate::memo::hooks(&memo_dir, &format!("a{}", sid.0), index, peers, &memo),
                    ),
                    other => unreachable!("validated: {} is not a row step", other.type_name()),
                };
                let (passed, rejected) = tally_outcome((out.passed, out.rejected), i16, &mut stats);
                rejections.push(rejected);
                rows = Some(passed);
                continue;
            }
            let (counted, counts) = tally(
                current,
                vec![live_all(StatKey::StepIn(i16)), work_all(StatKey::Work(i16))],
            );
            current = counted;
            stats.push(counts);
            let arranged = as_ingested.take().filter(|_| step.domains.is_none());
            if let StepKind::Fanout { teachers, samples } = &step.kind {
                let mut all_rows = Vec::new();
                // Questions of a domain no teacher answers are rejected, not dropped.
                let covered: Vec<Domain> = Domain::ALL
                    .into_iter()
                    .filter(|d| {
                        teachers.iter().any(|n| {
                            let t = &recipe.teachers[recipe.teacher_index(n).expect("validated")];
                            t.domains.as_ref().is_none_or(|ds| ds.contains(d))
                        })
                    })
                    .collect();
                if covered.len() < Domain::ALL.len() {
                    let c = covered.clone();
                    let uncovered = current
                        .clone()
                        .filter(move |(_, q)| !c.contains(&q.domain))
                        .map(move |(id, q)| Rejection {
                            subject: Subject::Question(id),
                            step: sid,
                            reason: Reason::NoAnswer,
                            detail: Detail::Text(
                                format!("no teacher of this step answers {} questions", q.domain)
                                    .into(),
                            ),
                        });
                    let (uncovered, counts) = tally(
                        uncovered,
                        vec![live(move |r: &Rejection| {
                            Some(StatKey::Rejected(i16, r.reason))
                        })],
                    );
                    rejections.push(uncovered);
                    stats.push(counts);
                }
                for name in teachers {
                    let t = recipe.teacher_index(name).expect("validated teacher");
                    let spec = &recipe.teachers[t];
                    let samples = spec.samples.unwrap_or(*samples);
                    let questions = match spec.domains.clone() {
                        Some(ds) => current.clone().filter(move |(_, q)| ds.contains(&q.domain)),
                        None => current.clone(),
                    };
                    let answers = match &recipe.teachers[t].kind {
                        TeacherKind::Synthetic { answer_words } => Answers::Synthetic {
                            words: *answer_words,
                        },
                        TeacherKind::Replay { key, .. } => Answers::Keyed {
                            by: *key,
                            answers: answer_collections[t].clone().expect("replay input"),
                            missing: Missing::Reject,
                        },
                        TeacherKind::OpenAi { call } => {
                            let (ah, answers) =
                                scope.new_collection::<((LookupKey, u16), Answer), isize>();
                            let (fh, failures) =
                                scope.new_collection::<((LookupKey, u16), String), isize>();
                            llm_answers.insert(t as u16, (ah, fh));
                            let answers = match &ready {
                                Some(r) => gate(answers.inner, r, "GateAnswers").as_collection(),
                                None => answers,
                            };
                            let wanted = questions
                                .clone()
                                .flat_map(move |(_, q)| {
                                    (0..samples)
                                        .map(|s| (q.hash, s, q.text))
                                        .collect::<Vec<_>>()
                                })
                                .distinct();
                            let service = llm.clone().expect("validated: endpoints configured");
                            let model = service.model(&call.endpoint).unwrap_or_default();
                            let call = call.clone();
                            let texts = Arc::clone(&store);
                            let teacher = t as u16;
                            request_sink(
                                wanted,
                                service,
                                |(h, _, _)| h.0 as u64,
                                move |(hash, sample, text)| {
                                    let question = texts.text(*text).unwrap_or_default();
                                    call_request(
                                        &call,
                                        &model,
                                        &call.prompt,
                                        *hash,
                                        *sample,
                                        &question,
                                        Target::Teacher {
                                            teacher,
                                            hash: *hash,
                                            sample: *sample,
                                        },
                                    )
                                },
                            )
                            .probe_with(&probe);
                            Answers::Keyed {
                                by: LookupBy::Hash,
                                answers,
                                missing: Missing::Pending { failures },
                            }
                        }
                    };
                    let out = fanout::fanout(sid, questions, TeacherId(t as u16), samples, answers);
                    let (rejected, counts) = tally(
                        out.rejected,
                        vec![live(move |r: &Rejection| {
                            Some(StatKey::Rejected(i16, r.reason))
                        })],
                    );
                    rejections.push(rejected);
                    stats.push(counts);
                    all_rows.push(out.passed);
                }
                let (r, counts) = tally(
                    differential_dataflow::collection::concatenate(scope, all_rows),
                    vec![live_all(StatKey::StepOut(i16))],
                );
                stats.push(counts);
                rows = Some(r);
                continue;
            }
            let out: StepOutput = scoped(current, step.domains.clone(), |q| match &step.kind {
                StepKind::Decontaminate {
                    config,
                    benchmarks: names,
                } => {
                    let items = match names.clone() {
                        None => benchmarks.clone(),
                        Some(names) => benchmarks.clone().filter(move |b| {
                            names
                                .iter()
                                .any(|n| b.bench == *n || b.bench.starts_with(&format!("{n}/")))
                        }),
                    };
                    let texts: Arc<dyn thoughtflow_operators::text::TextLookup> =
                        store.texts.clone();
                    let hooks =
                        crate::memo::hooks(&memo_dir, &format!("q{}", sid.0), index, peers, &memo);
                    // One read of the questions: they go on to the verdicts, their text
                    // references to the matcher.
                    let (q, pairs) =
                        thoughtflow_operators::split::fork(q, "decontaminate", |(id, q)| {
                            Some((*id, q.text))
                        });
                    let m =
                        decontam::ngram_matches(pairs, items, config.clone(), texts, Some(hooks));
                    matches_all.push(m.clone());
                    decontam::apply_matches(sid, q, m, arranged)
                }
                StepKind::LengthGuard { max_tokens } => length::length_guard(sid, q, *max_tokens),
                StepKind::Score {
                    scorer: Scorer::Heuristic(h),
                    as_difficulty,
                } => StepOutput {
                    passed: score::score_heuristic(q, *h, *as_difficulty),
                    rejected: differential_dataflow::collection::concatenate(
                        scope,
                        std::iter::empty(),
                    ),
                },
                StepKind::Score {
                    scorer,
                    as_difficulty,
                } => {
                    let (oh, ok) = scope.new_collection::<(ScoreKey, i64), isize>();
                    let (eh, err) = scope.new_collection::<(ScoreKey, String), isize>();
                    llm_scores.insert(i16, (oh, eh));
                    let (call, prompts, parse) = match scorer {
                        Scorer::LlmDifficulty { call, prompts } => {
                            (call.clone(), prompts.clone(), ScoreParse::Difficulty)
                        }
                        Scorer::LlmResponseLength { call } => {
                            (call.clone(), BTreeMap::new(), ScoreParse::Length)
                        }
                        Scorer::Heuristic(_) => unreachable!("handled above"),
                    };
                    let service = llm.clone().expect("validated: endpoints configured");
                    let model = service.model(&call.endpoint).unwrap_or_default();
                    let texts = Arc::clone(&store);
                    let wanted = q
                        .clone()
                        .map(|(_, q)| (q.hash, q.domain, q.text))
                        .distinct();
                    request_sink(
                        wanted,
                        service,
                        |(h, _, _)| h.0 as u64,
                        move |(hash, domain, text)| {
                            let question = texts.text(*text).unwrap_or_default();
                            let template = prompts.get(domain).unwrap_or(&call.prompt);
                            call_request(
                                &call,
                                &model,
                                template,
                                *hash,
                                0,
                                &question,
                                Target::Score {
                                    step: i16,
                                    hash: *hash,
                                    domain: *domain,
                                    parse,
                                },
                            )
                        },
                    )
                    .probe_with(&probe);
                    score::score_from(sid, q, ok, err, *as_difficulty)
                }
                StepKind::Select(spec) => select::select(sid, q, selection(spec)),
                StepKind::Dedup { mode } => match mode {
                    DedupMode::Exact => dedup::dedup_exact(sid, q),
                    DedupMode::Near(cfg) => {
                        let texts: Arc<dyn thoughtflow_operators::text::TextLookup> =
                            store.texts.clone();
                        thoughtflow_operators::steps::near_dedup::near_dedup(
                            sid,
                            q,
                            cfg.clone(),
                            texts,
                        )
                    }
                    DedupMode::None => StepOutput {
                        passed: q,
                        rejected: differential_dataflow::collection::concatenate(
                            scope,
                            std::iter::empty(),
                        ),
                    },
                },
                StepKind::Fanout { .. }
                | StepKind::AnswerDedup
                | StepKind::AnswerSelect { .. }
                | StepKind::AnswerDecontaminate { .. } => unreachable!("handled above"),
            });
            let (passed, rejected) = tally_outcome((out.passed, out.rejected), i16, &mut stats);
            rejections.push(rejected);
            current = passed;
        }

        // Without a fan-out, each question is one row with no answer.
        let rows = rows.unwrap_or_else(|| {
            current.map(|(id, q)| {
                let key = RowKey {
                    question: id,
                    teacher: TeacherId(0),
                    sample: 0,
                };
                (
                    key,
                    Row {
                        key,
                        question: q,
                        answer: Answer {
                            hash: ContentHash(0),
                            text: AnswerText::None,
                        },
                    },
                )
            })
        });

        // Dataset sink: rows go to the worker that owns their change partition (by question
        // id: changes, counts, changelog), and to the one that owns their shard (by content
        // hash range: the shard files and their manifest entries).
        let shards = recipe.sink.shards;
        let parts = crate::sink::change_parts(shards);
        let mut dataset = DatasetChanges::new(dirs.clone(), naming.clone(), parts, index, peers);
        let changelog = recipe.sink.kafka.clone().zip(kafka.clone());
        dataset.report_changes = changelog.is_some();
        dataset.log = recipe.sink.changes;
        let dataset = Rc::new(RefCell::new(dataset));
        let changes = Rc::clone(&dataset);
        let errors = Rc::clone(&sink_errors);
        // Called for the first epoch even without rows, so that a restart whose dataset is now
        // empty logs the previous run's rows as deleted.
        let dataset_events = thoughtflow_operators::epoch::first_epoch_unary(
            rows.clone(),
            Exchange::new(move |u: &((RowKey, Row), Epoch, isize)| {
                crate::sink::change_part_of((u.0).0.question, parts) as u64
            }),
            "DatasetChanges",
            move |epoch, updates, out: &mut Vec<(SinkEvent, isize)>| {
                let r = timed("DatasetChanges", || {
                    dataset.borrow_mut().epoch(epoch, parts, updates, out)
                });
                if let Err(e) = r {
                    errors
                        .borrow_mut()
                        .push(format!("writing dataset changes: {e}"));
                }
            },
        );
        let files = DatasetFiles::new(dirs.clone(), naming.clone(), &recipe.sink, index, peers);
        // Shared by the epochs and the idle work, both on the sink's thread.
        let files = Arc::new(Mutex::new(files));
        let idle_files = Arc::clone(&files);
        let errors = Rc::clone(&sink_errors);
        // Shards are written on a thread of their own: the worker stays free to move progress
        // on (the audit sink's epoch can complete meanwhile) and to run its other operators.
        stats.push(thoughtflow_operators::epoch::first_epoch_sink_offloaded(
            rows,
            Exchange::new(move |u: &((RowKey, Row), Epoch, isize)| {
                crate::sink::shard_of((u.0).1.question.hash, shards) as u64
            }),
            "DatasetFiles",
            move |epoch, updates: thoughtflow_operators::epoch::Stash<_>| {
                let updates: Vec<_> = updates.drain().collect();
                if !updates.is_empty() {
                    crate::runtime::test_pause("sink");
                }
                let mut out = Vec::new();
                let mut files = files.lock().expect("the sink's own thread");
                let r = timed("DatasetFiles", || files.epoch(epoch, updates, &mut out));
                (out, r.err().map(|e| format!("writing dataset shards: {e}")))
            },
            move |_epoch,
                  (out, error): (Vec<(StatKey, isize)>, Option<String>),
                  emit: &mut dyn FnMut(StatKey, isize)| {
                if let Some(e) = error {
                    errors.borrow_mut().push(e);
                }
                for (k, d) in out {
                    emit(k, d);
                }
            },
            move || {
                follow && idle_work("DatasetFiles", || idle_files.lock().ok()?.idle_step().ok())
            },
        ));
        stats.push(dataset_events.clone().flat_map(|e| match e {
            SinkEvent::Stat(k) => Some(k),
            SinkEvent::Change(_) => None,
        }));
        #[cfg(feature = "kafka")]
        if let Some((spec, settings)) = changelog {
            let changes = dataset_events.flat_map(|e| match e {
                SinkEvent::Change(c) => Some(c),
                SinkEvent::Stat(_) => None,
            });
            crate::kafka::changelog::changelog_sink(
                changes,
                settings,
                spec,
                Rc::clone(&sink_errors),
            )
            .probe_with(&probe);
        }
        #[cfg(not(feature = "kafka"))]
        let _ = (changelog, dataset_events);

        // Audit sinks on worker 0.
        let all_rejections = differential_dataflow::collection::concatenate(scope, rejections);
        // Only the last worker holds (and may clean up) the rejection files: worker 0 has the
        // manifest, the changes and the contamination table to write.
        let last = peers - 1;
        let step_name = naming.step_namer();
        let table = (index == last).then(|| {
            AuditTable::new(
                dirs.rejections(),
                naming.context_digest(),
                move |r: &Rejection| step_name(r.step),
            )
        });
        let table = Arc::new(Mutex::new(table));
        let idle_table = Arc::clone(&table);
        let n2 = naming.clone();
        let errors = Rc::clone(&sink_errors);
        // The audit files are written on a thread of their own (a refresh at the paper's
        // scale rewrites a 540 MB `hardest.jsonl`), beside this worker's dataset shards; the
        // epoch is published when both are done.
        thoughtflow_operators::epoch::first_epoch_sink_offloaded(
            all_rejections,
            Exchange::new(move |_: &(Rejection, Epoch, isize)| last as u64),
            "RejectionSink",
            move |_epoch, updates: thoughtflow_operators::epoch::Stash<_>| {
                let mut table = table.lock().expect("the sink's own thread");
                let table = table.as_mut()?;
                let r = timed("RejectionSink", || {
                    table.epoch(updates.into_batches(), |r, w| n2.write_rejection(r, w))
                });
                r.err().map(|e| format!("writing rejections: {e}"))
            },
            move |_epoch, error: Option<String>, _out: &mut dyn FnMut((), isize)| {
                if let Some(e) = error {
                    errors.borrow_mut().push(e);
                }
            },
            move || {
                follow
                    && idle_work("RejectionSink", || {
                        idle_table.lock().ok()?.as_mut()?.idle_step().ok()
                    })
            },
        )
        .probe_with(&probe);

        let (all_matches, counts) = tally(
            differential_dataflow::collection::concatenate(scope, matches_all),
            vec![live(|m: &Match| Some(StatKey::Matches(m.bench.clone())))],
        );
        stats.push(counts);
        let mut table = (index == 0).then(|| {
            let matches: Arc<str> = Arc::from("matches");
            AuditTable::new(
                dirs.contamination(),
                naming.context_digest(),
                move |_: &Match| Arc::clone(&matches),
            )
        });
        let n3 = naming.clone();
        let errors = Rc::clone(&sink_errors);
        first_epoch_unary(
            all_matches,
            Exchange::new(|_: &(Match, Epoch, isize)| 0),
            "ContaminationSink",
            move |epoch, updates, _out: &mut Vec<((), isize)>| {
                let Some(table) = table.as_mut() else { return };
                let batch = updates.into_iter().map(|(m, d)| (m, epoch, d)).collect();
                if let Err(e) = table.epoch(vec![batch], |m, w| {
                    serde_json::to_writer(w, &n3.render_match(m)).map_err(Into::into)
                }) {
                    errors
                        .borrow_mut()
                        .push(format!("writing contamination matches: {e}"));
                }
            },
        )
        .probe_with(&probe);

        // Stats on worker 0.
        let state = Rc::new(RefCell::new(StatsState::default()));
        let s2 = Rc::clone(&state);
        epoch_unary(
            differential_dataflow::collection::concatenate(scope, stats),
            Exchange::new(|_: &(StatKey, Epoch, isize)| 0),
            "Stats",
            move |epoch, updates, _out: &mut Vec<((), isize)>| {
                s2.borrow_mut().apply(epoch, updates)
            },
        )
        .probe_with(&probe);

        Handles {
            questions: q_handle,
            benchmarks: b_handle,
            ingest_rejections: r_handle,
            answers: answer_handles,
            ingest_work: w_handle,
            llm_scores,
            llm_answers,
            probe,
            store_deltas,
            stats: (index == 0).then_some(state),
            sink_errors,
            changes,
        }
    })
}
