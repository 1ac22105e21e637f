"""Messages that name the fix: a full disk, a file or a parent folder given as a run, a
report written onto a folder, a vocabulary too short for the ids (issue 17, item 8)."""

import errno
import warnings

import numpy as np
import pytest
from _presentation import classification_report, make_run, sequence_report

from keras_erranalysis.cli import main
from keras_erranalysis.run._writer import RunWriter


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_disk_full_names_the_file_the_log_dir_and_the_fix(tmp_path, monkeypatch, code):
    writer = RunWriter(tmp_path / "run")
    real_save = np.save

    def full(handle, array, **kwargs):
        if str(getattr(handle, "name", "")).endswith("confidence.npy"):
            raise OSError(code, "File too large" if code == errno.EFBIG else "No space left")
        real_save(handle, array, **kwargs)

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError) as caught:
        writer.write_epoch(1, classification_report(4))
    message = str(caught.value)
    assert caught.value.errno == code
    assert "epoch_0001/confidence.npy" in message and ".tmp" not in message
    assert f"log_dir {str(tmp_path / 'run')!r}" in message
    assert "free space" in message and "another log_dir" in message
    assert not list((tmp_path / "run").glob("epoch_*")) and not list(
        (tmp_path / "run").glob(".tmp-*")
    )


def test_disk_full_in_meta_json_names_the_epoch_not_the_temporary_file(tmp_path, monkeypatch):
    import keras_erranalysis.run._files as files

    writer = RunWriter(tmp_path / "run")
    real_fdopen = files.os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=r"epoch_0001/meta\.json.*free space") as caught:
        writer.write_epoch(1, classification_report(4))
    assert ".tmp" not in str(caught.value)


def test_report_onto_a_folder_names_the_folder(tmp_path, capsys):
    make_run(tmp_path / "run", epochs=1, tables=False)
    (tmp_path / "out").mkdir()
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "out")]) == 1
    line = _one_error_line(capsys)
    assert "is a folder" in line and str(tmp_path / "out" / "report.html") in line
    assert ".tmp" not in line


def test_show_a_file_says_it_is_a_file(tmp_path, capsys):
    make_run(tmp_path / "run", epochs=1, tables=False)
    for path in (tmp_path / "run" / "run.json", tmp_path / "notes.txt"):
        path.touch()
        assert main(["show", str(path)]) == 1
        line = _one_error_line(capsys)
        assert "is a file, not a run folder" in line and "does not exist" not in line
    assert main(["show", str(tmp_path / "run" / "run.json")]) == 1
    assert f"the run folder is {str(tmp_path / 'run')!r}" in _one_error_line(capsys)


@pytest.mark.parametrize("command", ["show", "report", "tensorboard"])
def test_a_folder_holding_a_run_points_at_it(tmp_path, capsys, command):
    make_run(tmp_path / "erranalysis-demo" / "run", epochs=1, tables=False)
    (tmp_path / "erranalysis-demo" / "heatmaps").mkdir()
    assert main([command, str(tmp_path / "erranalysis-demo")]) == 1
    line = _one_error_line(capsys)
    assert repr(str(tmp_path / "erranalysis-demo" / "run")) in line
    assert "not a run folder" in line


def test_compare_checks_both_folders(tmp_path, capsys):
    make_run(tmp_path / "a" / "run", epochs=1, tables=False)
    make_run(tmp_path / "b", epochs=1, tables=False)
    assert main(["compare", str(tmp_path / "b"), str(tmp_path / "a")]) == 1
    assert repr(str(tmp_path / "a" / "run")) in _one_error_line(capsys)


def test_short_label_names_warn_once_naming_the_missing_ids():
    report = classification_report(12, num_classes=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = report.to_frame(label_names=["cat"])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "label_names has 1 entries" in message and "ids 1, 2 are missing" in message
    assert set(frame["label_text"]) <= {"cat", "<1>", "<2>"}


def test_short_sequence_vocab_warns_once_naming_the_missing_ids():
    report = sequence_report(6)  # token ids 1..5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.to_frame(vocab=["", "a", "b", "c"])
    assert len(caught) == 1 and "ids 4, 5 are missing" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.to_frame(vocab=["", "a", "b", "c", "d", "e"])  # complete: no warning


def test_vocab_on_a_classifier_warns_and_suggests_label_names():
    report = classification_report(4)
    with pytest.warns(UserWarning, match="classifier.*ignored.*label_names"):
        frame = report.to_frame(vocab=["x", "y", "z"])
    assert "label_text" not in frame.columns


def test_cli_prints_a_short_vocabulary_warning_as_one_line(tmp_path, capsys):
    writer = RunWriter(tmp_path / "run", decoding={"label_names": ["only"]})
    writer.write_epoch(1, classification_report(6))
    assert main(["show", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "keras-erranalysis show: warning: label_names has 1 entries" in err
    assert "Traceback" not in err and "UserWarning" not in err


# -- inputs the pass cannot read: each message names the fix (issue 17, item 8) ----------


def _pass_error(data, *, sequence=False):
    import keras

    from keras_erranalysis import compute_losses

    if sequence:
        inputs = keras.Input((None,), dtype="int32", name="ids")
        hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(inputs))
    else:
        inputs = hidden = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises((ValueError, TypeError)) as caught:
        compute_losses(model, data, verbose=0)
    return str(caught.value)


def _rows(n=6):
    return np.random.default_rng(0).random((n, 4)).astype("float32"), np.arange(n) % 3


@pytest.mark.parametrize(
    "make",
    [
        lambda tf, x, y: tf.data.Dataset.from_tensor_slices((x, y)),
        lambda tf, x, y: tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(y)))),
        lambda tf, x, y: tf.data.Dataset.from_tensor_slices(({"features": x}, y)),
        lambda tf, x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(2).unbatch(),
    ],
    ids=["x_y", "x_y_weights", "dict_x", "unbatched_again"],
)
def test_an_unbatched_dataset_is_told_to_call_batch(make):
    import tensorflow as tf

    message = _pass_error(make(tf, *_rows()))
    assert "single examples" in message and ".batch(n)" in message
    assert "of shape (4,)" in message


@pytest.mark.parametrize(
    "make",
    [
        lambda tf, rag, y: (rag, y),
        lambda tf, rag, y: ({"ids": rag}, y),
        lambda tf, rag, y: tf.data.Dataset.from_tensor_slices((rag, y)).batch(2),
        lambda tf, rag, y: tf.data.Dataset.from_tensor_slices(({"ids": rag}, y)).batch(2),
        lambda tf, rag, y: tf.data.Dataset.from_tensor_slices((rag, y)),
    ],
    ids=["array", "dict", "dataset", "dataset_dict", "dataset_unbatched"],
)
def test_ragged_inputs_are_told_to_pad(make):
    import tensorflow as tf

    rag = tf.ragged.constant([[1, 2], [3], [4, 5, 6]] * 2)
    message = _pass_error(make(tf, rag, np.arange(6) % 3), sequence=True)
    assert "tf.RaggedTensor" in message and "padded_batch" in message
    assert ".to_tensor()" in message and "has no len" not in message


def test_rows_of_different_lengths_are_told_to_pad():
    message = _pass_error(([[1, 2], [3]], [0, 1]), sequence=True)
    assert "different lengths" in message and "pad_sequences" in message


def test_sparse_inputs_are_told_to_densify():
    import tensorflow as tf

    x, y = _rows()
    assert "tf.sparse.to_dense" in _pass_error((tf.sparse.from_dense(x), y))
    dataset = tf.data.Dataset.from_tensor_slices((tf.sparse.from_dense(x), y)).batch(2)
    assert "tf.sparse.to_dense" in _pass_error(dataset)


def test_generators_and_keras_datasets_are_told_to_become_a_tf_dataset():
    import keras

    x, y = _rows()

    def batches():
        yield x[:3], y[:3]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 3 : (i + 1) * 3], y[i * 3 : (i + 1) * 3]

    for data, said in ((batches(), "generator"), (batches, "function"), (Batches(), "PyDataset")):
        message = _pass_error(data)
        assert said in message and "tf.data.Dataset.from_generator(" in message


@pytest.mark.parametrize("kind", ["numpy", "tensor", "dataset"])
def test_text_given_to_a_numeric_input_is_told_to_vectorize(kind):
    import tensorflow as tf

    x = np.array(["a b", "c"] * 3)
    y = np.arange(6) % 3
    data = (x, y) if kind == "numpy" else (tf.constant(x), y)
    if kind == "dataset":
        data = tf.data.Dataset.from_tensor_slices(data).batch(2)
    message = _pass_error(data)
    assert "holds strings" in message and "'features' takes float32" in message
    assert "TextVectorization" in message


def test_an_unbatched_dataset_of_token_sequences_is_told_to_call_batch():
    import keras
    import tensorflow as tf

    from keras_erranalysis import compute_losses

    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Embedding(10, 4)(inputs)))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens = tf.ragged.constant([[1, 2], [3], [4, 5, 6]])
    dataset = tf.data.Dataset.from_generator(
        lambda: ((t, t % 3) for t in tokens.to_list()),
        output_signature=(tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.int32)),
    )
    with pytest.raises(ValueError, match=r"single examples.*\.batch\(n\).*padded_batch"):
        compute_losses(model, dataset, verbose=0)
