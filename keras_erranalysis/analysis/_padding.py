"""Padding counted as if it were data: a sequence loss that scores the padding positions."""

from __future__ import annotations

import numpy as np

from keras_erranalysis._columns import PADDING_NAMES

#: Share of label rows that must end in counted id-0 positions before padding is suspected.
PADDING_ROW_SHARE = 0.5


def counted_padding(report: object, *, vocab: object = None) -> str | None:
    """A warning text when a sequence report counts the padding id, else ``None``.

    Keras drops masks in common seq2seq models (``MultiHeadAttention`` removes the mask of
    its query), so neither the training loss nor the pass masks the padding: every row then
    counts every position. Id 0 is taken for padding when the vocabulary names it so
    (``""``, ``<pad>``, ``[PAD]``), or when it ends most label rows in a run of varying
    length: a real class would not sit at the end of rows of every length.

    Args:
        report: A :class:`~keras_erranalysis.LossReport` (``label``, ``token_mask``).
        vocab: The target vocabulary (a :class:`~keras_erranalysis.Vocabulary`), if any.

    Returns:
        The warning, naming the share of rows and the fix, or ``None``.

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> label = np.array([[5, 6, 0, 0], [7, 0, 0, 0], [5, 6, 7, 0]])
        >>> report = SimpleNamespace(is_sequence=True, label=label,
        ...                          token_mask=np.ones_like(label, bool))
        >>> print(counted_padding(report))  # doctest: +ELLIPSIS
        Label id 0 looks like padding (it ends 3 of 3 label rows) and is counted...
        >>> report.token_mask = label != 0
        >>> counted_padding(report) is None
        True
    """
    if not getattr(report, "is_sequence", False) or report.token_mask is None:
        return None
    label = np.asarray(report.label)
    counted = np.asarray(report.token_mask, bool)
    if label.ndim != 2 or label.shape[1] < 2 or len(label) == 0:
        return None
    pad = label == 0
    # Length of the run of id 0 at the end of each row, and whether it is counted.
    trailing = np.argmin(pad[:, ::-1], axis=1)
    trailing[pad.all(axis=1)] = label.shape[1]
    ends_in_pad = trailing > 0
    tail_counted = ends_in_pad & (counted & pad)[:, -1]
    tokens = getattr(vocab, "tokens", None)
    named = bool(tokens) and str(tokens[0]).strip().lower() in PADDING_NAMES
    varying = len(np.unique(trailing[ends_in_pad])) > 1
    share = tail_counted.mean()
    if share < PADDING_ROW_SHARE or not (named or varying):
        return None
    return (
        f"Label id 0 looks like padding (it ends {int(tail_counted.sum())} of {len(label)} "
        "label rows) and is counted: losses, n_tokens, accuracy and the per-class table "
        "include the padding. Keras' MultiHeadAttention drops the mask of its query, so a "
        "masked Embedding does not reach the loss. Fix: "
        "SparseCategoricalCrossentropy(ignore_class=0) in compile (and "
        "PassOptions(ignore_class=0) here), or pass a mask through the loss."
    )
