//! Arranging a stream of keyed upserts: the ingest's questions, by id.
//!
//! Each update is `(key, Some(value), epoch)` (the key now holds `value`) or `(key, None,
//! epoch)` (the key is deleted). [`arrange_upserts`] keeps the current value of each key in an
//! arrangement and publishes, at each epoch, the changes that make the collection `{(key,
//! value)}` match the upserts: a retraction of the key's previous value and an insertion of the
//! new one. Among several upserts of one key at one epoch, the greatest value wins (the rule is
//! arbitrary, but deterministic and independent of arrival order).
//!
//! differential-dataflow ships `arrange_from_upsert` for this. At the paper's scale its first
//! epoch is millions of upserts, and it files each one in a binary heap and then a `BTreeMap`
//! with a vector per key: a log-time pop, a tree insert and an allocation per upsert, and a
//! heap of every pending update resident at once. Here an epoch's upserts are stashed as they
//! arrive (whole batches), sorted once by `(key, epoch)` when the frontier passes, and walked in
//! key order against a cursor of the trace, which a sorted walk seeks forward only.

use crate::record::Epoch;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::trace::{Builder, Description, Span, Trace, TraceReader};
use differential_dataflow::{ExchangeData, Hashable};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::progress::{Antichain, Timestamp};

/// The arrangement [`arrange_upserts`] builds: the current value of each key.
pub type UpsertTrace<K, V> = TraceAgent<ValSpine<K, V, Epoch, isize>>;

/// How many updates the builder is handed at a time.
const CHUNK: usize = 1024;

/// Arranges keyed upserts by key (see the module doc). Updates are exchanged by key.
pub fn arrange_upserts<'s, K, V>(
    stream: StreamVec<'s, Epoch, (K, Option<V>, Epoch)>,
    name: &str,
) -> Arranged<'s, UpsertTrace<K, V>>
where
    K: ExchangeData + Hashable + Ord,
    V: ExchangeData + Ord,
{
    let mut trace_out: Option<UpsertTrace<K, V>> = None;
    let scope = stream.scope();
    let exchange = Exchange::new(|u: &(K, Option<V>, Epoch)| u.0.hashed().into());
    let out = {
        let trace_out = &mut trace_out;
        stream.unary_frontier(exchange, name, move |_cap, info| {
            let activator = Some(scope.activator_for(std::rc::Rc::clone(&info.address)));
            let spine = ValSpine::<K, V, Epoch, isize>::new(info.clone(), None, activator);
            let (mut reader, mut writer) = TraceAgent::new(spine, info, None);
            *trace_out = Some(reader.clone());
            // Upserts not yet published, in the batches they arrived in, and the capability
            // of the least epoch among them.
            let mut stash: Vec<Vec<(K, Option<V>, Epoch)>> = Vec::new();
            let mut cap: Option<Capability<Epoch>> = None;
            let mut lower = Antichain::from_elem(Epoch::minimum());
            move |(input, frontier), output| {
                input.for_each(|c, data| {
                    let c = c.retain_least(0).expect("one output");
                    if cap.as_ref().is_none_or(|held| c.time() < held.time()) {
                        cap = Some(c);
                    }
                    stash.push(std::mem::take(data));
                });
                let upper = frontier.frontier().to_owned();
                if upper == lower {
                    writer.exert();
                    return;
                }
                let ready = cap.as_ref().is_some_and(|c| !upper.less_equal(c.time()));
                if !ready {
                    // Nothing to publish: the trace learns that its contents are final to here.
                    writer.seal(upper.clone());
                } else {
                    let (mut now, later) = take_ready(&mut stash, &upper);
                    stash = later;
                    now.sort_unstable_by(|a, b| {
                        (&a.0, a.2).cmp(&(&b.0, b.2)).then_with(|| b.1.cmp(&a.1))
                    });
                    now.dedup_by(|b, a| a.0 == b.0 && a.2 == b.2);
                    let batches = reader
                        .batches_through(Antichain::new().borrow())
                        .expect("the trace is readable at the empty frontier");
                    let (mut cursor, storage) = cursor_list(batches);
                    let mut builder = ValBuilder::<K, V, Epoch, isize>::default();
                    let mut chunk: Vec<((K, V), Epoch, isize)> = Vec::with_capacity(CHUNK);
                    let mut key_updates: Vec<((K, V), Epoch, isize)> = Vec::new();
                    let mut rest = now.into_iter().peekable();
                    while let Some((key, next, time)) = rest.next() {
                        // The key's value before this batch, from the trace.
                        let mut value: Option<V> = None;
                        cursor.seek_key(&storage, &key);
                        if cursor.get_key(&storage) == Some(&key) {
                            while let Some(v) = cursor.get_val(&storage) {
                                let mut count = 0isize;
                                cursor.map_times(&storage, |_, d| count += *d);
                                debug_assert!(count == 0 || count == 1, "one value per key");
                                if count == 1 {
                                    value = Some(v.clone());
                                }
                                cursor.step_val(&storage);
                            }
                        }
                        let mut change = |time: Epoch, next: Option<V>, value: &mut Option<V>| {
                            if *value != next {
                                if let Some(prev) = value.take() {
                                    key_updates.push(((key.clone(), prev), time, -1));
                                }
                                if let Some(v) = &next {
                                    key_updates.push(((key.clone(), v.clone()), time, 1));
                                }
                                *value = next;
                            }
                        };
                        change(time, next, &mut value);
                        while rest.peek().is_some_and(|u| u.0 == key) {
                            let (_, next, time) = rest.next().expect("peeked");
                            change(time, next, &mut value);
                        }
                        // The builder takes updates in (key, value, time) order.
                        key_updates.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                        chunk.append(&mut key_updates);
                        if chunk.len() >= CHUNK {
                            builder.push(&mut chunk);
                            chunk.clear();
                        }
                    }
                    if !chunk.is_empty() {
                        builder.push(&mut chunk);
                    }
                    let held = cap.take().expect("ready");
                    let desc = Description::new(
                        lower.clone(),
                        upper.clone(),
                        Antichain::from_elem(Epoch::minimum()),
                    );
                    let span = Span::new(desc, builder.done().map(Into::into));
                    writer.insert(
                        span.clone(),
                        timely::progress::Stamp::from_elem(*held.time()),
                    );
                    output.session(&held).give(span);
                    // Upserts of later epochs keep a capability for the least of them.
                    if let Some(least) = stash.iter().flatten().map(|u| u.2).min() {
                        cap = Some(held.delayed(&least));
                    }
                }
                lower = upper;
                reader.set_logical_compaction(lower.borrow());
                reader.set_physical_compaction(lower.borrow());
                writer.exert();
            }
        })
    };
    Arranged {
        stream: out,
        trace: trace_out.expect("set when the operator was built"),
    }
}

/// Splits the stash into the upserts `upper` has passed (flattened into one exactly sized
/// vector) and the later ones (in their batches).
#[allow(clippy::type_complexity)]
fn take_ready<K, V>(
    stash: &mut Vec<Vec<(K, Option<V>, Epoch)>>,
    upper: &Antichain<Epoch>,
) -> (Vec<(K, Option<V>, Epoch)>, Vec<Vec<(K, Option<V>, Epoch)>>) {
    let passed = |t: &Epoch| !upper.less_equal(t);
    let mut later = Vec::new();
    let len: usize = stash
        .iter()
        .map(|b| b.iter().filter(|u| passed(&u.2)).count())
        .sum();
    let mut now = Vec::with_capacity(len);
    for mut batch in stash.drain(..) {
        if batch.iter().all(|u| passed(&u.2)) {
            now.append(&mut batch);
        } else if batch.iter().any(|u| passed(&u.2)) {
            let (a, b): (Vec<_>, Vec<_>) = batch.into_iter().partition(|u| passed(&u.2));
            now.extend(a);
            later.push(b);
        } else {
            later.push(batch);
        }
    }
    (now, later)
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
    use std::collections::BTreeMap;
    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::Probe;
    use timely::dataflow::ProbeHandle;

    type Up = (u64, Option<u32>, Epoch);

    /// The collection after each epoch, as `arrange_upserts` and as DD's `arrange_from_upsert`
    /// publish it, for the same upserts.
    #[allow(clippy::type_complexity)]
    fn run(
        epochs: Vec<Vec<(u64, Option<u32>)>>,
        workers: usize,
    ) -> (Vec<Vec<(u64, u32)>>, Vec<Vec<(u64, u32)>>) {
        let mine = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let theirs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (m2, t2) = (mine.clone(), theirs.clone());
        timely::execute(timely::Config::process(workers), move |worker| {
            let peers = worker.peers();
            let index = worker.index();
            let probe = ProbeHandle::new();
            let (mut input, a, b) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Up>();
                let a = arrange_upserts(stream.clone(), "Mine");
                let b = arrange_from_upsert::<
                    ValBuilder<u64, u32, Epoch, isize>,
                    ValSpine<u64, u32, Epoch, isize>,
                    _,
                    _,
                >(stream, "Theirs");
                a.stream.probe_with(&probe);
                b.stream.probe_with(&probe);
                (input, a.trace, b.trace)
            });
            let (mut a, mut b) = (a, b);
            for (e, ups) in epochs.iter().enumerate() {
                let e = e as Epoch;
                for (i, (k, v)) in ups.iter().enumerate() {
                    if i % peers == index {
                        input.send((*k, *v, e));
                    }
                }
                input.advance_to(e + 1);
                while probe.less_than(&(e + 1)) {
                    worker.step();
                }
                let read = |t: &mut TraceAgent<ValSpine<u64, u32, Epoch, isize>>| {
                    let batches = t.batches_through(Antichain::new().borrow()).unwrap();
                    let (mut c, s) = cursor_list(batches);
                    let mut out = Vec::new();
                    while let Some(k) = c.get_key(&s) {
                        while let Some(v) = c.get_val(&s) {
                            let mut n = 0;
                            c.map_times(&s, |_, d| n += *d);
                            assert!(n == 0 || n == 1);
                            if n == 1 {
                                out.push((*k, *v));
                            }
                            c.step_val(&s);
                        }
                        c.step_key(&s);
                    }
                    out
                };
                m2.lock().unwrap().push((index, e, read(&mut a)));
                t2.lock().unwrap().push((index, e, read(&mut b)));
            }
        })
        .unwrap();
        let collect = |v: &std::sync::Mutex<Vec<(usize, Epoch, Vec<(u64, u32)>)>>| {
            let mut by: BTreeMap<Epoch, Vec<(u64, u32)>> = BTreeMap::new();
            for (_, e, kv) in v.lock().unwrap().iter() {
                by.entry(*e).or_default().extend(kv.iter().copied());
            }
            by.into_values()
                .map(|mut v| {
                    v.sort();
                    v
                })
                .collect()
        };
        (collect(&mine), collect(&theirs))
    }

    /// The reference: a map replayed epoch by epoch, the greatest value winning a tie.
    fn reference(epochs: &[Vec<(u64, Option<u32>)>]) -> Vec<Vec<(u64, u32)>> {
        let mut map: BTreeMap<u64, u32> = BTreeMap::new();
        epochs
            .iter()
            .map(|ups| {
                let mut last: BTreeMap<u64, Option<u32>> = BTreeMap::new();
                for (k, v) in ups {
                    let e = last.entry(*k).or_insert(*v);
                    if *v > *e {
                        *e = *v;
                    }
                }
                for (k, v) in last {
                    match v {
                        Some(v) => map.insert(k, v),
                        None => map.remove(&k),
                    };
                }
                map.iter().map(|(k, v)| (*k, *v)).collect()
            })
            .collect()
    }

    #[test]
    fn matches_reference_and_arrange_from_upsert() {
        let epochs = vec![
            vec![(1, Some(10)), (2, Some(20)), (3, Some(30)), (1, Some(11))],
            vec![(2, None), (3, Some(30)), (4, Some(40)), (5, None)],
            vec![(1, None), (1, Some(12)), (4, Some(41)), (4, Some(39))],
            vec![],
            vec![(2, Some(21)), (3, None)],
        ];
        for workers in [1, 2] {
            let (mine, theirs) = run(epochs.clone(), workers);
            assert_eq!(mine, reference(&epochs));
            assert_eq!(mine, theirs);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn random_upserts_match(
            epochs in proptest::collection::vec(
                proptest::collection::vec((0u64..40, proptest::option::of(0u32..5)), 0..60),
                1..6,
            )
        ) {
            for workers in [1, 2] {
                let (mine, theirs) = run(epochs.clone(), workers);
                proptest::prop_assert_eq!(&mine, &reference(&epochs));
                proptest::prop_assert_eq!(&mine, &theirs);
            }
        }
    }
}
