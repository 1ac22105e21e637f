"""Present: TensorBoard summaries and embedding-projector files of the error analysis.

:class:`SummaryWriter` writes, per analyzed epoch, under ``log_dir/<subset>`` (``train`` and
``validation`` kept apart, as Keras' own ``TensorBoard`` callback does):

- scalars ``erranalysis/loss_mean``, ``loss_median``, ``error_rate``, ``exact_match_rate``
  (sequence outputs), ``nonfinite_losses`` and ``likely_mislabeled`` (when given); with
  free-running outputs also ``generated_corpus_bleu``, ``generated_chrf``,
  ``generated_rouge_l``, ``generated_exact_match``, ``teacher_forced_exact_match`` and
  ``exposure_gap_rate`` (:func:`generation_scalars`);
- histograms ``erranalysis/loss``, ``confidence``, ``margin`` (finite values only);
- text ``erranalysis/hardest``: the hardest examples as a markdown table (with the
  generated output beside the teacher-forced prediction when the run decoded) in which every
  user string is escaped (a ``|``, a newline, a backtick or ``<script>`` cannot break the
  table or inject markup);
- images: any matplotlib figure (attention heatmaps, data map, feature plots), as PNG;
- the embedding projector: a TF checkpoint holding the embedding variable, a
  ``projector_config.pbtxt`` naming it, and a metadata TSV, all in the subset's folder.
  Keras 3's own callback names a checkpoint tensor it never writes, so its projector
  output does not load; this one does (checked against a live TensorBoard in the tests).

The ``tf.summary`` writers are created on first use, so no empty event file appears for a
subset that never gets a summary.

Example:
    >>> writer = SummaryWriter("runs/ea/tensorboard")  # doctest: +SKIP
    >>> writer.log_report(report, step=1)  # doctest: +SKIP
    >>> writer.close()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._columns import (
    GENERATION_NUMBERS,
    HARDEST_TEXT_COLUMNS,
    PROJECTOR_COLUMNS,
)
from keras_erranalysis._loss_report import finite_mean
from keras_erranalysis.analysis._ranking import rank_examples
from keras_erranalysis.present._figures import figure_png
from keras_erranalysis.present._text import _tsv_rows, markdown_cell, markdown_table, tsv_cell

PREFIX = "erranalysis"


PROJECTOR_CONFIG = "projector_config.pbtxt"


CHECKPOINT_STATE = "checkpoint"


_CKPT_PREFIX = "projector-"


_META_PREFIX = "projector_metadata-"


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def report_scalars(report: Any, *, likely_mislabeled: int | None = None) -> dict[str, float]:
    """The per-epoch summary numbers written as TensorBoard scalars.

    Args:
        report: A :class:`~keras_erranalysis.LossReport`.
        likely_mislabeled: Number of examples flagged as likely mislabeled, if known.

    Returns:
        ``{"loss_mean", "loss_median", "error_rate", "nonfinite_losses"}`` (the loss numbers
        over examples with a finite loss), plus ``exact_match_rate`` and
        ``token_accuracy`` for sequence outputs and ``likely_mislabeled`` when given.
    """
    loss = np.asarray(report.loss, dtype=np.float64)
    finite = np.isfinite(loss)
    correct = np.asarray(report.correct, dtype=bool)
    values = {
        "loss_mean": finite_mean(loss),
        "loss_median": float(np.median(loss[finite])) if finite.any() else float("nan"),
        "error_rate": float(1.0 - correct.mean()) if correct.size else float("nan"),
        "nonfinite_losses": float((~finite).sum()),
    }
    if report.is_sequence:
        values["exact_match_rate"] = float(correct.mean()) if correct.size else float("nan")
        counted = np.asarray(report.n_tokens) > 0
        accuracy = np.asarray(report.token_accuracy, dtype=np.float64)
        values["token_accuracy"] = float(accuracy[counted].mean()) if counted.any() else 0.0
    if likely_mislabeled is not None:
        values["likely_mislabeled"] = float(likely_mislabeled)
    return values


def generation_scalars(table: pd.DataFrame) -> dict[str, float]:
    """The free-running outputs' corpus numbers (the ``generation`` table) as scalars.

    Returns:
        ``generated_corpus_bleu``, ``generated_chrf``, ``generated_rouge_l``,
        ``generated_exact_match``, ``teacher_forced_exact_match`` and
        ``exposure_gap_rate``, those the table holds.
    """
    return {
        name: float(table[column].iloc[0])
        for column, name in GENERATION_NUMBERS.items()
        if column in table and len(table)
    }


class SummaryWriter:
    """TensorBoard summaries of the error analysis, one lazily created writer per subset.

    Args:
        log_dir: TensorBoard folder; each subset writes to ``log_dir/<subset>``.
        subset: Default subset (``"validation"`` or ``"train"``; any folder name works).
        max_text_chars: Longest text shown per table cell.

    Example:
        >>> with SummaryWriter("runs/ea/tensorboard") as writer:  # doctest: +SKIP
        ...     writer.log_report(report, step=3)
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        subset: str = "validation",
        max_text_chars: int = 200,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.subset = _check_subset(subset)
        self.max_text_chars = max_text_chars
        self._writers: dict[str, Any] = {}

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SummaryWriter({str(self.log_dir)!r}, open={sorted(self._writers)})"

    def path(self, subset: str | None = None) -> Path:
        """The folder of one subset."""
        return self.log_dir / _check_subset(subset or self.subset)

    def _writer(self, subset: str | None):
        import tensorflow as tf

        name = _check_subset(subset or self.subset)
        if name not in self._writers:
            path = self.path(name)
            path.mkdir(parents=True, exist_ok=True)
            self._writers[name] = tf.summary.create_file_writer(str(path))
        return self._writers[name]

    # -- single summaries --------------------------------------------------------------

    def scalars(self, values: Mapping[str, float], step: int, *, subset: str | None = None) -> None:
        """Writes ``erranalysis/<name>`` scalars (NaN values are skipped)."""
        import tensorflow as tf

        with self._writer(subset).as_default(step=step):
            for name, value in values.items():
                if value is not None and np.isfinite(value):
                    tf.summary.scalar(f"{PREFIX}/{_check_name(name)}", float(value))

    def histograms(
        self,
        values: Mapping[str, np.ndarray],
        step: int,
        *,
        subset: str | None = None,
        buckets: int = 30,
    ) -> None:
        """Writes ``erranalysis/<name>`` histograms of the finite values of each array."""
        import tensorflow as tf

        with self._writer(subset).as_default(step=step):
            for name, array in values.items():
                data = np.asarray(array, dtype=np.float64).reshape(-1)
                data = data[np.isfinite(data)]
                if data.size:
                    tf.summary.histogram(f"{PREFIX}/{_check_name(name)}", data, buckets=buckets)

    def text(self, name: str, markdown: str, step: int, *, subset: str | None = None) -> None:
        """Writes ``erranalysis/<name>`` as text (markdown); escape user text before."""
        import tensorflow as tf

        with self._writer(subset).as_default(step=step):
            tf.summary.text(f"{PREFIX}/{_check_name(name)}", markdown)

    def images(
        self,
        figures: Mapping[str, Any],
        step: int,
        *,
        subset: str | None = None,
        close: bool = False,
    ) -> None:
        """Writes matplotlib figures (or PNG bytes) as ``erranalysis/<name>`` images.

        Args:
            figures: Image name -> ``matplotlib.figure.Figure`` or PNG bytes.
            step: The epoch.
            subset: Subset folder (default: the writer's).
            close: Close each figure after writing (frees its memory).
        """
        import tensorflow as tf

        with self._writer(subset).as_default(step=step):
            for name, figure in figures.items():
                image = tf.io.decode_png(figure_png(figure), channels=4)
                tf.summary.image(f"{PREFIX}/{_check_name(name)}", image[None], max_outputs=1)
                if close and hasattr(figure, "savefig"):
                    import matplotlib.pyplot as plt

                    plt.close(figure)

    # -- one analyzed epoch ------------------------------------------------------------

    def log_report(
        self,
        report: Any,
        step: int,
        *,
        frame: pd.DataFrame | None = None,
        k: int = 20,
        by: str = "loss",
        likely_mislabeled: int | None = None,
        figures: Mapping[str, Any] | None = None,
        subset: str | None = None,
        epoch: int | None = None,
    ) -> dict[str, float]:
        """Writes every summary of one analyzed epoch and returns its scalars.

        Args:
            report: The epoch's :class:`~keras_erranalysis.LossReport`.
            step: TensorBoard's step (x axis): Keras' 0-based epoch index, as Keras' own
                ``epoch_*`` scalars use.
            frame: ``report.to_frame(...)`` with decoded text (default: undecoded).
            k: Rows of the hardest-example table.
            by: Ranking of that table (see :func:`~keras_erranalysis.rank_examples`).
            likely_mislabeled: Number of likely mislabeled examples, written as a scalar.
            figures: Name -> matplotlib figure, written as images (closed afterwards).
            subset: Subset folder (default: the writer's).
            epoch: The run's epoch number, named in the text (default: ``step``).

        Returns:
            The scalars written (see :func:`report_scalars`).
        """
        values = report_scalars(report, likely_mislabeled=likely_mislabeled)
        self.scalars(values, step, subset=subset)
        self.histograms(
            {
                "loss": report.loss,
                "confidence": report.confidence,
                "margin": report.margin,
            },
            step,
            subset=subset,
        )
        table = frame if frame is not None else report.to_frame()
        hardest = rank_examples(table, by=by, k=k)
        shown = step if epoch is None else epoch
        title = f"**{len(hardest)} hardest examples by {markdown_cell(by)}** (epoch {shown})\n\n"
        self.text(
            "hardest",
            title + markdown_table(hardest, HARDEST_TEXT_COLUMNS, max_chars=self.max_text_chars),
            step,
            subset=subset,
        )
        if figures:
            self.images(figures, step, subset=subset, close=True)
        self.flush()
        return values

    def projector(
        self,
        vectors: np.ndarray,
        metadata: pd.DataFrame,
        *,
        step: int,
        subset: str | None = None,
    ) -> Path:
        """Writes embedding-projector files for ``vectors`` (see :func:`write_projector`)."""
        return write_projector(self.path(subset), vectors, metadata, step=step)

    # -- lifecycle ---------------------------------------------------------------------

    def flush(self) -> None:
        """Flushes every open writer to disk."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Closes every open writer (a later write opens a new event file)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _check_subset(subset: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-.]+", subset or "") or subset in (".", ".."):
        raise ValueError(
            f"subset must be a plain folder name like 'validation' or 'train', got {subset!r}."
        )
    return subset


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-./]+", name):
        raise ValueError(
            f"Summary name {name!r} must use letters, digits, '_', '-', '.' or '/' only."
        )
    return name


def projector_metadata(frame: pd.DataFrame, *, regions: Any = None) -> pd.DataFrame:
    """Picks the projector's metadata columns from a per-example table.

    Args:
        frame: ``LossReport.to_frame(...)`` (one row per embedded example, same order).
        regions: Optional data-map region per example (``dynamics`` ``region`` column),
            aligned with ``frame``'s rows.

    Returns:
        A table with ``example_id``, the decoded texts, ``label``, ``prediction``, ``loss``,
        ``correct`` and ``region`` where available. Sequence labels (arrays) are left out.
    """
    columns = [c for c in PROJECTOR_COLUMNS if c in frame.columns]
    table = frame[columns].copy()
    if regions is not None:
        regions = np.asarray(regions)
        if regions.shape[0] != len(table):
            raise ValueError(
                f"regions has {regions.shape[0]} entries but the table {len(table)} rows."
            )
        table["region"] = regions
    return table


def write_projector(
    directory: str | os.PathLike,
    vectors: np.ndarray,
    metadata: pd.DataFrame,
    *,
    step: int,
    tensor: str | None = None,
) -> Path:
    """Writes files that TensorBoard's embedding projector loads, replacing older ones.

    Writes into ``directory`` (a TensorBoard run folder, e.g. ``.../validation``): a TF
    checkpoint ``projector-<step>`` holding the vectors as a variable, the ``checkpoint``
    state file pointing at it (relative, so the folder can be moved), a metadata TSV with
    a header row (every cell free of tabs and line breaks) and ``projector_config.pbtxt``
    naming the checkpoint's tensor and the TSV. Files of an older step are removed. The
    tensor is named after the step (``epoch_0003``): a running TensorBoard caches tensors
    by name, so a new epoch must not reuse the old name.

    Args:
        directory: The run folder.
        vectors: ``(N, D)`` embeddings (stored as float32).
        metadata: ``N`` rows of metadata (see :func:`projector_metadata`).
        step: The epoch.
        tensor: Variable name (default ``epoch_<step:04d>``).

    Returns:
        The path of ``projector_config.pbtxt``.

    Raises:
        ValueError: For a non-2-D array, a row-count mismatch or non-finite values.
        FileExistsError: When ``directory`` holds a ``checkpoint`` file that is not ours
            (e.g. model checkpoints), which this function would otherwise take over.
    """
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    from keras_erranalysis.run._files import write_bytes_atomic

    values = np.asarray(vectors, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"vectors must be a non-empty (N, D) array, got shape {values.shape}.")
    if len(metadata) != values.shape[0]:
        raise ValueError(
            f"metadata has {len(metadata)} rows but vectors {values.shape[0]}: pass one row "
            "per embedded example, in the same order."
        )
    if not np.isfinite(values).all():
        raise ValueError("vectors hold NaN or infinite values; the projector cannot place them.")
    name = tensor or f"epoch_{step:04d}"
    if not _NAME.match(name):
        raise ValueError(f"tensor name {name!r} must be a letter then letters, digits or '_'.")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / CHECKPOINT_STATE
    if state.exists() and f'"{_CKPT_PREFIX}' not in state.read_text(errors="replace"):
        raise FileExistsError(
            f"{str(state)!r} belongs to other checkpoints; the projector needs the folder's "
            "checkpoint state file. Write the projector to a TensorBoard run folder of its own."
        )
    prefix = f"{_CKPT_PREFIX}{step:04d}"
    checkpoint = tf.train.Checkpoint(**{name: tf.Variable(values, trainable=False, name=name)})
    checkpoint.write(str(folder / prefix))
    meta_name = f"{_META_PREFIX}{step:04d}.tsv"
    header = "\t".join(tsv_cell(c) for c in metadata.columns)
    write_bytes_atomic(folder / meta_name, f"{header}\n{_tsv_rows(metadata)}".encode())
    config = ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = meta_name
    embedding.tensor_shape.extend(values.shape)
    write_bytes_atomic(folder / PROJECTOR_CONFIG, text_format.MessageToString(config).encode())
    # The state file last: a reader that sees it finds the checkpoint complete.
    write_bytes_atomic(
        state,
        f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n'.encode(),
    )
    for old in folder.iterdir():
        stale = old.name.startswith((_CKPT_PREFIX, _META_PREFIX)) and not old.name.startswith(
            (prefix + ".", meta_name)
        )
        if stale:
            old.unlink(missing_ok=True)
    return folder / PROJECTOR_CONFIG


# Resolution of the data map in TensorBoard (its default 100 dpi makes a small image).
DATA_MAP_DPI = 170


def tensorboard_step(epoch: int, keras_epoch: int | None = None) -> int:
    """TensorBoard's step for a run epoch: Keras' 0-based epoch index.

    Keras' ``TensorBoard`` callback writes ``epoch_loss`` & co. at step ``epoch`` (0 for
    the first epoch), while a run counts epochs from 1: our summaries use Keras' step, so
    both line up on one x axis. ``keras_epoch`` (stored by the callback) wins; without it,
    ``epoch - 1``.
    """
    return int(keras_epoch) if keras_epoch is not None else int(epoch) - 1


def markdown_list(text: str) -> str:
    """Each line of ``text`` as an escaped markdown list item.

    TensorBoard renders it as a list, where one escaped cell would be one paragraph with
    ``↵`` between the lines.
    """
    lines = [_BULLET.sub("", line) for line in str(text).splitlines() if line.strip()]
    return "\n".join(f"- {markdown_cell(line, max_chars=None)}" for line in lines)


# A line that is already a list item ("- ...", as features_summary writes them) keeps one
# bullet, not an escaped dash after ours.
_BULLET = re.compile(r"^\s*[-*\u2022]\s+")


def log_epoch(
    writer: SummaryWriter,
    step: int,
    report: Any,
    *,
    frame: pd.DataFrame | None = None,
    run: Any = None,
    vectors: np.ndarray | None = None,
    k: int = 20,
    figures: Mapping[str, Any] | None = None,
    tensorboard_step: int | None = None,
) -> dict[str, float]:
    """Writes one analyzed epoch: summaries, the data map and the projector.

    Args:
        writer: Where to write.
        step: The run's epoch number (named in the text and the projector's files).
        report: The epoch's :class:`~keras_erranalysis.LossReport`.
        frame: ``report.to_frame(...)`` with decoded text.
        run: The run folder (:class:`~keras_erranalysis.run.Run`) holding this epoch and
            the earlier ones: gives the likely-mislabeled count, the data map and each
            example's data-map region. Without it, those are left out.
        vectors: ``(N, D)`` embeddings of the report's examples, for the projector.
        k: Rows of the hardest-example table.
        figures: More figures to write (e.g. attention heatmaps), name -> Figure.
        tensorboard_step: TensorBoard's x-axis step (default: ``step - 1``, Keras' epoch
            index; see :func:`tensorboard_step`).

    Returns:
        The scalars written.
    """
    from keras_erranalysis.analysis._mislabeled import likely_mislabeled

    table = frame if frame is not None else report.to_frame()
    images = dict(figures or {})
    flagged = None
    regions = None
    if run is not None and run.epochs:
        dyn = run.dynamics()
        if np.array_equal(dyn.index.to_numpy(), np.asarray(report.example_id)):
            try:
                flagged = int(len(likely_mislabeled(dyn)))
            except ValueError:  # no finite dynamics (a diverged run): no count to give
                flagged = None
            regions = dyn["region"].to_numpy()
            from keras_erranalysis.present._figures import plot_data_map

            data_map = plot_data_map(dyn)
            data_map.set_dpi(DATA_MAP_DPI)
            images["data_map"] = data_map
    values = writer.log_report(
        report,
        step - 1 if tensorboard_step is None else tensorboard_step,
        frame=table,
        k=k,
        likely_mislabeled=flagged,
        figures=images,
        epoch=step,
    )
    if vectors is not None:
        writer.projector(vectors, projector_metadata(table, regions=regions), step=step)
    return values
