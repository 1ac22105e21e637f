"""Run: the on-disk format of a run folder, and readers of ``analyze``'s input files.

:class:`RunWriter` writes one epoch at a time, atomically, under a lock; :func:`load_run`
reads a folder back memory-mapped as a :class:`Run`. Nothing here computes an analysis:
convenience methods such as :meth:`Run.dynamics` import :mod:`keras_erranalysis.analysis`
when called.
"""

from keras_erranalysis.run._files import (
    RunFormatError,
    RunLockedError,
    write_bytes_atomic,
    write_json_atomic,
)
from keras_erranalysis.run._reader import Run, load_run
from keras_erranalysis.run._sources import detect_format, open_source
from keras_erranalysis.run._writer import RunWriter

__all__ = [
    "Run",
    "RunFormatError",
    "RunLockedError",
    "RunWriter",
    "detect_format",
    "load_run",
    "open_source",
    "write_bytes_atomic",
    "write_json_atomic",
]
