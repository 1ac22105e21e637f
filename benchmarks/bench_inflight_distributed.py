"""In-flight recording under MirroredStrategy: its epoch-time overhead against a plain fit.

One process with two logical CPU devices and ``MirroredStrategy`` over both. Two models:
an MLP (64 features -> 128 -> 10 classes, 50,000 examples, global batch 256: a 2 ms step,
where any fixed per-step cost shows) and the benchmarks' seq2seq Transformer (vocabulary
1,000, length 32, 8,000 pairs, global batch 64). The same model, data and data order are
fitted alternately without and with an ``InFlightRecorder``, five rounds of
four epochs each; the first epoch of each fit holds the tracing and is dropped. Reported:
the recorder's overhead as the ratio of epoch times (fastest and median) and as added
milliseconds per training step, the same on one device in the same process for comparison,
and a check that the recorded rows cover every example once per epoch.

Run: ``python benchmarks/bench_inflight_distributed.py``.
Writes ``benchmarks/results/inflight_distributed.json`` and prints a markdown table.

Options: ``--jit-compile`` compiles both fits with ``model.compile(..., jit_compile=True)``
(XLA; the rows are named "..., XLA" and go to ``inflight_distributed_xla.json``);
``--one-device`` skips the two-replica rows; ``--rounds N`` runs fewer (or more) rounds;
``--out PATH`` writes the JSON elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
from models import transformer_seq2seq  # noqa: E402  (benchmarks/models.py)
from timing import EpochTimer  # noqa: E402  (benchmarks/timing.py)

from keras_erranalysis.compute._inflight import InFlightRecorder, with_example_ids  # noqa: E402

N, FEATURES, CLASSES, BATCH, EPOCHS, ROUNDS = 50_000, 64, 10, 256, 4, 5
SEQ_N, SEQ_VOCAB, SEQ_LENGTH, SEQ_BATCH = 8_000, 1_000, 32, 64
RESULTS = Path(__file__).parent / "results" / "inflight_distributed.json"


def mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )


def transformer() -> keras.Model:
    return transformer_seq2seq(SEQ_VOCAB, SEQ_LENGTH)


def make_model(strategy: tf.distribute.Strategy, build, jit_compile: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build()
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
    return model


def measure(
    strategy: tf.distribute.Strategy,
    build,
    x,
    y,
    batch: int,
    *,
    rounds: int = ROUNDS,
    jit_compile: bool = False,
) -> dict:
    n = len(y)
    steps = -(-n // batch)
    plain, recorded, seen = [], [], []
    for _ in range(rounds):
        timer = EpochTimer()
        data = with_example_ids(x, y, batch_size=batch, seed=0).map(lambda a, b, i: (a, b))
        make_model(strategy, build, jit_compile).fit(
            data, epochs=EPOCHS, verbose=0, callbacks=[timer]
        )
        plain += timer.times[1:]
        timer, recorder = EpochTimer(), InFlightRecorder(n)
        data = with_example_ids(x, y, batch_size=batch, seed=0)
        model = make_model(strategy, build, jit_compile)
        model.fit(data, epochs=EPOCHS, verbose=0, callbacks=[recorder, timer])
        recorded += timer.times[1:]
        seen.append(int(recorder.stack("seen").sum()))
    return {
        "replicas": int(strategy.num_replicas_in_sync),
        "jit_compile": jit_compile,
        "rounds": rounds,
        "examples": n,
        "global_batch": batch,
        "plain_epoch_seconds": plain,
        "recorded_epoch_seconds": recorded,
        "overhead_fastest": float(min(recorded) / min(plain) - 1.0),
        "overhead_median": float(np.median(recorded) / np.median(plain) - 1.0),
        "every_example_once_per_epoch": all(s == n * EPOCHS for s in seen),
        "steps_per_epoch": steps,
        "added_ms_per_step_fastest": float((min(recorded) - min(plain)) / steps * 1e3),
        "added_ms_per_step_median": float((np.median(recorded) - np.median(plain)) / steps * 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jit-compile", action="store_true", help="compile with XLA")
    parser.add_argument("--one-device", action="store_true", help="skip the two replicas")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds")
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = parser.parse_args()
    out = args.out or (
        RESULTS.with_name("inflight_distributed_xla.json") if args.jit_compile else RESULTS
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = (x[:, :CLASSES].argmax(1) + (rng.random(N) < 0.1)) % CLASSES
    lengths = rng.integers(5, SEQ_LENGTH + 1, SEQ_N)
    keep = np.arange(SEQ_LENGTH)[None] < lengths[:, None]
    source = np.where(keep, rng.integers(1, SEQ_VOCAB, (SEQ_N, SEQ_LENGTH)), 0).astype("int32")
    target = np.where(keep, (source * 7 + 3) % (SEQ_VOCAB - 1) + 1, 0).astype("int32")
    target_in = np.concatenate([np.ones((SEQ_N, 1), "int32"), target[:, :-1]], axis=1)
    seq_x = {"source": source, "target_in": np.where(keep, target_in, 0)}
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.get_strategy()
    cases = [
        ("mlp, mirrored", mirrored, mlp, x, y, BATCH),
        ("mlp, one device", one, mlp, x, y, BATCH),
        ("transformer, mirrored", mirrored, transformer, seq_x, target, SEQ_BATCH),
        ("transformer, one device", one, transformer, seq_x, target, SEQ_BATCH),
    ]
    suffix = ", XLA" if args.jit_compile else ""
    results = {
        name + suffix: measure(
            strategy, build, xs, ys, batch, rounds=args.rounds, jit_compile=args.jit_compile
        )
        for name, strategy, build, xs, ys, batch in cases
        if not (args.one_device and strategy is mirrored)
    }
    payload = {
        "benchmark": "bench_inflight_distributed",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "results": results,
    }
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(
        "| strategy | replicas | plain step ms (median) | overhead, fastest / median epoch | "
        "added ms per step, fastest / median | rows |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        rows = "every example once" if r["every_example_once_per_epoch"] else "MISSING ROWS"
        step_ms = float(np.median(r["plain_epoch_seconds"])) / r["steps_per_epoch"] * 1e3
        print(
            f"| {name} | {r['replicas']} | {step_ms:.2f} | {100 * r['overhead_fastest']:+.1f}% / "
            f"{100 * r['overhead_median']:+.1f}% | {r['added_ms_per_step_fastest']:.2f} / "
            f"{r['added_ms_per_step_median']:.2f} | {rows} |"
        )


if __name__ == "__main__":
    main()
