"""The on-disk run format: round trip, atomicity, corrupt and foreign folders, lock."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.run._files import RunFormatError, RunLockedError
from keras_erranalysis.run._reader import load_run
from keras_erranalysis.run._writer import RunWriter


def make_report(n=5, seed=0, sequence=False):
    rng = np.random.default_rng(seed)
    loss = rng.random(n).astype("float32")
    common = dict(
        num_classes=3,
        example_id=np.arange(n, dtype="int64"),
        loss=loss,
        loss_sum=loss,
        loss_mean=loss,
        confidence=rng.random(n).astype("float32"),
        true_prob=rng.random(n).astype("float32"),
        margin=rng.uniform(-1, 1, n).astype("float32"),
        correct=rng.random(n) > 0.5,
        token_accuracy=rng.random(n).astype("float32"),
        n_tokens=np.full(n, 4 if sequence else 1, "int32"),
        inputs={"tokens": rng.integers(1, 5, (n, 4)).astype("int32")},
        extra={"attn_entropy/decoder": rng.random(n).astype("float32")},
    )
    if not sequence:
        return LossReport(
            task="classification",
            label=rng.integers(0, 3, n).astype("int32"),
            prediction=rng.integers(0, 3, n).astype("int32"),
            **common,
        )
    shape = (n, 4)
    return LossReport(
        task="sequence",
        label=rng.integers(0, 3, shape).astype("int32"),
        prediction=rng.integers(0, 3, shape).astype("int32"),
        token_loss=rng.random(shape).astype("float32"),
        token_confidence=rng.random(shape).astype("float32"),
        token_true_prob=rng.random(shape).astype("float32"),
        token_margin=rng.random(shape).astype("float32"),
        token_mask=np.ones(shape, bool),
        **common,
    )


@pytest.mark.parametrize("sequence", [False, True])
def test_round_trip_keeps_every_array_and_decoding(tmp_path, sequence):
    writer = RunWriter(
        tmp_path / "run",
        decoding={"vocab": ["a", "b", "c"], "input_vocab": Vocabulary(["", *"wxyz"], sep="")},
    )
    report = make_report(sequence=sequence)
    writer.write_epoch(1, report, tables={"hardest": report.hardest(2)})
    writer.write_epoch(2, make_report(seed=1, sequence=sequence))

    run = load_run(tmp_path / "run", verify=True)
    assert run.epochs == [1, 2]
    back = run.report(1)
    for name in (
        "example_id",
        "loss",
        "confidence",
        "true_prob",
        "margin",
        "correct",
        "label",
        "prediction",
        "n_tokens",
    ):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), getattr(report, name))
    np.testing.assert_array_equal(back.inputs["tokens"], report.inputs["tokens"])
    np.testing.assert_array_equal(
        back.extra["attn_entropy/decoder"], report.extra["attn_entropy/decoder"]
    )
    assert back.task == report.task
    assert run.vocabulary("input_vocab").decode([1, 2, 0]) == "wx"
    expected_ids = report.hardest(2)["example_id"].tolist()
    assert run.table("hardest", 1)["example_id"].tolist() == expected_ids
    assert run.stack("loss").shape == (2, 5)
    history = run.history
    assert history.shape[0] == 10 and history["epoch"].tolist() == [1] * 5 + [2] * 5
    hardest = run.hardest(epoch=1, k=2)
    assert hardest["loss"].tolist() == sorted(report.loss.tolist(), reverse=True)[:2]
    assert "input_text" in hardest


def test_no_pickle_in_stored_arrays(tmp_path):
    writer = RunWriter(tmp_path)
    report = make_report()
    report.extra["bad"] = np.array([{"a": 1}] * 5, dtype=object)
    with pytest.raises(TypeError, match="Python objects"):
        writer.write_epoch(1, report)
    assert load_run(tmp_path).epochs == []  # nothing half-written became an epoch
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_epochs_are_never_overwritten(tmp_path):
    writer = RunWriter(tmp_path)
    writer.write_epoch(1, make_report())
    with pytest.raises(FileExistsError, match="never overwritten"):
        writer.write_epoch(1, make_report(seed=3))
    np.testing.assert_array_equal(load_run(tmp_path).report(1).loss, make_report().loss)


def test_interrupted_write_is_reported_not_read(tmp_path):
    writer = RunWriter(tmp_path)
    writer.write_epoch(1, make_report())
    leftover = tmp_path / ".tmp-epoch_0002-abc"
    leftover.mkdir()
    (leftover / "loss.npy").write_bytes(b"half")
    with pytest.warns(RuntimeWarning, match="incomplete epoch write"):
        run = load_run(tmp_path)
    assert run.epochs == [1] and run.incomplete == [leftover.name]


def test_foreign_and_missing_folders_get_clear_errors(tmp_path):
    with pytest.raises(RunFormatError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RunFormatError, match="run.json is missing"):
        load_run(tmp_path)
    with pytest.raises(RunFormatError, match="not empty and holds no run.json"):
        RunWriter(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(RunFormatError, match="not a keras_erranalysis run file"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunFormatError, match=r"run\.json.*corrupt"):
        load_run(tmp_path)


def test_corrupt_files_are_named(tmp_path):
    writer = RunWriter(tmp_path)
    folder = writer.write_epoch(1, make_report())
    loss_file = folder / "loss.npy"
    data = bytearray(loss_file.read_bytes())
    data[-1] ^= 0xFF
    loss_file.write_bytes(bytes(data))
    with pytest.raises(RunFormatError, match=r"loss\.npy.*checksum"):
        load_run(tmp_path, verify=True)
    loss_file.write_bytes(bytes(data[:-4]))
    with pytest.raises(RunFormatError, match=r"loss\.npy.*corrupt"):
        load_run(tmp_path).report(1)
    (folder / "meta.json").write_text("[]")
    with pytest.raises(RunFormatError, match=r"meta\.json.*corrupt"):
        load_run(tmp_path).report(1)


def test_lock_refuses_a_second_live_writer_and_takes_over_a_stale_one(tmp_path):
    first = RunWriter(tmp_path)
    first.acquire_lock()
    lock = tmp_path / ".lock"
    info = json.loads(lock.read_text())
    info["pid"] = 1  # pid 1 is alive and is not us
    lock.write_text(json.dumps(info))
    with pytest.raises(RunLockedError, match="Another process.*Use another log_dir"):
        RunWriter(tmp_path).acquire_lock()
    info["pid"] = 2**22 + 12345  # no such process: a stale lock
    lock.write_text(json.dumps(info))
    second = RunWriter(tmp_path)
    second.acquire_lock()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    second.release_lock()
    assert not lock.exists()


def test_unwritable_log_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"Cannot write to log_dir .*file/run.*Pass a log_dir"):
        RunWriter(blocker / "run")


def test_tables_round_trip_text_with_commas_quotes_and_newlines(tmp_path):
    writer = RunWriter(tmp_path)
    table = pd.DataFrame({"text": ['a, "b"\nc', "<script>x</script>", "|pipe|"], "n": [1, 2, 3]})
    writer.write_epoch(1, make_report(), tables={"notes": table})
    back = load_run(tmp_path).table("notes")
    assert back["text"].tolist() == table["text"].tolist()


# -- issue 17: each epoch decoded with its own vocabulary ----------------------------------


def _write_classes(folder, names, epochs, seed=0):
    from keras_erranalysis.analysis import log_views

    writer = RunWriter(folder, decoding={"label_names": names})
    for epoch in epochs:
        report = make_report(seed=seed + epoch)
        frame = report.to_frame(label_names=names)
        writer.write_epoch(
            epoch,
            report,
            tables={"hardest": log_views(frame, k=3)},
            vectors={"embedding": np.eye(5, dtype="float32")},
        )


def test_appending_with_other_label_names_decodes_each_epoch_with_its_own(tmp_path, capsys):
    from keras_erranalysis.cli import main
    from keras_erranalysis.present._report import write_report

    first, second = ["ant", "bee", "cat"], ["BUS", "VAN", "CAR"]
    _write_classes(tmp_path / "run", first, [1])
    _write_classes(tmp_path / "run", second, [2, 3])
    _write_classes(tmp_path / "run", first, [4])
    run = load_run(tmp_path / "run")
    for epoch, names in ((1, first), (2, second), (3, second), (4, first)):
        assert run.vocabulary("label_names", epoch).tokens == names
        assert run.decoding(epoch)["label_names"].tokens == names
        frame = run.frame(epoch)
        assert set(frame["label_text"]) <= set(names), (epoch, set(frame["label_text"]))
        assert set(run.hardest(epoch)["label_text"]) <= set(names)
        assert set(run.table("hardest", epoch)["label_text"]) <= set(names)
        assert set(run.similar(0, k=2, epoch=epoch)["label_text"]) <= set(names)
    # Unchanged vocabularies are stored once: epochs 2 and 3 share one decoding file.
    metas = [run.meta(e)["decoding"] for e in run.epochs]
    assert metas[1] == metas[2] and metas[0] == metas[3] and metas[0] != metas[1]
    assert len(list((tmp_path / "run").glob("decoding_*.json"))) == 1
    capsys.readouterr()
    assert main(["show", str(tmp_path / "run"), "--epoch", "2", "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert any(n in out for n in second) and not any(n in out for n in first)
    assert main(["show", str(tmp_path / "run"), "--epoch", "2", "--example", "0"]) == 0
    out = capsys.readouterr().out
    assert any(n in out for n in second) and not any(n in out for n in first)
    page = write_report(tmp_path / "run", tmp_path / "r.html").read_text("utf-8")
    section = page.split('data-epoch="2"', 1)[1].split('data-epoch="3"', 1)[0]
    assert any(n in section for n in second) and not any(f">{n}<" in section for n in first)


# -- issue 17: text that is not valid UTF-8 ------------------------------------------------


def test_label_names_with_surrogate_escapes_round_trip_exactly(tmp_path):
    names = ["bad\udcff", "ok", "x\udc80y"]
    _write_classes(tmp_path / "run", names, [1])
    run = load_run(tmp_path / "run", verify=True)
    assert run.vocabulary("label_names").tokens == names
    assert run.vocabulary("label_names").tokens[0] != "bad\\udcff"
    shown = set(run.frame()["label_text"]) | set(run.table("hardest")["label_text"])
    assert shown <= {"bad\\udcff", "ok", "x\\udc80y"}  # tables show them visibly escaped


# -- issue 17: reads confined to the run folder ---------------------------------------------


def _rewrite(path, change):
    from keras_erranalysis.run._files import _json_checksum

    data = json.loads(path.read_text())
    change(data)
    data.pop("checksum", None)
    path.write_text(json.dumps({**data, "checksum": _json_checksum(data)}))


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "subfolder"])
def test_meta_file_entries_outside_the_folder_are_refused(tmp_path, where):
    folder = RunWriter(tmp_path / "run").write_epoch(1, make_report())
    secret = tmp_path / "x.npy"
    np.save(secret, np.arange(5, dtype="float32"))
    size = secret.stat().st_size
    if where == "symlink":
        (folder / "loss.npy").unlink()
        (folder / "loss.npy").symlink_to(secret)
        target = "loss.npy"
    else:
        target = {"parent": "../../x.npy", "absolute": str(secret), "subfolder": "a/x.npy"}[where]
    _rewrite(folder / "meta.json", lambda m: m["arrays"]["loss"].update(file=target, bytes=size))
    with pytest.raises(RunFormatError, match=r"meta\.json|loss\.npy|x\.npy") as error:
        load_run(tmp_path / "run").report(1)
    assert (
        "outside" in str(error.value)
        or "symlink" in str(error.value)
        or "plain" in str(error.value)
    )


# -- issue 17: well-formed but foreign structure ---------------------------------------------


META_MUTATIONS = {
    "arrays is a list": lambda m: m.update(arrays=[]),
    "arrays entry is a string": lambda m: m["arrays"].update(loss="loss.npy"),
    "entry file is a number": lambda m: m["arrays"]["loss"].update(file=7),
    "entry bytes is text": lambda m: m["arrays"]["loss"].update(bytes="12"),
    "entry shape is a dict": lambda m: m["arrays"]["loss"].update(shape={}),
    "entry without dtype": lambda m: m["arrays"]["loss"].pop("dtype"),
    "loss column missing": lambda m: m["arrays"].pop("loss"),
    "unknown column": lambda m: m["arrays"].update(bogus=m["arrays"]["loss"]),
    "task unknown": lambda m: m.update(task=["x"]),
    "num_classes text": lambda m: m.update(num_classes="three"),
    "no task": lambda m: m.pop("task"),
    "tables is a list": lambda m: m.update(tables=[1]),
    "table without csv": lambda m: m["tables"]["notes"].pop("csv"),
    "text_columns a string": lambda m: m["tables"]["notes"].update(text_columns="text"),
    "files is a list": lambda m: m.update(files=["a.png"]),
    "inputs entry a list": lambda m: m["inputs"].update(tokens=[1]),
    "info a list": lambda m: m.update(info=[]),
    "decoding a number": lambda m: m.update(decoding=3),
    "decoding file elsewhere": lambda m: m.update(decoding="../run.json"),
}


@pytest.mark.parametrize("mutation", sorted(META_MUTATIONS))
def test_foreign_meta_structure_is_a_named_format_error(tmp_path, mutation):
    writer = RunWriter(tmp_path, decoding={"label_names": ["a", "b", "c"]})
    table = pd.DataFrame({"text": ["a", "b"], "n": [1, 2]})
    folder = writer.write_epoch(1, make_report(), tables={"notes": table})
    _rewrite(folder / "meta.json", META_MUTATIONS[mutation])
    with pytest.raises(RunFormatError, match=r"meta\.json"):
        run = load_run(tmp_path)
        run.report(1)
        run.frame(1)
        run.table("notes", 1)
        run.files(1)


RUN_MUTATIONS = {
    "decoding a list": lambda m: m.update(decoding=[]),
    "vocab tokens a string": lambda m: m["decoding"].update(label_names={"tokens": "abc"}),
    "vocab without tokens": lambda m: m["decoding"].update(label_names={"sep": " "}),
    "vocab sep a number": lambda m: m["decoding"].update(label_names={"tokens": [], "sep": 1}),
    "tokens not text": lambda m: m["decoding"].update(label_names={"tokens": [1, None]}),
    "vocab a list": lambda m: m["decoding"].update(label_names=["a"]),
}


@pytest.mark.parametrize("mutation", sorted(RUN_MUTATIONS))
def test_foreign_run_json_structure_is_a_named_format_error(tmp_path, mutation):
    RunWriter(tmp_path, decoding={"label_names": ["a", "b", "c"]}).write_epoch(1, make_report())
    _rewrite(tmp_path / "run.json", RUN_MUTATIONS[mutation])
    with pytest.raises(RunFormatError, match=r"run\.json"):
        load_run(tmp_path).frame(1)
    with pytest.raises(RunFormatError, match=r"run\.json"):
        RunWriter(tmp_path, decoding={"label_names": ["a", "b", "c"]})


def test_only_canonical_epoch_folders_count(tmp_path):
    writer = RunWriter(tmp_path)
    folder = writer.write_epoch(2, make_report())
    import shutil

    shutil.copytree(folder, tmp_path / "epoch_2")
    shutil.copytree(folder, tmp_path / "epoch_00002")
    (tmp_path / "epoch_0007").symlink_to(folder)
    with pytest.warns(RuntimeWarning, match="epoch_2"):
        run = load_run(tmp_path)
    assert run.epochs == [2] and len(run.history) == 5
    assert writer.last_epoch() == 2


# -- issue 17: locks -------------------------------------------------------------------------


def test_an_old_empty_lock_is_recovered_and_a_young_one_is_respected(tmp_path):
    import time

    lock = tmp_path / ".lock"
    RunWriter(tmp_path)
    for content in ("", "{not json", "[]", '{"pid": "x"}'):
        lock.write_text(content)
        with pytest.raises(RunLockedError, match="being created"):
            RunWriter(tmp_path).acquire_lock()  # a few seconds old: perhaps being written
        old = time.time() - 60
        os.utime(lock, (old, old))
        writer = RunWriter(tmp_path)
        writer.acquire_lock()
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        writer.release_lock()


def test_two_writers_in_one_process_are_refused_until_the_first_is_gone(tmp_path):
    import gc

    first = RunWriter(tmp_path)
    first.acquire_lock()
    with pytest.raises(RunLockedError, match=r"this process.*one writer per log_dir"):
        RunWriter(tmp_path).acquire_lock()
    first.acquire_lock()  # the holder itself may ask again
    del first
    gc.collect()
    second = RunWriter(tmp_path)  # the holder's object is gone: its lock is stale
    second.acquire_lock()
    # A writer whose owner says it is no longer active (an interrupted fit) is taken over.
    third = RunWriter(tmp_path)
    second._active = lambda: False
    third.acquire_lock()
    assert not second._locked or json.loads((tmp_path / ".lock").read_text())["pid"]
    third.release_lock()
    assert not (tmp_path / ".lock").exists()


def test_load_run_during_a_live_write_names_the_writer(tmp_path):
    writer = RunWriter(tmp_path)
    writer.write_epoch(1, make_report())
    (tmp_path / ".tmp-epoch_0002-abc").mkdir()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": os.uname().nodename}))
    with pytest.warns(RuntimeWarning, match="being written by pid 1") as seen:
        load_run(tmp_path)
    assert "interrupted" not in str(seen[0].message)
