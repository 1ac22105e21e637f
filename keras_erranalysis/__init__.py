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

# public name -> module that defines it (imported on first use)
_PUBLIC = {
    "ErrorAnalysis": "keras_erranalysis.callback",
    "AttentionAnalysis": "keras_erranalysis.options",
    "Decoding": "keras_erranalysis.options",
    "EmbeddingAnalysis": "keras_erranalysis.options",
    "FeatureAnalysis": "keras_erranalysis.options",
    "GenerationAnalysis": "keras_erranalysis.options",
    "PassOptions": "keras_erranalysis.options",
    "analyze": "keras_erranalysis._analyze",
    "check_data": "keras_erranalysis.health",
    "compute_losses": "keras_erranalysis.compute",
    "extract_attention": "keras_erranalysis.compute",
    "InFlightRecorder": "keras_erranalysis.compute",
    "with_example_ids": "keras_erranalysis.compute",
    "LossReport": "keras_erranalysis._loss_report",
    "Vocabulary": "keras_erranalysis.decoding",
    "load_run": "keras_erranalysis.run",
    "Run": "keras_erranalysis.run",
    "compare_features": "keras_erranalysis.analysis",
    "confusion_pairs": "keras_erranalysis.analysis",
    "free_running_metrics": "keras_erranalysis.analysis",
    "teacher_forced_metrics": "keras_erranalysis.analysis",
    "likely_mislabeled": "keras_erranalysis.analysis",
    "MISLABEL_METHODS": "keras_erranalysis.analysis",
    "plot_attention": "keras_erranalysis.present",
    "plot_data_map": "keras_erranalysis.present",
    "write_report": "keras_erranalysis.present",
}

__all__ = [
    "analyze",
    "AttentionAnalysis",
    "check_data",
    "compare_features",
    "compute_losses",
    "confusion_pairs",
    "Decoding",
    "EmbeddingAnalysis",
    "ErrorAnalysis",
    "extract_attention",
    "FeatureAnalysis",
    "free_running_metrics",
    "GenerationAnalysis",
    "InFlightRecorder",
    "likely_mislabeled",
    "load_run",
    "LossReport",
    "MISLABEL_METHODS",
    "PassOptions",
    "plot_attention",
    "plot_data_map",
    "Run",
    "teacher_forced_metrics",
    "Vocabulary",
    "with_example_ids",
    "write_report",
]

if TYPE_CHECKING:  # pragma: no cover
    from keras_erranalysis._analyze import analyze
    from keras_erranalysis._loss_report import LossReport
    from keras_erranalysis.analysis import (
        MISLABEL_METHODS,
        compare_features,
        confusion_pairs,
        free_running_metrics,
        likely_mislabeled,
        teacher_forced_metrics,
    )
    from keras_erranalysis.callback import ErrorAnalysis
    from keras_erranalysis.compute import (
        InFlightRecorder,
        compute_losses,
        extract_attention,
        with_example_ids,
    )
    from keras_erranalysis.decoding import Vocabulary
    from keras_erranalysis.health import check_data
    from keras_erranalysis.options import (
        AttentionAnalysis,
        Decoding,
        EmbeddingAnalysis,
        FeatureAnalysis,
        GenerationAnalysis,
        PassOptions,
    )
    from keras_erranalysis.present import plot_attention, plot_data_map, write_report
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
