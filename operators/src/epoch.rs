//! An operator shape for steps that keep their own state: one call per completed epoch.
//!
//! Epochs are totally ordered, so a step whose state is cheaper to keep outside an arrangement
//! (decontamination keeps a benchmark index and re-reads question texts from the store, instead
//! of arranging hundreds of millions of question n-grams) can be written as: stash the updates
//! of each epoch, and when both inputs' frontiers have passed it, hand them to the step in epoch
//! order, and emit the step's output updates at that epoch. The output is then a function of the
//! accumulated inputs, epoch by epoch, exactly as a differential operator's would be.

use crate::record::Epoch;
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

/// Updates of one epoch, as `(data, diff)`.
pub type Updates<D> = Vec<(D, isize)>;

/// One epoch's updates while the epoch is open: the batches as they arrived, kept whole (a
/// batch whose updates are all of one epoch is taken, not copied), flattened once into an
/// exactly sized vector when the epoch is handed over, or handed over as they are (see
/// [`first_epoch_sink_offloaded`]). Pushing update by update into one growing vector would
/// copy it at every doubling and leave up to half of it unused: at the paper's scale, a sink's
/// epoch of 1.2M rows.
pub struct Stash<D> {
    batches: Vec<Vec<(D, Epoch, isize)>>,
    len: usize,
}

/// An iterator with a known number of items left (see [`Stash::drain`]).
struct SizedDrain<I> {
    updates: I,
    left: usize,
}

impl<I: Iterator> Iterator for SizedDrain<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let next = self.updates.next();
        self.left = self.left.saturating_sub(next.is_some() as usize);
        next
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<D> Stash<D> {
    fn new() -> Self {
        Stash {
            batches: Vec::new(),
            len: 0,
        }
    }

    fn add(&mut self, batch: Vec<(D, Epoch, isize)>) {
        self.len += batch.len();
        self.batches.push(batch);
    }

    /// The batches as they arrived, each `(data, epoch, diff)`.
    pub fn into_batches(self) -> Vec<Vec<(D, Epoch, isize)>> {
        self.batches
    }

    /// The updates, moved out batch by batch (each batch freed once read). The iterator knows
    /// its length, so that a consumer that collects it sizes its vector exactly.
    pub fn drain(self) -> impl Iterator<Item = (D, isize)> {
        let len = self.len;
        let updates = self
            .batches
            .into_iter()
            .flat_map(|batch| batch.into_iter().map(|(d, _, r)| (d, r)));
        SizedDrain { updates, left: len }
    }

    fn into_updates(self) -> Updates<D> {
        let mut out = Vec::with_capacity(self.len);
        for batch in self.batches {
            out.extend(batch.into_iter().map(|(d, _, r)| (d, r)));
        }
        out
    }
}

/// Files a batch of updates into the stashes of its epochs (whole, when it is of one epoch).
fn stash_batch<D, X>(
    pending: &mut BTreeMap<Epoch, X>,
    data: &mut Vec<(D, Epoch, isize)>,
    open: impl Fn(Epoch) -> X,
    stash: impl Fn(&mut X) -> &mut Stash<D>,
) {
    let Some(t0) = data.first().map(|u| u.1) else {
        return;
    };
    if data.iter().all(|u| u.1 == t0) {
        stash(pending.entry(t0).or_insert_with(|| open(t0))).add(std::mem::take(data));
        return;
    }
    let mut by_time: BTreeMap<Epoch, Vec<(D, Epoch, isize)>> = BTreeMap::new();
    for u in data.drain(..) {
        by_time.entry(u.1).or_default().push(u);
    }
    for (t, batch) in by_time {
        stash(pending.entry(t).or_insert_with(|| open(t))).add(batch);
    }
}

/// Calls `logic(epoch, left_updates, right_updates, output)` once per epoch that has updates on
/// either input, in epoch order, after both input frontiers have passed the epoch.
///
/// `left_pact` and `right_pact` decide where updates go (exchange by key, or `Pipeline` for a
/// stream that was broadcast beforehand). `logic` owns the step's state.
///
/// `at_end` is called once, after the last epoch, when both inputs have ended (their
/// frontiers are empty: the run stops cleanly). A step saves what it wants to keep for the
/// next run there.
pub fn epoch_binary_then<'s, D1, D2, O, P1, P2, L, E>(
    left: VecCollection<'s, Epoch, D1>,
    right: VecCollection<'s, Epoch, D2>,
    left_pact: P1,
    right_pact: P2,
    name: &str,
    mut logic: L,
    at_end: E,
) -> VecCollection<'s, Epoch, O>
where
    D1: Clone + 'static,
    D2: Clone + 'static,
    O: Clone + 'static,
    P1: ParallelizationContract<Epoch, Vec<(D1, Epoch, isize)>>,
    P2: ParallelizationContract<Epoch, Vec<(D2, Epoch, isize)>>,
    L: FnMut(Epoch, Updates<D1>, Updates<D2>, &mut Vec<(O, isize)>) + 'static,
    E: FnOnce() + 'static,
{
    let mut at_end = Some(at_end);
    type Pending<A, B> = BTreeMap<Epoch, (Capability<Epoch>, Stash<A>, Stash<B>)>;
    left.inner
        .binary_frontier(
            right.inner,
            left_pact,
            right_pact,
            name,
            move |_cap, _info| {
                let mut pending: Pending<D1, D2> = BTreeMap::new();
                let mut produced = Vec::new();
                move |(in1, f1), (in2, f2), output| {
                    in1.for_each(|cap, data| {
                        stash_batch(
                            &mut pending,
                            data,
                            |t| (cap.delayed(&t, 0), Stash::new(), Stash::new()),
                            |slot| &mut slot.1,
                        );
                    });
                    in2.for_each(|cap, data| {
                        stash_batch(
                            &mut pending,
                            data,
                            |t| (cap.delayed(&t, 0), Stash::new(), Stash::new()),
                            |slot| &mut slot.2,
                        );
                    });
                    while let Some((&t, _)) = pending.first_key_value() {
                        if f1.less_equal(&t) || f2.less_equal(&t) {
                            break;
                        }
                        let (_, (cap, l, r)) = pending.pop_first().expect("just peeked");
                        produced.clear();
                        logic(t, l.into_updates(), r.into_updates(), &mut produced);
                        if !produced.is_empty() {
                            let mut session = output.session(&cap);
                            for (o, d) in produced.drain(..) {
                                session.give((o, t, d));
                            }
                        }
                    }
                    if pending.is_empty() && f1.is_empty() && f2.is_empty() {
                        if let Some(end) = at_end.take() {
                            end();
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Accumulates `(data, diff)` updates into a multiset, removing zero counts. Returns the net
/// change per distinct datum (deduplicated), in the order first seen.
pub fn accumulate<D: Ord + Clone>(
    state: &mut BTreeMap<D, isize>,
    updates: Updates<D>,
) -> Vec<(D, isize, isize)> {
    // (datum, count before, count after)
    let mut touched: BTreeMap<D, isize> = BTreeMap::new();
    for (d, r) in updates {
        let before = state.get(&d).copied().unwrap_or(0);
        touched.entry(d.clone()).or_insert(before);
        let after = before + r;
        if after == 0 {
            state.remove(&d);
        } else {
            state.insert(d, after);
        }
    }
    touched
        .into_iter()
        .map(|(d, before)| {
            let after = state.get(&d).copied().unwrap_or(0);
            (d, before, after)
        })
        .filter(|(_, b, a)| b != a)
        .collect()
}

/// Calls `logic(epoch, updates, output)` once per epoch that has updates, in epoch order, after
/// the input frontier has passed the epoch. With no output, it is a sink whose (empty) output
/// stream tells a probe when every worker has handled an epoch.
pub fn epoch_unary<'s, D, O, P, L>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    logic: L,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    L: FnMut(Epoch, Updates<D>, &mut Vec<(O, isize)>) + 'static,
{
    epoch_unary_from(input, pact, name, false, logic)
}

/// Like [`epoch_unary`], but also calls `logic` (with no updates) for the first epoch when it
/// has none, so that a sink can reconcile its files with a run's first epoch even when no
/// record reaches it.
pub fn first_epoch_unary<'s, D, O, P, L>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    logic: L,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    L: FnMut(Epoch, Updates<D>, &mut Vec<(O, isize)>) + 'static,
{
    epoch_unary_from(input, pact, name, true, logic)
}

/// Like [`first_epoch_unary`], for a sink whose work need not hold up its worker: the
/// work runs on a thread of the operator's own. Once the frontier has passed an epoch, its
/// updates go to that thread, which calls `logic` with them (epoch after epoch, in order; the
/// batches as they arrived, see [`Stash`]) while the worker goes on with its other operators. The operator holds the epoch's
/// capability until `logic` has returned, so that downstream (a probe) sees the epoch complete
/// only when the sink has finished it, as with the inline operator. `done` then runs on the
/// worker with what `logic` returned, and what it emits goes out at the epoch.
///
/// On a worker that runs several sinks (the dataset's shards and the audit files), their
/// writes overlap instead of following one another.
///
/// Once no epoch has come for [`SINK_QUIET`], the thread calls `idle` (work that makes later
/// epochs cheaper, such as indexing files a restart left unindexed) step by step while it
/// returns `true` and no epoch is waiting; an epoch that arrives meanwhile waits for the step
/// under way only.
pub fn first_epoch_sink_offloaded<'s, D, O, P, L, R, F, I>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    logic: L,
    mut done: F,
    idle: I,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + Send + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    L: FnMut(Epoch, Stash<D>) -> R + Send + 'static,
    R: Send + 'static,
    F: FnMut(Epoch, R, &mut dyn FnMut(O, isize)) + 'static,
    I: FnMut() -> bool + Send + 'static,
{
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender, TryRecvError};
    /// Closes the job channel and waits for the thread when the operator is dropped.
    struct Offload<D> {
        jobs: Option<Sender<(Epoch, Stash<D>)>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }
    impl<D> Drop for Offload<D> {
        fn drop(&mut self) {
            self.jobs.take();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
    let scope = input.inner.scope();
    let thread_name = name.to_string();
    let op_name = name.to_string();
    type Out<O> = timely::container::CapacityContainerBuilder<Vec<(O, Epoch, isize)>>;
    input
        .inner
        .unary_frontier::<Out<O>, _, _, _>(pact, name, move |cap, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let (jobs, jobs_rx) = channel::<(Epoch, Stash<D>)>();
            let (done_tx, results) = channel::<(Epoch, R)>();
            let (mut logic, mut idle) = (logic, idle);
            let thread = std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || {
                    let mut idle_left = true;
                    let mut quiet_since = std::time::Instant::now();
                    loop {
                        let job = match jobs_rx.try_recv() {
                            Ok(job) => Some(job),
                            Err(TryRecvError::Disconnected) => break,
                            Err(TryRecvError::Empty) if !idle_left => match jobs_rx.recv() {
                                Ok(job) => Some(job),
                                Err(_) => break,
                            },
                            Err(TryRecvError::Empty) => {
                                let waited = quiet_since.elapsed();
                                if waited >= SINK_QUIET {
                                    idle_left = idle();
                                    None
                                } else {
                                    match jobs_rx.recv_timeout(SINK_QUIET - waited) {
                                        Ok(job) => Some(job),
                                        Err(RecvTimeoutError::Timeout) => None,
                                        Err(RecvTimeoutError::Disconnected) => break,
                                    }
                                }
                            }
                        };
                        if let Some((t, stash)) = job {
                            let r = logic(t, stash);
                            if done_tx.send((t, r)).is_err() {
                                break;
                            }
                            let _ = activator.activate();
                            idle_left = true;
                            quiet_since = std::time::Instant::now();
                        }
                    }
                })
                .expect("spawning a sink thread");
            let offload = Offload {
                jobs: Some(jobs),
                thread: Some(thread),
            };
            let mut open = OpenEpochs::new(Some(cap));
            // Epochs handed to the thread, oldest first, with their capabilities.
            let mut running: std::collections::VecDeque<Capability<Epoch>> =
                std::collections::VecDeque::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| open.stash(data, |t| cap.delayed(&t, 0)));
                open.complete(frontier, |t, cap, stash| {
                    let jobs = offload.jobs.as_ref().expect("open while the operator runs");
                    if jobs.send((t, stash)).is_err() {
                        panic!("the thread of sink {op_name} has stopped");
                    }
                    running.push_back(cap);
                });
                loop {
                    match results.try_recv() {
                        Ok((t, r)) => {
                            let cap = running.pop_front().expect("a result for an epoch sent");
                            debug_assert_eq!(*cap.time(), t);
                            let mut session = output.session(&cap);
                            done(t, r, &mut |o, d| session.give((o, t, d)));
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            if !running.is_empty() {
                                panic!("the thread of sink {op_name} failed");
                            }
                            break;
                        }
                    }
                }
            }
        })
        .as_collection()
}

/// Like [`epoch_unary`], for steps whose input and output are as large as the data: `logic`
/// gets the epoch's batches as they arrived (no flattened copy; it may read them more than
/// once, or take them) and emits each output update into the output at once (no buffer of the
/// epoch's output beside the channel's).
pub fn epoch_unary_batches<'s, D, O, P, L>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    mut logic: L,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    L: FnMut(Epoch, &mut Vec<Vec<(D, Epoch, isize)>>, &mut dyn FnMut(O, isize)) + 'static,
{
    epoch_core(input, pact, name, false, move |t, mut stash, emit| {
        logic(t, &mut stash.batches, emit)
    })
}

fn epoch_unary_from<'s, D, O, P, L>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    always_first: bool,
    mut logic: L,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    L: FnMut(Epoch, Updates<D>, &mut Vec<(O, isize)>) + 'static,
{
    epoch_buffered(input, pact, name, always_first, move |t, stash, out| {
        logic(t, stash.into_updates(), out)
    })
}

/// [`epoch_core`] for logic that writes its output into a vector (reused across epochs).
fn epoch_buffered<'s, D, O, P, L>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    always_first: bool,
    mut logic: L,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    L: FnMut(Epoch, Stash<D>, &mut Vec<(O, isize)>) + 'static,
{
    let mut produced = Vec::new();
    epoch_core(input, pact, name, always_first, move |t, stash, emit| {
        produced.clear();
        logic(t, stash, &mut produced);
        for (o, d) in produced.drain(..) {
            emit(o, d);
        }
    })
}

/// How long an offloaded sink's thread waits without an epoch before it does idle work (a
/// one-shot run has ended by then).
pub const SINK_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// The epochs a one-input epoch operator has not handled yet: each one's capability and
/// stashed batches, and (with `always_first`) the first epoch's capability until the frontier
/// passes it.
struct OpenEpochs<D> {
    first: Option<Capability<Epoch>>,
    pending: BTreeMap<Epoch, (Capability<Epoch>, Stash<D>)>,
}

impl<D> OpenEpochs<D> {
    fn new(first: Option<Capability<Epoch>>) -> Self {
        OpenEpochs {
            first,
            pending: BTreeMap::new(),
        }
    }

    /// Stashes a batch under its epochs (`delayed` gives an epoch's capability).
    fn stash(
        &mut self,
        data: &mut Vec<(D, Epoch, isize)>,
        delayed: impl Fn(Epoch) -> Capability<Epoch>,
    ) {
        stash_batch(
            &mut self.pending,
            data,
            |t| (delayed(t), Stash::new()),
            |slot| &mut slot.1,
        );
    }

    /// Hands each epoch the frontier has passed to `f`, in order.
    fn complete(
        &mut self,
        frontier: &timely::progress::frontier::MutableAntichain<Epoch>,
        mut f: impl FnMut(Epoch, Capability<Epoch>, Stash<D>),
    ) {
        if self
            .first
            .as_ref()
            .is_some_and(|c| !frontier.less_equal(c.time()))
        {
            let c = self.first.take().expect("checked");
            let t = *c.time();
            self.pending.entry(t).or_insert_with(|| (c, Stash::new()));
        }
        while let Some((&t, _)) = self.pending.first_key_value() {
            if frontier.less_equal(&t) {
                break;
            }
            let (_, (cap, stash)) = self.pending.pop_first().expect("just peeked");
            f(t, cap, stash);
        }
    }
}

/// The one-input epoch operator: stashes each epoch's batches and hands them to `handle`,
/// epoch by epoch, once the frontier has passed (with `always_first`, the first epoch too when
/// it has no updates); what `handle` emits goes out at that epoch.
fn epoch_core<'s, D, O, P, H>(
    input: VecCollection<'s, Epoch, D>,
    pact: P,
    name: &str,
    always_first: bool,
    mut handle: H,
) -> VecCollection<'s, Epoch, O>
where
    D: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<(D, Epoch, isize)>>,
    H: FnMut(Epoch, Stash<D>, &mut dyn FnMut(O, isize)) + 'static,
{
    input
        .inner
        .unary_frontier(pact, name, move |cap, _info| {
            let mut open = OpenEpochs::new(always_first.then_some(cap));
            move |(input, frontier), output| {
                input.for_each(|cap, data| open.stash(data, |t| cap.delayed(&t, 0)));
                open.complete(frontier, |t, cap, stash| {
                    let mut session = output.session(&cap);
                    handle(t, stash, &mut |o, r| session.give((o, t, r)));
                });
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::Probe;

    /// The offloaded sink runs its logic on another thread, epoch by epoch in order (the first
    /// epoch even without updates), and a probe after it sees an epoch complete only once the
    /// logic has returned for it; what `done` emits goes out at the epoch.
    #[test]
    fn an_offloaded_sink_completes_an_epoch_only_when_its_logic_has() {
        for workers in [1, 2] {
            // (worker, epoch, sum) as the logic saw it, and as `done` got it.
            type Log = Arc<Mutex<Vec<(usize, Epoch, isize)>>>;
            let seen: Log = Arc::new(Mutex::new(Vec::new()));
            let emitted: Log = Arc::new(Mutex::new(Vec::new()));
            let (s, e) = (Arc::clone(&seen), Arc::clone(&emitted));
            timely::execute(timely::Config::process(workers), move |worker| {
                let (seen, emitted) = (Arc::clone(&s), Arc::clone(&e));
                let index = worker.index();
                let worker_thread = std::thread::current().id();
                let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                    let (input, numbers) = scope.new_collection::<u64, isize>();
                    let seen = Arc::clone(&seen);
                    let out = first_epoch_sink_offloaded(
                        numbers,
                        timely::dataflow::channels::pact::Exchange::new(
                            |_: &(u64, Epoch, isize)| 0,
                        ),
                        "Offloaded",
                        move |t, updates| {
                            assert_ne!(std::thread::current().id(), worker_thread);
                            // Slow enough that an inline wait would be noticed.
                            std::thread::sleep(std::time::Duration::from_millis(30));
                            let sum: isize = updates.drain().map(|(n, d)| n as isize * d).sum();
                            seen.lock().unwrap().push((index, t, sum));
                            sum
                        },
                        move |t, sum, emit: &mut dyn FnMut(isize, isize)| {
                            emitted.lock().unwrap().push((index, t, sum));
                            emit(sum, 1);
                        },
                        || false,
                    );
                    (input, out.inner.probe().0)
                });
                for epoch in 0..4u64 {
                    input.advance_to(epoch);
                    if epoch > 0 && index == 0 {
                        input.update(epoch, 1);
                        input.update(10 * epoch, 1);
                    }
                    input.advance_to(epoch + 1);
                    input.flush();
                    worker.step_while(|| probe.less_than(&(epoch + 1)));
                    if index == 0 {
                        // The epoch is complete: the thread has finished it.
                        let seen = seen.lock().unwrap();
                        let last = seen.iter().rfind(|s| s.0 == 0).map(|s| s.1);
                        assert_eq!(last, Some(epoch), "{seen:?}");
                    }
                }
                input.close();
                while worker.step() {}
            })
            .unwrap();
            // Worker 0 gets every update; the others handle their first epoch only (empty).
            let mut expected: Vec<(usize, Epoch, isize)> =
                vec![(0, 0, 0), (0, 1, 11), (0, 2, 22), (0, 3, 33)];
            expected.extend((1..workers).map(|w| (w, 0, 0)));
            expected.sort();
            for log in [&seen, &emitted] {
                let mut log = log.lock().unwrap().clone();
                log.sort();
                assert_eq!(log, expected, "{workers} worker(s)");
            }
        }
    }

    /// Between epochs, after a quiet spell, the thread runs the idle work step by step until it
    /// says nothing is left; an epoch after that is handled as usual, and idle work resumes
    /// after it.
    #[test]
    fn an_offloaded_sink_does_its_idle_work_between_epochs() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let steps = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, se) = (Arc::clone(&steps), Arc::clone(&seen));
        timely::execute(timely::Config::process(1), move |worker| {
            let (steps, seen) = (Arc::clone(&st), Arc::clone(&se));
            let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, numbers) = scope.new_collection::<u64, isize>();
                let out = first_epoch_sink_offloaded(
                    numbers,
                    timely::dataflow::channels::pact::Pipeline,
                    "Idle",
                    move |t, updates| {
                        let n = updates.drain().count();
                        seen.lock().unwrap().push((t, n));
                    },
                    |_, (), _: &mut dyn FnMut((), isize)| {},
                    move || steps.fetch_add(1, Ordering::SeqCst) + 1 < 3,
                );
                (input, out.inner.probe().0)
            });
            input.advance_to(1);
            input.flush();
            worker.step_while(|| probe.less_than(&1));
            std::thread::sleep(SINK_QUIET * 3);
            assert_eq!(
                st.load(Ordering::SeqCst),
                3,
                "three steps, the last said done"
            );
            input.update(5, 1);
            input.advance_to(2);
            input.flush();
            worker.step_while(|| probe.less_than(&2));
            std::thread::sleep(SINK_QUIET * 3);
            assert_eq!(
                st.load(Ordering::SeqCst),
                4,
                "one more step after the epoch"
            );
            input.close();
            while worker.step() {}
        })
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(0, 0), (1, 1)]);
    }
}
