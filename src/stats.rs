//! Exact counts of what every step took in, let through and rejected, and the work it did.
//!
//! Counts are computed from the collections themselves (sums of diffs), so they stay exact
//! under retraction: a question that is retracted leaves every count it was in. Each worker
//! counts what passes through it per epoch ([`tally`]), and worker 0 accumulates ([`StatsState`]) and writes
//! `stats.json` after each epoch. "Work" counts the updates a step processed in an epoch,
//! which shows that a refresh processed only its delta.

use differential_dataflow::{AsCollection, VecCollection};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use thoughtflow_operators::record::{Domain, Epoch, Reason, SourceId};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;

/// What a count is of.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum StatKey {
    /// Live questions per source and domain (after ingest).
    Ingested(SourceId, Domain),
    /// Live ingest rejections per source and reason.
    IngestRejected(SourceId, Reason),
    StepIn(u16),
    StepOut(u16),
    Rejected(u16, Reason),
    /// Updates a step processed (each update counts one, insert or retract).
    Work(u16),
    /// Updates ingest produced.
    IngestWork,
    /// Live dataset rows per source and domain.
    Rows(SourceId, Domain),
    /// Live contamination matches per benchmark.
    Matches(String),
    /// Distinct questions with at least one dataset row.
    DatasetQuestions,
    /// Dataset changes published (counted per epoch).
    ChangeUpserts,
    ChangeDeletes,
    /// Dataset shards whose files were rewritten (counted per epoch).
    ShardsRewritten,
    /// Dataset shards re-rendered with the same bytes, left untouched (counted per epoch).
    ShardsUnchanged,
    /// Rows of rewritten shards whose lines were rendered, and copied from the file in place
    /// (counted per epoch).
    RowsRendered,
    RowsCopied,
}

impl StatKey {
    /// Work counters accumulate events; the others are sizes of live collections.
    pub fn is_work(&self) -> bool {
        matches!(
            self,
            StatKey::Work(_)
                | StatKey::IngestWork
                | StatKey::ChangeUpserts
                | StatKey::ChangeDeletes
                | StatKey::ShardsRewritten
                | StatKey::ShardsUnchanged
                | StatKey::RowsRendered
                | StatKey::RowsCopied
        )
    }
}

/// What a [`Count`] counts a record under, if anything.
type KeyOf<D> = Box<dyn Fn(&D) -> Option<StatKey>>;

/// One count that [`tally`] keeps of a collection.
pub struct Count<D> {
    /// Count 1 per update instead of the update's diff.
    work: bool,
    key: CountKey<D>,
}

enum CountKey<D> {
    /// Every record counts under this key: summed per run of equal times, not per record
    /// (most counts are of this kind, and a replay's first epoch passes millions of records
    /// through each).
    Each(StatKey),
    /// Each record counts under the key it maps to, if any.
    Of(KeyOf<D>),
}

/// Counts `key(d)` with `d`'s diff: the size of a live collection, exact under retraction.
pub fn live<D, F: Fn(&D) -> Option<StatKey> + 'static>(key: F) -> Count<D> {
    Count {
        work: false,
        key: CountKey::Of(Box::new(key)),
    }
}

/// Counts every record under `key` with its diff: the size of the collection.
pub fn live_all<D>(key: StatKey) -> Count<D> {
    Count {
        work: false,
        key: CountKey::Each(key),
    }
}

/// Counts every update under `key` once (insert or retract): the work a step did.
pub fn work_all<D>(key: StatKey) -> Count<D> {
    Count {
        work: true,
        key: CountKey::Each(key),
    }
}

/// Passes `input` through unchanged and counts it. The input's batches are moved to the
/// output, never copied, so counting costs no memory per record; the counts are kept per
/// epoch and sent once the input has passed that epoch, one update per key and epoch.
///
/// (Counting with a second consumer of the stream would make timely copy every batch for it,
/// and sending counts per batch would queue a buffer per batch at the stats worker: at the
/// paper's scale, both together were half of the peak memory.)
pub fn tally<'s, D>(
    input: VecCollection<'s, Epoch, D>,
    counts: Vec<Count<D>>,
) -> (
    VecCollection<'s, Epoch, D>,
    VecCollection<'s, Epoch, StatKey>,
)
where
    D: Clone + 'static,
{
    let mut builder = OperatorBuilder::new("Tally".to_owned(), input.inner.scope());
    let mut data_in = builder.new_input(input.inner, Pipeline);
    let (data_out, data) = builder.new_output::<Vec<(D, Epoch, isize)>>();
    let (counts_out, tallies) = builder.new_output::<Vec<(StatKey, Epoch, isize)>>();
    let mut data_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(D, Epoch, isize)>>>::from(data_out);
    let mut counts_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(StatKey, Epoch, isize)>>>::from(
            counts_out,
        );
    builder.build(move |_initial| {
        let mut pending: BTreeMap<Epoch, (Capability<Epoch>, HashMap<StatKey, isize>)> =
            BTreeMap::new();
        // A batch's counts, gathered before they go into `pending`: a batch holds a few
        // distinct keys, mostly in runs, so a short list searched from its end beats a map
        // lookup per record.
        let mut local: Vec<(Epoch, StatKey, isize)> = Vec::new();
        let has_each = counts.iter().any(|c| matches!(c.key, CountKey::Each(_)));
        move |frontiers| {
            let mut data_session = data_out.activate();
            data_in.for_each(|cap, batch| {
                let mut flush = |local: &mut Vec<(Epoch, StatKey, isize)>| {
                    for (t, k, n) in local.drain(..) {
                        let slot = pending
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 1), HashMap::new()));
                        *slot.1.entry(k).or_insert(0) += n;
                    }
                };
                // Counts under one key: the batch's diffs and updates, per run of equal times.
                let mut runs: Vec<(Epoch, isize, isize)> = Vec::new();
                for (d, t, r) in batch.iter() {
                    if has_each {
                        match runs.last_mut() {
                            Some((lt, sum, n)) if lt == t => {
                                *sum += *r;
                                *n += 1;
                            }
                            _ => runs.push((*t, *r, 1)),
                        }
                    }
                    for c in &counts {
                        let CountKey::Of(key) = &c.key else { continue };
                        if let Some(k) = key(d) {
                            let n = if c.work { 1 } else { *r };
                            match local
                                .iter_mut()
                                .rev()
                                .find(|(lt, lk, _)| lt == t && *lk == k)
                            {
                                Some(slot) => slot.2 += n,
                                None => {
                                    if local.len() == 32 {
                                        flush(&mut local);
                                    }
                                    local.push((*t, k, n));
                                }
                            }
                        }
                    }
                }
                for (t, sum, n) in runs {
                    for c in &counts {
                        if let CountKey::Each(k) = &c.key {
                            if local.len() == 32 {
                                flush(&mut local);
                            }
                            local.push((t, k.clone(), if c.work { n } else { sum }));
                        }
                    }
                }
                flush(&mut local);
                data_session.session(&cap).give_container(batch);
            });
            let mut counts_session = counts_out.activate();
            while let Some((&t, _)) = pending.first_key_value() {
                if frontiers[0].less_equal(&t) {
                    break;
                }
                let (_, (cap, counted)) = pending.pop_first().expect("just peeked");
                let mut session = counts_session.session(&cap);
                for (k, r) in counted {
                    if r != 0 {
                        session.give((k, t, r));
                    }
                }
            }
        }
    });
    (data.as_collection(), tallies.as_collection())
}

/// Accumulated counts (worker 0).
#[derive(Default, Debug)]
pub struct StatsState {
    pub totals: BTreeMap<StatKey, i64>,
    /// The counts' changes in the latest epoch that changed anything.
    pub last_epoch: BTreeMap<StatKey, i64>,
    pub last_changed_epoch: Option<Epoch>,
}

impl StatsState {
    pub fn apply(&mut self, epoch: Epoch, updates: Vec<(StatKey, isize)>) {
        if self.last_changed_epoch != Some(epoch) {
            self.last_epoch.clear();
            self.last_changed_epoch = Some(epoch);
        }
        for (k, r) in updates {
            *self.last_epoch.entry(k.clone()).or_insert(0) += r as i64;
            let t = self.totals.entry(k.clone()).or_insert(0);
            *t += r as i64;
            if *t == 0 && !k.is_work() {
                self.totals.remove(&k);
            }
        }
    }

    pub fn total(&self, k: &StatKey) -> i64 {
        self.totals.get(k).copied().unwrap_or(0)
    }

    pub fn last(&self, k: &StatKey) -> i64 {
        self.last_epoch.get(k).copied().unwrap_or(0)
    }
}

/// What `stats.json` needs besides the counts.
pub struct StatsContext<'a> {
    pub recipe: &'a str,
    pub steps: &'a [(String, String)],
    pub source_name: &'a dyn Fn(SourceId) -> String,
    pub epoch: Epoch,
    pub epochs_run: u64,
}

fn add(map: &mut Map<String, Value>, path: &[&str], value: i64) {
    let mut cur = map;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            let slot = cur.entry(key.to_string()).or_insert(json!(0));
            *slot = json!(slot.as_i64().unwrap_or(0) + value);
        } else {
            cur = cur
                .entry(key.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
        }
    }
}

/// Renders `stats.json`.
pub fn render(state: &StatsState, ctx: &StatsContext) -> Value {
    let mut sources = Map::new();
    let mut domains = Map::new();
    let mut dataset_by_source = Map::new();
    let mut dataset_by_domain = Map::new();
    let mut contamination = Map::new();
    let mut ingest_rejected = Map::new();
    let mut rows = 0i64;
    for (k, v) in &state.totals {
        match k {
            StatKey::Ingested(s, d) => {
                let name = (ctx.source_name)(*s);
                add(&mut sources, &[&name, "questions"], *v);
                add(&mut domains, &[d.as_str(), "questions"], *v);
            }
            StatKey::IngestRejected(s, r) => {
                let name = (ctx.source_name)(*s);
                add(&mut sources, &[&name, "rejected", r.as_str()], *v);
                add(&mut ingest_rejected, &[r.as_str()], *v);
            }
            StatKey::Rows(s, d) => {
                let name = (ctx.source_name)(*s);
                add(&mut dataset_by_source, &[&name], *v);
                add(&mut dataset_by_domain, &[d.as_str()], *v);
                add(&mut domains, &[d.as_str(), "rows"], *v);
                rows += v;
            }
            StatKey::Matches(b) => add(&mut contamination, &[b], *v),
            _ => {}
        }
    }
    let steps: Vec<Value> = ctx
        .steps
        .iter()
        .enumerate()
        .map(|(i, (id, kind))| {
            let i = i as u16;
            let mut rejected = Map::new();
            for (k, v) in &state.totals {
                if let StatKey::Rejected(s, r) = k {
                    if *s == i {
                        rejected.insert(r.as_str().into(), json!(v));
                    }
                }
            }
            json!({
                "id": id,
                "type": kind,
                "in": state.total(&StatKey::StepIn(i)),
                "out": state.total(&StatKey::StepOut(i)),
                "rejected": rejected,
                "work": {
                    "last_epoch": state.last(&StatKey::Work(i)),
                    "total": state.total(&StatKey::Work(i)),
                },
            })
        })
        .collect();
    json!({
        "recipe": ctx.recipe,
        "epoch": ctx.epoch,
        "epochs_run": ctx.epochs_run,
        "last_changed_epoch": state.last_changed_epoch,
        "sources": sources,
        "domains": domains,
        "ingest": {
            "rejected": ingest_rejected,
            "work": {
                "last_epoch": state.last(&StatKey::IngestWork),
                "total": state.total(&StatKey::IngestWork),
            },
        },
        "steps": steps,
        "dataset": {
            "rows": rows,
            "questions": state.total(&StatKey::DatasetQuestions),
            "by_source": dataset_by_source,
            "by_domain": dataset_by_domain,
            "last_epoch": {
                "upserts": state.last(&StatKey::ChangeUpserts),
                "deletes": state.last(&StatKey::ChangeDeletes),
            },
            "changes_total": {
                "upserts": state.total(&StatKey::ChangeUpserts),
                "deletes": state.total(&StatKey::ChangeDeletes),
            },
            "shards": {
                "last_epoch": {
                    "rewritten": state.last(&StatKey::ShardsRewritten),
                    "unchanged": state.last(&StatKey::ShardsUnchanged),
                    "rows_rendered": state.last(&StatKey::RowsRendered),
                    "rows_copied": state.last(&StatKey::RowsCopied),
                },
                "total": {
                    "rewritten": state.total(&StatKey::ShardsRewritten),
                    "unchanged": state.total(&StatKey::ShardsUnchanged),
                    "rows_rendered": state.total(&StatKey::RowsRendered),
                    "rows_copied": state.total(&StatKey::RowsCopied),
                },
            },
        },
        "contamination": { "by_benchmark": contamination },
    })
}
