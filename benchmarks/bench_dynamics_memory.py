"""Extra memory of compute_dynamics over 1,000,000 examples x 50 epochs, memory-mapped.

The histories are written to ``.npy`` files first (true_prob, margin, loss in float16 or
float32, correct as bool, prediction as int64, the run format's dtypes), then a fresh child
process opens them memory-mapped and runs ``compute_dynamics``. Measured in the child:

- ``tracemalloc`` peak (numpy reports its buffers to it), from just before the call;
- peak resident set size above the level just before the call, sampled every 5 ms, split
  into private memory (``RssAnon``: what the computation allocated) and file pages
  (``RssFile``: pages of the mapped files, which the OS can drop at any time);
- ``VmHWM`` (the kernel's own peak RSS) above the level before the call.

Two layouts: one ``(E, N)`` file per column, and one ``(N,)`` file per epoch and column
(what a run folder holds; passed as lists, never stacked).
Goal: under 500 MB extra. Writes ``benchmarks/results/dynamics_memory.json``.

Run: ``python benchmarks/bench_dynamics_memory.py [--examples 1000000] [--epochs 50]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "dynamics_memory.json"
MB = 1024 * 1024


def status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def write_inputs(folder: Path, n: int, e: int, dtype: str) -> None:
    rng = np.random.default_rng(0)
    step = 100_000
    specs = {
        "true_prob": dtype,
        "margin": dtype,
        "loss": dtype,
        "correct": "bool",
        "prediction": "int64",
    }
    stacked = {
        name: np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.dtype(kind), (e, n))
        for name, kind in specs.items()
    }
    per_epoch = {
        name: [
            np.lib.format.open_memmap(folder / f"{name}_{t:04d}.npy", "w+", np.dtype(kind), (n,))
            for t in range(e)
        ]
        for name, kind in specs.items()
    }
    for start in range(0, n, step):
        stop = min(start + step, n)
        drift = np.linspace(0.0, 0.6, e)[:, None]
        true_prob = np.clip(rng.random((1, stop - start)) * 0.4 + drift, 0.0, 1.0)
        true_prob = np.clip(true_prob + rng.normal(0, 0.05, true_prob.shape), 0.0, 1.0)
        margin = 2 * true_prob - 1
        columns = {
            "true_prob": true_prob,
            "margin": margin,
            "loss": -np.log(np.maximum(true_prob, 1e-6)),
            "correct": margin > 0,
            "prediction": rng.integers(0, 10, true_prob.shape),
        }
        for name, values in columns.items():
            stacked[name][:, start:stop] = values
            for t in range(e):
                per_epoch[name][t][start:stop] = values[t]
    for arrays in [stacked.values(), *per_epoch.values()]:
        for array in arrays:
            array.flush()


def child(folder: Path, layout: str, e: int) -> dict:
    from keras_erranalysis.analysis._dynamics import compute_dynamics

    names = ("true_prob", "margin", "correct", "loss", "prediction")
    if layout == "stacked":
        inputs = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}
    else:
        inputs = {
            name: [np.load(folder / f"{name}_{t:04d}.npy", mmap_mode="r") for t in range(e)]
            for name in names
        }
    before = status()
    peaks = {"RssAnon": before["RssAnon"], "RssFile": before["RssFile"], "VmRSS": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = status()
            for key in peaks:
                peaks[key] = max(peaks[key], now[key])
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    sampler.start()
    start = time.perf_counter()
    dyn = compute_dynamics(
        inputs["true_prob"],
        inputs["margin"],
        inputs["correct"],
        loss=inputs["loss"],
        prediction=inputs["prediction"],
    )
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = status()
    return {
        "layout": layout,
        "rows": len(dyn),
        "columns": len(dyn.columns),
        "seconds": seconds,
        "tracemalloc_peak_mb": traced_peak / MB,
        "rss_anon_peak_extra_mb": (peaks["RssAnon"] - before["RssAnon"]) / MB,
        "rss_file_peak_extra_mb": (peaks["RssFile"] - before["RssFile"]) / MB,
        "rss_peak_extra_mb": (peaks["VmRSS"] - before["VmRSS"]) / MB,
        "vmhwm_extra_mb": (after["VmHWM"] - before["VmRSS"]) / MB,
        "result_frame_mb": dyn.memory_usage(deep=True).sum() / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "LAYOUT", "EPOCHS"))
    args = parser.parse_args()
    if args.child:
        folder, layout, epochs = args.child
        print(json.dumps(child(Path(folder), layout, int(epochs))))
        return

    results = []
    for dtype in args.dtypes:
        with tempfile.TemporaryDirectory(prefix="bench_dyn_mem_") as tmp:
            folder = Path(tmp)
            start = time.perf_counter()
            write_inputs(folder, args.examples, args.epochs, dtype)
            print(f"wrote {dtype} inputs in {time.perf_counter() - start:.0f} s", flush=True)
            for layout in ("stacked", "per_epoch"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(folder), layout, str(args.epochs)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                result = {"dtype": dtype, **json.loads(out.stdout.strip().splitlines()[-1])}
                results.append(result)
                print(json.dumps(result), flush=True)

    lines = [
        f"compute_dynamics, {args.examples:,} examples x {args.epochs} epochs, memory-mapped "
        "inputs (true_prob, margin, loss, correct, prediction); extra memory in MB:",
        "",
        "| dtype | layout | seconds | tracemalloc peak | private RSS peak | mapped-file RSS peak "
        "| result frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['dtype']} | {r['layout']} | {r['seconds']:.1f} | "
            f"{r['tracemalloc_peak_mb']:.0f} | {r['rss_anon_peak_extra_mb']:.0f} | "
            f"{r['rss_file_peak_extra_mb']:.0f} | {r['result_frame_mb']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "examples": args.examples,
                "epochs": args.epochs,
                "results": results,
                "markdown": table,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
