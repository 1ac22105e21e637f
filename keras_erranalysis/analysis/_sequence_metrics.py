"""Sequence metrics: edit distance, exact match, BLEU and chrF, teacher-forced and free-running."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from keras_erranalysis.analysis._text_metrics import (
    corpus_bleu,
    corpus_chrf,
    rouge_n,
    sentence_bleu,
    sentence_chrf,
)


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

    Example:
        >>> from keras_erranalysis.analysis import edit_distance
        >>> edit_distance(["kitten", "abc"], ["sitting", "abc"])
        array([3, 0])
        >>> edit_distance([["B", "W", "AA"]], [["B", "OY", "OY", "S"]])
        array([3])
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
    ``bleu`` (sacrebleu's sentence BLEU on these tokens: up to 4-grams, ``exp`` smoothing,
    effective order) and ``chrf`` (sacrebleu's chrF: character 6-grams, beta 2), both in
    ``[0, 1]``.

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

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import sequence_metrics
        >>> refs = np.array([[5, 6, 7, 0], [3, 4, 0, 0]])  # 0 is padding
        >>> hyps = np.array([[5, 8, 7, 0], [3, 4, 0, 0]])
        >>> table = sequence_metrics(refs, hyps, bleu=False, chrf=False)
        >>> table[["example_id", "token_accuracy", "exact_match", "edit_distance"]].round(3)
           example_id  token_accuracy  exact_match  edit_distance
        0           0           0.667        False              1
        1           1           1.000         True              0
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
        table["bleu"] = sentence_bleu(ref_str, hyp_str)
    if chrf:
        table["chrf"] = sentence_chrf(ref_text, hyp_text)
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
        ``char_error_rate`` (total edits / total reference length), ``corpus_bleu``
        (sacrebleu, on the tokens), ``mean_bleu`` and ``chrf`` (sacrebleu's corpus chrF).

    Example:
        >>> from keras_erranalysis.analysis import corpus_metrics
        >>> numbers = corpus_metrics(["the cat sat", "a dog"], ["the cat sat", "a cat"])
        >>> {k: round(numbers[k], 3) for k in ("n", "exact_match", "token_error_rate")}
        {'n': 2.0, 'exact_match': 0.5, 'token_error_rate': 0.2}
    """
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
        "corpus_bleu": corpus_bleu([r for r, _ in pairs], [h for _, h in pairs]),
        "mean_bleu": float(per_example["bleu"].mean()) if "bleu" in per_example else math.nan,
    }
    sep = _separator(ref_str, hyp_str, separator)
    texts = [(sep.join(r), sep.join(h)) for r, h in pairs]
    texts = [(r, h) for r, h in texts if r.strip() and h.strip()]
    out["chrf"] = corpus_chrf([r for r, _ in texts], [h for _, h in texts])
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


def rouge_l(references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]]) -> np.ndarray:
    """ROUGE-L F1 of each pair: longest common subsequence, ``2PR / (P + R)``.

    ``P = LCS / len(hypothesis)``, ``R = LCS / len(reference)`` (Lin 2004 with beta = 1,
    as ``rouge-score``'s ``rougeL`` F-measure); two empty sequences score 1, one empty 0.

    Example:
        >>> from keras_erranalysis.analysis import rouge_l
        >>> rouge_l([["a", "b", "c", "d"]], [["a", "c", "x"]]).round(4)  # LCS "a c"
        array([0.5714])
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: give one "
            "hypothesis per reference."
        )
    out = np.empty(len(references), dtype=np.float64)
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref, hyp = list(ref), list(hyp)
        if not ref or not hyp:
            out[i] = float(not ref and not hyp)
            continue
        row = np.zeros(len(hyp) + 1, dtype=np.int64)
        for token in ref:
            same = np.fromiter((h == token for h in hyp), dtype=bool, count=len(hyp))
            diag = row[:-1] + 1
            new = np.zeros_like(row)
            # new[j] = same ? row[j-1] + 1 : max(row[j], new[j-1]); with the diagonal
            # candidates fixed, the running maximum gives the whole row at once.
            new[1:] = np.maximum.accumulate(np.maximum(np.where(same, diag, 0), row[1:]))
            row = new
        lcs = row[-1]
        out[i] = 0.0 if lcs == 0 else 2 * lcs / (len(ref) + len(hyp))
    return out


def first_divergence(
    references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]]
) -> np.ndarray:
    """The first position where each hypothesis leaves its reference, -1 where they are equal.

    Example:
        >>> from keras_erranalysis.analysis import first_divergence
        >>> first_divergence([[1, 2, 3], [1, 2], [4]], [[1, 5, 3], [1, 2], [4, 4]])
        array([ 1, -1,  1])
    """
    out = np.full(len(references), -1, dtype=np.int64)
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref, hyp = list(ref), list(hyp)
        shared = min(len(ref), len(hyp))
        differ = [j for j in range(shared) if ref[j] != hyp[j]]
        if differ:
            out[i] = differ[0]
        elif len(ref) != len(hyp):
            out[i] = shared
    return out


# Per-example columns of the free-running outputs (``report.extra``); the
# sequence_metrics column each is read from, or None when computed here.
GENERATED_COLUMNS = {
    "generated_correct": "exact_match",
    "generated_edit_distance": "edit_distance",
    "generated_cer": "char_error_rate",
    "generated_wer": "token_error_rate",
    "generated_bleu": "bleu",
    "generated_chrf": "chrf",
    "generated_rouge_1": None,
    "generated_rouge_2": None,
    "generated_rouge_l": None,
    "exposure_gap": None,
    "first_divergence": None,
}


def generated_metrics(
    labels: np.ndarray,
    token_mask: np.ndarray,
    generated: Sequence[Sequence[int]],
    *,
    teacher_forced_correct: np.ndarray,
    end_id: int | None = None,
    vocab: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-example and corpus metrics of free-running outputs against the labels.

    References are the labels at counted positions, cut before ``end_id``; ``generated``
    holds each example's ids already cut before the end token.

    Args:
        labels: ``(N, T)`` label ids.
        token_mask: ``(N, T)`` counted positions.
        generated: N generated id sequences (without the end token).
        teacher_forced_correct: ``(N,)`` the teacher-forced ``correct`` column.
        end_id: End token of the labels.
        vocab: id -> token (list, mapping or Vocabulary) for CER, BLEU and chrF.

    Returns:
        ``(columns, corpus)``: the :data:`GENERATED_COLUMNS` as ``(N,)`` arrays
        (``generated_correct`` and ``exposure_gap`` are 0/1 int8: teacher-forced right
        but generated wrong), and the corpus numbers (``exact_match``, ``corpus_bleu``,
        ``chrf``, ``rouge_1``, ``rouge_2``, ``rouge_l``, ``char_error_rate``,
        ``token_error_rate``, teacher-forced exact match, exposure gap share and the
        share where the two disagree).
    """
    labels = np.asarray(labels)
    mask = np.asarray(token_mask, dtype=bool)
    refs = [labels[i][mask[i]].tolist() for i in range(len(labels))]
    refs = _as_sequences(refs, pad_id=None, end_id=end_id)
    hyps = [list(map(int, h)) for h in generated]
    table = sequence_metrics(refs, hyps, pad_id=None, vocab=vocab)
    corpus = corpus_metrics(refs, hyps, pad_id=None, vocab=vocab, per_example=table)
    tf_correct = np.asarray(teacher_forced_correct, dtype=bool)
    correct = table["exact_match"].to_numpy(dtype=bool)
    columns = {
        name: table[source].to_numpy() for name, source in GENERATED_COLUMNS.items() if source
    }
    columns["generated_correct"] = correct.astype(np.int8)
    ref_str, hyp_str = _token_strings(refs, vocab), _token_strings(hyps, vocab)
    columns["generated_rouge_1"] = rouge_n(ref_str, hyp_str, 1)
    columns["generated_rouge_2"] = rouge_n(ref_str, hyp_str, 2)
    columns["generated_rouge_l"] = rouge_l(ref_str, hyp_str)
    columns["exposure_gap"] = (tf_correct & ~correct).astype(np.int8)
    columns["first_divergence"] = first_divergence(refs, hyps)
    corpus.update(
        rouge_1=float(columns["generated_rouge_1"].mean()) if len(refs) else math.nan,
        rouge_2=float(columns["generated_rouge_2"].mean()) if len(refs) else math.nan,
        rouge_l=float(columns["generated_rouge_l"].mean()) if len(refs) else math.nan,
        teacher_forced_exact_match=float(tf_correct.mean()) if len(refs) else math.nan,
        exposure_gap=float(columns["exposure_gap"].mean()) if len(refs) else math.nan,
        disagreement=float((tf_correct != correct).mean()) if len(refs) else math.nan,
    )
    return columns, corpus
