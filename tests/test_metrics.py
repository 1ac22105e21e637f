from types import SimpleNamespace

import numpy as np
import pytest
from nltk.metrics import edit_distance as nltk_edit_distance
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

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
    # BLEU and chrF are sacrebleu's (BLEU on the tokens, chrF on the text)
    sacrebleu = pytest.importorskip("sacrebleu")
    expected = sacrebleu.sentence_bleu("a b d", ["a b c d"], tokenize="none").score / 100
    assert table["bleu"][0] == pytest.approx(expected, abs=1e-12) and 0 < expected < 1
    assert table["bleu"][2] == 0.0
    expected = sacrebleu.sentence_chrf("abd", ["abcd"]).score / 100
    assert table["chrf"][0] == pytest.approx(expected, abs=1e-12) and 0 < expected < 1
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
    sacrebleu = pytest.importorskip("sacrebleu")
    expected = sacrebleu.corpus_bleu(
        ["the cat sat", "a dog"], [["the cat sat down", "a dog"]], tokenize="none"
    )
    assert out["corpus_bleu"] == pytest.approx(expected.score / 100, abs=1e-12)


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


# --------------------------------------------------------------------------------------
# Each task's metrics against the library people report them with (issue 18, item 2).
# Hand-made cases; where we keep our own implementation the tolerance is stated.
# --------------------------------------------------------------------------------------

REFS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "hello world",
    "we are going home now",
    "the the the cat",
    "one two three four five six",
]
HYPS = [
    "the cat sat on a mat",
    "a fast brown fox jumped over the lazy dog",
    "hello there world",
    "we go home",  # shorter than 4 tokens: where nltk's corpus BLEU departs from sacrebleu
    "the cat the the",
    "six five four three two one",
]


def _tokens(texts):
    return [t.split() for t in texts]


def test_bleu_and_chrf_are_sacrebleus_own_numbers():
    sacrebleu = pytest.importorskip("sacrebleu")
    table = sequence_metrics(_tokens(REFS), _tokens(HYPS), pad_id=None)
    for i, (ref, hyp) in enumerate(zip(REFS, HYPS)):
        bleu = sacrebleu.sentence_bleu(hyp, [ref], tokenize="none").score / 100
        chrf = sacrebleu.sentence_chrf(hyp, [ref]).score / 100
        assert table["bleu"][i] == pytest.approx(bleu, abs=1e-12), (ref, hyp)
        assert table["chrf"][i] == pytest.approx(chrf, abs=1e-12), (ref, hyp)
    corpus = corpus_metrics(_tokens(REFS), _tokens(HYPS), pad_id=None)
    bleu = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="none").score / 100
    chrf = sacrebleu.corpus_chrf(HYPS, [REFS]).score / 100
    assert corpus["corpus_bleu"] == pytest.approx(bleu, abs=1e-12)
    assert corpus["chrf"] == pytest.approx(chrf, abs=1e-12)


class _Split:
    """rouge-score tokenizer that keeps the tokens as given (its default keeps [a-z0-9])."""

    def tokenize(self, text):
        return text.split()


def test_rouge_1_2_l_equal_rouge_score_on_the_same_tokens():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    from keras_erranalysis.analysis import rouge_l, rouge_n

    refs, hyps = _tokens(REFS), _tokens(HYPS)
    ours = {"rouge1": rouge_n(refs, hyps, 1), "rouge2": rouge_n(refs, hyps, 2)}
    ours["rougeL"] = rouge_l(refs, hyps)
    # Plain lower-case words: its default tokenizer sees the same tokens; a pass-through
    # tokenizer also covers tokens it would drop (IPA, "<unk>").
    odd = [["<s>", "ʃ", "a"], ["ʒ", "ʃ", "ʃ", "<unk>"]]
    odd_hyps = [["ʃ", "a", "<s>"], ["ʃ", "ʒ", "<unk>"]]
    for scorer, r, h, ours_here in (
        (rouge_scorer.RougeScorer(list(ours)), REFS, HYPS, ours),
        (
            rouge_scorer.RougeScorer(list(ours), tokenizer=_Split()),
            [" ".join(t) for t in odd],
            [" ".join(t) for t in odd_hyps],
            {
                "rouge1": rouge_n(odd, odd_hyps, 1),
                "rouge2": rouge_n(odd, odd_hyps, 2),
                "rougeL": rouge_l(odd, odd_hyps),
            },
        ),
    ):
        for i, (ref, hyp) in enumerate(zip(r, h)):
            scores = scorer.score(ref, hyp)
            for name, values in ours_here.items():
                assert values[i] == pytest.approx(scores[name].fmeasure, abs=1e-12), (name, ref)


def test_wer_and_cer_equal_jiwer_per_example_and_over_the_corpus():
    jiwer = pytest.importorskip("jiwer")
    from keras_erranalysis.analysis import generated_metrics

    table = sequence_metrics(_tokens(REFS), _tokens(HYPS), pad_id=None)
    for i, (ref, hyp) in enumerate(zip(REFS, HYPS)):
        assert table["token_error_rate"][i] == pytest.approx(jiwer.wer(ref, hyp), abs=1e-12)
        assert table["char_error_rate"][i] == pytest.approx(jiwer.cer(ref, hyp), abs=1e-12)
    corpus = corpus_metrics(_tokens(REFS), _tokens(HYPS), pad_id=None)
    assert corpus["token_error_rate"] == pytest.approx(jiwer.wer(REFS, HYPS), abs=1e-12)
    assert corpus["char_error_rate"] == pytest.approx(jiwer.cer(REFS, HYPS), abs=1e-12)
    # The generated_* columns of a seq2seq run: ids through a vocabulary, cut at </s>.
    vocab = ["", "</s>", *sorted({w for text in REFS + HYPS for w in text.split()})]
    index = {w: i for i, w in enumerate(vocab)}
    width = 12
    labels = np.zeros((len(REFS), width), np.int32)
    for i, text in enumerate(REFS):
        ids = [index[w] for w in text.split()] + [1]
        labels[i, : len(ids)] = ids
    generated = [[index[w] for w in text.split()] for text in HYPS]
    columns, _ = generated_metrics(
        labels, labels != 0, generated, teacher_forced_correct=np.ones(6, bool), end_id=1,
        vocab=vocab,
    )  # fmt: skip
    np.testing.assert_allclose(
        columns["generated_wer"], [jiwer.wer(r, h) for r, h in zip(REFS, HYPS)]
    )
    np.testing.assert_allclose(
        columns["generated_cer"], [jiwer.cer(r, h) for r, h in zip(REFS, HYPS)]
    )


def test_perplexity_is_exp_of_keras_own_cross_entropy():
    import keras

    from keras_erranalysis.analysis import perplexity

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 11)).astype("float32")
    labels = rng.integers(1, 11, (5, 7))
    labels[:, 5:] = 0  # padding, ignored
    labels[0, 2:] = 0
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    keras_mean = float(loss(labels, logits))  # mean over the counted tokens
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0] * (labels != 0)
    per_example, corpus = perplexity(token_loss.sum(1), (labels != 0).sum(1))
    assert corpus == pytest.approx(np.exp(keras_mean), rel=1e-5)
    for i in range(5):
        counted = labels[i] != 0
        mean = float(loss(labels[i : i + 1, counted], logits[i : i + 1, counted]))
        assert per_example[i] == pytest.approx(np.exp(mean), rel=1e-5)
    assert np.isnan(perplexity(np.array([0.0]), np.array([0]))[0][0])


def test_accuracy_equals_sklearn():
    table = per_class_metrics(Y, P)
    assert 1 - table.loc["weighted avg", "error_rate"] == pytest.approx(accuracy_score(Y, P))
    micro = precision_recall_fscore_support(Y, P, average="micro")[2]
    assert 1 - table.loc["weighted avg", "error_rate"] == pytest.approx(micro)


def test_extractive_qa_exact_match_by_squads_rules():
    from keras_erranalysis.analysis import normalize_answer, qa_exact_match, span_exact_match

    # The SQuAD v1.1 evaluation: lower case, drop punctuation and a/an/the, squeeze spaces.
    assert normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    predictions = ["The Eiffel Tower", "eiffel tower.", "Paris, France", "1889", "theatre"]
    answers = [["Eiffel Tower"], ["the Eiffel Tower", "Tower"], "Paris", ["1,889"], "atre"]
    np.testing.assert_array_equal(qa_exact_match(predictions, answers), [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(
        span_exact_match(np.array([3, 5, 0]), np.array([4, 9, 0]), np.array([3, 5, 1]),
                         np.array([4, 8, 0])),
        [1, 0, 0],
    )  # fmt: skip
    with pytest.raises(ValueError, match="gold answers"):
        qa_exact_match(["a"], [])
