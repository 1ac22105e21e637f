"""Run folders for the dashboard's browser test and screenshots: hostile texts, classes,
several epochs, embeddings (for the map and neighbours), and a token-level sequence run."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from _presentation import CLASSES, HOSTILE, classification_report, make_run

from keras_erranalysis.run._writer import RunWriter

RTL = "abc \u202e reversed and overridden \u202c def"
LONG = "long " + "x" * 100_000  # a 100 kB cell
CELL_BREAK = "</td></tr></table><b id='injected'>out of the table</b>"
TEXTS = [*HOSTILE, RTL, LONG, CELL_BREAK]


def classification_run(path: Path, *, epochs: int = 3, n: int = 60, seed: int = 0) -> None:
    """A classification run whose first inputs are hostile; embeddings cluster by label."""
    rng = np.random.default_rng(seed)
    writer = RunWriter(path, decoding={"label_names": CLASSES})
    centres = rng.normal(0, 4, (len(CLASSES), 8))
    for epoch in range(1, epochs + 1):
        report = classification_report(n, seed=epoch)
        report.loss = (report.loss / epoch).astype(np.float32)
        texts = [TEXTS[i] if i < len(TEXTS) else f"example text {i}" for i in range(n)]
        report.inputs = {"text": np.array(texts)}
        embedding = centres[report.label] + rng.normal(0, 1, (n, 8))
        tables = {
            "per_class": pd.DataFrame(
                {"class": CLASSES, "error_rate": [0.1, 0.5, 0.25], "note": HOSTILE[:3]}
            ),
            "features": pd.DataFrame(
                {"feature": ["length", "has <script>"], "p_value": [0.01, 0.5]}
            ),
        }
        writer.write_epoch(
            epoch, report, tables=tables, vectors={"embedding": embedding.astype(np.float32)}
        )


def tiny_png(width: int, height: int) -> bytes:
    """A grey gradient PNG (a stand-in heatmap), written with zlib only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + bytes(40 * (x + y) % 256 for x in range(width)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def dashboard_logdir(root: Path) -> Path:
    """Two runs: `classes` (hostile texts) and `tokens` (a sequence task, one heatmap)."""
    logdir = root / "logdir"
    classification_run(logdir / "classes")
    heatmap = {2: {"example1_attention.png": tiny_png(6, 4)}}
    make_run(logdir / "tokens", epochs=2, n=6, sequence=True, files=heatmap)
    return logdir


def serve(logdir: Path, *, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Starts `keras-erranalysis serve LOGDIR --port 0` (real TensorBoard): process, URL."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    process = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed module)
        [sys.executable, "-m", "keras_erranalysis.cli", "serve", str(logdir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"(http://[^\s#]+)", line)
        if match:
            return process, match.group(1).rstrip("/")
    process.kill()
    raise RuntimeError("keras-erranalysis serve printed no URL:\n" + "".join(seen[-30:]))
