from types import SimpleNamespace

import numpy as np
import pytest
from nltk.metrics import edit_distance as nltk_edit_distance
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from nltk.translate.chrf_score import sentence_chrf
from sklearn.metrics import precision_recall_fscore_support

from keras_erranalysis.analysis._metrics import confusion_matrix, confusion_pairs, per_class_metrics
from keras_erranalysis.analysis._sequence_metrics import (
    corpus_metrics,
    edit_distance,
    free_running_metrics,
    sequence_metrics,
    teacher_forced_metrics,
)


@pytest.fixture(autouse=True)
def _seeded_keras():
    """Shadows conftest's Keras seeding fixture: these tests never touch Keras."""
    yield


Y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
P = np.array([0, 1, 0, 1, 2, 2, 1, 1, 2, 0])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y, P)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [0, 1, 1], [0, 2, 2]])
    np.testing.assert_allclose(confusion_matrix(Y, P, normalize="true")[2], [0, 0.5, 0.5])
    assert confusion_matrix(Y, P, num_classes=5).shape == (5, 5)


def test_per_class_metrics_by_hand():
    table = per_class_metrics(Y, P, label_names=["neg", "pos", "mix"])
    # class 1: tp 1, predicted 3 (rows 1,3,6,7 minus...), support 2
    assert table.loc["neg", "precision"] == pytest.approx(3 / 3)
    assert table.loc["neg", "recall"] == pytest.approx(3 / 4)
    assert table.loc["pos", "precision"] == pytest.approx(1 / 4)
    assert table.loc["pos", "recall"] == pytest.approx(1 / 2)
    assert table.loc["mix", "f1"] == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert list(table.loc[["neg", "pos", "mix"], "support"]) == [4, 2, 4]
    f1s = table.loc[["neg", "pos", "mix"], "f1"].to_numpy()
    assert table.loc["macro avg", "f1"] == pytest.approx(f1s.mean())
    assert table.loc["weighted avg", "f1"] == pytest.approx((f1s * [4, 2, 4]).sum() / 10)
    assert table.loc["weighted avg", "error_rate"] == pytest.approx(4 / 10)


def test_per_class_metrics_match_sklearn_for_tokens_with_mask():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(40, 9))
    preds = np.where(rng.random((40, 9)) < 0.6, labels, rng.integers(0, 7, size=(40, 9)))
    mask = rng.random((40, 9)) < 0.8
    labels[~mask & (rng.random((40, 9)) < 0.5)] = -100  # ignored label, also masked
    table = per_class_metrics(labels, preds, mask=mask)
    y, p = labels[mask & (labels >= 0)], preds[mask & (labels >= 0)]
    classes = np.union1d(y, p)
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=classes, zero_division=0)
    rows = table.loc[[str(c) for c in classes]]
    np.testing.assert_allclose(rows["precision"], prec)
    np.testing.assert_allclose(rows["recall"], rec)
    np.testing.assert_allclose(rows["f1"], f1)
    np.testing.assert_array_equal(rows["support"], sup)
    for avg in ("macro", "weighted"):
        expected = precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        np.testing.assert_allclose(
            table.loc[f"{avg} avg", ["precision", "recall", "f1"]].to_numpy(dtype=float),
            expected[:3],
        )


def test_confusion_pairs_rank_and_examples():
    ids = np.arange(10) + 100
    pairs = confusion_pairs(Y, P, example_ids=ids, label_names=["neg", "pos", "mix"])
    first = pairs.iloc[0]
    assert (first["true_name"], first["predicted_name"], first["count"]) == ("mix", "pos", 2)
    np.testing.assert_array_equal(first["example_ids"], [106, 107])
    assert first["share_of_errors"] == pytest.approx(1.0)
    assert first["summary"] == (
        "class mix is predicted as pos in 100% of its errors (2 of 2; 50% of its 4 examples)"
    )
    by_rate = confusion_pairs(Y, P, by="rate")
    # pos->mix: 1 of 2 (50%) ties mix->pos 2 of 4 (50%); the larger count wins the tie
    assert list(zip(by_rate["true"], by_rate["predicted"])) == [(2, 1), (1, 2), (0, 1)]
    np.testing.assert_allclose(by_rate["rate"], [0.5, 0.5, 0.25])


def test_confusion_pairs_for_sequences_from_a_report():
    labels = np.array([[1, 2, 2, 0], [2, 2, 1, 0], [1, 1, 1, 1]])
    preds = np.array([[1, 1, 1, 1], [2, 1, 1, 2], [1, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    report = SimpleNamespace(
        label=labels,
        prediction=preds,
        token_mask=mask,
        example_id=np.array([7, 8, 9]),
        num_classes=3,
    )
    pairs = confusion_pairs(report)
    assert len(pairs) == 1
    row = pairs.iloc[0]
    assert (row["true"], row["predicted"], row["count"], row["n_examples"]) == (2, 1, 3, 2)
    np.testing.assert_array_equal(row["example_ids"], [7, 8])
    assert row["summary"].endswith("75% of its 4 tokens)")
    table = per_class_metrics(report)
    assert table.loc["2", "recall"] == pytest.approx(1 / 4)
    assert table.loc["1", "support"] == 6


def test_edit_distance_matches_nltk():
    rng = np.random.default_rng(1)
    refs = [list(rng.integers(0, 4, rng.integers(0, 15))) for _ in range(400)]
    hyps = [list(rng.integers(0, 4, rng.integers(0, 15))) for _ in range(400)]
    expected = [nltk_edit_distance(r, h) for r, h in zip(refs, hyps)]
    np.testing.assert_array_equal(edit_distance(refs, hyps), expected)
    np.testing.assert_array_equal(
        edit_distance(["kitten", "", "flaw", "abc"], ["sitting", "ab", "lawn", ""]), [3, 2, 2, 3]
    )


def test_sequence_metrics_by_hand():
    refs = np.array([[5, 6, 7, 8, 2, 0], [5, 6, 2, 0, 0, 0], [9, 9, 9, 2, 0, 0]])
    hyps = np.array([[5, 6, 8, 2, 0, 0], [5, 6, 2, 0, 0, 0], [2, 0, 0, 0, 0, 0]])
    vocab = ["<pad>", "<s>", "</s>", "", "", "a", "b", "c", "d", "e"]
    table = sequence_metrics(refs, hyps, end_id=2, vocab=vocab, example_ids=[10, 11, 12])
    assert list(table["example_id"]) == [10, 11, 12]
    assert list(table["ref_len"]) == [4, 2, 3]
    assert list(table["hyp_len"]) == [3, 2, 0]
    np.testing.assert_allclose(table["token_accuracy"], [2 / 4, 1, 0])
    assert list(table["exact_match"]) == [False, True, False]
    assert list(table["edit_distance"]) == [1, 0, 3]
    np.testing.assert_allclose(table["token_error_rate"], [1 / 4, 0, 1])
    # single-character tokens are joined without a separator: "abcd" vs "abd"
    np.testing.assert_allclose(table["char_error_rate"], [1 / 4, 0, 1])
    smooth = SmoothingFunction().method1
    assert table["bleu"][0] == pytest.approx(
        sentence_bleu([list("abcd")], list("abd"), smoothing_function=smooth)
    )
    assert table["bleu"][2] == 0.0
    assert table["chrf"][0] == pytest.approx(sentence_chrf("abcd", "abd"))
    words = sequence_metrics(["the cat sat"], ["the bat sat"], pad_id=None, prefix="free_")
    assert words["free_char_error_rate"][0] == pytest.approx(1 / 11)
    assert words["free_token_error_rate"][0] == pytest.approx(1 / 3)


def test_corpus_metrics_by_hand():
    refs = [["the", "cat", "sat", "down"], ["a", "dog"]]
    hyps = [["the", "cat", "sat"], ["a", "dog"]]
    out = corpus_metrics(refs, hyps, pad_id=None)
    assert out["exact_match"] == 0.5
    assert out["token_error_rate"] == pytest.approx(1 / 6)
    assert out["char_error_rate"] == pytest.approx(5 / 21)  # " down" of 15 + 5 chars
    assert out["corpus_bleu"] == pytest.approx(
        corpus_bleu([[r] for r in refs], hyps, smoothing_function=SmoothingFunction().method1)
    )


def test_teacher_forced_metrics_agree_with_report():
    labels = np.array([[3, 4, 5, 0], [3, 3, 0, 0]])
    preds = np.array([[3, 5, 5, 1], [3, 3, 4, 4]])
    mask = labels > 0
    report = SimpleNamespace(
        is_sequence=True,
        label=labels,
        prediction=preds,
        token_mask=mask,
        example_id=np.array([1, 2]),
    )
    table = teacher_forced_metrics(report, bleu=False)
    np.testing.assert_allclose(table["tf_token_accuracy"], [2 / 3, 1.0])
    assert list(table["tf_exact_match"]) == [False, True]
    assert list(table["tf_edit_distance"]) == [1, 0]
    with pytest.raises(ValueError, match="sequence LossReport"):
        teacher_forced_metrics(SimpleNamespace(is_sequence=False))


def test_free_running_metrics_batches_and_checks():
    inputs = {"source": np.arange(7 * 3).reshape(7, 3) % 5 + 3}
    references = np.concatenate([inputs["source"], np.full((7, 1), 2)], axis=1)
    calls = []

    def decode_fn(batch):
        calls.append(len(batch["source"]))
        out = batch["source"].copy()
        out[0, 0] = 9  # the first example of each batch is wrong
        return np.concatenate([out, np.full((len(out), 2), 2)], axis=1)

    result = free_running_metrics(decode_fn, inputs, references, batch_size=3, end_id=2, bleu=False)
    assert calls == [3, 3, 1]
    assert list(result.per_example["free_exact_match"]) == [
        False,
        True,
        True,
        False,
        True,
        True,
        False,
    ]
    assert result.corpus["exact_match"] == pytest.approx(4 / 7)
    assert result.corpus["token_error_rate"] == pytest.approx(3 / 21)
    assert result.hypotheses[1] == inputs["source"][1].tolist()
    with pytest.raises(ValueError, match="one output sequence per input"):
        free_running_metrics(lambda b: [[1]], inputs, references, batch_size=3)


def test_plots_show_the_numbers():
    from keras_erranalysis.present._figures import plot_class_frequency, plot_confusion_matrix

    table = per_class_metrics(Y, P, label_names=["neg", "pos", "mix"])
    ax = plot_class_frequency(table).axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    # true counts (sorted by support, stable), then predicted counts in the same order
    assert heights == [4, 4, 2, 3, 3, 4]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["neg", "mix", "pos"]

    cm = confusion_matrix(Y, P)
    ax = plot_confusion_matrix(cm, label_names=["neg", "pos", "$x$"]).axes[0]
    np.testing.assert_allclose(
        ax.images[0].get_array(), [[0.75, 0.25, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]]
    )
    assert "0.75" in [t.get_text() for t in ax.texts]
    assert ax.get_yticklabels()[2].get_text() == r"\$x\$"  # no mathtext from user names
    small = plot_confusion_matrix(cm, normalize=False, max_classes=2).axes[0]
    np.testing.assert_array_equal(small.images[0].get_array(), [[3, 0], [0, 2]])
    assert small.get_title() == "Confusion matrix (counts, 2 most frequent of 3 classes)"
