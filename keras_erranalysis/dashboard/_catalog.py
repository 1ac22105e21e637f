"""Which run folders a logdir holds, and each one opened once for the dashboard.

:func:`find_runs` searches the logdir at any depth without following links;
:class:`RunCatalog` opens each run with :func:`~keras_erranalysis.run.load_run` and opens it
again when epochs were written since.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from keras_erranalysis.dashboard._store import BoundedCache, QueryError, RunView
from keras_erranalysis.run import RunFormatError, load_run
from keras_erranalysis.run._files import FORMAT, RUN_FILE


def find_runs(
    logdir: str | os.PathLike, *, max_runs: int = 1000, max_folders: int = 20_000
) -> list[str]:
    """Run folders of ours under ``logdir`` at any depth, as ``/``-separated relative paths.

    Symbolic links to folders are not followed, hidden folders and epoch folders are not
    searched, and a run folder's own subfolders are not searched for more runs.

    Args:
        logdir: The folder TensorBoard was started on (a run folder itself is ``"."``).
        max_runs: Stop after this many.
        max_folders: Stop after searching this many folders (a logdir beside a dataset).

    Returns:
        The runs' paths relative to ``logdir``, sorted.
    """
    root = Path(logdir)
    found: list[str] = []
    if not root.is_dir():
        return found
    for searched, (folder, dirs, files) in enumerate(os.walk(root, followlinks=False)):
        if searched >= max_folders:
            break
        if RUN_FILE in files and _is_run_file(Path(folder) / RUN_FILE):
            relative = Path(folder).relative_to(root).as_posix()
            found.append(relative)
            dirs[:] = []
            if len(found) >= max_runs:
                break
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.startswith("epoch_")]
    return sorted(found)


def _is_run_file(path: Path) -> bool:
    """A regular ``run.json`` (not a link) that names our format, read cheaply."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 50 << 20:
            return False
        with open(path, encoding="utf-8") as handle:
            return FORMAT in handle.read(1 << 20)
    except (OSError, UnicodeDecodeError):
        return False


class RunCatalog:
    """The runs under one logdir, opened once and refreshed as epochs are written.

    Args:
        logdir: TensorBoard's logdir.
        cache: The shared cache.
        refresh_seconds: How long a run listing and a run's epoch list are reused.
    """

    def __init__(self, logdir: str | os.PathLike, cache: BoundedCache, refresh_seconds=2.0):
        self.logdir = Path(logdir)
        self.cache = cache
        self.refresh_seconds = refresh_seconds
        self._views: dict[str, tuple[RunView, float]] = {}
        self._listing: tuple[list[str], float] | None = None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The runs' relative paths (listed again after ``refresh_seconds``)."""
        with self._lock:
            now = time.monotonic()
            if self._listing is None or now - self._listing[1] > self.refresh_seconds:
                self._listing = (find_runs(self.logdir), now)
            return list(self._listing[0])

    def view(self, name: Any) -> RunView:
        """The run named by a request's ``run`` parameter (one of :meth:`names`)."""
        if not isinstance(name, str) or not name:
            raise QueryError("The request needs run=<name>: GET ./runs lists the runs.")
        names = self.names()
        if name not in names:
            self._listing = None
            names = self.names()
        if name not in names:
            shown = names[:5] + (["..."] if len(names) > 5 else [])
            raise QueryError(
                f"No run {name!r} under the logdir; GET ./runs lists them ({shown}).", 404
            )
        with self._lock:
            found = self._views.get(name)
            now = time.monotonic()
            if found is None or now - found[1] > self.refresh_seconds:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # incomplete epochs while training
                        run = load_run(self.logdir / name)
                except RunFormatError as error:
                    raise QueryError(f"Run {name!r} cannot be read: {error}", 404) from None
                if found is not None and found[0].run.epochs == run.epochs:
                    found = (found[0], now)  # same epochs: keep its checked meta and maps
                else:
                    found = (RunView(name, run, self.cache), now)
                self._views[name] = found
            return found[0]
