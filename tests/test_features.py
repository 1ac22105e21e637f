import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st

from keras_erranalysis.analysis import _features as features_module
from keras_erranalysis.analysis import features_summary
from keras_erranalysis.analysis._feature_stats import (
    COMPARE_COLUMNS,
    binary_tests,
    compare_features,
)
from keras_erranalysis.analysis._features import _WORD_RE, Features, extract_features
from keras_erranalysis.analysis._slices import error_rate_by_bins, find_slices, slice_examples

WORDS = [f"w{i}" for i in range(150)]


@pytest.fixture(autouse=True)
def _seeded_keras():
    """Shadows conftest's Keras seeding fixture: these tests never touch Keras."""
    yield


def random_texts(rng, n, min_len=3, max_len=20, words=WORDS):
    probs = 1.0 / np.arange(1, len(words) + 1)
    probs /= probs.sum()
    lengths = rng.integers(min_len, max_len + 1, n)
    return [" ".join(rng.choice(words, size=k, p=probs)) for k in lengths], lengths


# ---------------------------------------------------------------------------- extraction


def test_numeric_features_by_hand():
    texts = ["Ab 12!", "xy", "Ünï café"]
    counts = Counter({"ab": 10, "12": 1, "xy": 3})
    feats = extract_features(texts, vocab_counts=counts, rare_count=5, pos=False)
    num = feats.numeric
    assert list(num.index) == [0, 1, 2]
    np.testing.assert_allclose(num["n_tokens"], [3, 1, 2])
    np.testing.assert_allclose(num["n_chars"], [6, 2, 8])
    # "ab"(10) "12"(1) "!"(0): rare = 12 and ! ; oov = !
    np.testing.assert_allclose(num["rare_share"], [2 / 3, 1, 1])
    np.testing.assert_allclose(num["oov_share"], [1 / 3, 0, 1])
    # non-space characters: 5, 2, 7
    np.testing.assert_allclose(num["digit_share"], [2 / 5, 0, 0])
    np.testing.assert_allclose(num["punct_share"], [1 / 5, 0, 0])
    np.testing.assert_allclose(num["upper_share"], [1 / 2, 0, 1 / 7])
    np.testing.assert_allclose(num["nonascii_share"], [0, 0, 3 / 7])


def test_ngram_presence_matches_naive_count():
    rng = np.random.default_rng(0)
    texts, _ = random_texts(rng, 120, words=WORDS[:12])
    feats = extract_features(texts, ngram_range=(1, 3), min_support=4, pos=False)
    naive = Counter()
    for text in texts:
        toks = text.split()
        grams = {" ".join(toks[i : i + n]) for n in (1, 2, 3) for i in range(len(toks) - n + 1)}
        naive.update(grams)
    expected = {g for g, c in naive.items() if 4 <= c < len(texts)}
    names = [nm for nm, kd in zip(feats.binary_names, feats.binary_kinds) if kd != "label"]
    assert set(names) == expected
    x = feats.binary.toarray()
    for col in rng.choice(len(names), 30, replace=False):
        gram = names[col]
        has = [f" {gram} " in f" {t} " for t in texts]
        np.testing.assert_array_equal(x[:, col].astype(bool), has)
        assert x[:, col].sum() == naive[gram]


def test_one_pass_tokeniser_matches_text_by_text():
    texts = ["Hello, World!", "", "a.b  c", "x\x00y", "Ünï 3.5%", "x"]
    fast = extract_features(texts, min_support=1, pos=False)
    slow = extract_features(texts, min_support=1, pos=False, tokenizer=_WORD_RE.findall)
    assert fast.binary_names == slow.binary_names
    assert (fast.binary != slow.binary).nnz == 0
    pd.testing.assert_frame_equal(fast.numeric, slow.numeric)
    np.testing.assert_allclose(fast.numeric["n_tokens"], [4, 0, 4, 3, 5, 1])


def test_token_ids_tokens_and_char_tokenizer_agree():
    vocab = ["<pad>", "p", "h", "o", "n", "e"]
    words = ["phone", "hop", "pen", "hen", "ph"] * 4
    ids = np.zeros((len(words), 6), dtype=np.int64)
    for i, w in enumerate(words):
        ids[i, : len(w)] = [vocab.index(c) for c in w]
    by_ids = extract_features(token_ids=ids, vocab=vocab, min_support=2)
    by_tokens = extract_features(None, [list(w) for w in words], min_support=2, pos=False)
    by_chars = extract_features(words, tokenizer="char", min_support=2)
    for other in (by_tokens, by_chars):
        assert sorted(other.binary_names) == sorted(by_ids.binary_names)
        pd.testing.assert_frame_equal(other.numeric, by_ids.numeric)
    col = by_ids.binary_names.index("p h")
    np.testing.assert_array_equal(
        by_ids.binary[:, col].toarray().ravel(), [w.startswith("ph") for w in words]
    )


def test_labels_and_user_extractors():
    texts = ["aa bb", "cc", "aa", "dd ee"] * 3
    labels = np.array([0, 1, 1, 2] * 3)

    def extractor(example):
        return {"has_a": "a" in example.text, "n_id_plus": example.index + 0.5}

    feats = extract_features(
        texts,
        labels=labels,
        label_names=["neg", "pos", "mix"],
        extractors=[extractor],
        min_support=2,
        pos=False,
    )
    for k, name in enumerate(["neg", "pos", "mix"]):
        col = feats.binary_names.index(f"label={name}")
        assert feats.binary_kinds[col] == "label"
        np.testing.assert_array_equal(feats.binary[:, col].toarray().ravel(), labels == k)
    col = feats.binary_names.index("has_a")
    np.testing.assert_array_equal(feats.binary[:, col].toarray().ravel(), ["a" in t for t in texts])
    np.testing.assert_allclose(feats.numeric["n_id_plus"], np.arange(12) + 0.5)


def test_pos_missing_warns_once_and_works(monkeypatch):
    monkeypatch.setattr(features_module, "_pos_tagger", lambda: None)
    with pytest.warns(UserWarning, match="part-of-speech"):
        feats = extract_features(["a dog runs"] * 3, min_support=1)
    assert not any(c.startswith("pos_") for c in feats.numeric)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(["a dog runs"] * 3, min_support=1, pos=False)


def test_pos_shares_with_a_tagger(monkeypatch):
    def fake_tagger(sents):
        return [[(t, "NN" if t[0].isupper() else "VBZ") for t in s] for s in sents]

    monkeypatch.setattr(features_module, "_pos_tagger", lambda: fake_tagger)
    feats = extract_features(["Dog runs", "Cat Dog eats x"], min_support=1)
    np.testing.assert_allclose(feats.numeric["pos_noun"], [0.5, 0.5])
    np.testing.assert_allclose(feats.numeric["pos_verb"], [0.5, 0.5])


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="texts, tokens or token_ids"):
        extract_features()
    with pytest.raises(ValueError, match="different lengths"):
        extract_features(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="1 <= min_n <= max_n"):
        extract_features(["a"], ngram_range=(2, 1))
    with pytest.raises(ValueError, match="welch"):
        compare_features(np.array([True, False]), ["a", "b"], test="ttest")


# ---------------------------------------------------------------------------- statistics


def test_binary_tests_match_scipy():
    rng = np.random.default_rng(1)
    n, n_wrong = 200, 37
    support = rng.integers(1, n, 300)
    a = np.array([rng.integers(max(0, s - (n - n_wrong)), min(s, n_wrong) + 1) for s in support])
    p, fisher = binary_tests(a, support, n_wrong, n)
    assert fisher.any() and (~fisher).any()
    for k in range(len(a)):
        table = [[a[k], n_wrong - a[k]], [support[k] - a[k], n - n_wrong - support[k] + a[k]]]
        if fisher[k]:
            expected = st.fisher_exact(table).pvalue
        else:
            expected = st.chi2_contingency(table, correction=True).pvalue
        assert p[k] == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_numeric_row_by_hand():
    correct = np.array([True] * 6 + [False] * 4)
    length = np.array([2, 3, 4, 3, 2, 4, 6, 7, 6, 5], dtype=float)
    feats = Features(
        pd.DataFrame({"n_tokens": length}), sp.csr_matrix((10, 0), dtype=np.int32), [], []
    )
    table = compare_features(correct, features=feats)
    row = table.iloc[0]
    w, r = length[~correct], length[correct]
    assert row["wrong_value"] == pytest.approx(6.0)
    assert row["right_value"] == pytest.approx(3.0)
    assert row["ratio"] == pytest.approx(2.0)
    pooled = np.sqrt((3 * w.var(ddof=1) + 5 * r.var(ddof=1)) / 8)
    assert row["effect"] == pytest.approx(3.0 / pooled)
    assert row["p_value"] == pytest.approx(st.ttest_ind(w, r, equal_var=False).pvalue)
    assert row["summary"].startswith("wrong examples are 2.0x longer (6 vs 3 tokens")
    slightly = compare_features(
        correct,
        features=feats._replace(
            numeric=pd.DataFrame(
                {"digit_share": np.where(correct, 0.5, 0.45) + np.arange(10) * 1e-3}
            )
        ),
    )
    expected = "wrong examples have 9% lower digit_share (0.458 vs 0.502"
    assert slightly.iloc[0]["summary"].startswith(expected)
    mw = compare_features(correct, features=feats, test="mannwhitney").iloc[0]
    assert mw["p_value"] == pytest.approx(st.mannwhitneyu(w, r).pvalue)


def test_planted_length_ranks_first():
    rng = np.random.default_rng(2)
    texts, lengths = random_texts(rng, 600)
    correct = ~((lengths > 12) & (rng.random(600) < 0.6))
    table = compare_features(correct, texts, pos=False)
    top = table.iloc[0]
    assert top["feature"] == "n_tokens"
    assert top["p_adjusted"] < 0.01 and top["significant"]
    assert "longer" in top["summary"]


@pytest.mark.parametrize("form", ["texts", "tokens", "token_ids"])
def test_planted_token_ranks_first(form):
    rng = np.random.default_rng(3)
    texts, _ = random_texts(rng, 500)
    texts = [t + " xylo" if rng.random() < 0.2 else t for t in texts]
    has_x = np.array(["xylo" in t for t in texts])
    correct = ~(has_x & (rng.random(500) < 0.7))
    if form == "texts":
        table = compare_features(correct, texts, pos=False)
    elif form == "tokens":
        table = compare_features(correct, tokens=[t.split() for t in texts], pos=False)
    else:
        vocab = ["<pad>"] + sorted({w for t in texts for w in t.split()})
        index = {w: i for i, w in enumerate(vocab)}
        ids = np.zeros((500, 22), dtype=np.int64)
        for i, t in enumerate(texts):
            toks = [index[w] for w in t.split()]
            ids[i, : len(toks)] = toks
        table = compare_features(correct, token_ids=ids, vocab=vocab)
    top = table.iloc[0]
    assert top["feature"] == "xylo"
    assert top["p_adjusted"] < 0.01
    assert top["wrong_value"] == 1.0
    assert top["summary"].startswith("100% of wrong examples contain 'xylo' against")


def test_null_dataset_keeps_false_discoveries_below_alpha():
    shares, raw_shares, n_features = [], [], []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        texts, _ = random_texts(rng, 300, words=WORDS[:60])
        correct = rng.random(300) > 0.3
        table = compare_features(correct, texts, pos=False, min_support=5)
        n_features.append(len(table))
        shares.append(table["significant"].mean())
        raw_shares.append((table["p_value"] <= 0.05).mean())
    assert min(n_features) >= 200
    assert np.mean(shares) <= 0.05
    # the raw p-values are calibrated (neither degenerate nor anti-conservative)
    assert 0.01 <= np.mean(raw_shares) <= 0.07


def test_report_input_and_columns():
    rng = np.random.default_rng(4)
    n = 200
    ids = rng.integers(1, 30, size=(n, 8))
    ids[:, 6:] = 0
    correct = rng.random(n) > 0.3
    attn = np.where(correct, 1.0, 2.0) + rng.normal(0, 0.3, n)
    report = SimpleNamespace(
        correct=correct,
        example_id=np.arange(n) + 1000,
        label=rng.integers(0, 3, n),
        inputs={"encoder_inputs": ids, "decoder_inputs": ids},
        confidence=rng.random(n).astype(np.float32),
        extra={"attn_entropy": attn},
    )
    table = compare_features(report, min_support=5)
    assert table.iloc[0]["feature"] == "attn_entropy"
    assert table.iloc[0]["kind"] == "report"
    assert "confidence" in set(table["feature"])
    assert {"label=0", "label=1", "label=2"} <= set(table["feature"])
    assert list(table.columns) == COMPARE_COLUMNS


def test_no_errors_gives_empty_table():
    table = compare_features(np.ones(5, dtype=bool), ["a b"] * 5, pos=False)
    assert table.empty and list(table.columns) == COMPARE_COLUMNS
    assert features_summary(table).startswith("No comparison")


def test_features_summary_lists_significant_features():
    rng = np.random.default_rng(6)
    texts, lengths = random_texts(rng, 300)
    correct = lengths < 15
    table = compare_features(correct, texts, pos=False)
    text = features_summary(table, top=2)
    lines = text.splitlines()
    assert lines[0] == "- " + table["summary"][0]
    assert len(lines) == 3 and lines[2].startswith("- ... and ")
    null = compare_features(rng.random(300) < 0.5, texts, pos=False)
    assert features_summary(null).startswith("No feature separates")


# ---------------------------------------------------------------------------- bins and slices


def test_error_rate_by_bins_by_hand():
    values = np.arange(10, dtype=float)
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    table = error_rate_by_bins(values, correct, bins=2)
    assert list(table["n"]) == [5, 5]
    assert list(table["n_wrong"]) == [0, 4]
    np.testing.assert_allclose(table["error_rate"], [0.0, 0.8])
    np.testing.assert_allclose(table["share_of_errors"], [0.0, 1.0])
    assert (table["ci_low"] <= table["error_rate"]).all()
    assert (table["ci_high"] >= table["error_rate"]).all()
    few = error_rate_by_bins(np.array([1, 1, 2, 2.0]), np.array([1, 0, 0, 0], dtype=bool))
    np.testing.assert_allclose(few["error_rate"], [0.5, 1.0])


def test_find_slices_finds_planted_conjunction():
    rng = np.random.default_rng(5)
    texts, lengths = random_texts(rng, 800)
    texts = [t + " zork" if rng.random() < 0.3 else t for t in texts]
    has_z = np.array([t.endswith("zork") for t in texts])
    long = np.array([len(t.split()) for t in texts]) > 15
    correct = ~(has_z & long & (rng.random(800) < 0.8)) & (rng.random(800) > 0.05)
    feats = extract_features(texts, pos=False)
    slices = find_slices(feats, correct, min_support=20, top=5)
    best = slices.iloc[0]
    assert {best["condition_a"], best["condition_b"]} >= {"contains 'zork'"}
    other = ({best["condition_a"], best["condition_b"]} - {"contains 'zork'"}).pop()
    assert other.startswith("n_tokens >") or other.startswith("n_chars >")
    assert best["error_rate"] > 0.5 and best["p_adjusted"] < 0.01
    assert best["p_gain_adjusted"] < 0.01 and best["gain"] > 0.2
    ids = slice_examples(feats, best["condition_a"], best["condition_b"])
    np.testing.assert_array_equal(ids, best["example_ids"])
    assert len(ids) == best["support"]
    wrong_ids = slice_examples(feats, "contains 'zork'", correct=correct, only_wrong=True)
    assert set(wrong_ids) == set(np.flatnonzero(has_z & ~correct))
    with pytest.raises(KeyError, match="unknown condition"):
        slice_examples(feats, "contains 'nope'")


def test_plot_error_rate_by_bins_draws_the_table():
    from keras_erranalysis.present._figures import plot_error_rate_by_bins

    values = np.arange(20, dtype=float)
    correct = values < 14
    table = error_rate_by_bins(values, correct, bins=4)
    fig = plot_error_rate_by_bins(table, feature_name="n_tokens")
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights, table["error_rate"])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(table["bin"])
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(6 / 20)  # overall error rate
    assert ax.get_title() == "Error rate by n_tokens"
    assert [t.get_text() for t in ax.texts] == ["n=5"] * 4


def test_find_slices_ignores_a_single_feature_with_a_random_partner():
    rng = np.random.default_rng(7)
    texts, _ = random_texts(rng, 800)
    texts = [t + " zork" if rng.random() < 0.3 else t for t in texts]
    has_z = np.array([t.endswith("zork") for t in texts])
    correct = ~(has_z & (rng.random(800) < 0.6))
    feats = extract_features(texts, pos=False)
    loose = find_slices(feats, correct, min_support=20, require_gain=False)
    assert (loose["condition_a"].head(5) == "contains 'zork'").sum() >= 3
    assert (loose["p_gain_adjusted"] > 0.05).all()  # random partners add nothing
    strict = find_slices(feats, correct, min_support=20)
    assert strict.empty


def test_vocab_forms_and_counts_by_id():
    ids = np.array([[1, 2, 0], [2, 3, 0], [1, 2, 3]] * 2)
    as_list = extract_features(token_ids=ids, vocab=["", "a", "b", "c"], min_support=2)
    as_map = extract_features(token_ids=ids, vocab={1: "a", 2: "b", 3: "c"}, min_support=2)
    assert as_list.binary_names == as_map.binary_names
    assert "a b" in as_list.binary_names
    counted = extract_features(token_ids=ids, vocab_counts={1: 100, 2: 100}, min_support=2)
    # id 3 never seen in training: out of vocabulary
    np.testing.assert_allclose(counted.numeric["oov_share"], [0, 0.5, 1 / 3] * 2)


def test_extra_columns_and_top():
    rng = np.random.default_rng(8)
    texts, _ = random_texts(rng, 200)
    correct = rng.random(200) > 0.3
    signal = np.where(correct, 0.0, 1.0) + rng.normal(0, 0.5, 200)
    table = compare_features(correct, texts, pos=False, extra={"signal": signal}, top=3)
    assert len(table) == 3
    assert table.iloc[0]["feature"] == "signal" and table.iloc[0]["kind"] == "extra"
    with pytest.raises(ValueError, match="one number per example"):
        compare_features(correct, texts, pos=False, extra={"bad": np.ones(3)})


@pytest.mark.parametrize("form", ["correct", "label_prediction", "input_text"])
def test_compare_features_takes_a_hand_built_frame(form):
    rng = np.random.default_rng(5)
    texts, lengths = random_texts(rng, 300)
    correct = ~((lengths > 12) & (rng.random(300) < 0.6))
    label = rng.integers(0, 3, 300)
    prediction = np.where(correct, label, (label + 1) % 3)
    loss = rng.random(300) + ~correct
    ids = [f"ex{i}" for i in range(300)]
    if form == "correct":
        frame = pd.DataFrame({"text": texts, "correct": correct, "loss": loss}, index=ids)
    elif form == "label_prediction":
        frame = pd.DataFrame(
            {"text": texts, "label": label, "prediction": prediction, "loss": loss}, index=ids
        )
    else:
        frame = pd.DataFrame({"input_text": texts, "correct": correct.astype(int)}, index=ids)
    table = compare_features(frame, pos=False)
    labels = label if form == "label_prediction" else None
    expected = compare_features(correct, texts, labels=labels, pos=False)
    pd.testing.assert_frame_equal(table, expected)
    assert table.iloc[0]["feature"] == "n_tokens"


def test_compare_features_frame_says_what_it_takes():
    with pytest.raises(ValueError, match=r"'correct' column \(or 'label' and 'prediction'.*"):
        compare_features(pd.DataFrame({"text": ["a"], "loss": [1.0]}), pos=False)
    with pytest.raises(ValueError, match=r"'text' or 'input_text' column.*texts="):
        compare_features(pd.DataFrame({"correct": [True, False]}), pos=False)
    frame = pd.DataFrame({"correct": [True, False] * 5})
    table = compare_features(frame, ["a b", "c"] * 5, pos=False)  # texts given by hand
    assert list(table.columns) == COMPARE_COLUMNS


def test_a_huge_token_is_cut_in_the_features_table():
    rng = np.random.default_rng(6)
    huge = "y" * 100_000
    texts, _ = random_texts(rng, 300)
    texts = [t + " " + huge if i % 3 == 0 else t for i, t in enumerate(texts)]
    correct = np.array([i % 3 != 0 or rng.random() < 0.2 for i in range(300)])
    table = compare_features(correct, texts, pos=False)
    assert table["feature"].str.len().max() <= 100
    assert table["summary"].str.len().max() < 400
    assert ("y" * 99 + "\u2026") in set(table["feature"])
    assert len(table.to_csv()) < 200_000
