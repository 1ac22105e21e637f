"""Why a loss is NaN or inf: the cause of each non-finite loss, named per example."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

#: Causes, in the order they are tested: the first that holds is named.
CAUSES = {
    "weights": "non-finite weights: the model diverged",
    "no_counted": "no counted position: every label position is masked or ignored",
    "empty_input": "empty input: every input position is padding (id 0)",
    "input_values": "non-finite input values",
    "label_range": "label outside the model's classes",
    "output": "the model outputs NaN/inf for this input",
}


def nonfinite_causes(
    report: object,
    *,
    weights_finite: bool = True,
    input_finite: np.ndarray | None = None,
    ignore_class: int | None = None,
) -> np.ndarray:
    """The cause of every non-finite loss, as text; ``""`` where the loss is finite.

    Args:
        report: A :class:`~keras_erranalysis.LossReport` (its ``n_tokens``, ``label``,
            ``num_classes`` and kept integer ``inputs`` are read).
        weights_finite: Whether every weight of the model is finite.
        input_finite: ``(N,)`` True where every input value of the example is finite
            (``None``: not known, e.g. a ``tf.data`` input).
        ignore_class: A label id that does not count (not out of range).

    Returns:
        ``(N,)`` array of strings, one of :data:`CAUSES`' texts for each non-finite loss.

    Example:
        >>> from keras_erranalysis import LossReport
        >>> import numpy as np
        >>> n = 3
        >>> report = LossReport(
        ...     task="classification", num_classes=2, example_id=np.arange(n),
        ...     loss=np.array([0.1, np.nan, np.nan]), loss_sum=np.zeros(n), loss_mean=np.zeros(n),
        ...     label=np.array([0, 5, 1]), prediction=np.zeros(n, int), confidence=np.ones(n),
        ...     true_prob=np.ones(n), margin=np.ones(n), correct=np.ones(n, bool),
        ...     token_accuracy=np.ones(n), n_tokens=np.ones(n, int))
        >>> nonfinite_causes(report).tolist()
        ['', "label outside the model's classes", 'the model outputs NaN/inf for this input']
    """
    bad = ~np.isfinite(np.asarray(report.loss, dtype=np.float64))
    n = len(bad)
    found = np.full(n, "", dtype=object)
    undecided = bad.copy()

    def name(rows: np.ndarray, cause: str) -> None:
        hit = undecided & rows
        found[hit] = CAUSES[cause]
        undecided[hit] = False

    if not weights_finite:
        name(np.ones(n, bool), "weights")
    name(np.asarray(report.n_tokens) == 0, "no_counted")
    name(_all_padding(report.inputs, n), "empty_input")
    if input_finite is not None:
        name(~np.asarray(input_finite, bool), "input_values")
    label = np.asarray(report.label)
    outside = (label < 0) | (label >= report.num_classes)
    if ignore_class is not None:
        outside &= label != ignore_class
    name(outside.reshape(n, -1).any(axis=1), "label_range")
    name(np.ones(n, bool), "output")
    return found.astype(str)


def _all_padding(inputs: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """True for rows whose integer inputs are all 0 (the padding id)."""
    empty = np.zeros(n, bool)
    for values in inputs.values():
        values = np.asarray(values)
        if values.dtype.kind in "iu" and values.ndim >= 2 and len(values) == n:
            empty |= ~values.reshape(n, -1).any(axis=1)
    return empty


def causes_summary(causes: np.ndarray) -> str:
    """``"empty input: ...: 3; label outside ...: 1"``: the causes named, most common first."""
    counts = Counter(c for c in np.asarray(causes).tolist() if c)
    return "; ".join(f"{cause}: {count}" for cause, count in counts.most_common())
