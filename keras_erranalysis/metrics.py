"""Per-class metrics, confusions with their examples, and seq2seq metrics.

Plain numpy / pandas (nltk for BLEU and chrF); no Keras. Functions take either arrays or a
LossReport (its ``label``, ``prediction``, ``token_mask``, ``example_id`` and ``num_classes``),
so sequence models get token-level numbers per tag. Negative labels are ignored positions.
A negative prediction (-1: no prediction, a row of undefined probabilities such as NaN
logits, flagged ``nonfinite`` in the report) is an error of its true class: it counts in
``support`` and ``error_rate``, never as a predicted class or a confusion pair.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 2])
    >>> p = np.array([0, 1, 1, 1, 1])
    >>> per_class_metrics(y, p).loc["1", "precision"]
    np.float64(0.5)
    >>> confusion_pairs(y, p).iloc[0]["summary"]
    'class 2 is predicted as 1 in 100% of its errors (1 of 1; 100% of its 1 examples)'
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "FreeRunningMetrics",
    "confusion_matrix",
    "confusion_pairs",
    "corpus_metrics",
    "edit_distance",
    "free_running_metrics",
    "per_class_metrics",
    "sequence_metrics",
    "teacher_forced_metrics",
]


# --------------------------------------------------------------------------------------------
# Classification and tagging
# --------------------------------------------------------------------------------------------


def _flat_pairs(
    labels: Any,
    predictions: np.ndarray | None,
    mask: np.ndarray | None,
    num_classes: int | None,
    example_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """Counted (label, prediction, example id) triples, the number of classes, is-sequence."""
    if hasattr(labels, "label") and hasattr(labels, "prediction"):
        report = labels
        labels = np.asarray(report.label)
        predictions = np.asarray(report.prediction)
        if mask is None and getattr(report, "token_mask", None) is not None:
            mask = np.asarray(report.token_mask)
        if num_classes is None:
            num_classes = int(getattr(report, "num_classes", 0)) or None
        if example_ids is None:
            example_ids = np.asarray(report.example_id)
    if predictions is None:
        raise ValueError(
            "predictions are missing: pass (labels, predictions) arrays or a LossReport."
        )
    y = np.asarray(labels)
    p = np.asarray(predictions)
    if y.shape != p.shape:
        raise ValueError(
            f"labels have shape {y.shape} but predictions {p.shape}: pass integer class ids "
            "(argmax one-hot labels and probabilities first)."
        )
    n = y.shape[0] if y.ndim else 0
    if example_ids is None:
        example_ids = np.arange(n)
    example_ids = np.asarray(example_ids)
    ex = np.broadcast_to(example_ids.reshape((n,) + (1,) * (y.ndim - 1)), y.shape)
    keep = y >= 0  # negative labels are ignored positions (e.g. ignore_class=-100)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != y.shape:
            raise ValueError(f"mask has shape {m.shape}; expected the labels' shape {y.shape}.")
        keep &= m
    y, p, ex = y[keep].astype(np.int64), p[keep].astype(np.int64), ex[keep]
    k = int(max(y.max(initial=-1), p.max(initial=-1)) + 1)
    if num_classes is not None:
        k = max(k, int(num_classes))
    return y, p, ex, k, labels is not None and np.ndim(labels) > 1


def _names(label_names: Any, k: int) -> list[str]:
    if label_names is None:
        return [str(i) for i in range(k)]
    tokens = getattr(label_names, "tokens", None)
    if tokens is not None:
        label_names = tokens
    if isinstance(label_names, Mapping):
        return [str(label_names.get(i, i)) for i in range(k)]
    names = [str(t) for t in label_names]
    return [names[i] if i < len(names) else str(i) for i in range(k)]


def confusion_matrix(
    labels: Any,
    predictions: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    num_classes: int | None = None,
    normalize: str | None = None,
) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class.

    Args:
        labels: (N,) or (N, T) integer labels, or a LossReport.
        predictions: Predicted ids of the same shape (omit with a LossReport).
        mask: Positions that count (default: the report's ``token_mask``; labels < 0 never
            count).
        num_classes: Matrix size (default: largest id + 1).
        normalize: None for counts, ``"true"`` (rows sum to 1), ``"pred"`` or ``"all"``.

    Returns:
        (K, K) array, int64 counts or float shares.
    """
    y, p, _, k, _ = _flat_pairs(labels, predictions, mask, num_classes)
    has = p >= 0  # rows without a prediction are in no cell
    cm = np.bincount(y[has] * k + p[has], minlength=k * k).reshape(k, k)
    if normalize is None:
        return cm
    with np.errstate(invalid="ignore", divide="ignore"):
        if normalize == "true":
            out = cm / cm.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            out = cm / cm.sum(axis=0, keepdims=True)
        elif normalize == "all":
            out = cm / cm.sum()
        else:
            raise ValueError(f"normalize={normalize!r}: use None, 'true', 'pred' or 'all'.")
    return np.nan_to_num(out)


def per_class_metrics(
    labels: Any,
    predictions: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    num_classes: int | None = None,
    label_names: Any = None,
    include_absent: bool = False,
) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, with macro and weighted averages.

    For sequences every counted token is one case (token-level metrics per tag). Precision
    or recall with an empty denominator is 0 (scikit-learn's ``zero_division=0``).

    Args:
        labels: (N,) or (N, T) labels, or a LossReport.
        predictions: Predicted ids (omit with a LossReport).
        mask: Positions that count (default: the report's ``token_mask``).
        num_classes: Number of classes.
        label_names: Class names (list, ``{id: name}`` mapping or a Vocabulary).
        include_absent: Keep classes that are neither in the labels nor predicted (they
            are also left out of the averages otherwise, as in scikit-learn).

    Returns:
        DataFrame indexed by class name, plus rows ``"macro avg"`` and ``"weighted avg"``;
        columns ``class_id, support, predicted, correct, precision, recall, f1,
        error_rate`` (``1 - recall``), sorted by class id.
    """
    y, p, _, k, _ = _flat_pairs(labels, predictions, mask, num_classes)
    has = p >= 0  # rows without a prediction: errors of their class, predicted as nothing
    cm = np.bincount(y[has] * k + p[has], minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.int64)
    support = np.bincount(y, minlength=k)
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = np.arange(k) if include_absent else np.flatnonzero((support + predicted) > 0)
    names = _names(label_names, k)
    table = pd.DataFrame(
        {
            "class_id": present,
            "support": support[present],
            "predicted": predicted[present],
            "correct": tp[present],
            "precision": precision[present],
            "recall": recall[present],
            "f1": f1[present],
            "error_rate": np.where(support[present] > 0, 1 - recall[present], np.nan),
        },
        index=pd.Index([names[i] for i in present], name="class"),
    )
    total = support[present].sum()
    weights = support[present] / total if total else np.zeros(len(present))
    avg = {}
    for row, w in (("macro avg", None), ("weighted avg", weights)):
        avg[row] = {
            "class_id": -1,
            "support": int(total),
            "predicted": int(predicted[present].sum()),
            "correct": int(tp[present].sum()),
            **{
                m: float(np.average(table[m], weights=w))
                if len(present) and (w is None or w.sum() > 0)
                else math.nan
                for m in ("precision", "recall", "f1")
            },
            "error_rate": 1 - tp[present].sum() / total if total else math.nan,
        }
    return pd.concat([table, pd.DataFrame.from_dict(avg, orient="index")])


def confusion_pairs(
    labels: Any,
    predictions: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    example_ids: np.ndarray | None = None,
    num_classes: int | None = None,
    label_names: Any = None,
    by: str = "count",
    top: int | None = None,
    min_count: int = 1,
) -> pd.DataFrame:
    """Which class is mistaken for which, how often, and in which examples.

    Args:
        labels: (N,) or (N, T) labels, or a LossReport.
        predictions: Predicted ids (omit with a LossReport).
        mask: Positions that count (default: the report's ``token_mask``).
        example_ids: (N,) ids (default: the report's, else 0..N-1).
        num_classes: Number of classes.
        label_names: Class names.
        by: ``"count"`` (most frequent confusions) or ``"rate"`` (share of the true class).
        top: Keep only the first ``top`` pairs.
        min_count: Drop pairs seen fewer times.

    Returns:
        DataFrame with ``true, predicted, true_name, predicted_name, count`` (examples, or
        tokens for sequences), ``n_examples``, ``rate`` (count / support of the true class),
        ``share_of_errors`` (count / errors of the true class), ``summary`` and
        ``example_ids`` (array of the examples showing this confusion: open them with
        ``report.to_frame().set_index("example_id").loc[ids]``).
    """
    if by not in ("count", "rate"):
        raise ValueError(f"by={by!r}: use 'count' or 'rate'.")
    y, p, ex, k, is_seq = _flat_pairs(labels, predictions, mask, num_classes, example_ids)
    names = _names(label_names, k)
    support = np.bincount(y, minlength=k)
    wrong = y != p
    errors = np.bincount(y[wrong], minlength=k)  # rows without a prediction included
    wrong &= p >= 0  # ... but they pair with no class
    pair = y[wrong] * k + p[wrong]
    ex_w = ex[wrong]
    columns = [
        "true",
        "predicted",
        "true_name",
        "predicted_name",
        "count",
        "n_examples",
        "rate",
        "share_of_errors",
        "summary",
        "example_ids",
    ]
    if len(pair) == 0:
        return pd.DataFrame(columns=columns)
    keys, counts = np.unique(pair, return_counts=True)
    # examples per pair: unique (pair, example) after a stable sort by pair
    order = np.lexsort((ex_w, pair))
    pair_s, ex_s = pair[order], ex_w[order]
    first = np.ones(len(pair_s), dtype=bool)
    first[1:] = (pair_s[1:] != pair_s[:-1]) | (ex_s[1:] != ex_s[:-1])
    pair_u, ex_u = pair_s[first], ex_s[first]
    bounds = np.searchsorted(pair_u, np.append(keys, keys[-1] + 1))
    true_c, pred_c = keys // k, keys % k
    rate = counts / support[true_c]
    share = counts / errors[true_c]
    keep = counts >= min_count
    idx = np.flatnonzero(keep)
    primary = counts[idx] if by == "count" else rate[idx]
    secondary = rate[idx] if by == "count" else counts[idx]
    idx = idx[np.lexsort((secondary * -1, primary * -1))]
    if top is not None:
        idx = idx[:top]
    unit = "tokens" if is_seq else "examples"
    rows = []
    for i in idx:
        t, q = int(true_c[i]), int(pred_c[i])
        ids = ex_u[bounds[i] : bounds[i + 1]]
        summary = (
            f"class {names[t]} is predicted as {names[q]} in {share[i]:.0%} of its errors "
            f"({counts[i]} of {errors[t]}; {rate[i]:.0%} of its {support[t]} {unit})"
        )
        rows.append(
            (
                t,
                q,
                names[t],
                names[q],
                int(counts[i]),
                len(ids),
                float(rate[i]),
                float(share[i]),
                summary,
                ids,
            )
        )
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Seq2seq
# --------------------------------------------------------------------------------------------


class _Encoded(NamedTuple):
    """Tokens of N reference / hypothesis pairs as flat integer codes with offsets."""

    codes: np.ndarray
    ref_start: np.ndarray
    ref_len: np.ndarray
    hyp_start: np.ndarray
    hyp_len: np.ndarray


def _encode_pairs(
    references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]]
) -> _Encoded:
    """Map the tokens of both sides to shared integer codes (no per-example arrays)."""
    n = len(references)
    ref_len = np.fromiter(map(len, references), dtype=np.int64, count=n)
    hyp_len = np.fromiter(map(len, hypotheses), dtype=np.int64, count=len(hypotheses))
    flat = np.empty(int(ref_len.sum() + hyp_len.sum()), dtype=object)
    flat[:] = list(
        itertools.chain(
            itertools.chain.from_iterable(references), itertools.chain.from_iterable(hypotheses)
        )
    )
    codes, _ = pd.factorize(flat)
    ref_start = np.cumsum(ref_len) - ref_len
    hyp_start = ref_len.sum() + np.cumsum(hyp_len) - hyp_len
    return _Encoded(codes.astype(np.int64), ref_start, ref_len, hyp_start, hyp_len)


def _pad(
    codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, fill: int
) -> np.ndarray:
    """Rows of ``codes`` (given by starts / lengths) in a (n, width) array padded with fill."""
    out = np.full((len(starts), max(width, 1)), fill, dtype=np.int64)
    rows = np.repeat(np.arange(len(starts)), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = codes[np.repeat(starts, lengths) + cols]
    return out


def _chunks(enc: _Encoded, size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Length-sorted chunks of example indices with padded reference / hypothesis codes."""
    order = np.lexsort((enc.hyp_len, enc.ref_len))
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        ref = _pad(enc.codes, enc.ref_start[idx], enc.ref_len[idx], int(enc.ref_len[idx].max()), -1)
        hyp = _pad(enc.codes, enc.hyp_start[idx], enc.hyp_len[idx], int(enc.hyp_len[idx].max()), -2)
        yield idx, ref, hyp


def _edit_distance_encoded(enc: _Encoded) -> np.ndarray:
    out = np.zeros(len(enc.ref_len), dtype=np.int64)
    for idx, ref, hyp in _chunks(enc):
        ref_len, hyp_len = enc.ref_len[idx], enc.hyp_len[idx]
        lr, lh = int(ref_len.max()), int(hyp_len.max())
        rows = len(idx)
        result = hyp_len.copy()  # empty reference: insert everything
        prev = np.broadcast_to(np.arange(lh + 1), (rows, lh + 1)).copy()
        steps = np.arange(1, lh + 1)
        for i in range(1, lr + 1):
            best = np.minimum(prev[:, :-1] + (ref[:, i - 1 : i] != hyp[:, :lh]), prev[:, 1:] + 1)
            cur = np.empty_like(prev)
            cur[:, 0] = i
            # cur[j] = min(best[j-1], cur[j-1] + 1) = j + min(i, min_{k<=j}(best[k-1] - k))
            cur[:, 1:] = steps + np.minimum(i, np.minimum.accumulate(best - steps, axis=1))
            done = ref_len == i
            if done.any():
                result[done] = cur[done, hyp_len[done]]
            prev = cur
        out[idx] = result
    return out


def _same_position_matches(enc: _Encoded) -> np.ndarray:
    out = np.zeros(len(enc.ref_len), dtype=np.int64)
    for idx, ref, hyp in _chunks(enc):
        width = min(ref.shape[1], hyp.shape[1])
        out[idx] = (ref[:, :width] == hyp[:, :width]).sum(axis=1)
    return out


def edit_distance(
    references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]]
) -> np.ndarray:
    """Levenshtein distance of each pair (unit costs), vectorised over the examples.

    Same numbers as ``nltk.metrics.edit_distance`` but one numpy pass per reference
    position for all examples at once (the within-row insertion recursion is a cumulative
    minimum): about 10x faster than nltk on 3-12 token sequences, 30x on 50-character strings.

    Args:
        references: N token sequences (any hashable tokens; a string is a character sequence).
        hypotheses: N token sequences.

    Returns:
        (N,) int64 distances.
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: give one "
            "hypothesis per reference."
        )
    return _edit_distance_encoded(_encode_pairs(references, hypotheses))


def _as_sequences(
    values: Any, *, pad_id: int | None, end_id: int | None, drop_ids: Sequence[int] = ()
) -> list[list[Any]]:
    """Normalise a padded 2-D array or ragged sequences to lists of tokens."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        rows: Sequence[Any] = list(values)
    else:
        rows = values
    drop = set(drop_ids)
    if pad_id is not None:
        drop.add(pad_id)
    out = []
    for row in rows:
        if isinstance(row, str):
            seq = row.split()
        else:
            seq = np.asarray(row).ravel().tolist()
        if end_id is not None and end_id in seq:
            seq = seq[: seq.index(end_id)]
        out.append([t for t in seq if t not in drop] if drop else seq)
    return out


def _token_strings(seqs: list[list[Any]], vocab: Any) -> list[list[str]]:
    if vocab is None:
        return [[str(t) for t in s] for s in seqs]
    tokens = getattr(vocab, "tokens", None)
    table = tokens if tokens is not None else vocab
    if isinstance(table, Mapping):
        return [[str(table.get(t, t)) for t in s] for s in seqs]
    return [
        [str(table[t]) if isinstance(t, int) and 0 <= t < len(table) else str(t) for t in s]
        for s in seqs
    ]


def sequence_metrics(
    references: Any,
    hypotheses: Any,
    *,
    example_ids: np.ndarray | None = None,
    pad_id: int | None = 0,
    end_id: int | None = None,
    drop_ids: Sequence[int] = (),
    vocab: Any = None,
    separator: str | None = None,
    bleu: bool = True,
    chrf: bool = True,
    prefix: str = "",
) -> pd.DataFrame:
    """Per-example seq2seq metrics of hypotheses against references.

    Sequences are padded 2-D id arrays or ragged lists (strings are split on whitespace);
    each is cut at ``end_id`` and ``pad_id`` / ``drop_ids`` are removed.

    Columns: ``ref_len``, ``hyp_len``, ``token_accuracy`` (same-position matches divided by
    the longer length), ``exact_match``, ``edit_distance`` (tokens), ``token_error_rate``
    (edit distance / reference length), ``char_error_rate`` (on the tokens joined by
    ``separator``; default ``""`` when every token is one character, else ``" "``),
    ``bleu`` (nltk ``sentence_bleu``, up to 4-grams, smoothing method 1; short sequences
    score low by construction) and ``chrf`` (nltk ``sentence_chrf``).

    Args:
        references: N reference sequences.
        hypotheses: N predicted sequences.
        example_ids: (N,) ids for the ``example_id`` column.
        pad_id: Id removed from both sides (None keeps all).
        end_id: End-of-sequence id; everything from it on is cut.
        drop_ids: More ids to remove (e.g. the start token).
        vocab: id -> token (list, mapping or Vocabulary) for characters, BLEU and chrF.
        separator: Joiner of tokens for character-level metrics.
        bleu: Compute sentence BLEU (pure Python, the slowest column).
        chrf: Compute chrF.
        prefix: Prefix for the metric columns (e.g. ``"free_"``).

    Returns:
        DataFrame with ``example_id`` and the metric columns (prefixed).
    """
    refs = _as_sequences(references, pad_id=pad_id, end_id=end_id, drop_ids=drop_ids)
    hyps = _as_sequences(hypotheses, pad_id=pad_id, end_id=end_id, drop_ids=drop_ids)
    if len(refs) != len(hyps):
        raise ValueError(
            f"{len(refs)} references but {len(hyps)} hypotheses: give one hypothesis per reference."
        )
    n = len(refs)
    ids = np.arange(n) if example_ids is None else np.asarray(example_ids)
    ref_len = np.fromiter(map(len, refs), dtype=np.int64, count=n)
    hyp_len = np.fromiter(map(len, hyps), dtype=np.int64, count=n)
    enc = _encode_pairs(refs, hyps)
    same = _same_position_matches(enc)
    longest = np.maximum(ref_len, hyp_len)
    with np.errstate(invalid="ignore", divide="ignore"):
        token_acc = np.where(longest > 0, same / longest, 1.0)
    exact = (ref_len == hyp_len) & (same == ref_len)
    dist = _edit_distance_encoded(enc)
    ref_str = _token_strings(refs, vocab)
    hyp_str = _token_strings(hyps, vocab)
    if separator is None:
        single = all(len(t) == 1 for s in ref_str + hyp_str for t in s)
        separator = "" if single else " "
    ref_text = [separator.join(s) for s in ref_str]
    hyp_text = [separator.join(s) for s in hyp_str]
    char_dist = edit_distance(ref_text, hyp_text)
    ref_chars = np.fromiter(map(len, ref_text), dtype=np.float64, count=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        ter = np.where(ref_len > 0, dist / ref_len, np.where(hyp_len > 0, np.inf, 0.0))
        cer = np.where(ref_chars > 0, char_dist / ref_chars, np.where(char_dist > 0, np.inf, 0.0))
    table = {
        "example_id": ids,
        "ref_len": ref_len,
        "hyp_len": hyp_len,
        "token_accuracy": token_acc,
        "exact_match": exact,
        "edit_distance": dist,
        "token_error_rate": ter,
        "char_error_rate": cer,
    }
    if bleu:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        smooth = SmoothingFunction().method1
        table["bleu"] = np.array(
            [
                (1.0 if not h else 0.0)
                if not r
                else float(sentence_bleu([r], h, smoothing_function=smooth))
                if h
                else 0.0
                for r, h in zip(ref_str, hyp_str)
            ]
        )
    if chrf:
        from nltk.translate.chrf_score import sentence_chrf

        table["chrf"] = np.array(
            [
                float(sentence_chrf(r, h)) if r.strip() and h.strip() else float(r == h)
                for r, h in zip(ref_text, hyp_text)
            ]
        )
    frame = pd.DataFrame(table)
    if prefix:
        frame = frame.rename(columns={c: prefix + c for c in frame.columns if c != "example_id"})
    return frame


def corpus_metrics(
    references: Any,
    hypotheses: Any,
    *,
    pad_id: int | None = 0,
    end_id: int | None = None,
    drop_ids: Sequence[int] = (),
    vocab: Any = None,
    per_example: pd.DataFrame | None = None,
    separator: str | None = None,
) -> dict[str, float]:
    """Run-level seq2seq metrics.

    Args:
        references: N reference sequences (as in :func:`sequence_metrics`).
        hypotheses: N predicted sequences.
        pad_id: Id removed from both sides.
        end_id: End-of-sequence id.
        drop_ids: More ids to remove.
        vocab: id -> token.
        per_example: The :func:`sequence_metrics` table of the same pairs (no prefix), to
            avoid computing it again.
        separator: Joiner for character-level metrics.

    Returns:
        ``n``, ``exact_match`` (share), ``token_accuracy`` (mean), ``token_error_rate`` and
        ``char_error_rate`` (total edits / total reference length), ``corpus_bleu`` (nltk,
        smoothing method 1), ``mean_bleu`` and ``chrf`` (nltk ``corpus_chrf``).
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from nltk.translate.chrf_score import corpus_chrf

    refs = _as_sequences(references, pad_id=pad_id, end_id=end_id, drop_ids=drop_ids)
    hyps = _as_sequences(hypotheses, pad_id=pad_id, end_id=end_id, drop_ids=drop_ids)
    if per_example is None:
        per_example = sequence_metrics(refs, hyps, pad_id=None, vocab=vocab, separator=separator)
    ref_str = _token_strings(refs, vocab)
    hyp_str = _token_strings(hyps, vocab)
    pairs = [(r, h) for r, h in zip(ref_str, hyp_str) if r]
    total_ref = float(per_example["ref_len"].sum())
    char_edits = per_example["char_error_rate"] * _ref_chars(ref_str, separator)
    out = {
        "n": float(len(per_example)),
        "exact_match": float(per_example["exact_match"].mean()),
        "token_accuracy": float(per_example["token_accuracy"].mean()),
        "token_error_rate": float(per_example["edit_distance"].sum() / total_ref)
        if total_ref
        else math.nan,
        "char_error_rate": float(np.nansum(char_edits) / _ref_chars(ref_str, separator).sum())
        if total_ref
        else math.nan,
        "corpus_bleu": float(
            corpus_bleu(
                [[r] for r, _ in pairs],
                [h for _, h in pairs],
                smoothing_function=SmoothingFunction().method1,
            )
        )
        if pairs
        else math.nan,
        "mean_bleu": float(per_example["bleu"].mean()) if "bleu" in per_example else math.nan,
    }
    sep = _separator(ref_str, hyp_str, separator)
    texts = [(sep.join(r), sep.join(h)) for r, h in pairs]
    texts = [(r, h) for r, h in texts if r.strip() and h.strip()]
    out["chrf"] = (
        float(corpus_chrf([r for r, _ in texts], [h for _, h in texts])) if texts else math.nan
    )
    return out


def _separator(ref_str: list[list[str]], hyp_str: list[list[str]], separator: str | None) -> str:
    if separator is not None:
        return separator
    return "" if all(len(t) == 1 for s in ref_str + hyp_str for t in s) else " "


def _ref_chars(ref_str: list[list[str]], separator: str | None) -> np.ndarray:
    sep = _separator(ref_str, [], separator)
    return np.array([len(sep.join(r)) for r in ref_str], dtype=np.float64)


def teacher_forced_metrics(
    report: Any,
    *,
    vocab: Any = None,
    bleu: bool = True,
    chrf: bool = True,
    prefix: str = "tf_",
) -> pd.DataFrame:
    """Per-example seq2seq metrics of the teacher-forced predictions in a LossReport.

    References are the labels at counted positions (``token_mask``), hypotheses the argmax
    predictions at the same positions, so ``tf_token_accuracy`` equals the report's
    ``token_accuracy`` and ``tf_exact_match`` its ``correct``.

    Args:
        report: A sequence LossReport.
        vocab: Target id -> token, for character-level metrics, BLEU and chrF.
        bleu: Compute sentence BLEU.
        chrf: Compute chrF.
        prefix: Column prefix.

    Returns:
        DataFrame to merge on ``example_id`` with ``report.to_frame()``.
    """
    if not getattr(report, "is_sequence", False):
        raise ValueError(
            "teacher_forced_metrics needs a sequence LossReport (task='sequence'); for "
            "classifiers use per_class_metrics."
        )
    mask = np.asarray(report.token_mask, dtype=bool)
    labels = np.asarray(report.label)
    preds = np.asarray(report.prediction)
    refs = [labels[i][mask[i]].tolist() for i in range(len(labels))]
    hyps = [preds[i][mask[i]].tolist() for i in range(len(preds))]
    return sequence_metrics(
        refs,
        hyps,
        example_ids=np.asarray(report.example_id),
        pad_id=None,
        vocab=vocab,
        bleu=bleu,
        chrf=chrf,
        prefix=prefix,
    )


class FreeRunningMetrics(NamedTuple):
    """Result of :func:`free_running_metrics`.

    Attributes:
        per_example: Per-example table (``example_id`` + prefixed metric columns).
        corpus: Run-level numbers (see :func:`corpus_metrics`).
        hypotheses: The decoded sequences, after cutting at ``end_id`` and removing padding.
    """

    per_example: pd.DataFrame
    corpus: dict[str, float]
    hypotheses: list[list[Any]]


def _take(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v)[start:stop] for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(np.asarray(v)[start:stop] for v in inputs)
    return inputs[start:stop]


def _n_inputs(inputs: Any) -> int:
    if isinstance(inputs, Mapping):
        return len(next(iter(inputs.values())))
    if isinstance(inputs, tuple):
        return len(inputs[0])
    return len(inputs)


def free_running_metrics(
    decode_fn: Callable[[Any], Any],
    inputs: Any,
    references: Any,
    *,
    batch_size: int = 256,
    example_ids: np.ndarray | None = None,
    pad_id: int | None = 0,
    end_id: int | None = None,
    drop_ids: Sequence[int] = (),
    vocab: Any = None,
    bleu: bool = True,
    chrf: bool = True,
    prefix: str = "free_",
) -> FreeRunningMetrics:
    """Seq2seq metrics of the model's own (free-running) outputs.

    The package never guesses how a model decodes: ``decode_fn`` receives a batch of inputs
    (the same structure as ``inputs``, sliced on axis 0) and returns that batch's output
    sequences, as a padded (B, T) id array or B sequences (e.g. a greedy decoding loop
    around ``model.predict``).

    Args:
        decode_fn: Batch of inputs -> batch of output sequences.
        inputs: Array, tuple of arrays or dict of arrays with the examples on axis 0.
        references: N reference sequences (padded array or ragged).
        batch_size: Examples per ``decode_fn`` call.
        example_ids: (N,) ids.
        pad_id: Padding id removed from both sides.
        end_id: End-of-sequence id; outputs and references are cut there.
        drop_ids: More ids to remove (e.g. the start token if ``decode_fn`` returns it).
        vocab: Target id -> token.
        bleu: Compute BLEU.
        chrf: Compute chrF.
        prefix: Column prefix.

    Returns:
        :class:`FreeRunningMetrics` ``(per_example, corpus, hypotheses)``.

    Raises:
        ValueError: If ``decode_fn`` returns a different number of sequences than it got.
    """
    n = _n_inputs(inputs)
    hyps: list[list[Any]] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        out = decode_fn(_take(inputs, start, stop))
        if hasattr(out, "numpy"):
            out = out.numpy()
        seqs = _as_sequences(out, pad_id=pad_id, end_id=end_id, drop_ids=drop_ids)
        if len(seqs) != stop - start:
            raise ValueError(
                f"decode_fn returned {len(seqs)} sequences for a batch of {stop - start} "
                "inputs: it must return one output sequence per input example."
            )
        hyps.extend(seqs)
    refs = _as_sequences(references, pad_id=pad_id, end_id=end_id, drop_ids=drop_ids)
    per_example = sequence_metrics(
        refs, hyps, example_ids=example_ids, pad_id=None, vocab=vocab, bleu=bleu, chrf=chrf
    )
    corpus = corpus_metrics(refs, hyps, pad_id=None, vocab=vocab, per_example=per_example)
    if prefix:
        per_example = per_example.rename(
            columns={c: prefix + c for c in per_example.columns if c != "example_id"}
        )
    return FreeRunningMetrics(per_example, corpus, hyps)
