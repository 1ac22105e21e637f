"""Classification metrics per class: confusion matrix, precision/recall/F1, confused pairs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis.decoding import printable_text


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
        return [printable_text(label_names.get(i, i)) for i in range(k)]
    names = [printable_text(t) for t in label_names]  # a table holds no lone surrogate
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

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import confusion_matrix
        >>> confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]))
        array([[1, 1, 0],
               [0, 1, 0],
               [0, 1, 0]])
        >>> confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), normalize="true")
        array([[0.5, 0.5, 0. ],
               [0. , 1. , 0. ],
               [0. , 1. , 0. ]])
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

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import per_class_metrics
        >>> y = np.array([0, 0, 1, 1, 2])
        >>> p = np.array([0, 1, 1, 1, 1])
        >>> table = per_class_metrics(y, p, label_names=["cat", "dog", "fox"])
        >>> table[["support", "precision", "recall", "f1"]].round(2)
                      support  precision  recall    f1
        cat                 2        1.0     0.5  0.67
        dog                 2        0.5     1.0  0.67
        fox                 1        0.0     0.0  0.00
        macro avg           5        0.5     0.5  0.44
        weighted avg        5        0.6     0.6  0.53
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

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import confusion_pairs
        >>> y = np.array([0, 0, 1, 2, 2])
        >>> p = np.array([0, 2, 1, 0, 0])
        >>> pairs = confusion_pairs(y, p, example_ids=np.array([10, 11, 12, 13, 14]))
        >>> pairs[["true", "predicted", "count", "example_ids"]]
           true  predicted  count example_ids
        0     2          0      2    [13, 14]
        1     0          2      1        [11]
        >>> pairs.loc[0, "summary"]
        'class 2 is predicted as 0 in 100% of its errors (2 of 2; 100% of its 2 examples)'
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
