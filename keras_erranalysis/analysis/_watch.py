"""The watch list: right examples followed epoch after epoch in the attention heatmaps.

Taking the first examples right at the first epoch gives a poor list: at that point the
model gets only the easiest right, often the shortest, and some of them go wrong later.
Here the list is spread over the examples' lengths (one slot per quantile of length, each
filled by the right example of nearest length, the most confident among ties), and an
example that turns wrong is replaced by the right one nearest to it in length, and the
replacement is returned so the caller can note it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class WatchUpdate:
    """The watch list after one epoch.

    Attributes:
        watch: Positions of the watched examples (``None``: no example is right yet).
        replaced: ``(old, new)`` positions: ``old`` turned wrong and ``new`` (right, of
            the nearest length) takes its slot from the next epoch; ``new`` is ``None``
            when no right example was left to take it.
        added: Positions that filled empty slots (too few right examples before).
    """

    watch: list[int] | None
    replaced: list[tuple[int, int | None]] = dataclasses.field(default_factory=list)
    added: list[int] = dataclasses.field(default_factory=list)


def example_lengths(report: Any) -> np.ndarray:
    """Each example's length: counted target tokens, else non-padding input tokens.

    For a sequence output the counted target tokens; otherwise the first kept input's
    non-zero ids (or characters of a text input); all ones when neither is known.
    """
    if report.is_sequence and report.token_mask is not None:
        return np.asarray(report.token_mask).sum(axis=1).astype(np.int64)
    if report.inputs:
        values = np.asarray(next(iter(report.inputs.values())))
        if values.dtype.kind in "iu" and values.ndim == 2:
            return (values != 0).sum(axis=1).astype(np.int64)
        if values.dtype.kind in "US" and values.ndim == 1:
            return np.array([len(str(v)) for v in values], np.int64)
    return np.ones(len(report), np.int64)


def update_watch_list(
    lengths: np.ndarray,
    correct: np.ndarray,
    confidence: np.ndarray,
    size: int,
    watch: Sequence[int] | None = None,
) -> WatchUpdate:
    """Chooses, keeps or repairs the watch list.

    Args:
        lengths: ``(N,)`` example lengths (:func:`example_lengths`).
        correct: ``(N,)`` whether each example is right this epoch.
        confidence: ``(N,)`` confidence, to break ties of length (most confident first).
        size: How many examples to watch.
        watch: The list so far (``None`` or empty: choose it now).

    Returns:
        A :class:`WatchUpdate`. Slot ``i`` aims at the ``(i + 0.5) / size`` quantile of
        all examples' lengths; a list that is still short (few right examples when it
        was chosen) is filled up at a later epoch.

    Example:
        >>> update_watch_list(np.array([1, 2, 3, 4]), np.ones(4, bool), np.ones(4), 2).watch
        [1, 2]
    """
    lengths = np.asarray(lengths, np.float64)
    correct = np.asarray(correct, bool)
    confidence = np.asarray(confidence, np.float64)
    if size < 1 or lengths.size == 0:
        return WatchUpdate(None if not watch else list(watch))
    current = [int(r) for r in (watch or [])]
    update = WatchUpdate(current)
    taken = set(current)

    def nearest(length: float) -> int | None:
        candidates = np.flatnonzero(correct)
        candidates = candidates[~np.isin(candidates, list(taken))]
        if candidates.size == 0:
            return None
        # nearest length, then the most confident, then the first
        order = np.lexsort(
            (candidates, -confidence[candidates], np.abs(lengths[candidates] - length))
        )
        return int(candidates[order[0]])

    for slot, row in enumerate(current):
        if correct[row]:
            continue
        new = nearest(lengths[row])
        update.replaced.append((row, new))
        if new is not None:
            current[slot] = new
            taken.add(new)
    if len(current) < size:
        targets = list(np.quantile(lengths, (np.arange(size) + 0.5) / size, method="nearest"))
        for row in current:  # each member serves the target nearest to its length
            targets.pop(int(np.argmin([abs(t - lengths[row]) for t in targets])))
        for target in targets:
            new = nearest(target)
            if new is None:
                break
            current.append(new)
            taken.add(new)
            update.added.append(new)
    update.watch = current or None
    return update
