#!/usr/bin/env python3
"""thoughtflow vs the reference Python approach, on a `thoughtflow gen` workload.

The reference approach (what OpenThoughts-style pipelines do in Python):
  - exact dedup: pandas drop_duplicates on normalized text (NFKC, lowercase, collapsed
    whitespace);
  - 13-gram decontamination: a Python set of every benchmark item's word 13-grams, each
    question's 13-grams looked up;
  - fuzzy decontamination: rapidfuzz process.cdist(questions, items, scorer=fuzz.ratio,
    score_cutoff=75, workers=-1): every question against every benchmark item.
thoughtflow runs the same rules (a recipe with only `decontaminate` ngram 13 + fuzzy 75 and
`dedup` exact) with the release binary, end to end (parse, match, dedup, write outputs).

The all-pairs fuzzy pass is O(questions x items); above --fuzzy-cap questions it runs on every
planted contamination question plus a uniform sample of the others, and its time for all
questions is EXTRAPOLATED from the sample's rate (labelled as such).

Usage: scripts/peer_compare [--scale 0.01] [--seed 1] [--fuzzy-cap 20000] [--workers 2]
"""

import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata

import numpy as np
import pandas as pd
from rapidfuzz import fuzz, process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WS = re.compile(r"\s+")


def normalize(text):
    return WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def ngrams(words, n):
    return (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def tf_recipe(gen):
    """The generated recipe's sources and benchmarks, with only decontaminate + dedup."""
    text = open(os.path.join(gen, "ot3.toml")).read()
    head = text.split("[[teachers]]")[0]
    return (
        head
        + '[[steps]]\nid = "decontaminate"\ntype = "decontaminate"\nngram = 13\nfuzzy = 75\n\n'
        + '[[steps]]\nid = "dedup"\ntype = "dedup"\nmode = "exact"\n\n[sink]\nshards = 4\n'
    ).replace('name = "ot3-gen"', 'name = "ot3-gen-decontam-dedup"')


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fuzzy-cap", type=int, default=20000, help="questions the Python all-pairs fuzzy pass scores at most (the rest is extrapolated)")
    ap.add_argument("--workers", type=int, default=2, help="thoughtflow timely workers")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/thoughtflow"))
    ap.add_argument("--work", default=None, help="work folder (default target/peer_compare/scale-F)")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        print("building the release binary ...", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--bin", "thoughtflow"], cwd=ROOT, check=True)
    work = args.work or os.path.join(ROOT, "target/peer_compare", f"scale-{args.scale}")
    gen = os.path.join(work, "gen")
    os.makedirs(work, exist_ok=True)
    t = time.perf_counter()
    subprocess.run([args.bin, "gen", gen, "--scale", str(args.scale), "--seed", str(args.seed)], check=True, stdout=subprocess.DEVNULL)
    gen_s = time.perf_counter() - t
    truth = json.load(open(os.path.join(gen, "truth.json")))
    planted = {}
    for bench, items in truth["contamination"].items():
        for p in items:
            planted[(p["source"], p["id"])] = (bench, p["kind"])
    exact_copies = truth["counts"]["exact_duplicate_copies"]
    n_verbatim = sum(1 for b, k in planted.values() if k == "verbatim")
    n_edited = len(planted) - n_verbatim

    # ---------------------------------------------------------------- thoughtflow
    recipe = os.path.join(gen, "decontam_dedup.toml")
    open(recipe, "w").write(tf_recipe(gen))
    out = os.path.join(work, "thoughtflow-out")
    t = time.perf_counter()
    r = subprocess.run([args.bin, "run", recipe, "--out", out, "--workers", str(args.workers)], capture_output=True, text=True)
    tf_s = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"thoughtflow failed:\n{r.stdout}\n{r.stderr}")
    tf_contaminated = {(x["row"]["source"], x["row"]["id"]) for x in read_jsonl(os.path.join(out, "rejections/decontaminate.jsonl")) if x["reason"] == "contaminated"}
    tf_dups = sum(1 for x in read_jsonl(os.path.join(out, "rejections/dedup.jsonl")) if x["reason"] == "duplicate")

    # ---------------------------------------------------------------- Python reference
    t = time.perf_counter()
    frames = []
    for src in sorted(os.listdir(os.path.join(gen, "sources"))):
        for f in sorted(glob.glob(os.path.join(gen, "sources", src, "*.jsonl"))):
            df = pd.read_json(f, lines=True, dtype={"id": str, "question": str})
            df["source"] = src
            frames.append(df)
    qs = pd.concat(frames, ignore_index=True)
    bench = []
    for f in sorted(glob.glob(os.path.join(gen, "benchmarks", "*.jsonl"))):
        for v in read_jsonl(f):
            bench.append(v["problem"])
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    qs["norm"] = [normalize(x) for x in qs["question"]]
    bench_norm = [normalize(x) for x in bench]
    norm_s = time.perf_counter() - t

    t = time.perf_counter()
    deduped = qs.drop_duplicates(subset="norm", keep="first")
    dedup_s = time.perf_counter() - t
    py_dups = len(qs) - len(deduped)

    t = time.perf_counter()
    grams = set()
    for b in bench_norm:
        grams.update(ngrams(b.split(" "), 13))
    ngram_hit = np.fromiter((any(g in grams for g in ngrams(q.split(" "), 13)) for q in qs["norm"]), dtype=bool, count=len(qs))
    ngram_s = time.perf_counter() - t

    keys = list(zip(qs["source"], qs["id"]))
    planted_idx = [i for i, k in enumerate(keys) if k in planted]
    if len(qs) <= args.fuzzy_cap:
        sample = list(range(len(qs)))
        others = sample
        extrapolated = False
    else:
        rng = random.Random(args.seed)
        pset = set(planted_idx)
        others = rng.sample([i for i in range(len(qs)) if i not in pset], max(args.fuzzy_cap - len(planted_idx), 1000))
        sample = planted_idx + others
        extrapolated = True
    norm = qs["norm"].tolist()

    def fuzzy(idx):
        hits = np.zeros(len(idx), dtype=bool)
        for lo in range(0, len(idx), 2000):
            chunk = [norm[i] for i in idx[lo : lo + 2000]]
            m = process.cdist(chunk, bench_norm, scorer=fuzz.ratio, score_cutoff=75, dtype=np.uint8, workers=-1)
            hits[lo : lo + len(chunk)] = (m >= 75).any(axis=1)
        return hits

    fuzzy_hit = {}
    t = time.perf_counter()
    h = fuzzy(others)
    rate_s = (time.perf_counter() - t) / len(others)
    fuzzy_hit.update(zip(others, h))
    if extrapolated:
        fuzzy_hit.update(zip(planted_idx, fuzzy(planted_idx)))
    fuzzy_s = rate_s * len(qs)

    def recall(caught):
        v = sum(1 for k, (b, kind) in planted.items() if kind == "verbatim" and k in caught)
        e = sum(1 for k, (b, kind) in planted.items() if kind == "edited" and k in caught)
        return v, e

    py_caught = {keys[i] for i in planted_idx if ngram_hit[i] or fuzzy_hit.get(i, False)}
    py_ngram_only = {keys[i] for i in planted_idx if ngram_hit[i]}
    # False positives on the random sample (questions that are no planted copy).
    py_fp = sum(1 for i in others if keys[i] not in planted and (ngram_hit[i] or fuzzy_hit.get(i, False)))
    tf_fp = sum(1 for k in tf_contaminated if k not in planted)
    py_total = load_s + norm_s + dedup_s + ngram_s + fuzzy_s

    v, e = recall(tf_contaminated)
    pv, pe = recall(py_caught)
    nv, ne = recall(py_ngram_only)
    lab = " (EXTRAPOLATED from %d of %d questions)" % (len(others), len(qs)) if extrapolated else ""
    print(f"workload: scale {args.scale} seed {args.seed}: {len(qs)} questions, {len(bench)} benchmark items, "
          f"{len(planted)} planted copies ({n_verbatim} verbatim, {n_edited} edited), {exact_copies} exact duplicate copies; gen {gen_s:.2f}s")
    print(f"machine: {os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[:3]}")
    print()
    print(f"{'stage':<54} {'seconds':>10}")
    print(f"{'python: load JSONL (pandas.read_json)':<54} {load_s:>10.2f}")
    print(f"{'python: normalize (NFKC, lower, spaces)':<54} {norm_s:>10.2f}")
    print(f"{'python: exact dedup (drop_duplicates)':<54} {dedup_s:>10.2f}")
    print(f"{'python: 13-gram set decontamination':<54} {ngram_s:>10.2f}")
    print(f"{'python: rapidfuzz cdist fuzz.ratio >= 75':<54} {fuzzy_s:>10.2f}{lab}")
    print(f"{'python: total':<54} {py_total:>10.2f}")
    print(f"{'thoughtflow: run (decontaminate + dedup), end to end':<54} {tf_s:>10.2f}  ({args.workers} workers)")
    print(f"{'ratio python / thoughtflow':<54} {py_total / tf_s:>10.1f}x")
    print()
    print(f"recall on planted contamination     verbatim        edited")
    print(f"  thoughtflow                      {v:>4}/{n_verbatim:<6}    {e:>4}/{n_edited:<6}  other questions flagged: {tf_fp}")
    print(f"  python 13-gram + fuzzy           {pv:>4}/{n_verbatim:<6}    {pe:>4}/{n_edited:<6}  other questions flagged in the fuzzy sample: {py_fp}")
    print(f"  python 13-gram only              {nv:>4}/{n_verbatim:<6}    {ne:>4}/{n_edited:<6}")
    print(f"exact duplicates removed: thoughtflow {tf_dups}, pandas {py_dups} (planted copies {exact_copies})")
    result = {
        "scale": args.scale, "seed": args.seed, "questions": len(qs), "benchmark_items": len(bench),
        "python_s": {"load": load_s, "normalize": norm_s, "dedup": dedup_s, "ngram": ngram_s, "fuzzy": fuzzy_s,
                     "fuzzy_extrapolated": extrapolated, "fuzzy_sampled": len(others), "total": py_total},
        "thoughtflow_s": tf_s, "ratio": py_total / tf_s,
        "recall": {"thoughtflow": {"verbatim": v, "edited": e}, "python": {"verbatim": pv, "edited": pe},
                   "python_ngram_only": {"verbatim": nv, "edited": ne}, "planted": {"verbatim": n_verbatim, "edited": n_edited}},
        "duplicates_removed": {"thoughtflow": tf_dups, "pandas": py_dups, "planted": exact_copies},
    }
    with open(os.path.join(work, "peer_compare.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {os.path.join(work, 'peer_compare.json')}")


if __name__ == "__main__":
    main()
