"""The on-disk run format: atomic per-epoch writes and :func:`load_run`.

A run folder looks like this (format version 1)::

    log_dir/
      run.json              {"format": "keras_erranalysis.run", "version": 1, ...}
      .lock                 present while a training process writes (pid, host)
      epoch_0001/
        meta.json           written last: epoch, task, columns, file sizes and CRC32s
        example_id.npy      one .npy per per-example column (allow_pickle=False)
        loss.npy ...
        token_loss.npy ...  (N, T) arrays for sequence outputs
        input_000.npy ...   kept model inputs (token ids / text), see meta["inputs"]
        extra_000.npy ...   extra per-example columns, see meta["extra"]
        hardest.csv         hardest examples with decoded text (views stacked)
        hardest.jsonl       the same as JSON lines
        <table>.csv         other per-epoch tables (features, per-class metrics, ...)

Each epoch is written into a hidden temporary folder and renamed into place, so a
reader sees a whole epoch or none of it; a leftover temporary folder is reported as an
incomplete write and never read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis import ranking
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.losses import EXAMPLE_COLUMNS, TOKEN_COLUMNS, LossReport

FORMAT = "keras_erranalysis.run"
VERSION = 1
RUN_FILE = "run.json"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
_TMP_PREFIX = ".tmp-epoch_"
_ARRAY_COLUMNS = (*EXAMPLE_COLUMNS, "label", "prediction", *TOKEN_COLUMNS)


class RunFormatError(ValueError):
    """A run folder or one of its files is missing, corrupt or not ours."""


class RunLockedError(RuntimeError):
    """Another live process is writing to the same run folder."""


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON atomically (NaN written as null)."""
    text = json.dumps(_json_safe(data), indent=1, sort_keys=True, allow_nan=False)
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _json_checksum(data: Mapping[str, Any]) -> int:
    """CRC32 of a JSON object's canonical text, leaving out its own ``checksum`` entry."""
    body = {k: v for k, v in _json_safe(data).items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True, allow_nan=False).encode("utf-8"))


def _verify_checksum(data: Mapping[str, Any], path: Path) -> None:
    # run.json and meta.json say what every other file holds, so a flipped byte in them
    # must not pass as a different number of classes, task or column name.
    if data.get("checksum") != _json_checksum(data):
        raise RunFormatError(f"File {str(path)!r} is corrupt: checksum mismatch (or missing).")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunWriter:
    """Writes epochs of one run folder; used by the callback, usable by hand.

    Args:
        log_dir: The run folder (created if missing).
        decoding: Vocabularies to store so a later process can decode examples:
            ``{"vocab": Vocabulary | None, "input_vocab": ..., "label_names": ...}``.

    Raises:
        OSError: When ``log_dir`` cannot be created or written, naming the folder.
        RunFormatError: When ``log_dir`` holds something that is not a run of ours.
    """

    def __init__(self, log_dir: str | os.PathLike, *, decoding: Mapping[str, Any] | None = None):
        self.log_dir = Path(log_dir)
        self._locked = False
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.log_dir, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise OSError(
                error.errno,
                f"Cannot write to log_dir {str(self.log_dir)!r} ({error.strerror or error}). "
                "Pass a log_dir you can write to, or fix the folder's permissions.",
            ) from error
        run_file = self.log_dir / RUN_FILE
        if run_file.exists():
            self.run_meta = _read_run_json(run_file)
        else:
            foreign = [p.name for p in self.log_dir.iterdir() if not p.name.startswith(".")]
            if foreign:
                raise RunFormatError(
                    f"log_dir {str(self.log_dir)!r} is not empty and holds no {RUN_FILE} "
                    f"(found {foreign[:3]}): it is not a keras_erranalysis run. Pass an empty "
                    "or new folder."
                )
            self.run_meta = {
                "format": FORMAT,
                "version": VERSION,
                "created": time.time(),
                "decoding": {
                    key: (Vocabulary.from_any(value).to_json() if value is not None else None)
                    for key, value in (decoding or {}).items()
                },
            }
            checksum = _json_checksum(self.run_meta)
            write_json_atomic(run_file, {**self.run_meta, "checksum": checksum})

    # -- lock --------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Marks the folder as being written by this process; refuses a live other one."""
        path = self.log_dir / LOCK_FILE
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                same_host = holder.get("host") == info["host"]
                pid = int(holder.get("pid", -1))
                if pid == os.getpid() and same_host:
                    self._locked = True
                    return
                if same_host and pid > 0 and not _pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # stale: its writer is gone
                    continue
                raise RunLockedError(
                    f"Another process (pid {pid} on {holder.get('host')}) is writing to "
                    f"{str(self.log_dir)!r}. Use another log_dir, or stop that process; if it "
                    f"is gone, delete {str(path)!r}."
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
            self._locked = True
            # We hold the lock now, so temporary folders are leftovers of a killed writer.
            for leftover in self.log_dir.glob(f"{_TMP_PREFIX}*"):
                _remove_tree(leftover)
            return
        raise RunLockedError(f"Could not take the lock {str(path)!r}.")

    def release_lock(self) -> None:
        """Removes the lock if this writer holds it."""
        if self._locked:
            with contextlib.suppress(FileNotFoundError):
                (self.log_dir / LOCK_FILE).unlink()
            self._locked = False

    # -- epochs ------------------------------------------------------------------------

    def last_epoch(self) -> int:
        """The highest complete epoch number in the folder (0 when none)."""
        epochs = _complete_epochs(self.log_dir)
        return max(epochs) if epochs else 0

    def write_epoch(
        self,
        epoch: int,
        report: LossReport,
        *,
        tables: Mapping[str, pd.DataFrame] | None = None,
        info: Mapping[str, Any] | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> Path:
        """Writes one epoch atomically and returns its folder.

        Args:
            epoch: The run's epoch number (1-based, unique in the folder).
            report: The epoch's per-example results.
            tables: Named tables written as ``<name>.csv`` (``hardest`` also as JSON lines).
            info: Extra JSON-ready facts stored in ``meta.json`` (e.g. the Keras epoch).
            vectors: Named per-example ``(N, ...)`` arrays (e.g. ``embedding``, ``(N, D)``)
                saved as ``<name>.npy`` and read with ``Run.array(name)``.
            files: Other named files (e.g. heatmap PNGs), name -> bytes, listed in
                ``meta.json`` under ``files`` and read with ``Run.file_path(name)``.

        Raises:
            FileExistsError: When the epoch is already written.
        """
        final = self.log_dir / f"epoch_{epoch:04d}"
        if final.exists():
            raise FileExistsError(
                f"Epoch {epoch} already exists in {str(self.log_dir)!r}; epochs are never "
                "overwritten."
            )
        tmp = Path(tempfile.mkdtemp(dir=self.log_dir, prefix=f"{_TMP_PREFIX}{epoch:04d}-"))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            arrays: dict[str, dict[str, Any]] = {}
            for column in _ARRAY_COLUMNS:
                value = getattr(report, column)
                if value is not None:
                    arrays[column] = _save_array(tmp, column, value)
            inputs = {}
            for i, (name, value) in enumerate(report.inputs.items()):
                inputs[name] = _save_array(tmp, f"input_{i:03d}", value)
            extra = {}
            for i, (name, value) in enumerate(report.extra.items()):
                extra[name] = _save_array(tmp, f"extra_{i:03d}", np.asarray(value))
            written_tables = {}
            for name, table in (tables or {}).items():
                if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
                    raise ValueError(f"Table name {name!r} must be letters, digits, _ or -.")
                written_tables[name] = _save_table(tmp, name, table)
            saved_vectors = {}
            for name, value in (vectors or {}).items():
                if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in _ARRAY_COLUMNS:
                    raise ValueError(f"Vector name {name!r} must be a new lowercase name.")
                if np.shape(value)[0] != len(report):
                    raise ValueError(f"{name!r} has {np.shape(value)[0]} rows, not {len(report)}.")
                saved_vectors[name] = _save_array(tmp, name, np.asarray(value))
            saved_files = {}
            for name, data in (files or {}).items():
                if not re.fullmatch(r"[A-Za-z0-9_\-]+\.[a-z0-9]+", name) or (tmp / name).exists():
                    raise ValueError(f"File name {name!r} must be a new plain name like a_b.png.")
                (tmp / name).write_bytes(data)
                saved_files[name] = {"bytes": len(data), "crc32": zlib.crc32(data)}
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "epoch": epoch,
                "written": time.time(),
                "task": report.task,
                "num_classes": report.num_classes,
                "reduction": report.reduction,
                "n_examples": len(report),
                "arrays": arrays,
                "inputs": inputs,
                "extra": extra,
                "tables": written_tables,
                "vectors": saved_vectors,
                "files": saved_files,
                "info": dict(info or {}),
            }
            write_json_atomic(tmp / META_FILE, {**meta, "checksum": _json_checksum(meta)})
            _fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        _fsync_dir(self.log_dir)
        return final


def _save_array(folder: Path, stem: str, value: np.ndarray) -> dict[str, Any]:
    source = _whole_npy_file(value)
    array = value if source else np.ascontiguousarray(value)
    if array.dtype.kind == "O":
        raise TypeError(
            f"Column {stem!r} holds Python objects; only numeric/text arrays are saved."
        )
    path = folder / f"{stem}.npy"
    with open(path, "wb") as handle:
        if source:
            # A memory-mapped .npy column (a streamed analysis, a loaded run) is copied
            # file to file: writing it needs no memory for its data.
            with open(source, "rb") as original:
                shutil.copyfileobj(original, handle, 1 << 20)
        else:
            np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    size, crc = _file_crc32(path)
    return {
        "file": path.name,
        "bytes": size,
        "crc32": crc,
        "dtype": array.dtype.str,
        "shape": list(array.shape),
    }


def _whole_npy_file(value: Any) -> str | None:
    """The ``.npy`` file a read-only memory map covers whole and unchanged, else None."""
    if not isinstance(value, np.memmap) or value.mode != "r" or not value.filename:
        return None
    try:
        with open(value.filename, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
        size = os.path.getsize(value.filename)
    except (OSError, ValueError):
        return None
    whole = (
        tuple(shape) == value.shape
        and dtype == value.dtype
        and not fortran
        and value.flags.c_contiguous
        and value.offset == offset
        and size == offset + value.nbytes
    )
    return str(value.filename) if whole else None


def _file_crc32(path: Path) -> tuple[int, int]:
    """Size and CRC32 of a file, read in blocks (a column may not fit in memory twice)."""
    size, crc = 0, 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            size += len(block)
            crc = zlib.crc32(block, crc)
    return size, crc


def _save_table(folder: Path, name: str, table: pd.DataFrame) -> dict[str, Any]:
    csv_path = folder / f"{name}.csv"
    # Text is always quoted, so a bare carriage return or "0" in a label stays text.
    table.to_csv(csv_path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    entry = {"csv": csv_path.name, "rows": len(table), "crc32": zlib.crc32(csv_path.read_bytes())}
    # Text columns are read back as text: a label "007", "0" or "True" must not become a number.
    entry["text_columns"] = [
        str(c) for c in table.columns if pd.api.types.infer_dtype(table[c]) == "string"
    ]
    if name == "hardest":
        jsonl_path = folder / f"{name}.jsonl"
        jsonl_path.write_text(
            table.to_json(orient="records", lines=True, force_ascii=False), encoding="utf-8"
        )
        entry["jsonl"] = jsonl_path.name
    for file_name in (entry["csv"], entry.get("jsonl")):
        if file_name:
            with open(folder / file_name, "rb+") as handle:
                os.fsync(handle.fileno())
    return entry


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        with contextlib.suppress(OSError):
            child.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFormatError(f"Missing file {str(path)!r}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFormatError(f"File {str(path)!r} is corrupt (not valid JSON: {error}).") from None
    if not isinstance(data, dict):
        raise RunFormatError(f"File {str(path)!r} is corrupt (not a JSON object).")
    return data


def _read_run_json(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise RunFormatError(
            f"{str(path)!r} is not a keras_erranalysis run file (format {data.get('format')!r})."
        )
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise RunFormatError(
            f"{str(path)!r} has format version {data.get('version')!r}; this keras_erranalysis "
            f"reads up to version {VERSION}. Upgrade keras_erranalysis."
        )
    _verify_checksum(data, path)
    return data


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _complete_epochs(log_dir: Path) -> list[int]:
    epochs = []
    for child in log_dir.iterdir() if log_dir.exists() else ():
        match = _EPOCH_DIR.match(child.name)
        if match and child.is_dir():
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def load_run(log_dir: str | os.PathLike, *, verify: bool = False) -> Run:
    """Reads a run folder written by :class:`~keras_erranalysis.ErrorAnalysis`.

    Args:
        log_dir: The run folder.
        verify: Also check every array's CRC32 (reads all data once); sizes and headers
            are always checked when an epoch is opened.

    Returns:
        A :class:`Run`.

    Raises:
        RunFormatError: For a missing, corrupt or foreign folder or file; the message names
            the file.

    Example:
        >>> run = load_run("runs/erranalysis")  # doctest: +SKIP
        >>> run.hardest(k=5)  # doctest: +SKIP
    """
    path = Path(log_dir)
    if not path.is_dir():
        raise RunFormatError(f"Run folder {str(path)!r} does not exist.")
    run_file = path / RUN_FILE
    if not run_file.exists():
        raise RunFormatError(
            f"{str(path)!r} is not a keras_erranalysis run folder: {RUN_FILE} is missing."
        )
    run = Run(path, _read_run_json(run_file))
    if verify:
        for epoch in run.epochs:
            run.meta(epoch, verify=True)
    return run


class Run:
    """A run folder opened for reading. Arrays are memory-mapped, not loaded.

    Attributes:
        log_dir: The folder.
        info: The contents of ``run.json``.
        epochs: Complete epoch numbers, ascending.
        incomplete: Temporary folders left by interrupted writes (never read).
    """

    def __init__(self, log_dir: Path, info: dict[str, Any]) -> None:
        self.log_dir = Path(log_dir)
        self.info = info
        self.epochs = _complete_epochs(self.log_dir)
        self.incomplete = sorted(
            p.name for p in self.log_dir.iterdir() if p.name.startswith(_TMP_PREFIX)
        )
        if self.incomplete:
            warnings.warn(
                f"{len(self.incomplete)} incomplete epoch write(s) in {str(self.log_dir)!r} "
                f"({self.incomplete[:3]}), left by an interrupted process: ignored.",
                RuntimeWarning,
                stacklevel=3,
            )
        self._meta: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.log_dir)!r}, epochs={self.epochs})"

    # -- decoding ----------------------------------------------------------------------

    def vocabulary(self, key: str) -> Vocabulary | None:
        """The stored ``vocab``, ``input_vocab`` or ``label_names`` of the run."""
        return Vocabulary.from_json((self.info.get("decoding") or {}).get(key))

    def _decoding(self) -> dict[str, Any]:
        return {k: self.vocabulary(k) for k in ("vocab", "input_vocab", "label_names")}

    # -- epochs ------------------------------------------------------------------------

    def _resolve(self, epoch: int) -> int:
        if not self.epochs:
            raise RunFormatError(f"Run {str(self.log_dir)!r} holds no complete epoch yet.")
        if epoch < 0:
            if -epoch > len(self.epochs):
                raise IndexError(f"Epoch index {epoch} out of range; run has {self.epochs}.")
            return self.epochs[epoch]
        if epoch not in self.epochs:
            raise KeyError(f"No epoch {epoch} in {str(self.log_dir)!r}; epochs are {self.epochs}.")
        return epoch

    def epoch_dir(self, epoch: int = -1) -> Path:
        """The folder of one epoch (``-1`` = last)."""
        return self.log_dir / f"epoch_{self._resolve(epoch):04d}"

    def meta(self, epoch: int = -1, *, verify: bool = False) -> dict[str, Any]:
        """The checked ``meta.json`` of one epoch."""
        number = self._resolve(epoch)
        if number in self._meta and not verify:
            return self._meta[number]
        folder = self.epoch_dir(number)
        meta = _read_json(folder / META_FILE)
        if meta.get("format") != FORMAT or meta.get("epoch") != number:
            raise RunFormatError(f"{str(folder / META_FILE)!r} does not describe epoch {number}.")
        _verify_checksum(meta, folder / META_FILE)
        entries = [
            *meta.get("arrays", {}).values(),
            *meta.get("inputs", {}).values(),
            *meta.get("extra", {}).values(),
            *meta.get("vectors", {}).values(),
            *({"file": name, **entry} for name, entry in meta.get("files", {}).items()),
        ]
        for entry in entries:
            file = folder / entry["file"]
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                raise RunFormatError(f"Missing file {str(file)!r}.") from None
            if size != entry["bytes"]:
                raise RunFormatError(
                    f"File {str(file)!r} is corrupt: {size} bytes, expected {entry['bytes']}."
                )
            if verify and zlib.crc32(file.read_bytes()) != entry["crc32"]:
                raise RunFormatError(f"File {str(file)!r} is corrupt: checksum mismatch.")
        self._meta[number] = meta
        return meta

    def _load(self, folder: Path, entry: Mapping[str, Any], mmap: bool) -> np.ndarray:
        file = folder / entry["file"]
        try:
            array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise RunFormatError(f"File {str(file)!r} is corrupt ({error}).") from None
        if list(array.shape) != list(entry["shape"]) or array.dtype.str != entry["dtype"]:
            raise RunFormatError(
                f"File {str(file)!r} is corrupt: shape {array.shape} / dtype {array.dtype.str}, "
                f"expected {tuple(entry['shape'])} / {entry['dtype']}."
            )
        return array

    def array(self, column: str, epoch: int = -1, *, mmap: bool = True) -> np.ndarray:
        """One stored column of one epoch (memory-mapped by default)."""
        meta = self.meta(epoch)
        folder = self.epoch_dir(epoch)
        for group in ("arrays", "extra", "inputs", "vectors"):
            if column in meta.get(group, {}):
                return self._load(folder, meta[group][column], mmap)
        raise KeyError(f"No column {column!r} in epoch {meta['epoch']}.")

    def report(self, epoch: int = -1, *, mmap: bool = True) -> LossReport:
        """The :class:`LossReport` of one epoch, as it was written."""
        meta = self.meta(epoch)
        folder = self.epoch_dir(epoch)
        arrays = {name: self._load(folder, entry, mmap) for name, entry in meta["arrays"].items()}
        return LossReport(
            task=meta["task"],
            num_classes=int(meta["num_classes"]),
            reduction=meta.get("reduction", "mean"),
            inputs={n: self._load(folder, e, mmap) for n, e in meta.get("inputs", {}).items()},
            extra={n: self._load(folder, e, mmap) for n, e in meta.get("extra", {}).items()},
            **arrays,
        )

    def stack(self, column: str, epochs: Iterable[int] | None = None) -> np.ndarray:
        """One column across epochs as an ``(E, N, ...)`` array (rows in epoch order)."""
        chosen = list(self.epochs if epochs is None else epochs)
        return np.stack([np.asarray(self.array(column, e)) for e in chosen])

    def arrays(self, column: str, epochs: Iterable[int] | None = None) -> list[np.ndarray]:
        """One column across epochs as a list of memory-mapped arrays (nothing loaded)."""
        chosen = list(self.epochs if epochs is None else epochs)
        return [self.array(column, e) for e in chosen]

    def files(self, epoch: int = -1) -> list[str]:
        """Names of the extra files (e.g. heatmap PNGs) stored with one epoch."""
        return sorted(self.meta(epoch).get("files", {}))

    def file_path(self, name: str, epoch: int = -1) -> Path:
        """Path of an extra file stored with one epoch (see :meth:`files`)."""
        if name not in self.meta(epoch).get("files", {}):
            raise KeyError(f"No file {name!r} in epoch {self._resolve(epoch)}.")
        return self.epoch_dir(epoch) / name

    def table(self, name: str, epoch: int = -1) -> pd.DataFrame:
        """A per-epoch table written next to the arrays (``hardest``, features, ...)."""
        meta = self.meta(epoch)
        entry = meta.get("tables", {}).get(name)
        if entry is None:
            raise KeyError(
                f"No table {name!r} in epoch {meta['epoch']}; tables are {list(meta['tables'])}."
            )
        file = self.epoch_dir(epoch) / entry["csv"]
        try:
            raw = file.read_bytes()
        except OSError as error:
            raise RunFormatError(f"File {str(file)!r} is unreadable ({error}).") from None
        if "crc32" in entry and zlib.crc32(raw) != entry["crc32"]:
            raise RunFormatError(f"File {str(file)!r} is corrupt: checksum mismatch.")
        text = entry.get("text_columns", [])
        try:
            frame = pd.read_csv(
                io.BytesIO(raw),
                keep_default_na=False,
                na_values=[""],
                dtype=dict.fromkeys(text, str),
            )
        except ValueError as error:
            raise RunFormatError(f"File {str(file)!r} is corrupt ({error}).") from None
        for column in text:
            if column in frame:
                frame[column] = frame[column].fillna("")
        return frame

    def frame(self, epoch: int = -1, **decoding: Any) -> pd.DataFrame:
        """Every example of one epoch as a table, decoded with the stored vocabularies."""
        options = {**self._decoding(), **decoding}
        return self.report(epoch).to_frame(**options)

    def hardest(
        self, epoch: int = -1, k: int = 20, by: str = "loss", only_wrong: bool = False
    ) -> pd.DataFrame:
        """The ``k`` hardest examples of one epoch (see ``LossReport.hardest``)."""
        return ranking.rank_examples(self.frame(epoch), by=by, k=k, only_wrong=only_wrong)

    @property
    def history(self) -> pd.DataFrame:
        """Every epoch's per-example numbers, one row per (epoch, example)."""
        parts = []
        for epoch in self.epochs:
            part = self.report(epoch).scalars()
            part.insert(0, "epoch", epoch)
            parts.append(part)
        if not parts:
            return pd.DataFrame(columns=["epoch", *EXAMPLE_COLUMNS])
        return pd.concat(parts, ignore_index=True)

    def dynamics(self, **options: Any) -> pd.DataFrame:
        """Per-example training dynamics across epochs (see ``dynamics.run_dynamics``)."""
        from keras_erranalysis.dynamics import run_dynamics

        return run_dynamics(self, **options)

    def likely_mislabeled(
        self,
        k: int | None = None,
        *,
        method: str | None = None,
        threshold: float | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """Ranked likely label errors (see ``dynamics.likely_mislabeled``)."""
        from keras_erranalysis.dynamics import DEFAULT_METHOD, likely_mislabeled, run_dynamics

        dyn = run_dynamics(self, **options)
        return likely_mislabeled(dyn, k, method=method or DEFAULT_METHOD, threshold=threshold)

    def similar(self, example_id: int, k: int = 10, *, epoch: int = -1) -> pd.DataFrame:
        """The ``k`` examples nearest to one example by cosine similarity of its embedding.

        Needs embeddings stored by ``ErrorAnalysis(..., embeddings=True)``; see
        ``embeddings.similar_examples`` (exact search, chunked, memory-mapped).
        """
        from keras_erranalysis.embeddings import similar_examples

        return similar_examples(self, example_id, k, epoch=epoch)
