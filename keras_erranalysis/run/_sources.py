"""Readers of analyze's inputs (.npz, .npy, .csv, .parquet, TFRecord) in chunks of rows."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._errors import AnalyzeError

DEFAULT_CHUNK_SIZE = 50_000  # rows read (and held) at a time
FORMATS = ("tfrecord", "csv", "parquet", "npz")


# Label column names tried, in order, when none is given.
LABEL_CANDIDATES = ("label", "labels", "y", "target")


_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec", ".record")


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
