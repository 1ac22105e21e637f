"""The compiled loss pass: numbers equal Keras' own, masks and weights, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_erranalysis import compute_losses
from keras_erranalysis.decoding import Vocabulary

RNG = np.random.default_rng(0)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classifier(n_classes=4, activation=None, loss=None):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(n_classes, activation=activation),
        ]
    )
    model.compile(
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=activation is None)
    )
    return model


def tagger(vocab=30, n_tags=5, mask_zero=True, ignore_class=None):
    inp = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(vocab, 8, mask_zero=mask_zero)(inp)
    hidden = keras.layers.Dense(8, activation="tanh")(hidden)
    out = keras.layers.Dense(n_tags)(hidden)
    model = keras.Model(inp, out)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class)
    )
    return model


def padded_tokens(n=40, length=7, vocab=30):
    x = RNG.integers(1, vocab, (n, length))
    lengths = RNG.integers(1, length + 1, n)
    for row, size in enumerate(lengths):
        x[row, size:] = 0
    return x, lengths


# -- equality with Keras ---------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [True, False])
def test_classifier_matches_keras_loss_and_numpy(jit_compile):
    model = classifier()
    x = RNG.normal(size=(50, 6)).astype("float32")
    y = RNG.integers(0, 4, 50)
    report = compute_losses(model, (x, y), batch_size=16, verbose=0, jit_compile=jit_compile)

    logits = model.predict(x, verbose=0)
    keras_unreduced = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
        y, logits
    ).numpy()
    np.testing.assert_allclose(report.loss, keras_unreduced, rtol=1e-5, atol=1e-5)
    assert report.loss.mean() == pytest.approx(
        model.evaluate(x, y, batch_size=50, verbose=0), abs=1e-5
    )

    probs = softmax(logits.astype("float64"))
    np.testing.assert_array_equal(report.prediction, probs.argmax(1))
    np.testing.assert_allclose(report.confidence, probs.max(1), atol=1e-5)
    np.testing.assert_allclose(report.true_prob, probs[np.arange(50), y], atol=1e-5)
    other = probs.copy()
    other[np.arange(50), y] = -1
    np.testing.assert_allclose(report.margin, probs[np.arange(50), y] - other.max(1), atol=1e-5)
    np.testing.assert_array_equal(report.correct, probs.argmax(1) == y)
    np.testing.assert_array_equal(report.example_id, np.arange(50))
    assert report.task == "classification" and report.num_classes == 4


def test_sequence_with_keras_mask_matches_keras():
    model = tagger()
    x, lengths = padded_tokens()
    y = RNG.integers(0, 5, x.shape)
    report = compute_losses(model, (x, y), batch_size=8, verbose=0)

    assert report.is_sequence
    np.testing.assert_array_equal(report.n_tokens, lengths)
    np.testing.assert_array_equal(report.token_mask, x != 0)
    logits = model.predict(x, verbose=0)
    per_token = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
        y, logits
    ).numpy()
    counted = x != 0
    np.testing.assert_allclose(report.token_loss[counted], per_token[counted], atol=1e-5)
    assert np.all(report.token_loss[~counted] == 0)
    np.testing.assert_allclose(report.loss_sum, (per_token * counted).sum(1), rtol=1e-5)
    np.testing.assert_allclose(report.loss_mean, report.loss_sum / lengths, rtol=1e-5)
    keras_batch_loss = model.evaluate(x, y, batch_size=len(x), verbose=0)
    assert report.loss_sum.sum() / report.n_tokens.sum() == pytest.approx(
        keras_batch_loss, abs=1e-5
    )
    # exact match and token accuracy over counted tokens only
    pred = softmax(logits).argmax(-1)
    right = (pred == y) | ~counted
    np.testing.assert_array_equal(report.correct, right.all(1))
    np.testing.assert_allclose(
        report.token_accuracy, ((pred == y) & counted).sum(1) / lengths, atol=1e-6
    )


def test_ignore_class_excludes_subtokens_and_matches_keras():
    model = tagger(mask_zero=False, ignore_class=-100)
    x = RNG.integers(1, 30, (24, 6))
    y = RNG.integers(0, 5, (24, 6))
    y[:, 4:] = -100
    y[3, :] = -100  # a sequence where nothing counts
    report = compute_losses(model, (x, y), verbose=0)

    np.testing.assert_array_equal(report.token_mask, y != -100)
    assert report.n_tokens[3] == 0 and report.loss[3] == 0 and report.correct[3]
    expected = model.evaluate(x, y, batch_size=len(x), verbose=0)
    assert report.loss_sum.sum() / report.n_tokens.sum() == pytest.approx(expected, abs=1e-5)
    table = report.tokens(0)
    assert list(table["counted"]) == [True] * 4 + [False] * 2


def test_ignore_class_given_by_user_with_plain_loss():
    model = tagger(mask_zero=False)  # compiled without ignore_class
    x = RNG.integers(1, 30, (10, 5))
    y = RNG.integers(0, 5, (10, 5))
    y[:, 3:] = -100
    report = compute_losses(model, (x, y), ignore_class=-100, verbose=0)
    assert report.n_tokens.tolist() == [3] * 10
    assert np.all(np.isfinite(report.loss))


def test_sample_weights_scale_loss_and_zero_weight_does_not_count():
    model = classifier()
    x = RNG.normal(size=(20, 6)).astype("float32")
    y = RNG.integers(0, 4, 20)
    weights = np.linspace(0.0, 2.0, 20).astype("float32")
    plain = compute_losses(model, (x, y), verbose=0)
    weighted = compute_losses(model, (x, y, weights), verbose=0)
    np.testing.assert_allclose(weighted.loss_sum, plain.loss_sum * weights, rtol=1e-5, atol=1e-6)
    assert weighted.n_tokens[0] == 0 and weighted.n_tokens[1:].min() == 1
    keras_weighted = model.evaluate(x, y, sample_weight=weights, batch_size=20, verbose=0)
    assert weighted.loss_sum.mean() == pytest.approx(keras_weighted, abs=1e-5)


def test_sequence_sample_weights_per_token():
    model = tagger(mask_zero=False)
    x = RNG.integers(1, 30, (8, 5))
    y = RNG.integers(0, 5, (8, 5))
    weights = np.ones((8, 5), "float32")
    weights[:, -1] = 0
    report = compute_losses(model, (x, y, weights), verbose=0)
    assert report.n_tokens.tolist() == [4] * 8
    assert not report.token_mask[:, -1].any()


def test_one_hot_labels_with_categorical_loss():
    model = classifier(activation="softmax", loss="categorical_crossentropy")
    x = RNG.normal(size=(30, 6)).astype("float32")
    y = RNG.integers(0, 4, 30)
    one_hot = np.eye(4, dtype="float32")[y]
    report = compute_losses(model, (x, one_hot), verbose=0)
    np.testing.assert_array_equal(report.label, y)
    assert report.loss.mean() == pytest.approx(
        model.evaluate(x, one_hot, batch_size=30, verbose=0), abs=1e-5
    )


def test_binary_sigmoid_output():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    x = RNG.normal(size=(30, 6)).astype("float32")
    y = RNG.integers(0, 2, 30)
    report = compute_losses(model, (x, y), verbose=0)
    p = model.predict(x, verbose=0)[:, 0]
    assert report.num_classes == 2
    np.testing.assert_allclose(report.true_prob, np.where(y == 1, p, 1 - p), atol=1e-5)
    np.testing.assert_array_equal(report.prediction, (p > 0.5).astype(int))
    assert report.loss.mean() == pytest.approx(
        model.evaluate(x, y, batch_size=30, verbose=0), abs=1e-5
    )


def test_reduction_sum_ranks_long_sequences_higher():
    model = tagger()
    x, lengths = padded_tokens(n=30)
    y = RNG.integers(0, 5, x.shape)
    by_sum = compute_losses(model, (x, y), reduction="sum", verbose=0)
    by_mean = compute_losses(model, (x, y), reduction="mean", verbose=0)
    np.testing.assert_array_equal(by_sum.loss, by_sum.loss_sum)
    np.testing.assert_array_equal(by_mean.loss, by_mean.loss_mean)
    np.testing.assert_allclose(by_sum.loss_mean, by_mean.loss_mean)


def test_dataset_with_varying_padded_lengths_is_concatenated():
    model = tagger()
    sequences = [RNG.integers(1, 30, n) for n in (2, 3, 7, 1, 5, 6)]
    labels = [RNG.integers(0, 5, len(s)) for s in sequences]
    ds = tf.data.Dataset.from_generator(
        lambda: zip(sequences, labels),
        output_signature=(tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)),
    ).padded_batch(2)
    report = compute_losses(model, ds, verbose=0)
    assert report.token_mask.shape == (6, 7)
    assert report.n_tokens.tolist() == [2, 3, 7, 1, 5, 6]
    assert report.inputs["input"].shape == (6, 7)


def test_user_ids_and_decoding_with_vocabularies():
    model = tagger(vocab=5, n_tags=3)
    x = np.array([[1, 2, 0], [3, 4, 1]])
    y = np.array([[0, 1, 0], [2, 2, 1]])
    report = compute_losses(model, (x, y), ids=np.array([10, 20]), verbose=0)
    frame = report.to_frame(
        vocab=["O", "B", "I"], input_vocab=Vocabulary(["", "c", "a", "t", "s"], sep="")
    )
    assert frame["example_id"].tolist() == [10, 20]
    assert frame["input_text"].tolist() == ["ca", "tsc"]
    assert frame["label_text"].tolist() == ["O B", "I I B"]
    assert report.tokens(20, vocab=["O", "B", "I"], by_id=True)["label_token"].tolist() == [
        "I",
        "I",
        "B",
    ]


def test_text_vectorization_vocabulary_decodes_inputs():
    vectorizer = keras.layers.TextVectorization(output_sequence_length=4)
    vectorizer.adapt(["the cat sat", "a dog ran"])
    x = vectorizer(np.array(["the cat sat", "a dog ran"])).numpy()
    model = classifier(n_classes=2)
    features = RNG.normal(size=(2, 6)).astype("float32")
    report = compute_losses(model, (features, np.array([0, 1])), verbose=0)
    assert report.inputs == {}  # float features are not kept
    assert Vocabulary.from_any(vectorizer).decode(x[0]) == "the cat sat"


def test_no_prediction_id_never_reaches_a_decoding_function():
    seen = []

    def decode(ids):
        seen.append(list(ids))
        if any(i < 0 for i in ids):
            raise IndexError("negative id")  # what a real tokenizer may do
        return " ".join(f"w{i}" for i in ids)

    vocab = Vocabulary.from_any(decode)
    assert vocab.decode([3, -1, 4]) == "w3 w4"
    assert vocab.token(-1) == "<-1>" and vocab.token(2) == "w2"
    assert seen == [[3, 4], [2]]
    assert Vocabulary(["a", "b"]).decode([0, -1, 1]) == "a <-1> b"


def test_multi_output_model_needs_output_name():
    inp = keras.Input((6,))
    hidden = keras.layers.Dense(8)(inp)
    model = keras.Model(
        inp,
        {
            "kind": keras.layers.Dense(3, name="kind")(hidden),
            "score": keras.layers.Dense(2, name="score")(hidden),
        },
    )
    model.compile(
        loss={
            "kind": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "score": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        }
    )
    x = RNG.normal(size=(10, 6)).astype("float32")
    y = RNG.integers(0, 3, 10)
    with pytest.raises(ValueError, match="several outputs.*output="):
        compute_losses(model, (x, y), verbose=0)
    report = compute_losses(model, (x, y), output="kind", verbose=0)
    assert report.num_classes == 3


def test_xla_falls_back_cleanly_when_the_model_does_not_compile():
    class HostOp(keras.layers.Layer):
        def call(self, inputs):
            out = tf.numpy_function(lambda a: a, [inputs], tf.float32)
            return tf.ensure_shape(out, inputs.shape)

    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(HostOp()(inp)))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = RNG.normal(size=(10, 6)).astype("float32")
    y = RNG.integers(0, 3, 10)
    with pytest.warns(RuntimeWarning, match="without XLA"):
        report = compute_losses(model, (x, y), verbose=0, jit_compile="auto")
    reference = compute_losses(model, (x, y), verbose=0, jit_compile=False)
    np.testing.assert_allclose(report.loss, reference.loss)


# -- NaN, bad input --------------------------------------------------------------------


def test_nan_losses_are_reported_and_ranked_first():
    model = classifier()
    x = RNG.normal(size=(12, 6)).astype("float32")
    x[5] = np.nan
    y = RNG.integers(0, 4, 12)
    report = compute_losses(model, (x, y), verbose=0)
    assert report.nonfinite.tolist() == [i == 5 for i in range(12)]
    hardest = report.hardest(3)
    assert hardest["example_id"].iloc[0] == 5 and hardest["nonfinite"].iloc[0]


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.zeros((10, 3), "int64"), r"do not fit the output \(10, 4\).*\(10,\)"),
        (np.full(10, 0.5, "float32"), "fractional.*integer class ids"),
        (np.full(10, 7), r"outside the output's 4 classes"),
    ],
)
def test_bad_labels_get_clear_errors(labels, match):
    model = classifier()
    x = RNG.normal(size=(10, 6)).astype("float32")
    with pytest.raises(ValueError, match=match):
        compute_losses(model, (x, labels), verbose=0)


def test_integral_float_labels_are_accepted():
    model = classifier()
    x = RNG.normal(size=(10, 6)).astype("float32")
    y = RNG.integers(0, 4, 10)
    report = compute_losses(model, (x, y.astype("float32")), verbose=0)
    np.testing.assert_array_equal(report.label, y)


def test_probabilities_passed_where_logits_expected():
    model = classifier(
        activation="softmax", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = RNG.normal(size=(10, 6)).astype("float32")
    with pytest.raises(ValueError, match="look like probabilities.*from_logits=False"):
        compute_losses(model, (x, RNG.integers(0, 4, 10)), verbose=0)


def test_logits_passed_where_probabilities_expected():
    model = classifier(
        activation=None, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False)
    )
    x = RNG.normal(size=(10, 6)).astype("float32")
    with pytest.raises(ValueError, match="not probabilities.*from_logits=True"):
        compute_losses(model, (x, RNG.integers(0, 4, 10)), verbose=0)


def test_empty_data_and_unbuilt_model_and_missing_labels():
    model = classifier()
    with pytest.raises(ValueError, match="no examples"):
        compute_losses(model, (np.zeros((0, 6), "float32"), np.zeros(0, "int64")), verbose=0)
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 6), "float32"), np.zeros(0))).batch(4)
    with pytest.raises(ValueError, match="no examples"):
        compute_losses(model, empty, verbose=0)
    with pytest.raises(ValueError, match="needs labels"):
        compute_losses(model, np.zeros((4, 6), "float32"), verbose=0)
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="not built.*Build it first"):
        compute_losses(unbuilt, (np.zeros((4, 6)), np.zeros(4)), loss="mse", verbose=0)
    infinite = (
        tf.data.Dataset.from_tensor_slices((np.zeros((4, 6), "float32"), np.zeros(4)))
        .batch(2)
        .repeat()
    )
    with pytest.raises(ValueError, match="infinite"):
        compute_losses(model, infinite, verbose=0)


def test_uncompiled_model_needs_a_loss_and_accepts_one():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    x = RNG.normal(size=(8, 6)).astype("float32")
    y = RNG.integers(0, 3, 8)
    with pytest.raises(ValueError, match="not compiled with a loss: pass loss="):
        compute_losses(model, (x, y), verbose=0)
    report = compute_losses(
        model, (x, y), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), verbose=0
    )
    assert len(report) == 8


def test_custom_callable_loss_without_logits_flag_infers_from_outputs():
    model = classifier(activation="softmax")

    def my_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    x = RNG.normal(size=(8, 6)).astype("float32")
    y = RNG.integers(0, 4, 8)
    report = compute_losses(model, (x, y), loss=my_loss, verbose=0)
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(report.true_prob, p[np.arange(8), y], atol=1e-6)


def test_arrays_are_batched_in_slices_exactly_like_from_tensor_slices(monkeypatch):
    from keras_erranalysis.compute import _pass

    rng = np.random.default_rng(3)
    n = 23
    x = {"ids": rng.integers(0, 9, (n, 4)), "text": np.array([f"é{i}\x00" for i in range(n)])}
    y = rng.integers(0, 3, n)
    w = rng.random(n).astype("float32")
    # Slices of 2 batches of 3 rows: batches never straddle a slice, the last one is short.
    monkeypatch.setattr(_pass, "CHUNK_BYTES", 6 * (x["ids"][:1].nbytes + 8 + 4 + 8 + 8))
    got = list(_pass.as_dataset((x, y, w), 3))
    want = list(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(3))
    assert len(got) == len(want) == 8
    assert int(_pass.as_dataset((x, y, w), 3).cardinality()) == 8
    for (gx, gy, gw), (wx, wy, ww) in zip(got, want):
        assert gx["text"].dtype == tf.string
        for key in ("ids", "text"):
            np.testing.assert_array_equal(gx[key].numpy(), wx[key].numpy())
        np.testing.assert_array_equal(gy.numpy(), wy.numpy())
        np.testing.assert_array_equal(gw.numpy(), ww.numpy())
    # The dataset reads the caller's arrays, it does not hold a copy of them.
    x["ids"][0, 0] = 99
    assert next(iter(_pass.as_dataset((x, y, w), 3)))[0]["ids"][0, 0] == 99


def test_arrays_given_to_the_pass_are_not_kept_alive_after_it_returns():
    import gc
    import weakref

    from keras_erranalysis.compute import _pass

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    y = np.arange(10) % 2
    alive = weakref.ref(x)
    report = compute_losses(model, (x, y), batch_size=4, verbose=0)
    assert len(report) == 10
    dataset = _pass.as_dataset((x, y), 4)
    assert sum(len(b[1]) for b in dataset) == 10
    del x, dataset
    gc.collect()
    assert alive() is None  # TensorFlow keeps generator functions, not our arrays


def test_object_arrays_of_strings_slice_by_their_text_and_numbers_are_refused():
    from keras_erranalysis.compute import _pass

    text = np.array(["a" * 100, "b" * 300], dtype=object)
    assert _pass._row_bytes(text) == 200  # the mean length, not an 8-byte pointer
    with pytest.raises(ValueError, match="dtype object with values that are not strings"):
        _pass.as_dataset((np.array([1, "x"], dtype=object), np.zeros(2)), 2)


# -- multi-output labels and weights in the forms fit accepts (issue 17, items 3 and 7) --


def two_outputs(as_dict):
    inp = keras.Input((6,))
    hidden = keras.layers.Dense(8)(inp)
    heads = [keras.layers.Dense(3, name="a")(hidden), keras.layers.Dense(2, name="b")(hidden)]
    model = keras.Model(inp, {"b": heads[1], "a": heads[0]} if as_dict else heads)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss={"a": loss, "b": loss} if as_dict else [loss, loss])
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["dict_outputs", "list_outputs"])
def two_output_model(request):
    return two_outputs(request.param)


@pytest.mark.parametrize("form", ["dict", "list", "tuple", "dataset_dict", "dataset_tuple"])
def test_multi_output_labels_in_every_form_fit_accepts(two_output_model, form):
    model = two_output_model
    x = RNG.normal(size=(12, 6)).astype("float32")
    ya, yb = RNG.integers(0, 3, 12), RNG.integers(0, 2, 12)
    labels = {"a": ya, "b": yb} if "dict" in form else [ya, yb]
    if "tuple" in form:
        labels = tuple(labels)
    data = (x, labels)
    if form.startswith("dataset"):
        data = tf.data.Dataset.from_tensor_slices(data).batch(5)
    outputs = model.predict(x, verbose=0)
    if not isinstance(outputs, dict):
        outputs = dict(zip(["a", "b"], outputs))
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    for output, y, name in (("a", ya, "a"), (1, yb, "b"), (-1, yb, "b")):
        report = compute_losses(model, data, output=output, verbose=0, jit_compile=False)
        expected = xent(y, outputs[name]).numpy()
        np.testing.assert_allclose(report.loss, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(report.label, y)


def test_multi_output_sample_weights_as_dict_or_list_weigh_the_analysed_output():
    model = two_outputs(as_dict=False)
    x = RNG.normal(size=(10, 6)).astype("float32")
    ya, yb = RNG.integers(0, 3, 10), RNG.integers(0, 2, 10)
    wa, wb = np.linspace(0.5, 2, 10).astype("float32"), np.full(10, 3.0, "float32")
    plain = compute_losses(model, (x, [ya, yb]), output="b", verbose=0).loss
    for weights in ({"a": wa, "b": wb}, [wa, wb], (wa, wb)):
        report = compute_losses(model, (x, [ya, yb], weights), output="b", verbose=0)
        np.testing.assert_allclose(report.loss, plain * 3.0, rtol=1e-5)
    # One array weighs every output, as in fit; a dict without the output's key, none.
    report = compute_losses(model, (x, [ya, yb], wa), output="b", verbose=0)
    np.testing.assert_allclose(report.loss, plain * wa, rtol=1e-5)
    report = compute_losses(model, (x, [ya, yb], {"a": wa}), output="b", verbose=0)
    np.testing.assert_allclose(report.loss, plain, rtol=1e-5)


@pytest.mark.parametrize("output", [5, -3, "c"])
def test_an_output_the_model_does_not_have_names_the_outputs_it_has(two_output_model, output):
    model = two_output_model
    x = RNG.normal(size=(4, 6)).astype("float32")
    data = (x, {"a": np.zeros(4, int), "b": np.zeros(4, int)})
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*pass output="):
        compute_losses(model, data, output=output, verbose=0)


def test_labels_that_miss_the_analysed_output_say_which_keys_they_have():
    model = two_outputs(as_dict=True)
    x = RNG.normal(size=(4, 6)).astype("float32")
    with pytest.raises(ValueError, match=r"no entry for output 'b'.*keys are \['a', 'c'\]"):
        compute_losses(
            model, (x, {"a": np.zeros(4, int), "c": np.zeros(4, int)}), output="b", verbose=0
        )
    y = np.zeros(4, int)
    with pytest.raises(ValueError, match="tuple of 2 entries, but the model has one output"):
        compute_losses(classifier(), (RNG.normal(size=(4, 6)), [y, y]), verbose=0)


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
@pytest.mark.parametrize("source", ["arrays", "dataset", "per_token"])
def test_nan_negative_or_infinite_sample_weights_are_refused_with_a_count(bad, source):
    if source == "per_token":
        model = tagger(mask_zero=False)
        x, y = RNG.integers(1, 30, (9, 5)), RNG.integers(0, 5, (9, 5))
        weights = np.ones((9, 5), "float32")
        weights[[1, 4, 7], 2] = bad
    else:
        model = classifier()
        x, y = RNG.normal(size=(9, 6)).astype("float32"), RNG.integers(0, 4, 9)
        weights = np.ones(9, "float32")
        weights[[1, 4, 7]] = bad
    data = (x, y, weights)
    if source == "dataset":
        data = tf.data.Dataset.from_tensor_slices(data).batch(2)  # the count spans batches
    what = {"nan": "NaN", "-1.0": "a negative weight", "inf": "an infinite weight"}[str(bad)]
    with pytest.raises(ValueError, match=f"of the 9 examples \\(3 with {what}\\).*np.clip"):
        compute_losses(model, data, verbose=0)
