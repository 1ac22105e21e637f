"""ErrorAnalysis: the Keras callback. Wiring only: compute -> analyse -> write."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import keras
import numpy as np
import pandas as pd

from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.analysis._ranking import log_views, rank_examples
from keras_erranalysis.compute._losses import compute_losses
from keras_erranalysis.decoding import Vocabulary
from keras_erranalysis.run._reader import Run, load_run
from keras_erranalysis.run._writer import RunWriter


class ErrorAnalysis(keras.callbacks.Callback):
    """Finds the examples a model gets wrong, every analysed epoch, and logs them.

    At the end of each analysed epoch the callback runs one compiled, unreduced loss pass
    over ``data`` (see :func:`~keras_erranalysis.compute_losses`), keeps every example's
    numbers, and writes the epoch to ``log_dir`` atomically: per-example arrays and the
    hardest examples (highest loss, confidently wrong, least confident) with decoded text.
    It only observes: it never changes the model's weights or the training logs.

    Args:
        data: The examples to analyse: a batched ``tf.data.Dataset`` of ``(x, y)`` or
            ``(x, y, sample_weight)``, or such a tuple of arrays.
        log_dir: Run folder to write to (``None``: keep results in memory only).
            Appends to an existing run of ours.
        top_k: Rows per view in the hardest-example log.
        every_n_epochs: Analyse every n-th epoch.
        vocab: Decodes target tokens of sequence outputs (list, dict, lookup layer,
            callable or :class:`~keras_erranalysis.decoding.Vocabulary`).
        input_vocab: Decodes input tokens (source text).
        label_names: Class names of a classifier.
        loss: Loss to use (default: the model's compiled loss, unreduced).
        output: Output to analyse in a multi-output model.
        reduction: ``"mean"`` or ``"sum"`` over a sequence's counted tokens for ranking.
        ignore_class: Label id that does not count (e.g. -100).
        ids: Stable example ids in data order (default: positions).
        batch_size: Batch size when ``data`` is arrays.
        jit_compile: XLA for the pass: ``True``, ``False`` or ``"auto"``.
        on_error: ``"raise"`` stops training with the reason when the analysis fails;
            ``"warn"`` warns, switches the analysis off and lets training go on.
        tensorboard: Also write TensorBoard summaries (scalars, histograms, the hardest
            examples as text, the data map, the embedding projector): ``True`` for
            ``log_dir/tensorboard/validation``, or a TensorBoard folder (e.g. the one of
            Keras' own ``TensorBoard`` callback) to write under its ``validation`` run.
        attention: Analyse attention: ``True`` for every attention layer of the model, or
            a list of layer paths/names. Adds per-example diagnostics (entropy, uncovered
            source share, diagonality, monotonicity) to the table and saves heatmaps of the
            hardest examples and of a fixed watch list as PNG files in each epoch folder
            (and as TensorBoard images). A model without attention layers is an error.
        heatmaps: How many hardest examples get heatmaps each epoch (plus up to half as
            many right examples, fixed at the first analysed epoch, as a watch list).
        features: Compare wrong and right examples feature by feature each epoch
            (:func:`~keras_erranalysis.features.compare_features`) and write the table as
            ``features.csv``: ``"auto"`` does it when texts are given or token inputs can
            be decoded with ``input_vocab``; ``False`` never.
        texts: The examples' raw texts (in data order) for the feature comparison.
        embeddings: Store each analysed example's embedding as ``embedding.npy`` per epoch
            (for ``Run.similar`` and the projector): ``True`` for the default layer (see
            :func:`~keras_erranalysis.embeddings.default_layer`) or a layer name.
        verbose: 0 silent, 1 progress bar during the pass and a one-line summary.

    Example:
        >>> cb = ErrorAnalysis((x_val, y_val), log_dir="runs/ea", top_k=10)  # doctest: +SKIP
        >>> model.fit(x, y, epochs=3, callbacks=[cb])  # doctest: +SKIP
        >>> cb.hardest().head()  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Any,
        *,
        log_dir: str | os.PathLike | None = "erranalysis",
        top_k: int = 20,
        every_n_epochs: int = 1,
        vocab: Any = None,
        input_vocab: Any = None,
        label_names: Any = None,
        loss: Any = None,
        output: str | int | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        ignore_class: int | None = None,
        ids: Any = None,
        batch_size: int = 32,
        jit_compile: bool | Literal["auto"] = "auto",
        on_error: Literal["raise", "warn"] = "raise",
        tensorboard: bool | str | os.PathLike = False,
        embeddings: bool | str = False,
        attention: bool | Sequence[str] = False,
        heatmaps: int = 4,
        features: bool | Literal["auto"] = "auto",
        texts: Sequence[str] | None = None,
        verbose: int = 1,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}.")
        self.data = data
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.top_k = top_k
        self.every_n_epochs = every_n_epochs
        self.decoding = {
            "vocab": Vocabulary.from_any(vocab),
            "input_vocab": Vocabulary.from_any(input_vocab),
            "label_names": Vocabulary.from_any(label_names),
        }
        self.pass_options = {
            "loss": loss,
            "output": output,
            "reduction": reduction,
            "ignore_class": ignore_class,
            "ids": ids,
            "batch_size": batch_size,
            "jit_compile": jit_compile,
        }
        self.on_error = on_error
        if tensorboard is True and log_dir is None:
            raise ValueError("tensorboard=True needs a log_dir, or pass a TensorBoard folder.")
        self.tensorboard_dir = (
            None
            if tensorboard is False or tensorboard is None
            else os.path.join(self.log_dir, "tensorboard")
            if tensorboard is True
            else os.fspath(tensorboard)
        )
        self.embeddings = embeddings
        self.last_embeddings = None
        self.attention = attention
        self.heatmaps = heatmaps
        self.features = features
        self.texts = None if texts is None else [str(t) for t in texts]
        self._feature_set: Any = None
        self._watch: list[int] | None = None
        self._summaries = None
        self.verbose = verbose
        self.enabled = True
        self.last_report: LossReport | None = None
        self._writer: RunWriter | None = None
        self._reports: dict[int, LossReport] = {}  # only without log_dir
        self._epoch_offset: int | None = None
        self._fit_epochs: int | None = None

    # -- Keras hooks -------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Opens the run folder (checked writable, locked) before the first epoch."""
        self._epoch_offset = None
        self._fit_epochs = (self.params or {}).get("epochs")
        self.enabled = True  # on_error="warn" switches the analysis off for one fit only
        if self.attention:
            from keras_erranalysis.compute._attention_hooks import find_attention_layers

            find_attention_layers(self.model, self._attention_layers())  # clear error if none
        if self.log_dir is not None:
            try:
                self._writer = RunWriter(self.log_dir, decoding=self.decoding)
                self._writer.acquire_lock()
            except Exception as error:
                if self.on_error == "raise":
                    raise
                self._writer = None
                self.enabled = False
                warnings.warn(
                    f"ErrorAnalysis cannot use log_dir and is off for this fit "
                    f"({type(error).__name__}: {error}). Training goes on.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Fixes the run's epoch numbering at the first epoch of each fit."""
        if self._epoch_offset is None:
            # A resumed fit (initial_epoch=k) continues at k+1; a fresh fit on a run that
            # already holds epochs appends after them.
            self._epoch_offset = max(0, self._last_epoch() - epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Runs the loss pass and writes the epoch when it is due."""
        if not self.enabled:
            return
        due = (epoch + 1) % self.every_n_epochs == 0
        if not due:
            return
        if self._epoch_offset is None:
            self.on_epoch_begin(epoch)
        run_epoch = epoch + 1 + self._epoch_offset
        try:
            self.analyse_epoch(run_epoch, keras_epoch=epoch)
        except Exception as error:
            if self.on_error == "raise":
                self._close()
                raise
            self.enabled = False
            warnings.warn(
                f"ErrorAnalysis failed at epoch {run_epoch} and is now off for this fit "
                f"({type(error).__name__}: {error}). Training goes on; epochs already "
                "written are intact.",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_end(self, logs: dict | None = None) -> None:
        """Releases the run folder."""
        self._close()

    # -- the work ----------------------------------------------------------------------

    def analyse_epoch(self, run_epoch: int, *, keras_epoch: int | None = None) -> LossReport:
        """Runs the pass on the current model and records it as ``run_epoch``."""
        report = compute_losses(self.model, self.data, verbose=self.verbose, **self.pass_options)
        self.last_report = report
        figures = self._attention_figures(report) if self.attention else {}
        frame = report.to_frame(**self.decoding)
        tables = {"hardest": log_views(frame, k=self.top_k)}
        tables.update(self._analysis_tables(report))
        vectors = stored = None
        if self.embeddings:
            from keras_erranalysis.analysis._similarity import storage_array
            from keras_erranalysis.compute._embeddings import compute_embeddings

            layer = None if self.embeddings is True else self.embeddings
            vectors = compute_embeddings(
                self.model,
                self.data,
                layer=layer,
                batch_size=self.pass_options["batch_size"],
                jit_compile=self.pass_options["jit_compile"],
            )
            self.last_embeddings = vectors
            stored = {"embedding": storage_array(vectors)}
        if self._writer is not None:
            from keras_erranalysis.present._figures import figure_png

            self._writer.write_epoch(
                run_epoch,
                report,
                tables=tables,
                info={"keras_epoch": keras_epoch},
                vectors=stored,
                files={f"{name}.png": figure_png(fig) for name, fig in figures.items()},
            )
        else:
            self._reports[run_epoch] = report
        if self.tensorboard_dir is not None:
            from keras_erranalysis import tensorboard

            if self._summaries is None:
                self._summaries = tensorboard.SummaryWriter(self.tensorboard_dir)
            run_folder = load_run(self.log_dir) if self._writer is not None else None
            tensorboard.log_epoch(
                self._summaries,
                run_epoch,
                report,
                frame=frame,
                run=run_folder,
                vectors=vectors,
                k=self.top_k,
                figures=figures,
            )
            if "features" in tables:
                from keras_erranalysis.analysis._feature_stats import features_summary

                self._summaries.text(
                    "feature_summary",
                    tensorboard.markdown_cell(features_summary(tables["features"]), max_chars=None),
                    run_epoch,
                )
        if self.verbose:
            wrong = int((~report.correct).sum())
            bad = int(report.nonfinite.sum())
            note = f", {bad} with NaN/inf loss" if bad else ""
            print(
                f"ErrorAnalysis epoch {run_epoch}: {wrong}/{len(report)} examples wrong, "
                f"mean loss {float(report.loss[~report.nonfinite].mean()):.4f}{note}"
            )
        return report

    def _attention_layers(self) -> list[str] | None:
        return None if self.attention is True else list(self.attention)

    def _attention_figures(self, report: LossReport) -> dict[str, Any]:
        """Adds attention diagnostics to ``report.extra``; returns heatmaps to save."""
        from keras_erranalysis.compute._attention import attention_diagnostics
        from keras_erranalysis.present._heatmaps import example_heatmaps

        positions = report.scalars().assign(position=np.arange(len(report)))
        hardest = rank_examples(positions, by="loss", k=self.heatmaps)
        rows = hardest["position"].tolist()
        if self._watch is None:  # right examples fixed once, to follow across epochs
            right = np.flatnonzero(report.correct)
            self._watch = right[: max(1, self.heatmaps // 2)].tolist()
        watch = [r for r in self._watch if r not in rows]
        result = attention_diagnostics(
            self.model,
            self.data,
            layers=self._attention_layers(),
            keep=rows + watch,
            batch_size=self.pass_options["batch_size"],
            jit_compile=self.pass_options["jit_compile"],
        )
        report.extra.update(result.diagnostics)
        order = {int(p): j for j, p in enumerate(result.kept)}
        names = [f"attention_hardest{i + 1}" for i in range(len(rows))]
        names += [f"attention_watch{i + 1}" for i in range(len(watch))]
        chosen = [(r, n) for r, n in zip(rows + watch, names) if r in order]
        picks = [order[r] for r, _ in chosen]
        return example_heatmaps(
            report,
            {path: w[picks] for path, w in result.weights.items()},
            [r for r, _ in chosen],
            names=[n for _, n in chosen],
            vocab=self.decoding["vocab"],
            input_vocab=self.decoding["input_vocab"],
        )

    def _analysis_tables(self, report: LossReport) -> dict[str, pd.DataFrame]:
        """The per-class table and (when there is text) the feature comparison."""
        from keras_erranalysis.analysis._metrics import per_class_metrics

        names = self.decoding["vocab" if report.is_sequence else "label_names"]
        tables = {"per_class": per_class_metrics(report, label_names=names).reset_index()}
        if self.features is False:
            return tables
        if self._feature_set is None:
            self._feature_set = self._extract_features(report)
        has_both = (~report.correct).any() and report.correct.any()
        if self._feature_set is not False and has_both:
            from keras_erranalysis.analysis._feature_stats import compare_features

            tables["features"] = compare_features(report, features=self._feature_set, top=200)
        return tables

    def _extract_features(self, report: LossReport) -> Any:
        from keras_erranalysis.analysis._features import extract_features

        source = self.decoding["input_vocab"]
        texts = self.texts
        if texts is None and source is not None:
            texts = report.input_texts(source)
        if texts is None:
            if self.features is True:
                raise ValueError(
                    "features=True needs text: pass texts=[...] or input_vocab= so the inputs "
                    "can be decoded."
                )
            return False
        if len(texts) != len(report):
            raise ValueError(f"texts has {len(texts)} entries but the data has {len(report)}.")
        return extract_features(
            texts=texts,
            tokenizer="char" if source is not None and source.sep == "" else "word",
            labels=None if report.is_sequence else report.label,
            example_ids=report.example_id,
            pos=False,
        )

    def _last_epoch(self) -> int:
        if self._writer is not None:
            return self._writer.last_epoch()
        return max(self._reports, default=0)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.release_lock()
        if self._summaries is not None:
            self._summaries.close()
            self._summaries = None

    # -- reading results ---------------------------------------------------------------

    def run(self) -> Run:
        """The run folder opened for reading (needs ``log_dir``)."""
        if self.log_dir is None:
            raise ValueError("This ErrorAnalysis keeps results in memory (log_dir=None).")
        return load_run(self.log_dir)

    def report(self, epoch: int = -1) -> LossReport:
        """The :class:`LossReport` of an analysed epoch (``-1`` = last)."""
        if self.log_dir is not None:
            return self.run().report(epoch)
        if not self._reports:
            raise ValueError("No epoch analysed yet: train with this callback first.")
        epochs = sorted(self._reports)
        return self._reports[epochs[epoch] if epoch < 0 else epoch]

    def hardest(
        self, epoch: int = -1, k: int | None = None, by: str = "loss", only_wrong: bool = False
    ) -> pd.DataFrame:
        """The hardest examples of an analysed epoch (``-1`` = last), with decoded text."""
        report = self.report(epoch)
        return rank_examples(
            report.to_frame(**self.decoding), by=by, k=k or self.top_k, only_wrong=only_wrong
        )

    @property
    def history(self) -> pd.DataFrame:
        """Every analysed epoch's per-example numbers, one row per (epoch, example)."""
        if self.log_dir is not None:
            return self.run().history
        parts = []
        for epoch, report in sorted(self._reports.items()):
            part = report.scalars()
            part.insert(0, "epoch", epoch)
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
