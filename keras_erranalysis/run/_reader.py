"""load_run and Run: a run folder read back, memory-mapped."""

from __future__ import annotations

import io
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._columns import EMBEDDING, EXAMPLE_COLUMNS
from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.run._files import (
    _TMP_PREFIX,
    FORMAT,
    META_FILE,
    RUN_FILE,
    RunFormatError,
    _complete_epochs,
    _read_json,
    _read_run_json,
    _verify_checksum,
)


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
        from keras_erranalysis.analysis._ranking import rank_examples

        return rank_examples(self.frame(epoch), by=by, k=k, only_wrong=only_wrong)

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

    def dynamics(
        self,
        *,
        tokens: bool = False,
        epochs: Sequence[int] | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """Dynamics of the recorded epochs, read memory-mapped, never stacked.

        Args:
            tokens: For sequence runs, one row per counted token
                (:func:`~keras_erranalysis.analysis.compute_token_dynamics`) instead of one
                row per sequence.
            epochs: Epochs to use (default: all recorded).
            **options: Passed to :func:`~keras_erranalysis.analysis.compute_dynamics` /
                ``compute_token_dynamics`` (e.g. ``hard_k``, ``confidence_threshold``).

        Returns:
            The dynamics DataFrame.
        """
        from keras_erranalysis.analysis._dynamics import compute_dynamics, compute_token_dynamics

        chosen = list(self.epochs if epochs is None else epochs)
        if not chosen:
            raise ValueError(
                "The run has no recorded epochs yet: train with the ErrorAnalysis callback first."
            )
        last = chosen[-1]
        sequence = self.meta(last)["task"] == "sequence"
        ids = np.asarray(self.array("example_id", last))
        first_ids = np.asarray(self.array("example_id", chosen[0]))
        if first_ids.shape != ids.shape or not np.array_equal(first_ids, ids):
            raise ValueError(
                f"Epochs {chosen[0]} and {last} of the run hold different examples; dynamics need "
                "the same examples every epoch. Pass epochs=[...] that analyzed the same data."
            )

        def columns(name: str) -> list[np.ndarray]:
            return self.arrays(name, chosen)

        if tokens:
            if not sequence:
                raise ValueError("tokens=True needs a sequence run; this run is a classifier.")
            return compute_token_dynamics(
                columns("token_true_prob"),
                columns("token_margin"),
                np.asarray(self.array("token_mask", last)),
                columns("prediction"),
                np.asarray(self.array("label", last)),
                example_id=ids,
                epochs=chosen,
                **options,
            )
        return compute_dynamics(
            columns("true_prob"),
            columns("margin"),
            columns("correct"),
            loss=columns("loss"),
            prediction=None if sequence else columns("prediction"),
            label=None if sequence else np.asarray(self.array("label", last)),
            example_id=ids,
            epochs=chosen,
            **options,
        )

    def likely_mislabeled(
        self,
        k: int | None = None,
        *,
        method: str | None = None,
        threshold: float | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """Ranked likely label errors (see ``dynamics.likely_mislabeled``)."""
        from keras_erranalysis.analysis._mislabeled import DEFAULT_METHOD, likely_mislabeled

        dyn = self.dynamics(**options)
        return likely_mislabeled(dyn, k, method=method or DEFAULT_METHOD, threshold=threshold)

    def similar(
        self, example_id: int, k: int = 10, *, epoch: int = -1, name: str = EMBEDDING
    ) -> pd.DataFrame:
        """The ``k`` examples nearest to one example by cosine similarity of its embedding.

        Needs embeddings stored by ``ErrorAnalysis(..., embeddings=True)``; the search is
        exact, chunked and memory-mapped (:func:`~keras_erranalysis.analysis.nearest`).

        Args:
            example_id: The example to start from.
            k: How many neighbours.
            epoch: Which epoch's embeddings (``-1`` = last).
            name: The stored array (default ``embedding``, as the callback writes it).

        Returns:
            One row per neighbour, most similar first: ``rank, example_id, similarity, loss,
            label, prediction, confidence, correct`` and decoded text columns when the run
            can decode them.

        Raises:
            KeyError: When the epoch holds no embeddings or no such example.
        """
        from keras_erranalysis.analysis._similarity import nearest

        try:
            vectors = self.array(name, epoch)
        except KeyError:
            raise KeyError(
                f"Epoch {self.meta(epoch)['epoch']} of {str(self.log_dir)!r} holds no {name!r} "
                "array: train with ErrorAnalysis(..., embeddings=True) to store embeddings."
            ) from None
        ids = np.asarray(self.array("example_id", epoch))
        hits = np.flatnonzero(ids == example_id)
        if hits.size == 0:
            raise KeyError(f"No example with id {example_id} in epoch {self.meta(epoch)['epoch']}.")
        row = int(hits[0])
        rows, sims = nearest(vectors, np.asarray(vectors[row], dtype=np.float32), k, exclude=row)
        decoding = {key: self.vocabulary(key) for key in ("vocab", "input_vocab", "label_names")}
        frame = self.report(epoch).select(rows).to_frame(**decoding)
        frame.insert(0, "rank", np.arange(1, len(frame) + 1))
        frame.insert(2, "similarity", sims.astype(np.float32))
        wanted = [
            "rank",
            "example_id",
            "similarity",
            "loss",
            "label",
            "prediction",
            "confidence",
            "correct",
            "input_text",
            "label_text",
            "prediction_text",
        ]
        return frame[[c for c in wanted if c in frame.columns]]
