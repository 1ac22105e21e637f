"""Hand-made LossReports and run folders for the presentation tests (no training needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.run._writer import RunWriter

HOSTILE = [
    "<script>window.__pwned = 1; document.title = 'PWNED'</script>",
    "a | b || c",
    "line one\nline two\r\nthree",
    "`rm -rf /` and ```fence```",
    '<img src=x onerror="window.__pwned=2">',
    "[link](javascript:alert(1)) ![img](http://example.com/x.png)",
    "tab\there & ampersand &amp; \"quotes\" 'single'",
    "**bold** _em_ # heading",
]
CLASSES = ["cat", "dog|<b>wolf</b>", "bird\nfish"]


def classification_report(n: int = 12, *, seed: int = 0, num_classes: int = 3) -> LossReport:
    """A classification report with planted numbers and text inputs (hostile strings first)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, n).astype(np.int32)
    prediction = label.copy()
    wrong = rng.random(n) < 0.4
    wrong[-1] = True  # the last example: confidently wrong in every epoch (likely mislabeled)
    prediction[wrong] = (label[wrong] + 1) % num_classes
    loss = rng.gamma(2.0, 0.5, n).astype(np.float32)
    loss[wrong] += 1.0
    confidence = rng.uniform(0.34, 1.0, n).astype(np.float32)
    confidence[-1] = 0.9
    true_prob = np.where(wrong, 1 - confidence, confidence).astype(np.float32)
    margin = np.where(wrong, -confidence / 2, confidence / 2).astype(np.float32)
    texts = [HOSTILE[i] if i < len(HOSTILE) else f"example text {i}" for i in range(n)]
    return LossReport(
        task="classification",
        num_classes=num_classes,
        example_id=np.arange(100, 100 + n, dtype=np.int64),
        loss=loss,
        loss_sum=loss.copy(),
        loss_mean=loss.copy(),
        label=label,
        prediction=prediction,
        confidence=confidence,
        true_prob=true_prob,
        margin=margin,
        correct=~wrong,
        token_accuracy=(~wrong).astype(np.float32),
        n_tokens=np.ones(n, np.int32),
        inputs={"text": np.array(texts)},
    )


def sequence_report(n: int = 6, t: int = 4, *, seed: int = 0) -> LossReport:
    """A sequence report (token ids 1..5, padding 0 masked)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(1, 6, (n, t)).astype(np.int32)
    mask = np.ones((n, t), bool)
    mask[:, -1] = np.arange(n) % 2 == 0  # odd rows have one padded position
    label[~mask] = 0
    prediction = label.copy()
    prediction[1, 0] = (label[1, 0] % 5) + 1  # one wrong token
    prediction[3, 1] = (label[3, 1] % 5) + 1
    token_loss = np.where(mask, rng.uniform(0.01, 0.5, (n, t)), 0).astype(np.float32)
    token_loss[prediction != label] = 3.0
    n_tokens = mask.sum(1).astype(np.int32)
    loss_sum = token_loss.sum(1)
    token_correct = (prediction == label) & mask
    return LossReport(
        task="sequence",
        num_classes=6,
        example_id=np.arange(n, dtype=np.int64),
        loss=(loss_sum / n_tokens).astype(np.float32),
        loss_sum=loss_sum.astype(np.float32),
        loss_mean=(loss_sum / n_tokens).astype(np.float32),
        label=label,
        prediction=prediction,
        confidence=np.full(n, 0.8, np.float32),
        true_prob=np.full(n, 0.7, np.float32),
        margin=np.where((prediction != label).any(1), -0.2, 0.4).astype(np.float32),
        correct=~(prediction != label).any(1),
        token_accuracy=(token_correct.sum(1) / n_tokens).astype(np.float32),
        n_tokens=n_tokens,
        token_loss=token_loss,
        token_confidence=np.full((n, t), 0.8, np.float32),
        token_true_prob=np.full((n, t), 0.7, np.float32),
        token_margin=np.full((n, t), 0.4, np.float32),
        token_mask=mask,
        inputs={"tokens": label.copy()},
    )


def make_run(
    path,
    *,
    epochs: int = 2,
    n: int = 12,
    tables: bool = True,
    sequence: bool = False,
    files: dict | None = None,
):
    """Writes a run folder with ``epochs`` epochs whose losses shrink; returns the reports.

    ``files`` maps an epoch to the extra files (name -> bytes) stored with it.
    """
    decoding = (
        {
            "vocab": ["", "a", "b", "<c>", "d|", "e\n"],
            "input_vocab": ["", "a", "b", "<c>", "d|", "e\n"],
        }
        if sequence
        else {"label_names": CLASSES}
    )
    writer = RunWriter(path, decoding=decoding)
    reports = []
    for epoch in range(1, epochs + 1):
        report = sequence_report(n) if sequence else classification_report(n, seed=epoch)
        report.loss = (report.loss / epoch).astype(np.float32)
        extra_tables = {}
        if tables:
            extra_tables["per_class"] = pd.DataFrame(
                {"class": CLASSES, "error_rate": [0.1, 0.5, 0.25], "note": HOSTILE[:3]}
            )
            extra_tables["features"] = pd.DataFrame(
                {"feature": ["length", "has <script>"], "p_value": [0.01, 0.5]}
            )
        writer.write_epoch(epoch, report, tables=extra_tables, files=(files or {}).get(epoch))
        reports.append(report)
    return reports


GEN_VOCAB = ["", "a", "b", "<c>", "d|", "e", "<script>x</script>"]


def generation_run(path, *, epochs: int = 2, n: int = 12):
    """A seq2seq run folder whose epochs hold free-running outputs, as ``generate`` writes.

    Each epoch's generated ids are the labels with more tokens changed in early epochs
    (row 0 always generated right, row 2 teacher-forced right but generated wrong: an
    exposure gap); the ``generated_*`` columns and the ``generation`` table come from the
    package's own scoring. Returns the reports.
    """
    from keras_erranalysis.compute import score_generated
    from keras_erranalysis.options import GenerationAnalysis
    from keras_erranalysis.pipeline import generation_table

    writer = RunWriter(path, decoding={"vocab": GEN_VOCAB, "input_vocab": GEN_VOCAB})
    reports = []
    for epoch in range(1, epochs + 1):
        report = sequence_report(n)
        report.loss = (report.loss / epoch).astype(np.float32)
        rng = np.random.default_rng(epoch)
        generated = np.where(report.token_mask, report.label, 0).astype(np.int32)
        changed = (rng.random(generated.shape) < 0.6 / epoch) & report.token_mask
        changed[0] = False
        changed[2] = [True] + [False] * (generated.shape[1] - 1)
        generated[changed] = 6  # the hostile token
        report.generated = generated
        report.extra["generated_length"] = report.token_mask.sum(1).astype(np.int32)
        corpus = score_generated(report, end_id=None, vocab=GEN_VOCAB)
        table = generation_table(corpus, GenerationAnalysis())
        writer.write_epoch(epoch, report, tables={"generation": table})
        reports.append(report)
    return reports
