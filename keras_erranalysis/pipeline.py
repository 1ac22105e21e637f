"""One analyzed epoch, the same whoever runs it: pass -> tables -> run folder (-> TensorBoard).

The callback (every analyzed epoch), :func:`~keras_erranalysis.analyze` (a saved model over
data files) and the command line all go through this module, so the same epoch gets the
same tables, files and summaries whoever produced it:

1. compute: :func:`~keras_erranalysis.compute_losses` (with attention diagnostics and
   embeddings when asked for);
2. analysis: :func:`epoch_tables` (hardest examples, per-class metrics, the feature
   comparison) and the attention heatmaps of the hardest and of a fixed watch list;
3. run folder: :meth:`~keras_erranalysis.run.RunWriter.write_epoch`, atomically;
4. TensorBoard (optional): :func:`export_tensorboard` reads a finished run folder, so it
   can also be added afterwards (``keras-erranalysis tensorboard RUN``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis._epoch_heatmaps import (
    hardest_rows,
    inference_attention,
    layer_roles,
    watch_notes,
    watch_update,
)
from keras_erranalysis._epoch_heatmaps import heatmap_rows as heatmap_rows  # re-exported
from keras_erranalysis._loss_report import LossReport, finite_mean
from keras_erranalysis.analysis import (
    causes_summary,
    compare_features,
    counted_padding,
    extract_features,
    features_summary,
    log_views,
    nonfinite_causes,
    per_class_metrics,
    storage_array,
)
from keras_erranalysis.analysis._health import (
    HEALTH_SUMMARY_TABLE,
    HEALTH_TABLE,
    health_summary_lines,
)
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.options import (
    AttentionAnalysis,
    DataHealth,
    EmbeddingAnalysis,
    FeatureAnalysis,
    GenerationAnalysis,
)

DECODING_KEYS = ("vocab", "input_vocab", "label_names")


def epoch_tables(
    report: LossReport,
    *,
    decoding: Mapping[str, Vocabulary | None],
    top_k: int,
    features: Any = None,
    hardest: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """The per-epoch tables every writer of a run folder writes.

    Args:
        report: The epoch's pass.
        decoding: ``{"vocab", "input_vocab", "label_names"}`` (``Decoding(...).as_dict()``).
        top_k: Rows per view of the hardest-example table.
        features: Extracted :class:`~keras_erranalysis.analysis.Features` of the examples
            (same order as the report) for the wrong-vs-right comparison, or ``None``.
        hardest: The hardest-example table when the caller already has it (``analyze``
            ranks chunk by chunk); default: ranked here.

    Returns:
        ``hardest`` (views stacked), ``per_class`` and, when features are given and the
        epoch has both wrong and right examples, ``features``.
    """
    if hardest is None:
        hardest = log_views(report.to_frame(**decoding), k=top_k)
    names = decoding["vocab" if report.is_sequence else "label_names"]
    tables = {
        "hardest": hardest,
        "per_class": per_class_metrics(report, label_names=names).reset_index(),
    }
    if features is not None and (~report.correct).any() and report.correct.any():
        tables["features"] = compare_features(report, features=features, top=200)
    return tables


def text_features(
    report: LossReport,
    *,
    texts: Sequence[str] | None,
    input_vocab: Vocabulary | None,
    required: bool,
) -> Any:
    """Features of the examples' texts for :func:`epoch_tables`, or ``None`` without text.

    Args:
        report: A pass over the examples (gives labels, ids and decodable inputs).
        texts: The raw texts in data order, if the user gave them.
        input_vocab: Decodes token inputs to text when ``texts`` is ``None``.
        required: Raise when there is no text (the user asked for features).

    Raises:
        ValueError: When ``required`` and there is no text, or ``texts`` has the wrong length.
    """
    if texts is None and input_vocab is not None:
        texts = report.input_texts(input_vocab)
    if texts is None:
        if required:
            raise ValueError(
                "features=True needs text: pass texts=[...] or input_vocab= so the inputs "
                "can be decoded."
            )
        return None
    if len(texts) != len(report):
        raise ValueError(f"texts has {len(texts)} entries but the data has {len(report)}.")
    chars = input_vocab is not None and input_vocab.sep == ""
    if chars and any(" " in token for token in input_vocab.tokens or ()):
        chars = False  # word pieces that carry their spaces (a keras-hub tokenizer's)
    return extract_features(
        texts=list(texts),
        tokenizer="char" if chars else "word",
        labels=None if report.is_sequence else report.label,
        example_ids=report.example_id,
        pos=False,
    )


@dataclasses.dataclass
class EpochOutput:
    """What one analyzed epoch produced.

    Attributes:
        report: The pass (with attention diagnostics in ``report.extra`` when asked for).
        tables: Per-epoch tables (:func:`epoch_tables`).
        figures: Heatmaps, name -> matplotlib Figure.
        vectors: ``(N, D)`` embeddings, or ``None``.
        generated: ``(N, max_length)`` free-running output ids, or ``None``.
    """

    report: LossReport
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Any]
    vectors: np.ndarray | None
    generated: np.ndarray | None = None


@dataclasses.dataclass
class EpochPipeline:
    """The work of one analyzed epoch over fixed data, for a model that changes.

    Holds what stays fixed across epochs: the data, the decodings, the extracted text
    features and the watch list of heatmap rows. :meth:`run` does one epoch.

    Attributes:
        data: The examples (batched ``tf.data.Dataset`` or a tuple of arrays).
        decoding: ``Decoding(...).as_dict()``.
        top_k: Rows per view of the hardest-example table.
        pass_options: Keyword options of :func:`~keras_erranalysis.compute_losses`.
        attention: Attention diagnostics and heatmaps, or ``None``.
        embeddings: Stored embeddings, or ``None``.
        features: The feature comparison (``None``: only when the inputs decode to text).
        health: The data-health checks, run once at the first analyzed epoch (``None``: no).
        generation: Free-running (generated) outputs of a seq2seq model (``None``: no).
        verbose: 0 silent, 1 a progress bar and a one-line summary, 2 the line only.
    """

    data: Any
    decoding: dict[str, Vocabulary | None]
    top_k: int = 20
    pass_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    attention: AttentionAnalysis | None = None
    embeddings: EmbeddingAnalysis | None = None
    features: FeatureAnalysis | None = None
    health: DataHealth | None = None
    generation: GenerationAnalysis | None = None
    verbose: int = 1
    _feature_set: Any = dataclasses.field(default=False, repr=False)  # False: not yet
    _watch: list[int] | None = dataclasses.field(default=None, repr=False)
    _watch_update: Any = dataclasses.field(default=None, repr=False)
    _input_finite: Any = dataclasses.field(default=False, repr=False)  # False: not yet
    _padding_checked: bool = dataclasses.field(default=False, repr=False)
    _health_done: bool = dataclasses.field(default=False, repr=False)
    _mapped: Any = dataclasses.field(default=None, repr=False)  # (model ref, data)

    def _model_data(self, model: Any) -> Any:
        """The data as the model's inputs: raw text through a keras-hub task's preprocessor.

        Preprocessed once and kept in memory (``compute._hub.preprocessed_data``): the
        examples do not change between epochs. Other data is used as it is.
        """
        import weakref

        from keras_erranalysis.compute._hub import preprocessed_data

        if self._mapped is not None and self._mapped[0]() is model:
            return self._mapped[1]
        data = preprocessed_data(model, self.data)
        self._mapped = (weakref.ref(model), data)
        return data

    _roles: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    def attention_layers(self) -> list[str] | None:
        """The attention layers asked for (``None``: all of them)."""
        layers = None if self.attention is None else self.attention.layers
        return None if layers is None else list(layers)

    def run(
        self,
        model: Any,
        epoch: int,
        *,
        writer: Any = None,
        info: Mapping[str, Any] | None = None,
    ) -> EpochOutput:
        """Runs the pass on ``model`` and records it as run epoch ``epoch``.

        Args:
            model: The Keras model as it is now.
            epoch: The run's epoch number.
            writer: A :class:`~keras_erranalysis.run.RunWriter` (``None``: write nothing).
            info: Extra facts stored in the epoch's ``meta.json``.

        Returns:
            The epoch's :class:`EpochOutput`.
        """
        self._watch_update = None
        report, figures, vectors = self._one_pass(model)
        info = dict(info or {})
        watch_lines = []
        if self._watch_update is not None:
            notes, watch_lines = watch_notes(epoch, report, self._watch_update)
            info.update(notes)
        if report.nonfinite.any():
            report.extra["nonfinite_cause"] = self.nonfinite_causes(model, report)
        self._check_padding(report)
        generation = self._generate(model, report) if self.generation is not None else None
        tables = epoch_tables(
            report, decoding=self.decoding, top_k=self.top_k, features=self._features(report)
        )
        if generation is not None:  # corpus numbers; the text is in the hardest table
            tables["generation"] = generation
            tokenizer_vocab = self._generated_vocab(model)
            if tokenizer_vocab is not None:  # a keras-hub task: text as its generate() gives
                tables["hardest"] = generated_text(tables["hardest"], report, tokenizer_vocab)
        if self.health is not None and not self._health_done:
            tables.update(self._health_tables(model))
        if writer is not None:
            from keras_erranalysis.present import figure_png

            writer.write_epoch(
                epoch,
                report,
                tables=tables,
                info=info,
                vectors={} if vectors is None else {"embedding": storage_array(vectors)},
                files={f"{name}.png": figure_png(fig) for name, fig in figures.items()},
            )
        if self.verbose:
            print("\n".join([summary_line(epoch, report), *watch_lines]))
        return EpochOutput(report, tables, figures, vectors, report.generated)

    def nonfinite_causes(self, model: Any, report: LossReport) -> np.ndarray:
        """Why each non-finite loss of ``report`` is so (see ``analysis.nonfinite_causes``)."""
        from keras_erranalysis.compute import finite_input_rows, weights_are_finite

        if self._input_finite is False:  # read once: the examples do not change
            self._input_finite = finite_input_rows(self._model_data(model))
        return nonfinite_causes(
            report,
            weights_finite=weights_are_finite(model),
            input_finite=self._input_finite,
            ignore_class=self.pass_options.get("ignore_class"),
        )

    def preflight(self, model: Any) -> str | None:
        """One pass on the model as it is (before training): a warning text, or ``None``.

        Examples whose loss is already NaN or inf with the initial weights spread NaN into
        the weights at the first training step. Naming them (and why) before training
        starts is the one chance to see the cause instead of a diverged run. The pass also
        compiles, so the first analyzed epoch is not slower than the next.
        """
        report = self._traverse(model, verbose=0)[1].report
        self._check_padding(report)
        if not report.nonfinite.any():
            return None
        causes = self.nonfinite_causes(model, report)
        ids = report.example_id[report.nonfinite][:10].tolist()
        return (
            f"ErrorAnalysis pre-flight: {int(report.nonfinite.sum())} of {len(report)} examples "
            f"give a NaN/inf loss with the initial weights ({causes_summary(causes)}); "
            f"example ids {ids}{' ...' if report.nonfinite.sum() > 10 else ''}. Training on such "
            "examples spreads NaN into the weights at the first step: fix the data or mask "
            "the loss."
        )

    def _health_tables(self, model: Any) -> dict[str, pd.DataFrame]:
        """The data-health tables (``check_data``), once: the examples do not change."""
        from keras_erranalysis.health import check_data

        self._health_done = True
        arrays = isinstance(self.data, tuple | list)
        texts = self.health.texts
        if texts is not None and not isinstance(texts, Mapping):
            texts = {"validation" if self.health.train is not None else "train": texts}
        found = check_data(
            train=self.health.train if self.health.train is not None else self.data,
            validation=self.data if self.health.train is not None and arrays else None,
            model=model,
            vocab=self.decoding.get("input_vocab"),
            label_names=None
            if self.decoding.get("label_names") is None
            else self.decoding["label_names"].tokens,
            texts=texts,
            threshold=self.health.threshold,
            pass_options={k: v for k, v in self.pass_options.items() if k != "ids"},
        )
        if self.verbose:
            print("ErrorAnalysis data health:\n  " + "\n  ".join(found.summary))
        return found.tables()

    def _check_padding(self, report: LossReport) -> None:
        """Warns once when the pass counts padding (see ``analysis.counted_padding``)."""
        if self._padding_checked:
            return
        self._padding_checked = True
        message = counted_padding(report, vocab=self.decoding["vocab"])
        if message is not None:
            warnings.warn(f"ErrorAnalysis: {message}", RuntimeWarning, stacklevel=4)

    def _features(self, report: LossReport) -> Any:
        if self.features is not None and not self.features.enabled:
            return None
        if self._feature_set is False:  # extracted once: the examples do not change
            self._feature_set = text_features(
                report,
                texts=None if self.features is None else self.features.texts,
                input_vocab=self.decoding["input_vocab"],
                required=self.features is not None,
            )
        return self._feature_set

    def _one_pass(self, model: Any) -> tuple[LossReport, dict[str, Any], np.ndarray | None]:
        """The loss, attention and embedding columns in ONE traversal of the data.

        Attention weights come back for the examples of highest loss (chosen on the device
        while the data is read) and for the watch list, once it is fixed (which examples
        are right is known only after a pass).

        Returns:
            ``(report, heatmaps, embeddings)``; attention diagnostics in ``report.extra``.
        """
        extra, result = self._traverse(model, verbose=int(self.verbose == 1))
        report = result.report
        figures = {} if self.attention is None else self._heatmaps(model, report, extra[0], result)
        vectors = result.columns.get("embedding") if self.embeddings is not None else None
        return report, figures, vectors

    def _traverse(self, model: Any, *, verbose: int) -> tuple[list, Any]:
        """``run_pass`` with the epoch's column producers.

        The pre-flight and every epoch call it alike, so they share one compiled function.
        """
        from keras_erranalysis.compute import attention_columns, embedding_columns, run_pass

        extra = []
        if self.attention is not None:
            extra.append(
                attention_columns(
                    model, layers=self.attention_layers(), hardest=self.attention.heatmaps
                )
            )
        if self.embeddings is not None:
            extra.append(embedding_columns(model, layer=self.embeddings.layer))
        result = run_pass(
            model,
            self._model_data(model),
            extra=extra,
            keep=self._watch or [],
            keep_hardest=0 if self.attention is None else self.attention.heatmaps,
            verbose=verbose,
            **self.pass_options,
        )
        return extra, result

    def _heatmaps(
        self, model: Any, report: LossReport, producer: Any, result: Any
    ) -> dict[str, Any]:
        """Adds attention diagnostics to ``report.extra``; returns the heatmaps to save."""
        from keras_erranalysis.compute import attention_from_pass
        from keras_erranalysis.present import example_heatmaps

        # The watch list's weights are kept by this pass only if it was fixed before it: an
        # example that turned wrong is drawn once more, its replacement from the next epoch.
        hardest = hardest_rows(report, self.attention.heatmaps)
        rows = hardest + [r for r in self._watch or [] if r not in hardest]
        self._watch_update = watch_update(report, self.attention.heatmaps, self._watch)
        self._watch = self._watch_update.watch
        found = attention_from_pass(producer, result.columns, result.kept, rows)
        report.extra.update(found.diagnostics)
        kept = {int(p): j for j, p in enumerate(found.kept)}
        names = [f"attention_hardest{i + 1}" for i in range(len(hardest))]
        names += [f"attention_watch{i + 1}" for i in range(len(rows) - len(hardest))]
        chosen = [(r, name) for r, name in zip(rows, names) if r in kept]
        picks = [kept[r] for r, _ in chosen]
        weights = {path: w[picks] for path, w in found.weights.items()}
        rows = [r for r, _ in chosen]
        roles = self.attention_roles(model, report, weights)
        generated, generated_ids = inference_attention(
            model,
            report,
            rows,
            roles,
            generation=self.generation,
            vocab=self.decoding["vocab"],
            output=self.pass_options.get("output"),
        )
        return example_heatmaps(
            report,
            weights,
            rows,
            names=[name for _, name in chosen],
            vocab=self.decoding["vocab"],
            input_vocab=self.decoding["input_vocab"],
            roles=roles,
            generated=generated,
            generated_ids=generated_ids,
        )

    def _generated_vocab(self, model: Any) -> Vocabulary | None:
        """A keras-hub task's tokenizer as a vocabulary (text as its ``generate()``), or None."""
        from keras_erranalysis.compute._hub import task_tokenizer, tokenizer_text

        tokenizer = task_tokenizer(model)
        if tokenizer is None or callable(self.generation.method):
            return None
        return Vocabulary(fn=lambda ids: tokenizer_text(tokenizer, [ids])[0], sep="")

    def attention_roles(
        self, model: Any, report: LossReport, weights: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        """Each attention layer's role (cross, encoder or decoder self), read once.

        From the model's graph (see :func:`~keras_erranalysis.compute.attention_roles`);
        the decoder input is the one equal to the labels shifted right, when one is.
        """
        if self._roles is None:
            self._roles = layer_roles(model, report, weights, layers=self.attention_layers())
        return self._roles

    def _generate(self, model: Any, report: LossReport) -> pd.DataFrame:
        """Decodes the examples free-running; adds their ids and columns to the report.

        Returns:
            The one-row ``generation`` table of corpus numbers.
        """
        from keras_erranalysis.compute import add_generated

        corpus = add_generated(
            model,
            report,
            self.generation,
            vocab=self.decoding["vocab"],
            output=self.pass_options.get("output"),
            batch_size=self.pass_options.get("batch_size"),
            jit_compile=self.pass_options.get("jit_compile", "auto"),
        )
        return generation_table(corpus, self.generation)


def generated_text(hardest: pd.DataFrame, report: LossReport, vocab: Vocabulary) -> pd.DataFrame:
    """The hardest table with ``generated_text`` decoded by ``vocab`` (its rows only)."""
    rows = pd.Index(np.asarray(report.example_id)).get_indexer(hardest["example_id"])
    lengths = np.asarray(report.extra["generated_length"])
    ids = np.asarray(report.generated)
    return hardest.assign(generated_text=[vocab.decode(ids[r, : lengths[r]]) for r in rows])


def generation_table(corpus: Mapping[str, float], option: GenerationAnalysis) -> pd.DataFrame:
    """The one-row ``generation`` table: corpus numbers and how the outputs were decoded."""
    method = (
        option.method
        if isinstance(option.method, str)
        else (f"beam{option.method}" if isinstance(option.method, int) else "callable")
    )
    return pd.DataFrame([{**corpus, "method": method}])


def with_columns(table: pd.DataFrame, report: LossReport, names: Sequence[str]) -> pd.DataFrame:
    """``table`` with the report's extra columns ``names``, matched by ``example_id``.

    For a hardest table ranked before those columns existed (``analyze`` ranks chunk by
    chunk and scores the generated outputs after the merge).
    """
    rows = pd.Index(np.asarray(report.example_id)).get_indexer(table["example_id"])
    return table.assign(
        **{name: np.asarray(report.extra[name])[rows] for name in names if name in report.extra}
    )


def task_decoding(model: Any, decoding: dict[str, Vocabulary | None]) -> None:
    """Fills ``vocab`` / ``input_vocab`` from a keras-hub task's tokenizer when not given.

    A keras-hub ``Seq2SeqLM`` or ``CausalLM`` carries its tokenizer (in its preprocessor):
    target and source ids decode through it, so the tables show text without a ``vocab=``.
    ``decoding`` is changed in place (the callback and its pipeline share it).
    """
    from keras_erranalysis.compute._hub import task_tokenizer

    tokenizer = task_tokenizer(model)
    if tokenizer is None or (decoding.get("vocab") and decoding.get("input_vocab")):
        return
    vocab = Vocabulary.from_any(tokenizer)
    for key in ("vocab", "input_vocab"):
        if decoding.get(key) is None:
            decoding[key] = vocab


def summary_line(epoch: int, report: LossReport) -> str:
    """One line for the console: how many examples are wrong, the mean loss, NaN counts."""
    wrong = int((~report.correct).sum())
    bad = int(report.nonfinite.sum())
    causes = report.extra.get("nonfinite_cause")
    why = f" ({causes_summary(causes)})" if bad and causes is not None else ""
    note = f", {bad} with NaN/inf loss{why}" if bad else ""
    mean = f"{finite_mean(report.loss[~report.nonfinite]):.4f}"
    return (
        f"ErrorAnalysis epoch {epoch}: {wrong}/{len(report)} examples wrong, mean loss {mean}{note}"
    )


def export_tensorboard(
    log_dir: str | os.PathLike,
    tensorboard_dir: str | os.PathLike,
    *,
    epochs: Sequence[int] | None = None,
    k: int = 20,
    subset: str = "validation",
) -> list[int]:
    """Writes TensorBoard summaries of a finished run folder's epochs.

    The same summaries the callback writes with ``tensorboard=``: scalars, histograms,
    the hardest examples as text, the stored heatmaps, the data map, the feature summary
    and (when embeddings are stored) the projector.

    Args:
        log_dir: The run folder (:func:`~keras_erranalysis.load_run`).
        tensorboard_dir: TensorBoard log folder; summaries go to its ``subset`` run.
        epochs: Run epochs to export (default: all).
        k: Rows of the hardest-example text table.
        subset: TensorBoard run name under ``tensorboard_dir``.

    Returns:
        The epochs written.

    Example:
        >>> export_tensorboard("runs/ea", "runs/ea/tensorboard")  # doctest: +SKIP
        [1, 2, 3]
    """
    from keras_erranalysis.present._tensorboard import SummaryWriter
    from keras_erranalysis.run import load_run

    run = load_run(log_dir)
    chosen = list(run.epochs if epochs is None else epochs)
    summaries = SummaryWriter(tensorboard_dir, subset=subset)
    try:
        for epoch in chosen:
            write_summaries(summaries, run, epoch, k=k)
    finally:
        summaries.close()
    return chosen


def write_summaries(
    summaries: Any, run: Any, epoch: int, *, k: int = 20, figures: Mapping[str, Any] = ()
) -> None:
    """TensorBoard summaries of one recorded epoch of ``run`` (as far as it is written).

    Args:
        summaries: A :class:`~keras_erranalysis.present._tensorboard.SummaryWriter`.
        run: The run folder, opened (its epochs up to ``epoch`` give the dynamics).
        epoch: The run epoch.
        k: Rows of the hardest-example text table.
        figures: Heatmaps already in memory (name -> Figure); default: the epoch's PNGs.
    """
    from keras_erranalysis.present._tensorboard import (
        generation_scalars,
        log_epoch,
        markdown_list,
        tensorboard_step,
    )

    report = run.report(epoch)
    frame = report.to_frame(**run.decoding(epoch))
    images = dict(figures) or {
        name.removesuffix(".png"): run.file_path(name, epoch).read_bytes()
        for name in run.files(epoch)
        if name.endswith(".png")
    }
    try:
        vectors = np.asarray(run.array("embedding", epoch))
    except KeyError:
        vectors = None
    # The data map needs the epochs up to this one: only the run's last epoch has them all.
    upto = run if epoch == run.epochs[-1] else None
    meta = run.meta(epoch)
    step = tensorboard_step(epoch, (meta.get("info") or {}).get("keras_epoch"))
    log_epoch(
        summaries,
        epoch,
        report,
        frame=frame,
        run=upto,
        vectors=vectors,
        k=k,
        figures=images,
        tensorboard_step=step,
    )
    if "features" in meta.get("tables", {}):
        summary = features_summary(run.table("features", epoch))
        summaries.text("feature_summary", markdown_list(summary), step)
    stored = meta.get("tables", {})
    if "generation" in stored:  # free-running outputs: corpus BLEU, chrF, ROUGE-L, exact match
        summaries.scalars(generation_scalars(run.table("generation", epoch)), step)
    if HEALTH_TABLE in stored:  # the first analyzed epoch: the checks run once
        write_health_summary(
            summaries,
            {
                name: run.table(name, epoch)
                for name in (HEALTH_TABLE, HEALTH_SUMMARY_TABLE)
                if name in stored
            },
            step,
        )


def write_health_summary(summaries: Any, tables: Mapping[str, pd.DataFrame], step: int) -> None:
    """The data-health summary lines as one TensorBoard text (``erranalysis/data_health``).

    Args:
        summaries: A :class:`~keras_erranalysis.present._tensorboard.SummaryWriter`.
        tables: The epoch's tables (nothing is written without a ``health`` table).
        step: TensorBoard's step.
    """
    from keras_erranalysis.present._tensorboard import markdown_list

    if HEALTH_TABLE not in tables:
        return
    lines = health_summary_lines(tables[HEALTH_TABLE], tables.get(HEALTH_SUMMARY_TABLE))
    summaries.text("data_health", markdown_list("\n".join(lines)) or "- no issues found", step)
