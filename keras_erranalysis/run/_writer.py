"""RunWriter: writes one epoch at a time into a run folder, atomically, under a lock."""

from __future__ import annotations

import atexit
import contextlib
import csv
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.run._files import (
    _ARRAY_COLUMNS,
    _HOLDERS,
    _TMP_PREFIX,
    DECODING_KEYS,
    FORMAT,
    LOCK_FILE,
    LOCK_GRACE_SECONDS,
    META_FILE,
    RUN_FILE,
    VERSION,
    RunFormatError,
    RunLockedError,
    _complete_epochs,
    _decoding_file_name,
    _file_crc32,
    _folder_key,
    _fsync_dir,
    _json_checksum,
    _json_safe,
    _local_holder,
    _pid_alive,
    _read_decoding_file,
    _read_lock,
    _read_run_json,
    _remove_tree,
    _umask,
    write_error,
    write_json_atomic,
)


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
        self._token: str | None = None
        self._active: Callable[[], bool] | None = None
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
        stored = {
            key: (Vocabulary.from_any(value).to_json() if value is not None else None)
            for key, value in (decoding or {}).items()
        }
        # Each epoch's meta.json names the decoding of its text: run.json's (the first
        # writer's) or, for a writer that appends with other vocabularies, one
        # decoding_<crc32>.json file per distinct decoding.
        self.decoding_file = RUN_FILE
        if run_file.exists():
            self.run_meta = _read_run_json(run_file)
            if decoding is not None and _canonical(stored) != _canonical(
                self.run_meta.get("decoding") or {}
            ):
                self.decoding_file = self._store_decoding(stored)
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
                "decoding": stored,
            }
            checksum = _json_checksum(self.run_meta)
            write_json_atomic(run_file, {**self.run_meta, "checksum": checksum})

    # -- lock --------------------------------------------------------------------------

    def active(self) -> bool:
        """Whether the owner of this writer is still at work (an interrupted fit is not).

        A second writer of the same process takes the lock over from a writer that is not
        active, or whose object is gone; see :meth:`acquire_lock`.
        """
        return self._active is None or bool(self._active())

    def acquire_lock(self, *, active: Callable[[], bool] | None = None) -> None:
        """Marks the folder as being written by this writer; refuses any live other one.

        Args:
            active: Tells whether this writer's owner is still at work (the callback: "is
                the fit that opened me still running?"). Once it turns false the lock is
                released (checked every half second by a daemon thread), so a fit stopped
                by an exception or Ctrl-C, which Keras tells no callback about, does not
                keep the folder. Default: held until :meth:`release_lock` or the end of
                the process.

        Raises:
            RunLockedError: When another live process, or another live writer of this
                process, holds the folder; or when a lock is being created right now.
        """
        if active is not None:
            self._active = active
            _watch(self)
        path = self.log_dir / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        me["token"] = f"{me['pid']}-{id(self)}-{time.monotonic_ns()}"
        for _ in range(4):
            if _create_lock(path, me):
                self._took(me["token"])
                return
            holder = _read_lock(path)
            if not holder:
                # Empty or unreadable: a process died between creating and writing it, or
                # one is writing it right now (only for an instant: see _create_lock).
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < LOCK_GRACE_SECONDS:
                    raise RunLockedError(
                        f"The lock {str(path)!r} is being created by another process right "
                        f"now (empty, {age:.1f} s old). Retry in a few seconds; if it stays "
                        "empty it is taken over."
                    )
                _unlink(path)
                continue
            pid, host = holder["pid"], holder.get("host")
            if host == me["host"] and pid == me["pid"]:
                owner = _local_holder(self.log_dir)
                if owner is self or (owner is None and self._locked):
                    self._took(holder.get("token", me["token"]))
                    return
                if owner is not None:
                    raise RunLockedError(
                        f"Another writer in this process (pid {pid}) is writing to "
                        f"{str(self.log_dir)!r}: one writer per log_dir (e.g. two ErrorAnalysis "
                        "callbacks with the same log_dir in one fit). Give each its own log_dir."
                    )
                # Ours but stale: its writer is gone, or the fit that held it was interrupted.
                _forget(self.log_dir)
                _unlink(path)
                continue
            if host == me["host"] and not _pid_alive(pid):
                _unlink(path)  # stale: its writer is gone
                continue
            raise RunLockedError(
                f"Another process (pid {pid} on {host}) is writing to "
                f"{str(self.log_dir)!r}. Use another log_dir, or stop that process; if it "
                f"is gone, delete {str(path)!r}."
            )
        raise RunLockedError(f"Could not take the lock {str(path)!r}.")

    def _took(self, token: str) -> None:
        fresh = not self._locked
        self._locked, self._token = True, token
        _HOLDERS[_folder_key(self.log_dir)] = weakref.ref(self)
        if fresh:
            # We hold the lock now, so temporary folders are leftovers of a killed writer.
            for leftover in self.log_dir.glob(f"{_TMP_PREFIX}*"):
                _remove_tree(leftover)

    def release_lock(self) -> None:
        """Removes the lock if this writer holds it (not one another writer took over)."""
        self._active = None
        if not self._locked:
            return
        self._locked = False
        path = self.log_dir / LOCK_FILE
        if _read_lock(path).get("token") in (self._token, None):
            _unlink(path)
        key = _folder_key(self.log_dir)
        if key in _HOLDERS and _HOLDERS[key]() is self:
            del _HOLDERS[key]

    # -- epochs ------------------------------------------------------------------------

    def _store_decoding(self, stored: Mapping[str, Any]) -> str:
        name = _decoding_file_name(_canonical(stored))
        path = self.log_dir / name
        if path.exists():
            if _canonical(_read_decoding_file(path)) != _canonical(stored):
                raise RunFormatError(
                    f"File {str(path)!r} holds another decoding than its name says."
                )
            return name
        body = {"format": FORMAT, "version": VERSION, "decoding": _canonical(stored)}
        write_json_atomic(path, {**body, "checksum": _json_checksum(body)})
        return name

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
                saved as ``<name>.npy`` and read with ``Run.array(name)``; the report's
                ``generated`` ids are saved as the vector ``generated``.
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
            if report.generated is not None:  # free-running output ids (Run.array)
                vectors = {"generated": report.generated, **(vectors or {})}
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
                "decoding": self.decoding_file,
            }
            write_json_atomic(tmp / META_FILE, {**meta, "checksum": _json_checksum(meta)})
            _fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException as error:
            named = (
                write_error(error, tmp, self.log_dir, shown_as=final)
                if isinstance(error, OSError)
                else error
            )
            _remove_tree(tmp)
            if named is not error:
                raise named from error
            raise
        _fsync_dir(self.log_dir)
        return final


def _canonical(decoding: Mapping[str, Any]) -> dict[str, Any]:
    """A decoding as JSON reads it back, with every key (so equal ones compare equal)."""
    text = json.dumps(_json_safe(dict(decoding)), sort_keys=True, allow_nan=False)
    loaded = json.loads(text)
    return {key: loaded.get(key) for key in DECODING_KEYS}


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _forget(log_dir: Path) -> None:
    """Drops this process's stale holder of ``log_dir`` (its fit was interrupted)."""
    ref = _HOLDERS.pop(_folder_key(log_dir), None)
    holder = ref() if ref is not None else None
    if holder is not None:
        holder._locked, holder._active = False, None


def _create_lock(path: Path, info: Mapping[str, Any]) -> bool:
    """Creates the lock with its contents in one step; False when it exists already.

    The contents go to a temporary file first, then a hard link publishes it whole, so a
    reader never sees an empty lock (a file system without hard links falls back to an
    exclusive create, where an instant of emptiness remains).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lock-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(dict(info), handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(dict(info), handle)
        return True
    finally:
        _unlink(Path(tmp))


def _watch(writer: RunWriter, every: float = 0.5) -> None:
    """Releases ``writer``'s lock once its owner is no longer active (see acquire_lock)."""
    ref = weakref.ref(writer)

    def loop() -> None:
        while True:
            time.sleep(every)
            current = ref()
            if current is None or current._active is None:
                return  # released already, or the writer is gone
            if current._locked and not current.active():
                current.release_lock()
                return
            del current

    threading.Thread(target=loop, name="erranalysis-lock-watch", daemon=True).start()


def _release_all() -> None:
    """At interpreter exit: remove the locks this process still holds."""
    for ref in list(_HOLDERS.values()):
        holder = ref()
        if holder is not None:
            with contextlib.suppress(Exception):
                holder.release_lock()


atexit.register(_release_all)


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
