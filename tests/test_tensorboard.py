import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _presentation import HOSTILE, classification_report, make_run, sequence_report

from keras_erranalysis import EmbeddingAnalysis
from keras_erranalysis.present._tensorboard import (
    SummaryWriter,
    log_epoch,
    projector_metadata,
    report_scalars,
    write_projector,
)
from keras_erranalysis.present._text import markdown_cell, markdown_table
from keras_erranalysis.run._reader import load_run


class _Cells(HTMLParser):
    """Collects the rows of every table and any tag names seen."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self._cell = [], set(), None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(html_text):
    parser = _Cells()
    parser.feed(html_text)
    return parser


def _tensors(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _value(acc, tag, step=None):
    import tensorflow as tf

    events = acc.Tensors(tag)
    event = events[-1] if step is None else next(e for e in events if e.step == step)
    return tf.make_ndarray(event.tensor_proto)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TensorBoard's vendored bleach
def test_markdown_table_keeps_hostile_text_literal_in_tensorboard_renderer():
    from tensorboard.plugin_util import markdown_to_safe_html

    frame = pd.DataFrame({"rank": range(1, len(HOSTILE) + 1), "input_text": HOSTILE})
    rendered = markdown_to_safe_html(markdown_table(frame))
    parsed = _parse(rendered)
    assert parsed.tags <= {"table", "thead", "tbody", "tr", "th", "td"}  # no a, img, code, script
    assert parsed.rows[0] == ["rank", "input_text"]
    assert len(parsed.rows) == len(HOSTILE) + 1
    for text, row in zip(HOSTILE, parsed.rows[1:]):
        assert len(row) == 2  # a "|" did not split the cell
        expected = text.replace("\r\n", " \u21b5 ").replace("\n", " \u21b5 ").replace("\t", " ")
        assert row[1] == expected


def test_markdown_cell_numbers_and_length():
    assert markdown_cell(0.123456) == "0.1235"
    assert markdown_cell(True) == "yes"
    assert markdown_cell(float("nan")) == "nan"
    assert markdown_cell("x" * 50, max_chars=10) == "x" * 9 + "\u2026"


def test_writers_are_lazy_and_subsets_kept_apart(tmp_path):
    writer = SummaryWriter(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()  # nothing written, no event file
    writer.scalars({"only_train": 1.5}, step=1, subset="train")
    writer.log_report(classification_report(8), step=1)
    writer.close()
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["train", "validation"]
    train, validation = _tensors(tmp_path / "tb/train"), _tensors(tmp_path / "tb/validation")
    assert train.Tags()["tensors"] == ["erranalysis/only_train"]
    assert "erranalysis/only_train" not in validation.Tags()["tensors"]
    with pytest.raises(ValueError, match="plain folder name"):
        writer.scalars({"x": 1.0}, step=1, subset="../escape")


def test_event_files_hold_the_report_numbers_text_and_image(tmp_path):
    import matplotlib.pyplot as plt
    import tensorflow as tf

    report = classification_report(10)
    report.loss[:4] = [9.0, 1.0, 4.0, np.nan]  # the <script> example (row 0) is shown
    loss = report.loss.astype(np.float64)
    frame = report.to_frame(label_names=["cat", "dog|<b>", "x\ny"])
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1], [1, 0])
    with SummaryWriter(tmp_path) as writer:
        written = writer.log_report(
            report, 7, frame=frame, k=5, likely_mislabeled=3, figures={"heatmap": fig}
        )
    acc = _tensors(tmp_path / "validation")
    finite = loss[np.isfinite(loss)]
    expected = {
        "loss_mean": finite.mean(),
        "loss_median": np.median(finite),
        "error_rate": 1 - report.correct.mean(),
        "nonfinite_losses": 1.0,
        "likely_mislabeled": 3.0,
    }
    assert written == pytest.approx(expected)
    for name, value in expected.items():
        assert float(_value(acc, f"erranalysis/{name}", 7)) == pytest.approx(value, rel=1e-6)
    assert "erranalysis/exact_match_rate" not in acc.Tags()["tensors"]  # classifier
    histogram = _value(acc, "erranalysis/loss")
    assert histogram.shape[1] == 3 and histogram[:, 2].sum() == pytest.approx(9)  # NaN left out
    text = _value(acc, "erranalysis/hardest").item().decode()
    lines = text.split("\n")
    assert lines[0].startswith("**5 hardest examples by loss** (epoch 7)")
    table = lines[2:]
    separators = [len(re.findall(r"(?<!\\)\|", line)) for line in table]  # unescaped pipes
    assert len(table) == 2 + 5 and separators == [separators[0]] * 7
    assert "<script>" not in text and "&lt;script&gt;" in text and "dog\\|&lt;b&gt;" in text
    image = _value(acc, "erranalysis/heatmap")
    width, height = int(image[0]), int(image[1])
    decoded = tf.io.decode_png(image[2]).numpy()
    assert decoded.shape[:2] == (height, width) and width > 50 and height > 40


def test_sequence_scalars_are_exact_match_and_token_accuracy(tmp_path):
    report = sequence_report(6)
    values = report_scalars(report)
    assert values["exact_match_rate"] == pytest.approx(4 / 6)  # rows 1 and 3 have a wrong token
    assert values["error_rate"] == pytest.approx(2 / 6)
    assert values["token_accuracy"] == pytest.approx(float(report.token_accuracy.mean()))


def test_projector_files_load_and_replace_older_epochs(tmp_path):
    import tensorflow as tf

    metadata = pd.DataFrame({"example_id": [1, 2, 3], "input_text": ["a\tb", "c\nd", "<e>|"]})
    first = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_projector(tmp_path, first, metadata, step=1)
    second = first[:, :2] * 2
    config = write_projector(tmp_path, second, metadata, step=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint",
        "projector-0002.data-00000-of-00001",
        "projector-0002.index",
        "projector_config.pbtxt",
        "projector_metadata-0002.tsv",
    ]
    text = config.read_text()
    assert 'tensor_name: "epoch_0002/.ATTRIBUTES/VARIABLE_VALUE"' in text
    assert 'metadata_path: "projector_metadata-0002.tsv"' in text
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
    np.testing.assert_array_equal(
        reader.get_tensor("epoch_0002/.ATTRIBUTES/VARIABLE_VALUE"), second
    )
    rows = (tmp_path / "projector_metadata-0002.tsv").read_text().split("\n")
    assert rows[-1] == "" and len(rows) == 5  # header + 3 rows + final newline
    assert [r.count("\t") for r in rows[:-1]] == [1, 1, 1, 1]
    assert rows[1:4] == ["1\ta b", "2\tc \u21b5 d", "3\t<e>|"]
    with pytest.raises(ValueError, match="rows"):
        write_projector(tmp_path, first[:2], metadata, step=3)
    other = tmp_path / "model_dir"
    other.mkdir()
    (other / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    with pytest.raises(FileExistsError, match="other checkpoints"):
        write_projector(other, first, metadata, step=1)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def test_real_tensorboard_server_serves_our_summaries_and_projector(tmp_path):
    import matplotlib.pyplot as plt

    report = classification_report(6)
    frame = report.to_frame(label_names=["cat", "dog", "bird"])
    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.plot([0, 1], [0, 1])
    logdir = tmp_path / "tb"
    with SummaryWriter(logdir) as writer:
        writer.log_report(report, 1, frame=frame, figures={"data_map": fig})
        vectors = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
        writer.projector(vectors, projector_metadata(frame), step=1)
    binary = Path(sys.executable).with_name("tensorboard")
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "tensorboard.main"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [*command, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        deadline = time.monotonic() + 60
        tags = {}
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                json.loads(_get(f"{base}/data/plugins_listing", timeout=1))
                tags = json.loads(_get(f"{base}/data/plugin/scalars/tags", timeout=2))
                if tags.get("validation"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert tags.get("validation"), "tensorboard did not come up with our data in 60 s"
        assert json.loads(_get(f"{base}/data/runs")) == ["validation"]
        assert {"erranalysis/loss_mean", "erranalysis/error_rate"} <= set(tags["validation"])
        scalars = json.loads(
            _get(f"{base}/data/plugin/scalars/scalars?run=validation&tag=erranalysis/loss_mean")
        )
        assert scalars[0][1] == 1 and scalars[0][2] == pytest.approx(float(report.loss.mean()))
        texts = json.loads(
            _get(f"{base}/data/plugin/text/text?run=validation&tag=erranalysis/hardest")
        )
        shown = texts[0]["text"]
        assert "<script>" not in shown and "&lt;script&gt;window.__pwned = 1;" in shown
        assert shown.count("<tr>") == 1 + 6
        images = json.loads(_get(f"{base}/data/plugin/images/tags"))
        assert "erranalysis/data_map" in images["validation"]
        assert json.loads(_get(f"{base}/data/plugin/projector/runs")) == ["validation"]
        info = json.loads(_get(f"{base}/data/plugin/projector/info?run=validation"))
        name = info["embeddings"][0]["tensorName"]
        assert name == "epoch_0001/.ATTRIBUTES/VARIABLE_VALUE"
        assert [int(v) for v in info["embeddings"][0]["tensorShape"]] == [6, 3]
        raw = _get(f"{base}/data/plugin/projector/tensor?run=validation&name={name}")
        np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(6, 3), vectors)
        meta = _get(f"{base}/data/plugin/projector/metadata?run=validation&name={name}")
        lines = meta.decode().strip("\n").split("\n")
        assert lines[0].split("\t")[:2] == ["example_id", "input_text"] and len(lines) == 7
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def test_log_epoch_adds_mislabeled_count_regions_and_data_map(tmp_path):
    make_run(tmp_path / "run", epochs=2, n=12, tables=False)
    run = load_run(tmp_path / "run")
    report = run.report(2)
    vectors = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    writer = SummaryWriter(tmp_path / "tb")
    values = log_epoch(writer, 2, report, frame=run.frame(2), run=run, vectors=vectors)
    writer.close()
    flagged = len(run.likely_mislabeled())
    assert values["likely_mislabeled"] == flagged
    acc = _tensors(tmp_path / "tb/validation")
    assert float(_value(acc, "erranalysis/likely_mislabeled")) == flagged
    assert "erranalysis/data_map" in acc.Tags()["tensors"]
    tsv = (tmp_path / "tb/validation/projector_metadata-0002.tsv").read_text().split("\n")
    header = tsv[0].split("\t")
    regions = run.dynamics()["region"].tolist()
    assert header[-1] == "region" and [r.split("\t")[-1] for r in tsv[1:13]] == regions


def _fit_with_summaries(log_dir, *, seed):
    """Two epochs of a small classifier with ErrorAnalysis(tensorboard=True, embeddings)."""
    import keras

    from keras_erranalysis import ErrorAnalysis

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ErrorAnalysis(
        (x[:32], y[:32]),
        log_dir=log_dir,
        tensorboard=True,
        verbose=0,
        analyses=[EmbeddingAnalysis()],
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    return callback


def test_callback_writes_summaries_and_projector(tmp_path):

    callback = _fit_with_summaries(tmp_path / "run", seed=0)
    assert callback._summaries is None  # closed at train end
    run = load_run(tmp_path / "run")
    folder = tmp_path / "run/tensorboard/validation"
    assert sorted(p.name for p in (tmp_path / "run/tensorboard").iterdir()) == ["validation"]
    acc = _tensors(folder)
    for epoch in (1, 2):  # at Keras' 0-based step, as its own epoch_* scalars
        loss = np.asarray(run.array("loss", epoch), np.float64)
        got = float(_value(acc, "erranalysis/loss_mean", epoch - 1))
        assert got == pytest.approx(loss.mean())
    assert run.array("embedding", 2).shape == (32, 6)
    assert (folder / "projector_metadata-0002.tsv").exists()
    assert not (folder / "projector_metadata-0001.tsv").exists()


def test_tensorboard_verb_exports_a_finished_run_like_the_callback(tmp_path, capsys):

    from keras_erranalysis.cli import main

    _fit_with_summaries(tmp_path / "run", seed=1)
    assert main(["tensorboard", str(tmp_path / "run"), "-o", str(tmp_path / "later")]) == 0
    assert "epochs [1, 2]" in capsys.readouterr().out
    live = _tensors(tmp_path / "run/tensorboard/validation")
    later = _tensors(tmp_path / "later/validation")
    assert set(later.Tags()["tensors"]) == set(live.Tags()["tensors"])
    assert "erranalysis/hardest" in later.Tags()["tensors"]
    run = load_run(tmp_path / "run")
    for epoch in (1, 2):
        loss = np.asarray(run.array("loss", epoch), np.float64)
        got = float(_value(later, "erranalysis/loss_mean", epoch - 1))
        assert got == pytest.approx(loss.mean())
        assert got == pytest.approx(float(_value(live, "erranalysis/loss_mean", epoch - 1)))
    assert (tmp_path / "later/validation/projector_metadata-0002.tsv").exists()
    # a folder that is not a run is one line, exit status 1
    assert main(["tensorboard", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_steps_line_up_with_keras_own_epoch_scalars(tmp_path):
    import keras

    from keras_erranalysis import ErrorAnalysis

    rng = np.random.default_rng(2)
    x = rng.normal(size=(48, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tb = tmp_path / "tb"
    callbacks = [
        keras.callbacks.TensorBoard(str(tb), write_graph=False),
        ErrorAnalysis((x[:16], y[:16]), log_dir=tmp_path / "run", tensorboard=tb, verbose=0),
    ]
    model.fit(x, y, validation_data=(x[:16], y[:16]), epochs=3, verbose=0, callbacks=callbacks)
    acc = _tensors(tb / "validation")
    keras_steps = sorted(e.step for e in acc.Tensors("epoch_loss"))
    ours = sorted(e.step for e in acc.Tensors("erranalysis/loss_mean"))
    assert keras_steps == ours == [0, 1, 2]
    text = _value(acc, "erranalysis/hardest", 0).item().decode()
    assert "(epoch 1)" in text  # the text names the run's epoch


def test_feature_summary_is_a_markdown_list_and_the_data_map_is_readable(tmp_path):
    import tensorflow as tf

    from keras_erranalysis.analysis import compare_features, features_summary
    from keras_erranalysis.pipeline import export_tensorboard
    from keras_erranalysis.run._writer import RunWriter

    writer = RunWriter(tmp_path / "run")
    rng = np.random.default_rng(0)
    texts = [" ".join(["w"] * int(n)) for n in rng.integers(1, 30, 60)]
    for epoch in (1, 2):
        report = classification_report(60, seed=epoch)
        report.correct = np.array([len(t) < 30 for t in texts])
        features = compare_features(report.correct, texts, pos=False)
        writer.write_epoch(epoch, report, tables={"features": features})
    export_tensorboard(tmp_path / "run", tmp_path / "tb")
    acc = _tensors(tmp_path / "tb/validation")
    run = load_run(tmp_path / "run")

    lines = features_summary(run.table("features", 2)).splitlines()
    assert len(lines) >= 2
    text = _value(acc, "erranalysis/feature_summary", 1).item().decode()
    assert "\u21b5" not in text
    # one bullet per line: the summary's own "- " is not kept as an escaped dash
    assert all(line.startswith("- ") for line in lines)
    assert text.splitlines() == [f"- {markdown_cell(line[2:])}" for line in lines]
    assert "\\-" not in text.split("\n")[0][:4]
    image = _value(acc, "erranalysis/data_map", 1)
    width = int(image[0])
    assert tf.io.decode_png(image[2]).shape[1] == width >= 900


def test_data_health_summary_is_one_text_at_the_first_epoch(tmp_path):
    from keras_erranalysis.analysis import Split, health_checks
    from keras_erranalysis.pipeline import export_tensorboard
    from keras_erranalysis.run._writer import RunWriter

    health = health_checks(
        {
            "train": Split(texts=[*HOSTILE, HOSTILE[1]], y=[0, 1, 2, 0, 1, 2, 0, 1, 0]),
            "validation": Split(texts=[HOSTILE[0], "new"], y=[0, 1]),
        }
    )
    writer = RunWriter(tmp_path / "run")
    writer.write_epoch(1, classification_report(12, seed=1), tables=health.tables())
    writer.write_epoch(2, classification_report(12, seed=2))
    export_tensorboard(tmp_path / "run", tmp_path / "tb")
    acc = _tensors(tmp_path / "tb/validation")
    events = acc.Tensors("erranalysis/data_health")
    assert [e.step for e in events] == [0]  # once, at the first epoch's step
    text = _value(acc, "erranalysis/data_health", 0).item().decode()
    assert text.splitlines() == [f"- {markdown_cell(line)}" for line in health.summary]
    leak = "1 validation inputs also in training (50.0%; 1 exact, 0 near)"
    assert f"- {markdown_cell(leak)}" in text.splitlines()


def test_callback_writes_the_data_health_summary(tmp_path):
    import keras

    from keras_erranalysis import ErrorAnalysis, PassOptions
    from keras_erranalysis.options import DataHealth

    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for log_dir in (tmp_path / "run", None):  # with a run folder, and without one
        tb = tmp_path / ("tb" if log_dir else "tb-no-run")
        callback = ErrorAnalysis(
            (x[:16], y[:16]),
            log_dir=log_dir,
            tensorboard=tb,
            analyses=[DataHealth(train=(x, y))],
            pass_options=PassOptions(jit_compile=False),
            verbose=0,
        )
        model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
        acc = _tensors(tb / "validation")
        events = acc.Tensors("erranalysis/data_health")
        assert [e.step for e in events] == [0]
        text = _value(acc, "erranalysis/data_health", 0).item().decode()
        leak = "16 validation inputs also in training (100.0%; 16 exact, 0 near)"
        assert f"- {markdown_cell(leak)}" in text.splitlines()


def test_generation_scalars_per_epoch_and_generated_text_in_the_hardest_table(tmp_path):
    from _presentation import generation_run

    from keras_erranalysis.pipeline import export_tensorboard

    generation_run(tmp_path / "run", epochs=2, n=12)
    export_tensorboard(tmp_path / "run", tmp_path / "tb")
    acc = _tensors(tmp_path / "tb/validation")
    run = load_run(tmp_path / "run")
    names = {
        "corpus_bleu": "generated_corpus_bleu",
        "chrf": "generated_chrf",
        "rouge_l": "generated_rouge_l",
        "exact_match": "generated_exact_match",
        "exposure_gap": "exposure_gap_rate",
    }
    for column, name in names.items():
        for epoch in (1, 2):
            expected = run.table("generation", epoch)[column][0]
            assert float(_value(acc, f"erranalysis/{name}", epoch - 1)) == pytest.approx(expected)
    text = _value(acc, "erranalysis/hardest", 1).item().decode()

    def cells(line):  # a markdown row; "\|" inside a cell is an escaped bar
        return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]

    header = [name.replace("\\_", "_") for name in cells(text.splitlines()[2])]
    assert header.index("prediction_text") + 1 == header.index("generated_text")  # side by side
    frame = run.frame(2).set_index("example_id")
    for line in text.splitlines()[4:]:
        row = cells(line)
        example = int(row[header.index("example_id")])
        shown = row[header.index("generated_text")]
        assert shown == markdown_cell(frame.loc[example, "generated_text"]).strip()
