"""LossReport: every example's numbers from one pass, as arrays (numpy and pandas only)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd

from keras_erranalysis._columns import CLASSIFIER_COLUMNS, EXAMPLE_COLUMNS, PADDING_NAMES
from keras_erranalysis.decoding import Vocabulary

Reduction = Literal["mean", "sum"]


def finite_mean(values: Any) -> float:
    """The mean of the finite values, summed in float64; NaN when there is none.

    A float32 sum overflows: 100 losses of 2e38, each finite, would average to inf.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclasses.dataclass
class LossReport:
    """Per-example results of one loss pass; every array has the examples on axis 0.

    Attributes:
        task: ``"classification"`` for ``(batch, classes)`` outputs, ``"sequence"`` for
            ``(batch, time, classes)`` outputs.
        num_classes: Size of the output's class axis.
        example_id: Stable example ids, ``(N,)``.
        loss: The per-example loss used for ranking (``loss_mean`` or ``loss_sum``).
        loss_sum: Loss summed over counted tokens (weighted by sample weights).
        loss_mean: ``loss_sum`` divided by the number of counted tokens.
        label: Given labels (int32), ``(N,)`` or ``(N, T)``; one-hot labels become ids.
        prediction: Argmax of the output, same shape as ``label``; -1 where the
            probabilities are undefined (a NaN or +inf logit, every class at -inf), whose
            ``confidence``, ``true_prob`` and ``margin`` are NaN and ``correct`` False.
        confidence: Probability of the prediction (sequences: mean over counted tokens).
        true_prob: Probability of the given label (sequences: the lowest over counted tokens).
        margin: Probability of the given label minus the largest other probability, in
            ``[-1, 1]`` (sequences: the smallest over counted tokens, the worst token).
        correct: Prediction equals label (sequences: every counted token right).
        token_accuracy: Share of counted tokens right (classifiers: ``correct``).
        n_tokens: Number of counted positions (1 for classifiers, 0 if all are ignored).
        token_loss: Per-token loss, ``(N, T)``; zero where not counted. None for classifiers.
        token_confidence: Per-token probability of the prediction, ``(N, T)``.
        token_true_prob: Per-token probability of the label, ``(N, T)``.
        token_margin: Per-token margin, ``(N, T)``.
        token_mask: True where a position counts (not padding, not an ignored label,
            non-zero sample weight), ``(N, T)``.
        inputs: The model's integer or string inputs (token ids, raw text) by input name,
            kept so examples can be decoded; empty for other inputs (e.g. images).
        extra: More per-example ``(N,)`` columns (e.g. attention diagnostics).
        generated: Free-running output ids ``(N, max_length)`` when the pass decoded
            (``generate=``), each row's first ``extra["generated_length"]`` ids counted;
            ``None`` otherwise.
        reduction: Which of ``"mean"`` / ``"sum"`` ``loss`` holds.
    """

    task: str
    num_classes: int
    example_id: np.ndarray
    loss: np.ndarray
    loss_sum: np.ndarray
    loss_mean: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    true_prob: np.ndarray
    margin: np.ndarray
    correct: np.ndarray
    token_accuracy: np.ndarray
    n_tokens: np.ndarray
    token_loss: np.ndarray | None = None
    token_confidence: np.ndarray | None = None
    token_true_prob: np.ndarray | None = None
    token_margin: np.ndarray | None = None
    token_mask: np.ndarray | None = None
    inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    reduction: str = "mean"
    generated: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.example_id.shape[0])

    def __repr__(self) -> str:
        wrong = int((~self.correct.astype(bool)).sum())
        return (
            f"LossReport(task={self.task!r}, examples={len(self)}, "
            f"classes={self.num_classes}, wrong={wrong}, "
            f"mean_loss={finite_mean(self.loss):.4g})"
        )

    @property
    def is_sequence(self) -> bool:
        """Whether the output has a time axis (seq2seq, token classification)."""
        return self.task == "sequence"

    @property
    def nonfinite(self) -> np.ndarray:
        """True for examples whose loss is NaN or infinite."""
        return ~np.isfinite(self.loss_sum)

    def to_frame(
        self,
        vocab: Any = None,
        input_vocab: Any = None,
        label_names: Any = None,
        *,
        input_name: str | None = None,
    ) -> pd.DataFrame:
        """Returns one row per example with every per-example number and decoded text.

        Args:
            vocab: Decodes labels and predictions of a sequence output (target tokens):
                a token list, an id->token dict, a ``TextVectorization`` / ``StringLookup``
                layer, a callable, or a :class:`~keras_erranalysis.decoding.Vocabulary`.
            input_vocab: Decodes the input token ids (source text). Defaults to ``vocab``
                for sequence models, as token classification shares one vocabulary less
                often than seq2seq, pass it explicitly when they differ.
            label_names: Names of the classes of a classifier (same kinds as ``vocab``).
            input_name: Which kept input to decode (default: the first one).

        Returns:
            A DataFrame with columns ``example_id, loss, loss_sum, loss_mean, label,
            prediction, confidence, true_prob, margin, correct`` (sequences: also
            ``token_accuracy, n_tokens``, and no ``label, prediction``), ``nonfinite``, the
            ``extra`` columns, and ``input_text``, ``label_text``, ``prediction_text``
            (and ``generated_text``, the free-running output) when they can be decoded.
        """
        frame = self.scalars()
        frame["nonfinite"] = self.nonfinite
        for name, values in self.extra.items():
            frame[name] = values
        input_text = self.input_texts(input_vocab, input_name=input_name)
        if input_text is not None:
            frame["input_text"] = input_text
        if not self.is_sequence and vocab is not None and label_names is None:
            warnings.warn(
                "vocab= decodes sequence outputs; this report is for a classifier, so it is "
                "ignored: pass label_names=[...] to name the classes.",
                UserWarning,
                stacklevel=2,
            )
        target = Vocabulary.from_any(vocab if self.is_sequence else label_names)
        if target is not None:
            self._warn_missing_ids(target, "vocab" if self.is_sequence else "label_names")
            frame["label_text"] = self._decode_targets(self.label, target)
            frame["prediction_text"] = self._decode_targets(self.prediction, target)
        if self.generated is not None and "generated_length" in self.extra:
            frame["generated_text"] = self.generated_texts(target)
        return frame

    def generated_texts(self, vocab: Any = None) -> list[str]:
        """The free-running outputs as text (ids joined by spaces without a vocabulary).

        Raises:
            ValueError: When the pass did not decode (no ``generate=``).
        """
        if self.generated is None or "generated_length" not in self.extra:
            raise ValueError(
                "This report holds no generated outputs: pass generate='greedy' to "
                "compute_losses (or 'generate' in the callback's analyses)."
            )
        decoder = Vocabulary.from_any(vocab)
        lengths = np.asarray(self.extra["generated_length"])
        rows = np.asarray(self.generated)
        return [
            decoder.decode(row[:n]) if decoder is not None else " ".join(map(str, row[:n]))
            for row, n in zip(rows, lengths)
        ]

    def scalars(self) -> pd.DataFrame:
        """The per-example numbers only (no text), one row per example."""
        # A classifier's token_accuracy repeats correct and its n_tokens is 1: not shown.
        names = EXAMPLE_COLUMNS if self.is_sequence else CLASSIFIER_COLUMNS
        frame = pd.DataFrame({name: np.asarray(getattr(self, name)) for name in names})
        if not self.is_sequence:
            frame.insert(4, "label", np.asarray(self.label))
            frame.insert(5, "prediction", np.asarray(self.prediction))
        return frame

    def input_texts(self, input_vocab: Any = None, *, input_name: str | None = None):
        """Decodes the kept model inputs to one string per example, or None if impossible."""
        if not self.inputs:
            return None
        name = input_name or next(iter(self.inputs))
        if name not in self.inputs:
            raise KeyError(f"No kept input named {name!r}; kept inputs: {list(self.inputs)}.")
        values = self.inputs[name]
        if values.dtype.kind in "US":
            return [_text(v) for v in values.reshape(len(values), -1)[:, 0]]
        decoder = Vocabulary.from_any(input_vocab)
        if decoder is None:
            return None
        rows = values.reshape(len(values), -1)
        if decoder.tokens and decoder.tokens[0].strip().lower() in PADDING_NAMES:
            # Id 0 named as padding ("<pad>", "[PAD]"): not part of the text.
            return [decoder.decode(row, row != 0) for row in rows]
        return [decoder.decode(row) for row in rows]

    def _warn_missing_ids(self, decoder: Vocabulary, name: str) -> None:
        """Warns (once per call) when ``decoder`` lacks ids the labels or predictions use."""
        if decoder.tokens is None:
            return
        size = len(decoder.tokens)
        if self.is_sequence:
            mask = np.asarray(self.token_mask, dtype=bool)
            used = np.union1d(np.asarray(self.label)[mask], np.asarray(self.prediction)[mask])
            what = f"token ids up to {int(used.max()) if used.size else 0}"
        else:
            used = np.arange(self.num_classes)
            what = f"{self.num_classes} classes"
        missing = used[used >= size]
        if missing.size == 0:
            return
        listed = ", ".join(str(int(i)) for i in missing[:10]) + (
            f", ... ({missing.size} in all)" if missing.size > 10 else ""
        )
        warnings.warn(
            f"{name} has {size} entries but the {what}: ids {listed} are missing and show "
            f"as <id>; pass the full {name}.",
            UserWarning,
            stacklevel=3,
        )

    def _decode_targets(self, ids: np.ndarray, decoder: Vocabulary) -> list[str]:
        if not self.is_sequence:
            return [decoder.token(i) for i in ids]
        mask = self.token_mask
        return [decoder.decode(row, row_mask) for row, row_mask in zip(ids, mask)]

    def hardest(
        self,
        k: int = 20,
        by: str = "loss",
        only_wrong: bool = False,
        **decoding: Any,
    ) -> pd.DataFrame:
        """Returns the ``k`` hardest examples, ranked by ``by``.

        Args:
            k: How many rows.
            by: ``"loss"`` (highest first), ``"confidence"`` (least confident first),
                ``"margin"`` (most negative margin first), ``"true_prob"`` (lowest first)
                or ``"confidently_wrong"`` (wrong examples, most confident first). Examples
                whose loss is NaN or infinite always come first.
            only_wrong: Keep only examples the model gets wrong.
            **decoding: ``vocab``, ``input_vocab``, ``label_names`` as for :meth:`to_frame`.

        Returns:
            A DataFrame of at most ``k`` rows with a ``rank`` column starting at 1.
        """
        from keras_erranalysis.analysis._ranking import rank_examples

        return rank_examples(self.to_frame(**decoding), by=by, k=k, only_wrong=only_wrong)

    def tokens(self, i: int, vocab: Any = None, *, by_id: bool = False) -> pd.DataFrame:
        """Returns the per-token table of one example of a sequence output.

        Args:
            i: Row index of the example in this report (or its id, with ``by_id=True``).
            vocab: Decodes label and prediction tokens (see :meth:`to_frame`).
            by_id: Treat ``i`` as an example id rather than a row index.

        Returns:
            One row per position: ``position, label, prediction, label_token,
            prediction_token, loss, confidence, true_prob, margin, correct, counted``;
            positions that do not count (padding, ignored labels) have ``counted=False``,
            NaN numbers and blank tokens.
        """
        if not self.is_sequence:
            raise ValueError(
                "tokens() needs a sequence output (batch, time, classes); this report is "
                "for a classifier: use to_frame() or hardest() instead."
            )
        row = self._row(i, by_id=by_id)
        decoder = Vocabulary.from_any(vocab)
        counted = self.token_mask[row]
        table = pd.DataFrame(
            {
                "position": np.arange(counted.shape[0]),
                "label": self.label[row],
                "prediction": self.prediction[row],
                "loss": self.token_loss[row],
                "confidence": self.token_confidence[row],
                "true_prob": self.token_true_prob[row],
                "margin": self.token_margin[row],
                "correct": (self.label[row] == self.prediction[row]) & (self.prediction[row] >= 0),
                "counted": counted,
            }
        )
        # Positions that do not count have no numbers to show: blanks, not zeros or "<-100>".
        for name in ("loss", "confidence", "true_prob", "margin"):
            table[name] = table[name].astype(np.float64).where(counted)
        if decoder is not None:
            table.insert(3, "label_token", _tokens(decoder, self.label[row], counted))
            table.insert(4, "prediction_token", _tokens(decoder, self.prediction[row], counted))
        return table

    def _row(self, i: int, *, by_id: bool) -> int:
        if by_id:
            hits = np.flatnonzero(self.example_id == i)
            if hits.size == 0:
                raise KeyError(f"No example with id {i} in this report.")
            return int(hits[0])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Example index {i} out of range for {n} examples.")
        return int(i) % n

    def select(self, rows: np.ndarray) -> LossReport:
        """Returns a report holding only ``rows`` (indices or a boolean mask)."""
        fields = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value = value[rows]
            elif isinstance(value, dict):
                value = {k: v[rows] for k, v in value.items()}
            fields[field.name] = value
        return LossReport(**fields)


def _tokens(decoder: Vocabulary, ids: np.ndarray, counted: np.ndarray) -> list[str]:
    return [decoder.token(t) if keep else "" for t, keep in zip(ids, counted)]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
