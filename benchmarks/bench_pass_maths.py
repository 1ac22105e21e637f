"""The pass's maths after the forward call, two versions of ``compute/_pass.py`` interleaved.

The seq2seq Transformer of ``bench_loss_pass.py`` (vocabulary 1,000) on 1,024 examples in one
batch: the forward call alone, and the forward call followed by ``per_example`` of this tree
and of another tree (``--old``, e.g. a checkout of main), each compiled once, then timed in
turns (``--rounds`` rounds, medians). Interleaving puts the three under the same load, which
a shared machine cannot promise for separate runs.

Run:  python benchmarks/bench_pass_maths.py --old /work/main [--xla 1] [--rounds 15]
Prints the medians and the ratio old/new of forward + maths (results/pass_maths.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "pass_maths.json"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="root of the other tree")
    parser.add_argument("--xla", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--examples", type=int, default=1024)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf
    from bench_loss_pass import build_model, make_data

    from keras_erranalysis.compute import _pass as new

    old = _module(args.old / "keras_erranalysis" / "compute" / "_pass.py", "old_pass")
    keras.utils.set_random_seed(0)
    model = build_model(1000)
    x, y = make_data(args.examples, 1000)
    x = {k: tf.constant(v) for k, v in x.items()}
    y = tf.constant(y)
    spec = new.resolve_loss(model, None, None, ignore_class=None, from_logits=None)
    probe = new.probe(model, spec, ({k: v[:64] for k, v in x.items()}, y[:64], None))
    jit = bool(args.xla)
    steps = {
        "forward": lambda a, b: model(a, training=False),
        "old": lambda a, b: old.per_example(model(a, training=False), b, None, spec, probe),
        "new": lambda a, b: new.per_example(model(a, training=False), b, None, spec, probe),
    }
    steps = {k: tf.function(f, jit_compile=jit) for k, f in steps.items()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():
        step(x, y)  # trace and compile
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda v: v.numpy(), step(x, y))
            times[name].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "xla": jit,
        "examples": args.examples,
        "rounds": args.rounds,
        "median_s": median,
        "maths_old_s": median["old"] - median["forward"],
        "maths_new_s": median["new"] - median["forward"],
        "old_over_new": median["old"] / median["new"],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    everything = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    everything["xla" if jit else "no_xla"] = result
    RESULTS.write_text(json.dumps(everything, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
