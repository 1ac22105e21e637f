"""Speed of the presentation layer: similarity search, HTML report, TensorBoard, embeddings.

- ``similar``: exact cosine search (``embeddings.nearest``) of one query over N x 64
  vectors read from a memory-mapped ``.npy`` (float16 as the callback stores them, and
  float32), median of 5 queries;
- ``report``: ``write_report`` of a synthetic classification run (N examples, E epochs);
- ``tensorboard``: ``tensorboard.log_epoch`` of the last epoch of that run, with projector;
- ``embeddings``: ``compute_embeddings`` vs ``compute_losses`` on the same small text
  classifier and data (ratio).

Run:  python benchmarks/bench_presentation.py [--examples 20000] [--epochs 10]
Writes benchmarks/results/presentation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _median_time(fn, repeat=5):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_similar(folder: Path, sizes=(100_000, 300_000, 1_000_000), dim=64) -> list[dict]:
    from keras_erranalysis.analysis._similarity import nearest

    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        for dtype in ("float16", "float32"):
            path = folder / f"vectors_{n}_{dtype}.npy"
            np.save(path, rng.standard_normal((n, dim)).astype(dtype))
            vectors = np.load(path, mmap_mode="r")
            query = np.asarray(vectors[7], np.float32)
            nearest(vectors, query, 10, exclude=7)  # warm the page cache
            seconds = _median_time(lambda v=vectors, q=query: nearest(v, q, 10, exclude=7))
            rows.append({"what": f"similar N={n:,} D={dim} {dtype}", "seconds": seconds})
            path.unlink()
    return rows


def bench_report(folder: Path, n: int, epochs: int) -> list[dict]:
    from _presentation import classification_report

    from keras_erranalysis import tensorboard
    from keras_erranalysis.present._report import write_report
    from keras_erranalysis.run._reader import load_run
    from keras_erranalysis.run._writer import RunWriter

    writer = RunWriter(folder / "run", decoding={"label_names": ["a", "b", "c"]})
    for epoch in range(1, epochs + 1):
        report = classification_report(n, seed=epoch)
        report.loss = (report.loss / epoch).astype(np.float32)
        writer.write_epoch(epoch, report)
    start = time.perf_counter()
    out = write_report(folder / "run", folder / "report.html")
    report_seconds = time.perf_counter() - start
    run = load_run(folder / "run")
    vectors = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    summaries = tensorboard.SummaryWriter(folder / "tb")
    start = time.perf_counter()
    tensorboard.log_epoch(
        summaries, epochs, run.report(), frame=run.frame(), run=run, vectors=vectors
    )
    summaries.close()
    tb_seconds = time.perf_counter() - start
    return [
        {
            "what": f"write_report N={n:,} E={epochs}",
            "seconds": report_seconds,
            "size_mb": out.stat().st_size / 1e6,
        },
        {"what": f"tensorboard.log_epoch N={n:,} (+projector D=64)", "seconds": tb_seconds},
    ]


def bench_embeddings(n: int) -> list[dict]:
    import keras

    from keras_erranalysis import compute_losses
    from keras_erranalysis.compute._embeddings import compute_embeddings

    rng = np.random.default_rng(0)
    x = rng.integers(1, 1000, (n, 20)).astype("int32")
    y = rng.integers(0, 5, n).astype("int32")
    tokens = keras.Input((20,), dtype="int32")
    hidden = keras.layers.Embedding(1000, 64, mask_zero=True)(tokens)
    hidden = keras.layers.Bidirectional(keras.layers.GRU(32, return_sequences=True))(hidden)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    out = keras.layers.Dense(5)(pooled)
    model = keras.Model(tokens, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Steady state, as in a callback's second epoch: traced (and XLA-compiled) once before.
    compute_losses(model, (x, y), verbose=0, batch_size=64)
    compute_embeddings(model, (x, y), batch_size=64)
    losses = _median_time(lambda: compute_losses(model, (x, y), verbose=0, batch_size=64), 3)
    vectors = _median_time(lambda: compute_embeddings(model, (x, y), batch_size=64), 3)
    return [
        {"what": f"compute_losses N={n:,} BiGRU", "seconds": losses},
        {
            "what": f"compute_embeddings N={n:,} BiGRU",
            "seconds": vectors,
            "ratio_to_losses": vectors / losses,
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = bench_similar(folder)
        rows += bench_report(folder, args.examples, args.epochs)
        rows += bench_embeddings(args.examples)
    out = Path(__file__).parent / "results" / "presentation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print("| what | seconds | notes |\n|---|---|---|")
    for row in rows:
        notes = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("what", "seconds"))
        print(f"| {row['what']} | {row['seconds']:.3f} | {notes} |")


if __name__ == "__main__":
    main()
