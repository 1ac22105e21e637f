"""Speed and memory of the per-example loss pass, as ratios measured in one run.

A small seq2seq Transformer (vocab 1000, d_model 64, length 20) over N examples. Each
measurement runs in its own child process (so peak memory is its own), one after the other:

- ``fit``: one training epoch (the baseline);
- ``predict``: ``model.predict`` + a numpy cross-entropy (the usual recipe);
- ``pass``: ``compute_losses`` without XLA;
- ``pass_xla``: ``compute_losses`` with XLA.

Peak memory is the child's peak RSS minus its RSS just before the measured step.
Run:  python benchmarks/bench_loss_pass.py [--examples 20000] [--vocab 1000]
Writes benchmarks/results/loss_pass.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_mb, rss_mb  # benchmarks/memory.py
from models import transformer_seq2seq  # benchmarks/models.py

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LENGTH = 20
D_MODEL = 64
BATCH = 64


def build_model(vocab: int):
    import keras

    model = transformer_seq2seq(vocab, LENGTH, d_model=D_MODEL)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def make_data(n: int, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, LENGTH + 1, n)
    src = rng.integers(1, vocab, (n, LENGTH)).astype("int32")
    src[np.arange(LENGTH)[None, :] >= lengths[:, None]] = 0
    tgt = np.roll(src, 1, axis=1)  # a copy task, shifted: learnable, realistic masks
    tgt[:, 0] = 1
    labels = src.copy()
    return {"source": src, "target_in": tgt}, labels


def child(mode: str, n: int, vocab: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from keras_erranalysis import compute_losses

    model = build_model(vocab)
    x, y = make_data(n, vocab)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()
    for _ in ds:  # fill the cache before timing
        pass
    # first and last (smaller) batch: every shape the timed step will see
    small = ds.take(1).concatenate(ds.skip(int(ds.cardinality()) - 1))
    # warm up (tracing / compilation is not what we compare)
    if mode == "fit":
        model.fit(small, epochs=1, verbose=0)
    elif mode == "predict":
        model.predict(small, verbose=0)
    else:
        compute_losses(model, small, verbose=0, jit_compile=mode == "pass_xla")
    base = rss_mb()
    start = time.perf_counter()
    if mode == "fit":
        model.fit(ds, epochs=1, verbose=0)
    elif mode == "predict":
        logits = model.predict(ds, verbose=0)
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        token_loss = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
        mask = x["source"] != 0
        example_loss = (token_loss * mask).sum(1) / mask.sum(1)
        assert example_loss.shape == (n,)
    else:
        report = compute_losses(model, ds, verbose=0, jit_compile=mode == "pass_xla")
        assert len(report) == n
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "n": n,
        "vocab": vocab,
        "seconds": seconds,
        "peak_growth_mb": peak_mb() - base,
    }


def run_child(mode: str, n: int, vocab: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--examples", str(n), "--vocab", str(vocab)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.examples, args.vocab)))
        return

    n, vocab = args.examples, args.vocab
    results = {m: run_child(m, n, vocab) for m in ("fit", "predict", "pass", "pass_xla")}
    # memory scaling: the pass at a quarter and half of the data, and with 4x the vocabulary
    scaling = {
        "pass_xla_quarter": run_child("pass_xla", n // 4, vocab),
        "pass_xla_half": run_child("pass_xla", n // 2, vocab),
        "pass_xla_vocab_x4": run_child("pass_xla", n, vocab * 4),
    }
    fit_s = results["fit"]["seconds"]
    pred = results["predict"]
    best = min(results["pass"], results["pass_xla"], key=lambda r: r["seconds"])
    ratios = {
        "pass_xla_over_fit_epoch": results["pass_xla"]["seconds"] / fit_s,
        "pass_over_fit_epoch": results["pass"]["seconds"] / fit_s,
        "predict_over_fit_epoch": pred["seconds"] / fit_s,
        "speedup_vs_predict": pred["seconds"] / best["seconds"],
        "memory_fraction_of_predict": best["peak_growth_mb"] / max(pred["peak_growth_mb"], 1e-9),
        "memory_vocab_x4_over_vocab": scaling["pass_xla_vocab_x4"]["peak_growth_mb"]
        / max(results["pass_xla"]["peak_growth_mb"], 1e-9),
    }
    goals = {
        "pass <= 0.35 x fit epoch": ratios["pass_xla_over_fit_epoch"] <= 0.35,
        ">= 2x faster than predict+numpy": ratios["speedup_vs_predict"] >= 2,
        "<= 1/10 of predict's peak memory": ratios["memory_fraction_of_predict"] <= 0.1,
    }
    payload = {
        "examples": n,
        "vocab": vocab,
        "results": results,
        "scaling": scaling,
        "ratios": ratios,
        "goals": goals,
    }
    out = Path(__file__).parent / "results" / "loss_pass.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(f"| way ({n} examples, vocab {vocab}) | seconds | x fit epoch | peak growth MB |")
    print("|---|---|---|---|")
    for mode, r in {**results, **scaling}.items():
        print(
            f"| {mode} (n={r['n']}, V={r['vocab']}) | {r['seconds']:.2f} | "
            f"{r['seconds'] / fit_s:.2f} | {r['peak_growth_mb']:.0f} |"
        )
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    for name, ok in goals.items():
        print(f"goal {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
