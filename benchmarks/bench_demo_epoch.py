"""The demo model's analyzed epoch against its training epoch, and the first against later ones.

The demo's attention seq2seq model (CMUdict spelling -> phonemes, 15,000 words, 15% held
out) is trained for ``--epochs`` epochs with ``ErrorAnalysis(analyses=["attention",
"embeddings"])`` on the validation words, XLA off as in the demo. Measured in the same
process, one after the other:

- each training epoch's wall time (``EpochTimer`` is listed before the callback, so its
  epoch ends before the analysis starts);
- each analyzed epoch's wall time: the whole of ``analyze_epoch`` (pass, tables, heatmaps,
  writing the run folder);
- how many times the validation data were traversed per analyzed epoch (the data are a
  ``tf.data`` dataset from a generator that counts the rows it yields).

Reported: analyzed epoch / training epoch (median over epochs 2..E, goal <= 0.5) and the
first analyzed epoch / the median later one (goal <= 2), and traversals per epoch (goal 1).

Run: ``python benchmarks/bench_demo_epoch.py [--epochs 4] [--examples 15000]``.
Writes ``benchmarks/results/demo_epoch.json`` and prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from models import demo_split  # noqa: E402  (benchmarks/models.py)
from timing import EpochTimer  # noqa: E402  (benchmarks/timing.py)

from keras_erranalysis import (  # noqa: E402
    AttentionAnalysis,
    Decoding,
    EmbeddingAnalysis,
    ErrorAnalysis,
    PassOptions,
    Vocabulary,
)
from keras_erranalysis.demo import build_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "demo_epoch.json"


class CountingData:
    """A tf.data dataset over arrays whose generator counts the rows it yields."""

    def __init__(self, inputs: dict, target: np.ndarray, batch_size: int) -> None:
        self.rows = 0
        self.inputs, self.target, self.batch_size = inputs, target, batch_size

    @property
    def traversals(self) -> float:
        """Rows yielded so far, in whole passes over the data."""
        return self.rows / len(self.target)

    def _rows(self):
        for start in range(0, len(self.target), self.batch_size):
            stop = start + self.batch_size
            self.rows += len(self.target[start:stop])
            yield {k: v[start:stop] for k, v in self.inputs.items()}, self.target[start:stop]

    def dataset(self) -> tf.data.Dataset:
        spec = (
            {
                k: tf.TensorSpec((None, *v.shape[1:]), tf.as_dtype(v.dtype))
                for k, v in self.inputs.items()
            },
            tf.TensorSpec((None, *self.target.shape[1:]), tf.as_dtype(self.target.dtype)),
        )
        return tf.data.Dataset.from_generator(self._rows, output_signature=spec)


class TimedErrorAnalysis(ErrorAnalysis):
    """ErrorAnalysis that records each analyzed epoch's wall seconds and data traversals."""

    def __init__(self, data, counter: CountingData, **kwargs):
        super().__init__(data, **kwargs)
        self.counter = counter
        self.seconds: list[float] = []
        self.traversals: list[int] = []

    def analyze_epoch(self, run_epoch, *, keras_epoch=None):
        before = self.counter.traversals
        start = time.perf_counter()
        report = super().analyze_epoch(run_epoch, keras_epoch=keras_epoch)
        self.seconds.append(time.perf_counter() - start)
        self.traversals.append(self.counter.traversals - before)
        return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--examples", type=int, default=15_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(0)
    data, (train_inputs, train_target), (val_inputs, val_target) = demo_split(args.examples)
    n_val = len(val_target)
    counter = CountingData(val_inputs, val_target, batch_size=256)
    model = build_model(len(data.chars), len(data.phones))
    with tempfile.TemporaryDirectory() as folder:
        analysis = TimedErrorAnalysis(
            counter.dataset(),
            counter,
            log_dir=Path(folder) / "run",
            vocab=Vocabulary(data.phones, sep=" "),
            decoding=Decoding(input_vocab=Vocabulary(data.chars, sep="")),
            analyses=[AttentionAnalysis(heatmaps=3), EmbeddingAnalysis()],
            pass_options=PassOptions(jit_compile=False),
            verbose=0,
        )
        timer = EpochTimer()
        model.fit(
            train_inputs,
            train_target,
            batch_size=64,
            epochs=args.epochs,
            callbacks=[timer, analysis],
            verbose=0,
        )
    train = timer.times
    later = analysis.seconds[1:]
    ratios = {
        "analyzed_over_training_epoch": statistics.median(a / t for a, t in zip(later, train[1:])),
        "first_over_later_analyzed_epoch": analysis.seconds[0] / statistics.median(later),
        "traversals_per_analyzed_epoch": max(analysis.traversals),
    }
    result = {
        "model_params": model.count_params(),
        "train_examples": len(data) - n_val,
        "validation_examples": n_val,
        "training_epoch_s": train,
        "analyzed_epoch_s": analysis.seconds,
        "traversals": analysis.traversals,
        "ratios": ratios,
        "goals": {
            "analyzed_over_training_epoch <= 0.5": ratios["analyzed_over_training_epoch"] <= 0.5,
            "first_over_later_analyzed_epoch <= 2": ratios["first_over_later_analyzed_epoch"] <= 2,
            "traversals_per_analyzed_epoch <= 1.1": ratios["traversals_per_analyzed_epoch"] <= 1.1,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
