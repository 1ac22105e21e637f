"""The ``filter`` of a dashboard request: parsed, checked and turned into a boolean mask.

A filter is a JSON object whose keys are ANDed (see PLUGIN_API.md): ``correct``, ``label``,
``prediction``, ``ranges``, ``text``, ``flags``, ``ids`` and ``changed``. ``None`` stands for
"every row" so an unfiltered request costs nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from keras_erranalysis.dashboard._aggregates import coordinates
from keras_erranalysis.dashboard._store import QueryError, RunView

FILTER_KEYS = (
    "correct",
    "label",
    "prediction",
    "ranges",
    "text",
    "flags",
    "ids",
    "changed",
    "box",
)
TEXT_SEARCHED = ("input_text", "label_text", "prediction_text")
MAX_IDS = 100_000


def parse_filter(raw: Any) -> dict[str, Any]:
    """The filter of a request (a JSON string or a mapping), checked; ``{}`` when absent."""
    if raw in (None, "", "null", "{}"):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise QueryError(
                f"filter is not valid JSON ({error.msg}): send a URL-encoded JSON object such "
                'as {"correct": false}.'
            ) from None
    if not isinstance(raw, Mapping):
        raise QueryError('filter must be a JSON object such as {"correct": false}.')
    unknown = sorted(set(raw) - set(FILTER_KEYS))
    if unknown:
        raise QueryError(f"Unknown filter key(s) {unknown}; the keys are {list(FILTER_KEYS)}.")
    spec = {k: v for k, v in raw.items() if v is not None}
    if "correct" in spec and not isinstance(spec["correct"], bool):
        raise QueryError('filter "correct" must be true or false.')
    for key in ("label", "prediction", "ids"):
        if key in spec:
            spec[key] = _int_list(spec[key], key)
    if "ranges" in spec:
        if not isinstance(spec["ranges"], Mapping):
            raise QueryError('filter "ranges" must map a column to [low, high].')
        spec["ranges"] = {str(c): _bounds(c, b) for c, b in spec["ranges"].items()}
    if "text" in spec and not isinstance(spec["text"], str):
        raise QueryError('filter "text" must be a string.')
    if "flags" in spec:
        flags = spec["flags"]
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise QueryError('filter "flags" must be a list of names such as ["nonfinite"].')
    if "changed" in spec:
        spec["changed"] = _changed(spec["changed"])
    if "box" in spec:
        spec["box"] = _box(spec["box"])
    return spec


def canonical(spec: Mapping[str, Any]) -> str:
    """One text per filter, for cache keys."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _int_list(value: Any, key: str) -> list[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_IDS:
        raise QueryError(f'filter "{key}" must be a list of at most {MAX_IDS} whole numbers.')
    try:
        out = [int(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise QueryError(f'filter "{key}" must be a list of whole numbers.') from None
    if len(out) != len(value) or any(o != v for o, v in zip(out, value)):
        raise QueryError(f'filter "{key}" must be a list of whole numbers.')
    return out


def _bounds(column: Any, value: Any) -> list[float | None]:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value
    )
    if not ok:
        raise QueryError(
            f'filter "ranges" of {column!r} must be [low, high] (numbers, or null for no bound).'
        )
    return [None if v is None else float(v) for v in value]


def _box(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("kind") not in ("datamap", "embedding"):
        raise QueryError(
            'filter "box" must be {"kind": "datamap" | "embedding", "x": [lo, hi], '
            '"y": [lo, hi]} (a rectangle of GET ./map).'
        )
    return {
        "kind": value["kind"],
        "x": _bounds("box x", value.get("x")),
        "y": _bounds("box y", value.get("y")),
    }


def _changed(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("kind") not in ("fixed", "broken"):
        raise QueryError(
            'filter "changed" must be {"from": A, "to": B, "kind": "fixed" | "broken"} '
            "(epoch numbers A and B)."
        )
    try:
        return {"from": int(value["from"]), "to": int(value["to"]), "kind": value["kind"]}
    except (KeyError, TypeError, ValueError):
        raise QueryError('filter "changed" needs whole epoch numbers "from" and "to".') from None


def filter_mask(
    view: RunView,
    epoch: int,
    spec: Mapping[str, Any],
    *,
    flag_mask: Callable[[RunView, int, str], np.ndarray],
) -> np.ndarray | None:
    """The rows of one epoch a filter keeps (None: all of them).

    Args:
        view: The run.
        epoch: The epoch.
        spec: A parsed filter (:func:`parse_filter`).
        flag_mask: Gives the mask of one flag name (``likely_mislabeled``, ``slice:<name>``).
    """
    mask: np.ndarray | None = None

    def keep(part: np.ndarray) -> None:
        nonlocal mask
        mask = part if mask is None else mask & part

    if "correct" in spec:
        correct = np.asarray(view.column("correct", epoch), dtype=bool)
        keep(correct if spec["correct"] else ~correct)
    for key in ("label", "prediction"):
        if key in spec:
            if view.is_sequence(epoch):
                raise QueryError(
                    f'filter "{key}" selects classes of a classifier; this run is a sequence '
                    'task: use "ranges" or "text" instead.'
                )
            keep(np.isin(np.asarray(view.column(key, epoch)), spec[key]))
    numeric = set(view.numeric_columns(epoch))
    for column, (low, high) in spec.get("ranges", {}).items():
        if column not in numeric:
            raise QueryError(
                f'filter "ranges" names {column!r}, which is no numeric column; use one of '
                f"{sorted(numeric)}."
            )
        keep(_within(np.asarray(view.column(column, epoch)), low, high))
    if spec.get("text"):
        columns = [c for c in TEXT_SEARCHED if c in view.text_columns(epoch)]
        hit = np.zeros(view.n_examples(epoch), bool)
        for column in columns:
            hit |= view.search(column, epoch, spec["text"])
        keep(hit)
    for flag in spec.get("flags", []):
        keep(flag_mask(view, epoch, flag))
    if "ids" in spec:
        rows = view.rows_of(epoch, np.asarray(spec["ids"], dtype=np.int64))
        part = np.zeros(view.n_examples(epoch), bool)
        part[rows[rows >= 0]] = True
        keep(part)
    if "changed" in spec:
        keep(changed_mask(view, epoch, **spec["changed"]))
    if "box" in spec:
        box = spec["box"]
        x, y = coordinates(view, epoch, box["kind"])
        keep(_within(x, *box["x"]) & _within(y, *box["y"]))
    return mask


def _within(values: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """``low <= values <= high`` (None: open), bounds clipped to the column's type."""
    if values.dtype == bool:
        values = values.view(np.uint8)
    floating = values.dtype.kind == "f"
    info = np.finfo(values.dtype) if floating else np.iinfo(values.dtype)
    smallest, largest = float(info.min), float(info.max)  # Python floats: no cast warnings
    part = np.ones(values.shape, bool)
    if low is not None:
        if low > largest:
            return np.zeros(values.shape, bool)
        low = max(low, smallest)
        part &= values >= (low if floating else math.ceil(low))
    if high is not None:
        if high < smallest:
            return np.zeros(values.shape, bool)
        high = min(high, largest)
        part &= values <= (high if floating else math.floor(high))
    return part


def changed_mask(view: RunView, epoch: int, *, kind: str, **between: int) -> np.ndarray:
    """Rows (of ``epoch``) right at ``to`` but not at ``from`` (fixed), or the reverse."""
    first, second = (view.epoch(between["from"]), view.epoch(between["to"]))
    before = np.asarray(view.aligned("correct", first, epoch), dtype=np.float64)
    after = np.asarray(view.aligned("correct", second, epoch), dtype=np.float64)
    if kind == "fixed":
        return (after == 1) & (before == 0)
    return (after == 0) & (before == 1)
