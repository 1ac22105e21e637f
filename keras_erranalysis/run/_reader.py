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
    _ARRAY_COLUMNS,
    _TMP_PREFIX,
    DECODING_KEYS,
    FORMAT,
    META_FILE,
    RUN_FILE,
    RunFormatError,
    _check_meta,
    _epoch_folders,
    _inside,
    _read_decoding_file,
    _read_json,
    _read_run_json,
    _verify_checksum,
    _writer_of,
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
        self.epochs, ignored = _epoch_folders(self.log_dir)
        if ignored:
            warnings.warn(
                f"{str(self.log_dir)!r} holds {ignored[:3]}, which are not epoch folders "
                "(only real folders named epoch_%04d, e.g. epoch_0002, are read): ignored.",
                RuntimeWarning,
                stacklevel=3,
            )
        self.incomplete = sorted(
            p.name for p in self.log_dir.iterdir() if p.name.startswith(_TMP_PREFIX)
        )
        if self.incomplete:
            writer = _writer_of(self.log_dir)
            why = (
                f"being written by {writer} right now"
                if writer
                else "left by an interrupted process"
            )
            warnings.warn(
                f"{len(self.incomplete)} incomplete epoch write(s) in {str(self.log_dir)!r} "
                f"({self.incomplete[:3]}), {why}: ignored.",
                RuntimeWarning,
                stacklevel=3,
            )
        self._meta: dict[int, dict[str, Any]] = {}
        self._decodings: dict[str, dict[str, Vocabulary | None]] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.log_dir)!r}, epochs={self.epochs})"

    # -- decoding ----------------------------------------------------------------------

    def vocabulary(self, key: str, epoch: int | None = -1) -> Vocabulary | None:
        """The ``vocab``, ``input_vocab`` or ``label_names`` that decodes one epoch.

        Args:
            key: Which vocabulary.
            epoch: The epoch (``-1`` = last); ``None``: the one in ``run.json`` (the first
                writer's). A run appended to with other vocabularies decodes each epoch with
                its own.
        """
        return self.decoding(epoch)[key]

    def decoding(self, epoch: int | None = -1) -> dict[str, Vocabulary | None]:
        """``{"vocab", "input_vocab", "label_names"}`` of one epoch (see :meth:`vocabulary`)."""
        source = RUN_FILE
        if epoch is not None and self.epochs:
            source = self.meta(epoch).get("decoding") or RUN_FILE
        if source not in self._decodings:
            path = self.log_dir / source
            stored = (
                self.info.get("decoding") or {}
                if source == RUN_FILE
                else _read_decoding_file(_inside(self.log_dir, source, path))
            )
            try:
                self._decodings[source] = {
                    k: Vocabulary.from_json(stored.get(k)) for k in DECODING_KEYS
                }
            except (TypeError, ValueError, KeyError) as error:
                raise RunFormatError(
                    f"File {str(path)!r} holds a bad vocabulary ({error})."
                ) from None
        return self._decodings[source]

    def _decoding(self, epoch: int = -1) -> dict[str, Any]:
        return self.decoding(epoch)

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
        meta_file = folder / META_FILE
        meta = _read_json(meta_file)
        if meta.get("format") != FORMAT or meta.get("epoch") != number:
            raise RunFormatError(f"{str(meta_file)!r} does not describe epoch {number}.")
        _verify_checksum(meta, meta_file)
        _check_meta(meta, meta_file, _ARRAY_COLUMNS)
        entries = [
            *meta.get("arrays", {}).values(),
            *meta.get("inputs", {}).values(),
            *meta.get("extra", {}).values(),
            *meta.get("vectors", {}).values(),
            *({"file": name, **entry} for name, entry in meta.get("files", {}).items()),
        ]
        tables = meta.get("tables", {}).values()
        for name in [e[k] for e in tables for k in ("csv", "jsonl") if k in e]:
            _inside(folder, name, meta_file)
        for entry in entries:
            file = _inside(folder, entry["file"], meta_file)
            size = file.stat().st_size
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
        inputs = {n: self._load(folder, e, mmap) for n, e in meta.get("inputs", {}).items()}
        extra = {n: self._load(folder, e, mmap) for n, e in meta.get("extra", {}).items()}
        stored = meta.get("vectors", {})
        generated = self._load(folder, stored["generated"], mmap) if "generated" in stored else None
        try:
            return LossReport(
                task=meta["task"],
                generated=generated,
                num_classes=int(meta["num_classes"]),
                reduction=meta.get("reduction", "mean"),
                inputs=inputs,
                extra=extra,
                **arrays,
            )
        except (TypeError, ValueError, KeyError, IndexError) as error:
            raise RunFormatError(
                f"File {str(folder / META_FILE)!r} describes arrays that do not make an epoch "
                f"({type(error).__name__}: {error})."
            ) from None

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
        """Path of an extra file stored with one epoch (see :meth:`files`).

        Only files that the epoch's ``meta.json`` lists, as regular files inside the epoch
        folder (never a symbolic link), are given.
        """
        if name not in self.meta(epoch).get("files", {}):
            raise KeyError(f"No file {name!r} in epoch {self._resolve(epoch)}.")
        folder = self.epoch_dir(epoch)
        return _inside(folder, name, folder / META_FILE)

    def table(self, name: str, epoch: int = -1) -> pd.DataFrame:
        """A per-epoch table written next to the arrays (``hardest``, features, ...)."""
        meta = self.meta(epoch)
        entry = meta.get("tables", {}).get(name)
        if entry is None:
            tables = list(meta.get("tables", {}))
            raise KeyError(f"No table {name!r} in epoch {meta['epoch']}; tables are {tables}.")
        file = _inside(self.epoch_dir(epoch), entry["csv"], self.epoch_dir(epoch) / META_FILE)
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
        """Every example of one epoch as a table, decoded with that epoch's vocabularies."""
        options = {**self.decoding(epoch), **decoding}
        # Free-running outputs are stored as ids; to_frame decodes their text.
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
        from keras_erranalysis.analysis._sequence_dynamics import sequence_probabilities

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
        if not sequence:
            return compute_dynamics(
                columns("true_prob"),
                columns("margin"),
                columns("correct"),
                loss=columns("loss"),
                prediction=columns("prediction"),
                label=np.asarray(self.array("label", last)),
                example_id=ids,
                epochs=chosen,
                **options,
            )
        # Example-level throughout, from the recorded token probabilities (so runs written
        # before the pass recorded the weakest token's probability read the same).
        mask = np.asarray(self.array("token_mask", last))
        weakest, per_token = [], []
        for epoch in chosen:
            low, mean = sequence_probabilities(self.array("token_true_prob", epoch), mask)
            weakest.append(low.astype(np.float32))
            per_token.append(mean.astype(np.float32))
        return compute_dynamics(
            weakest,
            columns("margin"),
            columns("correct"),
            loss=columns("loss"),
            sequence_prob=per_token,
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
        from keras_erranalysis.analysis._mislabeled import likely_mislabeled

        dyn = self.dynamics(**options)
        return likely_mislabeled(dyn, k, method=method, threshold=threshold)

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
        frame = self.report(epoch).select(rows).to_frame(**self.decoding(epoch))
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
