"""Reliability: killed writers, resume, the lock, disk errors, on_error, the observer property.

Processes that must die (SIGKILL) or that need process-wide TensorFlow settings run as
child Python processes; everything else runs in the test process with tiny models.
"""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_erranalysis import ErrorAnalysis, PassOptions, load_run
from keras_erranalysis.run._files import RunLockedError

COLUMNS = ("loss", "margin", "correct", "prediction", "true_prob")

# A child that trains a tiny classifier with the callback. Before each epoch is written it
# saves the epoch's numbers to side files (the truth to compare with), and it can make the
# write slow ("slow") or hang in the middle of epoch 3 ("hang") so that it can be killed
# while writing.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import keras
    from keras_erranalysis import ErrorAnalysis, PassOptions
    from keras_erranalysis.run import RunWriter
    from keras_erranalysis.run import _writer as writer_module

    log_dir, side_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    epochs, seed = int(sys.argv[4]), int(sys.argv[5])
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, 48)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    write_epoch = RunWriter.write_epoch

    def recording_write_epoch(self, epoch, report, **options):
        for column in {columns!r}:
            np.save(os.path.join(side_dir, f"{{column}}_{{epoch}}.npy"), getattr(report, column))
        open(os.path.join(side_dir, f"writing_{{epoch}}"), "w").close()
        return write_epoch(self, epoch, report, **options)

    save_array = writer_module._save_array

    def slow_save_array(folder, stem, value):
        entry = save_array(folder, stem, value)
        if mode == "hang" and stem == "margin" and folder.name.startswith(".tmp-epoch_0003"):
            open(os.path.join(side_dir, "hanging"), "w").close()
            time.sleep(600)
        elif mode == "slow":
            time.sleep(0.02)
        return entry

    RunWriter.write_epoch = recording_write_epoch
    writer_module._save_array = slow_save_array
    callback = ErrorAnalysis(
        (x, y), log_dir=log_dir, verbose=0, pass_options=PassOptions(jit_compile=False)
    )
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback])
    """
).format(columns=COLUMNS)

CHILD_TIMEOUT = 240  # seconds; generous because the two cores are shared


def start_child(tmp_path, mode, epochs, seed=0):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    side = tmp_path / "side"
    side.mkdir(exist_ok=True)
    for marker in side.glob("writing_*"):
        marker.unlink()
    stderr = open(tmp_path / f"child-{mode}-{time.time_ns()}.err", "w")  # noqa: SIM115
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(tmp_path / "run"),
            str(side),
            mode,
            str(epochs),
            str(seed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
    )
    proc.stderr_file = stderr.name
    return proc


def wait_for(proc, path_glob, folder, timeout=CHILD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(Path(folder).glob(path_glob)):
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"child exited ({proc.returncode}) before {path_glob} appeared:\n"
                + Path(proc.stderr_file).read_text()[-3000:]
            )
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"timed out waiting for {path_glob}")


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def finish(proc):
    assert proc.wait(timeout=CHILD_TIMEOUT) == 0, Path(proc.stderr_file).read_text()[-3000:]


def load_quietly(log_dir, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = load_run(log_dir, **options)
    return run, [str(w.message) for w in caught]


def assert_epochs_match_side_files(run, side):
    for epoch in run.epochs:
        report = run.report(epoch)
        for column in COLUMNS:
            expected = np.load(side / f"{column}_{epoch}.npy", allow_pickle=False)
            np.testing.assert_array_equal(
                getattr(report, column), expected, err_msg=f"epoch {epoch} {column}"
            )


@pytest.mark.slow  # child processes that import TensorFlow
def test_kill_during_write_keeps_completed_epochs_and_a_new_fit_resumes(tmp_path):
    log_dir, side = tmp_path / "run", tmp_path / "side"
    child = start_child(tmp_path, "hang", epochs=4)
    wait_for(child, "hanging", side)
    half_written = list(log_dir.glob(".tmp-epoch_0003-*"))
    assert len(half_written) == 1 and (half_written[0] / "loss.npy").exists()
    kill(child)
    assert json.loads((log_dir / ".lock").read_text())["pid"] == child.pid  # stale lock left

    with pytest.warns(RuntimeWarning, match="incomplete epoch write"):
        run = load_run(log_dir, verify=True)
    assert run.epochs == [1, 2]
    assert run.incomplete == [half_written[0].name]
    assert_epochs_match_side_files(run, side)
    with pytest.raises(KeyError, match="No epoch 3"):
        run.report(3)
    assert len(run.history) == 2 * 48

    # A new process takes over the dead process's lock and continues the numbering.
    resumed = start_child(tmp_path, "fast", epochs=2, seed=1)
    finish(resumed)
    run, messages = load_quietly(log_dir, verify=True)
    assert run.epochs == [1, 2, 3, 4]
    assert run.incomplete == [] and not messages  # the dead write was cleaned up
    assert_epochs_match_side_files(run, side)
    assert not (log_dir / ".lock").exists()


# A child without TensorFlow (fast to start) that writes epochs of made-up reports with
# the run writer, slowly, so that a kill at a random moment often lands inside a write.
WRITER_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from keras_erranalysis.analysis import log_views
    from keras_erranalysis.run import RunWriter
    from keras_erranalysis.run import _writer as writer_module
    from keras_erranalysis._loss_report import LossReport

    log_dir, side_dir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    save_array = writer_module._save_array

    def slow_save_array(folder, stem, value):
        time.sleep(0.01)
        return save_array(folder, stem, value)

    writer_module._save_array = slow_save_array
    writer = RunWriter(log_dir)
    writer.acquire_lock()
    for _ in range(epochs):
        epoch = writer.last_epoch() + 1
        rng = np.random.default_rng(epoch)
        n = 300
        loss = rng.exponential(size=n).astype("float32")
        report = LossReport(
            task="classification", num_classes=3, example_id=np.arange(n),
            loss=loss, loss_sum=loss, loss_mean=loss,
            label=rng.integers(0, 3, n).astype("int32"),
            prediction=rng.integers(0, 3, n).astype("int32"),
            confidence=rng.random(n).astype("float32"),
            true_prob=np.exp(-loss), margin=rng.uniform(-1, 1, n).astype("float32"),
            correct=rng.random(n) > 0.5, token_accuracy=rng.random(n).astype("float32"),
            n_tokens=np.ones(n, "int32"))
        for column in {columns!r}:
            np.save(os.path.join(side_dir, f"{{column}}_{{epoch}}.npy"), getattr(report, column))
        open(os.path.join(side_dir, f"writing_{{epoch}}"), "w").close()
        tables = {{"hardest": log_views(report.to_frame(), k=5)}}
        writer.write_epoch(epoch, report, tables=tables)
    writer.release_lock()
    """
).format(columns=COLUMNS)


def test_kill_at_random_moments_never_leaves_a_bad_epoch(tmp_path):
    log_dir, side = tmp_path / "run", tmp_path / "side"
    side.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER_CHILD)
    chooser = random.Random(8)
    last, kills_inside_a_write = 0, 0
    for round_ in range(6):
        for marker in side.glob("writing_*"):
            marker.unlink()
        errors = tmp_path / f"writer-{round_}.err"
        with open(errors, "w") as stderr:
            child = subprocess.Popen(
                [sys.executable, str(script), str(log_dir), str(side), "5"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        child.stderr_file = errors
        wait_for(child, "writing_*", side, timeout=120)
        delay = chooser.uniform(0.0, 0.6)
        time.sleep(delay)
        if child.poll() is None:
            kill(child)
        else:
            assert child.returncode == 0, errors.read_text()
        kills_inside_a_write += bool(list(log_dir.glob(".tmp-epoch_*")))
        run, _ = load_quietly(log_dir, verify=True)
        where = f"round {round_}, killed after {delay:.2f}s"
        # Complete epochs are numbered without gaps, each reads back exactly as computed,
        # and anything half-written is only ever listed as incomplete.
        assert run.epochs == list(range(1, len(run.epochs) + 1)), where
        assert len(run.epochs) >= last, where
        assert all(name.startswith(".tmp-epoch_") for name in run.incomplete), where
        assert_epochs_match_side_files(run, side)
        for epoch in run.epochs:
            assert len(run.table("hardest", epoch)) == 15, where
        last = len(run.epochs)
    assert last >= 3
    assert kills_inside_a_write >= 1  # the seed above makes at least one kill land mid-write


def test_two_live_writers_are_refused_with_a_clear_message(tmp_path):
    holder_ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from keras_erranalysis.run._writer import RunWriter
            RunWriter({str(tmp_path / "run")!r}).acquire_lock()
            open({str(holder_ready)!r}, "w").close()
            time.sleep(300)
        """),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(holder, "ready", tmp_path, timeout=120)
        model, x, y = classifier()
        before = [w.copy() for w in model.get_weights()]
        callback = ErrorAnalysis(
            (x, y), log_dir=tmp_path / "run", verbose=0, pass_options=PassOptions(jit_compile=False)
        )
        with pytest.raises(
            RunLockedError,
            match=rf"Another process \(pid {holder.pid} .*is "
            r"writing to .*run'\. Use another log_dir",
        ):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        for old, new in zip(before, model.get_weights()):
            np.testing.assert_array_equal(old, new)  # refused before any training
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone its lock is stale and is taken over.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert load_run(tmp_path / "run").epochs == [1]


# -- disk errors and on_error ------------------------------------------------------------


def classifier():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 3, 40)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model, x, y


def disk_full_on(monkeypatch, epoch_dir_part):
    """np.save raises ENOSPC while writing the epoch whose folder name contains the part."""
    real_save = np.save
    calls = []

    def save(file, *args, **kwargs):
        name = getattr(file, "name", str(file))
        if epoch_dir_part in str(name):
            calls.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    return calls


def test_disk_full_with_on_error_raise_stops_and_keeps_written_epochs(tmp_path, monkeypatch):
    model, x, y = classifier()
    calls = disk_full_on(monkeypatch, ".tmp-epoch_0002-")
    callback = ErrorAnalysis(
        (x, y), log_dir=tmp_path, verbose=0, pass_options=PassOptions(jit_compile=False)
    )
    with pytest.raises(OSError, match="No space left") as error:
        model.fit(x, y, epochs=4, verbose=0, callbacks=[callback])
    assert error.value.errno == errno.ENOSPC and calls
    monkeypatch.undo()
    run, messages = load_quietly(tmp_path, verify=True)
    assert run.epochs == [1] and run.incomplete == [] and not messages
    assert len(run.report(1).loss) == 40
    assert not (tmp_path / ".lock").exists()  # released, so the user can simply retry
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert load_run(tmp_path).epochs == [1, 2]


def test_disk_full_with_on_error_warn_trains_on_with_analysis_off(tmp_path, monkeypatch):
    model, x, y = classifier()
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if str(dst).endswith("epoch_0002"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    callback = ErrorAnalysis(
        (x, y),
        log_dir=tmp_path,
        verbose=0,
        on_error="warn",
        pass_options=PassOptions(jit_compile=False),
    )
    with pytest.warns(RuntimeWarning, match=r"failed at epoch 2 .*No space left.*Training goes on"):
        history = model.fit(x, y, epochs=4, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 4  # every epoch trained
    assert not callback.enabled
    monkeypatch.undo()
    run, messages = load_quietly(tmp_path, verify=True)
    assert run.epochs == [1] and run.incomplete == [] and not messages
    # The next fit tries again.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert load_run(tmp_path).epochs == [1, 2]


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_log_dir_raise_or_warn(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("not a folder")
        log_dir = tmp_path / "file" / "run"
    else:
        log_dir = Path("/proc/keras_erranalysis_no_such_dir/run")
    model, x, y = classifier()
    before = [w.copy() for w in model.get_weights()]
    callback = ErrorAnalysis(
        (x, y), log_dir=log_dir, verbose=0, pass_options=PassOptions(jit_compile=False)
    )
    named = re.escape(repr(str(log_dir)))
    with pytest.raises(OSError, match=rf"Cannot write to log_dir {named}.*Pass a log_dir"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)

    callback = ErrorAnalysis(
        (x, y),
        log_dir=log_dir,
        verbose=0,
        on_error="warn",
        pass_options=PassOptions(jit_compile=False),
    )
    with pytest.warns(RuntimeWarning, match=rf"Cannot write to log_dir {named}"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2
    assert not callback.enabled and not log_dir.exists()


def test_on_error_warn_also_covers_a_failing_pass(tmp_path):
    model, x, y = classifier()
    bad_y = y.copy()
    bad_y[3] = 7  # outside the 3 classes
    callback = ErrorAnalysis(
        (x, bad_y),
        log_dir=tmp_path,
        verbose=0,
        on_error="warn",
        pass_options=PassOptions(jit_compile=False),
    )
    with pytest.warns(RuntimeWarning, match=r"Labels \[7\] are outside"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2
    assert load_quietly(tmp_path)[0].epochs == []


# -- the callback only observes ---------------------------------------------------------
# tests/test_callback.py checks a classifier with dropout; this checks a sequence model
# (embedding with mask_zero, dropout, per-token outputs), in a child process because
# enable_op_determinism is process-wide and cannot be switched off again.

OBSERVER = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import keras
    import tensorflow as tf
    from keras_erranalysis import ErrorAnalysis, PassOptions, load_run

    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (64, 7))
    x[::3, 4:] = 0
    y = rng.integers(0, 5, (64, 7))
    weights = []
    for with_callback in (True, False):
        keras.utils.set_random_seed(7)
        inp = keras.Input((7,), dtype="int32")
        h = keras.layers.Embedding(20, 8, mask_zero=True)(inp)
        h = keras.layers.Dropout(0.3)(h)
        h = keras.layers.Dense(8, activation="tanh")(h)
        model = keras.Model(inp, keras.layers.Dense(5)(h))
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = [w.copy() for w in model.get_weights()]
        callbacks = []
        if with_callback:
            callbacks = [ErrorAnalysis((x, y), log_dir=sys.argv[1], verbose=0,
                                       pass_options=PassOptions(jit_compile=False))]
        model.fit(x, y, epochs=3, batch_size=16, shuffle=True, verbose=0, callbacks=callbacks)
        weights.append(model.get_weights())
        keras.backend.clear_session()
    same = all(np.array_equal(a, b) for a, b in zip(*weights))
    moved = not all(np.array_equal(a, b) for a, b in zip(start, weights[1]))
    print("same" if same else "DIFFERENT", "moved" if moved else "STILL",
          load_run(sys.argv[1]).epochs)
    """
)


@pytest.mark.slow  # child processes that import TensorFlow
def test_callback_only_observes_a_sequence_model(tmp_path):
    script = tmp_path / "observer.py"
    script.write_text(OBSERVER)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "same moved [1, 2, 3]", result.stdout


# -- issue 17: locks within one process, interrupted fits, text that is not UTF-8 ----------


def _callback(log_dir, **options):
    return ErrorAnalysis(
        options.pop("data"),
        log_dir=log_dir,
        verbose=0,
        pass_options=PassOptions(jit_compile=False),
        **options,
    )


def test_two_callbacks_on_one_folder_in_one_fit_are_refused_at_train_begin(tmp_path):
    model, x, y = classifier()
    before = [w.copy() for w in model.get_weights()]
    first = _callback(tmp_path / "run", data=(x, y))
    second = _callback(tmp_path / "run", data=(x, y))
    with pytest.raises(RunLockedError, match=r"Another writer in this process.*one writer per"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[first, second])
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # refused before any training
    # The refused fit never reached on_train_end: the next fit takes the lock over.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[first])
    assert load_run(tmp_path / "run").epochs == [1]
    assert not (tmp_path / "run/.lock").exists()


class _Stop(keras.callbacks.Callback):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def on_epoch_end(self, epoch, logs=None):
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("boom")])
def test_a_fit_stopped_by_an_exception_does_not_keep_the_folder(tmp_path, error):
    model, x, y = classifier()
    stopped = _callback(tmp_path / "run", data=(x, y))
    with pytest.raises(type(error)):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[stopped, _Stop(error)])
    assert load_run(tmp_path / "run").epochs == [1]
    # Keras calls no hook then; the lock still goes within a second or so, so that another
    # process (not only this one) may write while this notebook kernel lives on.
    deadline = time.monotonic() + 10
    while (tmp_path / "run/.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (tmp_path / "run/.lock").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "being written" for an interrupted fit
        load_run(tmp_path / "run")
    # Another callback of this process (a notebook's next cell) may write now ...
    other = _callback(tmp_path / "run", data=(x, y))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[other])
    assert load_run(tmp_path / "run").epochs == [1, 2]
    # ... and so may the interrupted callback itself, in a new fit.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[stopped])
    assert load_run(tmp_path / "run").epochs == [1, 2, 3]
    assert not (tmp_path / "run/.lock").exists()


def test_texts_and_label_names_that_are_not_utf8_do_not_stop_training(tmp_path):
    from keras_erranalysis import FeatureAnalysis

    model, x, y = classifier()
    raw = [os.fsdecode(b"caf\xe9 " * (i % 3 + 1) + b"name") for i in range(len(x))]
    names = [os.fsdecode(b"bad\xff"), "ok", "x\udc80y"]
    callback = _callback(
        tmp_path / "run",
        data=(x, y),
        label_names=names,
        analyses=[FeatureAnalysis(texts=raw)],
    )
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    run = load_run(tmp_path / "run", verify=True)
    assert run.epochs == [1, 2]
    assert run.vocabulary("label_names").tokens == names
    assert "features" in run.meta().get("tables", {})
    assert set(run.frame()["label_text"]) <= {"bad\\udcff", "ok", "x\\udc80y"}
