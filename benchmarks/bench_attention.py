"""Cost of attention extraction: time against a plain forward pass, memory of diagnostics.

A small seq2seq Transformer (3 MultiHeadAttention layers: encoder self, causal decoder self,
cross; 4 heads, d_model 64) over N examples of length T, batch 64.

Speed (one child process, same batches, same run, interleaved rounds, median of rounds):

- ``forward``: a compiled ``model(x, training=False)``, output fetched to the host;
- ``extract``: ``extract_attention(model, batch)``: all weights of the batch to the host;
- ``extract_diag``: the same plus the per-example diagnostics;
- ``diagnostics``: ``attention_diagnostics(model, x)`` over all batches (diagnostics only);
- ``forward_plus_weights`` / ``forward_plus_diag``: one compiled pass returning the logits
  and the recorded weights / diagnostics (``recording_attention``), all fetched to the host.

``extract`` and ``diagnostics`` return no logits, so TensorFlow prunes the output layer
from their graphs: they can be cheaper than the forward pass. ``forward_plus_*`` is the
honest extra cost of recording inside a pass that also needs the outputs (the loss pass).

Each without and with XLA (forward and extraction with the same setting).

Memory (one child process each, peak RSS growth over the measured call):

- ``mem_diagnostics``: ``attention_diagnostics`` over the whole dataset, keeping 8 examples;
- ``mem_weights``: ``extract_attention`` batch by batch, keeping every weight on the host.

Run:  python benchmarks/bench_attention.py [--examples 4096] [--length 32] [--rounds 3]
Writes benchmarks/results/attention.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_mb, rss_mb  # benchmarks/memory.py
from models import transformer_seq2seq  # benchmarks/models.py

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VOCAB = 1000
D_MODEL = 64
HEADS = 4
BATCH = 64


def build_model(length: int):
    return transformer_seq2seq(VOCAB, length, d_model=D_MODEL, heads=HEADS)


def make_inputs(n: int, length: int):
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(length // 4, length + 1, n)
    src = rng.integers(1, VOCAB, (n, length)).astype("int32")
    src[np.arange(length)[None, :] >= lengths[:, None]] = 0
    tgt = np.roll(src, 1, axis=1)
    tgt[:, 0] = 1
    return {"source": src, "target_in": tgt}


def batches_of(x, n: int):
    return [{k: v[i : i + BATCH] for k, v in x.items()} for i in range(0, n, BATCH)]


def speed(n: int, length: int, rounds: int) -> dict:
    model = build_model(length)
    x = make_inputs(n, length)
    batches = batches_of(x, n)
    return {
        "no_xla": speed_one(model, x, batches, jit=False, rounds=rounds),
        "xla": speed_one(model, x, batches, jit=True, rounds=rounds),
    }


def speed_one(model, x, batches, *, jit: bool, rounds: int) -> dict:
    import tensorflow as tf

    from keras_erranalysis.compute._attention import attention_diagnostics, extract_attention
    from keras_erranalysis.compute._attention_hooks import recording_attention

    forward = tf.function(lambda b: model(b, training=False), jit_compile=jit)

    def logits_and_attention(b, diagnostics):
        with recording_attention(model) as recorder:
            logits = model(b, training=False)
        return logits, (recorder.diagnostics() if diagnostics else recorder.weights())

    recorded = tf.function(lambda b: logits_and_attention(b, False), jit_compile=jit)
    recorded_diag = tf.function(lambda b: logits_and_attention(b, True), jit_compile=jit)

    def run_recorded(fn):
        for b in batches:
            tf.nest.map_structure(lambda t: t.numpy(), fn(b))

    def run_forward():
        for b in batches:
            forward(b).numpy()

    def run_extract(diagnostics=False):
        for b in batches:
            extract_attention(model, b, jit_compile=jit, diagnostics=diagnostics)

    def run_diagnostics():
        attention_diagnostics(model, x, batch_size=BATCH, jit_compile=jit)

    runs = {
        "forward": run_forward,
        "extract": run_extract,
        "extract_diag": lambda: run_extract(True),
        "diagnostics": run_diagnostics,
        "forward_plus_weights": lambda: run_recorded(recorded),
        "forward_plus_diag": lambda: run_recorded(recorded_diag),
    }
    # Warm up: trace / compile every shape (full and last batch) outside the timing.
    for b in (batches[0], batches[-1]):
        forward(b).numpy()
        extract_attention(model, b, jit_compile=jit)
        extract_attention(model, b, jit_compile=jit, diagnostics=True)
        recorded(b)
        recorded_diag(b)
    run_diagnostics()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # interleaved, so load from others hits all alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in times.items()}
    return {
        "seconds": med,
        "all_rounds": times,
        "ratio_extract_over_forward": med["extract"] / med["forward"],
        "ratio_extract_diag_over_forward": med["extract_diag"] / med["forward"],
        "ratio_diagnostics_over_forward": med["diagnostics"] / med["forward"],
        "ratio_forward_plus_weights_over_forward": med["forward_plus_weights"] / med["forward"],
        "ratio_forward_plus_diag_over_forward": med["forward_plus_diag"] / med["forward"],
    }


def memory(mode: str, n: int, length: int) -> dict:
    import numpy as np

    from keras_erranalysis.compute._attention import attention_diagnostics, extract_attention

    model = build_model(length)
    x = make_inputs(n, length)
    batches = batches_of(x, n)
    # warm up on a small slice so tracing is not counted
    small = {k: v[: 2 * BATCH] for k, v in x.items()}
    attention_diagnostics(model, small, batch_size=BATCH, keep=[0], jit_compile=False)
    extract_attention(model, batches[0], jit_compile=False)
    extract_attention(model, batches[-1], jit_compile=False)
    base = rss_mb()
    if mode == "mem_diagnostics":
        result = attention_diagnostics(
            model, x, batch_size=BATCH, keep=list(range(8)), jit_compile=False
        )
        held = sum(a.nbytes for a in result.diagnostics.values())
        held += sum(a.nbytes for a in result.weights.values())
    else:
        kept: dict[str, list] = {}
        for b in batches:
            for path, w in extract_attention(model, b, jit_compile=False).items():
                kept.setdefault(path, []).append(w)
        weights = {p: np.concatenate(parts) for p, parts in kept.items()}
        held = sum(a.nbytes for a in weights.values())
    return {
        "mode": mode,
        "n": n,
        "length": length,
        "peak_growth_mb": peak_mb() - base,
        "held_mb": held / 2**20,
    }


def run_child(mode: str, n: int, length: int, rounds: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--examples",
            str(n),
            "--length",
            str(length),
            "--rounds",
            str(rounds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child == "speed":
        print(json.dumps(speed(args.examples, args.length, args.rounds)))
        return
    if args.child:
        print(json.dumps(memory(args.child, args.examples, args.length)))
        return

    n, length = args.examples, args.length
    timing = run_child("speed", n, length, args.rounds)
    mem = {m: run_child(m, n, length, args.rounds) for m in ("mem_diagnostics", "mem_weights")}
    layers = 3
    expected = {
        "diagnostics_bytes": n * layers * 4 * 4,
        "weights_bytes": n * layers * HEADS * length * length * 4,
    }
    goals = {}
    for setting, label in (("no_xla", "no XLA"), ("xla", "XLA")):
        for ratio, name in (
            ("ratio_extract_over_forward", "extract_attention"),
            ("ratio_forward_plus_weights_over_forward", "logits + weights"),
            ("ratio_forward_plus_diag_over_forward", "logits + diagnostics"),
        ):
            goals[f"{name} <= 1.5 x forward ({label})"] = timing[setting][ratio] <= 1.5
    payload = {
        "examples": n,
        "length": length,
        "batch": BATCH,
        "heads": HEADS,
        "layers": layers,
        "timing": timing,
        "memory": mem,
        "expected_bytes": expected,
        "goals": goals,
    }
    out = Path(__file__).parent / "results" / "attention.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))

    print(f"{n} examples, length {length}, batch {BATCH}, {layers} MHA layers x {HEADS} heads")
    print("| pass | no XLA s | x forward | XLA s | x forward |")
    print("|---|---|---|---|---|")
    for name in timing["xla"]["seconds"]:
        a, b = timing["no_xla"], timing["xla"]
        fa, fb = a["seconds"]["forward"], b["seconds"]["forward"]
        print(
            f"| {name} | {a['seconds'][name]:.2f} | {a['seconds'][name] / fa:.2f} | "
            f"{b['seconds'][name]:.2f} | {b['seconds'][name] / fb:.2f} |"
        )
    print()
    print("| memory | peak RSS growth MB | held on host MB |")
    print("|---|---|---|")
    for name, r in mem.items():
        print(f"| {name} | {r['peak_growth_mb']:.0f} | {r['held_mb']:.2f} |")
    for name, ok in goals.items():
        print(f"goal {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
