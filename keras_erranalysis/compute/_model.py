"""Loading a saved model, its inputs, and the distribution strategy for a cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keras_erranalysis._errors import AnalyzeError


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where this process sits in a ``TF_CONFIG`` cluster.

    Attributes:
        num_workers: Processes in the cluster (``chief`` and ``worker`` tasks); 1 when
            there is no ``TF_CONFIG``.
        task_type: ``"chief"``, ``"worker"`` (or None without a cluster).
        task_index: Index of this task within its type.
        has_chief: Whether the cluster names a separate ``chief`` task.
    """

    num_workers: int = 1
    task_type: str | None = None
    task_index: int = 0
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """The chief writes: task ``chief`` or, when there is none, worker 0."""
        if self.task_type in (None, "chief"):
            return True
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief


def cluster_from_tf_config(tf_config: str | Mapping[str, Any] | None = None) -> Cluster:
    """Reads this process's place in the cluster from ``TF_CONFIG``.

    Args:
        tf_config: The JSON text or dict; defaults to the ``TF_CONFIG`` environment
            variable. Empty or missing means a single process.

    Returns:
        A :class:`Cluster`.

    Raises:
        AnalyzeError: For ``TF_CONFIG`` that is not JSON or misses its task.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG", "")
    if isinstance(tf_config, str):
        if not tf_config.strip():
            return Cluster()
        try:
            tf_config = json.loads(tf_config)
        except json.JSONDecodeError as error:
            raise AnalyzeError(f"TF_CONFIG is not valid JSON ({error}).") from None
    cluster = dict(tf_config.get("cluster") or {})
    if not cluster:
        return Cluster()
    task = dict(tf_config.get("task") or {})
    task_type, task_index = task.get("type"), task.get("index", 0)
    roles = {role: len(addresses) for role, addresses in cluster.items()}
    if task_type not in roles or not 0 <= int(task_index) < roles[task_type]:
        raise AnalyzeError(
            f"TF_CONFIG task {task!r} is not in its cluster {sorted(roles)}: set "
            '"task": {"type": "worker", "index": i} with i below the number of workers.'
        )
    num_workers = roles.get("chief", 0) + roles.get("worker", 0)
    return Cluster(
        num_workers=num_workers,
        task_type=str(task_type),
        task_index=int(task_index),
        has_chief="chief" in roles,
    )


def make_strategy(cluster: Cluster | None = None) -> Any:
    """A ``MultiWorkerMirroredStrategy`` for a cluster of several workers, else None.

    Create it at the start of the program, before other TensorFlow work: its collective
    ops must be configured first.
    """
    cluster = cluster or cluster_from_tf_config()
    if cluster.num_workers <= 1:
        return None
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def load_model(path: str | os.PathLike, *, safe_mode: bool = True, strategy: Any = None) -> Any:
    """Loads a saved Keras model (under ``strategy``'s scope when given).

    Args:
        path: A ``.keras`` file (or anything ``keras.models.load_model`` reads).
        safe_mode: Refuse to deserialise Python lambdas (Keras' default, keep it on for
            files you did not write).
        strategy: A ``tf.distribute`` strategy to place the weights with.

    Raises:
        AnalyzeError: When the file is missing or Keras cannot load it.
    """
    import keras

    path = Path(path)
    if not path.exists():
        raise AnalyzeError(f"Model file {str(path)!r} does not exist.")
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    try:
        with scope, warnings.catch_warnings():
            # The optimizer's state is never used by an analysis.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return keras.models.load_model(path, safe_mode=safe_mode)
    except (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile) as error:
        detail = " ".join(str(error).split())[:300]
        raise AnalyzeError(
            f"Cannot load the model {str(path)!r} ({type(error).__name__}: {detail}). Pass "
            "a model saved with model.save('model.keras'); custom layers must be importable "
            "and registered (keras.saving.register_keras_serializable)."
        ) from error


@dataclasses.dataclass
class _InputSpec:
    name: str
    shape: tuple[int | None, ...]  # without the batch axis; () when unknown rank
    dtype: str
    named: bool  # a name the user chose (not an automatic keras_tensor_N)


def _model_inputs(model: Any) -> list[_InputSpec]:
    struct = getattr(model, "_inputs_struct", None)
    tensors = list(getattr(model, "inputs", None) or [])
    keys = list(struct) if isinstance(struct, Mapping) else None
    specs = []
    for i, tensor in enumerate(tensors):
        name = keys[i] if keys else str(getattr(tensor, "name", f"input_{i}"))
        auto = name.startswith("keras_tensor") or name.startswith("input_layer")
        shape = tuple(getattr(tensor, "shape", (None,)))[1:]
        specs.append(_InputSpec(name, shape, str(getattr(tensor, "dtype", "float32")), not auto))
    return specs
