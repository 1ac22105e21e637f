import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from keras_erranalysis.analysis._dynamics import compute_dynamics, compute_token_dynamics
from keras_erranalysis.analysis._mislabeled import (
    DEFAULT_METHOD,
    estimate_num_label_errors,
    likely_mislabeled,
    mislabel_score,
)

# A hand-made history: 4 epochs (rows) x 4 examples (columns).
TRUE_PROB = np.array(
    [
        [0.2, 0.90, 0.10, 0.6],
        [0.8, 0.95, 0.05, 0.4],
        [0.3, 0.90, 0.10, 0.7],
        [0.9, 0.95, 0.05, 0.3],
    ]
)
MARGIN = np.array(
    [
        [-0.5, 0.8, -0.8, 0.2],
        [0.6, 0.9, -0.9, -0.2],
        [-0.3, 0.8, -0.8, 0.4],
        [0.8, 0.9, -0.9, -0.4],
    ]
)
CORRECT = MARGIN > 0
LOSS = np.array(
    [
        [1.6, 0.10, 2.3, 0.50],
        [0.02, 0.05, 3.0, 0.90],
        [1.2, 0.10, 2.3, 0.35],
        [0.01, 0.05, 3.0, 1.20],
    ]
)
LABEL = np.array([3, 1, 7, 0])
PREDICTION = np.array(
    [
        [5, 1, 2, 0],
        [3, 1, 2, 8],
        [5, 1, 4, 0],
        [3, 1, 2, 6],
    ]
)


def hand_made(**options):
    return compute_dynamics(
        TRUE_PROB, MARGIN, CORRECT, loss=LOSS, prediction=PREDICTION, label=LABEL, **options
    )


def test_hand_made_history_matches_values_computed_by_hand():
    dyn = hand_made(hard_k=2)
    assert list(dyn.index) == [0, 1, 2, 3]
    np.testing.assert_allclose(dyn["confidence"], [0.55, 0.925, 0.075, 0.5])
    # population std: sqrt(mean((0.2-.55)^2, (0.8-.55)^2, ...)) = sqrt(0.0925)
    np.testing.assert_allclose(dyn["variability"], [np.sqrt(0.0925), 0.025, 0.025, np.sqrt(0.025)])
    np.testing.assert_allclose(dyn["correctness"], [0.5, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(dyn["aum"], [0.15, 0.85, -0.85, 0.0], atol=1e-12)
    # right->wrong transitions: ex0 F T F T -> 1; ex3 T F T F -> 2
    assert dyn["forgetting_events"].tolist() == [1, 0, 0, 2]
    assert dyn["never_learned"].tolist() == [False, False, True, False]
    assert dyn["first_learned_epoch"].tolist() == [2, 1, -1, 1]
    assert dyn["final_correct"].tolist() == [True, True, False, False]
    assert dyn["region"].tolist() == [
        "ambiguous",
        "easy-to-learn",
        "hard-to-learn",
        "easy-to-learn",
    ]
    # top-2 losses per epoch: {2,0}, {2,3}, {2,0}, {2,3}
    assert dyn["hard_epochs"].tolist() == [2, 0, 4, 2]
    assert dyn["hard_streak"].tolist() == [1, 0, 4, 1]
    np.testing.assert_allclose(dyn["loss_mean"], [0.7075, 0.075, 2.65, 0.7375])
    assert dyn["label"].tolist() == [3, 1, 7, 0]
    # ex0 predicts 5,3,5,3: tie -> smallest label; its wrong predictions are all 5
    assert dyn["predicted_label"].tolist() == [3, 1, 2, 0]
    np.testing.assert_allclose(dyn["predicted_label_share"], [0.5, 1.0, 0.75, 0.5])
    assert dyn["suggested_label"].tolist() == [5, -1, 2, 6]
    np.testing.assert_allclose(dyn["suggested_label_share"], [0.5, 0.0, 0.75, 0.25])


def test_without_loss_examples_rank_by_true_prob_and_epochs_number_rows():
    dyn = compute_dynamics(TRUE_PROB, MARGIN, CORRECT, hard_k=2, epochs=[2, 4, 6, 8])
    assert dyn["hard_epochs"].tolist() == [2, 0, 4, 2]
    assert dyn["first_learned_epoch"].tolist() == [4, 2, -1, 2]
    assert "loss_mean" not in dyn and "suggested_label" not in dyn
    # default hard_k = ceil(10% of N) = 1: only example 2 is the hardest, every epoch
    assert compute_dynamics(TRUE_PROB, MARGIN, CORRECT)["hard_epochs"].tolist() == [0, 0, 4, 0]


def test_region_thresholds_are_options():
    dyn = hand_made(variability_threshold=0.5, confidence_threshold=0.52)
    assert dyn["region"].tolist() == [
        "easy-to-learn",
        "easy-to-learn",
        "hard-to-learn",
        "hard-to-learn",
    ]


def test_memmap_list_of_epochs_and_tiny_chunks_give_the_same_frame(tmp_path):
    expected = hand_made(hard_k=2)
    files = {}
    for name, values in {"tp": TRUE_PROB, "mg": MARGIN, "ok": CORRECT, "loss": LOSS}.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, values.astype(np.float32) if values.dtype.kind == "f" else values)
        files[name] = np.load(path, mmap_mode="r")
    mapped = compute_dynamics(
        files["tp"],
        files["mg"],
        files["ok"],
        loss=files["loss"],
        prediction=PREDICTION,
        label=LABEL,
        hard_k=2,
        chunk_size=1,
    )
    pd.testing.assert_frame_equal(mapped, expected, check_exact=False, atol=1e-6)
    listed = compute_dynamics(
        list(TRUE_PROB),
        list(MARGIN),
        list(CORRECT),
        loss=list(LOSS),
        prediction=list(PREDICTION),
        label=LABEL,
        hard_k=2,
        chunk_size=3,
    )
    pd.testing.assert_frame_equal(listed, expected)


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 8), st.integers(1, 6))))
def test_forgetting_and_first_learned_match_a_plain_loop(correct):
    prob = correct.astype(float) * 0.6 + 0.2
    dyn = compute_dynamics(prob, 2 * prob - 1, correct, chunk_size=2)
    for j in range(correct.shape[1]):
        column = correct[:, j].tolist()
        events = sum(1 for a, b in zip(column, column[1:]) if a and not b)
        assert dyn["forgetting_events"].iloc[j] == events
        assert dyn["never_learned"].iloc[j] == (not any(column))
        first = column.index(True) + 1 if any(column) else -1
        assert dyn["first_learned_epoch"].iloc[j] == first


def test_likely_mislabeled_ranks_and_flags_by_method():
    dyn = hand_made()
    table = likely_mislabeled(dyn, k=4)
    assert table.index.tolist() == [2, 3, 0, 1]  # by AUM, lowest first
    assert table.columns[:5].tolist() == [
        "mislabel_score",
        "flagged",
        "label",
        "suggested_label",
        "suggested_label_share",
    ]
    assert table["flagged"].tolist() == [True, False, False, False]  # aum < -0.2
    assert likely_mislabeled(dyn).index.tolist() == [2]
    assert likely_mislabeled(dyn, threshold=0.1).index.tolist() == [2, 3]
    # correctness ties (ex0, ex3 both 0.5) are broken by the lower AUM
    assert likely_mislabeled(dyn, k=4, method="correctness").index.tolist() == [2, 3, 0, 1]
    scores = mislabel_score(dyn, method="hard_to_learn")
    np.testing.assert_allclose(scores, 1 - dyn["confidence"] - dyn["variability"])
    assert likely_mislabeled(dyn, method="hard_to_learn").index.tolist() == [2]
    with pytest.raises(ValueError, match="choose one of"):
        likely_mislabeled(dyn, method="loss")
    with pytest.raises(ValueError, match="lacks column"):
        likely_mislabeled(dyn.drop(columns="aum"))


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="margin has shape"):
        compute_dynamics(TRUE_PROB, MARGIN[:, :3], CORRECT)
    with pytest.raises(ValueError, match=r"epochs first"):
        compute_dynamics(TRUE_PROB[0], MARGIN[0], CORRECT[0])
    with pytest.raises(ValueError, match="hard_k"):
        compute_dynamics(TRUE_PROB, MARGIN, CORRECT, hard_k=9)
    with pytest.raises(ValueError, match="label must have shape"):
        compute_dynamics(TRUE_PROB, MARGIN, CORRECT, label=[1, 2])


def test_token_dynamics_one_row_per_counted_token():
    # 2 epochs, 2 sequences of length 3; position (0, 2) and (1, 0) are padding.
    token_true_prob = np.array(
        [[[0.9, 0.2, 0.5], [0.0, 0.7, 0.1]], [[0.8, 0.1, 0.5], [0.0, 0.9, 0.6]]]
    )
    token_margin = np.array(
        [[[0.8, -0.6, 0.0], [0.0, 0.4, -0.8]], [[0.6, -0.8, 0.0], [0.0, 0.8, 0.2]]]
    )
    token_mask = np.array([[True, True, False], [False, True, True]])
    token_label = np.array([[1, 2, 0], [0, 3, 4]])
    token_prediction = np.array([[[1, 5, 0], [0, 3, 2]], [[1, 5, 0], [0, 3, 4]]])
    tok = compute_token_dynamics(
        token_true_prob,
        token_margin,
        token_mask,
        token_prediction,
        token_label,
        example_id=np.array([10, 11]),
    )
    assert tok[["example_id", "position", "label"]].values.tolist() == [
        [10, 0, 1],
        [10, 1, 2],
        [11, 1, 3],
        [11, 2, 4],
    ]
    np.testing.assert_allclose(tok["confidence"], [0.85, 0.15, 0.8, 0.35])
    np.testing.assert_allclose(tok["aum"], [0.7, -0.7, 0.6, -0.3])
    np.testing.assert_allclose(tok["correctness"], [1.0, 0.0, 1.0, 0.5])
    assert tok["suggested_label"].tolist() == [-1, 5, -1, 2]
    assert tok["forgetting_events"].tolist() == [0, 0, 0, 0]
    top = likely_mislabeled(tok, k=1)
    assert top[["example_id", "position", "suggested_label"]].values.tolist() == [[10, 1, 5]]
    # Without predictions a token is right when its margin is positive.
    no_pred = compute_token_dynamics(token_true_prob, token_margin, token_mask, chunk_size=1)
    np.testing.assert_allclose(no_pred["correctness"], [1.0, 0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="token_mask must have shape"):
        compute_token_dynamics(token_true_prob, token_margin, token_mask[:, :2])


def _softmax_regression_history(x, labels, epochs, seed):
    """Per-epoch probabilities of a numpy softmax regression trained with minibatch SGD."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((x.shape[1], 10))
    bias = np.zeros(10)
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            logits = x[batch] @ weights + bias
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            probs[np.arange(len(batch)), labels[batch]] -= 1.0
            weights -= 0.5 * x[batch].T @ probs / len(batch)
            bias -= 0.5 * probs.mean(0)
        logits = x @ weights + bias
        probs = np.exp(logits - logits.max(1, keepdims=True))
        history.append(probs / probs.sum(1, keepdims=True))
    return np.stack(history)


def test_planted_flipped_labels_dominate_the_top():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data[:600] / 16.0
    clean = digits.target[:600]
    rng = np.random.default_rng(0)
    flipped = rng.random(len(clean)) < 0.1
    labels = clean.copy()
    labels[flipped] = (clean[flipped] + rng.integers(1, 10, flipped.sum())) % 10

    probs = _softmax_regression_history(x, labels, epochs=8, seed=0)
    rows = np.arange(len(labels))
    true_prob = probs[:, rows, labels]
    others = probs.copy()
    others[:, rows, labels] = -1.0
    margin = true_prob - others.max(axis=2)
    prediction = probs.argmax(axis=2)
    dyn = compute_dynamics(
        true_prob, margin, prediction == labels, prediction=prediction, label=labels
    )

    n_noisy = int(flipped.sum())
    top = likely_mislabeled(dyn, k=n_noisy)
    precision_at_n = flipped[top.index].mean()
    assert precision_at_n > 0.7, precision_at_n  # chance is 0.1
    flagged = likely_mislabeled(dyn)
    assert flipped[flagged.index].mean() > 0.7
    assert flipped[flagged.index].sum() > 0.6 * n_noisy
    # The label the model keeps predicting is mostly the true one.
    hits = top[flipped[top.index]]
    assert (hits["suggested_label"].to_numpy() == clean[hits.index]).mean() > 0.8


# A hand-made dynamics frame for the confident-learning count (values chosen, not trained).
CL_FRAME = pd.DataFrame(
    {
        "label": [0, 0, 0, 0, 1, 1, 1, 1],
        "confidence": [0.9, 0.8, 0.5, 0.2, 0.9, 0.7, 0.4, 0.3],
        "aum": [0.8, 0.7, 0.1, -0.5, 0.8, 0.05, -0.2, -0.35],
        "suggested_label": [-1, 1, 1, 1, -1, 0, 2, 0],
    }
)


def test_confident_learning_count_matches_values_computed_by_hand():
    # t_0 = mean confidence of label 0 = (0.9+0.8+0.5+0.2)/4 = 0.6; t_1 = 2.3/4 = 0.575.
    # Largest other probability = confidence - aum = [.1, .1, .4, .7, .1, .65, .6, .65].
    # ex0, ex4: never wrong, confidence >= t -> diagonal.
    # ex1: other 0.1 < t_1 -> diagonal (0.8 >= t_0).   ex2: 0.4 < t_1, 0.5 < t_0 -> uncounted.
    # ex3: other 0.7 >= t_1 and 0.2 < t_0 -> off-diagonal.
    # ex5: other 0.65 >= t_0 but its given class passes (0.7 >= t_1) and wins -> diagonal.
    # ex6: suggests class 2, which nobody carries as a label (no threshold) -> uncounted.
    # ex7: other 0.65 >= t_0 and 0.3 < t_1 -> off-diagonal.
    # Rows calibrated to the class sizes: 1 * 4/3 + 1 * 4/3 = 2.67 -> 3 label errors.
    assert estimate_num_label_errors(CL_FRAME) == 3
    # Every row on the diagonal: nothing to count.
    clean = CL_FRAME.assign(aum=0.5, suggested_label=-1)
    assert estimate_num_label_errors(clean) == 0
    with pytest.raises(ValueError, match="label="):
        estimate_num_label_errors(CL_FRAME.drop(columns="label"))


def _cl_rows(n, label, confidence, aum, suggested):
    """``n`` identical rows of a dynamics frame with what the confident joint reads."""
    return pd.DataFrame(
        {"label": label, "confidence": confidence, "aum": aum, "suggested_label": suggested},
        index=range(n),
    )


def test_aum_cl_flags_down_the_aum_ranking_to_the_estimated_count():
    # The default before Dec 2026, still reachable by name (the default is "aum_fence").
    assert DEFAULT_METHOD == "aum_fence"

    # Three classes of 30; clean rows at confidence 0.6, other probability 0.3.
    dyn = pd.concat(
        [
            _cl_rows(28, 0, 0.6, 0.3, -1),
            _cl_rows(1, 0, 0.20, -0.60, 1),  # row 28: off-diagonal, below the cut
            _cl_rows(1, 0, 0.44, -0.18, 2),  # row 29: off-diagonal (0.62 >= t_2), above the cut
            _cl_rows(29, 1, 0.6, 0.3, -1),
            _cl_rows(1, 1, 0.38, -0.22, 0),  # row 59: off-diagonal, below the cut
            _cl_rows(29, 2, 0.6, 0.3, -1),
            # Row 89: not counted (other 0.49 < t_0 = 0.581, own 0.3 < t_2 = 0.59), but its
            # AUM is lower than row 29's.
            _cl_rows(1, 2, 0.30, -0.19, 0),
        ],
        ignore_index=True,
    )
    # Every row of classes 0 and 1 is counted: 2 + 1 errors; each cell holds 1 of 30 (< 10%,
    # not concentrated).
    assert estimate_num_label_errors(dyn) == 3
    # aum < -0.2 flags rows 28 and 59; the count (3) goes one further down the AUM ranking:
    # row 89 (-0.19), not the counted row 29 (-0.18).
    assert likely_mislabeled(dyn, method="aum_cl").index.tolist() == [28, 59, 89]
    assert likely_mislabeled(dyn, method="aum").index.tolist() == [28, 59]
    # The threshold moves the AUM part only; the count still reaches three.
    assert likely_mislabeled(dyn, method="aum_cl", threshold=-0.4).index.tolist() == [28, 59, 89]
    # ... and when the cut-off flags more than the count, the cut-off wins.
    looser = likely_mislabeled(dyn, method="aum_cl", threshold=-0.17)
    assert looser.index.tolist() == [28, 59, 89, 29]
    # Same ranking as "aum".
    pd.testing.assert_series_equal(
        mislabel_score(dyn, method="aum_cl"), mislabel_score(dyn, method="aum")
    )
    # Without given labels (e.g. recorder.dynamics() without label=): the AUM cut-off alone.
    assert likely_mislabeled(dyn.drop(columns="label"), method="aum_cl").index.tolist() == [28, 59]
    # In the 8-row frame both off-diagonal cells are concentrated (1 of 4 rows each): their
    # rows below aum 0 are flagged, and their count (2.67 -> 3) is not spent elsewhere.
    assert likely_mislabeled(CL_FRAME, method="aum_cl").index.tolist() == [3, 7]


def test_planted_class_pair_flips_dominate_the_top_and_the_count_is_close():
    from sklearn.datasets import load_digits

    pairs = {0: 6, 6: 0, 1: 7, 7: 1, 2: 3, 3: 2, 4: 9, 9: 4, 5: 8, 8: 5}
    digits = load_digits()
    x = digits.data[:600] / 16.0
    clean = digits.target[:600]
    rng = np.random.default_rng(0)
    flipped = rng.random(len(clean)) < 0.2
    labels = clean.copy()
    labels[flipped] = [pairs[int(v)] for v in clean[flipped]]

    probs = _softmax_regression_history(x, labels, epochs=8, seed=0)
    rows = np.arange(len(labels))
    true_prob = probs[:, rows, labels]
    others = probs.copy()
    others[:, rows, labels] = -1.0
    prediction = probs.argmax(axis=2)
    dyn = compute_dynamics(
        true_prob,
        true_prob - others.max(axis=2),
        prediction == labels,
        prediction=prediction,
        label=labels,
    )

    n_noisy = int(flipped.sum())
    assert flipped[likely_mislabeled(dyn, k=n_noisy).index].mean() > 0.8  # chance: 0.2
    assert 0.8 * n_noisy <= estimate_num_label_errors(dyn) <= 1.25 * n_noisy
    flagged = likely_mislabeled(dyn).index
    by_cut = likely_mislabeled(dyn, method="aum").index
    assert set(by_cut) <= set(flagged)
    assert flipped[flagged].mean() > 0.8
    # The fixed cut-off misses pair flips that the count recovers.
    assert flipped[flagged].sum() > flipped[by_cut].sum()
    assert flipped[flagged].sum() > 0.9 * n_noisy


def test_run_dynamics_reads_a_run_folder(tmp_path):
    from keras_erranalysis._loss_report import LossReport
    from keras_erranalysis.run._reader import load_run
    from keras_erranalysis.run._writer import RunWriter

    writer = RunWriter(tmp_path / "run")
    n = TRUE_PROB.shape[1]
    for epoch in range(4):
        report = LossReport(
            task="classification",
            num_classes=10,
            example_id=np.arange(100, 100 + n),
            loss=LOSS[epoch].astype(np.float32),
            loss_sum=LOSS[epoch].astype(np.float32),
            loss_mean=LOSS[epoch].astype(np.float32),
            label=LABEL,
            prediction=PREDICTION[epoch],
            confidence=TRUE_PROB[epoch].astype(np.float32),
            true_prob=TRUE_PROB[epoch].astype(np.float32),
            margin=MARGIN[epoch].astype(np.float32),
            correct=CORRECT[epoch],
            token_accuracy=CORRECT[epoch].astype(np.float32),
            n_tokens=np.ones(n, np.int32),
        )
        writer.write_epoch(epoch + 1, report)
    run = load_run(tmp_path / "run")
    dyn = run.dynamics(hard_k=2)
    expected = hand_made(hard_k=2, example_id=np.arange(100, 100 + n))
    pd.testing.assert_frame_equal(dyn, expected, check_exact=False, atol=1e-6, check_dtype=False)
    pd.testing.assert_frame_equal(run.dynamics(hard_k=2, epochs=[1, 2, 3, 4]), dyn)
    assert run.likely_mislabeled().index.tolist() == [102]
    assert run.likely_mislabeled(k=2, method="correctness").index.tolist() == [102, 103]
    with pytest.raises(ValueError, match="sequence run"):
        run.dynamics(tokens=True)


def test_data_map_draws_every_example_at_its_variability_and_confidence():
    from keras_erranalysis.present._figures import plot_data_map

    dyn = hand_made()
    fig = plot_data_map(dyn)
    ax = fig.axes[0]
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], dyn["variability"])
    np.testing.assert_allclose(offsets[:, 1], dyn["confidence"])
    np.testing.assert_allclose(ax.collections[0].get_array(), dyn["correctness"])
    assert "4 examples" in ax.get_title()
    sampled = plot_data_map(dyn, max_points=2).axes[0]
    assert len(sampled.collections[0].get_offsets()) == 2
    assert "2 of 4 shown" in sampled.get_title()
    with pytest.raises(ValueError, match="lacks column"):
        plot_data_map(dyn.drop(columns="variability"))


def test_loss_trajectories_follow_the_chosen_examples(tmp_path):
    from keras_erranalysis.present._figures import plot_loss_trajectories

    ids = np.array([100, 101, 102, 103])
    fig = plot_loss_trajectories(list(LOSS), [102, 100], example_id=ids, labels=["a$b", "c"])
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["all examples, median"].get_ydata(), np.median(LOSS, axis=1))
    np.testing.assert_allclose(lines[r"a\$b"].get_ydata(), LOSS[:, 2])  # "$" escaped
    np.testing.assert_allclose(lines["c"].get_ydata(), LOSS[:, 0])
    np.testing.assert_array_equal(lines["c"].get_xdata(), [1, 2, 3, 4])
    fig.savefig(tmp_path / "trajectories.png")
    assert (tmp_path / "trajectories.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="not in example_id"):
        plot_loss_trajectories(LOSS, [7])


def test_margin_histogram_marks_the_flagged_region():
    from keras_erranalysis.present._figures import plot_margin_histogram

    dyn = hand_made()
    ax = plot_margin_histogram(dyn, highlight=[False, False, True, False]).axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "flagged: 1" in texts and "highlighted" in texts and "aum < -0.2" in texts
    bars = _flagged_bars(ax, "flagged: 1")
    assert len(bars) == 1 and bars[0].get_height() == 1
    assert bars[0].get_x() <= -0.85 <= bars[0].get_x() + bars[0].get_width()
    ax = plot_margin_histogram(dyn, threshold=0.5).axes[0]
    assert any(t.get_text() == "flagged: 3" for t in ax.get_legend().get_texts())
    span = [p for p in ax.patches if p.get_label() == "flagged: 3"][0]
    x_left, x_right = span.get_x(), span.get_x() + span.get_width()
    assert x_left == pytest.approx(-0.85) and x_right == pytest.approx(0.5)
    with pytest.raises(ValueError, match="highlight must have"):
        plot_margin_histogram(dyn, highlight=[True])


def test_margin_histogram_shades_what_the_default_rule_flags():
    from keras_erranalysis.analysis._mislabeled import likely_mislabeled
    from keras_erranalysis.present._figures import plot_margin_histogram

    rng = np.random.default_rng(0)
    n = 400
    label = rng.integers(0, 4, n)
    dyn = pd.DataFrame(
        {
            # 60 flipped: the class they keep getting is at 0.75-0.8, above every class's
            # mean confidence (about 0.69), so the count finds them though aum > -0.2.
            "aum": np.r_[rng.uniform(-0.15, -0.1, 60), rng.uniform(0.3, 0.9, n - 60)],
            "confidence": np.r_[np.full(60, 0.65), np.full(n - 60, 0.7)],
            "suggested_label": np.r_[(label[:60] + 1) % 4, np.full(n - 60, -1)],
            "label": label,
        }
    )
    flagged = likely_mislabeled(dyn)
    assert len(flagged) == 60 and (dyn["aum"][:60] > -0.2).all()  # the count, not the cut
    ax = plot_margin_histogram(dyn).axes[0]
    assert any(t.get_text() == "flagged: 60" for t in ax.get_legend().get_texts())
    bars = _flagged_bars(ax, "flagged: 60")
    assert sum(b.get_height() for b in bars) == 60
    assert min(b.get_x() for b in bars) <= flagged["aum"].min()
    assert max(b.get_x() + b.get_width() for b in bars) >= flagged["aum"].max()
    assert max(b.get_x() for b in bars) < flagged["aum"].max()  # no bar past the flagged
    # Each flipped class (about 15 of 100) is a concentrated cell: its cut at 0 is drawn.
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in dotted] == [0.0]
    assert dotted[0].get_label() == "aum < 0 in concentrated cells (60 rows in them)"
    # Even when every AUM is below 0, the dotted cut stays in view.
    low_ax = plot_margin_histogram(dyn.assign(aum=np.minimum(dyn["aum"], -0.05))).axes[0]
    assert low_ax.get_xlim()[1] >= 0.0
    # The same flips spread over the three other classes: off-diagonal cells of about 5% of
    # a class, none concentrated, so no dotted line; the count still flags all 60.
    spread = dyn.assign(
        suggested_label=np.r_[(label[:60] + 1 + np.arange(60) % 3) % 4, dyn["suggested_label"][60:]]
    )
    assert len(likely_mislabeled(spread)) == 60
    plain = plot_margin_histogram(spread).axes[0]
    assert not [line for line in plain.get_lines() if line.get_linestyle() == ":"]
    assert _flagged_bars(plain, "flagged: 60")
    # By position: a repeated index label (concatenated frames) marks only the flagged row.
    twice = pd.concat([dyn, dyn.assign(aum=0.9, confidence=0.9, suggested_label=-1)])
    n_flagged = len(likely_mislabeled(twice))
    assert twice.index.has_duplicates and 0 < n_flagged < 100
    bars = _flagged_bars(plot_margin_histogram(twice).axes[0], f"flagged: {n_flagged}")
    assert sum(b.get_height() for b in bars) == n_flagged


def _flagged_bars(ax, label):
    """The non-empty bars of the histogram drawn with ``label``."""
    container = [c for c in ax.containers if c.patches[0].get_label() == label]
    assert len(container) == 1
    return [bar for bar in container[0] if bar.get_height() > 0]


def test_a_concentrated_cell_is_flagged_at_aum_below_zero_not_by_global_rank():
    from keras_erranalysis.analysis._mislabeled import estimate_num_label_errors, likely_mislabeled

    dyn = pd.concat(
        [
            _cl_rows(16, 0, 0.9, 0.85, -1),
            # 4 labelled 0 that the model keeps calling 1: their other probability 0.52
            # reaches t_1 = 0.5 and they are below t_0 = (16*0.9 + 4*0.42 + 0.46 + 0.5) / 22.
            _cl_rows(4, 0, 0.42, -0.10, 1),
            # Two more in the same cell that confident learning does not count (other
            # probability 0.48 and 0.45 < t_1): one where class 1 wins on average (aum < 0),
            # one where the given label wins.
            _cl_rows(1, 0, 0.46, -0.02, 1),
            _cl_rows(1, 0, 0.50, 0.05, 1),
            _cl_rows(20, 1, 0.5, 0.3, -1),
            _cl_rows(17, 2, 0.9, 0.85, -1),
            # 3 hard ones labelled 2: lower AUM, but their other probability (0.55) is below
            # t_0, so confident learning does not count them.
            _cl_rows(3, 2, 0.40, -0.15, 0),
        ],
        ignore_index=True,
    )
    flips, late, learned = list(range(16, 20)), 20, 21
    hard = list(range(59, 62))
    # Class 0 counts 20 rows (16 + the 4 off-diagonal), calibrated 4 * 22 / 20 = 4.4 -> 4.
    assert estimate_num_label_errors(dyn) == 4
    ranked = likely_mislabeled(dyn, k=7)
    assert ranked.index[:3].tolist() == hard  # the lowest AUMs overall
    # The cell (0, 1) holds 4.4 of class 0's 22 (>= 10%): inside it, every row with aum < 0
    # (one more than its count; the count alone would have stopped at the four -0.10s), and
    # the count is spent there, not on the harder rows elsewhere.
    assert sorted(likely_mislabeled(dyn).index) == flips + [late]
    # A stricter cut elsewhere leaves the cell at 0; a looser one applies in the cell too.
    assert sorted(likely_mislabeled(dyn, threshold=-0.4).index) == flips + [late]
    assert sorted(likely_mislabeled(dyn, threshold=0.06).index) == flips + [late, learned] + hard
    # A cell below 10% of its class is not concentrated: the count goes down the ranking.
    diluted = pd.concat([dyn, _cl_rows(30, 0, 0.9, 0.85, -1)], ignore_index=True)
    assert estimate_num_label_errors(diluted) == 4  # 4 * 52 / 50 = 4.16; 4.16 < 0.1 * 52
    # The 4 lowest AUMs: the 3 hard ones, then the -0.10 ties (all 4 flips, ties included).
    assert sorted(likely_mislabeled(diluted).index) == sorted(flips + hard)


def test_a_concentrated_cell_keeps_its_count_and_its_cut_is_strict():
    from keras_erranalysis.analysis._mislabeled import estimate_num_label_errors, likely_mislabeled

    dyn = pd.concat(
        [
            _cl_rows(16, 0, 0.9, 0.85, -1),
            # 6 labelled 0 that confident learning puts in the cell (0, 1) (other probability
            # >= t_1 = 0.45), but the given label wins on average in 4 and ties in 1.
            _cl_rows(4, 0, 0.5, 0.02, 1),
            _cl_rows(1, 0, 0.5, 0.0, 1),
            _cl_rows(1, 0, 0.5, -0.01, 1),  # row 21
            _cl_rows(20, 1, 0.45, 0.3, -1),
            _cl_rows(20, 2, 0.9, 0.8, -1),
        ],
        ignore_index=True,
    )
    assert estimate_num_label_errors(dyn) == 6  # all in the concentrated cell (6 of 22)
    # Only aum < 0 in the cell: the tie at 0 is not flagged, and the cell's count is not
    # spent on the next-lowest AUMs elsewhere (class 1's twenty rows at 0.3).
    assert likely_mislabeled(dyn).index.tolist() == [21]


def test_class_names_as_labels_fall_back_to_the_aum_cut_with_a_clear_count_error():
    from keras_erranalysis.analysis._mislabeled import estimate_num_label_errors, likely_mislabeled

    dyn = pd.DataFrame(
        {
            "aum": [-0.5, 0.4, -0.1, 0.6],
            "confidence": [0.2, 0.8, 0.5, 0.9],
            "suggested_label": [1, -1, 0, -1],
            "label": ["cat", "dog", "cat", "dog"],
        }
    )
    assert likely_mislabeled(dyn).index.tolist() == [0]  # aum < -0.2 only
    with pytest.raises(ValueError, match="integer class ids"):
        estimate_num_label_errors(dyn)


def test_a_vocabulary_sized_label_set_keeps_the_joint_sparse():
    from keras_erranalysis.analysis._mislabeled import estimate_num_label_errors, likely_mislabeled

    # 200,000 classes (token dynamics of a large vocabulary): a dense C x C joint would
    # need 320 GB. Every class has 2 rows; in classes 0-999 the second row keeps being
    # called the next class (other probability 0.9, given label 0.05).
    n_classes = 200_000
    label = np.tile(np.arange(n_classes), 2)
    flipped = np.zeros(len(label), bool)
    flipped[n_classes : n_classes + 1000] = True
    dyn = pd.DataFrame(
        {
            "label": label,
            "confidence": np.where(flipped, 0.05, 0.9),
            "aum": np.where(flipped, 0.05 - 0.9, 0.8),
            "suggested_label": np.where(flipped, (label + 1) % n_classes, -1),
        }
    )
    # Thresholds: 0.475 for classes 0-999, 0.9 above; each flipped row is off-diagonal and
    # its class counts 2 rows, so each of the 1,000 cells holds 1 of 2 (concentrated).
    assert estimate_num_label_errors(dyn) == 1000
    assert sorted(likely_mislabeled(dyn).index) == list(np.flatnonzero(flipped))


def test_no_prediction_is_never_right_and_negative_labels_stay_out_of_the_count():
    from keras_erranalysis.analysis._dynamics import compute_token_dynamics
    from keras_erranalysis.analysis._mislabeled import estimate_num_label_errors, likely_mislabeled

    # One sequence, two counted tokens over 3 epochs; the second has label -1 (padding
    # counted without ignore_class) and no prediction (-1: NaN output) in every epoch.
    shape = (3, 1, 2)
    tok = compute_token_dynamics(
        np.full(shape, 0.5, np.float32),
        np.full(shape, 0.1, np.float32),
        np.ones((1, 2), bool),
        token_prediction=np.tile(np.array([[[1, -1]]]), (3, 1, 1)),
        token_label=np.array([[1, -1]]),
    )
    assert tok["correctness"].tolist() == [1.0, 0.0]
    # Rows labelled -1 are not a class of the confident joint: the 2 rows of each of
    # classes 0 and 1 give no error; 60 unlabelled rows with low AUM add nothing.
    base = pd.DataFrame(
        {
            "label": [0, 0, 1, 1],
            "confidence": [0.9, 0.9, 0.9, 0.9],
            "aum": [0.8, 0.8, 0.8, 0.8],
            "suggested_label": [-1, -1, -1, -1],
        }
    )
    unlabelled = pd.DataFrame(
        {"label": -1, "confidence": 0.1, "aum": -0.1, "suggested_label": 0}, index=range(60)
    )
    dyn = pd.concat([base, unlabelled], ignore_index=True)
    assert estimate_num_label_errors(dyn) == 0
    assert likely_mislabeled(dyn).empty  # aum -0.1 is above the cut; no count


@pytest.mark.parametrize("num_classes", [7, 3_000_000])
def test_mode_rows_dense_and_sparse_paths_match_a_per_column_count(num_classes):
    from collections import Counter

    from keras_erranalysis.analysis._dynamics import _mode_rows

    rng = np.random.default_rng(num_classes)
    # 3,000,000 classes: a dense 40 x 3M table would be 960 MB; the sparse path is taken.
    values = rng.choice(rng.integers(0, num_classes, 6), size=(9, 40))
    values[rng.random(values.shape) < 0.2] = -1  # no prediction
    use = rng.random(values.shape) < 0.8
    use[:, 0] = False  # a column with nothing to count
    mode, count = _mode_rows(values, use)
    for col in range(values.shape[1]):
        seen = Counter(int(v) for v, u in zip(values[:, col], use[:, col]) if u and v >= 0)
        best = max(seen.values(), default=0)
        expected = min((v for v, c in seen.items() if c == best), default=-1)
        assert (mode[col], count[col]) == (expected, best), col


def _diverged(n=20, epochs=4, bad_from=1, bad_rows=slice(None)):
    rng = np.random.default_rng(0)
    tp = rng.uniform(0.2, 0.9, (epochs, n))
    tp[bad_from:, bad_rows] = np.nan  # every loss NaN from that epoch on
    other = 1 - tp
    return tp, tp - other, tp > other


def test_a_diverged_run_is_an_error_not_an_empty_table():
    tp, margin, correct = _diverged(bad_from=0)
    dyn = compute_dynamics(tp, margin, correct, label=np.zeros(20, int), epochs=[1, 2, 3, 4])
    assert (dyn["finite_epochs"] == 0).all() and (dyn["first_nonfinite_epoch"] == 1).all()
    with pytest.raises(ValueError, match=r"20 of 20 examples never had a finite loss.*epoch 1"):
        likely_mislabeled(dyn)


def test_mostly_undefined_dynamics_warn_and_name_the_epoch():
    tp, margin, correct = _diverged(bad_from=0, bad_rows=slice(0, 15))
    dyn = compute_dynamics(tp, margin, correct, epochs=[3, 4, 5, 6])
    with pytest.warns(RuntimeWarning, match=r"15 of 20 examples never had a finite loss.*epoch 3"):
        likely_mislabeled(dyn)
    # rows that turned NaN late keep their finite epochs, and the epoch is named
    tp, margin, correct = _diverged(bad_from=2)
    dyn = compute_dynamics(tp, margin, correct)
    assert (dyn["finite_epochs"] == 2).all() and (dyn["first_nonfinite_epoch"] == 3).all()


def test_a_few_nonfinite_rows_pass_without_a_warning(recwarn):
    tp, margin, correct = _diverged(bad_from=0, bad_rows=slice(0, 2))
    likely_mislabeled(compute_dynamics(tp, margin, correct))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_on_binary_tasks_no_cell_is_concentrated_under_the_default_rule():
    from keras_erranalysis.analysis._mislabeled import _aum_cl_flags, _aum_fence_flags

    def rows(n, label, prob, suggested):
        prob = np.broadcast_to(np.asarray(prob, float), (n,))
        return pd.DataFrame(
            {"label": label, "confidence": prob, "aum": 2 * prob - 1, "suggested_label": suggested}
        )

    # Binary, random flips both ways (6 of 60 and 10 of 100): each off-diagonal cell holds
    # 10% of its class, as symmetric noise always gives on two classes. Five clean rows of
    # class 1 are learned late: the given label loses on average (aum -0.16 to -0.04).
    dyn = pd.concat(
        [
            rows(54, 0, 0.9, -1),
            rows(6, 0, 0.1, 1),  # rows 54-59: flipped
            rows(85, 1, 0.85, -1),
            rows(10, 1, 0.1, 0),  # rows 145-154: flipped
            rows(5, 1, [0.48, 0.47, 0.46, 0.44, 0.42], 0),  # rows 155-159: late, clean
        ],
        ignore_index=True,
    )
    flips = list(range(54, 60)) + list(range(145, 155))
    assert estimate_num_label_errors(dyn) == 17  # 6 + 10 * 100 / 95 = 16.5
    # The old rule calls both cells concentrated and flags every late row (aum < 0) ...
    old, old_cells = _aum_cl_flags(dyn, -0.2)
    assert sorted(np.flatnonzero(old)) == flips + list(range(155, 160))
    assert old_cells.sum() == 21
    # ... the default finds no concentrated cell on two classes: the flips, and the count's
    # one more down the AUM ranking (the fence adds nothing here: the clean AUMs are equal).
    assert DEFAULT_METHOD == "aum_fence"
    flags, cells = _aum_fence_flags(dyn, -0.2)
    assert not cells.any()
    assert sorted(np.flatnonzero(_aum_cl_flags(dyn, -0.2, cells_from_classes=3)[0])) == (
        flips + [159]
    )
    # With a third class, the same cells are concentrated again.
    third = pd.concat([dyn, rows(50, 2, 0.9, -1)], ignore_index=True)
    assert _aum_fence_flags(third, -0.2)[1].sum() == 21


def test_the_fence_flags_aums_far_below_the_bulk_when_the_model_memorises():
    from keras_erranalysis.analysis._mislabeled import tukey_fence

    # A model that fits every label in the end: 30 flipped rows average aum -0.1 to 0.0
    # (above the -0.2 cut) while 300 clean rows sit between 0.8 and 1.0.
    rng = np.random.default_rng(0)
    aum = np.r_[np.linspace(-0.1, 0.0, 30), rng.uniform(0.8, 1.0, 300)]
    dyn = pd.DataFrame({"aum": aum, "label": np.r_[np.zeros(30, int), rng.integers(0, 3, 300)]})
    fence = tukey_fence(aum)
    assert 0.0 < fence < 0.8
    assert likely_mislabeled(dyn, method="aum").empty  # the cut alone finds none
    assert sorted(likely_mislabeled(dyn).index) == list(range(30))
    # Non-finite values are left out of the quartiles; no values, no fence.
    assert tukey_fence(np.r_[aum, np.nan]) == fence
    assert tukey_fence(np.array([np.nan])) == -np.inf


def test_the_default_cut_moves_to_0_1_when_the_model_fits_its_labels():
    from keras_erranalysis.analysis._mislabeled import default_aum_cut

    # 100 rows, AUMs from -0.5 to 0.49 in steps of 0.01, none below the fence.
    aum = np.arange(-50, 50) / 100
    dyn = pd.DataFrame({"aum": aum, "label": np.zeros(100, int)})
    assert default_aum_cut(dyn) == -0.2  # no final_correct: the plain cut
    underfit = dyn.assign(final_correct=np.arange(100) >= 10)  # 90% fitted
    memorised = dyn.assign(final_correct=np.arange(100) >= 4)  # 96% fitted
    assert default_aum_cut(underfit) == -0.2
    assert default_aum_cut(memorised) == 0.1
    assert len(likely_mislabeled(underfit)) == 30  # aum < -0.2
    assert len(likely_mislabeled(memorised)) == 60  # aum < 0.1
    # Rows without a given label (label -1) are not part of the fit: 46 of the first 50 rows
    # fitted is 92%.
    unlabelled = memorised.assign(label=np.where(np.arange(100) < 50, 0, -1))
    assert default_aum_cut(unlabelled) == -0.2
