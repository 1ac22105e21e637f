"""The run folder's files: names, errors, atomic writes and checked reads."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from keras_erranalysis._columns import EXAMPLE_COLUMNS, TOKEN_COLUMNS

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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Errors of a full disk or quota, or a file-size limit: the user's fix is room, or elsewhere.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def write_error(
    error: OSError, path: Path, log_dir: Path | None = None, *, shown_as: Path | None = None
) -> OSError:
    """``error`` with a message naming the file, the folder and the fix (same errno and type).

    Args:
        error: What ``open`` / ``write`` raised (or an error this function already named).
        path: The file being written; a folder (e.g. an epoch being written) names its
            newest file.
        log_dir: The run folder, when ``path`` is inside one.
        shown_as: The folder to name instead of ``path``'s temporary folder (an epoch's
            final name rather than its temporary one).
    """
    original = getattr(error, "unnamed", error)
    if original is not error and log_dir is None and shown_as is None:
        return error
    file = getattr(error, "path", None) or (
        Path(original.filename) if original.filename else _newest_file(Path(path))
    )
    if shown_as is not None:
        file = Path(shown_as) / Path(file).name
    where = f"log_dir {str(log_dir)!r}" if log_dir is not None else "its folder"
    fix = (
        f"free space in {where} or pass another log_dir"
        if original.errno in _NO_ROOM
        else f"check that {where} can be written"
    )
    message = f"Cannot write {str(file)!r} ({original.strerror or original}): {fix}."
    wrapped = type(original)(original.errno, message) if original.errno else OSError(message)
    wrapped.unnamed = original  # type: ignore[attr-defined]
    wrapped.path = file  # type: ignore[attr-defined]
    return wrapped


def _newest_file(folder: Path) -> Path:
    with contextlib.suppress(OSError):
        if folder.is_dir():
            files = [p for p in folder.iterdir() if p.is_file()]
            if files:
                return max(files, key=lambda p: p.stat().st_mtime_ns)
    return folder


def write_bytes_atomic(path: Path, data: bytes, *, log_dir: Path | None = None) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename.

    Raises:
        OSError: Naming ``path`` (and ``log_dir``) and the fix, e.g. on a full disk.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(error, OSError):
            error.filename = None  # name the file the user asked for, not the temporary one
            raise write_error(error, path, log_dir) from error
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


def _file_crc32(path: Path) -> tuple[int, int]:
    """Size and CRC32 of a file, read in blocks (a column may not fit in memory twice)."""
    size, crc = 0, 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            size += len(block)
            crc = zlib.crc32(block, crc)
    return size, crc


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        with contextlib.suppress(OSError):
            child.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


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
