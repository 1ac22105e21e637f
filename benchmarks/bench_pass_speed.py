"""Speed of the per-example pass against a training epoch, as ratios from one run per model.

Two models, each measured in its own child process (fit epoch and pass in the same process,
one after the other, so the ratio compares like with like):

- ``mlp``: a 2-layer MLP classifier (32 features, 64 hidden, 10 classes) on 200,000 numpy
  examples. Baseline: one ``fit`` epoch at batch 256. Measured: ``compute_losses(model,
  (x, y))`` with its defaults (batch size, XLA: all chosen by the pass).
- ``transformer``: the seq2seq Transformer of ``bench_loss_pass.py`` (vocab 1000, d_model 64,
  about 260k parameters) on 20,000 examples in a batched (64), cached ``tf.data`` dataset.
  Baseline: one ``fit`` epoch on that dataset. Measured: ``compute_losses`` on the same
  dataset with ``jit_compile=True`` and ``jit_compile=False``; and, with XLA, the loss,
  attention-diagnostic (weights of 8 rows) and embedding columns from one traversal
  (``run_pass``) against the three separate passes.

Every timing is the best of ``--repeats`` after a warm-up (tracing and XLA compilation are
paid once per model and options; the cold first call is reported too, as ``*_cold``).
Run:  flock /tmp/ea-heavy.lock python benchmarks/bench_pass_speed.py [--repeats 3]
Writes benchmarks/results/pass_speed.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MLP_N, MLP_FEATURES, MLP_HIDDEN, MLP_CLASSES, MLP_BATCH = 200_000, 32, 64, 10, 256
SEQ_N, SEQ_VOCAB, SEQ_LENGTH, SEQ_BATCH = 20_000, 1_000, 20, 64
RESULTS = Path(__file__).parent / "results" / "pass_speed.json"
GOALS = {
    "mlp_pass_over_fit_epoch": 0.10,
    "transformer_pass_xla_over_fit_epoch": 0.25,
    "transformer_pass_over_fit_epoch": 0.35,
}


def _best(fn, repeats: int) -> tuple[float, float]:
    """(cold seconds of the first call, best seconds of ``repeats`` later calls)."""
    start = time.perf_counter()
    fn()
    cold = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return cold, min(times)


def _fit_epoch(model, data, repeats: int, **fit_args) -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    from timing import EpochTimer

    timer = EpochTimer()
    model.fit(data, epochs=repeats + 1, verbose=0, callbacks=[timer], **fit_args)
    return min(timer.times[1:])  # the first epoch traces the train step


def child_mlp(repeats: int) -> dict:
    import keras
    import numpy as np

    from keras_erranalysis import compute_losses

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((MLP_FEATURES,)),
            keras.layers.Dense(MLP_HIDDEN, activation="relu"),
            keras.layers.Dense(MLP_CLASSES),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(MLP_N, MLP_FEATURES)).astype("float32")
    y = rng.integers(0, MLP_CLASSES, MLP_N).astype("int32")
    fit_s = _fit_epoch(model, x, repeats, y=y, batch_size=MLP_BATCH)
    cold, best = _best(lambda: compute_losses(model, (x, y), verbose=0), repeats)
    return {
        "model": "mlp",
        "examples": MLP_N,
        "fit_batch": MLP_BATCH,
        "fit_epoch_s": fit_s,
        "pass_s": best,
        "pass_cold_s": cold,
        "ratios": {
            "mlp_pass_over_fit_epoch": best / fit_s,
            "mlp_pass_cold_over_fit_epoch": cold / fit_s,
        },
    }


def child_transformer(repeats: int) -> dict:
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_loss_pass import build_model, make_data

    from keras_erranalysis import compute_losses

    keras.utils.set_random_seed(0)
    model = build_model(SEQ_VOCAB)
    x, y = make_data(SEQ_N, SEQ_VOCAB)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(SEQ_BATCH).cache()
    for _ in ds:  # fill the cache before timing
        pass
    fit_s = _fit_epoch(model, ds, repeats)
    result = {
        "model": "transformer",
        "examples": SEQ_N,
        "fit_batch": SEQ_BATCH,
        "fit_epoch_s": fit_s,
    }
    ratios = {}
    for name, jit in (("pass_xla", True), ("pass", False)):
        cold, best = _best(
            lambda jit=jit: compute_losses(model, ds, verbose=0, jit_compile=jit), repeats
        )
        result[f"{name}_s"] = best
        result[f"{name}_cold_s"] = cold
        ratios[f"transformer_{name}_over_fit_epoch"] = best / fit_s
        ratios[f"transformer_{name}_cold_over_fit_epoch"] = cold / fit_s
    # The analyzed epoch's three column sets: one fused traversal vs three passes (XLA).
    try:
        from keras_erranalysis.compute import attention_diagnostics, compute_embeddings
        from keras_erranalysis.compute._attention import attention_columns
        from keras_erranalysis.compute._embeddings import embedding_columns
        from keras_erranalysis.compute._losses import run_pass
    except ImportError:  # a version of the package without the one traversal (a baseline)
        result["ratios"] = ratios
        return result

    keep = list(range(0, SEQ_N, SEQ_N // 8))

    def fused():
        extra = [attention_columns(model, keep=keep), embedding_columns(model)]
        run_pass(model, ds, extra=extra, keep=keep, verbose=0, jit_compile=True)

    def separate():
        compute_losses(model, ds, verbose=0, jit_compile=True)
        attention_diagnostics(model, ds, keep=keep, jit_compile=True)
        compute_embeddings(model, ds, jit_compile=True)

    for name, fn in (("fused_xla", fused), ("separate_xla", separate)):
        cold, best = _best(fn, repeats)
        result[f"{name}_s"] = best
        result[f"{name}_cold_s"] = cold
        ratios[f"transformer_{name}_over_fit_epoch"] = best / fit_s
    ratios["transformer_fused_over_separate"] = result["fused_xla_s"] / result["separate_xla_s"]
    result["ratios"] = ratios
    return result


def run_child(model: str, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", model, "--repeats", str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None)
    parser.add_argument("--models", default="mlp,transformer")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.child:
        run = {"mlp": child_mlp, "transformer": child_transformer}[args.child]
        print(json.dumps(run(args.repeats)))
        return
    results = {name: run_child(name, args.repeats) for name in args.models.split(",")}
    ratios = {k: v for r in results.values() for k, v in r["ratios"].items()}
    goals = {f"{k} <= {v}": ratios[k] <= v for k, v in GOALS.items() if k in ratios}
    payload = {"results": results, "ratios": ratios, "goals": goals}
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    for name, r in results.items():
        seconds = {k: round(v, 3) for k, v in r.items() if k.endswith("_s")}
        print(f"{name}: {seconds}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    for name, ok in goals.items():
        print(f"goal {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
