import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_erranalysis.analysis import sequence_probabilities  # noqa: E402
from keras_erranalysis.compute._inflight import InFlightRecorder, with_example_ids  # noqa: E402
from keras_erranalysis.compute._losses import compute_losses  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data[:400] / 16.0).astype("float32"), data.target[:400].astype("int64")


def mlp(seed, *, dropout=0.0, learning_rate=1e-2, softmax=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,)), keras.layers.Dense(16, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10, activation="softmax" if softmax else None))
    model = keras.Sequential(layers)
    loss = (
        "sparse_categorical_crossentropy"
        if softmax
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.compile(keras.optimizers.SGD(learning_rate), loss)
    return model


def without_ids(dataset):
    return dataset.map(lambda *parts: parts[:-1])


@pytest.mark.parametrize("softmax", [False, True])
def test_inflight_values_equal_a_separate_pass_with_the_same_weights(digits, softmax):
    x, y = digits
    model = mlp(0, learning_rate=0.0, softmax=softmax)  # weights never move
    recorder = assert_one_epoch_records_the_pass(model, x, y)
    np.testing.assert_array_equal(recorder.labels, y)  # shuffled, yet back in place
    np.testing.assert_array_equal(recorder.dynamics()["label"], y)
    assert recorder.epochs == [1]


def test_recording_does_not_change_the_trained_weights(digits, deterministic):
    x, y = digits
    plain = mlp(1, dropout=0.3)
    plain.fit(without_ids(with_example_ids(x, y, batch_size=32, seed=5)), epochs=2, verbose=0)
    recorded = mlp(1, dropout=0.3)
    recorder = InFlightRecorder(len(x))
    recorded.fit(
        with_example_ids(x, y, batch_size=32, seed=5), epochs=2, verbose=0, callbacks=[recorder]
    )
    for a, b in zip(plain.get_weights(), recorded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert recorder.stack("loss").shape == (2, len(x))
    # the model is itself again: its own steps, and a plain fit on arrays works
    assert "train_step" not in recorded.__dict__ and "compute_loss" not in recorded.__dict__
    recorded.fit(x, y, epochs=1, verbose=0)


def test_sample_weight_before_ids_and_ids_in_a_dict(digits):
    x, y = digits
    weights = np.where(y % 2 == 0, 2.0, 0.5).astype("float32")
    plain = mlp(2)
    plain.fit(
        without_ids(with_example_ids(x, y, sample_weight=weights, batch_size=50, seed=1)),
        epochs=1,
        verbose=0,
    )
    recorded = mlp(2)
    recorder = InFlightRecorder(len(x))
    recorded.fit(
        with_example_ids(x, y, sample_weight=weights, batch_size=50, seed=1),
        epochs=1,
        verbose=0,
        callbacks=[recorder],
    )
    for a, b in zip(plain.get_weights(), recorded.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="pixels")
    model = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.arange(len(x))
    dataset = (
        tf.data.Dataset.from_tensor_slices(({"pixels": x, "example_id": ids}, y))
        .shuffle(len(x), seed=0)
        .batch(64)
    )
    recorder = InFlightRecorder(len(x))
    model.fit(dataset, epochs=2, verbose=0, validation_data=dataset, callbacks=[recorder])
    assert recorder.stack("seen").all()
    probs = tf.nn.softmax(model.predict(x, verbose=0)).numpy()
    # the last epoch's values came from weights one epoch older at most: labels line up
    assert np.corrcoef(recorder.stack("true_prob")[-1], probs[ids, y])[0, 1] > 0.9


def test_missing_or_bad_ids_raise_errors_that_name_the_fix(digits):
    x, y = digits
    model = mlp(0)
    with pytest.raises(ValueError, match="with_example_ids"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[InFlightRecorder(len(x))])
    weights = np.ones(len(x), "float32")
    with pytest.raises(ValueError, match="looks like sample_weight"):
        model.fit(
            x, y, sample_weight=weights, epochs=1, verbose=0, callbacks=[InFlightRecorder(len(x))]
        )
    assert "train_step" not in model.__dict__  # restored although fit raised
    with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
        model.fit(with_example_ids(x, y), epochs=1, verbose=0, callbacks=[InFlightRecorder(100)])
    assert "train_step" not in model.__dict__
    with pytest.raises(ValueError, match="Nothing recorded"):
        InFlightRecorder(3).stack("loss")


def test_planted_flipped_labels_dominate_the_top_of_the_inflight_ranking(digits):
    x, clean = digits
    rng = np.random.default_rng(0)
    flipped = rng.random(len(clean)) < 0.15
    labels = clean.copy()
    labels[flipped] = (clean[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recorder = InFlightRecorder(len(x))
    model.fit(
        with_example_ids(x, labels, batch_size=32, seed=0),
        epochs=12,
        verbose=0,
        callbacks=[recorder],
    )
    n_noisy = int(flipped.sum())
    top = recorder.likely_mislabeled(k=n_noisy)
    assert flipped[top.index].mean() > 0.6  # chance: 0.15
    flagged = recorder.likely_mislabeled()
    assert flipped[flagged.index].mean() > 0.6


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("padding", ["ignore_class", "mask_zero"])
def test_sequence_outputs_record_per_sequence_summaries(jit_compile, padding):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(48, 6))
    tokens[:, 4:] = 0  # padding
    tokens[::3, 1] = 0  # and, masked, inside some sequences
    tags = (tokens % 3).astype("int64")
    keras.utils.set_random_seed(0)
    if padding == "ignore_class":  # the loss path the recorder cannot read: its own maths
        tags[tokens == 0] = -100
        embedding = keras.layers.Embedding(20, 8)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)
    else:  # the training step's own cross-entropy, read by the recorder
        embedding = keras.layers.Embedding(20, 8, mask_zero=True)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), embedding, keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.0), loss, jit_compile=jit_compile)
    recorder = InFlightRecorder(len(tokens))
    model.fit(
        with_example_ids(tokens, tags, batch_size=16, seed=0),
        epochs=1,
        verbose=0,
        callbacks=[recorder],
    )
    report = compute_losses(model, (tokens, tags), verbose=0, jit_compile=False)
    np.testing.assert_allclose(recorder.stack("true_prob")[0], report.true_prob, atol=1e-5)
    np.testing.assert_allclose(recorder.stack("margin")[0], report.margin, atol=1e-5)
    np.testing.assert_allclose(recorder.stack("loss")[0], report.loss_mean, rtol=1e-4)
    np.testing.assert_array_equal(recorder.stack("correct")[0], report.correct)
    assert (recorder.stack("prediction") == -1).all()
    assert (recorder.labels == -1).all()
    assert "label" not in recorder.dynamics().columns
    # Example-level dynamics: the per-token probability of the whole label sequence too.
    _, per_token = sequence_probabilities(report.token_true_prob, report.token_mask)
    np.testing.assert_allclose(recorder.stack("sequence_prob")[0], per_token, rtol=1e-4)
    dyn = recorder.dynamics()
    np.testing.assert_allclose(dyn["sequence_confidence"], per_token, rtol=1e-4)
    assert recorder.likely_mislabeled(k=3)["mislabel_score"].notna().all()


def test_summed_replica_buffers_turn_back_into_values_by_hand():
    from keras_erranalysis.compute._inflight import _from_sums

    # Rows: seen once, never seen, seen twice (right once, wrong once), seen three times.
    floats = np.array([[0.5, 0.25, -0.5], [0, 0, 0], [3.0, 1.0, 0.5], [3.0, 1.5, 0.0]])
    prediction = np.array([2, 0, 5, 3])
    correct = np.array([1, 0, 1, 1])
    seen = np.array([1, 0, 2, 3])
    label = np.array([2, 0, 6, 8])  # the last id carried labels 2, 3 and 3: no label
    values, pred, right, was_seen, labels = _from_sums(floats, prediction, correct, seen, label)
    assert labels.tolist() == [2, -1, 3, -1]
    np.testing.assert_allclose(values[0], [0.5, 0.25, -0.5])
    assert np.isnan(values[1]).all()
    np.testing.assert_allclose(values[2], [1.5, 0.5, 0.25])
    np.testing.assert_allclose(values[3], [1.0, 0.5, 0.0])
    assert pred.tolist() == [2, -1, -1, -1]
    assert right.tolist() == [True, False, True, False]
    assert was_seen.tolist() == [True, False, True, True]


def test_an_example_trained_on_twice_in_an_epoch_keeps_its_mean_and_no_prediction(digits):
    x, y = digits
    x, y = x[:40], y[:40]
    model = mlp(0, learning_rate=0.0)
    ids = np.r_[np.arange(40), [3, 7]]  # 3 and 7 come round again in the last batch
    data = tf.data.Dataset.from_tensor_slices((x[ids], y[ids], ids)).batch(16)
    recorder = InFlightRecorder(40)
    model.fit(data, epochs=1, verbose=0, callbacks=[recorder])
    report = compute_losses(model, (x, y), verbose=0, jit_compile=False)
    history = recorder.history
    assert history["seen"].all()
    np.testing.assert_allclose(history["loss"][0], report.loss, rtol=1e-4, atol=1e-5)
    twice = np.isin(np.arange(40), [3, 7])
    assert (history["prediction"][0][twice] == -1).all()
    np.testing.assert_array_equal(history["prediction"][0][~twice], report.prediction[~twice])
    np.testing.assert_array_equal(history["correct"][0], report.correct)
    np.testing.assert_array_equal(recorder.labels, y)


@pytest.mark.parametrize("softmax", [False, True])
def test_inflight_values_under_xla_equal_a_separate_pass(digits, softmax):
    x, y = digits
    model = mlp(0, learning_rate=0.0, softmax=softmax)
    model.compile(model.optimizer, model.loss, jit_compile=True)
    recorder = InFlightRecorder(len(x))
    model.fit(
        with_example_ids(x, y, batch_size=64, seed=3), epochs=2, verbose=0, callbacks=[recorder]
    )
    assert model.jit_compile is True
    report = compute_losses(model, (x, y), verbose=0, jit_compile=False)
    history = recorder.history
    assert history["seen"].all()
    for epoch in range(2):
        np.testing.assert_allclose(history["true_prob"][epoch], report.true_prob, atol=1e-5)
        np.testing.assert_allclose(history["margin"][epoch], report.margin, atol=1e-5)
        np.testing.assert_allclose(history["loss"][epoch], report.loss, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(history["prediction"][epoch], report.prediction)
        np.testing.assert_array_equal(history["correct"][epoch], report.correct)
    np.testing.assert_array_equal(recorder.labels, y)


def test_classifier_steps_read_the_training_steps_own_cross_entropy(digits, monkeypatch):
    from keras_erranalysis.compute import _pass

    x, y = digits
    calls = []
    xent_scores = _pass.xent_scores
    monkeypatch.setattr(_pass, "xent_scores", lambda *a: calls.append(1) or xent_scores(*a))
    for softmax in (False, True):  # logits, and a softmax layer's logits
        calls.clear()
        model = mlp(0, learning_rate=0.0, softmax=softmax)
        recorder = InFlightRecorder(len(x))
        with monkeypatch.context() as patch:
            patch.setattr(_pass, "per_example", _no_softmax(_pass.per_example))
            model.fit(
                with_example_ids(x, y, batch_size=64), epochs=1, verbose=0, callbacks=[recorder]
            )
        assert calls, "the recorder took the softmax again"
        report = compute_losses(model, (x, y), verbose=0, jit_compile=False)
        np.testing.assert_allclose(recorder.stack("margin")[0], report.margin, atol=1e-5)
        np.testing.assert_array_equal(recorder.stack("prediction")[0], report.prediction)


def _no_softmax(per_example):
    """per_example that fails when it is asked to take the softmax inside a traced step."""

    def checked(out, y, sample_weight, spec, probe_, *, scores=None):
        if scores is None and not tf.executing_eagerly():
            raise AssertionError("per_example took the softmax in the training step")
        return per_example(out, y, sample_weight, spec, probe_, scores=scores)

    return checked


def test_a_loss_without_a_fused_cross_entropy_records_the_same_values(digits):
    x, y = digits
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(y_true, y_pred):  # the same loss, by other ops: no fused kernel to read
        log_probs = tf.nn.log_softmax(y_pred)
        return -tf.gather(log_probs, tf.cast(tf.reshape(y_true, [-1]), tf.int32), batch_dims=1)

    model = mlp(0, learning_rate=0.0)
    model.compile(keras.optimizers.SGD(0.0), loss)
    assert_one_epoch_records_the_pass(model, x, y, loss=keras_loss)


@pytest.mark.parametrize("kind", ["binary", "one_hot"])
def test_binary_and_one_hot_classifiers_record_the_pass_values(digits, kind):
    x, y = digits
    keras.utils.set_random_seed(0)
    if kind == "binary":
        labels = (y % 2).astype("float32")
        head, loss = keras.layers.Dense(1, activation="sigmoid"), "binary_crossentropy"
    else:
        labels = np.eye(10, dtype="float32")[y]
        head = keras.layers.Dense(10)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, "relu"), head])
    model.compile(keras.optimizers.SGD(0.0), loss)
    recorder = assert_one_epoch_records_the_pass(model, x, labels)
    np.testing.assert_array_equal(recorder.labels, (y % 2) if kind == "binary" else y)


def assert_one_epoch_records_the_pass(model, x, y, loss=None):
    """Fits one shuffled epoch with a recorder (frozen weights); its columns are the pass's."""
    recorder = InFlightRecorder(len(x), loss=loss)
    model.fit(
        with_example_ids(x, y, batch_size=64, seed=3), epochs=1, verbose=0, callbacks=[recorder]
    )
    report = compute_losses(model, (x, y), loss=loss, verbose=0, jit_compile=False)
    history = recorder.history
    assert history["seen"].all()
    np.testing.assert_allclose(history["true_prob"][0], report.true_prob, atol=1e-5)
    np.testing.assert_allclose(history["margin"][0], report.margin, atol=1e-5)
    np.testing.assert_allclose(history["loss"][0], report.loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(history["prediction"][0], report.prediction)
    np.testing.assert_array_equal(history["correct"][0], report.correct)
    return recorder
