"""Peak memory of `analyze` as the data grows 10x: streamed chunks vs holding everything.

Each measurement runs in a fresh child process and reports its peak resident set size
(``ru_maxrss``, which also counts file pages the process maps). The parent writes the
model and the data files once, then runs, for the base size N and for 10 N:

* ``analyze``: :func:`keras_erranalysis.analyze` (chunks of ``--chunk-size``);
* ``in_memory`` (for contrast, ``--no-contrast`` skips it): read the whole file, one
  ``compute_losses`` call, ``RunWriter.write_epoch`` - what a naive script does.

The claim checked: streamed peak memory at 10 N stays under 1.2x its peak at N.

    python benchmarks/bench_analyze_memory.py                 # parquet, N = 300k
    python benchmarks/bench_analyze_memory.py --format npz --examples 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = 16
CLASSES = 10
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _write_model(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(CLASSES)(hidden))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(path)


def _write_data(path: Path, n: int, fmt: str, *, block: int = 200_000) -> None:
    """Writes n examples block by block (the parent never holds the whole file either)."""
    rng = np.random.default_rng(n)
    blocks = [(min(block, n - s)) for s in range(0, n, block)]
    if fmt == "npz":
        x = np.concatenate([rng.standard_normal((b, FEATURES), np.float32) for b in blocks])
        y = rng.integers(0, CLASSES, n)
        np.savez(path, x=x, y=y)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [f"f{i}" for i in range(FEATURES)]
        writer = None
        for b in blocks:
            x = rng.standard_normal((b, FEATURES), np.float32)
            table = pa.table(
                {**{k: x[:, i] for i, k in enumerate(names)}, "label": rng.integers(0, CLASSES, b)}
            )
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
    elif fmt == "csv":
        import pandas as pd

        for i, b in enumerate(blocks):
            x = rng.standard_normal((b, FEATURES), np.float32)
            frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(FEATURES)])
            frame["label"] = rng.integers(0, CLASSES, b)
            frame.to_csv(
                path, mode="a" if i else "w", header=not i, index=False, float_format="%.5g"
            )
    else:
        raise SystemExit(f"unknown format {fmt}")


def _child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.mode == "analyze":
        from keras_erranalysis._analyze import analyze

        result = analyze(
            args.model,
            args.data,
            args.out,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
            verbose=0,
        )
        n = result.n_examples
    else:
        from keras_erranalysis._analyze import plan_columns
        from keras_erranalysis.analysis import log_views
        from keras_erranalysis.compute._losses import compute_losses
        from keras_erranalysis.compute._model import load_model
        from keras_erranalysis.run._sources import open_source
        from keras_erranalysis.run._writer import RunWriter

        model = load_model(args.model)
        source = open_source(args.data)
        plan = plan_columns(model, source.columns)
        chunk = next(source.chunks(plan.columns, 10**12, {}))
        cols = plan.inputs[0][1]
        x = chunk[cols[0]] if len(cols) == 1 else np.column_stack([chunk[c] for c in cols])
        report = compute_losses(
            model, (x.astype(np.float32), chunk[plan.label]), batch_size=args.batch_size, verbose=0
        )
        tables = {"hardest": log_views(report.to_frame(), k=20)}
        RunWriter(args.out).write_epoch(1, report, tables=tables)
        n = len(report)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "peak_mb": peak_kb / 1024, "seconds": seconds}))


def _measure(mode: str, model: Path, data: Path, out: Path, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--chunk-size",
        str(args.chunk_size),
        "--batch-size",
        str(args.batch_size),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="parquet", choices=("parquet", "npz", "csv"))
    parser.add_argument("--examples", type=int, default=300_000, help="base size N")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--no-contrast", action="store_true")
    parser.add_argument("--child", choices=("analyze", "in_memory"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        _child(args)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        folder = Path(tmp)
        model = folder / "model.keras"
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import bench_analyze_memory as b; from pathlib import Path; "
                f"b._write_model(Path({str(model)!r}))",
            ],
            check=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        modes = ["analyze"] if args.no_contrast else ["analyze", "in_memory"]
        for n in (args.examples, args.examples * args.factor):
            data = folder / f"data_{n}.{args.format}"
            _write_data(data, n, args.format)
            size_mb = data.stat().st_size / 2**20
            for mode in modes:
                out = folder / f"run_{mode}_{n}"
                row = {
                    "mode": mode,
                    "format": args.format,
                    "file_mb": round(size_mb, 1),
                    **_measure(mode, model, data, out, args),
                }
                rows.append(row)
                print(
                    f"{mode:10s} n={row['n']:>9,d} file={size_mb:7.1f} MB "
                    f"peak={row['peak_mb']:7.1f} MB  {row['seconds']:6.1f} s",
                    flush=True,
                )
            data.unlink()
    summary = {}
    for mode in modes:
        small, large = (r for r in rows if r["mode"] == mode)
        summary[mode] = round(large["peak_mb"] / small["peak_mb"], 3)
        print(f"{mode}: peak at {args.factor}x the data = {summary[mode]:.3f}x the peak at 1x")
    ok = summary["analyze"] < 1.2
    print("claim (analyze < 1.2x):", "holds" if ok else "FAILS")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"analyze_memory_{args.format}.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "peak_ratio": summary,
                "claim_holds": ok,
                "chunk_size": args.chunk_size,
                "batch_size": args.batch_size,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
