"""Server-side speed and memory of the Error Analysis dashboard on a 1,000,000-example run.

Synthesizes a classification run (10 classes, N examples x E epochs, a short text input,
16-d float16 embeddings, 8% flipped labels the model keeps contradicting) with RunWriter,
then times every request kind of the plugin as its route does it: the
:class:`~keras_erranalysis.dashboard.Dashboard` call plus the JSON encoding.

- ``cold``: the first request of a kind on an epoch (builds the cached sort order, the
  text-search block, the dynamics over epochs, the PCA);
- ``warm``: the same kind again with *other* parameters each time (other offsets, bounds,
  search words, ids), so per-filter caches do not answer: p50 / p95 over the repeats.

Memory: RSS before the first request and after all of them, split into anonymous memory
(what the server allocates: caches, temporaries) and file-backed pages (the memory-mapped
arrays, which the kernel can drop at any time).

Run:  flock /tmp/ea-heavy.lock python benchmarks/bench_dashboard.py [--examples 1000000]
      [--epochs 20] [--repeat 20] [--folder /tmp/ea-bench-dashboard] [--keep]
Writes benchmarks/results/dashboard.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_MS = 300.0
GOAL_MB = 300.0
WORDS = np.array(
    "the a cat dog bird fish red blue green fast slow big small old new happy sad light dark "
    "river stone tree cloud rain snow wind fire sun moon star road city field hill sea".split()
)


def memory() -> dict[str, float]:
    """RSS, anonymous and file-backed resident MB of this process (Linux)."""
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    return found


def synthesize(folder: Path, n: int, epochs: int, classes: int = 10) -> float:
    """Writes the run; returns the seconds it took."""
    from keras_erranalysis._loss_report import LossReport
    from keras_erranalysis.run import RunWriter

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    truth = rng.integers(0, classes, n).astype(np.int32)
    label = truth.copy()
    flipped = rng.random(n) < 0.08
    label[flipped] = (truth[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    hardness = rng.gamma(2.0, 1.0, n)
    picks = rng.integers(0, len(WORDS), (n, 3))
    texts = np.char.add(np.char.add(WORDS[picks[:, 0]], " "), WORDS[picks[:, 1]])
    texts = np.char.add(np.char.add(texts, " "), WORDS[picks[:, 2]])
    centres = rng.normal(size=(classes, 16)).astype(np.float32)
    names = [f"class_{c}" for c in range(classes)]
    writer = RunWriter(folder, decoding={"label_names": names})
    for epoch in range(1, epochs + 1):
        skill = epoch / epochs
        logit_truth = 4 * skill - hardness * 0.6 + rng.normal(0, 0.8, n)
        p_truth = 1 / (1 + np.exp(-logit_truth))
        other = (truth + 1 + rng.integers(0, classes - 1, n)) % classes
        prediction = np.where(p_truth > 0.5, truth, other).astype(np.int32)
        p_label = np.where(flipped, (1 - p_truth) * 0.3, p_truth).astype(np.float32)
        confidence = np.maximum(p_truth, 1 - p_truth).astype(np.float32)
        correct = prediction == label
        margin = np.where(correct, 2 * p_label - 1, p_label - confidence).astype(np.float32)
        loss = (-np.log(np.clip(p_label, 1e-7, 1))).astype(np.float32)
        if epoch == epochs:
            loss[rng.choice(n, 50, replace=False)] = np.nan
        report = LossReport(
            task="classification",
            num_classes=classes,
            example_id=np.arange(n, dtype=np.int64),
            loss=loss,
            loss_sum=loss,
            loss_mean=loss,
            label=label,
            prediction=prediction,
            confidence=confidence,
            true_prob=p_label,
            margin=margin,
            correct=correct,
            token_accuracy=correct.astype(np.float32),
            n_tokens=np.ones(n, np.int32),
            inputs={"text": texts},
        )
        embedding = (centres[prediction] + rng.normal(0, 1.0, (n, 16))).astype(np.float16)
        writer.write_epoch(epoch, report, vectors={"embedding": embedding})
    return time.perf_counter() - started


def requests(n: int, epochs: int, rng: np.random.Generator) -> dict[str, list[dict]]:
    """Request kind -> the parameter sets of its repeats (each different)."""
    last = epochs

    def f(spec):
        return {"filter": json.dumps(spec)}

    def bounds():
        low = float(rng.uniform(0, 2))
        return [low, low + float(rng.uniform(0.1, 2))]

    def word():
        return str(rng.choice(WORDS)) + " " + str(rng.choice(WORDS))[:2]

    kinds: dict[str, object] = {
        "page offset (stored order)": lambda: {"offset": int(rng.integers(0, n - 200))},
        "page offset (sorted by loss)": lambda: {
            "sort": "loss",
            "offset": int(rng.integers(0, n - 200)),
        },
        "filter correct": lambda: {**f({"correct": bool(rng.random() < 0.5)}), "sort": "loss"},
        "filter label": lambda: f({"label": [int(rng.integers(0, 10))]}),
        "filter prediction": lambda: f({"prediction": [int(rng.integers(0, 10))]}),
        "filter ranges loss": lambda: {**f({"ranges": {"loss": bounds()}}), "sort": "loss"},
        "filter ranges confidence": lambda: f(
            {"ranges": {"confidence": [float(rng.uniform(0.5, 0.9)), None]}}
        ),
        "filter ranges margin": lambda: f(
            {"ranges": {"margin": [None, float(rng.uniform(-0.5, 0.5))]}}
        ),
        "filter ranges aum": lambda: f({"ranges": {"aum": [None, float(rng.uniform(-1, 0))]}}),
        "filter text": lambda: f({"text": word()}),
        "filter flags nonfinite": lambda: {**f({"flags": ["nonfinite"]}), "sort": "confidence"},
        "filter flags likely_mislabeled": lambda: {
            **f({"flags": ["likely_mislabeled"]}),
            "offset": int(rng.integers(0, 1000)),
        },
        "filter ids (100 ids)": lambda: f({"ids": rng.integers(0, n, 100).tolist()}),
        "filter changed": lambda: f(
            {
                "changed": {
                    "from": int(rng.integers(1, last)),
                    "to": last,
                    "kind": str(rng.choice(["fixed", "broken"])),
                }
            }
        ),
        "filter combined": lambda: {
            **f(
                {
                    "correct": False,
                    "label": [int(rng.integers(0, 10))],
                    "ranges": {"confidence": [float(rng.uniform(0.5, 0.9)), None]},
                }
            ),
            "sort": "margin",
            "order": "asc",
        },
    }
    for column in (
        "loss",
        "confidence",
        "true_prob",
        "margin",
        "correct",
        "label",
        "prediction",
        "aum",
        "variability",
        "label_text",
        "input_text",
    ):
        kinds[f"sort {column}"] = lambda c=column: {
            "sort": c,
            "order": str(rng.choice(["asc", "desc"])),
            "offset": int(rng.integers(0, 5000)),
        }
    out = {kind: [make() for _ in range(REPEAT)] for kind, make in kinds.items()}
    out["histogram"] = [
        {
            "column": str(rng.choice(["loss", "confidence", "margin", "aum"])),
            **f({"correct": bool(rng.random() < 0.5)}),
        }
        for _ in range(REPEAT)
    ]
    out["metrics"] = [f({"ranges": {"loss": bounds()}}) for _ in range(REPEAT)]
    out["map datamap"] = [
        {"kind": "datamap", **f({"label": [int(rng.integers(0, 10))]})} for _ in range(REPEAT)
    ]
    out["map embedding"] = [
        {"kind": "embedding", **f({"correct": bool(rng.random() < 0.5)})} for _ in range(REPEAT)
    ]
    out["example"] = [{"id": int(rng.integers(0, n))} for _ in range(REPEAT)]
    out["compare"] = [
        {"other": "run", "other_epoch": 1, "offset": int(rng.integers(0, 10000)), "sort": "loss"}
        for _ in range(REPEAT)
    ]
    out["why"] = [{} for _ in range(REPEAT)]
    return out


ROUTE = {
    "histogram": "histogram",
    "metrics": "metrics",
    "map datamap": "map",
    "map embedding": "map",
    "example": "example",
    "compare": "compare",
    "why": "why",
}
REPEAT = 20


def timed(board, kind: str, params: dict) -> float:
    method = getattr(board, ROUTE.get(kind, "examples"))
    started = time.perf_counter()
    body = method(params)
    json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return (time.perf_counter() - started) * 1000


def _ms(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 1)


def ablations(folder: Path, epoch: int) -> list[dict]:
    """Each optimization against the plain way, measured here, in the same run (median of 3)."""
    from keras_erranalysis.analysis._similarity import nearest
    from keras_erranalysis.dashboard import Dashboard
    from keras_erranalysis.dashboard._aggregates import _nearest
    from keras_erranalysis.dashboard._store import _as_unicode, _ascii_lower

    board = Dashboard(folder)
    view = board.catalog.view("run")
    view.cache.clear()
    rows = np.arange(1000, 1050)
    texts = np.asarray(view._stored_text("input_text", epoch))
    vectors = view.array("embedding", epoch)
    pairs = [
        (
            "first page sorted by loss: partition vs full stable argsort",
            lambda: view.first_rows("loss", epoch, True, None, 50),  # few ties: partitioned
            lambda: np.argsort(-np.asarray(view.column("loss", epoch)), kind="stable")[:50],
        ),
        (
            f"dynamics of a 50-row page over {epoch} epochs: rows only vs whole columns",
            lambda: (view.cache.clear(), view.dynamics_rows(epoch, rows)),
            lambda: (view.cache.clear(), [c[rows] for c in view.dynamics(epoch)]),
        ),
        (
            f"lower-case + encode {texts.size:,} texts for search: character codes vs np.char",
            lambda: [_ascii_lower(texts[s : s + 65536]) for s in range(0, texts.size, 65536)],
            lambda: np.char.encode(np.char.lower(_as_unicode(texts)), "utf-8"),
        ),
        (
            f"10 neighbours in {vectors.shape[0]:,} x 16 float16: cached norms vs analysis.nearest",
            lambda: _nearest(view, epoch, 123, 10),
            lambda: nearest(vectors, np.asarray(vectors[123], np.float32), 10, exclude=123),
        ),
    ]
    out = []
    for what, fast, plain in pairs:
        fast()
        out.append({"what": what, "optimized_ms": _ms(fast), "plain_ms": _ms(plain)})
        out[-1]["speedup"] = round(out[-1]["plain_ms"] / max(out[-1]["optimized_ms"], 0.1), 1)
        print(out[-1], flush=True)
    return out


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--folder", default="/tmp/ea-bench-dashboard")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the run folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dashboard.json"))
    args = parser.parse_args()
    REPEAT = args.repeat
    folder = Path(args.folder)
    run_dir = folder / "run"
    synth_seconds = None
    if not (args.keep and (run_dir / f"epoch_{args.epochs:04d}").exists()):
        shutil.rmtree(folder, ignore_errors=True)
        synth_seconds = synthesize(run_dir, args.examples, args.epochs)
        print(f"synthesized in {synth_seconds:.1f} s", flush=True)
    disk_mb = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 1e6

    from keras_erranalysis.dashboard import Dashboard

    board = Dashboard(folder)
    board.runs()
    before = memory()
    rng = np.random.default_rng(1)
    plan = requests(args.examples, args.epochs, rng)
    results = []
    last = args.epochs
    for kind, repeats in plan.items():
        base = {"run": "run", "epoch": last}
        cold = timed(board, kind, {**base, **repeats[0]})
        warm = [timed(board, kind, {**base, **p}) for p in repeats[1:]]
        row = {
            "request": kind,
            "cold_ms": round(cold, 1),
            "p50_ms": round(float(np.percentile(warm, 50)), 1),
            "p95_ms": round(float(np.percentile(warm, 95)), 1),
            "max_ms": round(float(np.max(warm)), 1),
        }
        results.append(row)
        print(row, flush=True)
    # The epoch slider: the first loss-sorted, filtered page of every epoch (all cold).
    slider = [
        timed(
            board,
            "examples",
            {"run": "run", "epoch": e, "sort": "loss", "filter": '{"correct": false}'},
        )
        for e in range(1, last + 1)
    ]
    results.append(
        {
            "request": "epoch slider: first sorted, filtered page of each epoch",
            "cold_ms": round(float(np.max(slider)), 1),
            "p50_ms": round(float(np.percentile(slider, 50)), 1),
            "p95_ms": round(float(np.percentile(slider, 95)), 1),
            "max_ms": round(float(np.max(slider)), 1),
        }
    )
    print(results[-1], flush=True)
    after = memory()
    compared = ablations(folder, last)
    warm_p95 = max(r["p95_ms"] for r in results)
    out = {
        "examples": args.examples,
        "epochs": args.epochs,
        "repeat": args.repeat,
        "run_folder_mb": round(disk_mb, 1),
        "synthesize_seconds": None if synth_seconds is None else round(synth_seconds, 1),
        "rss_before_mb": round(before["VmRSS"], 1),
        "rss_after_mb": round(after["VmRSS"], 1),
        "rss_peak_mb": round(after["VmHWM"], 1),
        "anon_before_mb": round(before["RssAnon"], 1),
        "anon_after_mb": round(after["RssAnon"], 1),
        "anon_growth_mb": round(after["RssAnon"] - before["RssAnon"], 1),
        "file_backed_after_mb": round(after["RssFile"], 1),
        "cache_mb": round(board.cache.bytes / 2**20, 1),
        "cache_entries": len(board.cache),
        "worst_warm_p95_ms": warm_p95,
        "goal_ms": GOAL_MS,
        "goal_mb": GOAL_MB,
        "requests": results,
        "ablations": compared,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "requests"}, indent=1))
    print("\n| request | cold ms | p50 ms | p95 ms |\n|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['request']} | {r['cold_ms']} | {r['p50_ms']} | {r['p95_ms']} |")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
