"""Property-based tests: the loss pass, the decoders and load_run under hostile input.

Each input gets either a correct result (checked against a numpy reference) or a clear,
specific error; never a crash from deep inside TensorFlow, a hang or a silent wrong number.

The loss pass is driven through an "identity" model whose output is its input, so the test
controls the logits exactly: shapes, dtypes, NaN/inf, huge and tiny values.
"""

import json
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from _presentation import classification_report
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_erranalysis import compute_losses, load_run
from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.analysis import extract_features, log_views
from keras_erranalysis.decoding import Vocabulary, canonical_text
from keras_erranalysis.run._files import RunFormatError
from keras_erranalysis.run._writer import RunWriter

PASS_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FAST_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROB_TOL = 2e-3  # the pass's "rows sum to one" tolerance
EPS32 = float(np.finfo(np.float32).eps)

# Logits: mostly ordinary values, sometimes extreme ones.
EXTREMES = [
    0.0,
    1.0,
    -1.0,
    0.5,
    1e-38,
    -1e-45,
    3e38,
    -3e38,
    1e10,
    -1e10,
    88.0,
    -104.0,
    np.inf,
    -np.inf,
    np.nan,
]
LOGIT = st.one_of(
    st.floats(-30, 30, width=32), st.floats(-30, 30, width=32), st.sampled_from(EXTREMES)
)
FLOAT_DTYPES = ["float32", "float16", "float64", "bfloat16"]


def identity_model(rank, dtype):
    inputs = keras.Input((None,) * (rank - 1), dtype=dtype)
    return keras.Model(inputs, keras.layers.Identity(dtype=dtype)(inputs))


def as_dtype(array, dtype):
    with np.errstate(over="ignore"):  # 3e38 is inf in float16: that is what the model sees
        return np.asarray(array, np.float64).astype(tf.as_dtype(dtype).as_numpy_dtype)


def model_view(logits, dtype):
    """What the pass sees: the input in the model's dtype, cast to float32."""
    return np.asarray(as_dtype(logits, dtype), np.float32).astype(np.float64)


def reference(z, labels, counted):
    """Per-token cross-entropy and probabilities in float64; z (..., C), labels (...)."""
    with np.errstate(all="ignore"):
        top = np.max(z, axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        exp = np.exp(z - top)
        total = exp.sum(-1, keepdims=True)
        probs = exp / total
        lse = np.log(total[..., 0]) + top[..., 0]
        safe = np.where(counted, labels, 0).astype(int)
        true_logit = np.take_along_axis(z, safe[..., None], -1)[..., 0]
        loss = lse - true_logit
        true_prob = np.take_along_axis(probs, safe[..., None], -1)[..., 0]
        other = probs.copy()
        np.put_along_axis(other, safe[..., None], -np.inf, -1)
        margin = true_prob - other.max(-1)
    finite = np.all(np.isfinite(z), axis=-1)
    return loss, probs, true_prob, margin, finite


def prob_like_rows(z):
    with np.errstate(all="ignore"):
        in_unit = np.all((z >= 0) & (z <= 1), axis=-1)
        sums = np.abs(z.sum(-1) - 1.0)
    return in_unit, sums


def dataset_of(batches):
    parts = [tf.data.Dataset.from_tensors(batch) for batch in batches]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def run_pass(model, data, loss):
    try:
        return compute_losses(model, data, loss=loss, verbose=0, jit_compile=False), None
    except ValueError as error:
        return None, str(error)
    # Any other exception type (TensorFlow's InvalidArgumentError, TypeError, ...) fails
    # the test: bad input must get a clear ValueError.


def expect_outcome(error, *, empty, bad_labels, fractional, first_rows):
    """Checks an error against what the input deserves; returns True if a result is due."""
    reasons = []
    if empty:
        reasons.append("no examples")
    if bad_labels:
        reasons.append("outside the output's")
    if fractional:
        reasons.append("fractional values")
    may_prob = must_prob = False
    if first_rows is not None:
        in_unit, sums = first_rows
        may_prob = bool(np.all(in_unit & (sums < 2 * PROB_TOL)))
        must_prob = bool(np.all(in_unit & (sums < PROB_TOL / 2)))
    if may_prob:
        reasons.append("look like probabilities")
    if error is None:
        assert not empty and not bad_labels and not fractional and not must_prob, (
            "expected a clear ValueError"
        )
        event("result")
        return True
    assert reasons and any(reason in error for reason in reasons), error
    event(f"refused: {next(reason for reason in reasons if reason in error)}")
    return False


def assert_close(actual, expected, scale, what):
    ok = np.isclose(actual, expected, rtol=1e-5, atol=1e-5 + 8 * EPS32 * scale)
    assert np.all(ok), f"{what}: {actual[~ok]} != {expected[~ok]}"


# -- compute_losses: classification --------------------------------------------------------


# What each generated case stresses; "plain" cases still hold random extreme logits.
SCENARIOS = [
    "plain",
    "plain",
    "plain",
    "empty_batch",
    "bad_label",
    "fractional",
    "probabilities",
    "no_data",
]


def softmax_rows(logits):
    z = np.nan_to_num(logits, nan=0.0, posinf=30.0, neginf=-30.0)
    z = np.clip(z, -30, 30)
    exp = np.exp(z - z.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


@st.composite
def classification_case(draw):
    scenario = draw(st.sampled_from(SCENARIOS), label="scenario")
    classes = draw(st.integers(2, 6))
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    if scenario == "empty_batch":
        sizes.insert(draw(st.integers(0, len(sizes))), 0)
    if scenario == "no_data":
        sizes = [0] * len(sizes)
    n = sum(sizes)
    logits = draw(hnp.arrays(np.float64, (n, classes), elements=LOGIT))
    if scenario == "probabilities":  # a softmax model given a from_logits=True loss
        logits = softmax_rows(logits)
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, classes - 1)))
    if scenario == "bad_label":
        labels[draw(st.integers(0, n - 1))] = draw(
            st.sampled_from([-1, -7, classes, classes + 3, 2**40])
        )
    label_dtype = draw(st.sampled_from(["int32", "int64", "float32", "uint8"]))
    fractional = scenario == "fractional"
    if fractional:
        labels = labels.astype(np.float64)
        labels[draw(st.integers(0, n - 1))] += 0.5
        label_dtype = "float32"
    if label_dtype == "uint8" and (labels.min(initial=0) < 0 or labels.max(initial=0) > 255):
        label_dtype = "int64"
    return dict(
        logits=logits,
        labels=labels,
        sizes=sizes,
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        label_dtype=label_dtype,
        fractional=fractional,
    )


@PASS_SETTINGS
@given(case=classification_case())
def test_classification_pass_is_right_or_refuses_clearly(case):
    logits, labels, sizes = case["logits"], case["labels"], case["sizes"]
    dtype = case["dtype"]
    x = as_dtype(logits, dtype)
    y = labels.astype(case["label_dtype"]) if not case["fractional"] else labels.astype("float32")
    bounds = np.cumsum([0, *sizes])
    batches = [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    report, error = run_pass(identity_model(2, dtype), dataset_of(batches), loss)

    z = model_view(logits, dtype)
    first = next(((a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a), None)
    classes = logits.shape[1]
    if not expect_outcome(
        error,
        empty=len(labels) == 0,
        bad_labels=bool(np.any((labels < 0) | (labels >= classes))),
        fractional=case["fractional"],
        first_rows=prob_like_rows(z[first[0] : first[1]]) if first else None,
    ):
        return

    counted = np.ones(len(labels), bool)
    ref_loss, probs, true_prob, margin, finite = reference(z, labels, counted)
    assert report.loss.dtype == np.float32 and report.label.dtype == np.int32
    np.testing.assert_array_equal(report.example_id, np.arange(len(labels)))
    np.testing.assert_array_equal(report.label, labels)
    np.testing.assert_array_equal(report.n_tokens, 1)
    # Non-finite losses are reported as such, finite ones are right.
    np.testing.assert_array_equal(np.isfinite(report.loss), np.isfinite(ref_loss))
    np.testing.assert_array_equal(report.nonfinite, ~np.isfinite(ref_loss))
    ok = finite & np.isfinite(ref_loss)
    scale = np.max(np.abs(np.where(np.isfinite(z), z, 0)), axis=-1, initial=1.0)
    assert_close(report.loss[ok], ref_loss[ok], scale[ok], "loss")
    np.testing.assert_array_equal(report.loss, report.loss_sum)
    assert_close(report.true_prob[finite], true_prob[finite], 0, "true_prob")
    assert_close(report.margin[finite], margin[finite], 0, "margin")
    assert_close(report.confidence[finite], probs[finite].max(-1), 0, "confidence")
    chosen = np.take_along_axis(probs, report.prediction[:, None].astype(int), -1)[:, 0]
    assert np.all(chosen[finite] >= probs[finite].max(-1) - 1e-5), "prediction is not argmax"
    np.testing.assert_array_equal(report.correct, report.prediction == labels)
    assert np.all((report.margin[finite] >= -1) & (report.margin[finite] <= 1))


# -- compute_losses: sequences with ragged lengths and ignored tokens ---------------------


@st.composite
def sequence_case(draw):
    scenario = draw(st.sampled_from(SCENARIOS[:5] + ["probabilities", "no_data"]), label="scenario")
    classes = draw(st.integers(2, 5))
    batches = []
    sizes = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 3)))]
    if scenario == "empty_batch":
        sizes.insert(draw(st.integers(0, len(sizes))), 0)
    if scenario == "no_data":
        sizes = [0] * len(sizes)
    for n in sizes:
        width = draw(st.integers(1, 4))  # each batch padded to its own length
        logits = draw(hnp.arrays(np.float64, (n, width, classes), elements=LOGIT))
        if scenario == "probabilities":
            logits = softmax_rows(logits)
        labels = draw(hnp.arrays(np.int64, (n, width), elements=st.integers(0, classes - 1)))
        for row in range(n):  # padding (-1 = ignored) after each row's length, maybe all
            labels[row, draw(st.integers(0, width)) :] = -1
        batches.append((logits, labels))
    if scenario == "bad_label":
        logits, labels = batches[-1]
        labels[draw(st.integers(0, len(labels) - 1)), draw(st.integers(0, labels.shape[1] - 1))] = (
            draw(st.sampled_from([-5, classes, classes + 9]))
        )
    return dict(batches=batches, dtype=draw(st.sampled_from(FLOAT_DTYPES)), classes=classes)


@PASS_SETTINGS
@given(case=sequence_case())
def test_sequence_pass_with_ragged_ignored_tokens_is_right_or_refuses_clearly(case):
    dtype, classes = case["dtype"], case["classes"]
    batches = [(as_dtype(z, dtype), y.astype("int32")) for z, y in case["batches"]]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    report, error = run_pass(identity_model(3, dtype), dataset_of(batches), loss)

    views = [(model_view(z, dtype), y) for z, y in case["batches"]]
    counted_all = [y != -1 for _, y in views]
    first = next(((z, c) for z, c in zip((v[0] for v in views), counted_all) if len(z)), None)
    if not expect_outcome(
        error,
        empty=sum(len(y) for _, y in views) == 0,
        bad_labels=any(
            np.any(c & ((y < 0) | (y >= classes))) for (_, y), c in zip(views, counted_all)
        ),
        fractional=False,
        # every position's row is checked, padding included (the model sees it)
        first_rows=prob_like_rows(first[0]) if first else None,
    ):
        return

    row = 0
    for (z, y), counted in zip(views, counted_all):
        token_loss, probs, true_prob, margin, finite = reference(z, y, counted)
        for i in range(len(y)):
            got = report.select(np.array([row]))
            width = y.shape[1]
            mask = counted[i]
            np.testing.assert_array_equal(got.token_mask[0, :width], mask)
            assert not got.token_mask[0, width:].any()
            n_tok = int(mask.sum())
            assert got.n_tokens[0] == n_tok
            if n_tok == 0:  # all ignored: nothing counts, nothing is wrong
                assert got.loss_sum[0] == 0 and got.loss_mean[0] == 0 and got.margin[0] == 0
                assert got.correct[0] and got.token_accuracy[0] == 1
                row += 1
                continue
            if not np.all(finite[i][mask]):
                row += 1
                continue
            expected = token_loss[i][mask]
            scale = np.max(np.abs(z[i][mask]), initial=1.0) * n_tok
            if np.all(np.isfinite(expected)):
                assert_close(got.loss_sum[:1], np.array([expected.sum()]), scale, "loss_sum")
                assert_close(got.loss_mean[:1], np.array([expected.mean()]), scale, "loss_mean")
                assert_close(got.token_loss[0, :width][mask], expected, scale, "token_loss")
            else:
                assert got.nonfinite[0]
            # Example-level: the weakest counted token's, as correctness is (exact match).
            assert_close(got.true_prob[:1], np.array([true_prob[i][mask].min()]), 0, "true_prob")
            assert_close(got.margin[:1], np.array([margin[i][mask].min()]), 0, "margin")
            right = got.prediction[0, :width][mask] == y[i][mask]
            assert got.correct[0] == right.all()
            assert got.token_accuracy[0] == pytest.approx(right.mean())
            row += 1
    assert row == len(report)


def test_extreme_batch_gives_the_same_numbers_with_and_without_xla():
    z = np.array(
        [
            [3e38, -3e38, 0.0],
            [1e-38, 0.0, -1e-45],
            [np.nan, 1.0, 2.0],
            [-np.inf, 5.0, 5.0],
            [88.0, -104.0, 0.0],
        ],
        "float32",
    )
    y = np.array([1, 0, 2, 0, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = identity_model(2, "float32")
    plain = compute_losses(model, (z, y), loss=loss, verbose=0, jit_compile=False)
    xla = compute_losses(model, (z, y), loss=loss, verbose=0, jit_compile=True)
    # Probabilities of a row holding NaN are undefined (XLA and the plain kernels differ);
    # the loss of such a row is flagged non-finite by both.
    assert plain.nonfinite.tolist() == xla.nonfinite.tolist() == [True, False, True, True, False]
    finite = np.all(np.isfinite(z), axis=1)
    for column in ("loss", "true_prob", "margin", "confidence", "prediction", "correct"):
        np.testing.assert_allclose(
            getattr(plain, column)[finite], getattr(xla, column)[finite], rtol=1e-6, err_msg=column
        )
    np.testing.assert_array_equal(plain.loss[3], xla.loss[3])  # -inf logit of the label: inf
    for report in (plain, xla):
        # The NaN row has no prediction and is never right, with or without XLA (argmax
        # would pick an arbitrary class: the first not NaN in one, the last in the other).
        assert report.prediction[2] == -1 and not report.correct[2]
        assert np.isnan([report.confidence[2], report.true_prob[2], report.margin[2]]).all()
        # A -inf logit only rules its class out: the row keeps its probabilities.
        assert report.prediction[3] == 1 and report.confidence[3] == pytest.approx(0.5)


def test_rows_of_undefined_probabilities_have_no_prediction_and_are_never_right():
    z = np.array(
        [
            [np.nan, 1.0, 2.0],
            [1.0, 2.0, np.nan],
            [np.inf, 1.0, 2.0],
            [-np.inf, -np.inf, -np.inf],
            [0.0, 5.0, 1.0],
        ],
        "float32",
    )
    y = np.array([1, 0, 0, 0, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = identity_model(2, "float32")
    for jit_compile in (False, True):
        report = compute_losses(model, (z, y), loss=loss, verbose=0, jit_compile=jit_compile)
        assert report.prediction.tolist() == [-1, -1, -1, -1, 1]
        assert report.correct.tolist() == [False, False, False, False, True]
        assert np.isnan(report.confidence[:4]).all() and np.isnan(report.margin[:4]).all()
        assert report.nonfinite.tolist() == [True, True, True, True, False]
    # Metrics count a row without a prediction as an error of its class, in no cell or pair.
    from keras_erranalysis.analysis._metrics import (
        confusion_matrix,
        confusion_pairs,
        per_class_metrics,
    )

    cm = confusion_matrix(report)
    assert cm.sum() == 1 and cm[1, 1] == 1
    table = per_class_metrics(report)
    assert table.loc["0", ["support", "predicted", "correct"]].tolist() == [3, 0, 0]
    assert table.loc["1", ["support", "predicted", "correct", "recall"]].tolist() == [2, 1, 1, 0.5]
    assert table.loc["weighted avg", "error_rate"] == pytest.approx(4 / 5)
    assert confusion_pairs(report).empty
    # Sequences: a token of NaN logits makes its sequence wrong.
    tokens = np.stack([np.tile([[0.0, 3.0, 0.0]], (3, 1))] * 2).astype("float32")
    tokens[1, 2, 0] = np.nan
    report = compute_losses(
        identity_model(3, "float32"), (tokens, np.ones((2, 3), "int64")), loss=loss, verbose=0
    )
    assert report.correct.tolist() == [True, False]
    assert report.prediction[1].tolist() == [1, 1, -1]
    for jit_compile in (False, True):
        # XLA's min and max skip NaN: the sequence's margin and a probability row with a lone
        # NaN must still come out undefined.
        report = compute_losses(
            identity_model(3, "float32"),
            (tokens, np.ones((2, 3), "int64")),
            loss=loss,
            verbose=0,
            jit_compile=jit_compile,
        )
        assert np.isfinite(report.margin[0]) and np.isnan(report.margin[1])
        probs = np.array([[0.6, np.nan, 0.4], [0.2, 0.8, 0.0]], "float32")
        report = compute_losses(
            identity_model(2, "float32"),
            (probs, np.array([0, 1])),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            verbose=0,
            jit_compile=jit_compile,
        )
        assert report.prediction.tolist() == [-1, 1] and report.correct.tolist() == [False, True]


# -- compute_losses: multi-output labels and sample weights in any form (issue 17) -------

OUTPUT_NAMES = ["zeta", "alpha", "mid"]  # not in sorted order: Keras sorts dict outputs
WEIGHT = st.sampled_from([1.0, 0.5, 2.0, 0.0, 1.0, 3.0])
HOSTILE_WEIGHT = st.sampled_from([np.nan, -1.0, -0.5, np.inf, -np.inf])


def multi_output_model(classes, dict_outputs):
    inputs = [keras.Input((c,), name=f"in_{i}") for i, c in enumerate(classes)]
    heads = [keras.layers.Identity(name=OUTPUT_NAMES[i])(t) for i, t in enumerate(inputs)]
    outputs = dict(zip(OUTPUT_NAMES, heads)) if dict_outputs else heads
    return keras.Model(inputs, outputs if len(heads) > 1 or dict_outputs else heads[0])


def in_form(values, names, form):
    """Per-output values as fit takes them: a dict by name, a list or tuple in order."""
    if form == "bare":
        return values[0]
    if form in ("dict", "dict_missing"):
        return dict(zip(names, values))
    return list(values) if form == "list" else tuple(values)


@st.composite
def multi_output_case(draw):
    k = draw(st.integers(1, 3), label="outputs")
    classes = [draw(st.integers(2, 4)) for _ in range(k)]
    n = draw(st.integers(1, 6))
    logits = [
        draw(hnp.arrays(np.float32, (n, c), elements=st.floats(-5, 5, width=32))) for c in classes
    ]
    labels = [draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1))) for c in classes]
    output = draw(
        st.one_of(
            st.sampled_from(OUTPUT_NAMES[:k]),
            st.integers(-k, k - 1),
            st.sampled_from([None, k, -k - 1, 7, "nope"]),
        ),
        label="output",
    )
    weights = []
    for _ in range(k):
        weight = draw(hnp.arrays(np.float32, (n,), elements=WEIGHT))
        if draw(st.integers(0, 4)) == 0:  # sometimes NaN, negative or infinite weights
            rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n))
            for row in rows:
                weight[row] = draw(HOSTILE_WEIGHT)
        weights.append(weight)
    return dict(
        classes=classes,
        logits=logits,
        labels=labels,
        output=output,
        weights=weights,
        dict_outputs=draw(st.booleans()),
        label_form=draw(st.sampled_from(["dict", "list", "tuple"] + ["bare"] * (k == 1))),
        weight_form=draw(
            st.sampled_from(["none", "array", "dict", "dict_missing", "list", "tuple"])
        ),
        batch=draw(st.sampled_from([None, 1, 4])),  # None: in-memory arrays
    )


@settings(PASS_SETTINGS, max_examples=20)
@given(case=multi_output_case())
def test_multi_output_labels_and_weights_are_right_or_refused_clearly(case):
    classes, output, n = case["classes"], case["output"], len(case["labels"][0])
    k = len(classes)
    model = multi_output_model(classes, case["dict_outputs"])
    names = list(model.output_names)  # Keras' order of list labels
    labels = in_form(case["labels"], OUTPUT_NAMES, case["label_form"])
    if case["label_form"] in ("list", "tuple"):  # in Keras' order, as fit reads them
        labels = type(labels)(case["labels"][OUTPUT_NAMES.index(name)] for name in names)
    form = case["weight_form"]
    if form == "none":
        weights = None
    elif form == "array":  # one array weighs every output, as in fit
        weights = case["weights"][0]
    elif form in ("dict", "dict_missing"):
        weights = dict(zip(OUTPUT_NAMES, case["weights"]))
    else:
        in_order = [case["weights"][OUTPUT_NAMES.index(name)] for name in names]
        weights = in_order if form == "list" else tuple(in_order)
    x = list(case["logits"]) if k > 1 else case["logits"][0]
    parts = (x, labels) if weights is None else (x, labels, weights)
    # dict_missing: the weights of the analysed output are left out below, once it is known.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    # Which output is analysed, in Keras' terms; None when the call must be refused.
    if output is None:
        target = OUTPUT_NAMES[0] if k == 1 else None
    elif isinstance(output, str):
        target = output if output in OUTPUT_NAMES[:k] else None
    else:
        target = names[output] if -k <= output < k else None
    if form == "dict_missing" and target is not None and k > 1:
        parts = (x, labels, {key: w for key, w in weights.items() if key != target})
    data = parts
    if case["batch"] is not None:  # tf.data stacks a list into one tensor: tuples there
        parts = tuple(tuple(p) if isinstance(p, list) else p for p in parts)
        data = tf.data.Dataset.from_tensor_slices(parts).batch(case["batch"])
    try:
        report = compute_losses(model, data, loss=loss, output=output, verbose=0, jit_compile=False)
        error = None
    except ValueError as caught:
        report, error = None, str(caught)
    if target is None:
        assert error is not None, "a missing or unknown output must be refused"
        if output is not None:
            assert all(name in error for name in OUTPUT_NAMES[:k]), error
        assert "output=" in error, error
        event("refused: output")
        return
    j = OUTPUT_NAMES.index(target)
    if form == "none" or (form == "dict_missing" and k > 1):
        weight = np.ones(n, np.float32)
    elif form == "array":
        weight = case["weights"][0]
    else:
        weight = case["weights"][j]
    counts = {
        "NaN": int(np.isnan(weight).sum()),
        "a negative weight": int((weight < 0).sum()),
        "an infinite weight": int((weight == np.inf).sum()),
    }
    if any(counts.values()):
        assert error is not None and f"of the {n} examples" in error, error
        for what, count in counts.items():
            assert (f"{count} with {what}" in error) == (count > 0), error
        event("refused: weights")
        return
    assert error is None, error
    z = case["logits"][j].astype(np.float64)
    y = case["labels"][j]
    expected, _, _, _, _ = reference(z, y, np.ones(n, bool))
    np.testing.assert_array_equal(report.label, y)
    np.testing.assert_array_equal(report.n_tokens, (weight > 0).astype(int))
    assert_close(report.loss_sum, expected * weight, np.abs(z).max(initial=1.0) * 3, "loss")
    event("result")


# -- compute_losses: data in forms the pass cannot read name the fix (issue 17, item 8) ---


@st.composite
def input_form_case(draw):
    sequence = draw(st.booleans(), label="sequence")
    forms = ["arrays", "batched", "unbatched", "unbatched_again"]
    forms += ["ragged_arrays", "ragged_dataset", "ragged_unbatched"] if sequence else []
    n = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    return dict(
        sequence=sequence,
        form=draw(st.sampled_from(forms), label="form"),
        structure=draw(st.sampled_from(["bare", "dict", "tuple"])),
        lengths=lengths,
        weights=draw(st.booleans()),
        batch=draw(st.integers(1, 4)),
    )


def form_model(sequence, structure):
    inputs = keras.Input((None,) if sequence else (4,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(10, 4)(inputs)
    if not sequence:
        hidden = keras.layers.Flatten()(hidden)
    wrapped = {"dict": {"ids": inputs}, "tuple": [inputs]}.get(structure, inputs)
    return keras.Model(wrapped, keras.layers.Dense(3)(hidden))


@settings(PASS_SETTINGS, max_examples=20)
@given(case=input_form_case())
def test_data_the_pass_cannot_read_is_refused_naming_the_fix(case):
    sequence, form, lengths = case["sequence"], case["form"], case["lengths"]
    n, width = len(lengths), max(case["lengths"])
    rows = [[1 + (i + j) % 9 for j in range(size)] for i, size in enumerate(lengths)]
    if sequence:
        x = np.zeros((n, width), np.int32)
        for i, row in enumerate(rows):
            x[i, : len(row)] = row
        y = x % 3
    else:
        x = (np.arange(n * 4).reshape(n, 4) % 9).astype(np.int32)
        y = np.arange(n) % 3
    if form.startswith("ragged"):
        x = tf.ragged.constant(rows, dtype=tf.int32)
    structure = case["structure"]
    wrap = {"dict": lambda v: {"ids": v}, "tuple": lambda v: (v,)}.get(structure, lambda v: v)
    parts = (wrap(x), y) + ((np.ones(n, np.float32),) if case["weights"] else ())
    if form in ("arrays", "ragged_arrays"):
        data = parts
    else:
        data = tf.data.Dataset.from_tensor_slices(parts)
        if form in ("batched", "ragged_dataset"):
            data = data.batch(case["batch"])
        elif form == "unbatched_again":
            data = data.batch(case["batch"]).unbatch()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    try:
        report = compute_losses(
            form_model(sequence, structure), data, loss=loss, verbose=0, jit_compile=False
        )
        error = None
    except (ValueError, TypeError) as caught:
        report, error = None, str(caught)
    event(f"{form}: {'refused' if error else 'result'}")
    if form in ("arrays", "batched"):
        assert error is None, error
        assert len(report) == n and report.is_sequence == sequence
    elif form.startswith("unbatched"):
        assert error is not None and "single examples" in error and ".batch(n)" in error, error
    else:
        assert error is not None and "tf.RaggedTensor" in error, error
        assert "padded_batch" in error and "to_tensor()" in error, error


# -- summaries of finite numbers stay finite ----------------------------------------------


@FAST_SETTINGS
@given(
    losses=hnp.arrays(
        np.float32,
        st.integers(1, 300),
        elements=st.one_of(
            st.floats(0, float(np.finfo(np.float32).max), width=32),
            st.sampled_from([np.nan, np.inf, 2e38, 3.4e38]),
        ),
    )
)
def test_summaries_of_finite_losses_are_finite_and_exact(losses):
    from keras_erranalysis._loss_report import finite_mean
    from keras_erranalysis.pipeline import summary_line
    from keras_erranalysis.present._tensorboard import report_scalars

    finite = losses[np.isfinite(losses)]
    mean = finite_mean(losses)
    if not finite.size:
        assert np.isnan(mean)
        return
    assert np.isfinite(mean) and mean == pytest.approx(finite.astype(np.float64).mean())
    n = len(losses)
    report = LossReport(
        task="classification",
        num_classes=2,
        example_id=np.arange(n),
        loss=losses,
        loss_sum=losses,
        loss_mean=losses,
        label=np.zeros(n, np.int32),
        prediction=np.zeros(n, np.int32),
        confidence=np.ones(n, np.float32),
        true_prob=np.ones(n, np.float32),
        margin=np.ones(n, np.float32),
        correct=np.ones(n, bool),
        token_accuracy=np.ones(n, np.float32),
        n_tokens=np.ones(n, np.int32),
    )
    line = summary_line(1, report)
    assert "inf" not in line.split("mean loss")[1].split(",")[0], line
    assert float(line.split("mean loss ")[1].split(",")[0]) == pytest.approx(mean, rel=1e-4)
    assert "inf" not in repr(report).split("mean_loss=")[1]
    assert report_scalars(report)["loss_mean"] == pytest.approx(mean)


# -- decoders -----------------------------------------------------------------------------

# Tokens with control characters, bidi overrides, zero-width joiners, combining marks,
# astral characters, quotes and separators.
HOSTILE = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from(
            list('\x00\x07\x1b\r\n\t\x85\u2028\u2029\u202e\u200d\u0301\ufeff",;=<>&|\\\ud800\udfff')
        ),
    ),
    max_size=6,
)


def visible(token):
    """A token as tables show it: lone surrogates escaped, surrogate pairs joined."""
    return canonical_text(token).encode("utf-8", "backslashreplace").decode("utf-8")


@FAST_SETTINGS
@given(
    tokens=st.lists(HOSTILE, max_size=12),
    ids=st.lists(st.integers(-3, 20), max_size=10),
    sep=st.sampled_from(["", " ", "\u2063", "|"]),
)
def test_vocabulary_decodes_exactly_and_round_trips_through_json(tokens, ids, sep):
    vocab = Vocabulary(tokens, sep=sep)
    words = [visible(tokens[i]) if 0 <= i < len(tokens) else f"<{i}>" for i in ids]
    assert vocab.decode(ids) == sep.join(w for w in words if w != "")
    stored = json.loads(json.dumps(vocab.to_json()))
    again = Vocabulary.from_json(stored)
    # The tokens themselves come back exactly (surrogate escapes included: issue 17).
    assert again.tokens == [canonical_text(t) for t in tokens] == vocab.tokens
    assert again.decode(ids) == vocab.decode(ids)
    mapping = Vocabulary.from_any(dict(enumerate(tokens)), sep=sep)
    assert mapping.decode([i for i in ids if 0 <= i < len(tokens)]) == vocab.decode(
        [i for i in ids if 0 <= i < len(tokens)]
    )


@settings(FAST_SETTINGS, max_examples=40)
@given(names=st.lists(HOSTILE, min_size=3, max_size=3))
def test_hostile_label_names_survive_the_run_folder(names):
    report = classification_report(6)
    with tempfile.TemporaryDirectory() as folder:
        writer = RunWriter(folder, decoding={"label_names": names})
        frame = report.to_frame(label_names=names)
        writer.write_epoch(1, report, tables={"hardest": log_views(frame, k=3)})
        run = load_run(folder, verify=True)
        assert run.vocabulary("label_names").tokens == [canonical_text(n) for n in names]
        table = run.table("hardest", 1)
        expected = log_views(frame, k=3)
        assert table["label_text"].tolist() == expected["label_text"].tolist()
        assert run.frame(1)["prediction_text"].tolist() == frame["prediction_text"].tolist()
        # JSON lines are separated by "\n" only; U+0085 and U+2028 may stand raw inside a
        # string, so a reader must not split on them (str.splitlines would).
        text = (Path(folder) / "epoch_0001" / "hardest.jsonl").read_text("utf-8")
        lines = text.rstrip("\n").split("\n")
        assert [json.loads(line)["label_text"] for line in lines] == expected["label_text"].tolist()


# Text as os.fsdecode makes it from bytes that are not UTF-8, mixed with hostile characters.
FS_TEXT = st.builds(
    lambda raw, extra: __import__("os").fsdecode(raw) + extra,
    st.binary(max_size=12),
    HOSTILE,
)


@settings(FAST_SETTINGS, max_examples=60)
@given(texts=st.lists(FS_TEXT, min_size=4, max_size=8), names=st.lists(FS_TEXT, min_size=2))
def test_text_that_is_not_utf8_never_stops_feature_extraction_or_writing(texts, names):
    labels = np.arange(len(texts)) % 2
    features = extract_features(texts=texts, labels=labels, pos=False, label_names=names)
    assert len(features.example_ids) == len(texts)
    report = classification_report(6)
    with tempfile.TemporaryDirectory() as folder:
        writer = RunWriter(folder, decoding={"label_names": names})
        frame = report.to_frame(label_names=names)
        writer.write_epoch(1, report, tables={"hardest": log_views(frame, k=3)})
        run = load_run(folder, verify=True)
        assert run.vocabulary("label_names", 1).tokens == [canonical_text(n) for n in names]
        run.table("hardest", 1)


# -- load_run on well-formed folders of the wrong structure --------------------------------


def read_structure(folder):
    run = load_run(folder)
    for epoch in run.epochs:
        run.report(epoch)
        run.frame(epoch)
        run.decoding(epoch)
        for name in run.meta(epoch).get("tables", {}):
            run.table(name, epoch)
        for name in run.files(epoch):
            run.file_path(name, epoch)
    return run.history


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=6),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=6,
)


@settings(FAST_SETTINGS, max_examples=200)
@given(data=st.data())
def test_well_formed_json_of_the_wrong_structure_is_a_named_format_error(pristine_run, data):
    from keras_erranalysis.run._files import _json_checksum

    folder, files, _ = pristine_run
    name = data.draw(st.sampled_from([f for f in files if f.endswith(".json")]), label="file")
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(folder, copy)
        target = copy / name
        document = json.loads(target.read_text())
        document.pop("checksum")
        # Walk to a random place in the document and replace or drop what is there.
        node = document
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys), label="key")
            child = node[key]
            if isinstance(child, (dict, list)) and child and data.draw(st.booleans(), label="in"):
                node = child
                continue
            if isinstance(node, dict) and data.draw(st.booleans(), label="drop"):
                del node[key]
            else:
                node[key] = data.draw(JSON_VALUE, label="value")
            break
        assume(all(np.isfinite(v) for v in _floats(document)))
        target.write_text(json.dumps({**document, "checksum": _json_checksum(document)}))
        try:
            read_structure(copy)
        except RunFormatError as error:
            assert Path(name).name in str(error) or "decoding_" in str(error), str(error)
            event("RunFormatError")
        else:
            event("read")


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)
    elif isinstance(value, list):
        for item in value:
            yield from _floats(item)


# -- load_run on corrupted folders ----------------------------------------------------------


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine") / "run"
    rng = np.random.default_rng(1)
    writer = RunWriter(folder, decoding={"vocab": ["", "a", "b", "c", "d"]})
    for epoch in (1, 2):
        n, width = 7, 4
        token_loss = rng.exponential(size=(n, width)).astype("float32")
        mask = rng.random((n, width)) > 0.2
        token_loss *= mask
        report = LossReport(
            task="sequence",
            num_classes=5,
            example_id=np.arange(n, dtype="int64"),
            loss=token_loss.sum(1),
            loss_sum=token_loss.sum(1),
            loss_mean=token_loss.mean(1),
            label=rng.integers(0, 5, (n, width)).astype("int32"),
            prediction=rng.integers(0, 5, (n, width)).astype("int32"),
            confidence=rng.random(n).astype("float32"),
            true_prob=rng.random(n).astype("float32"),
            margin=rng.uniform(-1, 1, n).astype("float32"),
            correct=rng.random(n) > 0.5,
            token_accuracy=rng.random(n).astype("float32"),
            n_tokens=mask.sum(1).astype("int32"),
            token_loss=token_loss,
            token_confidence=rng.random((n, width)).astype("float32"),
            token_true_prob=rng.random((n, width)).astype("float32"),
            token_margin=rng.uniform(-1, 1, (n, width)).astype("float32"),
            token_mask=mask,
            inputs={"tokens": rng.integers(0, 5, (n, width)).astype("int32")},
            extra={"attention_entropy": rng.random(n).astype("float32")},
        )
        frame = report.to_frame(vocab=["", "a", "b", "c", "d"])
        writer.write_epoch(epoch, report, tables={"hardest": log_views(frame, k=3)})
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return folder, files, read_everything(folder, verify=True)


def read_everything(folder, *, verify):
    run = load_run(folder, verify=verify)
    seen = {"epochs": run.epochs, "vocab": run.vocabulary("vocab").tokens}
    for epoch in run.epochs:
        report = run.report(epoch)
        for name in ("task", "num_classes", "reduction"):
            seen[f"{epoch}/{name}"] = getattr(report, name)
        for column in (
            "example_id",
            "loss",
            "loss_sum",
            "label",
            "prediction",
            "margin",
            "correct",
            "n_tokens",
            "token_loss",
            "token_mask",
        ):
            seen[f"{epoch}/{column}"] = np.array(getattr(report, column))
        seen[f"{epoch}/inputs"] = {k: np.array(v) for k, v in report.inputs.items()}
        seen[f"{epoch}/extra"] = {k: np.array(v) for k, v in report.extra.items()}
        seen[f"{epoch}/hardest"] = run.table("hardest", epoch)
        seen[f"{epoch}/frame"] = run.frame(epoch)
    seen["history"] = run.history
    return seen


def assert_same(seen, truth):
    assert seen.keys() == truth.keys()
    for key, value in truth.items():
        got = seen[key]
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got, value)
        elif isinstance(value, dict):
            assert got.keys() == value.keys(), key
            for name in value:
                np.testing.assert_array_equal(got[name], value[name], err_msg=key)
        elif isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and got.shape == value.shape, key
            np.testing.assert_array_equal(got, value, err_msg=key)
        else:
            assert got == value, key


CORRUPTIONS = st.sampled_from(["flip", "truncate", "delete", "garbage", "json"])


@settings(FAST_SETTINGS, max_examples=200)
@given(data=st.data(), how=CORRUPTIONS)
def test_corrupted_run_folder_gives_a_named_error_or_exact_data(pristine_run, data, how):
    folder, files, truth = pristine_run
    name = data.draw(st.sampled_from(files), label="file")
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(folder, copy)
        target = copy / name
        raw = bytearray(target.read_bytes())
        if how == "flip":
            assume(raw)
            where = data.draw(st.integers(0, len(raw) - 1), label="byte")
            raw[where] ^= data.draw(st.integers(1, 255), label="mask")
            target.write_bytes(bytes(raw))
        elif how == "truncate":
            target.write_bytes(bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))]))
        elif how == "delete":
            target.unlink()
        elif how == "garbage":
            target.write_bytes(data.draw(st.binary(max_size=64), label="garbage"))
        else:
            target.write_text(
                json.dumps(
                    data.draw(
                        st.recursive(
                            st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                            lambda kids: (
                                st.lists(kids, max_size=3)
                                | st.dictionaries(st.text(max_size=6), kids, max_size=3)
                            ),
                        ),
                        label="json",
                    )
                )
            )
        # Byte flips inside array data are only caught by the checksums (verify=True);
        # every other corruption must be caught by the default, cheap checks.
        verify = how == "flip"
        try:
            seen = read_everything(copy, verify=verify)
        except RunFormatError as error:
            assert Path(name).name in str(error), str(error)
            return
        assert_same(seen, truth)
