//! One pass over a stream where two consumers would otherwise read it.
//!
//! When a timely stream has two consumers, every batch is cloned for one of them. For the
//! question stream that is a full copy of every question update held in a channel queue: at
//! the paper's scale, several hundred megabytes per consumer pair during a build or a replay.
//! These operators read the stream once and hand each update to where it goes:
//!
//! - [`fork`]: the stream passes through (its batches moved, never copied), and a small
//!   projection of each update goes to a second output (a reduce's key and value, say);
//! - [`split`]: each update goes to exactly one of two outputs (passed or rejected).

use crate::record::Epoch;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;

type Out<'s, D> = VecCollection<'s, Epoch, D>;

/// Passes `input` through unchanged and emits `project(d)` (when `Some`) with the time and
/// diff of each update `d`. Equal to `(input.clone(), input.flat_map(project))` without the
/// copy of `input` that a second consumer costs.
pub fn fork<'s, D, P>(
    input: Out<'s, D>,
    name: &str,
    project: impl Fn(&D) -> Option<P> + 'static,
) -> (Out<'s, D>, Out<'s, P>)
where
    D: Clone + 'static,
    P: Clone + 'static,
{
    let mut builder = OperatorBuilder::new(format!("Fork({name})"), input.inner.scope());
    let mut data_in = builder.new_input(input.inner, Pipeline);
    let (data_out, data) = builder.new_output::<Vec<(D, Epoch, isize)>>();
    let (side_out, side) = builder.new_output::<Vec<(P, Epoch, isize)>>();
    let mut data_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(D, Epoch, isize)>>>::from(data_out);
    let mut side_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(P, Epoch, isize)>>>::from(side_out);
    builder.build(move |_initial| {
        move |_frontiers| {
            let mut data_handle = data_out.activate();
            let mut side_handle = side_out.activate();
            data_in.for_each(|cap, batch| {
                {
                    let mut side = side_handle.session(&cap);
                    for (d, t, r) in batch.iter() {
                        if let Some(p) = project(d) {
                            side.give((p, *t, *r));
                        }
                    }
                }
                data_handle.session(&cap).give_container(batch);
            });
        }
    });
    (data.as_collection(), side.as_collection())
}

/// Sends each update of `input` to one of two outputs: `route(d)` is `Ok(a)` for the first,
/// `Err(b)` for the second (with the update's time and diff). Equal to a `flat_map` of each
/// side over `input`, with one read of it instead of two.
pub fn split<'s, D, A, B>(
    input: Out<'s, D>,
    name: &str,
    route: impl Fn(D) -> Result<A, B> + 'static,
) -> (Out<'s, A>, Out<'s, B>)
where
    D: Clone + 'static,
    A: Clone + 'static,
    B: Clone + 'static,
{
    let mut builder = OperatorBuilder::new(format!("Split({name})"), input.inner.scope());
    let mut data_in = builder.new_input(input.inner, Pipeline);
    let (a_out, a) = builder.new_output::<Vec<(A, Epoch, isize)>>();
    let (b_out, b) = builder.new_output::<Vec<(B, Epoch, isize)>>();
    let mut a_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(A, Epoch, isize)>>>::from(a_out);
    let mut b_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(B, Epoch, isize)>>>::from(b_out);
    builder.build(move |_initial| {
        move |_frontiers| {
            let mut a_handle = a_out.activate();
            let mut b_handle = b_out.activate();
            data_in.for_each(|cap, batch| {
                let mut a = a_handle.session(&cap);
                let mut b = b_handle.session(&cap);
                for (d, t, r) in batch.drain(..) {
                    match route(d) {
                        Ok(x) => a.give((x, t, r)),
                        Err(y) => b.give((y, t, r)),
                    }
                }
            });
        }
    });
    (a.as_collection(), b.as_collection())
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};
    use timely::dataflow::ProbeHandle;

    type Seen = Arc<Mutex<Vec<(String, i64, Epoch, isize)>>>;

    fn record(seen: &Seen, side: &'static str, s: Out<'_, i64>, probe: &ProbeHandle<Epoch>) {
        let seen = Arc::clone(seen);
        s.inspect(move |(d, t, r)| seen.lock().unwrap().push((side.to_string(), *d, *t, *r)))
            .probe_with(probe);
    }

    /// Runs `script` (per epoch: (value, diff)) through fork and split on `workers` workers;
    /// returns what each output saw, sorted.
    fn run(script: Vec<Vec<(i64, isize)>>, workers: usize) -> Vec<(String, i64, Epoch, isize)> {
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        timely::execute(timely::Config::process(workers), move |worker| {
            let probe = ProbeHandle::new();
            let mut input = worker.dataflow::<Epoch, _, _>(|scope| {
                let (h, c) = scope.new_collection::<i64, isize>();
                let (through, halves) = fork(c, "test", |x: &i64| (x % 3 != 0).then_some(x / 2));
                let (even, odd) = split(
                    through,
                    "test",
                    |x: i64| if x % 2 == 0 { Ok(x) } else { Err(-x) },
                );
                record(&s2, "half", halves, &probe);
                record(&s2, "even", even, &probe);
                record(&s2, "odd", odd, &probe);
                h
            });
            if worker.index() == 0 {
                for (e, updates) in script.iter().enumerate() {
                    for (x, r) in updates {
                        input.update(*x, *r);
                    }
                    input.advance_to(e as Epoch + 1);
                    input.flush();
                    while probe.less_than(&(e as Epoch + 1)) {
                        worker.step();
                    }
                }
            }
        })
        .unwrap();
        let mut out = seen.lock().unwrap().clone();
        out.sort();
        out
    }

    fn reference(script: &[Vec<(i64, isize)>]) -> Vec<(String, i64, Epoch, isize)> {
        let mut out = Vec::new();
        for (e, updates) in script.iter().enumerate() {
            for (x, r) in updates {
                let t = e as Epoch;
                if x % 3 != 0 {
                    out.push(("half".to_string(), x / 2, t, *r));
                }
                if x % 2 == 0 {
                    out.push(("even".to_string(), *x, t, *r));
                } else {
                    out.push(("odd".to_string(), -x, t, *r));
                }
            }
        }
        out.sort();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Every update reaches exactly the outputs the reference sends it to, at its epoch,
        /// with its diff, on one and on two workers.
        #[test]
        fn fork_and_split_route_every_update(
            script in prop::collection::vec(
                prop::collection::vec((-50i64..50, prop_oneof![Just(1isize), Just(-1), Just(2)]), 0..20),
                1..5,
            )
        ) {
            let expected = reference(&script);
            prop_assert_eq!(run(script.clone(), 1), expected.clone());
            prop_assert_eq!(run(script, 2), expected);
        }
    }
}
