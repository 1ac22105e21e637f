"""The ErrorAnalysis callback: per-epoch logs, appending, observing only, failures."""

import keras
import numpy as np
import pytest

from keras_erranalysis import Decoding, ErrorAnalysis, load_run
from keras_erranalysis.decoding import Vocabulary

RNG = np.random.default_rng(1)
CHARS = ["", "a", "b", "c", "d", "e"]
TAGS = ["X", "Y", "Z"]


def seq_data(n=48, length=5):
    x = RNG.integers(1, len(CHARS), (n, length))
    x[::3, 3:] = 0
    y = (x % 3).astype("int32")  # learnable: the tag is the character id mod 3
    return x, y


def seq_model():
    inp = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(len(CHARS), 8, mask_zero=True)(inp)
    out = keras.layers.Dense(len(TAGS))(keras.layers.Dense(8, activation="relu")(hidden))
    model = keras.Model(inp, out)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(0.05),
    )
    return model


def test_fit_writes_every_epoch_with_decoded_hardest_examples(tmp_path):
    x, y = seq_data()
    model = seq_model()
    cb = ErrorAnalysis(
        (x, y),
        log_dir=tmp_path,
        top_k=4,
        vocab=TAGS,
        verbose=0,
        decoding=Decoding(input_vocab=Vocabulary(CHARS, sep="")),
    )
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])

    run = load_run(tmp_path)
    assert run.epochs == [1, 2, 3]
    assert not (tmp_path / ".lock").exists()
    # learning shows up epoch by epoch
    mean_loss = [float(np.mean(run.array("loss", e))) for e in run.epochs]
    assert mean_loss[0] > mean_loss[-1]
    # the callback's numbers are those of a pass over the final model
    final = cb.report()
    np.testing.assert_allclose(run.report(3).loss, final.loss)
    hardest = run.table("hardest", 3)
    assert (
        {"highest_loss", "least_confident"}
        <= set(hardest["view"])
        <= {"highest_loss", "confidently_wrong", "least_confident"}
    )
    wrong_view = hardest[hardest["view"] == "confidently_wrong"]
    assert len(wrong_view) == min(4, int((~final.correct).sum()))
    assert not wrong_view["correct"].any()
    top = hardest[hardest["view"] == "highest_loss"]
    assert len(top) == 4
    np.testing.assert_allclose(top["loss"], np.sort(final.loss)[::-1][:4], rtol=1e-6)
    row = top.iloc[0]
    i = int(row["example_id"])
    assert row["input_text"] == "".join(CHARS[t] for t in x[i] if t)
    assert row["label_text"] == " ".join(TAGS[t] for t, c in zip(y[i], x[i]) if c)
    assert cb.hardest(k=2)["example_id"].tolist() == top["example_id"].tolist()[:2]
    assert cb.history.shape[0] == 3 * len(x)


def test_second_fit_and_initial_epoch_append_instead_of_overwriting(tmp_path):
    x, y = seq_data()
    model = seq_model()
    cb = ErrorAnalysis((x, y), log_dir=tmp_path, verbose=0)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    first_epoch_loss = np.array(load_run(tmp_path).array("loss", 1))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])  # a new fit: appends as 3
    model.fit(x, y, initial_epoch=3, epochs=4, verbose=0, callbacks=[cb])  # resume: 4
    # a brand-new callback on the same folder keeps appending too
    other = ErrorAnalysis((x, y), log_dir=tmp_path, verbose=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[other])
    run = load_run(tmp_path)
    assert run.epochs == [1, 2, 3, 4, 5]
    assert [run.meta(e)["info"]["keras_epoch"] for e in run.epochs] == [0, 1, 0, 3, 0]
    np.testing.assert_array_equal(run.array("loss", 1), first_epoch_loss)


def test_every_n_epochs(tmp_path):
    x, y = seq_data(n=16)
    cb = ErrorAnalysis((x, y), log_dir=tmp_path, every_n_epochs=2, verbose=0)
    seq_model().fit(x, y, epochs=5, verbose=0, callbacks=[cb])
    assert load_run(tmp_path).epochs == [2, 4]


def _train(with_callback, tmp_path):
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), optimizer="adam"
    )
    callbacks = [ErrorAnalysis((x, y), log_dir=tmp_path, verbose=0)] if with_callback else []
    model.fit(x, y, epochs=3, batch_size=16, shuffle=True, verbose=0, callbacks=callbacks)
    return [w.numpy() for w in model.weights]


def test_callback_only_observes_weights_are_identical(tmp_path, deterministic):
    without = _train(False, tmp_path / "a")
    with_cb = _train(True, tmp_path / "b")
    assert len(load_run(tmp_path / "b").epochs) == 3
    for a, b in zip(without, with_cb):
        np.testing.assert_array_equal(a, b)


def test_in_memory_mode_keeps_reports(tmp_path):
    x, y = seq_data(n=16)
    cb = ErrorAnalysis((x, y), log_dir=None, verbose=0)
    seq_model().fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert cb.history["epoch"].unique().tolist() == [1, 2]
    assert len(cb.hardest(k=3)) == 3
    assert list(tmp_path.iterdir()) == []


def test_unwritable_log_dir_stops_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    x, y = seq_data(n=16)
    model = seq_model()
    before = [w.numpy() for w in model.weights]
    cb = ErrorAnalysis((x, y), log_dir=blocker / "run", verbose=0)
    with pytest.raises(OSError, match="Cannot write to log_dir"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_on_error_warn_keeps_training_and_written_epochs(tmp_path, monkeypatch):
    x, y = seq_data(n=16)
    model = seq_model()
    cb = ErrorAnalysis((x, y), log_dir=tmp_path, on_error="warn", verbose=0)
    calls = {"n": 0}
    real_write = cb.analyze_epoch

    def fail_second(run_epoch, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(run_epoch, **kwargs)

    monkeypatch.setattr(cb, "analyze_epoch", fail_second)
    with pytest.warns(RuntimeWarning, match="No space left.*Training goes on"):
        history = model.fit(x, y, epochs=3, verbose=0, callbacks=[cb])
    assert len(history.history["loss"]) == 3
    assert load_run(tmp_path).epochs == [1]
    assert not (tmp_path / ".lock").exists()


def test_on_error_raise_stops_training_with_the_reason(tmp_path):
    x, y = seq_data(n=16)
    bad_y = y + 10  # labels outside the 3 classes: the analysis must fail loudly
    cb = ErrorAnalysis((x, bad_y), log_dir=tmp_path, verbose=0)
    with pytest.raises(ValueError, match="outside the output's 3 classes"):
        seq_model().fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert not (tmp_path / ".lock").exists()


# -- quiet when fit is, plain when not a terminal (issue 17, item 10) ---------------------


def _plain(text):
    return "\x1b" not in text and "\r" not in text and "\b" not in text


def test_fit_verbose_0_keeps_the_callback_silent_and_fit_default_verbose_works(tmp_path, capfd):
    x, y = seq_data(n=24)
    model = seq_model()
    cb = ErrorAnalysis((x, y), log_dir=tmp_path / "quiet")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    assert capfd.readouterr().out == ""
    # fit's default verbose is "auto": the callback follows it (a bar and a line per epoch)
    cb = ErrorAnalysis((x, y), log_dir=tmp_path / "loud")
    model.fit(x, y, epochs=1, batch_size=8, callbacks=[cb])
    out = capfd.readouterr().out
    ours = [line for line in out.split("\n") if "/batch" in line or "ErrorAnalysis" in line]
    assert any(line.startswith("ErrorAnalysis epoch 1:") for line in ours), out
    # stdout is captured here, not a terminal: our bar is one plain line, no ANSI codes
    bars = [line for line in ours if "ms/batch" in line or "s/batch" in line]
    assert len(bars) == 1 and _plain(bars[0]) and bars[0].startswith("1/1 - "), ours


@pytest.mark.parametrize("known_length", [True, False])
def test_progress_bars_are_plain_lines_when_stdout_is_not_a_terminal(capfd, known_length):
    import tensorflow as tf

    from keras_erranalysis import compute_losses

    x, y = seq_data(n=40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    if not known_length:
        dataset = dataset.filter(lambda a, b: True)  # cardinality unknown
    compute_losses(seq_model(), dataset, verbose=1)
    out = capfd.readouterr().out
    assert _plain(out) and out.count("\n") == 1 and out.startswith("10/10 - "), repr(out)
    compute_losses(seq_model(), dataset, verbose=0)
    assert capfd.readouterr().out == ""


def test_progress_bar_is_live_in_a_terminal_and_plain_elsewhere(monkeypatch):
    import sys

    from keras_erranalysis.compute import _pass

    assert _pass.progress_bar(3, 0) is None
    assert _pass.progress_bar(3, 1).verbose == 2  # pytest captures stdout: not a terminal
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert _pass.progress_bar(3, 1).verbose == 1


# -- multi-output labels as fit takes them (issue 17, item 3) ------------------------------


@pytest.mark.parametrize("form", ["dict", "list"])
def test_callback_analyses_one_output_of_a_multi_output_model(tmp_path, form):
    from keras_erranalysis import PassOptions, compute_losses

    inp = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(
        inp,
        {
            "a": keras.layers.Dense(3, name="a")(hidden),
            "b": keras.layers.Dense(2, name="b")(hidden),
        },
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"a": loss, "b": loss})
    x = RNG.normal(size=(32, 4)).astype("float32")
    ya, yb = RNG.integers(0, 3, 32), RNG.integers(0, 2, 32)
    labels = {"a": ya, "b": yb} if form == "dict" else [ya, yb]  # list: Keras' output order
    weights = {"a": np.ones(32, "float32"), "b": np.full(32, 2.0, "float32")}
    if form == "list":
        weights = [weights["a"], weights["b"]]
    cb = ErrorAnalysis(
        (x, labels, weights), log_dir=tmp_path, pass_options=PassOptions(output="b"), verbose=0
    )
    model.fit(x, labels, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    run = load_run(tmp_path)
    assert run.epochs == [1, 2]
    np.testing.assert_array_equal(run.report(2).label, yb)
    unweighted = compute_losses(model, (x, yb), output="b", verbose=0)
    np.testing.assert_allclose(run.report(2).loss, 2.0 * unweighted.loss, rtol=1e-5)
