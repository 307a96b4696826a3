//! The incremental-vs-batch harness every step's property test uses.
//!
//! A script is a list of epochs, each a list of `(input, diff)` updates (insertions,
//! retractions, re-insertions). [`run_script`] replays it through a dataflow on `workers` timely
//! workers (updates spread round-robin over the workers, as sources are) and returns the
//! accumulated output after every epoch. [`accumulate_script`] gives the accumulated input after
//! every epoch, from which a test computes the reference from scratch and compares.

use crate::record::Epoch;
use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::capture::{Capture, Extract};

/// A dataflow under test: builds its output collection from the input collection.
pub trait Build<I, O>: Send + Sync + 'static {
    fn build<'s>(&self, input: VecCollection<'s, Epoch, I>) -> VecCollection<'s, Epoch, O>;
}

/// Accumulated multiset.
pub type Bag<D> = BTreeMap<D, isize>;

/// Runs `script` through `dataflow` on `workers` workers; returns the accumulated output after
/// each epoch (epoch `i` of the script is timestamp `i`).
pub fn run_script<I, O, B>(workers: usize, script: &[Vec<(I, isize)>], dataflow: B) -> Vec<Bag<O>>
where
    I: timely::ExchangeData + Ord + Clone + std::fmt::Debug + Sync,
    O: timely::ExchangeData + Ord + Clone + std::fmt::Debug,
    B: Build<I, O>,
{
    let script = Arc::new(script.to_vec());
    let epochs = script.len();
    let dataflow = Arc::new(dataflow);
    let (send, recv) = std::sync::mpsc::channel();
    let send = Arc::new(Mutex::new(send));
    timely::execute(timely::Config::process(workers), move |worker| {
        let send = send.lock().expect("capture channel").clone();
        let index = worker.index();
        let peers = worker.peers();
        let dataflow = Arc::clone(&dataflow);
        let mut input = worker.dataflow::<Epoch, _, _>(move |scope| {
            let (input, collection) = scope.new_collection::<I, isize>();
            dataflow.build(collection).inner.capture_into(send);
            input
        });
        for (epoch, updates) in script.iter().enumerate() {
            input.advance_to(epoch as Epoch);
            for (n, (datum, diff)) in updates.iter().enumerate() {
                if n % peers == index {
                    input.update(datum.clone(), *diff);
                }
            }
        }
        input.advance_to(epochs as Epoch);
        input.close();
    })
    .expect("timely execution");

    let updates: Vec<(O, Epoch, isize)> = recv
        .extract()
        .into_iter()
        .flat_map(|(_, batch)| batch)
        .collect();
    (0..epochs)
        .map(|e| {
            let mut bag = Bag::new();
            for (d, t, r) in &updates {
                if *t <= e as Epoch {
                    *bag.entry(d.clone()).or_insert(0) += r;
                }
            }
            bag.retain(|_, r| *r != 0);
            bag
        })
        .collect()
}

/// The accumulated input after each epoch of `script`.
pub fn accumulate_script<I: Ord + Clone>(script: &[Vec<(I, isize)>]) -> Vec<Bag<I>> {
    let mut bag = Bag::new();
    script
        .iter()
        .map(|updates| {
            for (d, r) in updates {
                *bag.entry(d.clone()).or_insert(0) += r;
            }
            bag.retain(|_, r| *r != 0);
            bag.clone()
        })
        .collect()
}

/// Turns a list of items into a bag with multiplicity one each.
pub fn bag<D: Ord>(items: impl IntoIterator<Item = D>) -> Bag<D> {
    let mut bag = Bag::new();
    for d in items {
        *bag.entry(d).or_insert(0) += 1;
    }
    bag
}

/// An upsert script generator: turns a sequence of `(key, Option<value>)` upserts per epoch into
/// the `(record, diff)` updates a collection sees (the old value retracted, the new inserted),
/// exactly as the runtime's upsert ingest produces them.
pub fn upserts_to_updates<K: Ord + Clone, V: Ord + Clone, R: Ord + Clone>(
    epochs: &[Vec<(K, Option<V>)>],
    record: impl Fn(&K, &V) -> R,
) -> Vec<Vec<(R, isize)>> {
    let mut state: BTreeMap<K, V> = BTreeMap::new();
    epochs
        .iter()
        .map(|ups| {
            // Within an epoch the last upsert of a key wins.
            let mut last: BTreeMap<K, Option<V>> = BTreeMap::new();
            for (k, v) in ups {
                last.insert(k.clone(), v.clone());
            }
            let mut out = Vec::new();
            for (k, v) in last {
                let old = state.get(&k).cloned();
                if old == v {
                    continue;
                }
                if let Some(o) = &old {
                    out.push((record(&k, o), -1));
                }
                match v {
                    Some(n) => {
                        out.push((record(&k, &n), 1));
                        state.insert(k, n);
                    }
                    None => {
                        state.remove(&k);
                    }
                }
            }
            out
        })
        .collect()
}

/// A word-level tokenizer (split on whitespace and punctuation; `words` get ids 1.., anything
/// else is `[UNK]` = 0), for tests of the token n-gram mode.
pub fn word_level_tokenizer(words: &[&str]) -> crate::tokenize::TokenizerRef {
    let vocab: Vec<String> = std::iter::once("[UNK]")
        .chain(words.iter().copied())
        .enumerate()
        .map(|(i, w)| format!("{w:?}: {i}"))
        .collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
"normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null,
"decoder": null, "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        vocab.join(", ")
    );
    crate::tokenize::TokenizerRef::from_bytes("word-level-test.json", json.as_bytes())
        .expect("a valid word-level tokenizer")
}
