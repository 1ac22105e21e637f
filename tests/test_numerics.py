"""Numerics: mixed precision (float16, bfloat16) and logits vs. probabilities.

The pass computes in float32 from the model's own 16-bit logits: a logits output is cast, a
softmax or sigmoid output is re-made in float32 from its pre-activation input, so no 16-bit
probability underflows first. Against the model's own 16-bit logits (float64 reference) the
losses are exact to float32 precision (measured bounds in docs/reliability.md).

Against a float32 model with the same weights they differ because the mixed model's layers
compute in 16 bits, not because of the pass. With moderate logits (up to ~8) the differences
stay within:

- ``mixed_float16``:  |loss - loss32| <= 1e-2 * (1 + loss32); probabilities within 3e-3.
- ``mixed_bfloat16``: |loss - loss32| <= 2e-2 * (1 + loss32); probabilities within 2e-2.

(Measured: 4e-3 and 8e-3 relative, 1.6e-3 and 1.2e-2 in probability.) No such bound holds for
sharp outputs in general: the model itself moves them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_erranalysis import compute_losses

TOLERANCE = {  # policy -> (loss tolerance relative to 1 + loss, probability atol)
    "mixed_float16": (1e-2, 3e-3),
    "mixed_bfloat16": (2e-2, 2e-2),
}
RNG = np.random.default_rng(0)
CLASSIFIER_DATA = (RNG.normal(size=(300, 8)).astype("float32"), RNG.integers(0, 10, 300))
_tokens = RNG.integers(1, 40, (120, 9))
_tokens[::2, 6:] = 0
SEQUENCE_DATA = (_tokens, RNG.integers(0, 50, (120, 9)))


@pytest.fixture
def policy():
    """Sets a global dtype policy for the test and always restores float32."""

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    try:
        yield set_policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def classifier(activation):
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation=activation),
        ]
    )


def tagger(activation):
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(40, 16, mask_zero=True)(inputs)
    hidden = keras.layers.Dense(32, activation="tanh")(hidden)
    hidden = keras.layers.Dense(32, activation="tanh")(hidden)
    return keras.Model(inputs, keras.layers.Dense(50, activation=activation)(hidden))


def softmax64(values):
    values = np.asarray(values, np.float64)
    values = values - values.max(-1, keepdims=True)
    exp = np.exp(values)
    return exp / exp.sum(-1, keepdims=True)


def own_logits(model, x):
    """The model's own (16-bit) pre-activation outputs, as float64: its last layer made linear."""
    last = model.layers[-1]
    activation = last.activation
    last.activation = keras.activations.linear
    try:
        return np.asarray(model.predict(x, verbose=0).astype("float32"), np.float64)
    finally:
        last.activation = activation
        model.predict_function = None  # traced with the linear activation


@pytest.mark.parametrize("mixed", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("activation", [None, "softmax"])
@pytest.mark.parametrize("kind", ["classifier", "sequence"])
def test_mixed_precision_losses_are_float32_and_match_a_float32_model(
    policy, mixed, activation, kind
):
    build, data = (classifier, CLASSIFIER_DATA) if kind == "classifier" else (tagger, SEQUENCE_DATA)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=activation is None)
    full = build(activation)
    full.set_weights([w * 2 for w in full.get_weights()])  # sharper outputs than at init
    expected = compute_losses(full, data, loss=loss, verbose=0, jit_compile=False)

    policy(mixed)
    model = build(activation)
    model.set_weights(full.get_weights())
    assert model.compute_dtype != "float32"
    report = compute_losses(model, data, loss=loss, verbose=0, jit_compile=False)
    for column in ("loss", "loss_sum", "true_prob", "margin", "confidence"):
        assert getattr(report, column).dtype == np.float32, column

    tol, prob_atol = TOLERANCE[mixed]
    assert np.all(np.abs(report.loss - expected.loss) <= tol * (1 + expected.loss))
    np.testing.assert_allclose(report.true_prob, expected.true_prob, atol=prob_atol)
    np.testing.assert_allclose(report.margin, expected.margin, atol=prob_atol)
    assert report.loss.std() > 0.05  # the comparison is over varied, non-trivial losses

    # Against the mixed model's own 16-bit logits the pass is exact to float32 precision: a
    # softmax output is re-made from its logits in float32 (never from 16-bit probabilities).
    probs = softmax64(own_logits(model, data[0]))
    labels = data[1]
    own = -np.log(np.take_along_axis(probs, labels[..., None], -1)[..., 0])
    if kind == "sequence":
        counted = data[0] != 0
        own = (own * counted).sum(-1) / counted.sum(-1)
    np.testing.assert_allclose(report.loss, own, rtol=2e-5, atol=2e-5)


def test_tiny_losses_of_a_float16_model_are_not_rounded_to_zero(policy):
    # One-hot inputs through a fixed kernel: the right class has logit 12, the others 0,
    # so every loss is log(1 + 3 exp(-12)) = 1.84e-5.
    x = np.eye(4, dtype="float32")[RNG.integers(0, 4, 32)]
    y = x.argmax(1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    truth = np.log1p(3 * np.exp(-12.0))

    policy("mixed_float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, use_bias=False)])
    model.set_weights([12 * np.eye(4, dtype="float32")])
    report = compute_losses(model, (x, y), loss=loss, verbose=0, jit_compile=False)
    # float32 resolves the log-sum-exp near 12 to ~1e-6, so that is the tolerance.
    np.testing.assert_allclose(report.loss, truth, rtol=0, atol=2e-6)
    assert np.all(report.loss > 1e-5)
    assert report.correct.all() and np.all(report.margin > 0.99)

    # Why it matters: the same (stable) softmax computed in float16 rounds the loss to 0.
    logits16 = (12 * x).astype(np.float16)
    exp16 = np.exp(logits16 - logits16.max(-1, keepdims=True))
    probs16 = exp16 / exp16.sum(-1, keepdims=True, dtype=np.float16)
    assert np.all(-np.log(probs16[np.arange(32), y]) == 0)


@pytest.mark.parametrize("mixed", ["mixed_float16", "mixed_bfloat16"])
def test_logits_and_probabilities_are_told_apart_under_mixed_precision(policy, mixed):
    x, y = SEQUENCE_DATA
    policy(mixed)
    softmax_model = tagger("softmax")
    logits_model = tagger(None)

    # 16-bit softmax rows still count as probabilities (50 classes, sums off by ~1e-3).
    with pytest.raises(ValueError, match="look like probabilities.*from_logits=False"):
        compute_losses(
            softmax_model,
            (x, y),
            verbose=0,
            jit_compile=False,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    with pytest.raises(ValueError, match="are not probabilities.*from_logits=True"):
        compute_losses(
            logits_model,
            (x, y),
            verbose=0,
            jit_compile=False,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        )

    # A callable loss without a from_logits flag: the pass infers which it is.
    def plain_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    inferred = compute_losses(softmax_model, (x, y), loss=plain_loss, verbose=0, jit_compile=False)
    explicit = compute_losses(
        softmax_model,
        (x, y),
        verbose=0,
        jit_compile=False,
        loss=keras.losses.SparseCategoricalCrossentropy(),
    )
    np.testing.assert_allclose(inferred.true_prob, explicit.true_prob, rtol=1e-6)
    np.testing.assert_allclose(inferred.loss, explicit.loss, rtol=1e-5)


# Measured bounds of |loss - reference| / (1 + reference) under mixed_float16, the reference
# being the float64 loss of the model's own float16 logits (see docs/reliability.md); the
# tolerances below are about 40x the measurement.
FROM_LOGITS_TOL = 1e-5  # measured 2.4e-7 (logits), 1.1e-7 (softmax), 4.4e-8 (sigmoid)
KERAS_FLOAT16_TOL = 1e-3  # Keras' loss on the 16-bit tensor computes in float16: 4.8e-4


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", None])
def test_float16_softmax_and_sigmoid_losses_come_from_the_logits(policy, activation, jit):
    """A float16 probability below ~6e-5 must not cap the loss at -log(1e-7) = 16.118."""
    units = 1 if activation == "sigmoid" else 10
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(256, 8)).astype("float32")
    policy("float32")
    full = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(units)]
    )
    weights = [w * 6 for w in full.get_weights()]  # logits in the tens: tiny probabilities
    policy("mixed_float16")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(units, activation=activation),
        ]
    )
    model.set_weights(weights)
    logits = own_logits(model, x)
    if units == 1:  # the label is the less likely side: the loss is large
        z = logits[:, 0]
        y = (z < 0).astype("float32")
        reference = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        loss = keras.losses.BinaryCrossentropy(from_logits=activation is None)
    else:
        y = logits.argmin(-1)
        top = logits.max(-1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(-1))
        reference = lse - logits[np.arange(len(y)), y]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=activation is None)
    assert reference.max() > 20  # beyond the cap: a float16 probability would be 0 here

    report = compute_losses(model, (x, y), loss=loss, verbose=0, jit_compile=jit)
    assert np.all(np.abs(report.loss - reference) <= FROM_LOGITS_TOL * (1 + reference))
    assert (report.loss > 16.2).mean() > 0.5  # most beyond the cap of 16.118
    assert report.correct.sum() == 0

    # Keras' own loss on the model's graph output (it, too, finds the logits under a softmax
    # or sigmoid op) agrees to float16 rounding, with and without XLA.
    keras_loss = tf.function(lambda a, b: loss.call(b, model(a, training=False)), jit_compile=jit)
    own = np.asarray(keras_loss(x, y), np.float64).reshape(-1)
    assert np.all(np.abs(report.loss - own) <= KERAS_FLOAT16_TOL * (1 + own))


@pytest.mark.parametrize("jit", [False, True])
def test_a_softmax_output_is_read_from_its_logits_with_the_nan_rules_of_logits(jit):
    # Dense(softmax) on the inputs themselves: the logits are x, so the reference is exact.
    x = np.array([[0.0, 40.0, -40.0], [np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [1.0, 2.0, 3.0]])
    y = np.array([0, 1, 0, 2])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    model.set_weights([np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    loss = keras.losses.SparseCategoricalCrossentropy()
    report = compute_losses(model, (x.astype("float32"), y), loss=loss, verbose=0, jit_compile=jit)
    logits = x[[0, 3]]
    top = logits.max(-1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(-1))
    expected = lse - logits[[0, 1], y[[0, 3]]]
    np.testing.assert_allclose(report.loss[[0, 3]], expected, rtol=1e-6)
    assert report.loss[0] > 39  # from the logits: no clip of a zero probability at 16.118
    np.testing.assert_allclose(report.true_prob[3], np.exp(-expected[1]), rtol=1e-6)
    # A NaN or +inf logit: no prediction, never right, undefined probabilities.
    assert report.prediction[1:3].tolist() == [-1, -1] and not report.correct[1:3].any()
    assert np.isnan(report.true_prob[1:3]).all() and np.isnan(report.confidence[1:3]).all()
    assert report.prediction[[0, 3]].tolist() == [1, 2] and report.correct.tolist()[3]
