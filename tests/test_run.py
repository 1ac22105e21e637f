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
