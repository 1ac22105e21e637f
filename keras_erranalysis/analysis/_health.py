"""Data health: problems in the data itself, found before (and while) a model trains.

Each check gives every example of a split a flag and a score, a one-line summary and the
flagged examples (:class:`CheckResult`); :func:`health_checks` runs them all over the
splits and returns a :class:`HealthReport`. The checks, and the thresholds they use:

- ``exact_duplicate``: the same input earlier in the split (score: copies in the split);
- ``near_duplicate``: an input nearly the same as an earlier one in the split. Text and
  token ids: Jaccard similarity of the character (token) 3-gram sets, each text padded
  with one space, ``>= 0.5`` (one substituted character in a text of 9 or more characters
  stays above it; ``cat``/``bat`` are different words, not near-duplicates). Numeric
  inputs and embeddings: cosine ``>= 0.99``. Score: the similarity;
- ``leak``: a validation input the same as, or nearly the same as, a training input;
- ``label_conflict``: the same (or nearly the same) input with a different label,
  anywhere in the data (score: the similarity);
- ``class_balance``: examples of a class too small to learn (fewer than 10 training
  examples) or to evaluate (fewer than 10 in the split: the accuracy of a class of ``n``
  examples has a standard error up to ``0.5 / sqrt(n)``, 0.16 at 10);
- ``empty``: an input that is all padding (token ids) or blank (text);
- ``truncated``: an input or label that fills every position (cut at the maximum length?),
  only when other rows of the same array are padded;
- ``unk``: share of out-of-vocabulary tokens of an input, flagged from 0.2 (one in five);
- ``round_trip``: decoding the ids and encoding the text again does not give the ids back;
- ``outlier``: distance to the 5th nearest neighbour (training rows) in embedding or
  feature space; flagged where the modified z-score of its logarithm is above 3.5 (the
  Iglewicz-Hoaglin cut: median and MAD of the training rows, so the outliers do not move
  the cut);
- ``nonfinite``: the loss is NaN or inf with the initial weights, with its cause.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis.analysis._health_similarity import (
    cosine_pairs,
    kth_neighbour_distance,
    near_duplicate_pairs,
    text_ngrams,
    token_ngrams,
)
from keras_erranalysis.decoding import Vocabulary

TEXT_THRESHOLD = 0.5
COSINE_THRESHOLD = 0.99
MIN_TRAIN_COUNT = 10
MIN_EVAL_COUNT = 10
UNK_SHARE = 0.2
OUTLIER_Z = 3.5
OUTLIER_K = 5
OUTLIER_MAX_ROWS = 100_000
ISSUE_COLUMNS = ["check", "split", "example_id", "score", "detail", "text"]
# The run folder's tables of the health checks (HealthReport.tables).
HEALTH_TABLE = "health"
HEALTH_SUMMARY_TABLE = "health_summary"
HEALTH_BALANCE_TABLE = "health_balance"


@dataclasses.dataclass
class Split:
    """One split's data for :func:`health_checks`.

    Attributes:
        x: Inputs: ``(N, T)`` token ids, ``(N, ...)`` numbers, or ``None`` with ``texts``.
        y: Labels: ``(N,)`` class ids or ``(N, T)`` token ids, or ``None``.
        texts: Raw texts, one per example (duplicates are then found on these).
        example_id: Ids in data order (default: positions).
        embeddings: ``(N, D)`` vectors from the model (outliers, near-duplicates of numbers).
        predictions: ``(N,)`` predicted classes (the predicted class distribution).
        nonfinite_cause: ``(N,)`` cause of a NaN/inf initial loss, ``""`` where finite.
    """

    x: Any = None
    y: Any = None
    texts: Sequence[str] | None = None
    example_id: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    predictions: np.ndarray | None = None
    nonfinite_cause: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.size
        if self.example_id is None:
            self.example_id = np.arange(n)
        self.example_id = np.asarray(self.example_id)
        for name in ("y", "texts", "embeddings", "predictions", "nonfinite_cause"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} rows but the split has {n}.")

    @property
    def size(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        if self.x is None:
            raise ValueError("A split needs x or texts.")
        return len(self.x)


@dataclasses.dataclass
class CheckResult:
    """One check over one split: a flag and a score per example, and a one-line summary.

    Attributes:
        check: The check's name (see the module's list).
        split: ``"train"``, ``"validation"``, ...
        flag: ``(N,)`` bool.
        score: ``(N,)`` float (NaN where the check has nothing to say).
        detail: ``(N,)`` text naming the finding (e.g. the matching example).
        summary: One line, e.g. ``"12 validation inputs also in training (1.2%)"``.
    """

    check: str
    split: str
    flag: np.ndarray
    score: np.ndarray
    detail: np.ndarray
    summary: str


@dataclasses.dataclass
class HealthReport:
    """What :func:`health_checks` (and ``check_data``) found.

    Attributes:
        results: Every check's :class:`CheckResult`.
        class_balance: Per class and split: counts, shares and (with predictions) the
            predicted counts; ``None`` without class labels.
        texts: Each split's texts (given or decoded), to show the examples.
        example_ids: Each split's example ids.
    """

    results: list[CheckResult]
    class_balance: pd.DataFrame | None = None
    texts: dict[str, list[str] | None] = dataclasses.field(default_factory=dict)
    example_ids: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def summary(self) -> list[str]:
        """One line per check and split."""
        return [r.summary for r in self.results if r.summary]

    @property
    def issues(self) -> pd.DataFrame:
        """Flagged examples: check, split, example_id, score, detail, text."""
        parts = []
        for r in self.results:
            rows = np.flatnonzero(r.flag)
            if not len(rows):
                continue
            texts = self.texts.get(r.split)
            parts.append(
                pd.DataFrame(
                    {
                        "check": r.check,
                        "split": r.split,
                        "example_id": self.example_ids[r.split][rows],
                        "score": r.score[rows],
                        "detail": r.detail[rows].astype(str),
                        "text": [texts[i] for i in rows] if texts is not None else "",
                    }
                )
            )
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in ISSUE_COLUMNS})
        return pd.concat(parts, ignore_index=True)[ISSUE_COLUMNS]

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables a run folder stores of these findings.

        ``health`` (the issues), ``health_summary`` (one row per summary line: check,
        split, summary) and, with class labels, ``health_balance`` (:attr:`class_balance`).
        """
        out = {
            HEALTH_TABLE: self.issues,
            HEALTH_SUMMARY_TABLE: pd.DataFrame(
                [(r.check, r.split, r.summary) for r in self.results if r.summary],
                columns=["check", "split", "summary"],
            ),
        }
        if self.class_balance is not None:
            out[HEALTH_BALANCE_TABLE] = self.class_balance
        return out

    def flags(self, split: str = "train") -> pd.DataFrame:
        """One row per example of ``split``: ``<check>`` flag and ``<check>_score`` columns."""
        frame = pd.DataFrame({"example_id": self.example_ids[split]})
        for r in self.results:
            if r.split == split:
                frame[r.check] = r.flag
                frame[f"{r.check}_score"] = r.score
        return frame

    def __repr__(self) -> str:
        return "HealthReport(\n  " + "\n  ".join(self.summary) + "\n)"


def health_summary_lines(issues: pd.DataFrame, summary: pd.DataFrame | None = None) -> list[str]:
    """The one-line summaries from a run's stored tables.

    Args:
        issues: The ``health`` table.
        summary: The ``health_summary`` table (``None``: count the issues per check and
            split instead, for a run written without it).

    Returns:
        The lines, e.g. ``["12 validation inputs also in training (1.2%)", ...]``.
    """
    if summary is not None:
        return [str(line) for line in summary["summary"] if str(line)]
    counts = issues.groupby(["check", "split"], sort=False).size()
    return [f"{n} {check} issues in {split}" for (check, split), n in counts.items()]


def _share(count: int, n: int) -> str:
    return f"{count / n:.1%}" if n else "0.0%"


def _noun(split: str) -> str:
    return {"train": "training", "validation": "validation"}.get(split, split)


def _clip(text: str | None, n: int = 60) -> str:
    if text is None:
        return ""
    return text if len(text) <= n else text[: n - 3] + "..."


def _row_keys(values: np.ndarray) -> np.ndarray:
    """An integer key per row: equal rows, equal keys."""
    values = np.ascontiguousarray(np.asarray(values).reshape(len(values), -1))
    if values.shape[1] == 0:
        return np.zeros(len(values), dtype=np.int64)
    rows = values.view(np.dtype((np.void, values.dtype.itemsize * values.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _kind(split: Split) -> str:
    """How the inputs are compared: ``text``, ``tokens``, ``numbers`` or ``none``."""
    if split.texts is not None:
        return "text"
    x = split.x
    if isinstance(x, np.ndarray) and x.ndim >= 1:
        if x.dtype.kind in "iu" and x.ndim == 2:
            return "tokens"
        if x.dtype.kind in "iufb":
            return "numbers"
    return "none"


def health_checks(
    splits: Mapping[str, Split],
    *,
    vocab: Vocabulary | None = None,
    label_vocab: Vocabulary | None = None,
    label_names: Sequence[str] | None = None,
    threshold: float = TEXT_THRESHOLD,
    cosine_threshold: float = COSINE_THRESHOLD,
    ngram: int = 3,
    pad: int = 0,
    unk_id: int | None = None,
    min_train_count: int = MIN_TRAIN_COUNT,
    min_eval_count: int = MIN_EVAL_COUNT,
) -> HealthReport:
    """Runs every data-health check that the given data allows.

    Args:
        splits: ``{"train": Split(...), "validation": Split(...)}``; the first is the
            training split (leakage is measured against it).
        vocab: Decodes the input ids (text of the examples, the UNK and round-trip checks).
        label_vocab: Decodes label ids of sequence labels (the round trip of labels).
        label_names: Class names for the class-balance table.
        threshold: Near-duplicate cut on n-gram Jaccard similarity (text, token ids).
        cosine_threshold: Near-duplicate cut on cosine similarity (numbers, embeddings).
        ngram: Characters (tokens) per n-gram.
        pad: The padding id.
        unk_id: The out-of-vocabulary id (default: the id of ``"[UNK]"`` in ``vocab``).
        min_train_count: Fewer training examples of a class: too few to learn.
        min_eval_count: Fewer examples of a class in a split: too few to evaluate.

    Returns:
        A :class:`HealthReport`.

    Example:
        >>> report = health_checks({
        ...     "train": Split(texts=["forthright", "abbreviate", "abbreviate"], y=[0, 1, 0]),
        ...     "validation": Split(texts=["forthrigth", "zebra"], y=[0, 1]),
        ... })
        >>> [line for line in report.summary if "also in training" in line]
        ['1 validation inputs also in training (50.0%; 0 exact, 1 near)']
        >>> report.issues[["check", "split", "example_id", "score"]].head(2)
                     check       split  example_id     score
        0  exact_duplicate       train           2  2.000000
        1             leak  validation           0  0.538462
    """
    names = list(splits)
    if not names:
        raise ValueError("health_checks needs at least one split.")
    texts = {name: _texts(split, vocab) for name, split in splits.items()}
    if unk_id is None and vocab is not None and vocab.tokens is not None:
        unk_id = next((i for i, t in enumerate(vocab.tokens) if t == "[UNK]"), None)
    results: list[CheckResult] = []
    empties = {}
    for name, split in splits.items():
        result = _empty(name, split, pad)
        empties[name] = result.flag if result is not None else np.zeros(split.size, bool)
        if result is not None:
            results.append(result)
    results += _duplicates(splits, texts, empties, threshold, cosine_threshold, ngram, pad)
    for name, split in splits.items():
        results += _tokenisation(name, split, vocab, label_vocab, pad, unk_id)
    balance, balance_results = _class_balance(splits, label_names, min_train_count, min_eval_count)
    results += balance_results
    results += _outliers(splits)
    for name, split in splits.items():
        if split.nonfinite_cause is not None:
            results.append(_nonfinite(name, split))
    return HealthReport(
        results=results,
        class_balance=balance,
        texts=texts,
        example_ids={name: split.example_id for name, split in splits.items()},
    )


def _texts(split: Split, vocab: Vocabulary | None) -> list[str] | None:
    if split.texts is not None:
        return [str(t) for t in split.texts]
    if vocab is not None and _kind(split) == "tokens":
        return [vocab.decode(row) for row in np.asarray(split.x)]
    return None


def _result(check, split, flag, score, detail, summary) -> CheckResult:
    """A check's result; ``score=None`` scores each flagged example 1 and the others 0."""
    flag = np.asarray(flag, bool)
    score = flag.astype(float) if score is None else np.asarray(score, float)
    return CheckResult(check, split, flag, score, detail, summary)


def _empty(name: str, split: Split, pad: int) -> CheckResult | None:
    kind = _kind(split)
    n = split.size
    if kind == "text":
        flag = np.array([not str(t).strip() for t in split.texts], bool)
    elif kind == "tokens":
        flag = ~(np.asarray(split.x) != pad).any(axis=1)
    else:
        return None
    detail = np.where(
        flag, "empty input: every position is padding" if kind == "tokens" else "blank text", ""
    )
    count = int(flag.sum())
    summary = f"{count} {_noun(name)} inputs are empty ({_share(count, n)})"
    return _result("empty", name, flag, None, detail, summary)


def _duplicates(splits, texts, empties, threshold, cosine_threshold, ngram, pad):
    """Exact and near duplicates within each split, leakage, and conflicting labels."""
    names = list(splits)
    kinds = {_kind(s) for s in splits.values()}
    if len(kinds) != 1 or kinds == {"none"}:
        return []
    kind = kinds.pop()
    sizes = [splits[n].size for n in names]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    which = np.repeat(np.arange(len(names)), sizes)  # split of each global row
    empty = np.concatenate([empties[n] for n in names])

    # exact keys over the union
    if kind == "text":
        key = pd.factorize(pd.Series([t for n in names for t in splits[n].texts], dtype=object))[0]
    else:
        arrays = [np.asarray(splits[n].x) for n in names]
        if len({a.shape[1:] for a in arrays}) != 1:
            return []
        key = _row_keys(np.concatenate(arrays))
    key = np.asarray(key, np.int64)
    labels = _label_keys(splits, names)

    # near pairs between the first example of each distinct key
    first_of_key = pd.Series(np.arange(len(key))).groupby(key).min().to_numpy()
    rep_rows = first_of_key[~empty[first_of_key]]
    if kind == "text":
        all_texts = [t for n in names for t in texts[n]]
        indptr, codes = text_ngrams([all_texts[i] for i in rep_rows], ngram)
        pairs, sims = near_duplicate_pairs(indptr, codes, threshold=threshold)
    elif kind == "tokens":
        ids = np.concatenate([np.asarray(splits[n].x) for n in names])[rep_rows]
        indptr, codes = token_ngrams(ids, ngram, pad=pad)
        pairs, sims = near_duplicate_pairs(indptr, codes, threshold=threshold)
    else:
        vectors = _vectors(splits, names)
        if vectors is None or len(rep_rows) > OUTLIER_MAX_ROWS:
            pairs, sims = np.empty((0, 2), np.int64), np.empty(0)
        else:
            pairs, sims = cosine_pairs(vectors[rep_rows], threshold=cosine_threshold)
    # map representative pairs to key pairs
    key_pairs = (
        np.stack([key[rep_rows[pairs[:, 0]]], key[rep_rows[pairs[:, 1]]]], 1)
        if len(pairs)
        else np.empty((0, 2), np.int64)
    )

    all_texts = [t for n in names for t in (texts[n] or [""] * splits[n].size)]
    ids = np.concatenate([np.asarray(splits[n].example_id) for n in names])

    def who(row: int) -> str:
        shown = f" {_clip(all_texts[row])!r}" if all_texts[row] else ""
        return f"{_noun(names[which[row]])} #{ids[row]}{shown}"

    results = []
    n_keys = int(key.max()) + 1 if len(key) else 0
    for s, name in enumerate(names):
        rows = np.arange(offsets[s], offsets[s + 1])
        k = key[rows]
        valid = ~empty[rows]
        n = len(rows)
        # exact duplicates within the split
        first_in_split = pd.Series(rows).groupby(k).transform("min").to_numpy()
        copies = pd.Series(k).map(pd.Series(k[valid]).value_counts()).fillna(0).to_numpy()
        flag = valid & (first_in_split != rows)
        detail = np.array(
            [f"copy of {who(f)}" if fl else "" for f, fl in zip(first_in_split, flag)], object
        )
        count = int(flag.sum())
        results.append(
            _result(
                "exact_duplicate",
                name,
                flag,
                np.where(valid, copies, np.nan),
                detail,
                f"{count} {_noun(name)} inputs are exact copies of an earlier one "
                f"({_share(count, n)})",
            )
        )
        # near duplicates within the split, between different keys
        first_row = np.full(n_keys, -1, np.int64)
        present = pd.Series(rows[valid]).groupby(k[valid]).min()
        first_row[present.index.to_numpy()] = present.to_numpy()
        score = np.full(n, np.nan)
        near_flag = np.zeros(n, bool)
        near_detail = np.full(n, "", object)
        if len(key_pairs):
            a, b = first_row[key_pairs[:, 0]], first_row[key_pairs[:, 1]]
            both = (a >= 0) & (b >= 0)
            a, b, pair_sims = a[both], b[both], sims[both]
            early, late = np.minimum(a, b), np.maximum(a, b)
            # score: each row's highest similarity in any pair (fmax: NaN until one)
            np.fmax.at(score, early - offsets[s], pair_sims)
            np.fmax.at(score, late - offsets[s], pair_sims)
            # flag the later row of each pair; the detail names its first pair's partner
            lates, first_pair = np.unique(late, return_index=True)
            near_flag[lates - offsets[s]] = True
            for r, q in zip(lates.tolist(), first_pair.tolist()):
                sim = pair_sims[q]
                near_detail[r - offsets[s]] = (
                    f"Jaccard {sim:.2f} with {who(early[q])}"
                    if kind != "numbers"
                    else f"cosine {sim:.3f} with {who(early[q])}"
                )
        count = int(near_flag.sum())
        results.append(
            _result(
                "near_duplicate",
                name,
                near_flag,
                score,
                near_detail,
                f"{count} {_noun(name)} inputs are near-duplicates of an earlier one "
                f"({_share(count, n)})",
            )
        )
        if s == 0:
            continue
        # leakage: the same or nearly the same input in training
        train_first = np.full(n_keys, -1, np.int64)
        tr = np.arange(offsets[0], offsets[1])
        tr_valid = tr[~empty[tr]]
        tf = pd.Series(tr_valid).groupby(key[tr_valid]).min()
        train_first[tf.index.to_numpy()] = tf.to_numpy()
        leak_score = np.where(valid & (train_first[k] >= 0), 1.0, np.nan)
        leak_detail = np.array(
            [f"same as {who(train_first[kk])}" if sc == 1 else "" for kk, sc in zip(k, leak_score)],
            object,
        )
        exact_leaks = int((leak_score == 1).sum())
        if len(key_pairs):
            key_to_rows = pd.Series(rows[valid]).groupby(k[valid]).apply(list).to_dict()
            for ka, kb, sim in zip(key_pairs[:, 0], key_pairs[:, 1], sims):
                for kt, kv in ((ka, kb), (kb, ka)):
                    if train_first[kt] >= 0 and kv in key_to_rows:
                        for r in key_to_rows[kv]:
                            p = r - offsets[s]
                            if not leak_score[p] >= sim:
                                leak_score[p] = sim
                                leak_detail[p] = (
                                    f"Jaccard {sim:.2f} with {who(train_first[kt])}"
                                    if kind != "numbers"
                                    else f"cosine {sim:.3f} with {who(train_first[kt])}"
                                )
        leak_flag = ~np.isnan(leak_score)
        count = int(leak_flag.sum())
        results.append(
            _result(
                "leak",
                name,
                leak_flag,
                leak_score,
                leak_detail,
                f"{count} {_noun(name)} inputs also in training ({_share(count, n)}; "
                f"{exact_leaks} exact, {count - exact_leaks} near)",
            )
        )
    if labels is not None:
        results += _label_conflicts(
            names, offsets, which, key, empty, labels, key_pairs, sims, who, splits
        )
    return results


def _label_keys(splits, names) -> np.ndarray | None:
    if any(splits[n].y is None for n in names):
        return None
    ys = [np.asarray(splits[n].y) for n in names]
    if len({y.shape[1:] for y in ys}) != 1:
        return None
    return _row_keys(np.concatenate(ys))


def _label_conflicts(names, offsets, which, key, empty, labels, key_pairs, sims, who, splits):
    """The same or nearly the same input with a different label, anywhere in the data."""
    total = len(key)
    score = np.full(total, np.nan)
    detail = np.full(total, "", object)
    valid = np.flatnonzero(~empty)
    frame = pd.DataFrame({"key": key[valid], "label": labels[valid], "row": valid})
    n_labels = frame.groupby("key")["label"].nunique()
    mixed = n_labels[n_labels > 1].index
    for _, group in frame[frame["key"].isin(mixed)].groupby("key"):
        rows, labs = group["row"].to_numpy(), group["label"].to_numpy()
        for r, lab in zip(rows, labs):
            other = rows[labs != lab][0]
            score[r] = 1.0
            detail[r] = f"same input with another label: {who(other)}"
    if len(key_pairs):
        first = frame.groupby("key")["row"].min()
        label_of_first = pd.Series(labels[first.to_numpy()], index=first.index)
        for ka, kb, sim in zip(key_pairs[:, 0], key_pairs[:, 1], sims):
            if ka not in first.index or kb not in first.index:
                continue
            if label_of_first[ka] == label_of_first[kb]:
                continue
            for mine, theirs in ((ka, kb), (kb, ka)):
                r = first[mine]
                if not score[r] >= sim:
                    score[r] = sim
                    detail[r] = (
                        f"near-same input (similarity {sim:.2f}) with another label: "
                        f"{who(first[theirs])}"
                    )
    results = []
    for s, name in enumerate(names):
        part = slice(offsets[s], offsets[s + 1])
        flag = ~np.isnan(score[part])
        n = offsets[s + 1] - offsets[s]
        count = int(flag.sum())
        results.append(
            _result(
                "label_conflict",
                name,
                flag,
                score[part],
                detail[part],
                f"{count} {_noun(name)} inputs have a copy or near-copy with another label "
                f"({_share(count, n)})",
            )
        )
    return results


def _vectors(splits, names) -> np.ndarray | None:
    """Embeddings when every split has them, else the inputs standardised by training."""
    if all(splits[n].embeddings is not None for n in names):
        return np.concatenate([np.asarray(splits[n].embeddings, np.float32) for n in names])
    if any(_kind(splits[n]) != "numbers" for n in names):
        return None
    values = [np.asarray(splits[n].x, np.float64).reshape(splits[n].size, -1) for n in names]
    mean, std = values[0].mean(0), values[0].std(0)
    return np.concatenate([(v - mean) / np.where(std > 0, std, 1) for v in values]).astype(
        np.float32
    )


def _tokenisation(name, split, vocab, label_vocab, pad, unk_id) -> list[CheckResult]:
    results = []
    n = split.size
    arrays = []
    if _kind(split) == "tokens":
        arrays.append(("input", np.asarray(split.x), vocab))
    if split.y is not None:
        y = np.asarray(split.y)
        if y.ndim == 2 and y.dtype.kind in "iu":
            arrays.append(("label", y, label_vocab))
    if not arrays:
        return results
    flag = np.zeros(n, bool)
    score = np.full(n, np.nan)
    detail = np.full(n, "", object)
    notes = []
    for what, ids, _ in arrays:
        filled = ids[:, -1] != pad
        padded_rows = int((~filled).sum())
        if padded_rows == 0:
            notes.append(f"no {what} is padded, so cut {what}s cannot be told")
            continue
        hit = filled & ~flag
        detail[hit] = f"{what} fills all {ids.shape[1]} positions"
        flag |= filled
        score[filled] = ids.shape[1]
        notes.append(f"{int(filled.sum())} {what}s fill all {ids.shape[1]} positions")
    count = int(flag.sum())
    results.append(
        _result(
            "truncated",
            name,
            flag,
            score,
            detail,
            f"{count} {_noun(name)} examples may be cut at the maximum length "
            f"({_share(count, n)}: {'; '.join(notes)})",
        )
    )
    for what, ids, voc in arrays:
        if what == "input" and unk_id is not None:
            counted = ids != pad
            share = (ids == unk_id).sum(1) / np.maximum(counted.sum(1), 1)
            unk_flag = share >= UNK_SHARE
            count = int(unk_flag.sum())
            mean = float(share[counted.any(1)].mean()) if counted.any() else 0.0
            results.append(
                _result(
                    "unk",
                    name,
                    unk_flag,
                    share,
                    np.where(
                        unk_flag,
                        np.char.add(
                            "unknown tokens: ", (share * 100).round().astype(int).astype(str)
                        )
                        + "%",
                        "",
                    ),
                    f"{count} {_noun(name)} inputs have {UNK_SHARE:.0%} or more unknown tokens "
                    f"({_share(count, n)}; {mean:.1%} of tokens unknown overall)",
                )
            )
        if voc is not None and voc.tokens is not None:
            bad, diff = round_trip(ids, voc, pad=pad)
            count = int(bad.sum())
            results.append(
                _result(
                    "round_trip" if what == "input" else "label_round_trip",
                    name,
                    bad,
                    diff,
                    np.where(bad, f"decode -> encode does not give the {what} ids back", ""),
                    f"{count} {_noun(name)} {what}s do not survive decode -> encode "
                    f"({_share(count, n)})",
                )
            )
    return results


def round_trip(
    ids: np.ndarray, vocab: Vocabulary, *, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes each row with ``vocab``, encodes the text again, compares with the ids.

    Encoding splits on the vocabulary's separator (longest token first for ``sep=""``) and
    maps each token to its first id. Ids outside the vocabulary, two ids with the same
    token, tokens holding the separator and empty tokens at non-padding ids all show up.

    Returns:
        ``(mismatch, differing)``: ``(N,)`` bool, and the count of positions that differ.

    Example:
        >>> vocab = Vocabulary(["", "a", "b", "a"], sep="")  # id 3 duplicates "a"
        >>> round_trip(np.array([[1, 2, 0], [3, 2, 0]]), vocab)[0].tolist()
        [False, True]
    """
    tokens = vocab.tokens or []
    first_id: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t != "" and t not in first_id:
            first_id[t] = i
    longest = max((len(t) for t in first_id), default=1)
    ids = np.asarray(ids)
    mismatch = np.zeros(len(ids), bool)
    differing = np.zeros(len(ids))
    for r, row in enumerate(ids):
        original = [int(i) for i in row if i != pad]
        text = vocab.decode(row)
        encoded = _encode(text, vocab.sep, first_id, longest)
        if encoded != original:
            mismatch[r] = True
            length = max(len(encoded), len(original))
            same = sum(a == b for a, b in zip(encoded, original))
            differing[r] = length - same
    return mismatch, differing


def _encode(text: str, sep: str, first_id: Mapping[str, int], longest: int) -> list[int]:
    if sep:
        return [first_id.get(t, -1) for t in text.split(sep) if t != ""]
    out, i = [], 0
    while i < len(text):
        for size in range(min(longest, len(text) - i), 0, -1):
            token = text[i : i + size]
            if token in first_id:
                out.append(first_id[token])
                i += size
                break
        else:
            out.append(-1)
            i += 1
    return out


def _class_balance(splits, label_names, min_train_count, min_eval_count):
    names = list(splits)
    ys = {n: np.asarray(splits[n].y) for n in names if splits[n].y is not None}
    if not ys or any(y.ndim != 1 or y.dtype.kind not in "iu" for y in ys.values()):
        return None, []
    n_classes = max(int(y.max()) + 1 if len(y) else 0 for y in ys.values())
    if label_names is not None:
        n_classes = max(n_classes, len(label_names))
    table = pd.DataFrame({"class": np.arange(n_classes)})
    table["name"] = [
        str(label_names[c]) if label_names is not None and c < len(label_names) else str(c)
        for c in range(n_classes)
    ]
    for n, y in ys.items():
        counts = np.bincount(y[y >= 0], minlength=n_classes)
        table[f"{n}_count"] = counts
        table[f"{n}_share"] = counts / max(len(y), 1)
        pred = splits[n].predictions
        if pred is not None:
            pred = np.asarray(pred)
            pcounts = np.bincount(pred[(pred >= 0) & (pred < n_classes)], minlength=n_classes)
            table[f"{n}_predicted"] = pcounts
            table[f"{n}_predicted_share"] = pcounts / max(len(pred), 1)
    first = names[0]
    problems = pd.Series("", index=table.index, dtype=object)
    if first in ys:
        learn = table[f"{first}_count"] < min_train_count
        problems[learn] = f"fewer than {min_train_count} training examples: too few to learn"
    for n in names[1:]:
        if n in ys:
            present = table[f"{n}_count"] > 0
            few = present & (table[f"{n}_count"] < min_eval_count)
            problems[few & (problems == "")] = (
                f"fewer than {min_eval_count} {_noun(n)} examples: too few to evaluate"
            )
            if first in ys:
                unseen = present & (table[f"{first}_count"] == 0)
                problems[unseen] = "never seen in training"
    table["problem"] = problems
    results = []
    for n, y in ys.items():
        count_col = table[f"{n}_count"].to_numpy()
        bad = (problems != "").to_numpy()
        flag = bad[y] if len(y) else np.zeros(0, bool)
        detail = np.where(flag, problems.to_numpy()[y], "") if len(y) else np.zeros(0, object)
        present = count_col[count_col > 0]
        ratio = (
            f"; largest/smallest class {present.max() / present.min():.0f}:1"
            if len(present)
            else ""
        )
        n_bad = int((bad & (count_col > 0)).sum())
        line = (
            f"{n_bad} of {int((count_col > 0).sum())} classes in {_noun(n)} are too small to "
            f"learn or evaluate ({int(flag.sum())} examples){ratio}"
        )
        if splits[n].predictions is not None:
            never = int(((table[f"{n}_predicted"] == 0) & (table[f"{n}_count"] > 0)).sum())
            line += f"; {never} of its classes are never predicted"
        results.append(_result("class_balance", n, flag, count_col[y].astype(float), detail, line))
    return table, results


def _outliers(splits) -> list[CheckResult]:
    names = list(splits)
    vectors = _vectors(splits, names)
    if vectors is None:
        return []
    sizes = [splits[n].size for n in names]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if sizes[0] > OUTLIER_MAX_ROWS or sizes[0] <= OUTLIER_K:
        return []
    space = "embedding" if all(splits[n].embeddings is not None for n in names) else "feature"
    metric = "cosine" if all(splits[n].embeddings is not None for n in names) else "euclidean"
    train = vectors[: offsets[1]]
    distances = {names[0]: kth_neighbour_distance(train, OUTLIER_K, metric=metric)}
    for s, n in enumerate(names[1:], start=1):
        distances[n] = kth_neighbour_distance(
            vectors[offsets[s] : offsets[s + 1]], OUTLIER_K, reference=train, metric=metric
        )
    logs = np.log(distances[names[0]] + 1e-12)
    median = np.median(logs)
    mad = np.median(np.abs(logs - median)) * 1.4826
    results = []
    for n in names:
        z = (
            (np.log(distances[n] + 1e-12) - median) / mad
            if mad > 0
            else np.zeros(len(distances[n]))
        )
        flag = z > OUTLIER_Z
        detail = np.where(
            flag,
            [
                f"{OUTLIER_K}th neighbour at {d:.3g} ({metric}; z = {zz:.1f})"
                for d, zz in zip(distances[n], z)
            ],
            "",
        )
        count = int(flag.sum())
        results.append(
            _result(
                "outlier",
                n,
                flag,
                distances[n],
                detail,
                f"{count} {_noun(n)} inputs are outliers in {space} space "
                f"({_share(count, len(flag))}; {OUTLIER_K}th-neighbour distance, z > {OUTLIER_Z})",
            )
        )
    return results


def _nonfinite(name: str, split: Split) -> CheckResult:
    causes = np.asarray(split.nonfinite_cause).astype(str)
    flag = causes != ""
    count = int(flag.sum())
    summary = (
        f"{count} {_noun(name)} examples give a NaN/inf loss with the initial weights "
        f"({_share(count, len(flag))})"
    )
    return _result("nonfinite", name, flag, None, causes.astype(object), summary)
