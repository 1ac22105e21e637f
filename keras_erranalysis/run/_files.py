"""The run folder's files: names, errors, atomic writes and checked reads."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import tempfile
import weakref
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


# A decoding stored once per distinct content and named by an epoch's meta.json.
_DECODING_FILE = re.compile(r"^decoding_[0-9a-f]{8}\.json$")


# A plain file name inside an epoch folder: no separator, no "..", not hidden.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


DECODING_KEYS = ("vocab", "input_vocab", "label_names")


# A lock younger than this may still be being written by the process that created it.
LOCK_GRACE_SECONDS = 5.0


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
    _check_decoding(data.get("decoding", {}), path)
    return data


def _read_decoding_file(path: Path) -> dict[str, Any]:
    """The vocabularies of a ``decoding_*.json`` file (named by an epoch's meta.json)."""
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise RunFormatError(f"{str(path)!r} is not a keras_erranalysis decoding file.")
    _verify_checksum(data, path)
    _check_decoding(data.get("decoding"), path)
    return data["decoding"]


def _decoding_file_name(decoding: Mapping[str, Any]) -> str:
    """The content-addressed name of a stored decoding (the same vocabularies, one file)."""
    text = json.dumps(_json_safe(dict(decoding)), sort_keys=True, allow_nan=False)
    return f"decoding_{zlib.crc32(text.encode('utf-8')):08x}.json"


def _read_lock(path: Path) -> dict[str, Any]:
    """The lock's contents; ``{}`` when it is empty, unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return {}
    return data


# Writers of this process that hold a lock, by folder: a second writer in the same process
# is refused while the first is alive and active, and takes over once it is gone.
_HOLDERS: dict[str, weakref.ref] = {}


def _folder_key(log_dir: Path) -> str:
    return os.path.realpath(log_dir)


def _local_holder(log_dir: Path) -> Any:
    """The live, active writer of this process that holds ``log_dir``'s lock, or None."""
    ref = _HOLDERS.get(_folder_key(log_dir))
    holder = ref() if ref is not None else None
    if holder is None or not holder._locked or not holder.active():
        return None
    return holder


def _writer_of(log_dir: Path) -> str | None:
    """Who is writing ``log_dir`` now ("pid 12 on host"), or None when nobody live is."""
    holder = _read_lock(log_dir / LOCK_FILE)
    if not holder:
        return None
    pid, host = holder["pid"], holder.get("host")
    if host != socket.gethostname():
        return f"pid {pid} on {host}"
    if pid == os.getpid():
        return f"pid {pid} (this process)" if _local_holder(log_dir) is not None else None
    return f"pid {pid}" if _pid_alive(pid) else None


def _epoch_folders(log_dir: Path) -> tuple[list[int], list[str]]:
    """Canonical epoch numbers (real ``epoch_%04d`` folders), and names that look alike.

    Only ``epoch_%04d`` (``epoch_0002``, ``epoch_12345``) real folders are epochs;
    ``epoch_2``, ``epoch_00002`` or a symbolic link are never read (the second list names
    them so a reader can warn).
    """
    epochs, ignored = [], []
    for child in log_dir.iterdir() if log_dir.exists() else ():
        match = _EPOCH_DIR.match(child.name)
        if not match:
            continue
        number = int(match.group(1))
        if child.name == f"epoch_{number:04d}" and child.is_dir() and not child.is_symlink():
            epochs.append(number)
        else:
            ignored.append(child.name)
    return sorted(epochs), sorted(ignored)


def _complete_epochs(log_dir: Path) -> list[int]:
    return _epoch_folders(log_dir)[0]


# -- structure checks: well-formed JSON that is not what we wrote is a RunFormatError --------


def _bad(path: Path, what: str) -> RunFormatError:
    return RunFormatError(f"File {str(path)!r} is not a keras_erranalysis file: {what}.")


def _need(value: Any, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise _bad(path, f"{where} must be a number, got {value!r}")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        shown = repr(value) if len(repr(value)) < 40 else type(value).__name__
        raise _bad(path, f"{where} must be {name}, got {shown}")
    return value


def _check_vocab_json(value: Any, path: Path, where: str) -> None:
    if value is None:
        return
    _need(value, dict, path, where)
    tokens = _need(value.get("tokens"), list, path, f"{where}.tokens")
    if not all(isinstance(t, str) for t in tokens):
        raise _bad(path, f"{where}.tokens must be strings")
    _need(value.get("sep", " "), str, path, f"{where}.sep")


def _check_decoding(value: Any, path: Path, where: str = "decoding") -> None:
    _need(value, dict, path, where)
    for key, vocab in value.items():
        _check_vocab_json(vocab, path, f"{where}.{key}")


def _check_plain_name(name: Any, path: Path, where: str) -> str:
    _need(name, str, path, where)
    if not _PLAIN_NAME.match(name):
        raise _bad(path, f"{where} {name!r} is not a plain file name inside the epoch folder")
    return name


def _check_entry(entry: Any, path: Path, where: str, *, array: bool) -> None:
    _need(entry, dict, path, where)
    if array:
        _check_plain_name(entry.get("file"), path, f"{where}.file")
        _need(entry.get("dtype"), str, path, f"{where}.dtype")
        shape = _need(entry.get("shape"), list, path, f"{where}.shape")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _bad(path, f"{where}.shape must be a list of sizes")
    _need(entry.get("bytes"), int, path, f"{where}.bytes")
    _need(entry.get("crc32"), int, path, f"{where}.crc32")


def _check_meta(meta: dict[str, Any], path: Path, columns: tuple[str, ...]) -> None:
    """Raises RunFormatError naming ``path`` unless ``meta`` has the structure we write."""
    if meta.get("task") not in ("classification", "sequence"):
        raise _bad(path, f"task must be 'classification' or 'sequence', got {meta.get('task')!r}")
    _need(meta.get("num_classes"), int, path, "num_classes")
    _need(meta.get("reduction", "mean"), str, path, "reduction")
    for group in ("arrays", "inputs", "extra", "vectors", "files", "tables", "info"):
        _need(meta.get(group, {}), dict, path, group)
    arrays = meta.get("arrays", {})
    unknown = sorted(set(arrays) - set(columns))
    if unknown:
        raise _bad(path, f"arrays holds unknown columns {unknown[:3]}")
    missing = [c for c in ("example_id", "loss") if c not in arrays]
    if missing:
        raise _bad(path, f"arrays lacks the columns {missing}")
    for group in ("arrays", "inputs", "extra", "vectors"):
        for name, entry in meta.get(group, {}).items():
            _check_entry(entry, path, f"{group}.{name}", array=True)
    for name, entry in meta.get("files", {}).items():
        _check_plain_name(name, path, "files")
        _check_entry(entry, path, f"files.{name}", array=False)
    for name, entry in meta.get("tables", {}).items():
        _need(entry, dict, path, f"tables.{name}")
        _check_plain_name(entry.get("csv"), path, f"tables.{name}.csv")
        if "jsonl" in entry:
            _check_plain_name(entry["jsonl"], path, f"tables.{name}.jsonl")
        if "crc32" in entry:
            _need(entry["crc32"], int, path, f"tables.{name}.crc32")
        text = _need(entry.get("text_columns", []), list, path, f"tables.{name}.text_columns")
        if not all(isinstance(c, str) for c in text):
            raise _bad(path, f"tables.{name}.text_columns must be column names")
    decoding = meta.get("decoding")
    if decoding is not None and (
        not isinstance(decoding, str)
        or (decoding != RUN_FILE and not _DECODING_FILE.match(decoding))
    ):
        raise _bad(path, f"decoding must name {RUN_FILE} or a decoding_*.json file")


def _inside(folder: Path, name: str, owner: Path) -> Path:
    """``folder / name`` as a regular file in ``folder`` itself, never through a link."""
    file = folder / name
    try:
        status = os.lstat(file)
    except FileNotFoundError:
        raise RunFormatError(f"Missing file {str(file)!r}.") from None
    except OSError as error:
        raise RunFormatError(f"File {str(file)!r} is unreadable ({error}).") from None
    if stat.S_ISLNK(status.st_mode):
        raise RunFormatError(
            f"File {str(file)!r} is a symbolic link; {str(owner)!r} may only list files "
            "inside the run folder: refused."
        )
    if not stat.S_ISREG(status.st_mode):
        raise RunFormatError(f"File {str(file)!r} is not a regular file.")
    return file
