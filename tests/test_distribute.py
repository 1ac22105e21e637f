"""tf.distribute: the pass and the callback under MirroredStrategy over two logical CPUs.

Logical devices must be configured before TensorFlow initialises, so everything runs in
one child process that prints its measurements as JSON; the assertions are made here.
Attention extraction under the same strategy is tested in tests/test_attention.py; the
in-flight recorder is tested here.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, sys, tempfile
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_erranalysis import ErrorAnalysis, compute_losses, load_run
    from keras_erranalysis.compute._inflight import InFlightRecorder

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    out = {"replicas": strategy.num_replicas_in_sync}
    COLUMNS = ("example_id", "loss", "loss_sum", "loss_mean", "label", "prediction",
               "confidence", "true_prob", "margin", "correct", "token_accuracy", "n_tokens",
               "token_loss", "token_mask", "token_margin")

    def compare(a, b):
        diffs = {}
        for column in COLUMNS:
            x, y = getattr(a, column), getattr(b, column)
            if x is None and y is None:
                continue
            if x.shape != y.shape:
                diffs[column] = f"shape {x.shape} != {y.shape}"
            elif x.dtype.kind in "biu":
                diffs[column] = int((x != y).sum())
            else:
                diffs[column] = float(np.abs(x.astype(float) - y.astype(float)).max())
        diffs["inputs"] = all(np.array_equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
        return diffs

    def classifier():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(4)])
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def tagger():
        inputs = keras.Input((None,), dtype="int32")
        hidden = keras.layers.Embedding(30, 8, mask_zero=True)(inputs)
        hidden = keras.layers.Dense(8, activation="tanh")(hidden)
        model = keras.Model(inputs, keras.layers.Dense(5)(hidden))
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-100))
        return model

    # -- the pass: 33 examples in batches of 8, so the last global batch holds 1 example
    # and the second replica gets none.
    x = rng.normal(size=(33, 6)).astype("float32")
    y = rng.integers(0, 4, 33)
    with strategy.scope():
        mirrored = classifier()
    single = classifier()
    single.set_weights(mirrored.get_weights())
    ids = np.arange(1000, 1033)
    for jit in (False, True):
        a = compute_losses(mirrored, (x, y), batch_size=8, ids=ids, verbose=0, jit_compile=jit)
        b = compute_losses(single, (x, y), batch_size=8, ids=ids, verbose=0, jit_compile=jit)
        out[f"classifier_jit{jit}"] = compare(a, b)

    # Sequences of ragged lengths (padded per batch), an ignored label id and token weights.
    lengths = rng.integers(1, 9, 29)
    tokens = [rng.integers(1, 30, n) for n in lengths]
    tags = [rng.integers(0, 5, n) for n in lengths]
    for t in tags:
        t[rng.random(len(t)) < 0.2] = -100
    weights = [rng.random(n).astype("float32") for n in lengths]
    dataset = tf.data.Dataset.from_generator(
        lambda: zip(tokens, tags, weights),
        output_signature=(tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.int64),
                          tf.TensorSpec((None,), tf.float32)),
    ).padded_batch(6, padding_values=(0, np.int64(-100), 0.0))
    with strategy.scope():
        mirrored_tagger = tagger()
    single_tagger = tagger()
    single_tagger.set_weights(mirrored_tagger.get_weights())
    a = compute_losses(mirrored_tagger, dataset, verbose=0, jit_compile=False)
    b = compute_losses(single_tagger, dataset, verbose=0, jit_compile=False)
    out["tagger"] = compare(a, b)
    out["tagger_n"] = len(a)

    # -- the callback during a distributed fit: every epoch it writes equals the
    # single-device pass on that epoch's weights.
    class KeepWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append([w.copy() for w in self.model.get_weights()])

    log_dir = os.path.join(sys.argv[1], "run")
    x_train = rng.normal(size=(64, 6)).astype("float32")
    y_train = rng.integers(0, 4, 64)
    with strategy.scope():
        trained = classifier()
    keep = KeepWeights()
    callback = ErrorAnalysis((x, y), log_dir=log_dir, batch_size=8, verbose=0,
                             jit_compile=False)
    trained.fit(x_train, y_train, epochs=2, batch_size=16, verbose=0,
                callbacks=[callback, keep])
    run = load_run(log_dir, verify=True)
    out["callback_epochs"] = run.epochs
    out["callback"] = []
    for epoch, weights in zip(run.epochs, keep.weights):
        single.set_weights(weights)
        expected = compute_losses(single, (x, y), batch_size=8, verbose=0, jit_compile=False)
        out["callback"].append(compare(run.report(epoch), expected))
    out["epochs_differ"] = bool(np.any(run.report(1).loss != run.report(2).loss))

    # -- in-flight recording under the strategy. (1) In the data order of one device (not
    # shuffled: a shuffled dataset is iterated in another order under the strategy), what
    # the replicas record equals a single-device fit, and recording leaves the weights alone.
    from keras_erranalysis.compute._inflight import with_example_ids

    def plain(learning_rate=1e-3):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(4)])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def weight_diff(a, b):
        return max(float(np.abs(u - v).max()) for u, v in zip(a.get_weights(), b.get_weights()))

    x_fit = rng.normal(size=(64, 6)).astype("float32")
    y_fit = rng.integers(0, 4, 64)
    with strategy.scope():
        recorded, unrecorded = plain(), plain()
    alone = plain()
    alone.set_weights(recorded.get_weights())
    unrecorded.set_weights(recorded.get_weights())
    recorders = {"mirrored": InFlightRecorder(64), "single": InFlightRecorder(64)}
    for name, model in (("mirrored", recorded), ("single", alone)):
        model.fit(with_example_ids(x_fit, y_fit, batch_size=16, shuffle=False), epochs=3,
                  verbose=0, callbacks=[recorders[name]])
    unrecorded.fit(x_fit, y_fit, batch_size=16, shuffle=False, epochs=3, verbose=0)
    a, b = recorders["mirrored"].history, recorders["single"].history
    out["inflight"] = {
        "epochs": recorders["mirrored"].epochs,
        "seen": int(a["seen"].sum()),
        "floats": max(float(np.abs(a[c].astype(float) - b[c].astype(float)).max())
                      for c in ("loss", "true_prob", "margin")),
        "ints": {c: int((a[c] != b[c]).sum()) for c in ("prediction", "correct", "seen")},
        "labels": int((recorders["mirrored"].labels != y_fit).sum()),
        "observer": weight_diff(unrecorded, recorded),
        "weights_vs_single": weight_diff(alone, recorded),
        "trained_epochs_differ": bool(np.any(a["loss"][0] != a["loss"][-1])),
    }
    # (2) Shuffled, 61 examples (the last global batch splits 7 + 6), frozen weights: every
    # example's recorded values are the pass's values for that example, so the ids travel
    # with their rows through the strategy's split of each batch.
    x_fit, y_fit = x_fit[:61], y_fit[:61]
    with strategy.scope():
        frozen = plain(learning_rate=0.0)
    recorder = InFlightRecorder(61)
    frozen.fit(with_example_ids(x_fit, y_fit, batch_size=16, seed=5), epochs=2, verbose=0,
               callbacks=[recorder])
    single.set_weights(frozen.get_weights())
    expected = compute_losses(single, (x_fit, y_fit), verbose=0, jit_compile=False)
    got = recorder.history
    out["inflight_shuffled"] = {
        "seen": int(got["seen"].sum()),
        "floats": max(float(np.abs(got[c] - getattr(expected, c)[None]).max())
                      for c in ("loss", "true_prob", "margin")),
        "prediction": int((got["prediction"] != expected.prediction[None]).sum()),
        "correct": int((got["correct"] != expected.correct[None]).sum()),
        "label": int((recorder.labels != y_fit).sum()),
    }
    # (3) The same recorder reused under another strategy (a MirroredStrategy of ONE
    # replica, as on a one-GPU machine): buffers remade for it, values still the pass's.
    one_replica = tf.distribute.MirroredStrategy(["/cpu:0"])
    with one_replica.scope():
        frozen_one = plain(learning_rate=0.0)
    frozen_one.set_weights(frozen.get_weights())
    frozen_one.fit(with_example_ids(x_fit, y_fit, batch_size=16, seed=5), epochs=1, verbose=0,
                   callbacks=[recorder])
    got = recorder.history
    out["inflight_one_replica"] = {
        "epochs": recorder.epochs,
        "seen": int(got["seen"][-1].sum()),
        "floats": max(float(np.abs(got[c][-1] - getattr(expected, c)).max())
                      for c in ("loss", "true_prob", "margin")),
        "prediction": int((got["prediction"][-1] != expected.prediction).sum()),
    }
    print("RESULT " + json.dumps(out))
    """
)

pytestmark = pytest.mark.slow  # one child process that imports TensorFlow

TOL = 1e-6  # float columns; a replica's half batch may take another matmul kernel


def assert_equal_results(diffs, where):
    assert diffs.pop("inputs") is True, where
    for column, diff in diffs.items():
        assert not isinstance(diff, str), f"{where} {column}: {diff}"
        assert diff <= TOL, f"{where} {column}: {diff}"


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distribute")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_pass_under_mirrored_strategy_equals_one_device(distributed):
    assert distributed["replicas"] == 2
    for jit in (False, True):
        assert_equal_results(distributed[f"classifier_jit{jit}"], f"classifier jit={jit}")


def test_ragged_weighted_sequences_under_mirrored_strategy_equal_one_device(distributed):
    assert distributed["tagger_n"] == 29
    assert_equal_results(distributed["tagger"], "tagger")


def test_callback_during_a_distributed_fit_writes_what_one_device_computes(distributed):
    assert distributed["callback_epochs"] == [1, 2]
    assert len(distributed["callback"]) == 2
    for epoch, diffs in enumerate(distributed["callback"], start=1):
        assert_equal_results(diffs, f"callback epoch {epoch}")
    assert distributed["epochs_differ"]  # training moved the weights between epochs


def test_inflight_recording_under_mirrored_strategy_equals_one_device(distributed):
    result = distributed["inflight"]
    assert result["epochs"] == [1, 2, 3]
    assert result["seen"] == 3 * 64  # every example once per epoch, none lost or doubled
    assert result["ints"] == {"prediction": 0, "correct": 0, "seen": 0}
    assert result["labels"] == 0
    # The replicas' weights drift from one device's by the all-reduce's rounding only.
    assert result["weights_vs_single"] < 1e-6
    assert result["floats"] < 1e-5
    assert result["trained_epochs_differ"]


def test_inflight_ids_travel_with_their_rows_through_a_shuffled_uneven_split(distributed):
    result = distributed["inflight_shuffled"]
    assert result["seen"] == 2 * 61
    assert result["prediction"] == 0 and result["correct"] == 0 and result["label"] == 0
    assert result["floats"] < 1e-5


def test_inflight_recording_under_mirrored_strategy_leaves_the_weights_alone(distributed):
    assert distributed["inflight"]["observer"] == 0.0


def test_one_recorder_reused_under_a_one_replica_mirrored_strategy(distributed):
    result = distributed["inflight_one_replica"]
    assert result["epochs"] == [1, 2, 1]  # each fit numbers its own epochs
    assert result["seen"] == 61
    assert result["prediction"] == 0
    assert result["floats"] < 1e-5
