"""The demo as shipped: teacher-forced against free-running correctness, every epoch.

Runs ``keras-erranalysis demo`` (:func:`~keras_erranalysis.demo.run_demo`, its default
settings: 15,000 CMUdict words, 15% held out, 8 epochs, ``GenerationAnalysis`` on), then
reads every analyzed epoch back from the run folder and measures, over the validation
words (:func:`~keras_erranalysis.demo.exposure_summary`):

- the share of words whose teacher-forced and free-running verdicts disagree, and the
  exposure gap (right teacher-forced, wrong free-running);
- the share of counted phonemes whose two verdicts disagree, position by position.

Also: the watch list of each epoch and the replacements noted in ``meta.json``, and the
demo's wall time.

Run: ``flock /tmp/ea-heavy.lock python benchmarks/bench_demo_exposure.py``.
Writes ``benchmarks/results/demo_exposure.json`` and prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_erranalysis import load_run  # noqa: E402
from keras_erranalysis.demo import exposure_summary, run_demo  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "demo_exposure.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--examples", type=int, default=15_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-demo-exposure-"))
    result = run_demo(
        folder, epochs=args.epochs, examples=args.examples, verbose=0, tensorboard=False
    )
    run = load_run(result.log_dir)
    epochs = []
    for epoch in run.epochs:
        summary = exposure_summary(run.report(epoch), np.asarray(run.array("generated", epoch)))
        info = run.meta(epoch).get("info", {})
        summary.update(
            epoch=epoch,
            watch=info.get("watch"),
            watch_replaced=info.get("watch_replaced"),
        )
        epochs.append(summary)
        print(
            f"epoch {epoch}: teacher-forced right {summary['teacher_forced_right']:.3f}, "
            f"free-running right {summary['generated_right']:.3f}, words disagree "
            f"{summary['disagree']:.4f} (exposure gap {int(summary['exposure_gap'])}), "
            f"phonemes disagree {summary['token_disagree']:.4f}"
        )
    replaced = sum(len(e["watch_replaced"] or []) for e in epochs)
    output = {
        "examples": args.examples,
        "validation_words": result.n_val,
        "epochs": epochs,
        "watch_replacements": replaced,
        "demo_seconds": result.seconds,
        "heatmap_files": [p.name for p in result.heatmaps],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1) + "\n")
    print(f"demo {result.seconds:.0f} s; watch-list replacements noted: {replaced}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
