"""What a user waits for in the dashboard: each step timed in headless Chromium, end to end.

Builds a synthetic classification run (N examples, 3 epochs, 10 classes, 16-d embeddings; no
training), serves it with ``keras-erranalysis serve`` (real TensorBoard) and times, from the
user's action to the last request answered and drawn: the first rows, filtering to the wrong
examples, sorting by loss, the next page, opening an example, the metrics, the data map (20,000
sampled points and the density of all rows), a box selection on it, and the epoch slider.
Median of --repeat rounds. The server's own times are in ``bench_dashboard.py``.

Run:  flock /tmp/ea-heavy.lock python benchmarks/bench_dashboard_browser.py [--examples 100000]
Writes benchmarks/results/dashboard_browser.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RESULTS = Path(__file__).resolve().parent / "results" / "dashboard_browser.json"
SET_VALUE = """(() => { const node = document.querySelector(%s); node.value = %s;
node.dispatchEvent(new Event('change', {bubbles: true})); return true; })()"""
PLOT_BOX = """(() => { const layer = document.querySelector('svg.scatter-layer');
const r = layer.getBoundingClientRect(); const p = layer.dataset.plot.split(',').map(Number);
return [r.left + p[0], r.top + p[1], r.left + p[2], r.top + p[3]]; })()"""


def synthetic_run(folder: Path, n: int) -> None:
    from _presentation import classification_report

    from keras_erranalysis.run._writer import RunWriter

    rng = np.random.default_rng(0)
    writer = RunWriter(folder, decoding={"label_names": [f"class {i}" for i in range(10)]})
    texts = np.array([f"text {i}" for i in range(n)])
    for epoch in (1, 2, 3):
        report = classification_report(n, seed=epoch, num_classes=10)
        report.inputs = {"text": texts}
        vectors = {"embedding": rng.normal(size=(n, 16)).astype(np.float32)}
        writer.write_epoch(epoch, report, vectors=vectors)


def timed(page, action) -> float:
    start = time.perf_counter()
    action()
    page.settle(timeout=120)
    return time.perf_counter() - start


def one_round(page, url: str) -> dict[str, float]:
    out = {}

    def load():
        page.goto(f"{url}/data/plugin_entry.html?name=erranalysis")
        page.wait("!!document.querySelector('table.rows tbody tr')", timeout=120)

    out["first rows (page load)"] = timed(page, load)
    out["filter: wrong only"] = timed(
        page, lambda: page.evaluate(SET_VALUE % ('"select[name=correct]"', '"false"'))
    )
    out["sort by loss"] = timed(
        page, lambda: page.click("section[data-view=examples] th[data-column=loss]")
    )
    out["next page"] = timed(
        page, lambda: page.click("section[data-view=examples] .pager button:nth-child(3)")
    )
    out["open an example"] = timed(
        page, lambda: page.click("section[data-view=examples] table.rows tbody tr")
    )
    out["metrics"] = timed(page, lambda: page.click("button[data-tab=metrics]"))
    out["data map (<= 20k points + density)"] = timed(
        page, lambda: page.click("button[data-tab=maps]")
    )
    left, top, right, bottom = page.evaluate(PLOT_BOX)

    def select():
        page.drag(
            (left + 0.3 * (right - left), top + 0.3 * (bottom - top)),
            (left + 0.5 * (right - left), top + 0.5 * (bottom - top)),
        )

    out["box selection -> rows"] = timed(page, select)
    out["selected rows"] = int(
        page.evaluate("document.getElementById('examples-summary').dataset.total")
    )

    def slide():
        page.evaluate("document.getElementById('epoch-slider').focus()")
        page.key("ArrowLeft", 37)

    out["epoch slider"] = timed(page, slide)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from _cdp import Browser
    from _dashboard import serve

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        synthetic_run(work / "logdir" / "synthetic", args.examples)
        process, url = serve(work / "logdir")
        browser = Browser(work / "profile")
        try:
            page = browser.page()
            # The first round meets cold server caches (sort orders, masks, the map's sample);
            # later rounds repeat the same requests, as a user going back and forth does.
            first, *rounds = [one_round(page, url) for _ in range(args.repeat + 1)]
            problems = [p for p in page.problems() if not p.rstrip().endswith("/favicon.ico")]
        finally:
            browser.close()
            process.kill()
            process.wait(timeout=10)
    steps = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result = {
        "examples": args.examples,
        "epochs": 3,
        "repeat": args.repeat,
        "first_round_seconds": first,
        "median_seconds": steps,
        "console_problems": problems,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| step ({args.examples:,} examples) | first time, s "
        f"| again (median of {args.repeat}), s |"
    )
    print("|---|---|---|")
    for key, value in steps.items():
        if key == "selected rows":
            print(f"| {key} | {first[key]:.0f} | {value:.0f} |")
        else:
            print(f"| {key} | {first[key]:.2f} | {value:.2f} |")


if __name__ == "__main__":
    main()
