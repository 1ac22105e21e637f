"""Scale: a million examples through the pass and the callback; a 32k vocabulary at length 256.

Part 1 (examples): a small classifier (32 features -> 32 -> 10 classes) analyzed over
250k, 500k and 1M examples, by ``compute_losses`` and by the ``ErrorAnalysis`` callback
(pass + table + hardest views + the epoch written to disk). Reported: peak memory growth
(MB per million examples, the slope between 250k and 1M), seconds, and the CPU-time ratios
t(500k)/t(250k) and t(1M)/t(250k) (linear: 2 and 4). The pass is measured on a tf.data
pipeline (its own cost: the pipeline is iterated once before, because a pipeline built with
``from_tensor_slices`` copies its data on its first iteration, which is the pipeline's cost,
not the pass's) and on numpy arrays (which the pass slices into its own dataset, 8 MB at a
time, never copying them whole); the callback gets numpy arrays, as most users give them.

Part 2 (vocabulary): a token model (embedding 16 -> Dense 32,000) over sequences of length
256. A batch of 8 has 8 x 256 x 32,000 logits (262 MB in float32). The pass is run over 64
and 128 examples (its memory must not grow with examples) and with batch 4 and 8 (it grows
with the batch); the usual recipe, ``model.predict`` + a numpy cross-entropy, over the same
64 examples holds every logit on the host (2.1 GB) and is the baseline.

Every measurement runs in its own child process, one after the other, so its memory is its
own: peak = the highest resident memory sampled every 5 ms during the measured step, minus
the resident memory just before it (model built, data in memory, step compiled on a warm-up).

Run:  python benchmarks/bench_scale.py [--quick]
Writes benchmarks/results/scale.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from keras_erranalysis import PassOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FEATURES, HIDDEN, CLASSES = 32, 32, 10
ANALYSIS_BATCH = 1024
MODES = ("pass_dataset", "pass_arrays", "callback")
VOCAB, LENGTH = 32_000, 256
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


class PeakSampler:
    """Samples resident memory in a thread; ``peak`` is the highest value seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def measure(step, repeats: int = 1):
    """Runs ``step()`` ``repeats`` times; returns (result, timings, peak growth MB).

    Timings are the fastest run's wall seconds and process CPU seconds (all threads): on a
    shared machine the CPU time is the steadier measure of the work done.
    """
    import gc

    gc.collect()
    base = rss_mb()
    walls, cpus = [], []
    result = None
    with PeakSampler() as sampler:
        for _ in range(repeats):
            result = None  # the previous run's result is not part of the next run's memory
            gc.collect()
            start, cpu = time.perf_counter(), time.process_time()
            result = step()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
    return result, {"seconds": min(walls), "cpu_seconds": min(cpus)}, sampler.peak - base


# -- part 1: a million examples --------------------------------------------------------


def classifier():
    import keras

    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def child_examples(mode: str, n: int) -> dict:
    import numpy as np

    from keras_erranalysis import ErrorAnalysis, compute_losses

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    model = classifier()
    warm = (x[:3000], y[:3000])  # a full and a smaller last batch: every shape the pass sees
    if mode.startswith("pass"):
        if mode == "pass_dataset":  # the data already in a tf.data pipeline
            import tensorflow as tf

            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(ANALYSIS_BATCH)
            for _ in data:  # its first iterator copies the constant: the pipeline's cost
                pass
        else:  # numpy arrays: the pass slices them, 8 MB at a time, into its own dataset
            data = (x, y)
        compute_losses(model, warm, batch_size=ANALYSIS_BATCH, verbose=0)
        report, timing, peak = measure(
            lambda: compute_losses(model, data, batch_size=ANALYSIS_BATCH, verbose=0),
            repeats=3,
        )
        assert len(report) == n
        return {"mode": mode, "n": n, **timing, "peak_growth_mb": peak}

    train = (x[:4096], y[:4096])
    with tempfile.TemporaryDirectory() as folder:
        warm_cb = ErrorAnalysis(
            warm,
            log_dir=Path(folder) / "warm",
            verbose=0,
            pass_options=PassOptions(batch_size=ANALYSIS_BATCH),
        )
        model.fit(*train, epochs=1, batch_size=256, verbose=0, callbacks=[warm_cb])
        callback = ErrorAnalysis(
            (x, y),
            log_dir=Path(folder) / "run",
            top_k=20,
            verbose=0,
            pass_options=PassOptions(batch_size=ANALYSIS_BATCH),
        )
        timings = []
        analyze = callback.analyze_epoch

        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            result = analyze(*args, **kwargs)
            timings.append((time.perf_counter() - start, time.process_time() - cpu))
            return result

        callback.analyze_epoch = timed
        _, _, peak = measure(  # three fits of one epoch: three analyzed epochs
            lambda: model.fit(*train, epochs=1, batch_size=256, verbose=0, callbacks=[callback]),
            repeats=3,
        )
        files = [p for p in (Path(folder) / "run" / "epoch_0001").iterdir()]
        disk = sum(p.stat().st_size for p in files)
    return {
        "mode": mode,
        "n": n,
        "seconds": min(t[0] for t in timings),
        "cpu_seconds": min(t[1] for t in timings),
        "peak_growth_mb": peak,
        "disk_mb_per_epoch": disk / 2**20,
    }


# -- part 2: vocabulary 32,000 x length 256 -----------------------------------------------


def token_model():
    import keras

    inputs = keras.Input((LENGTH,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 16)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def child_vocab(mode: str, n: int, batch: int) -> dict:
    import numpy as np

    from keras_erranalysis import compute_losses

    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, (n, LENGTH)).astype("int32")
    y = rng.integers(0, VOCAB, (n, LENGTH)).astype("int32")
    model = token_model()
    if mode == "pass":
        compute_losses(model, (x[:batch], y[:batch]), batch_size=batch, verbose=0)
        report, timing, peak = measure(
            lambda: compute_losses(model, (x, y), batch_size=batch, verbose=0)
        )
        assert report.token_loss.shape == (n, LENGTH)
        check = float(report.loss[:4].sum())
    else:
        model.predict(x[:batch], batch_size=batch, verbose=0)

        def recipe():
            logits = model.predict(x, batch_size=batch, verbose=0)  # (n, 256, 32000) on host
            logits = logits - logits.max(-1, keepdims=True)
            log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            return -np.take_along_axis(log_probs, y[..., None], -1)[..., 0].mean(1)

        losses, timing, peak = measure(recipe)
        check = float(losses[:4].sum())
    return {"mode": mode, "n": n, "batch": batch, **timing, "peak_growth_mb": peak, "check": check}


# -- driver -----------------------------------------------------------------------------------


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer examples (a smoke run)")
    parser.add_argument("--child", nargs="+", default=None)
    args = parser.parse_args()
    if args.child:
        kind, mode, *numbers = args.child
        fn = child_examples if kind == "examples" else child_vocab
        print(json.dumps(fn(mode, *map(int, numbers))))
        return

    sizes = [25_000, 50_000, 100_000] if args.quick else [250_000, 500_000, 1_000_000]
    examples = {f"{mode}_{n}": run_child("examples", mode, str(n)) for mode in MODES for n in sizes}
    small, mid, big = sizes
    scaling = {}
    for mode in MODES:
        a, b, c = (examples[f"{mode}_{n}"] for n in sizes)
        scaling[mode] = {
            "mb_per_million": (c["peak_growth_mb"] - a["peak_growth_mb"]) / ((big - small) / 1e6),
            "cpu_time_ratio_2x": b["cpu_seconds"] / a["cpu_seconds"],
            "cpu_time_ratio_4x": c["cpu_seconds"] / a["cpu_seconds"],
            "wall_time_ratio_4x": c["seconds"] / a["seconds"],
            "cpu_seconds_per_million": c["cpu_seconds"] / (big / 1e6),
            "memory_ratio_4x": c["peak_growth_mb"] / max(a["peak_growth_mb"], 1e-9),
        }

    vocab = {
        "pass_n64_b8": run_child("vocab", "pass", "64", "8"),
        "pass_n128_b8": run_child("vocab", "pass", "128", "8"),
        "pass_n64_b4": run_child("vocab", "pass", "64", "4"),
        "predict_n64_b8": run_child("vocab", "predict", "64", "8"),
    }
    logits_mb = 8 * LENGTH * VOCAB * 4 / 2**20
    vocab_ratios = {
        "pass_memory_128_over_64_examples": vocab["pass_n128_b8"]["peak_growth_mb"]
        / vocab["pass_n64_b8"]["peak_growth_mb"],
        "pass_memory_batch8_over_batch4": vocab["pass_n64_b8"]["peak_growth_mb"]
        / vocab["pass_n64_b4"]["peak_growth_mb"],
        "pass_memory_fraction_of_predict": vocab["pass_n64_b8"]["peak_growth_mb"]
        / vocab["predict_n64_b8"]["peak_growth_mb"],
        "pass_memory_in_batch_logits": vocab["pass_n64_b8"]["peak_growth_mb"] / logits_mb,
        "cpu_speedup_vs_predict": vocab["predict_n64_b8"]["cpu_seconds"]
        / vocab["pass_n64_b8"]["cpu_seconds"],
        "same_losses": abs(vocab["pass_n64_b8"]["check"] - vocab["predict_n64_b8"]["check"]) < 1e-3,
    }
    payload = {
        "examples": examples,
        "scaling": scaling,
        "vocab": vocab,
        "vocab_ratios": vocab_ratios,
        "batch_logits_mb": logits_mb,
        "quick": args.quick,
    }
    out = Path(__file__).parent / "results" / ("scale_quick.json" if args.quick else "scale.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))

    print("| examples | way | wall s | CPU s | peak growth MB | epoch on disk MB |")
    print("|---|---|---|---|---|---|")
    for r in examples.values():
        print(
            f"| {r['n']:,} | {r['mode']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
            f"{r['peak_growth_mb']:.0f} | {r.get('disk_mb_per_epoch', float('nan')):.0f} |"
        )
    for mode, s in scaling.items():
        print(
            f"{mode}: {s['mb_per_million']:.0f} MB per million examples; CPU time "
            f"x{s['cpu_time_ratio_2x']:.2f} for 2x and x{s['cpu_time_ratio_4x']:.2f} for 4x "
            "the examples"
        )
    print()
    print(
        f"| vocab {VOCAB:,} x length {LENGTH} | examples | batch | wall s | CPU s | "
        "peak growth MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in vocab.values():
        print(
            f"| {r['mode']} | {r['n']} | {r['batch']} | {r['seconds']:.2f} | "
            f"{r['cpu_seconds']:.2f} | {r['peak_growth_mb']:.0f} |"
        )
    for name, value in vocab_ratios.items():
        print(f"{name}: {value:.3f}" if not isinstance(value, bool) else f"{name}: {value}")


if __name__ == "__main__":
    main()
