"""Finding flipped labels in scikit-learn digits: keras_erranalysis vs cleanlab.

Settings: 10% and 20% symmetric random flips, and 20% flips between chosen class pairs
(0<->6, 1<->7, 2<->3, 4<->9, 5<->8). For each setting and seed:

- ours (callback): ONE training run of the model with the ErrorAnalysis callback, which makes
  an exact per-example pass over the training data after every epoch and writes the run
  folder; ``load_run(...).likely_mislabeled()`` gives the flagged set and the ranking;
- ours (in-flight): ONE training run with the InFlightRecorder (no extra pass at all);
- cleanlab: ``find_label_issues`` on out-of-sample probabilities from 5-fold cross-validation
  of the same Keras model (5 trainings on 80% of the data each), the way cleanlab is meant
  to be used.

Reported: precision, recall and F1 of the flagged set, precision at the true noise count
(top-n of each method's ranking), the compute (training epochs over the full data,
inference passes, seconds), and the in-flight recorder's epoch-time overhead against a plain
``fit`` of the same model, data order and seed, measured in the same process.

Run: ``python benchmarks/bench_mislabeled.py [--epochs 20] [--seeds 0 1 2]``. The flag
rule of the default method was chosen on other data and seeds
(``benchmarks/dev_mislabeled_rules.py``), never on these.
Writes ``benchmarks/results/mislabeled.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from keras_erranalysis import PassOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from timing import EpochTimer  # noqa: E402  (benchmarks/timing.py)

from keras_erranalysis import ErrorAnalysis, load_run  # noqa: E402
from keras_erranalysis.analysis._mislabeled import DEFAULT_METHOD, likely_mislabeled  # noqa: E402
from keras_erranalysis.compute._inflight import InFlightRecorder, with_example_ids  # noqa: E402

PAIRS = {0: 6, 6: 0, 1: 7, 7: 1, 2: 3, 3: 2, 4: 9, 9: 4, 5: 8, 8: 5}
SETTINGS = (("symmetric", 0.10), ("symmetric", 0.20), ("pairs", 0.20))
BATCH = 32
RESULTS = Path(__file__).parent / "results" / "mislabeled.json"


def load() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.data / 16.0).astype("float32"), digits.target.astype("int64")


def add_noise(y: np.ndarray, kind: str, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    noisy = y.copy()
    flip = rng.random(len(y)) < rate
    if kind == "symmetric":
        noisy[flip] = (y[flip] + rng.integers(1, 10, flip.sum())) % 10
    else:
        noisy[flip] = [PAIRS[int(v)] for v in y[flip]]
    return noisy, noisy != y


def make_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def scores(flagged: np.ndarray, ranked: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits = int((flagged & truth).sum())
    precision = hits / max(int(flagged.sum()), 1)
    recall = hits / int(truth.sum())
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    top = ranked[: int(truth.sum())]
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "precision_at_n": float(truth[top].mean()),
        "flagged": int(flagged.sum()),
    }


def from_table(table: pd.DataFrame, truth: np.ndarray) -> dict[str, float]:
    ranked = table.index.to_numpy()
    flagged = np.zeros(len(truth), bool)
    flagged[ranked[table["flagged"].to_numpy()]] = True
    return scores(flagged, ranked, truth)


def run_setting(x, y, kind, rate, seed, epochs) -> list[dict]:
    noisy, truth = add_noise(y, kind, rate, seed)
    n = len(y)
    rows = []
    base = {"setting": f"{kind} {int(rate * 100)}%", "seed": seed, "noise_count": int(truth.sum())}

    def dataset():
        return with_example_ids(x, noisy, batch_size=BATCH, seed=seed)

    # Plain fit and in-flight fit, twice each, alternating: the overhead measurement.
    plain_times, inflight_times = [], []
    for _repeat in range(3):
        timer = EpochTimer()
        start = time.perf_counter()
        make_model(seed).fit(
            dataset().map(lambda a, b, i: (a, b)), epochs=epochs, verbose=0, callbacks=[timer]
        )
        plain_seconds = time.perf_counter() - start
        plain_times += timer.times[1:]  # epoch 1 holds the tracing

        timer = EpochTimer()
        recorder = InFlightRecorder(n)
        model = make_model(seed)
        start = time.perf_counter()
        model.fit(dataset(), epochs=epochs, verbose=0, callbacks=[recorder, timer])
        inflight_seconds = time.perf_counter() - start
        inflight_times += timer.times[1:]
    t0 = time.perf_counter()
    # The recorder records the given labels in the training step (the default rule needs
    # them to estimate the number of label errors per class).
    dyn = recorder.dynamics()
    assert np.array_equal(dyn["label"].to_numpy(), noisy)
    table = likely_mislabeled(dyn)
    ranking = likely_mislabeled(dyn, k=n)
    analysis_seconds = time.perf_counter() - t0
    flagged = np.zeros(n, bool)
    flagged[table.index.to_numpy()] = True
    rows.append(
        {
            **base,
            "method": "ours, in-flight (1 run)",
            **scores(flagged, ranking.index.to_numpy(), truth),
            "train_epochs": epochs,
            "inference_passes": 0,
            "seconds": inflight_seconds + analysis_seconds,
            "plain_fit_seconds": plain_seconds,
            # The CPU is shared: the fastest epoch is the least disturbed estimate.
            "overhead_epoch_min": float(np.min(inflight_times) / np.min(plain_times) - 1.0),
            "overhead_epoch_median": float(
                np.median(inflight_times) / np.median(plain_times) - 1.0
            ),
        }
    )

    # The callback run: exact per-epoch passes written to a run folder.
    with tempfile.TemporaryDirectory() as log_dir:
        model = make_model(seed)
        callback = ErrorAnalysis(
            (x, noisy), log_dir=log_dir, verbose=0, pass_options=PassOptions(batch_size=256)
        )
        start = time.perf_counter()
        model.fit(
            dataset().map(lambda a, b, i: (a, b)), epochs=epochs, verbose=0, callbacks=[callback]
        )
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        run = load_run(log_dir)
        dyn = run.dynamics()
        table = likely_mislabeled(dyn)
        ranking = likely_mislabeled(dyn, k=n)
        analysis_seconds = time.perf_counter() - start
    flagged = np.zeros(n, bool)
    flagged[table.index.to_numpy()] = True
    rows.append(
        {
            **base,
            "method": "ours, callback (1 run)",
            **scores(flagged, ranking.index.to_numpy(), truth),
            "train_epochs": epochs,
            "inference_passes": epochs,
            "seconds": fit_seconds + analysis_seconds,
        }
    )
    # Every method the package offers, ranked on the callback run (for the record).
    for method in ("aum_cl", "aum", "correctness", "confidence", "hard_to_learn"):
        rows.append(
            {
                **base,
                "method": f"ours, callback, method={method}",
                **from_table(likely_mislabeled(dyn, k=n, method=method), truth),
                "train_epochs": epochs,
                "inference_passes": epochs,
                "seconds": float("nan"),
            }
        )

    # cleanlab: 5-fold cross-validated out-of-sample probabilities.
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    start = time.perf_counter()
    probs = np.zeros((n, 10))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed).split(x, noisy)
    for fold, (train, held_out) in enumerate(folds):
        model = make_model(seed * 10 + fold)
        model.fit(
            tf.data.Dataset.from_tensor_slices((x[train], noisy[train]))
            .shuffle(len(train), seed=seed)
            .batch(BATCH),
            epochs=epochs,
            verbose=0,
        )
        logits = model.predict(x[held_out], verbose=0, batch_size=256)
        probs[held_out] = tf.nn.softmax(logits).numpy()
    issues = find_label_issues(noisy, probs)
    quality = get_label_quality_scores(noisy, probs)
    cleanlab_seconds = time.perf_counter() - start
    flagged = np.zeros(n, bool)
    flagged[issues] = True
    rows.append(
        {
            **base,
            "method": "cleanlab, 5-fold CV (5 runs)",
            **scores(flagged, np.argsort(quality, kind="stable"), truth),
            "train_epochs": 5 * epochs * 0.8,
            "inference_passes": 1,
            "seconds": cleanlab_seconds,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    x, y = load()
    rows = []
    for seed in args.seeds:
        for kind, rate in SETTINGS:
            rows.extend(run_setting(x, y, kind, rate, seed, args.epochs))
            last = rows[-1]
            print(f"done: {last['setting']} seed {seed}", flush=True)
    frame = pd.DataFrame(rows)
    metrics = ["precision", "recall", "f1", "precision_at_n", "train_epochs", "seconds"]
    order = list(dict.fromkeys(frame["method"]))
    summary = (
        frame.groupby(["setting", "method"], sort=False)[metrics]
        .mean()
        .reset_index()
        .assign(method=lambda f: pd.Categorical(f["method"], order, ordered=True))
        .sort_values(["setting", "method"], kind="stable")
    )
    overhead = frame["overhead_epoch_min"].dropna()
    overhead_median = frame["overhead_epoch_median"].dropna()
    main_methods = [m for m in order if "method=" not in m]
    lines = [
        f"digits (N={len(y)}), MLP 64-64-10, Adam, batch {BATCH}, {args.epochs} epochs, "
        f"seeds {args.seeds}; means over seeds. Default score: {DEFAULT_METHOD}.",
        "",
        "| noise | method | precision | recall | F1 | precision@n | training epochs | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary[summary["method"].isin(main_methods)].itertuples():
        lines.append(
            f"| {row.setting} | {row.method} | {row.precision:.3f} | {row.recall:.3f} | "
            f"{row.f1:.3f} | {row.precision_at_n:.3f} | {row.train_epochs:g} | "
            f"{row.seconds:.1f} |"
        )
    lines += [
        "",
        "Other scores of the package on the same callback runs (top-n precision; F1 of each "
        "method's own flag rule):",
        "",
        "| noise | method | precision | recall | F1 | precision@n |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary[~summary["method"].isin(main_methods)].itertuples():
        lines.append(
            f"| {row.setting} | {row.method} | {row.precision:.3f} | {row.recall:.3f} | "
            f"{row.f1:.3f} | {row.precision_at_n:.3f} |"
        )
    lines += [
        "",
        "In-flight recorder epoch-time overhead vs plain fit (same model, data order and "
        f"seed, alternating, same process): fastest epoch {100 * overhead.mean():+.1f}% "
        "(per run: "
        + ", ".join(f"{100 * v:+.1f}%" for v in overhead)
        + f"); median epoch {100 * overhead_median.mean():+.1f}% (per run: "
        + ", ".join(f"{100 * v:+.1f}%" for v in overhead_median)
        + ").",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "bench_mislabeled",
                "epochs": args.epochs,
                "seeds": args.seeds,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
                "summary": json.loads(summary.astype({"method": str}).to_json(orient="records")),
                "inflight_overhead_fastest_epoch_mean": float(overhead.mean()),
                "inflight_overhead_median_epoch_mean": float(overhead_median.mean()),
                "rows": json.loads(frame.to_json(orient="records")),
                "markdown": table,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
