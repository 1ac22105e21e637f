"""Metrics per task: BLEU and chrF (sacrebleu), ROUGE-N, perplexity, extractive-QA exact match.

Which implementation each number comes from, and why:

| task | metric | implementation |
|---|---|---|
| classification | precision / recall / F1 / accuracy | ours (``per_class_metrics``) = sklearn |
| extractive QA | exact match | ours, SQuAD's normalisation (:func:`qa_exact_match`) |
| translation | BLEU, chrF (sentence and corpus) | sacrebleu, on the model's own tokens |
| summarisation | ROUGE-1/2/L | ours on the model's tokens, equal to rouge-score |
| generation | perplexity | ours: ``exp`` of the per-token cross-entropy (:func:`perplexity`) |
| speech | WER, CER | ours (vectorised edit distance), equal to jiwer |

sacrebleu is the reference implementation papers report BLEU and chrF with; nltk's
``corpus_bleu`` differs from it whenever a hypothesis is shorter than 4 tokens (it counts
an empty n-gram denominator as 1). rouge-score's tokenizer keeps only ``[a-z0-9]``, so it
would drop the tokens of most vocabularies (IPA, other scripts, ``<unk>``): ROUGE is
computed here on the model's tokens, to the same formula. WER and CER are edit distances,
which ``edit_distance`` computes for all examples at once.
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np


def _bleu(sentence: bool) -> Any:
    from sacrebleu.metrics import BLEU

    # tokenize="none": the tokens are the model's, joined by spaces; no 13a re-tokenising.
    return BLEU(tokenize="none", effective_order=sentence)


def sentence_bleu(
    references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]
) -> np.ndarray:
    """Sentence BLEU (sacrebleu) of each pair of token sequences, in ``[0, 1]``.

    Up to 4-grams, ``exp`` smoothing and effective order (sacrebleu's ``sentence_bleu``
    defaults), on the given tokens. An empty reference scores 1 against an empty
    hypothesis, else 0.

    Example:
        >>> sentence_bleu([["a", "b", "c", "d"]], [["a", "b", "c", "d"]])
        array([1.])
    """
    metric = _bleu(sentence=True)
    out = np.zeros(len(references))
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        if not ref or not hyp:
            out[i] = float(not ref and not hyp)
            continue
        out[i] = metric.sentence_score(" ".join(hyp), [" ".join(ref)]).score / 100
    return out


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu) over token sequences, in ``[0, 1]`` (NaN without pairs)."""
    if not len(references):
        return math.nan
    score = _bleu(sentence=False).corpus_score(
        [" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]]
    )
    return score.score / 100


def sentence_chrf(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Sentence chrF of each pair (sacrebleu: character 6-grams, beta 2, no spaces), 0..1.

    Two blank texts score 1, one blank text 0.

    Example:
        >>> sentence_chrf(["kitten"], ["kitten"])
        array([1.])
    """
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    out = np.zeros(len(references))
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        if not ref.strip() or not hyp.strip():
            out[i] = float(ref.strip() == hyp.strip())
            continue
        out[i] = metric.sentence_score(hyp, [ref]).score / 100
    return out


def corpus_chrf(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu; statistics summed over the pairs), ``[0, 1]``."""
    from sacrebleu.metrics import CHRF

    if not len(references):
        return math.nan
    return CHRF().corpus_score(list(hypotheses), [list(references)]).score / 100


def _ngrams(tokens: Sequence[Any], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(
    references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]], n: int = 1
) -> np.ndarray:
    """ROUGE-N F1 of each pair: clipped n-gram overlap, ``2PR / (P + R)``.

    ``P`` = overlap / hypothesis n-grams, ``R`` = overlap / reference n-grams (Lin 2004,
    as ``rouge-score``'s ``rouge1`` / ``rouge2`` F-measure on the same tokens). Two
    sequences without n-grams score 1 when equal, else 0.

    Example:
        >>> rouge_n([["the", "cat", "sat"]], [["the", "cat", "ran"]], n=1).round(4)
        array([0.6667])
        >>> rouge_n([["the", "cat", "sat"]], [["the", "cat", "ran"]], n=2)
        array([0.5])
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: give one "
            "hypothesis per reference."
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    out = np.zeros(len(references))
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref_grams, hyp_grams = _ngrams(list(ref), n), _ngrams(list(hyp), n)
        total = sum(ref_grams.values()) + sum(hyp_grams.values())
        if not ref_grams or not hyp_grams:
            out[i] = float(list(ref) == list(hyp))
            continue
        overlap = sum((ref_grams & hyp_grams).values())
        out[i] = 2 * overlap / total
    return out


def perplexity(loss_sum: np.ndarray, n_tokens: np.ndarray) -> tuple[np.ndarray, float]:
    """Perplexity per example and over the corpus, from a cross-entropy pass.

    ``exp(loss_sum / n_tokens)`` per example and ``exp(sum(loss_sum) / sum(n_tokens))``
    over all (token-weighted, as language-model perplexity is reported). Meaningful when
    the loss is the token cross-entropy in nats (Keras' sparse categorical cross-entropy).

    Args:
        loss_sum: ``(N,)`` summed token losses (``LossReport.loss_sum``).
        n_tokens: ``(N,)`` counted tokens (``LossReport.n_tokens``).

    Returns:
        ``(per_example, corpus)``; NaN where no token counts.

    Example:
        >>> import numpy as np
        >>> per_example, corpus = perplexity(np.log([4.0, 16.0]) * [1, 2], np.array([1, 2]))
        >>> per_example.round(6), round(corpus, 6)
        (array([ 4., 16.]), 10.079368)
    """
    loss_sum = np.asarray(loss_sum, dtype=np.float64)
    n_tokens = np.asarray(n_tokens, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        per_example = np.where(n_tokens > 0, np.exp(loss_sum / n_tokens), np.nan)
    counted = n_tokens > 0
    total = n_tokens[counted].sum()
    corpus = float(np.exp(loss_sum[counted].sum() / total)) if total else math.nan
    return per_example, corpus


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The SQuAD evaluation's answer normalisation: lower case, no punctuation or articles.

    Example:
        >>> normalize_answer("The  Eiffel Tower!")
        'eiffel tower'
    """
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_exact_match(
    predictions: Sequence[str], answers: Sequence[str | Sequence[str]]
) -> np.ndarray:
    """Extractive-QA exact match per example (SQuAD v1.1's ``exact_match``), 0 or 1.

    A prediction matches when its normalised text (:func:`normalize_answer`) equals that
    of any of the example's gold answers.

    Args:
        predictions: N predicted answer texts.
        answers: N gold answers: a text or a list of acceptable texts each.

    Returns:
        ``(N,)`` int8.

    Example:
        >>> qa_exact_match(["the Eiffel tower", "Paris"], [["Eiffel Tower"], "London"])
        array([1, 0], dtype=int8)
    """
    if len(predictions) != len(answers):
        raise ValueError(
            f"{len(predictions)} predictions but {len(answers)} answers: give one list of "
            "gold answers per prediction."
        )
    out = np.zeros(len(predictions), dtype=np.int8)
    for i, (prediction, gold) in enumerate(zip(predictions, answers)):
        options = [gold] if isinstance(gold, str) else list(gold)
        guess = normalize_answer(prediction)
        out[i] = int(any(guess == normalize_answer(g) for g in options))
    return out


def span_exact_match(
    start_true: np.ndarray, end_true: np.ndarray, start_pred: np.ndarray, end_pred: np.ndarray
) -> np.ndarray:
    """Exact match of predicted token spans (both the start and the end right), 0 or 1.

    For an extractive-QA model with start and end outputs, analysed as two classifiers:
    the span is right when both are.

    Example:
        >>> span_exact_match(np.array([3, 5]), np.array([4, 9]), np.array([3, 5]), np.array([4, 8]))
        array([1, 0], dtype=int8)
    """
    start_true, end_true = np.asarray(start_true), np.asarray(end_true)
    right = (start_true == np.asarray(start_pred)) & (end_true == np.asarray(end_pred))
    return right.astype(np.int8)
