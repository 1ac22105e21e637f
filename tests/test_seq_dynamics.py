"""Sequence dynamics agree with exact-match correctness (issue 16, item 5).

Hand-made histories first (no training), then one small seq2seq training with planted wrong
label sequences, read back from its run folder.
"""

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_erranalysis import ErrorAnalysis, PassOptions, compute_losses, load_run
from keras_erranalysis.analysis import (
    DEFAULT_SEQUENCE_THRESHOLD,
    compute_dynamics,
    likely_mislabeled,
    sequence_probabilities,
)
from keras_erranalysis.present import plot_margin_histogram


def token_history(probs, others):
    """Example-level histories ``(E, N)`` of token probabilities ``(E, N, T)``, all counted.

    ``others`` is the largest other class's probability at each position: a token is right
    when its label's probability beats it.
    """
    mask = np.ones(probs.shape[1:], bool)
    weakest, per_token = sequence_probabilities(probs, mask)
    margin = (probs - others).min(axis=-1)
    correct = (probs > others).all(axis=-1)
    return weakest, margin, correct, per_token


def test_sequence_probabilities_by_hand():
    probs = np.array([[0.9, 0.9, 0.4, 0.0], [0.8, 0.5, 0.5, 0.5], [np.nan, 0.2, 0.3, 0.4]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    weakest, per_token = sequence_probabilities(probs, mask)
    np.testing.assert_allclose(weakest[:2], [0.4, 0.5])
    np.testing.assert_allclose(per_token[:2], [(0.9 * 0.9 * 0.4) ** (1 / 3), 0.4**0.5])
    assert np.isnan(weakest[2]) and np.isnan(per_token[2])  # an undefined counted token
    # No counted token: nothing contradicts the label. A zero probability stays finite.
    weakest, per_token = sequence_probabilities([[0.0, 0.0], [0.0, 1.0]], [[0, 0], [1, 1]])
    assert weakest.tolist() == [1.0, 0.0] and per_token[0] == 1.0
    assert 0 < per_token[1] < 1e-18


def test_never_right_sequences_are_never_easy_to_learn():
    # Eight tokens; seven are certain at every epoch, one is always lost to another phoneme.
    epochs, n, length = 6, 4, 8
    probs = np.full((epochs, n, length), 0.98)
    others = np.full((epochs, n, length), 0.01)
    probs[:, :2, 3], others[:, :2, 3] = 0.3, 0.65  # rows 0, 1: never right
    probs[:, 2, 5], others[:, 2, 5] = 0.5, 0.5  # row 2: a tie, never right either
    weakest, margin, correct, per_token = token_history(probs, others)
    assert not correct[:, :3].any() and correct[:, 3].all()

    dyn = compute_dynamics(weakest, margin, correct, sequence_prob=per_token)
    assert dyn["never_learned"].tolist() == [True, True, True, False]
    assert dyn["region"].tolist()[:3] == ["hard-to-learn"] * 3
    assert dyn["region"].iloc[3] == "easy-to-learn"
    # The token-mean probability (the old definition) put all of them in the easy corner.
    token_mean = probs.mean(axis=-1)
    old = compute_dynamics(token_mean, margin, correct)
    assert (old["confidence"] >= 0.5).all() and (old["variability"] < 0.2).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    epochs=st.integers(1, 6),
    length=st.integers(1, 7),
)
def test_no_never_right_sequence_is_easy_to_learn(seed, epochs, length):
    rng = np.random.default_rng(seed)
    n, classes = 40, 3
    logits = rng.normal(scale=rng.uniform(0.5, 6), size=(epochs, n, length, classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    label_prob = probs[..., 0]
    other = probs[..., 1:].max(-1)
    mask = rng.random((n, length)) < 0.8
    weakest, per_token = sequence_probabilities(label_prob, mask)
    margin = np.where(mask, label_prob - other, np.inf).min(-1)
    margin = np.where(mask.any(-1), margin, 0.0)
    correct = ((label_prob > other) | ~mask).all(-1)
    dyn = compute_dynamics(weakest, margin, correct, sequence_prob=per_token)
    never = dyn["never_learned"].to_numpy()
    assert not ((dyn["region"] == "easy-to-learn").to_numpy() & never).any()
    flagged = likely_mislabeled(dyn)
    assert (flagged["region"] != "easy-to-learn").all()


def test_sequence_dynamics_flag_swapped_label_sequences_not_hard_right_ones():
    epochs, n, length = 5, 6, 6
    probs = np.full((epochs, n, length), 0.95)
    others = np.full((epochs, n, length), 0.03)
    probs[:, :2], others[:, :2] = 0.02, 0.9  # rows 0, 1: another word's phonemes
    probs[:, 2, 4], others[:, 2, 4] = 0.1, 0.85  # row 2: one hard phoneme, always wrong
    probs[:, 3, :2], others[:, 3, :2] = 0.3, 0.6  # row 3: two
    weakest, margin, correct, per_token = token_history(probs, others)
    dyn = compute_dynamics(weakest, margin, correct, sequence_prob=per_token)

    table = likely_mislabeled(dyn)  # the sequence method: the default for these dynamics
    assert table.index.tolist() == [0, 1]
    np.testing.assert_allclose(table["sequence_confidence"], 0.02)
    assert likely_mislabeled(dyn, k=4).index.tolist() == [0, 1, 3, 2]
    # The weakest token's margin alone (AUM) cannot tell the swapped rows from the hard ones.
    by_aum = likely_mislabeled(dyn, method="aum")
    assert {2, 3} & set(by_aum.index)
    with pytest.raises(ValueError, match="sequence_confidence.*sequence_prob"):
        likely_mislabeled(dyn.drop(columns="sequence_confidence"), method="sequence")
    # The margin histogram shades what the sequence rule flags, not the AUM cut.
    figure = plot_margin_histogram(dyn)
    title = figure.axes[0].get_title()
    assert "sequence_confidence" in title and f"{DEFAULT_SEQUENCE_THRESHOLD:.3g}" in title
    assert any("flagged: 2" in text.get_text() for text in figure.axes[0].get_legend().texts)
    plt.close(figure)


def _tagger(vocab: int, classes: int) -> keras.Model:
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(vocab, 16, mask_zero=True)(inputs)
    outputs = keras.layers.Dense(classes)(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_seq2seq_run_flags_planted_wrong_label_sequences(tmp_path):
    # Each token maps to one output class; 5% of the label sequences are another row's.
    rng = np.random.default_rng(0)
    n, length, vocab, classes = 600, 7, 30, 12
    x = rng.integers(1, vocab, (n, length))
    x[rng.random((n, length)) < 0.15] = 0  # padding positions, masked
    mapping = rng.integers(0, classes, vocab)
    y = mapping[x]
    planted_rows = rng.choice(n, 30, replace=False)
    y[planted_rows] = y[np.roll(planted_rows, 1)]
    planted = np.zeros(n, bool)
    planted[planted_rows] = [np.any((y[r] != mapping[x[r]]) & (x[r] > 0)) for r in planted_rows]

    keras.utils.set_random_seed(0)
    model = _tagger(vocab, classes)
    log_dir = tmp_path / "run"
    callback = ErrorAnalysis(
        (x, y), log_dir=log_dir, verbose=0, pass_options=PassOptions(jit_compile=False)
    )
    model.fit(x, y, batch_size=32, epochs=6, verbose=0, callbacks=[callback])

    run = load_run(log_dir)
    dyn = run.dynamics()
    assert "sequence_confidence" in dyn.columns
    never = dyn["never_learned"].to_numpy()
    assert never[planted].all()  # a planted sequence is never right ...
    assert not ((dyn["region"] == "easy-to-learn").to_numpy() & never).any()  # ... nor easy
    flagged = np.zeros(n, bool)
    flagged[run.likely_mislabeled().index.to_numpy()] = True
    precision = (flagged & planted).sum() / flagged.sum()
    recall = (flagged & planted).sum() / planted.sum()
    assert precision >= 0.8 and recall >= 0.8, (precision, recall, flagged.sum())
    assert (dyn.loc[flagged, "sequence_confidence"] < DEFAULT_SEQUENCE_THRESHOLD).all()

    # The pass's example-level numbers are the weakest counted token's.
    report = compute_losses(model, (x, y), verbose=0, jit_compile=False)
    weakest, _ = sequence_probabilities(report.token_true_prob, report.token_mask)
    np.testing.assert_allclose(report.true_prob, weakest, rtol=1e-6)
    low_margin = np.where(report.token_mask, report.token_margin, np.inf).min(-1)
    np.testing.assert_allclose(report.margin, low_margin, rtol=1e-6)
    assert np.array_equal(report.correct, report.margin > 0)
