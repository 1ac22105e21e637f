"""Checks on the model and the inputs that name the cause of a non-finite loss."""

from __future__ import annotations

from typing import Any

import numpy as np


def weights_are_finite(model: Any) -> bool:
    """Whether every weight of the model is finite (a diverged model has NaN or inf)."""
    return all(np.isfinite(np.asarray(w)).all() for w in model.get_weights())


def finite_input_rows(data: Any) -> np.ndarray | None:
    """``(N,)`` True where every floating input value of an example is finite.

    Args:
        data: ``(x, y)`` / ``(x, y, sample_weight)`` with ``x`` an array, a tuple/list or a
            dict of arrays; anything else (a ``tf.data.Dataset``) gives ``None``, since
            reading it again would cost another pass over the data.
    """
    if not isinstance(data, tuple | list) or not data:
        return None
    x = data[0]
    parts = (
        list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, tuple | list) else [x]
    )
    if not parts or not all(isinstance(p, np.ndarray) for p in parts):
        return None
    n = len(parts[0])
    finite = np.ones(n, bool)
    for part in parts:
        if part.dtype.kind == "f" and len(part) == n:
            finite &= np.isfinite(part.reshape(n, -1)).all(axis=1)
    return finite
