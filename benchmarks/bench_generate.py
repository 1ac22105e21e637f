"""Greedy free-running decoding of the demo's validation words, each epoch, against training.

The demo's attention seq2seq model (CMUdict spelling -> phonemes, 15,000 words, 15% held
out) is trained for ``--epochs`` epochs, one ``fit`` epoch at a time. After each, in the
same process:

- the training epoch's wall time (``fit`` of one epoch, batch 64, as the demo);
- greedy decoding of every validation word
  (:func:`~keras_erranalysis.compute.generate_greedy`: one ``tf.function`` holding a
  ``tf.while_loop``), with XLA and without, each timed;
- how many decode loops are compiled for the model (goal: one per XLA choice, not one per
  epoch);
- the teacher-forced pass (:func:`~keras_erranalysis.compute_losses`) and the share of
  words whose teacher-forced and free-running correctness disagree.

Reported: decode / training epoch (median over epochs 2..E, goal <= 1), the second
epoch's decode / the first (compiled once: far below 1), and the disagreement share.

Run: ``flock /tmp/ea-heavy.lock python benchmarks/bench_generate.py [--epochs 4]``.
Writes ``benchmarks/results/generate.json`` and prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from models import demo_split  # noqa: E402  (benchmarks/models.py)

from keras_erranalysis import compute_losses  # noqa: E402
from keras_erranalysis.analysis import generated_metrics  # noqa: E402
from keras_erranalysis.compute import end_id_from_tokens, generate_greedy  # noqa: E402
from keras_erranalysis.compute._generate import cache_size  # noqa: E402
from keras_erranalysis.demo import build_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "generate.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--examples", type=int, default=15_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(0)
    data, (train_inputs, train_target), (val_inputs, val_target) = demo_split(args.examples)
    n_val = len(val_target)
    end_id = end_id_from_tokens(data.phones)
    model = build_model(len(data.chars), len(data.phones))
    epochs = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.fit(train_inputs, train_target, batch_size=64, epochs=1, verbose=0)
        train_s = time.perf_counter() - start
        row = {"epoch": epoch, "training_epoch_s": train_s}
        for name, jit in (("xla", True), ("no_xla", False)):
            start = time.perf_counter()
            generated = generate_greedy(
                model,
                val_inputs,
                val_target,
                end_id=end_id,
                batch_size=args.batch_size,
                jit_compile=jit,
            )
            row[f"decode_{name}_s"] = time.perf_counter() - start
            row[f"compiled_loops_after_{name}"] = cache_size(model)
        report = compute_losses(model, (val_inputs, val_target), jit_compile=False, verbose=0)
        _, corpus = generated_metrics(
            report.label,
            report.token_mask,
            generated.sequences(),
            teacher_forced_correct=report.correct,
            end_id=end_id,
            vocab=data.phones,
        )
        row.update(
            teacher_forced_exact_match=corpus["teacher_forced_exact_match"],
            generated_exact_match=corpus["exact_match"],
            exposure_gap_share=corpus["exposure_gap"],
            disagreement_share=corpus["disagreement"],
            generated_cer=corpus["char_error_rate"],
            teacher_forced_token_accuracy=float(np.mean(report.token_accuracy)),
        )
        print(json.dumps(row))
        epochs.append(row)

    later = epochs[1:]
    ratios = {}
    for name in ("xla", "no_xla"):
        ratios[f"decode_{name}_over_training_epoch"] = statistics.median(
            r[f"decode_{name}_s"] / r["training_epoch_s"] for r in later
        )
        ratios[f"second_over_first_decode_{name}"] = (
            epochs[1][f"decode_{name}_s"] / epochs[0][f"decode_{name}_s"]
        )
    result = {
        "model_params": model.count_params(),
        "train_examples": len(data) - n_val,
        "validation_examples": n_val,
        "max_length": int(val_target.shape[1]),
        "decode_batch_size": args.batch_size,
        "epochs": epochs,
        "ratios": ratios,
        "disagreement_share_last_epoch": epochs[-1]["disagreement_share"],
        "goals": {
            "decode_xla_over_training_epoch <= 1": ratios["decode_xla_over_training_epoch"] <= 1,
            "compiled once (one loop per XLA choice after every epoch)": all(
                r["compiled_loops_after_no_xla"] == 2 for r in epochs
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
