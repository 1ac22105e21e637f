"""keras_erranalysis: which examples a Keras model gets wrong, why, and how that changes.

The public API is small and flat::

    from keras_erranalysis import ErrorAnalysis, compute_losses, load_run

Names are imported lazily so that ``import keras_erranalysis`` stays fast; TensorFlow is
loaded on first use of something that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "ErrorAnalysis": "keras_erranalysis.callback",
    "compute_losses": "keras_erranalysis.losses",
    "LossReport": "keras_erranalysis.losses",
    "load_run": "keras_erranalysis.run",
    "Run": "keras_erranalysis.run",
    "extract_attention": "keras_erranalysis.attention",
    "compare_features": "keras_erranalysis.features",
}

__all__ = [
    "ErrorAnalysis",
    "LossReport",
    "Run",
    "compare_features",
    "compute_losses",
    "extract_attention",
    "load_run",
]

if TYPE_CHECKING:  # pragma: no cover
    from keras_erranalysis.attention import extract_attention
    from keras_erranalysis.callback import ErrorAnalysis
    from keras_erranalysis.features import compare_features
    from keras_erranalysis.losses import LossReport, compute_losses
    from keras_erranalysis.run import Run, load_run


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC.get(name)
    if module_name is None:
        raise AttributeError(f"module 'keras_erranalysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
