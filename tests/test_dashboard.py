"""The Error Analysis dashboard's server side: every query against pandas, safety, and a real
TensorBoard serving the tab.

Runs are written by hand (RunWriter and tests/_presentation.py), no training. Each filter's
answer is checked against the same selection made independently with pandas on
``Run.frame``; file requests that try to leave the run folder are refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keras_erranalysis.dashboard import Dashboard, QueryError, _aggregates, find_runs
from keras_erranalysis.run import RunWriter, load_run

sys.path.insert(0, str(Path(__file__).parent))
from _presentation import CLASSES, classification_report, make_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 120
EPOCHS = 3
LONG = "long " * 20_000  # 100 kB
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _write_classifier(path: Path, long_text: str = LONG) -> None:
    writer = RunWriter(path, decoding={"label_names": CLASSES})
    rng = np.random.default_rng(7)
    base = rng.normal(size=(N, 8)).astype(np.float32)
    for epoch in range(1, EPOCHS + 1):
        report = classification_report(N, seed=epoch)
        report.loss = (report.loss / epoch).astype(np.float32)
        if epoch == EPOCHS:
            report.loss_sum[3] = np.nan  # one non-finite example
        texts = report.inputs["text"].astype(object)
        texts[10] = long_text
        texts[11] = "Mixed CASE \u202e reversed"
        report.inputs = {"text": np.array(texts.tolist())}
        embedding = base + 0.1 * rng.normal(size=base.shape).astype(np.float32)
        writer.write_epoch(
            epoch,
            report,
            tables={"features": pd.DataFrame({"feature": ["length"], "p_value": [0.01]})},
            vectors={"embedding": embedding},
            files={"example105_attention.png": PNG, "attention_hardest1_mha.png": PNG},
        )


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    _write_classifier(root / "clf")
    make_run(root / "deep" / "er" / "seq", epochs=2, n=6, sequence=True)
    make_run(root / "other", epochs=2, n=N)
    (root / "notes").mkdir()
    (root / "notes" / "run.json").write_text('{"format": "something else"}')
    return root


@pytest.fixture(scope="module")
def board(logdir: Path) -> Dashboard:
    return Dashboard(logdir)


@pytest.fixture(scope="module")
def frame(logdir: Path) -> pd.DataFrame:
    run = load_run(logdir / "clf")
    return run.frame(EPOCHS).reset_index(drop=True)


def _all_ids(board: Dashboard, params: dict) -> list[int]:
    """Every matched id, paging by 200."""
    ids, offset = [], 0
    while True:
        page = board.examples({**params, "offset": offset, "limit": 200})
        ids += [r["example_id"] for r in page["rows"]]
        offset += 200
        if offset >= page["total"]:
            assert len(ids) == page["total"]
            return ids


def test_runs_are_found_at_any_depth_and_described(board: Dashboard, logdir: Path) -> None:
    assert find_runs(logdir) == ["clf", "deep/er/seq", "other"]
    runs = {r["run"]: r for r in board.runs()["runs"]}
    assert runs["clf"]["epochs"] == [1, 2, 3] and runs["clf"]["n_examples"] == N
    assert runs["clf"]["task"] == "classification" and runs["clf"]["has_embeddings"]
    assert runs["clf"]["label_names"] == CLASSES
    assert {"loss", "confidence", "margin", "aum", "input_text"} <= set(runs["clf"]["columns"])
    assert runs["deep/er/seq"]["task"] == "token" and runs["deep/er/seq"]["label_names"] is None


def test_is_active_only_with_a_run(tmp_path: Path, logdir: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "events.out.tfevents.1").write_bytes(b"")
    assert find_runs(tmp_path / "empty") == []
    assert find_runs(logdir / "clf") == ["."]  # the callback's log_dir itself


FILTERS = [
    {"correct": False},
    {"correct": True, "label": [0, 2]},
    {"prediction": [1]},
    {"ranges": {"loss": [0.3, 1.2]}},
    {"ranges": {"confidence": [None, 0.6], "margin": [-0.2, None]}},
    {"text": "EXAMPLE TEXT 1"},
    {"text": "<script>"},
    {"text": "wolf"},  # a class name: label_text / prediction_text
    {"ids": [100, 105, 150, 99999]},
    {"flags": ["nonfinite"]},
    {"correct": False, "ranges": {"aum": [None, 0.0]}, "text": "e"},
]


def _pandas(frame: pd.DataFrame, spec: dict, aum: np.ndarray) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    if "correct" in spec:
        keep &= frame["correct"] == spec["correct"]
    for key in ("label", "prediction"):
        if key in spec:
            keep &= frame[key].isin(spec[key])
    columns = frame.assign(aum=aum)
    for column, (low, high) in spec.get("ranges", {}).items():
        if low is not None:
            keep &= columns[column] >= low
        if high is not None:
            keep &= columns[column] <= high
    if "text" in spec:
        needle = spec["text"].lower()
        hit = pd.Series(False, index=frame.index)
        for column in ("input_text", "label_text", "prediction_text"):
            hit |= frame[column].str.lower().str.contains(needle, regex=False)
        keep &= hit
    if "ids" in spec:
        keep &= frame["example_id"].isin(spec["ids"])
    if "nonfinite" in spec.get("flags", []):
        keep &= ~np.isfinite(frame["loss_sum"])
    return frame[keep]


@pytest.mark.parametrize("spec", FILTERS, ids=[json.dumps(s) for s in FILTERS])
def test_filters_match_pandas(board: Dashboard, frame: pd.DataFrame, logdir, spec) -> None:
    run = load_run(logdir / "clf")
    aum = np.mean([run.array("margin", e) for e in run.epochs], axis=0)
    expected = _pandas(frame, spec, aum)
    params = {"run": "clf", "epoch": EPOCHS, "filter": json.dumps(spec)}
    # stored order
    assert _all_ids(board, params) == expected["example_id"].tolist()
    # sorted by loss, highest first, and by confidence, lowest first
    by_loss = expected.sort_values("loss", ascending=False, kind="stable")
    assert _all_ids(board, {**params, "sort": "loss"}) == by_loss["example_id"].tolist()
    by_conf = expected.sort_values("confidence", kind="stable")
    got = _all_ids(board, {**params, "sort": "confidence", "order": "asc"})
    assert got == by_conf["example_id"].tolist()


def test_sort_keeps_ties_in_stored_order_and_pages_agree(board: Dashboard, frame) -> None:
    params = {"run": "clf", "sort": "correct", "order": "desc"}
    expected = frame.sort_values("correct", ascending=False, kind="stable")["example_id"]
    assert _all_ids(board, params) == expected.tolist()
    whole = board.examples({**params, "limit": 60})["rows"]
    pages = [board.examples({**params, "offset": o, "limit": 20})["rows"] for o in (0, 20, 40)]
    assert [r["example_id"] for r in whole] == [r["example_id"] for p in pages for r in p]
    by_text = _all_ids(board, {"run": "clf", "sort": "label_text", "order": "asc"})
    names = frame.assign(key=frame["label_text"].str.lower())
    assert by_text == names.sort_values("key", kind="stable")["example_id"].tolist()


def test_changed_between_epochs(board: Dashboard, logdir: Path) -> None:
    run = load_run(logdir / "clf")
    before, after = run.frame(1), run.frame(3)
    fixed = after[(~before["correct"]) & after["correct"]]["example_id"].tolist()
    broken = after[before["correct"] & ~after["correct"]]["example_id"].tolist()
    for kind, expected in (("fixed", fixed), ("broken", broken)):
        spec = {"changed": {"from": 1, "to": 3, "kind": kind}}
        got = _all_ids(board, {"run": "clf", "epoch": 3, "filter": json.dumps(spec)})
        assert got == expected and expected


def test_likely_mislabeled_flag_matches_the_run(board: Dashboard, logdir: Path) -> None:
    flagged = load_run(logdir / "clf").likely_mislabeled()
    expected = sorted(flagged.index if "example_id" not in flagged else flagged["example_id"])
    spec = json.dumps({"flags": ["likely_mislabeled"]})
    assert sorted(_all_ids(board, {"run": "clf", "filter": spec})) == list(expected)


def test_long_and_hostile_text_is_cut_and_whole_in_detail(board: Dashboard) -> None:
    page = board.examples({"run": "clf", "filter": json.dumps({"ids": [110, 111]})})
    long_row, rtl_row = page["rows"]
    assert len(long_row["input_text"]) == 200 and long_row["input_text__truncated"] is True
    assert "input_text__truncated" not in rtl_row and "\u202e" in rtl_row["input_text"]
    detail = board.example({"run": "clf", "id": 110})
    assert detail["input_text"] == LONG and detail["fields"]["input_text"] == LONG
    assert board.examples({"run": "clf", "filter": '{"text": "mixed case"}'})["total"] == 1


def test_histogram_matches_numpy(board: Dashboard, frame: pd.DataFrame) -> None:
    spec = {"correct": False}
    got = board.histogram({"run": "clf", "column": "loss", "bins": 7, "filter": json.dumps(spec)})
    losses = frame["loss"].to_numpy()
    counts, edges = np.histogram(
        losses[~frame["correct"].to_numpy()], bins=7, range=(losses.min(), losses.max())
    )
    assert got["counts"] == counts.tolist()
    np.testing.assert_allclose(got["edges"], edges, rtol=1e-6)
    with pytest.raises(QueryError, match="numeric column"):
        board.histogram({"run": "clf", "column": "input_text"})


def test_metrics_match_a_crosstab(board: Dashboard, frame: pd.DataFrame) -> None:
    got = board.metrics({"run": "clf"})
    table = pd.crosstab(frame["label"], frame["prediction"]).reindex(
        index=range(3), columns=range(3), fill_value=0
    )
    assert got["confusion"]["matrix"] == table.to_numpy().tolist()
    assert got["confusion"]["labels"] == CLASSES and got["confusion"]["class_ids"] == [0, 1, 2]
    for row in got["per_class"]:
        c = row["class"]
        hits = table.loc[c, c]
        assert row["support"] == table.loc[c].sum()
        assert row["precision"] == pytest.approx(hits / table[c].sum())
        assert row["recall"] == pytest.approx(hits / table.loc[c].sum())


def test_confusion_matrix_is_capped(monkeypatch, board: Dashboard) -> None:
    monkeypatch.setattr(_aggregates, "MAX_MATRIX_CLASSES", 2)
    got = _aggregates.metrics(board.catalog.view("clf"), EPOCHS, None)["confusion"]
    assert got["labels"][-1] == "other" and len(got["matrix"]) == 2
    assert sum(map(sum, got["matrix"])) == N and got["class_ids"][-1] == -1


def test_data_map_and_embedding(monkeypatch, board: Dashboard, logdir: Path) -> None:
    run = load_run(logdir / "clf")
    probs = np.stack([run.array("true_prob", e) for e in run.epochs])
    datamap = board.map({"run": "clf", "kind": "datamap", "filter": '{"correct": false}'})
    wrong = ~np.asarray(run.array("correct", EPOCHS))
    assert datamap["total"] == int(wrong.sum()) == len(datamap["points"])
    assert sum(map(sum, datamap["density"]["counts"])) == datamap["total"]
    first = datamap["points"][0]
    row = int(np.flatnonzero(np.asarray(run.array("example_id", EPOCHS)) == first["example_id"])[0])
    assert first["y"] == pytest.approx(probs[:, row].mean(), rel=1e-5)
    assert first["x"] == pytest.approx(probs[:, row].std(), rel=1e-4, abs=1e-6)
    monkeypatch.setattr(_aggregates, "MAX_POINTS", 10)
    sampled = board.map({"run": "clf", "kind": "embedding"})
    assert len(sampled["points"]) == 10 and sampled["total"] == N
    vectors = np.asarray(run.array("embedding", EPOCHS), np.float64)
    centred = vectors - vectors.mean(0)
    pc1 = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    ids = [p["example_id"] - 100 for p in sampled["points"]]
    xs = np.array([p["x"] for p in sampled["points"]])
    assert abs(np.corrcoef(xs, pc1[ids])[0, 1]) > 0.999


def test_example_detail(board: Dashboard, logdir: Path) -> None:
    run = load_run(logdir / "clf")
    detail = board.example({"run": "clf", "id": 105})
    assert [t["epoch"] for t in detail["trajectory"]] == [1, 2, 3]
    for point in detail["trajectory"]:
        assert point["loss"] == pytest.approx(float(run.array("loss", point["epoch"])[5]))
    assert {h["name"] for h in detail["heatmaps"]} >= {"example105_attention.png"}
    assert detail["heatmaps"][0]["url"].startswith("./image?run=clf&epoch=1&name=")
    expected = run.similar(105, k=10)["example_id"].tolist()
    assert [n["example_id"] for n in detail["neighbors"]] == expected
    assert detail["tokens"] == []
    with pytest.raises(QueryError, match="No example with id 7"):
        board.example({"run": "clf", "id": 7})


def test_hardest_heatmap_belongs_to_the_hardest_example(board: Dashboard, frame) -> None:
    hardest = int(frame.loc[frame["loss"].isna() | ~np.isfinite(frame["loss"])].shape[0])
    top = frame.sort_values("loss", ascending=False, kind="stable")["example_id"].iloc[0]
    names = {h["name"] for h in board.example({"run": "clf", "id": int(top)})["heatmaps"]}
    assert hardest == 0 and "attention_hardest1_mha.png" in names


def test_sequence_tokens(board: Dashboard, logdir: Path) -> None:
    run = load_run(logdir / "deep" / "er" / "seq")
    detail = board.example({"run": "deep/er/seq", "id": 1})
    expected = run.report().tokens(1, run.vocabulary("vocab"))
    assert [t["loss"] for t in detail["tokens"] if t["counted"]] == pytest.approx(
        expected.loc[expected["counted"], "loss"].tolist()
    )
    assert [t["counted"] for t in detail["tokens"]] == expected["counted"].tolist()
    assert detail["tokens"][0]["prediction"] != detail["tokens"][0]["label"]  # planted error
    metrics = board.metrics({"run": "deep/er/seq"})
    assert sum(r["support"] for r in metrics["per_class"]) == int(run.array("token_mask").sum())


def test_why_slices_open_their_rows(board: Dashboard) -> None:
    why = board.why({"run": "clf"})
    assert why["features"] == [{"feature": "length", "p_value": 0.01}]
    assert why["slices"]
    for row in why["slices"]:
        page = board.examples({"run": "clf", "filter": json.dumps(row["filter"])})
        assert page["total"] == row["support"]
        wrong = board.examples(
            {"run": "clf", "filter": json.dumps({**row["filter"], "correct": False})}
        )
        assert wrong["total"] == row["n_wrong"]
        flagged = board.examples(
            {"run": "clf", "filter": json.dumps({"flags": [f"slice:{row['name']}"]})}
        )
        assert flagged["total"] == row["support"]


def test_compare_joins_on_example_id(board: Dashboard, logdir: Path) -> None:
    a = load_run(logdir / "clf").frame(2)
    b = load_run(logdir / "other").frame(2)
    joined = a.merge(b, on="example_id", suffixes=("", "_other"))
    got = board.compare({"run": "clf", "other": "other", "epoch": 2, "limit": 200})
    assert got["total"] == N and got["other_epoch"] == 2
    rows = {r["example_id"]: r for r in got["rows"]}
    for record in joined.itertuples():
        row = rows[record.example_id]
        assert row["loss_other"] == pytest.approx(record.loss_other)
        change = (
            "fixed"
            if record.correct and not record.correct_other
            else "broken"
            if record.correct_other and not record.correct
            else "same"
        )
        assert row["changed"] == change
    fixed = board.compare({"run": "clf", "other": "other", "epoch": 2, "change": "fixed"})
    assert fixed["total"] == sum(r["changed"] == "fixed" for r in got["rows"])


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"run": "nope"}, 404, "GET ./runs"),
        ({"run": "notes"}, 404, "GET ./runs"),  # a run.json that is not ours
        ({"run": "clf", "epoch": "9"}, 404, "epochs are [1, 2, 3]"),
        ({"run": "clf", "limit": "500"}, 400, "limit between 1 and 200"),
        ({"run": "clf", "filter": "{bad"}, 400, "not valid JSON"),
        ({"run": "clf", "filter": '{"colour": 1}'}, 400, "the keys are"),
        ({"run": "clf", "filter": '{"ranges": {"nope": [0, 1]}}'}, 400, "use one of"),
        ({"run": "clf", "sort": "nope"}, 400, "columns are"),
        ({"run": "clf", "filter": '{"flags": ["zzz"]}'}, 400, "flags are"),
        ({"run": "deep/er/seq", "filter": '{"label": [1]}'}, 400, '"ranges" or "text"'),
    ],
)
def test_bad_requests_name_the_fix(board: Dashboard, params, status, words) -> None:
    with pytest.raises(QueryError) as caught:
        board.examples(params)
    assert caught.value.status == status and words in str(caught.value)


# -- safety ------------------------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    _write_classifier(tmp_path / "logs" / "run", long_text="long")
    return tmp_path / "logs"


def test_image_is_served_only_when_listed_and_inside(hostile: Path, tmp_path: Path) -> None:
    board = Dashboard(hostile)
    data, mime = board.image({"run": "run", "epoch": 1, "name": "example105_attention.png"})
    assert data == PNG and mime == "image/png"
    epoch = hostile / "run" / "epoch_0001"
    (epoch / "secret.png").write_bytes(b"secret")  # present, but not listed in meta.json
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    for name, words in [
        ("secret.png", "lists no file"),
        ("../epoch_0002/example105_attention.png", "plain image file name"),
        ("..", "plain image file name"),
        ("/etc/passwd", "plain image file name"),
        ("meta.json", "plain image file name"),
    ]:
        with pytest.raises(QueryError, match=words):
            board.image({"run": "run", "epoch": 1, "name": name})
    # a listed file replaced by a link out of the run folder
    (epoch / "example105_attention.png").unlink()
    (epoch / "example105_attention.png").symlink_to(secret)
    with pytest.raises(QueryError, match="symbolic link"):
        board.image({"run": "run", "epoch": 1, "name": "example105_attention.png"})


def test_links_out_of_the_logdir_are_not_followed(hostile: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write_classifier(outside / "run", long_text="long")
    (hostile / "linked").symlink_to(outside / "run", target_is_directory=True)
    (hostile / "run" / "epoch_0009").symlink_to(outside / "run" / "epoch_0001")
    assert find_runs(hostile) == ["run"]
    board = Dashboard(hostile)
    with pytest.raises(QueryError, match="No run 'linked'"):
        board.examples({"run": "linked"})
    with pytest.raises(QueryError, match="no epoch 9"):
        board.examples({"run": "run", "epoch": 9})
    # a column file swapped for a link: load_run's checks refuse it
    loss = hostile / "run" / "epoch_0002" / "loss.npy"
    loss.unlink()
    loss.symlink_to(outside / "run" / "epoch_0001" / "loss.npy")
    with pytest.raises(Exception, match="symbolic link"):
        Dashboard(hostile).examples({"run": "run", "epoch": 2})


# -- the plugin --------------------------------------------------------------------------


def test_plugin_routes_through_wsgi(logdir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    from keras_erranalysis.dashboard._plugin import ErrorAnalysisPlugin

    plugin = ErrorAnalysisPlugin(base_plugin.TBContext(logdir=str(logdir)))
    assert plugin.is_active()
    assert plugin.frontend_metadata().es_module_path == "/index.js"
    assert plugin.frontend_metadata().tab_name == "Error Analysis"
    apps = plugin.get_plugin_apps()
    assert {
        "/runs",
        "/examples",
        "/histogram",
        "/example",
        "/image",
        "/metrics",
        "/map",
        "/why",
        "/compare",
        "/index.js",
        "/static/*",
    } <= set(apps)
    response = Client(apps["/examples"]).get("/examples?run=clf&filter=%7B%22correct%22%3Afalse%7D")
    body = json.loads(response.get_data(as_text=True))
    assert response.status_code == 200 and all(r["correct"] is False for r in body["rows"])
    response = Client(apps["/examples"]).get("/examples?run=clf&limit=900")
    assert response.status_code == 400 and "limit" in json.loads(response.get_data())["error"]
    response = Client(apps["/image"]).get("/image?run=clf&epoch=1&name=..%2Frun.json")
    assert response.status_code == 400
    script = Client(apps["/index.js"]).get("/index.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert b"export" in script.get_data() and b"render" in script.get_data()
    response = Client(apps["/static/*"]).get("/static/../../_plugin.py")
    assert response.status_code == 404
    empty = ErrorAnalysisPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    assert not empty.is_active()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_real_tensorboard_lists_and_serves_the_tab(logdir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from importlib.metadata import entry_points

    setup = (ROOT / "setup.cfg").read_text()
    declared = "erranalysis = keras_erranalysis.dashboard._plugin:ErrorAnalysisPlugin"
    assert declared in setup
    site = tmp_path / "site"
    installed = [e for e in entry_points(group="tensorboard_plugins") if e.name == "erranalysis"]
    if not installed:  # not installed with this setup.cfg: declare it as an installed package
        info = site / "keras_erranalysis_entry-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: keras-erranalysis-entry\nVersion: 0\n"
        )
        (info / "entry_points.txt").write_text(f"[tensorboard_plugins]\n{declared}\n")
    else:
        assert installed[0].value == declared.split(" = ")[1]
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{site}")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, listing = _get(f"{base}/plugins_listing")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "TensorBoard did not start in 60 s"
                time.sleep(0.5)
        assert status == 200 and listing["erranalysis"]["enabled"] is True
        assert listing["erranalysis"]["tab_name"] == "Error Analysis"
        module = listing["erranalysis"]["loading_mechanism"]["module_path"]
        assert module == "/data/plugin/erranalysis/index.js"
        spec = urllib.request.quote(json.dumps({"correct": False, "label": [1]}))
        status, page = _get(
            f"{base}/plugin/erranalysis/examples?run=clf&epoch=2&filter={spec}&sort=loss&limit=5"
        )
        frame = load_run(logdir / "clf").frame(2)
        expected = frame[(~frame["correct"]) & (frame["label"] == 1)]
        expected = expected.sort_values("loss", ascending=False, kind="stable")
        assert status == 200 and page["total"] == len(expected)
        assert [r["example_id"] for r in page["rows"]] == expected["example_id"].head(5).tolist()
        status, error = _get(f"{base}/plugin/erranalysis/examples?run=missing")
        assert status == 404 and "GET ./runs" in error["error"]
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_serve_refuses_a_folder_without_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    from keras_erranalysis import cli

    assert cli.main(["serve", str(tmp_path)]) == 1
    assert "holds no keras_erranalysis run folder" in capsys.readouterr().err
    make_run(tmp_path / "run", epochs=1)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    assert cli.main(["serve", str(tmp_path)]) == 1
    assert "pip install tensorboard" in capsys.readouterr().err


def test_box_on_the_data_map_covers_every_row(board: Dashboard, logdir: Path) -> None:
    run = load_run(logdir / "clf")
    probs = np.stack([np.asarray(run.array("true_prob", e), np.float64) for e in run.epochs])
    x, y = probs.std(0), probs.mean(0)
    box = {"kind": "datamap", "x": [0.05, 0.3], "y": [None, 0.7]}
    expected = np.asarray(run.array("example_id"))[(x >= 0.05) & (x <= 0.3) & (y <= 0.7)]
    got = _all_ids(board, {"run": "clf", "filter": json.dumps({"box": box})})
    assert got == expected.tolist() and 0 < len(got) < N
    assert "box" in board.runs()["runs"][0]["filters"]


def test_huge_bounds_are_open_sides_without_warnings(board: Dashboard) -> None:
    import warnings

    spec = {"ranges": {"loss": [-1e300, 1e300], "label": [-1e300, 0.5]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total = board.examples({"run": "clf", "filter": json.dumps(spec)})["total"]
    everyone = board.examples({"run": "clf", "filter": '{"label": [0]}'})["total"]
    assert total == everyone > 0


def test_page_dynamics_equal_the_whole_columns(logdir: Path) -> None:
    board = Dashboard(logdir)  # a fresh cache: the page computes its rows' dynamics alone
    view = board.catalog.view("clf")
    rows = np.array([0, 5, 17, N - 1])
    page = view.dynamics_rows(EPOCHS, rows)
    assert board.cache.peek(("clf", EPOCHS, "dynamics")) is None
    whole = view.dynamics(EPOCHS)
    for part, column in zip(page, whole):
        np.testing.assert_allclose(part, column[rows], rtol=1e-6)
    run = load_run(logdir / "clf")
    margins = np.stack([run.array("margin", e) for e in run.epochs]).astype(np.float64)
    np.testing.assert_allclose(page[0], margins[:, rows].mean(0), rtol=1e-5)


@pytest.mark.parametrize("column", ["loss_sum", "correct", "label_text", "aum", "input_text"])
@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("spec", [{}, {"correct": False}, {"label": [1, 2]}])
def test_first_pages_from_a_partition_equal_the_full_sort(logdir, column, order, spec) -> None:
    params = {"run": "clf", "sort": column, "order": order, "filter": json.dumps(spec)}
    fresh = Dashboard(logdir)  # no sort order cached: the first pages come from a partition
    first = [fresh.examples({**params, "offset": o, "limit": 7}) for o in (0, 7, 50)]
    view = fresh.catalog.view("clf")
    assert not view.has_order(column, EPOCHS, order == "desc")
    full = Dashboard(logdir)
    full.catalog.view("clf").order(column, EPOCHS, order == "desc")  # cached: full sort
    for page, offset in zip(first, (0, 7, 50)):
        expected = full.examples({**params, "offset": offset, "limit": 7})
        assert page["total"] == expected["total"]
        assert [r["example_id"] for r in page["rows"]] == [
            r["example_id"] for r in expected["rows"]
        ]


def test_an_epoch_written_while_serving_appears(tmp_path: Path) -> None:
    make_run(tmp_path / "live", epochs=1, n=20)
    board = Dashboard(tmp_path)
    board.catalog.refresh_seconds = 0.0
    assert board.runs()["runs"][0]["epochs"] == [1]
    first = board.examples({"run": "live", "sort": "loss"})
    writer = RunWriter(tmp_path / "live")
    writer.write_epoch(2, classification_report(20, seed=2))
    assert board.runs()["runs"][0]["epochs"] == [1, 2]
    second = board.examples({"run": "live", "sort": "loss"})  # the last epoch, now 2
    expected = load_run(tmp_path / "live").frame(2).sort_values("loss", ascending=False)
    assert [r["example_id"] for r in second["rows"]] == expected["example_id"].head(50).tolist()
    assert first["rows"] != second["rows"]


@pytest.mark.parametrize("needle", ["EXAMPLE text 1", "<SCRIPT>", "&amp;", "wolf", "zzz"])
def test_text_search_of_ascii_text_matches_pandas(board: Dashboard, logdir, needle) -> None:
    frame = load_run(logdir / "other").frame(2)  # all-ASCII texts: the vectorised path
    hit = pd.Series(False, index=frame.index)
    for column in ("input_text", "label_text", "prediction_text"):
        hit |= frame[column].str.lower().str.contains(needle.lower(), regex=False)
    params = {"run": "other", "epoch": 2, "filter": json.dumps({"text": needle})}
    assert _all_ids(board, params) == frame.loc[hit, "example_id"].tolist()


def test_ascii_lowering_equals_unicode_lowering() -> None:
    from keras_erranalysis.dashboard._store import _ascii_lower

    texts = np.array(["Hello WORLD", "", "@[`{ AZaz", "x" * 40])
    expected = np.char.encode(np.char.lower(texts), "utf-8")
    assert _ascii_lower(texts).tolist() == expected.tolist()
    assert _ascii_lower(np.array([b"AbC"])).tolist() == [b"abc"]
    assert _ascii_lower(np.array(["caf\u00e9"])) is None  # not ASCII: the general path


def test_a_sort_with_many_ties_uses_the_full_order(logdir: Path) -> None:
    view = Dashboard(logdir).catalog.view("clf")
    assert view.first_rows("correct", EPOCHS, True, None, 5) is not None  # 120 rows: small
    many = np.arange(50_000)
    assert view.first_rows("loss", EPOCHS, True, many % N, 5) is not None
    assert view.first_rows("correct", EPOCHS, True, many % N, 5) is None  # ties: full sort
