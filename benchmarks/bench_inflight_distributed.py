"""In-flight recording under MirroredStrategy: its epoch-time overhead against a plain fit.

One process with two logical CPU devices and ``MirroredStrategy`` over both. The same
model (64 features -> 128 -> 10 classes), data (50,000 examples, global batch 256) and
data order are fitted alternately without and with an ``InFlightRecorder``, five rounds of
four epochs each; the first epoch of each fit holds the tracing and is dropped. Reported:
the recorder's overhead as the ratio of epoch times (fastest and median), the same ratio on
one device in the same process for comparison, and a check that the recorded rows cover
every example once per epoch.

Run: ``python benchmarks/bench_inflight_distributed.py``.
Writes ``benchmarks/results/inflight_distributed.json`` and prints a markdown table.
"""

from __future__ import annotations

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
from timing import EpochTimer  # noqa: E402  (benchmarks/timing.py)

from keras_erranalysis.inflight import InFlightRecorder, with_example_ids  # noqa: E402

N, FEATURES, CLASSES, BATCH, EPOCHS, ROUNDS = 50_000, 64, 10, 256, 4, 5
RESULTS = Path(__file__).parent / "results" / "inflight_distributed.json"


def make_model(strategy: tf.distribute.Strategy) -> keras.Model:
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(CLASSES),
            ]
        )
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return model


def measure(strategy: tf.distribute.Strategy, x: np.ndarray, y: np.ndarray) -> dict:
    plain, recorded, seen = [], [], []
    for _ in range(ROUNDS):
        timer = EpochTimer()
        data = with_example_ids(x, y, batch_size=BATCH, seed=0).map(lambda a, b, i: (a, b))
        make_model(strategy).fit(data, epochs=EPOCHS, verbose=0, callbacks=[timer])
        plain += timer.times[1:]
        timer, recorder = EpochTimer(), InFlightRecorder(N)
        data = with_example_ids(x, y, batch_size=BATCH, seed=0)
        make_model(strategy).fit(data, epochs=EPOCHS, verbose=0, callbacks=[recorder, timer])
        recorded += timer.times[1:]
        seen.append(int(recorder.stack("seen").sum()))
    return {
        "replicas": int(strategy.num_replicas_in_sync),
        "plain_epoch_seconds": plain,
        "recorded_epoch_seconds": recorded,
        "overhead_fastest": float(min(recorded) / min(plain) - 1.0),
        "overhead_median": float(np.median(recorded) / np.median(plain) - 1.0),
        "every_example_once_per_epoch": all(s == N * EPOCHS for s in seen),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = (x[:, :CLASSES].argmax(1) + (rng.random(N) < 0.1)) % CLASSES
    results = {
        "mirrored": measure(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), x, y),
        "one_device": measure(tf.distribute.get_strategy(), x, y),
    }
    payload = {
        "benchmark": "bench_inflight_distributed",
        "examples": N,
        "global_batch": BATCH,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "results": results,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=1))
    print("| strategy | replicas | overhead, fastest epoch | overhead, median epoch | rows |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        rows = "every example once" if r["every_example_once_per_epoch"] else "MISSING ROWS"
        print(
            f"| {name} | {r['replicas']} | {100 * r['overhead_fastest']:+.1f}% | "
            f"{100 * r['overhead_median']:+.1f}% | {rows} |"
        )


if __name__ == "__main__":
    main()
