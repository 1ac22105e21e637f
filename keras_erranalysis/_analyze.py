"""Analyze a saved Keras model over data files, streamed, on one process or several workers.

:func:`analyze` loads a saved model (``.keras``), reads a dataset from TFRecord files, a
CSV or Parquet file or a ``.npz`` archive in chunks, runs the compiled loss pass of
:func:`~keras_erranalysis.compute_losses` on each chunk and writes the results as one
epoch of the run format (:func:`~keras_erranalysis.load_run` reads it). Memory stays flat
as the data grows: each chunk's results go to disk at once and are merged file to file.

Under ``tf.distribute.MultiWorkerMirroredStrategy`` (a cluster described by ``TF_CONFIG``)
every worker reads the same chunks, tf.data gives each worker its share of every batch
(``AutoShardPolicy.DATA``), example ids travel with the batches and the per-example
results are gathered back to every worker in id order; only the chief writes the run
folder, the other workers write nothing. The results equal a single-process run's.

Keras 3 ``model.fit`` does not work under that strategy (keras-team/keras issue 20585);
this pass does not use ``fit``: train however you train, then analyze with this.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from keras_erranalysis._columns import EXAMPLE_COLUMNS, TOKEN_COLUMNS
from keras_erranalysis._errors import AnalyzeError
from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.analysis._ranking import log_views
from keras_erranalysis.analysis._sequence_metrics import GENERATED_COLUMNS
from keras_erranalysis.compute._model import (
    Cluster,
    _InputSpec,
    _model_inputs,
    cluster_from_tf_config,
    load_model,
    make_strategy,
)
from keras_erranalysis.options import Decoding
from keras_erranalysis.pipeline import epoch_tables, text_features, with_columns
from keras_erranalysis.run._sources import (
    DEFAULT_CHUNK_SIZE,
    LABEL_CANDIDATES,
    detect_format,
    open_source,
)

_STAGING_PREFIX = ".analyze-staging-"


@dataclasses.dataclass
class _Plan:
    """Which columns feed which model input, and which column holds the labels."""

    inputs: list[tuple[_InputSpec | None, list[str]]]
    label: str
    as_dict: bool

    @property
    def columns(self) -> list[str]:
        names = [c for _, cols in self.inputs for c in cols]
        return [*dict.fromkeys(names), self.label]

    def shapes(self) -> dict[str, Any]:
        """Per-example shape hints for single-column inputs (TFRecord parsing)."""
        hints: dict[str, Any] = {}
        for spec, cols in self.inputs:
            if spec is not None and len(cols) == 1:
                hints[cols[0]] = spec.shape
        return hints


def plan_columns(
    model: Any,
    columns: Sequence[str],
    *,
    label_column: str | None = None,
    features: Sequence[str] | None = None,
) -> _Plan:
    """Decides which data columns feed which model inputs, with errors naming the fix."""
    available = list(columns)
    if label_column is None:
        label_column = next((c for c in LABEL_CANDIDATES if c in available), None)
        if label_column is None:
            raise AnalyzeError(
                f"No label column found (tried {list(LABEL_CANDIDATES)}) among the data's "
                f"columns {available[:20]}: name it with label_column= (--label-column)."
            )
    elif label_column not in available:
        raise AnalyzeError(
            f"Label column {label_column!r} is not in the data; its columns are "
            f"{available[:20]}. Pass --label-column with one of them."
        )
    if features is not None:
        missing = [f for f in features if f not in available]
        if missing:
            raise AnalyzeError(
                f"Feature column(s) {missing} are not in the data; its columns are "
                f"{available[:20]}. Fix --features."
            )
    specs = _model_inputs(model)
    pool = list(features) if features is not None else [c for c in available if c != label_column]
    if len(specs) > 1:
        names = [s.name for s in specs]
        missing = [n for n in names if n not in pool]
        if missing:
            raise AnalyzeError(
                f"Model/data mismatch: the model has inputs {names} but the data has no "
                f"column(s) {missing} (columns {pool[:20]}). Name the data's columns after "
                "the model's inputs."
            )
        return _Plan([(s, [s.name]) for s in specs], label_column, as_dict=True)
    spec = specs[0] if specs else None
    if spec is not None and spec.name in pool and features is None:
        return _Plan([(spec, [spec.name])], label_column, as_dict=False)
    if features is None and "x" in pool:
        pool = ["x"]
    if not pool:
        raise AnalyzeError(
            f"The data has no feature columns besides the label {label_column!r}: pass --features."
        )
    return _Plan([(spec, pool)], label_column, as_dict=False)


def _model_input(spec: _InputSpec | None, cols: list[str], chunk: Mapping[str, np.ndarray]):
    if len(cols) == 1:
        value = np.asarray(chunk[cols[0]])
    else:
        parts = [np.asarray(chunk[c]) for c in cols]
        if any(p.dtype.kind in "USO" for p in parts):
            raise AnalyzeError(
                f"Columns {cols} mix text with numbers: a text column must be its own model "
                "input. Pick the columns with --features."
            )
        value = np.column_stack([p.reshape(len(p), -1) for p in parts])
    if spec is None:
        return value
    where = f"columns {cols}" if len(cols) > 1 else f"column {cols[0]!r}"
    data_shape = value.shape[1:]
    wanted = spec.shape
    fits = len(data_shape) == len(wanted) and all(
        w is None or w == d for w, d in zip(wanted, data_shape)
    )
    if not fits and math.prod(data_shape) == math.prod(wanted) and None not in wanted:
        value = value.reshape((len(value), *wanted))  # flat records of an image, say
        fits = True
    if not fits:
        raise AnalyzeError(
            f"Model/data mismatch: model input {spec.name!r} expects examples of shape "
            f"{tuple(wanted)} but {where} hold examples of shape {tuple(data_shape)}. "
            "Pick the feature columns with --features (in the model's order)."
        )
    wanted_kind = np.dtype(spec.dtype).kind if spec.dtype != "string" else "U"
    if wanted_kind == "U":
        if value.dtype.kind not in "US":
            raise AnalyzeError(
                f"Model/data mismatch: model input {spec.name!r} takes text but {where} "
                f"hold {value.dtype}."
            )
        return value
    if value.dtype.kind in "USO":
        raise AnalyzeError(
            f"Model/data mismatch: model input {spec.name!r} takes {spec.dtype} numbers but "
            f"{where} hold text."
        )
    return value.astype(spec.dtype, copy=False)


def _kept_inputs(x: Any) -> dict[str, np.ndarray]:
    """The inputs the core keeps for decoding (token ids, text), taken from the host chunk.

    Same rule and names as ``_pass.kept_inputs`` (integer or text, at most 2-D), but read
    from the chunk already in id order rather than gathered from the workers batch by
    batch, which costs a collective per batch and cannot carry text.
    """
    named = dict(x) if isinstance(x, Mapping) else {"input": x}
    return {
        name: value
        for name, value in named.items()
        if value.ndim <= 2 and value.dtype.kind in "iuUS"
    }


def _attention_columns(
    model: Any, x: Any, y: Any, batch_size: int, options: Any, jit_compile: Any, workers: int
) -> dict[str, np.ndarray]:
    """Per-example attention diagnostics of one chunk, in data order."""
    import tensorflow as tf

    from keras_erranalysis.compute._attention import attention_diagnostics

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).with_options(options)
    result = attention_diagnostics(
        model, dataset, jit_compile=False if workers > 1 else jit_compile, verbose=0
    )
    return dict(result.diagnostics)


def _labels(chunk: Mapping[str, np.ndarray], column: str) -> np.ndarray:
    values = np.asarray(chunk[column])
    if values.dtype.kind in "USO":
        raise AnalyzeError(
            f"Label column {column!r} holds text: labels must be class ids (numbers). Map "
            "the class names to 0..C-1 first."
        )
    return values


_ARRAY_FIELDS = (*EXAMPLE_COLUMNS, "label", "prediction", *TOKEN_COLUMNS, "generated")


class ChunkedResults:
    """Per-chunk results written to disk at once, merged file to file into whole columns.

    Memory holds one chunk and the hardest-example candidates (``top_k`` rows per view
    per chunk), never every example. The hardest-example table equals the one a single
    :func:`~keras_erranalysis.log_views` over all examples gives: each view's
    top ``k`` is among the union of the chunks' top ``k``, and ties keep id order.

    Args:
        folder: A folder for the chunk files (created; deleted by :meth:`close`).
        top_k: Rows per view in the hardest-example table.
        decoding: ``vocab``, ``input_vocab``, ``label_names`` for the decoded table.
    """

    def __init__(self, folder: Path, *, top_k: int, decoding: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.top_k = top_k
        self.decoding = dict(decoding)
        self.meta: dict[str, Any] | None = None
        self.stems: dict[tuple[str, str], str] = {}
        self.parts: dict[tuple[str, str], list[tuple[tuple[int, ...], np.dtype]]] = {}
        self.candidates: list[pd.DataFrame] = []
        self.count = 0
        self.chunks = 0

    def add(self, report: LossReport) -> None:
        """Writes one chunk's results and keeps its hardest-example candidates."""
        meta = {
            "task": report.task,
            "num_classes": report.num_classes,
            "reduction": report.reduction,
        }
        if self.meta is None:
            self.meta = meta
        elif meta != self.meta:
            raise AnalyzeError(f"Chunks disagree on the task: {self.meta} vs {meta}.")
        arrays = _report_arrays(report)
        if self.chunks and set(arrays) != set(self.parts):
            raise AnalyzeError("Chunks disagree on the columns they hold.")
        for key, value in arrays.items():
            stem = self.stems.setdefault(key, f"col{len(self.stems):03d}")
            value = np.ascontiguousarray(value)
            np.save(self.folder / f"{stem}-{self.chunks:06d}.npy", value, allow_pickle=False)
            self.parts.setdefault(key, []).append((value.shape, value.dtype))
        views = log_views(report.scalars(), k=self.top_k)
        rows = np.isin(report.example_id, views["example_id"].to_numpy())
        self.candidates.append(report.select(rows).to_frame(**self.decoding))
        self.count += len(report)
        self.chunks += 1

    def hardest(self) -> pd.DataFrame:
        """The hardest-example table over every chunk."""
        frame = pd.concat(self.candidates, ignore_index=True)
        return log_views(frame, k=self.top_k)

    def merge(self) -> LossReport:
        """Merges the chunk files into one ``.npy`` per column; returns them memory-mapped."""
        if self.meta is None:
            raise AnalyzeError("The data holds no examples.")
        merged: dict[tuple[str, str], np.ndarray] = {}
        for key, parts in self.parts.items():
            tail = tuple(max(shape[d] for shape, _ in parts) for d in range(1, len(parts[0][0])))
            dtype = np.result_type(*[dtype for _, dtype in parts])
            path = self.folder / f"{self.stems[key]}.npy"
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (self.count, *tail),
            }
            with open(path, "wb") as out:
                np.lib.format.write_array_header_2_0(out, header)
                for i in range(self.chunks):
                    part_path = self.folder / f"{self.stems[key]}-{i:06d}.npy"
                    part = np.load(part_path, allow_pickle=False)
                    out.write(np.ascontiguousarray(_pad_to(part, tail).astype(dtype)).tobytes())
                    part_path.unlink()
            merged[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        fields = {name: merged[("array", name)] for kind, name in merged if kind == "array"}
        return LossReport(
            **self.meta,
            **fields,
            inputs={name: value for (kind, name), value in merged.items() if kind == "input"},
            extra={name: value for (kind, name), value in merged.items() if kind == "extra"},
        )

    def close(self) -> None:
        """Deletes the chunk folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _report_arrays(report: LossReport) -> dict[tuple[str, str], np.ndarray]:
    arrays = {}
    for name in _ARRAY_FIELDS:
        value = getattr(report, name)
        if value is not None:
            arrays[("array", name)] = value
    for name, value in report.inputs.items():
        arrays[("input", name)] = value
    for name, value in report.extra.items():
        arrays[("extra", name)] = np.asarray(value)
    return arrays


def _pad_to(part: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
    if part.shape[1:] == tail:
        return part
    pad = [(0, 0)] + [(0, t - s) for s, t in zip(part.shape[1:], tail)]
    fill: Any = False if part.dtype == bool else ("" if part.dtype.kind in "US" else 0)
    return np.pad(part, pad, constant_values=fill)


@dataclasses.dataclass
class AnalyzeResult:
    """What :func:`analyze` did.

    Attributes:
        log_dir: The run folder.
        epoch: The run epoch the results were written as.
        n_examples: Examples analyzed.
        epoch_dir: The written epoch folder (None on a non-chief worker, which writes
            nothing).
        num_workers: Processes that took part.
        is_chief: Whether this process wrote the results.
    """

    log_dir: Path
    epoch: int
    n_examples: int
    epoch_dir: Path | None
    num_workers: int
    is_chief: bool


def analyze(
    model: Any,
    data: str | os.PathLike,
    log_dir: str | os.PathLike,
    *,
    label_column: str | None = None,
    features: Sequence[str] | None = None,
    format: str | None = None,  # noqa: A002 - the user-facing name
    feature_spec: Mapping[str, Any] | str | None = None,
    batch_size: int = 256,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    epoch: int | None = None,
    loss: Any = None,
    output: str | int | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    ignore_class: int | None = None,
    from_logits: bool | None = None,
    top_k: int = 20,
    vocab: Any = None,
    input_vocab: Any = None,
    label_names: Any = None,
    attention: bool = False,
    generate: Any = None,
    jit_compile: bool | Literal["auto"] = "auto",
    safe_mode: bool = True,
    strategy: Any = None,
    cluster: Cluster | None = None,
    verbose: int = 1,
) -> AnalyzeResult:
    """Analyses a saved model over a data file and writes one epoch of the run format.

    Args:
        model: A ``.keras`` path (loaded here, under ``strategy``) or a Keras model.
        data: TFRecord file / folder / glob, a ``.csv``/``.tsv``, ``.parquet`` or ``.npz``.
        log_dir: Run folder to write (created; an existing run gets one more epoch).
        label_column: Column (npz key, TFRecord feature) holding the labels; default the
            first of ``label``, ``labels``, ``y``, ``target`` present.
        features: Columns feeding the model. Default: columns named like the model's
            inputs, else (one input) ``x`` if present, else every column but the label,
            stacked in file order.
        format: ``"tfrecord"``, ``"csv"``, ``"parquet"`` or ``"npz"`` (default: from the name).
        feature_spec: TFRecord parsing: ``{name: tf.io.FixedLenFeature | VarLenFeature |
            [dtype, shape or None]}`` or that as JSON. Default: inferred from the first
            record and the model's input shapes; variable-length features are padded
            with 0 per chunk.
        batch_size: Global batch size of the pass.
        chunk_size: Examples read, analyzed and written at a time (bounds the memory).
        epoch: Run epoch number to write as (default: one after the last in ``log_dir``).
        loss: Loss (default: the saved model's compiled loss, unreduced).
        output: Output to analyze in a multi-output model.
        reduction: ``"mean"`` or ``"sum"`` over a sequence's tokens, for ranking.
        ignore_class: Label id that does not count.
        from_logits: Whether the output is logits (default: the loss's own setting).
        top_k: Rows per view in the hardest-example table.
        vocab: Decodes target tokens (stored in the run).
        input_vocab: Decodes input tokens (stored in the run).
        label_names: Class names of a classifier (stored in the run).
        attention: Also compute per-example attention diagnostics of every attention
            layer (:func:`~keras_erranalysis.compute.attention_diagnostics`), stored
            as extra columns ``attn_entropy/<layer>``, ... .
        generate: Also decode every example free-running (seq2seq), as the callback's
            ``"generate"`` analysis does: ``"greedy"`` or ``True``, a beam width, a function
            (inputs batch -> ``(B, T)`` ids) or a
            :class:`~keras_erranalysis.GenerationAnalysis`. Adds the same ``generated_*``
            columns, the ids (``Run.array("generated")``) and the ``generation`` table of
            corpus numbers (BLEU, chrF, ROUGE-L, exact match over all examples).
        jit_compile: XLA for the pass (``"auto"`` = off under several workers, where the
            cross-worker gather has no XLA kernel).
        safe_mode: Passed to ``keras.models.load_model``.
        strategy: A ``tf.distribute`` strategy; default: ``MultiWorkerMirroredStrategy``
            when ``TF_CONFIG`` describes several workers, else none.
        cluster: This process's place in the cluster (default: from ``TF_CONFIG``).
        verbose: 0 silent, 1 a progress bar (on the chief).

    Returns:
        An :class:`AnalyzeResult`.

    Raises:
        AnalyzeError: For a missing column, a model/data mismatch, or unreadable data.

    Example:
        >>> analyze("model.keras", "val.parquet", "runs/val", label_column="y")  # doctest: +SKIP
        >>> load_run("runs/val").hardest(k=5)  # doctest: +SKIP
    """
    import tensorflow as tf

    from keras_erranalysis.compute._generate import (
        decode_report,
        generation_end_id,
        score_generated,
    )
    from keras_erranalysis.compute._inputs import check_output
    from keras_erranalysis.compute._losses import compute_losses
    from keras_erranalysis.compute._pass import progress_bar
    from keras_erranalysis.options import generation_option
    from keras_erranalysis.pipeline import generation_table
    from keras_erranalysis.run._writer import RunWriter

    if batch_size < 1 or chunk_size < 1:
        raise AnalyzeError(
            f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}."
        )
    if epoch is not None and epoch < 1:
        raise AnalyzeError(f"epoch must be a positive integer, got {epoch}.")
    generation = generation_option(generate)
    cluster = cluster or cluster_from_tf_config()
    if strategy is None and cluster.num_workers > 1:
        strategy = make_strategy(cluster)
    num_workers = cluster.num_workers
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, safe_mode=safe_mode, strategy=strategy)
    check_output(model, output)  # before the run folder is made: the outputs it has
    source = open_source(data, format=format, feature_spec=feature_spec)
    plan = plan_columns(model, source.columns, label_column=label_column, features=features)
    decoding = Decoding(vocab, input_vocab, label_names).as_dict()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    writer = None
    results = None
    if cluster.is_chief:
        writer = RunWriter(log_dir, decoding=decoding)
        writer.acquire_lock()
    try:
        run_epoch = epoch if epoch is not None else (writer.last_epoch() + 1 if writer else 1)
        if writer is not None:
            if (writer.log_dir / f"epoch_{run_epoch:04d}").exists():
                raise AnalyzeError(
                    f"Epoch {run_epoch} already exists in {str(writer.log_dir)!r}: pass "
                    "another epoch (--epoch-label) or another run folder."
                )
            results = ChunkedResults(
                Path(tempfile.mkdtemp(dir=writer.log_dir, prefix=_STAGING_PREFIX)),
                top_k=top_k,
                decoding=decoding,
            )
        progress = progress_bar(
            source.num_rows, verbose if cluster.is_chief else 0, unit_name="example"
        )
        offset = 0
        decode_seconds = 0.0
        for chunk in source.chunks(plan.columns, chunk_size, plan.shapes()):
            n = len(chunk[plan.label])
            if n == 0:
                continue
            xs = [_model_input(spec, cols, chunk) for spec, cols in plan.inputs]
            x = {spec.name: v for (spec, _), v in zip(plan.inputs, xs)} if plan.as_dict else xs[0]
            y = _labels(chunk, plan.label)
            ids = np.arange(offset, offset + n, dtype=np.int64)
            dataset = (
                tf.data.Dataset.from_tensor_slices((x, y, None, ids))
                .batch(batch_size)
                .with_options(options)
            )
            kept = _kept_inputs(x)
            diagnostics = {}
            if attention:
                diagnostics = _attention_columns(
                    model, x, y, batch_size, options, jit_compile, num_workers
                )
            del chunk, xs, x, y
            report = compute_losses(
                model,
                dataset,
                loss=loss,
                output=output,
                reduction=reduction,
                ignore_class=ignore_class,
                from_logits=from_logits,
                keep_inputs=False,
                jit_compile=jit_compile,
                verbose=0,
            )
            report.inputs = kept
            report.extra.update(diagnostics)
            if generation is not None and cluster.is_chief:  # only the chief writes
                started = time.perf_counter()
                decode_report(
                    model,
                    report,
                    generation,
                    vocab=decoding["vocab"],
                    output=output,
                    batch_size=batch_size,
                    jit_compile=jit_compile,
                )
                decode_seconds += time.perf_counter() - started
            if not np.array_equal(report.example_id, ids):
                raise RuntimeError(
                    f"The pass returned {len(report)} results for {n} examples of ids "
                    f"{offset}..{offset + n - 1}: the workers did not all read the same data."
                )
            if results is not None:
                results.add(report)
            offset += n
            del report, dataset
            if progress is not None:
                progress.update(offset)
        if offset == 0:
            raise AnalyzeError(f"The data {os.fspath(data)!r} holds no examples.")
        epoch_dir = None
        if writer is not None and results is not None:
            merged = results.merge()
            info = {
                "source": "analyze",
                "data": os.fspath(data),
                "format": format or detect_format(data),
                "label_column": plan.label,
                "features": [c for _, cols in plan.inputs for c in cols],
                "num_workers": num_workers,
            }
            hardest = results.hardest()
            corpus = None
            if generation is not None:  # corpus numbers need every example: after the merge
                end_id = generation_end_id(generation, decoding["vocab"])
                corpus = score_generated(merged, end_id=end_id, vocab=decoding["vocab"])
                hardest = with_columns(hardest, merged, GENERATED_COLUMNS)
            features = text_features(
                merged, texts=None, input_vocab=decoding["input_vocab"], required=False
            )
            tables = epoch_tables(
                merged,
                decoding=decoding,
                top_k=top_k,
                features=features,
                hardest=hardest,
            )
            if corpus is not None:
                corpus["decode_seconds"] = decode_seconds
                tables["generation"] = generation_table(corpus, generation)
            epoch_dir = writer.write_epoch(run_epoch, merged, tables=tables, info=info)
            del merged
        return AnalyzeResult(
            log_dir=Path(log_dir),
            epoch=run_epoch,
            n_examples=offset,
            epoch_dir=epoch_dir,
            num_workers=num_workers,
            is_chief=cluster.is_chief,
        )
    finally:
        if results is not None:
            results.close()
        if writer is not None:
            writer.release_lock()
