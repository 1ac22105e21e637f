"""Analyse a saved Keras model over data files, streamed, on one process or several workers.

:func:`analyze` loads a saved model (``.keras``), reads a dataset from TFRecord files, a
CSV or Parquet file or a ``.npz`` archive in chunks, runs the compiled loss pass of
:func:`~keras_erranalysis.compute_losses` on each chunk and writes the results as one
epoch of the run format (:func:`~keras_erranalysis.load_run` reads it). Memory stays flat
as the data grows: each chunk's results go to disk at once and are merged file to file.

Under ``tf.distribute.MultiWorkerMirroredStrategy`` (a cluster described by ``TF_CONFIG``)
every worker reads the same chunks, tf.data gives each worker its share of every batch
(``AutoShardPolicy.DATA``), example ids travel with the batches and the per-example
results are gathered back to every worker in id order; only the chief writes the run
folder, the other workers write nothing. The results equal a single-process run's.

Keras 3 ``model.fit`` does not work under that strategy (keras-team/keras issue 20585);
this pass does not use ``fit``: train however you train, then analyse with this.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from keras_erranalysis import ranking
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.losses import EXAMPLE_COLUMNS, TOKEN_COLUMNS, LossReport

FORMATS = ("tfrecord", "csv", "parquet", "npz")
DEFAULT_CHUNK_SIZE = 50_000
# Label column names tried, in order, when none is given.
LABEL_CANDIDATES = ("label", "labels", "y", "target")
_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec", ".record")
_STAGING_PREFIX = ".analyze-staging-"


class AnalyzeError(ValueError):
    """The model and the data do not fit together, or the data cannot be read."""


# --------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Reading data in chunks
# --------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """Guesses the data format from a path: tfrecord, csv, parquet or npz."""
    text = os.fspath(path)
    lowered = text.lower().removesuffix(".gz")
    if lowered.endswith(".npz"):
        return "npz"
    if lowered.endswith((".csv", ".tsv")):
        return "csv"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith(_TFRECORD_SUFFIXES) or os.path.isdir(text) or glob.has_magic(text):
        return "tfrecord"
    raise AnalyzeError(
        f"Cannot tell the format of {text!r} from its name: pass format= one of {FORMATS} "
        "(--format on the command line)."
    )


class _Source:
    """A dataset file read in chunks of rows: ``columns`` and ``chunks(names, size)``."""

    columns: list[str]
    num_rows: int | None = None

    def chunks(
        self, names: Sequence[str], chunk_size: int, shapes: Mapping[str, Any]
    ) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError


class _NpzSource(_Source):
    """A ``.npz`` archive; each member is streamed from its ``.npy`` header on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as error:
            raise AnalyzeError(f"Cannot read {str(path)!r} as a .npz archive ({error}).") from None
        with archive:
            self._members = {
                name[: -len(".npy")]: name for name in archive.namelist() if name.endswith(".npy")
            }
            self._headers = {}
            for key, member in self._members.items():
                with archive.open(member) as handle:
                    self._headers[key] = _npy_header(handle, f"{path}:{member}")
        self.columns = list(self._members)
        lengths = {h[0][0] for h in self._headers.values() if h[0]}
        self.num_rows = lengths.pop() if len(lengths) == 1 else None

    def chunks(self, names, chunk_size, shapes):
        del shapes
        lengths = {
            name: self._headers[name][0][0] if self._headers[name][0] else 0 for name in names
        }
        if len(set(lengths.values())) > 1:
            raise AnalyzeError(
                f"Arrays {lengths} in {str(self.path)!r} differ in length: features and "
                "labels need one row per example."
            )
        n = next(iter(lengths.values()))
        with zipfile.ZipFile(self.path) as archive, contextlib.ExitStack() as stack:
            readers = {}
            for name in names:
                shape, fortran, dtype = self._headers[name]
                handle = stack.enter_context(archive.open(self._members[name]))
                _npy_header(handle, name)
                if fortran and len(shape) > 1:
                    # Fortran order cannot be read row by row: the one array not streamed.
                    whole = np.lib.format.read_array(handle, allow_pickle=False)
                    readers[name] = _ArrayRows(np.ascontiguousarray(whole))
                else:
                    readers[name] = _NpyRows(handle, shape, dtype)
            for start in range(0, n, chunk_size):
                rows = min(chunk_size, n - start)
                yield {name: reader.read(rows) for name, reader in readers.items()}


def _npy_header(handle: Any, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(handle)
        else:
            shape, fortran, dtype = fmt._read_array_header(handle, version)
    except ValueError as error:
        raise AnalyzeError(f"{what} is not a valid .npy array ({error}).") from None
    if dtype.hasobject:
        raise AnalyzeError(
            f"{what} holds Python objects, which would need pickle to load (never allowed "
            "here): save numbers or fixed-width strings (np.str_) instead."
        )
    return tuple(shape), bool(fortran), dtype


class _NpyRows:
    def __init__(self, handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.handle = handle
        self.tail = shape[1:]
        self.dtype = dtype
        self.row_bytes = dtype.itemsize * math.prod(self.tail)

    def read(self, rows: int) -> np.ndarray:
        data = self.handle.read(rows * self.row_bytes)
        if len(data) != rows * self.row_bytes:
            raise AnalyzeError("A .npz member ended early: the file is truncated.")
        return np.frombuffer(data, dtype=self.dtype).reshape((rows, *self.tail))


class _ArrayRows:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.at = 0

    def read(self, rows: int) -> np.ndarray:
        part = self.array[self.at : self.at + rows]
        self.at += rows
        return part


class _CsvSource(_Source):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        try:
            header = pd.read_csv(path, sep=self.sep, nrows=0)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise AnalyzeError(f"Cannot read {str(path)!r} as CSV ({error}).") from None
        self.columns = [str(c) for c in header.columns]

    def chunks(self, names, chunk_size, shapes):
        del shapes
        reader = pd.read_csv(self.path, sep=self.sep, usecols=list(names), chunksize=chunk_size)
        with reader:
            for frame in reader:
                yield {name: _column_values(frame[name], name) for name in names}


class _ParquetSource(_Source):
    def __init__(self, path: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "Reading Parquet needs pyarrow: pip install 'keras_erranalysis[parquet]'."
            ) from None
        self.path = path
        try:
            # pre_buffer would cache every row group read until the end: memory = file size
            self.file = pq.ParquetFile(path, pre_buffer=False)
        except (OSError, ValueError) as error:
            raise AnalyzeError(f"Cannot read {str(path)!r} as Parquet ({error}).") from None
        self.columns = list(self.file.schema_arrow.names)
        self.num_rows = int(self.file.metadata.num_rows)

    def chunks(self, names, chunk_size, shapes):
        del shapes
        for batch in self.file.iter_batches(batch_size=chunk_size, columns=list(names)):
            yield {name: _arrow_values(batch.column(name), name) for name in names}


def _column_values(series: pd.Series, name: str) -> np.ndarray:
    if series.isna().any():
        raise AnalyzeError(
            f"Column {name!r} has missing values (row {int(np.flatnonzero(series.isna())[0])} "
            "of its chunk): fill or drop them first."
        )
    values = series.to_numpy()
    if values.dtype.kind == "O" or str(series.dtype) in ("string", "str"):
        return values.astype(str)
    return values


def _arrow_values(array: Any, name: str) -> np.ndarray:
    import pyarrow as pa

    if array.null_count:
        raise AnalyzeError(f"Column {name!r} has missing values: fill or drop them first.")
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        flat = _arrow_values(array.flatten(), name)
        offsets = array.offsets.to_numpy()
        lengths = np.diff(offsets)
        return _pad_ragged(flat, offsets[:-1] - offsets[0], lengths)
    if pa.types.is_fixed_size_list(array.type):
        flat = _arrow_values(array.flatten(), name)
        return flat.reshape(len(array), array.type.list_size, *flat.shape[1:])
    values = array.to_numpy(zero_copy_only=False)
    return values.astype(str) if values.dtype.kind == "O" else values


def _pad_ragged(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of different lengths as one array, padded at the end with 0 (or "")."""
    width = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(lengths), width, *flat.shape[1:]), dtype=flat.dtype)
    position = np.arange(width)
    keep = position[None, :] < lengths[:, None]
    out[keep] = flat[(starts[:, None] + position[None, :])[keep]]
    return out


class _TFRecordSource(_Source):
    """``tf.train.Example`` records in one or more files (a path, folder or glob)."""

    def __init__(self, path: str, feature_spec: Mapping[str, Any] | None) -> None:
        import tensorflow as tf

        self.files = _tfrecord_files(path)
        self.compression = "GZIP" if all(f.endswith(".gz") for f in self.files) else ""
        self.spec_given = _feature_spec(feature_spec) if feature_spec else {}
        first = None
        for raw in tf.data.TFRecordDataset(self.files[:1], self.compression).take(1):
            first = raw.numpy()
        if first is None:
            raise AnalyzeError(f"{self.files[0]!r} holds no records.")
        try:
            example = tf.train.Example.FromString(first)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError
            raise AnalyzeError(
                f"{self.files[0]!r} does not hold tf.train.Example records ({error})."
            ) from None
        self.first: dict[str, tuple[Any, int]] = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            dtype = {"float_list": tf.float32, "int64_list": tf.int64}.get(kind, tf.string)
            self.first[name] = (dtype, len(getattr(feature, kind).value) if kind else 0)
        self.columns = sorted(set(self.first) | set(self.spec_given))

    def parse_spec(self, names: Sequence[str], shapes: Mapping[str, Any]) -> dict[str, Any]:
        import tensorflow as tf

        spec = {}
        for name in names:
            if name in self.spec_given:
                spec[name] = self.spec_given[name]
                continue
            dtype, length = self.first[name]
            shape = shapes.get(name)
            if shape is not None and all(d is not None for d in shape):
                spec[name] = tf.io.FixedLenFeature(shape, dtype)
            elif length == 1 and (shape is None or len(shape) == 0):
                spec[name] = tf.io.FixedLenFeature([], dtype)
            else:
                spec[name] = tf.io.VarLenFeature(dtype)
        return spec

    def chunks(self, names, chunk_size, shapes):
        import tensorflow as tf

        spec = self.parse_spec(names, shapes)
        records = tf.data.TFRecordDataset(self.files, self.compression).batch(chunk_size)
        for serialized in records:
            try:
                parsed = tf.io.parse_example(serialized, spec)
            except tf.errors.InvalidArgumentError as error:
                message = " ".join(str(error.message).split())[:300]
                raise AnalyzeError(
                    f"Cannot parse the TFRecord examples with {_describe_spec(spec)} "
                    f"({message}). Pass feature_spec= (--feature-spec) to say each "
                    "feature's dtype and shape."
                ) from None
            chunk = {}
            for name in names:
                value = parsed[name]
                if isinstance(value, tf.sparse.SparseTensor):
                    value = tf.sparse.to_dense(value)
                array = value.numpy()
                chunk[name] = array.astype(str) if array.dtype.kind == "O" else array
            yield chunk


def _tfrecord_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.lower().removesuffix(".gz").endswith(_TFRECORD_SUFFIXES)
        )
    elif glob.has_magic(path):
        files = sorted(glob.glob(path))
    else:
        files = [path] if os.path.exists(path) else []
    if not files:
        raise AnalyzeError(f"No TFRecord files at {path!r}.")
    return files


def _feature_spec(given: Mapping[str, Any] | str) -> dict[str, Any]:
    """``{name: tf.io.*Feature | [dtype, shape or None]}`` (JSON text too) -> parse spec."""
    import tensorflow as tf

    if isinstance(given, str):
        try:
            given = json.loads(given)
        except json.JSONDecodeError as error:
            raise AnalyzeError(f"The feature spec is not valid JSON ({error}).") from None
    spec = {}
    for name, entry in dict(given).items():
        if isinstance(entry, (tf.io.FixedLenFeature, tf.io.VarLenFeature)):
            spec[name] = entry
            continue
        try:
            dtype_name, shape = entry
            dtype = tf.as_dtype(dtype_name)
        except (TypeError, ValueError):
            raise AnalyzeError(
                f"Feature spec entry {name!r}: {entry!r} must be [dtype, shape] (e.g. "
                '["float32", [4]], ["int64", []]) or [dtype, null] for variable length.'
            ) from None
        spec[name] = (
            tf.io.VarLenFeature(dtype)
            if shape is None
            else tf.io.FixedLenFeature(list(shape), dtype)
        )
    return spec


def _describe_spec(spec: Mapping[str, Any]) -> str:
    parts = []
    for name, feature in spec.items():
        shape = getattr(feature, "shape", None)
        parts.append(f"{name}: {feature.dtype.name}{list(shape) if shape is not None else '[var]'}")
    return "{" + ", ".join(parts) + "}"


def open_source(
    data: str | os.PathLike,
    *,
    format: str | None = None,  # noqa: A002 - the user-facing name
    feature_spec: Mapping[str, Any] | str | None = None,
) -> _Source:
    """Opens a dataset file for chunked reading (the format is guessed from the name)."""
    fmt = format or detect_format(data)
    if fmt not in FORMATS:
        raise AnalyzeError(f"format must be one of {FORMATS}, got {fmt!r}.")
    if fmt == "tfrecord":
        return _TFRecordSource(os.fspath(data), feature_spec)
    path = Path(data)
    if not path.exists():
        raise AnalyzeError(f"Data file {str(path)!r} does not exist.")
    if fmt == "npz":
        return _NpzSource(path)
    if fmt == "csv":
        return _CsvSource(path)
    return _ParquetSource(path)


# --------------------------------------------------------------------------------------
# Columns -> model inputs
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """Which columns feed which model input, and which column holds the labels."""

    inputs: list[tuple[_InputSpec | None, list[str]]]
    label: str
    as_dict: bool

    @property
    def columns(self) -> list[str]:
        names = [c for _, cols in self.inputs for c in cols]
        return [*dict.fromkeys(names), self.label]

    def shapes(self) -> dict[str, Any]:
        """Per-example shape hints for single-column inputs (TFRecord parsing)."""
        hints: dict[str, Any] = {}
        for spec, cols in self.inputs:
            if spec is not None and len(cols) == 1:
                hints[cols[0]] = spec.shape
        return hints


def plan_columns(
    model: Any,
    columns: Sequence[str],
    *,
    label_column: str | None = None,
    features: Sequence[str] | None = None,
) -> _Plan:
    """Decides which data columns feed which model inputs, with errors naming the fix."""
    available = list(columns)
    if label_column is None:
        label_column = next((c for c in LABEL_CANDIDATES if c in available), None)
        if label_column is None:
            raise AnalyzeError(
                f"No label column found (tried {list(LABEL_CANDIDATES)}) among the data's "
                f"columns {available[:20]}: name it with label_column= (--label-column)."
            )
    elif label_column not in available:
        raise AnalyzeError(
            f"Label column {label_column!r} is not in the data; its columns are "
            f"{available[:20]}. Pass --label-column with one of them."
        )
    if features is not None:
        missing = [f for f in features if f not in available]
        if missing:
            raise AnalyzeError(
                f"Feature column(s) {missing} are not in the data; its columns are "
                f"{available[:20]}. Fix --features."
            )
    specs = _model_inputs(model)
    pool = list(features) if features is not None else [c for c in available if c != label_column]
    if len(specs) > 1:
        names = [s.name for s in specs]
        missing = [n for n in names if n not in pool]
        if missing:
            raise AnalyzeError(
                f"Model/data mismatch: the model has inputs {names} but the data has no "
                f"column(s) {missing} (columns {pool[:20]}). Name the data's columns after "
                "the model's inputs."
            )
        return _Plan([(s, [s.name]) for s in specs], label_column, as_dict=True)
    spec = specs[0] if specs else None
    if spec is not None and spec.name in pool and features is None:
        return _Plan([(spec, [spec.name])], label_column, as_dict=False)
    if features is None and "x" in pool:
        pool = ["x"]
    if not pool:
        raise AnalyzeError(
            f"The data has no feature columns besides the label {label_column!r}: pass --features."
        )
    return _Plan([(spec, pool)], label_column, as_dict=False)


def _model_input(spec: _InputSpec | None, cols: list[str], chunk: Mapping[str, np.ndarray]):
    if len(cols) == 1:
        value = np.asarray(chunk[cols[0]])
    else:
        parts = [np.asarray(chunk[c]) for c in cols]
        if any(p.dtype.kind in "USO" for p in parts):
            raise AnalyzeError(
                f"Columns {cols} mix text with numbers: a text column must be its own model "
                "input. Pick the columns with --features."
            )
        value = np.column_stack([p.reshape(len(p), -1) for p in parts])
    if spec is None:
        return value
    where = f"columns {cols}" if len(cols) > 1 else f"column {cols[0]!r}"
    data_shape = value.shape[1:]
    wanted = spec.shape
    fits = len(data_shape) == len(wanted) and all(
        w is None or w == d for w, d in zip(wanted, data_shape)
    )
    if not fits and math.prod(data_shape) == math.prod(wanted) and None not in wanted:
        value = value.reshape((len(value), *wanted))  # flat records of an image, say
        fits = True
    if not fits:
        raise AnalyzeError(
            f"Model/data mismatch: model input {spec.name!r} expects examples of shape "
            f"{tuple(wanted)} but {where} hold examples of shape {tuple(data_shape)}. "
            "Pick the feature columns with --features (in the model's order)."
        )
    wanted_kind = np.dtype(spec.dtype).kind if spec.dtype != "string" else "U"
    if wanted_kind == "U":
        if value.dtype.kind not in "US":
            raise AnalyzeError(
                f"Model/data mismatch: model input {spec.name!r} takes text but {where} "
                f"hold {value.dtype}."
            )
        return value
    if value.dtype.kind in "USO":
        raise AnalyzeError(
            f"Model/data mismatch: model input {spec.name!r} takes {spec.dtype} numbers but "
            f"{where} hold text."
        )
    return value.astype(spec.dtype, copy=False)


def _kept_inputs(x: Any) -> dict[str, np.ndarray]:
    """The inputs the core keeps for decoding (token ids, text), taken from the host chunk.

    Same rule and names as ``_pass.kept_inputs`` (integer or text, at most 2-D), but read
    from the chunk already in id order rather than gathered from the workers batch by
    batch, which costs a collective per batch and cannot carry text.
    """
    named = dict(x) if isinstance(x, Mapping) else {"input": x}
    return {
        name: value
        for name, value in named.items()
        if value.ndim <= 2 and value.dtype.kind in "iuUS"
    }


def _attention_columns(
    model: Any, x: Any, y: Any, batch_size: int, options: Any, jit_compile: Any, workers: int
) -> dict[str, np.ndarray]:
    """Per-example attention diagnostics of one chunk, in data order."""
    import tensorflow as tf

    from keras_erranalysis.attention import attention_diagnostics

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).with_options(options)
    result = attention_diagnostics(
        model, dataset, jit_compile=False if workers > 1 else jit_compile, verbose=0
    )
    return dict(result.diagnostics)


def _labels(chunk: Mapping[str, np.ndarray], column: str) -> np.ndarray:
    values = np.asarray(chunk[column])
    if values.dtype.kind in "USO":
        raise AnalyzeError(
            f"Label column {column!r} holds text: labels must be class ids (numbers). Map "
            "the class names to 0..C-1 first."
        )
    return values


# --------------------------------------------------------------------------------------
# Results in chunks -> one epoch
# --------------------------------------------------------------------------------------

_ARRAY_FIELDS = (*EXAMPLE_COLUMNS, "label", "prediction", *TOKEN_COLUMNS)


class ChunkedResults:
    """Per-chunk results written to disk at once, merged file to file into whole columns.

    Memory holds one chunk and the hardest-example candidates (``top_k`` rows per view
    per chunk), never every example. The hardest-example table equals the one a single
    :func:`~keras_erranalysis.ranking.log_views` over all examples gives: each view's
    top ``k`` is among the union of the chunks' top ``k``, and ties keep id order.

    Args:
        folder: A folder for the chunk files (created; deleted by :meth:`close`).
        top_k: Rows per view in the hardest-example table.
        decoding: ``vocab``, ``input_vocab``, ``label_names`` for the decoded table.
    """

    def __init__(self, folder: Path, *, top_k: int, decoding: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.top_k = top_k
        self.decoding = dict(decoding)
        self.meta: dict[str, Any] | None = None
        self.stems: dict[tuple[str, str], str] = {}
        self.parts: dict[tuple[str, str], list[tuple[tuple[int, ...], np.dtype]]] = {}
        self.candidates: list[pd.DataFrame] = []
        self.count = 0
        self.chunks = 0

    def add(self, report: LossReport) -> None:
        """Writes one chunk's results and keeps its hardest-example candidates."""
        meta = {
            "task": report.task,
            "num_classes": report.num_classes,
            "reduction": report.reduction,
        }
        if self.meta is None:
            self.meta = meta
        elif meta != self.meta:
            raise AnalyzeError(f"Chunks disagree on the task: {self.meta} vs {meta}.")
        arrays = _report_arrays(report)
        if self.chunks and set(arrays) != set(self.parts):
            raise AnalyzeError("Chunks disagree on the columns they hold.")
        for key, value in arrays.items():
            stem = self.stems.setdefault(key, f"col{len(self.stems):03d}")
            value = np.ascontiguousarray(value)
            np.save(self.folder / f"{stem}-{self.chunks:06d}.npy", value, allow_pickle=False)
            self.parts.setdefault(key, []).append((value.shape, value.dtype))
        views = ranking.log_views(report.scalars(), k=self.top_k)
        rows = np.isin(report.example_id, views["example_id"].to_numpy())
        self.candidates.append(report.select(rows).to_frame(**self.decoding))
        self.count += len(report)
        self.chunks += 1

    def hardest(self) -> pd.DataFrame:
        """The hardest-example table over every chunk."""
        frame = pd.concat(self.candidates, ignore_index=True)
        return ranking.log_views(frame, k=self.top_k)

    def merge(self) -> LossReport:
        """Merges the chunk files into one ``.npy`` per column; returns them memory-mapped."""
        if self.meta is None:
            raise AnalyzeError("The data holds no examples.")
        merged: dict[tuple[str, str], np.ndarray] = {}
        for key, parts in self.parts.items():
            tail = tuple(max(shape[d] for shape, _ in parts) for d in range(1, len(parts[0][0])))
            dtype = np.result_type(*[dtype for _, dtype in parts])
            path = self.folder / f"{self.stems[key]}.npy"
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (self.count, *tail),
            }
            with open(path, "wb") as out:
                np.lib.format.write_array_header_2_0(out, header)
                for i in range(self.chunks):
                    part_path = self.folder / f"{self.stems[key]}-{i:06d}.npy"
                    part = np.load(part_path, allow_pickle=False)
                    out.write(np.ascontiguousarray(_pad_to(part, tail).astype(dtype)).tobytes())
                    part_path.unlink()
            merged[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        fields = {name: merged[("array", name)] for kind, name in merged if kind == "array"}
        return LossReport(
            **self.meta,
            **fields,
            inputs={name: value for (kind, name), value in merged.items() if kind == "input"},
            extra={name: value for (kind, name), value in merged.items() if kind == "extra"},
        )

    def close(self) -> None:
        """Deletes the chunk folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _report_arrays(report: LossReport) -> dict[tuple[str, str], np.ndarray]:
    arrays = {}
    for name in _ARRAY_FIELDS:
        value = getattr(report, name)
        if value is not None:
            arrays[("array", name)] = value
    for name, value in report.inputs.items():
        arrays[("input", name)] = value
    for name, value in report.extra.items():
        arrays[("extra", name)] = np.asarray(value)
    return arrays


def _pad_to(part: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
    if part.shape[1:] == tail:
        return part
    pad = [(0, 0)] + [(0, t - s) for s, t in zip(part.shape[1:], tail)]
    fill: Any = False if part.dtype == bool else ("" if part.dtype.kind in "US" else 0)
    return np.pad(part, pad, constant_values=fill)


# --------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class AnalyzeResult:
    """What :func:`analyze` did.

    Attributes:
        log_dir: The run folder.
        epoch: The run epoch the results were written as.
        n_examples: Examples analysed.
        epoch_dir: The written epoch folder (None on a non-chief worker, which writes
            nothing).
        num_workers: Processes that took part.
        is_chief: Whether this process wrote the results.
    """

    log_dir: Path
    epoch: int
    n_examples: int
    epoch_dir: Path | None
    num_workers: int
    is_chief: bool


def analyze(
    model: Any,
    data: str | os.PathLike,
    log_dir: str | os.PathLike,
    *,
    label_column: str | None = None,
    features: Sequence[str] | None = None,
    format: str | None = None,  # noqa: A002 - the user-facing name
    feature_spec: Mapping[str, Any] | str | None = None,
    batch_size: int = 256,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    epoch: int | None = None,
    loss: Any = None,
    output: str | int | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    ignore_class: int | None = None,
    from_logits: bool | None = None,
    top_k: int = 20,
    vocab: Any = None,
    input_vocab: Any = None,
    label_names: Any = None,
    attention: bool = False,
    jit_compile: bool | Literal["auto"] = "auto",
    safe_mode: bool = True,
    strategy: Any = None,
    cluster: Cluster | None = None,
    verbose: int = 1,
) -> AnalyzeResult:
    """Analyses a saved model over a data file and writes one epoch of the run format.

    Args:
        model: A ``.keras`` path (loaded here, under ``strategy``) or a Keras model.
        data: TFRecord file / folder / glob, a ``.csv``/``.tsv``, ``.parquet`` or ``.npz``.
        log_dir: Run folder to write (created; an existing run gets one more epoch).
        label_column: Column (npz key, TFRecord feature) holding the labels; default the
            first of ``label``, ``labels``, ``y``, ``target`` present.
        features: Columns feeding the model. Default: columns named like the model's
            inputs, else (one input) ``x`` if present, else every column but the label,
            stacked in file order.
        format: ``"tfrecord"``, ``"csv"``, ``"parquet"`` or ``"npz"`` (default: from the name).
        feature_spec: TFRecord parsing: ``{name: tf.io.FixedLenFeature | VarLenFeature |
            [dtype, shape or None]}`` or that as JSON. Default: inferred from the first
            record and the model's input shapes; variable-length features are padded
            with 0 per chunk.
        batch_size: Global batch size of the pass.
        chunk_size: Examples read, analysed and written at a time (bounds the memory).
        epoch: Run epoch number to write as (default: one after the last in ``log_dir``).
        loss: Loss (default: the saved model's compiled loss, unreduced).
        output: Output to analyse in a multi-output model.
        reduction: ``"mean"`` or ``"sum"`` over a sequence's tokens, for ranking.
        ignore_class: Label id that does not count.
        from_logits: Whether the output is logits (default: the loss's own setting).
        top_k: Rows per view in the hardest-example table.
        vocab: Decodes target tokens (stored in the run).
        input_vocab: Decodes input tokens (stored in the run).
        label_names: Class names of a classifier (stored in the run).
        attention: Also compute per-example attention diagnostics of every attention
            layer (:func:`~keras_erranalysis.attention.attention_diagnostics`), stored
            as extra columns ``attn_entropy/<layer>``, ... .
        jit_compile: XLA for the pass (``"auto"`` = off under several workers, where the
            cross-worker gather has no XLA kernel).
        safe_mode: Passed to ``keras.models.load_model``.
        strategy: A ``tf.distribute`` strategy; default: ``MultiWorkerMirroredStrategy``
            when ``TF_CONFIG`` describes several workers, else none.
        cluster: This process's place in the cluster (default: from ``TF_CONFIG``).
        verbose: 0 silent, 1 a progress bar (on the chief).

    Returns:
        An :class:`AnalyzeResult`.

    Raises:
        AnalyzeError: For a missing column, a model/data mismatch, or unreadable data.

    Example:
        >>> analyze("model.keras", "val.parquet", "runs/val", label_column="y")  # doctest: +SKIP
        >>> load_run("runs/val").hardest(k=5)  # doctest: +SKIP
    """
    import tensorflow as tf

    from keras_erranalysis.losses import compute_losses
    from keras_erranalysis.run import RunWriter

    if batch_size < 1 or chunk_size < 1:
        raise AnalyzeError(
            f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}."
        )
    if epoch is not None and epoch < 1:
        raise AnalyzeError(f"epoch must be a positive integer, got {epoch}.")
    cluster = cluster or cluster_from_tf_config()
    if strategy is None and cluster.num_workers > 1:
        strategy = make_strategy(cluster)
    num_workers = cluster.num_workers
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, safe_mode=safe_mode, strategy=strategy)
    source = open_source(data, format=format, feature_spec=feature_spec)
    plan = plan_columns(model, source.columns, label_column=label_column, features=features)
    decoding = {
        "vocab": Vocabulary.from_any(vocab),
        "input_vocab": Vocabulary.from_any(input_vocab),
        "label_names": Vocabulary.from_any(label_names),
    }
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    writer = None
    results = None
    if cluster.is_chief:
        writer = RunWriter(log_dir, decoding=decoding)
        writer.acquire_lock()
    try:
        run_epoch = epoch if epoch is not None else (writer.last_epoch() + 1 if writer else 1)
        if writer is not None:
            if (writer.log_dir / f"epoch_{run_epoch:04d}").exists():
                raise AnalyzeError(
                    f"Epoch {run_epoch} already exists in {str(writer.log_dir)!r}: pass "
                    "another epoch (--epoch-label) or another run folder."
                )
            results = ChunkedResults(
                Path(tempfile.mkdtemp(dir=writer.log_dir, prefix=_STAGING_PREFIX)),
                top_k=top_k,
                decoding=decoding,
            )
        progress = None
        if verbose and cluster.is_chief:
            import keras

            progress = keras.utils.Progbar(source.num_rows, unit_name="example")
        offset = 0
        for chunk in source.chunks(plan.columns, chunk_size, plan.shapes()):
            n = len(chunk[plan.label])
            if n == 0:
                continue
            xs = [_model_input(spec, cols, chunk) for spec, cols in plan.inputs]
            x = {spec.name: v for (spec, _), v in zip(plan.inputs, xs)} if plan.as_dict else xs[0]
            y = _labels(chunk, plan.label)
            ids = np.arange(offset, offset + n, dtype=np.int64)
            dataset = (
                tf.data.Dataset.from_tensor_slices((x, y, None, ids))
                .batch(batch_size)
                .with_options(options)
            )
            kept = _kept_inputs(x)
            diagnostics = {}
            if attention:
                diagnostics = _attention_columns(
                    model, x, y, batch_size, options, jit_compile, num_workers
                )
            del chunk, xs, x, y
            report = compute_losses(
                model,
                dataset,
                loss=loss,
                output=output,
                reduction=reduction,
                ignore_class=ignore_class,
                from_logits=from_logits,
                keep_inputs=False,
                jit_compile=jit_compile,
                verbose=0,
            )
            report.inputs = kept
            report.extra.update(diagnostics)
            if not np.array_equal(report.example_id, ids):
                raise RuntimeError(
                    f"The pass returned {len(report)} results for {n} examples of ids "
                    f"{offset}..{offset + n - 1}: the workers did not all read the same data."
                )
            if results is not None:
                results.add(report)
            offset += n
            del report, dataset
            if progress is not None:
                progress.update(offset)
        if offset == 0:
            raise AnalyzeError(f"The data {os.fspath(data)!r} holds no examples.")
        epoch_dir = None
        if writer is not None and results is not None:
            merged = results.merge()
            info = {
                "source": "analyze",
                "data": os.fspath(data),
                "format": format or detect_format(data),
                "label_column": plan.label,
                "features": [c for _, cols in plan.inputs for c in cols],
                "num_workers": num_workers,
            }
            epoch_dir = writer.write_epoch(
                run_epoch, merged, tables={"hardest": results.hardest()}, info=info
            )
            del merged
        return AnalyzeResult(
            log_dir=Path(log_dir),
            epoch=run_epoch,
            n_examples=offset,
            epoch_dir=epoch_dir,
            num_workers=num_workers,
            is_chief=cluster.is_chief,
        )
    finally:
        if results is not None:
            results.close()
        if writer is not None:
            writer.release_lock()


# --------------------------------------------------------------------------------------
# Command line (``keras-erranalysis analyze``; also ``python -m keras_erranalysis.analyze``)
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``analyze`` options to an argument parser."""
    parser.add_argument("model", help="saved Keras model (.keras)")
    parser.add_argument("data", help="TFRecord file/folder/glob, .csv/.tsv, .parquet or .npz file")
    parser.add_argument("-o", "--log-dir", required=True, help="run folder to write")
    parser.add_argument("--label-column", help="column/key/feature with the labels")
    parser.add_argument(
        "--features", help="comma-separated feature columns, in the model's input order"
    )
    parser.add_argument("--format", choices=FORMATS, help="data format (default: from the name)")
    parser.add_argument(
        "--feature-spec",
        help='TFRecord features as JSON, e.g. \'{"x": ["float32", [4]], "y": ["int64", []]}\'',
    )
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="examples held at a time"
    )
    parser.add_argument(
        "--epoch-label", type=int, help="run epoch number to write as (default: next one)"
    )
    parser.add_argument("--model-output", help="output to analyse in a multi-output model")
    parser.add_argument("--reduction", choices=("mean", "sum"), default="mean")
    parser.add_argument("--ignore-class", type=int, help="label id that does not count")
    parser.add_argument("--top-k", type=int, default=20, help="rows per hardest-example view")
    parser.add_argument("--label-names", help="comma-separated class names")
    parser.add_argument(
        "--attention", action="store_true", help="also per-example attention diagnostics"
    )
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto", help="XLA")
    parser.add_argument(
        "--unsafe-deserialization",
        action="store_true",
        help="load_model(safe_mode=False): only for model files you trust",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_args(args: argparse.Namespace) -> int:
    """Runs ``analyze`` from parsed arguments and prints where it wrote.

    Raises:
        AnalyzeError: For every user mistake (bad data, model, folder, TF_CONFIG), with
            a one-line message.
    """
    import tensorflow as tf

    from keras_erranalysis.run import RunFormatError, RunLockedError

    def listed(text: str | None) -> list[str] | None:
        return [part.strip() for part in text.split(",") if part.strip()] if text else None

    try:
        result = analyze(
            args.model,
            args.data,
            args.log_dir,
            label_column=args.label_column,
            features=listed(args.features),
            format=args.format,
            feature_spec=args.feature_spec,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            epoch=args.epoch_label,
            output=args.model_output,
            reduction=args.reduction,
            ignore_class=args.ignore_class,
            top_k=args.top_k,
            label_names=listed(args.label_names),
            attention=args.attention,
            jit_compile={"auto": "auto", "on": True, "off": False}[args.jit],
            safe_mode=not args.unsafe_deserialization,
            verbose=0 if args.quiet else 1,
        )
    except (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        ImportError,
        RunFormatError,
        RunLockedError,
        tf.errors.OpError,
    ) as error:
        message = getattr(error, "message", None) or str(error)
        raise AnalyzeError(" ".join(str(message).split()) or type(error).__name__) from None
    if result.is_chief:
        print(
            f"Analysed {result.n_examples} examples on {result.num_workers} worker(s): "
            f"epoch {result.epoch} written to {result.epoch_dir}"
        )
    else:
        print(f"Analysed {result.n_examples} examples; the chief writes the results.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keras_erranalysis.analyze MODEL DATA -o RUN_DIR [options]``.

    Returns:
        0 on success, 1 for a user mistake (one line on stderr), 2 for a bad command line.
    """
    parser = argparse.ArgumentParser(
        prog="keras-erranalysis analyze",
        description="Analyse a saved Keras model over a dataset; write one run epoch.",
    )
    add_arguments(parser)
    try:
        return run_args(parser.parse_args(argv))
    except AnalyzeError as error:
        print(f"keras-erranalysis analyze: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
