"""Sentence BLEU and chrF: sacrebleu (what the package uses) against nltk (what it used).

5,000 random pairs of 3-12 single-letter tokens (a character-level seq2seq output's shape),
70% of the hypothesis tokens right. Times, in the same run, nltk's ``sentence_bleu``
(smoothing method 1) and ``sentence_chrf`` against the package's ``sentence_bleu`` and
``sentence_chrf`` (sacrebleu), best of 3; and the corpus BLEU of both on the same pairs,
where nltk departs from sacrebleu (it counts an empty n-gram denominator as 1).

Run: ``python benchmarks/bench_text_metrics.py``. Writes
``benchmarks/results/text_metrics.json`` and prints the numbers.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu
from nltk.translate.chrf_score import sentence_chrf as nltk_sentence_chrf

from keras_erranalysis.analysis import corpus_bleu, sentence_bleu, sentence_chrf


def _best(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    rng = random.Random(0)
    letters = "abcdefghij"
    refs = [[rng.choice(letters) for _ in range(rng.randint(3, 12))] for _ in range(5000)]
    hyps = [[t if rng.random() < 0.7 else rng.choice(letters) for t in r] for r in refs]
    ref_text, hyp_text = ["".join(r) for r in refs], ["".join(h) for h in hyps]
    smooth = SmoothingFunction().method1
    seconds = {
        "nltk_sentence_bleu": _best(
            lambda: [
                nltk_sentence_bleu([r], h, smoothing_function=smooth) for r, h in zip(refs, hyps)
            ]
        ),
        "sacrebleu_sentence_bleu": _best(lambda: sentence_bleu(refs, hyps)),
        "nltk_sentence_chrf": _best(
            lambda: [nltk_sentence_chrf(r, h) for r, h in zip(ref_text, hyp_text)]
        ),
        "sacrebleu_sentence_chrf": _best(lambda: sentence_chrf(ref_text, hyp_text)),
    }
    short = [(r, h) for r, h in zip(refs, hyps) if len(h) < 4]
    results = {
        "pairs": len(refs),
        "seconds": seconds,
        "bleu_ratio_sacrebleu_to_nltk": seconds["sacrebleu_sentence_bleu"]
        / seconds["nltk_sentence_bleu"],
        "chrf_ratio_sacrebleu_to_nltk": seconds["sacrebleu_sentence_chrf"]
        / seconds["nltk_sentence_chrf"],
        "hypotheses_shorter_than_4": len(short),
        "corpus_bleu_sacrebleu": corpus_bleu(refs, hyps),
        "corpus_bleu_nltk": nltk_corpus_bleu([[r] for r in refs], hyps, smoothing_function=smooth),
    }
    out = Path(__file__).parent / "results" / "text_metrics.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
