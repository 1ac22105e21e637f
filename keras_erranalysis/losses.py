"""Compute: one compiled, unreduced loss pass that yields per-example (and per-token) results.

The pass runs the model in inference mode inside a ``tf.function`` (with XLA where it
compiles), reduces everything on the device to a few numbers per example and per token, and
concatenates those once on the host. The full logits tensor never reaches the host.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from keras_erranalysis import ranking
from keras_erranalysis.decoding import Vocabulary

Reduction = Literal["mean", "sum"]

# Scalar per-example columns, in the order they appear in tables and on disk.
EXAMPLE_COLUMNS = (
    "example_id",
    "loss",
    "loss_sum",
    "loss_mean",
    "confidence",
    "true_prob",
    "margin",
    "correct",
    "token_accuracy",
    "n_tokens",
)
# Per-token (N, T) columns, only for sequence outputs.
TOKEN_COLUMNS = ("token_loss", "token_confidence", "token_true_prob", "token_margin", "token_mask")


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
        true_prob: Probability of the given label (sequences: mean over counted tokens).
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

    def __len__(self) -> int:
        return int(self.example_id.shape[0])

    def __repr__(self) -> str:
        wrong = int((~self.correct.astype(bool)).sum())
        return (
            f"LossReport(task={self.task!r}, examples={len(self)}, "
            f"classes={self.num_classes}, wrong={wrong}, "
            f"mean_loss={float(np.nanmean(self.loss)) if len(self) else float('nan'):.4g})"
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
            prediction, confidence, true_prob, margin, correct, token_accuracy, n_tokens,
            nonfinite``, the ``extra`` columns, and ``input_text``, ``label_text``,
            ``prediction_text`` when they can be decoded.
        """
        frame = self.scalars()
        frame["nonfinite"] = self.nonfinite
        for name, values in self.extra.items():
            frame[name] = values
        input_text = self.input_texts(input_vocab, input_name=input_name)
        if input_text is not None:
            frame["input_text"] = input_text
        target = Vocabulary.from_any(vocab if self.is_sequence else label_names)
        if target is not None:
            frame["label_text"] = self._decode_targets(self.label, target)
            frame["prediction_text"] = self._decode_targets(self.prediction, target)
        return frame

    def scalars(self) -> pd.DataFrame:
        """The per-example numbers only (no text), one row per example."""
        frame = pd.DataFrame({name: np.asarray(getattr(self, name)) for name in EXAMPLE_COLUMNS})
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
        return [decoder.decode(row) for row in rows]

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
        return ranking.rank_examples(self.to_frame(**decoding), by=by, k=k, only_wrong=only_wrong)

    def tokens(self, i: int, vocab: Any = None, *, by_id: bool = False) -> pd.DataFrame:
        """Returns the per-token table of one example of a sequence output.

        Args:
            i: Row index of the example in this report (or its id, with ``by_id=True``).
            vocab: Decodes label and prediction tokens (see :meth:`to_frame`).
            by_id: Treat ``i`` as an example id rather than a row index.

        Returns:
            One row per position: ``position, label, prediction, label_token,
            prediction_token, loss, confidence, true_prob, margin, correct, counted``;
            positions that do not count (padding, ignored labels) have ``counted=False``.
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
        if decoder is not None:
            table.insert(3, "label_token", [decoder.token(t) for t in self.label[row]])
            table.insert(4, "prediction_token", [decoder.token(t) for t in self.prediction[row]])
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


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------


def compute_losses(
    model: Any,
    data: Any,
    *,
    loss: Any = None,
    output: str | int | None = None,
    batch_size: int = 32,
    reduction: Reduction = "mean",
    ignore_class: int | None = None,
    from_logits: bool | None = None,
    ids: np.ndarray | None = None,
    keep_inputs: bool = True,
    jit_compile: bool | Literal["auto"] = "auto",
    verbose: int = 1,
) -> LossReport:
    """Runs one compiled, unreduced loss pass and returns per-example results.

    Args:
        model: A built Keras 3 model (TensorFlow backend).
        data: A batched ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``, or
            such a tuple of numpy arrays / dicts of arrays (batched here by ``batch_size``).
            A dataset of ``(x, y, sample_weight, ids)`` (``sample_weight`` may be None)
            carries example ids with each batch: results come back sorted by id, which
            keeps them in order under ``MultiWorkerMirroredStrategy`` sharding.
        loss: A Keras loss (object, name) or a callable ``(y_true, y_pred)`` returning
            unreduced losses. Defaults to the model's compiled loss, re-made unreduced.
        output: Name or index of the output to analyse, for multi-output models.
        batch_size: Batch size for numpy input (ignored for a dataset).
        reduction: How ``loss`` summarises a sequence: ``"mean"`` or ``"sum"`` over its
            counted tokens. Both are always kept as ``loss_mean`` and ``loss_sum``.
        ignore_class: Label id that does not count (e.g. ``-100`` for NER sub-tokens).
            Defaults to the loss's own ``ignore_class``.
        from_logits: Whether the output is logits. Defaults to the loss's own setting.
        ids: Stable example ids, one per example in data order (default ``0..N-1``, or
            the ids the batches carry).
        keep_inputs: Keep integer/string inputs (token ids) so examples can be decoded.
        jit_compile: ``True`` for XLA, ``False`` for none, ``"auto"`` to try XLA and fall
            back cleanly when the model does not compile with it.
        verbose: 0 for silence, 1 for a progress bar.

    Returns:
        A :class:`LossReport`.

    Raises:
        ValueError: For an unbuilt model, empty data, labels that do not fit the output,
            float labels for a sparse loss, probabilities given where logits are expected
            (or the reverse), or a multi-output model without ``output``.

    Example:
        >>> report = compute_losses(model, (x_val, y_val), verbose=0)  # doctest: +SKIP
        >>> report.hardest(5)  # doctest: +SKIP
    """
    import tensorflow as tf

    from keras_erranalysis import _pass

    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    _pass.check_model(model)
    dataset = _pass.as_dataset(data, batch_size)
    spec = _pass.resolve_loss(
        model, loss, output, ignore_class=ignore_class, from_logits=from_logits
    )
    first = _pass.first_batch(dataset)
    probe = _pass.probe(model, spec, first)
    strategy = _pass.model_strategy(model)
    if strategy.num_replicas_in_sync > 1:
        batches = strategy.experimental_distribute_dataset(dataset)
    else:
        batches = dataset

    if jit_compile and strategy.num_replicas_in_sync > 1:
        # One XLA program would reach the other replicas' variables on their devices
        # (InvalidArgumentError), and has no kernel for the cross-worker gather.
        if jit_compile is True:
            warnings.warn(
                "jit_compile=True is ignored under a multi-replica tf.distribute strategy: "
                "the pass runs without XLA.",
                RuntimeWarning,
                stacklevel=2,
            )
        jit_compile = False
    compiled = _pass.compiled_step(model, spec, probe, strategy, jit_compile)
    total = _pass.cardinality(dataset)
    progress = _pass.progress_bar(total, verbose)
    chunks: list[dict[str, Any]] = []
    seen = 0
    for batch in batches:
        x, y, sample_weight, batch_ids = _pass.unpack(batch, with_ids=True)
        try:
            result = compiled(x, y, sample_weight, batch_ids)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            if compiled.jit and jit_compile == "auto":
                warnings.warn(
                    f"XLA could not compile the loss pass ({type(error).__name__}); "
                    "running without XLA. Pass jit_compile=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                compiled.disable_xla()
                result = compiled(x, y, sample_weight, batch_ids)
            else:
                raise
        host = {key: _to_numpy(value) for key, value in result.items()}
        _pass.check_batch(host, spec, probe)
        if keep_inputs:
            host["inputs"] = _pass.kept_inputs(x, strategy)
        chunks.append(host)
        seen += host["loss_sum"].shape[0]
        if progress is not None:
            progress.update(len(chunks))
    if not chunks or seen == 0:
        raise ValueError(
            "The data holds no examples: compute_losses needs at least one batch. Check "
            "that the dataset is not exhausted (a one-shot iterator) or filtered to nothing."
        )
    return _assemble(chunks, spec, probe, ids=ids, reduction=reduction)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value.numpy()


def _assemble(
    chunks: list[dict[str, Any]],
    spec: Any,
    probe: Any,
    *,
    ids: np.ndarray | None,
    reduction: str,
) -> LossReport:
    n = sum(c["loss_sum"].shape[0] for c in chunks)
    carried = "example_id" in chunks[0]
    if carried and ids is not None:
        raise ValueError(
            "The batches carry ids (x, y, sample_weight, ids) and ids= was given too: "
            "pass only one of them."
        )
    if carried:
        example_id = np.concatenate([c.pop("example_id") for c in chunks]).astype(np.int64)
        if len(np.unique(example_id)) != n:
            raise ValueError("The ids the batches carry must be unique, one per example.")
        order = np.argsort(example_id, kind="stable")
        example_id = example_id[order]
    elif ids is None:
        example_id = np.arange(n, dtype=np.int64)
    else:
        example_id = np.asarray(ids).reshape(-1)
        if example_id.shape[0] != n:
            raise ValueError(
                f"ids has {example_id.shape[0]} entries but the data holds {n} examples: "
                "pass one id per example, in data order."
            )
        if len(np.unique(example_id)) != n:
            raise ValueError("ids must be unique: each example needs its own id.")
    # Column by column, each popped from the chunks as it is joined (and put in id order),
    # so the peak is the chunks plus one column, not two copies of everything.
    columns: dict[str, np.ndarray] = {}
    for key in [k for k in chunks[0] if k != "inputs"]:
        columns[key] = _concat([c.pop(key) for c in chunks])
        if carried:  # results in id order, whatever order the workers' shards came back in
            columns[key] = columns[key][order]
    inputs: dict[str, np.ndarray] = {}
    for name in chunks[0].get("inputs", {}):
        inputs[name] = _concat([c["inputs"][name] for c in chunks])
        if inputs[name].dtype.kind in "SO":
            inputs[name] = np.array([_text(v) for v in inputs[name].reshape(-1)]).reshape(
                inputs[name].shape
            )
    if carried:
        inputs = {key: value[order] for key, value in inputs.items()}
    loss_sum = columns["loss_sum"].astype(np.float32, copy=False)
    n_tokens = columns["n_tokens"].astype(np.int32, copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss_mean = np.where(n_tokens > 0, loss_sum / np.maximum(n_tokens, 1), 0.0)
    loss_mean = loss_mean.astype(np.float32)
    sequence = probe.sequence
    report = LossReport(
        task="sequence" if sequence else "classification",
        num_classes=probe.num_classes,
        example_id=example_id,
        loss=loss_mean if reduction == "mean" else loss_sum,
        loss_sum=loss_sum,
        loss_mean=loss_mean,
        label=columns["label"].astype(np.int32, copy=False),
        prediction=columns["prediction"].astype(np.int32, copy=False),
        confidence=columns["confidence"].astype(np.float32, copy=False),
        true_prob=columns["true_prob"].astype(np.float32, copy=False),
        margin=columns["margin"].astype(np.float32, copy=False),
        correct=columns["correct"].astype(bool, copy=False),
        token_accuracy=columns["token_accuracy"].astype(np.float32, copy=False),
        n_tokens=n_tokens,
        inputs=inputs,
        reduction=reduction,
    )
    if sequence:
        report.token_loss = columns["token_loss"].astype(np.float32, copy=False)
        report.token_confidence = columns["token_confidence"].astype(np.float32, copy=False)
        report.token_true_prob = columns["token_true_prob"].astype(np.float32, copy=False)
        report.token_margin = columns["token_margin"].astype(np.float32, copy=False)
        report.token_mask = columns["token_mask"].astype(bool, copy=False)
    return report


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenates along axis 0, padding axis 1 when batches differ in length."""
    if parts[0].ndim < 2 or len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts, axis=0)
    width = max(p.shape[1] for p in parts)
    padded = []
    for part in parts:
        pad = [(0, 0)] * part.ndim
        pad[1] = (0, width - part.shape[1])
        fill: Any = False if part.dtype == bool else ("" if part.dtype.kind in "US" else 0)
        padded.append(np.pad(part, pad, constant_values=fill))
    return np.concatenate(padded, axis=0)
