import base64
import html
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from _presentation import CLASSES, HOSTILE, classification_report, make_run

from keras_erranalysis.analysis import rank_examples
from keras_erranalysis.present import _report as report_module
from keras_erranalysis.present._report import compare_runs, write_report
from keras_erranalysis.run._files import RunFormatError
from keras_erranalysis.run._reader import load_run
from keras_erranalysis.run._writer import RunWriter

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
SAFE_ATTRIBUTES = {
    "lang", "charset", "http-equiv", "content", "name", "id", "class", "value", "selected",
    "data-type", "tabindex", "scope", "data-i", "data-v", "data-correct", "data-class",
    "data-epoch", "data-hidden", "data-table", "data-filter", "type", "placeholder",
    "aria-live", "alt", "src",
}  # fmt: skip


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.scripts, self._in_script = [], [], [], False
        self.tables, self._table, self._row, self._cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        attributes = dict(attrs)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "table":
            self._table = self.tables.setdefault(attributes.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": attributes, "cells": []}
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row["cells"].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif self._cell is not None:
            self._cell += data


def _page(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture()
def hostile_run(tmp_path):
    make_run(tmp_path / "run", epochs=2, n=12, files={2: {"attention_hard.png": PNG}})
    (tmp_path / "run/heatmaps").mkdir()
    (tmp_path / 'run/heatmaps/watch "list".png').write_bytes(PNG)
    (tmp_path / "run/heatmaps/attention_<b>hard<i>.png").write_bytes(PNG)
    return tmp_path / "run"


def test_report_is_self_contained_and_hostile_text_stays_text(hostile_run, tmp_path):
    out = write_report(hostile_run, tmp_path / "out/report.html")
    text = out.read_bytes().decode("utf-8")
    page = _page(out)
    assert page.tags.count("script") == 1 and page.scripts[0] == report_module._SCRIPT
    names = {name for name, _ in page.attrs}
    assert names <= SAFE_ATTRIBUTES, names - SAFE_ATTRIBUTES  # no onerror=, href=, style=
    assert not {"link", "iframe", "object", "embed", "a", "base", "form"} & set(page.tags)
    sources = [value for name, value in page.attrs if name == "src"]
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    rows = page.tables["hardest-2"][1:]
    shown = {row["cells"][-1].replace("\r\n", "\n") for row in rows}
    for hostile in HOSTILE:
        assert hostile.replace("\r\n", "\n") in shown  # visible text = the string (HTML: CRLF->LF)
        assert html.escape(hostile) in text
    assert "window.__pwned" not in page.scripts[0]


def test_hardest_table_rows_filters_and_other_tables(hostile_run, tmp_path):
    out = write_report(hostile_run, tmp_path / "report.html", k=5)
    page = _page(out)
    run = load_run(hostile_run)
    for epoch in (1, 2):
        expected = rank_examples(run.frame(epoch), by="loss", k=5)
        table = page.tables[f"hardest-{epoch}"]
        header = table[0]["cells"]
        assert header[:3] == ["rank", "example_id", "loss"] and "token_accuracy" not in header
        ids = [int(row["cells"][1]) for row in table[1:]]
        assert ids == expected["example_id"].tolist()
        for row, (_, truth) in zip(table[1:], expected.iterrows()):
            assert row["attrs"]["data-correct"] == ("yes" if truth["correct"] else "no")
            assert row["attrs"]["data-class"] == truth["label_text"]  # raw text, for the filter
            assert float(row["cells"][2]) == pytest.approx(truth["loss"], rel=1e-3)
    per_class = page.tables["per_class-2"]
    assert [r["cells"][0] for r in per_class[1:]] == CLASSES
    assert per_class[1]["cells"][2] == HOSTILE[0]
    assert [r["cells"][0] for r in page.tables["features-1"][1:]] == ["length", "has <script>"]
    epochs = page.tables["epochs"]
    assert [r["cells"][0] for r in epochs[1:]] == ["1", "2"]
    text = out.read_text(encoding="utf-8")
    assert re.search(r'<section class="epoch" data-epoch="1" data-hidden>', text)
    assert re.search(r'<section class="epoch" data-epoch="2">', text)
    # loss curve, data map, trajectories, the two heatmaps-folder PNGs, the epoch-2 PNG
    assert len([s for n, s in page.attrs if n == "src"]) == 6
    assert "attention_hard.png" in text
    assert "attention_&lt;b&gt;hard&lt;i&gt;.png" in text
    assert "watch &quot;list&quot;.png" in text
    flagged = len(run.likely_mislabeled())
    assert f"Likely mislabeled: {flagged} flagged by aum" in text
    assert len(page.tables["mislabeled"]) == 1 + min(max(flagged, 10), 20)
    # The flagged rows come first, in the order of run.likely_mislabeled().
    assert flagged >= 1
    shown = [r["cells"][0] for r in page.tables["mislabeled"][1:]]
    expected = [str(i) for i in run.likely_mislabeled().index[:20]]
    assert shown[: len(expected)] == expected


def test_sequence_run_report_has_token_columns_and_no_class_filter(tmp_path):
    make_run(tmp_path / "run", epochs=1, n=6, sequence=True, tables=False)
    page = _page(write_report(tmp_path / "run", tmp_path / "r.html"))
    header = page.tables["hardest-1"][0]["cells"]
    assert "token_accuracy" in header and "n_tokens" in header
    assert all("data-class" not in r["attrs"] for r in page.tables["hardest-1"][1:])
    label_texts = [r["cells"][header.index("label_text")] for r in page.tables["hardest-1"][1:]]
    assert any("<c>" in t or "d|" in t for t in label_texts)  # decoded with the stored vocab


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(RunFormatError, match="does not exist"):
        write_report(tmp_path / "missing", tmp_path / "r.html")
    RunWriter(tmp_path / "empty")
    with pytest.raises(RunFormatError, match="no complete epoch"):
        write_report(tmp_path / "empty", tmp_path / "r.html")
    make_run(tmp_path / "run", epochs=1, tables=False)
    with pytest.raises(KeyError, match="No epoch 9"):
        write_report(tmp_path / "run", tmp_path / "r.html", epochs=[9])


def test_compare_runs_finds_fixed_and_broken_examples(tmp_path):
    before = classification_report(6)
    before.correct[:] = [True, False, True, False, True, True]
    before.loss[:] = [0.1, 2.0, 0.2, 3.0, 0.3, 0.4]
    after = classification_report(6)
    after.correct[:] = [False, True, True, False, True, True]
    after.loss[:] = [1.5, 0.2, 0.2, 2.0, 0.3, 0.4]
    for name, report in (("a", before), ("b", after)):
        RunWriter(tmp_path / name).write_epoch(1, report)
    table = compare_runs(tmp_path / "a", tmp_path / "b")
    assert table["example_id"].tolist()[:2] == [101, 103]  # most improved first
    assert table.iloc[-1]["example_id"] == 100 and table.iloc[-1]["change"] == "broken"
    changes = dict(zip(table["example_id"], table["change"]))
    assert changes[101] == "fixed" and changes[100] == "broken" and changes[103] == "same"
    np.testing.assert_allclose(table["loss_change"], np.sort(after.loss - before.loss))
    assert table.attrs["only_a"] == 0 and table.attrs["only_b"] == 0


def test_a_huge_token_does_not_blow_up_the_report(tmp_path):
    token = "x" * 100_000
    report = classification_report(300)
    report.inputs = {"text": np.array([f"{token} example {i}" for i in range(300)])}
    RunWriter(tmp_path / "run", decoding={"label_names": ["a", "b", "c"]}).write_epoch(
        1, report, tables={"features": pd.DataFrame({"feature": [token], "p_value": [0.1]})}
    )
    out = write_report(tmp_path / "run", tmp_path / "r.html", k=300)
    size = out.stat().st_size
    assert size < 3e6, size  # was 35 MB
    page = _page(out)
    assert {"details", "summary"} <= set(page.tags)
    text = out.read_text(encoding="utf-8")
    assert re.search(r"100,0\d\d characters", text)
    assert "the run folder has it all" in text


def test_long_cells_stay_text_inside_details(tmp_path):
    hostile = "<script>window.__pwned=1</script>" * 20
    report = classification_report(3)
    report.inputs = {"text": np.array([hostile, "short", "short"])}
    RunWriter(tmp_path / "run", decoding={"label_names": ["a", "b", "c"]}).write_epoch(1, report)
    out = write_report(tmp_path / "run", tmp_path / "r.html")
    page = _page(out)
    assert page.tags.count("script") == 1
    row = next(r for r in page.tables["hardest-1"][1:] if "pwned" in r["cells"][-1])
    assert row["cells"][-1].replace("\u2026 (660 characters)", "") == hostile


def test_one_corrupt_table_does_not_abort_the_report(tmp_path):
    make_run(tmp_path / "run", epochs=2, n=12)
    (tmp_path / "run/epoch_0002/per_class.csv").write_text("garbage,\n\x00\x01")
    out = write_report(tmp_path / "run", tmp_path / "r.html")
    page = _page(out)
    text = out.read_text(encoding="utf-8")
    assert "Cannot show table &#x27;per_class&#x27;" in text and "per_class.csv" in text
    assert "hardest-2" in page.tables and "features-2" in page.tables  # the rest is shown
    assert "per_class-1" in page.tables


def test_a_corrupt_epoch_is_named_and_the_others_shown(tmp_path):
    make_run(tmp_path / "run", epochs=2, n=12, tables=False)
    (tmp_path / "run/epoch_0001/loss.npy").write_bytes(b"\x93NUMPY garbage")
    out = write_report(tmp_path / "run", tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "Cannot show epoch 1" in text and "loss.npy" in text
    assert "hardest-2" in _page(out).tables


def _health_run(path, *, summary_table=True):
    """Two epochs; the first holds the data-health tables of hostile texts (one leaked)."""
    from keras_erranalysis.analysis import Split, health_checks

    long_text = "<b>long</b> " * 40  # 480 characters: cut like any long cell
    train = [*HOSTILE, long_text, long_text, "", "plain words here"]
    health = health_checks(
        {
            "train": Split(
                texts=train, y=[0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0], predictions=[0] * 12
            ),
            "validation": Split(texts=[HOSTILE[0], "new text"], y=[0, 1], predictions=[0, 0]),
        },
        label_names=CLASSES,
    )
    tables = health.tables()
    if not summary_table:
        del tables["health_summary"]
    writer = RunWriter(path, decoding={"label_names": CLASSES})
    writer.write_epoch(1, classification_report(12, seed=1), tables=tables)
    writer.write_epoch(2, classification_report(12, seed=2))
    return health


def test_data_health_section_shows_summaries_balance_and_escaped_issues(tmp_path):
    health = _health_run(tmp_path / "run")
    out = write_report(tmp_path / "run", tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    page = _page(out)
    assert page.tags.count("script") == 1 and "window.__pwned" not in page.scripts[0]
    assert {name for name, _ in page.attrs} <= SAFE_ATTRIBUTES
    assert '<section class="run health"><h2>Data health</h2>' in text
    assert "run once at epoch 1" in text
    for line in health.summary:
        assert f"<li>{html.escape(line)}</li>" in text
    assert "1 validation inputs also in training (50.0%; 1 exact, 0 near)" in health.summary
    rows = page.tables["health-issues"]
    header = rows[0]["cells"]
    assert header == ["check", "split", "example_id", "score", "detail", "text"]
    assert len(rows) - 1 == len(health.issues)
    shown = {row["cells"][-1] for row in rows[1:]}
    assert HOSTILE[0] in shown  # the leaked hostile text, as text
    assert html.escape(HOSTILE[0]) in text
    long_cell = next(r["cells"][-1] for r in rows[1:] if "long" in r["cells"][-1])
    # cut like the other tables' cells: the start, then the rest (as text) in a <details>
    assert long_cell.replace("\u2026 (480 characters)", "") == "<b>long</b> " * 40
    assert html.escape("<b>long</b>") in text and "<b>long</b>" not in text
    # one class-balance figure per split, with the predictions beside the labels
    assert "Class balance of train: label counts and the model&#x27;s predictions" in text
    assert "Class balance of validation" in text
    # the health tables are not repeated in the epoch's generic tables
    assert not {"health-1", "health_summary-1", "health_balance-1"} & set(page.tables)
    assert "This epoch ran the data-health checks" in text


def test_data_health_section_counts_issues_without_a_summary_table(tmp_path):
    health = _health_run(tmp_path / "run", summary_table=False)
    out = write_report(tmp_path / "run", tmp_path / "r.html", epochs=[2])
    text = out.read_text(encoding="utf-8")
    leaks = int((health.issues["check"] == "leak").sum())
    assert f"<li>{leaks} leak issues in validation</li>" in text  # still shown for epoch 2 only


def test_no_data_health_section_without_a_health_table(hostile_run, tmp_path):
    text = write_report(hostile_run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Data health" not in text


def test_report_embeds_only_listed_images_inside_the_folder(hostile_run, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG + b"SECRET-BYTES")
    planted = base64.b64encode(PNG + b"SECRET-BYTES").decode()
    (hostile_run / "epoch_0002/planted.png").symlink_to(secret)  # found there, not listed
    (hostile_run / "epoch_0001/unlisted.png").write_bytes(PNG + b"SECRET-BYTES")
    (hostile_run / "heatmaps/link.png").symlink_to(secret)
    (hostile_run / "plots").symlink_to(tmp_path)  # a figure folder that is a link out
    text = write_report(hostile_run, tmp_path / "r.html").read_text("utf-8")
    assert planted not in text and "planted.png" not in text and "unlisted.png" not in text
    assert "link.png" not in text and "secret.png" not in text
    assert "attention_hard.png" in text  # the listed epoch image is still shown
    # A listed image replaced by a link out is refused, naming the file.
    listed = hostile_run / "epoch_0002/attention_hard.png"
    listed.unlink()
    listed.symlink_to(secret)
    # The epoch is refused by name (its meta lists a link out); the rest still shows.
    text = write_report(hostile_run, tmp_path / "r2.html").read_text("utf-8")
    assert re.search(r"Cannot show epoch 2: File [^<]*attention_hard\.png[^<]* symbolic link", text)
    assert planted not in text


def test_generation_section_numbers_exposure_gap_and_outputs_side_by_side(tmp_path):
    from _presentation import generation_run

    reports = generation_run(tmp_path / "run", epochs=2, n=12)
    out = write_report(tmp_path / "run", tmp_path / "report.html")
    text, page = out.read_text(encoding="utf-8"), _page(out)
    run = load_run(tmp_path / "run")
    header, *rows = [row["cells"] for row in page.tables["generation-epochs"]]
    shown = [float(row[header.index("generated_corpus_bleu")]) for row in rows]
    expected = [run.table("generation", epoch)["corpus_bleu"][0] for epoch in (1, 2)]
    np.testing.assert_allclose(shown, expected, rtol=1e-3)  # 4 significant digits shown
    gaps = [int(row[header.index("exposure_gap_examples")]) for row in rows]
    assert gaps == [int(report.extra["exposure_gap"].sum()) for report in reports] and gaps[1]
    assert f"<strong>{gaps[1]}</strong> of 12 examples have an exposure gap" in text
    header, *rows = [row["cells"] for row in page.tables["generation-hardest"]]
    assert {"reference", "teacher-forced output", "generated output"} <= set(header)
    cer = [float(row[header.index("generated_cer")]) for row in rows]
    assert len(rows) == 12 and cer == sorted(cer, reverse=True)
    frame = run.frame(2).set_index("example_id")
    for row in rows:
        example = frame.loc[int(row[header.index("example_id")])]
        assert row[header.index("generated output")] == example["generated_text"]
        assert row[header.index("teacher-forced output")] == example["prediction_text"]
    assert "<script>x</script>" not in text and html.escape("<script>x</script>") in text
    assert "Table generation" not in text  # shown once, in its own section
    assert "Generated outputs" in text


def test_no_generation_section_without_generated_outputs(hostile_run, tmp_path):
    text = write_report(hostile_run, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Generated outputs" not in text and "generation-hardest" not in text
