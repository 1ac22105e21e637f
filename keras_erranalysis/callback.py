"""ErrorAnalysis: the Keras callback. Wiring only: each analyzed epoch is the pipeline's."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import keras
import pandas as pd

from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.analysis import rank_examples
from keras_erranalysis.options import (
    Analysis,
    AttentionAnalysis,
    DataHealth,
    Decoding,
    EmbeddingAnalysis,
    FeatureAnalysis,
    GenerationAnalysis,
    PassOptions,
    resolve_analyses,
)
from keras_erranalysis.pipeline import (
    EpochPipeline,
    task_decoding,
    write_health_summary,
    write_summaries,
)
from keras_erranalysis.run import Run, RunWriter, load_run


class ErrorAnalysis(keras.callbacks.Callback):
    """Finds the examples a model gets wrong, every analyzed epoch, and logs them.

    At the end of each analyzed epoch the callback runs one compiled, unreduced pass
    over ``data`` (see :func:`~keras_erranalysis.compute_losses`), keeps every example's
    numbers, and writes the epoch to ``log_dir`` atomically: per-example arrays, the
    hardest examples (highest loss, confidently wrong, least confident) with decoded text,
    per-class metrics and, when the inputs decode to text, the wrong-vs-right feature
    comparison (:mod:`keras_erranalysis.pipeline`). It only observes: it never changes the
    model's weights or the training logs.

    Args:
        data: The examples to analyze: a batched ``tf.data.Dataset`` of ``(x, y)`` or
            ``(x, y, sample_weight)``, or such a tuple of arrays.
        log_dir: Run folder to write to (``None``: keep results in memory only).
            Appends to an existing run of ours.
        vocab: Decodes target tokens of sequence outputs (list, dict, lookup layer,
            callable or :class:`~keras_erranalysis.Vocabulary`).
        label_names: Class names of a classifier.
        top_k: Rows per view in the hardest-example log.
        every_n_epochs: Analyze every n-th epoch.
        tensorboard: Also write TensorBoard summaries (scalars, histograms, the hardest
            examples as text, heatmaps, the data map, the embedding projector): ``True``
            for ``log_dir/tensorboard/validation``, or a TensorBoard folder (e.g. the one
            of Keras' own ``TensorBoard`` callback) to write under its ``validation`` run.
        analyses: Extra analyses per epoch: :class:`~keras_erranalysis.AttentionAnalysis`,
            :class:`~keras_erranalysis.EmbeddingAnalysis`,
            :class:`~keras_erranalysis.FeatureAnalysis`,
            :class:`~keras_erranalysis.options.DataHealth` (the data-health checks once, as
            the first analyzed epoch's ``health`` table),
            :class:`~keras_erranalysis.GenerationAnalysis` (free-running seq2seq outputs),
            or their names (``"attention"``, ``"embeddings"``, ``"features"``,
            ``"health"``, ``"generate"``).
        decoding: More decoding (:class:`~keras_erranalysis.Decoding`), e.g. the input
            vocabulary; ``vocab`` and ``label_names`` above are shortcuts into it.
        pass_options: How to run the pass (:class:`~keras_erranalysis.PassOptions`): the
            loss, the output, the reduction, ignored labels, ids, batch size, XLA.
        on_error: ``"raise"`` stops training with the reason when the analysis fails;
            ``"warn"`` warns, switches the analysis off and lets training go on.
        verbose: 0 silent, 1 a progress bar during the pass and a one-line summary, 2 the
            line only. ``None`` (default): as ``fit``'s own ``verbose``, so
            ``fit(verbose=0)`` keeps the callback quiet too.

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
        vocab: Any = None,
        label_names: Any = None,
        top_k: int = 20,
        every_n_epochs: int = 1,
        tensorboard: bool | str | os.PathLike = False,
        analyses: Sequence[Analysis | str] = (),
        decoding: Decoding | None = None,
        pass_options: PassOptions | None = None,
        on_error: Literal["raise", "warn"] = "raise",
        verbose: int | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}.")
        if tensorboard is True and log_dir is None:
            raise ValueError("tensorboard=True needs a log_dir, or pass a TensorBoard folder.")
        decoding = decoding or Decoding()
        for name, value in (("vocab", vocab), ("label_names", label_names)):
            if value is not None and getattr(decoding, name) is not None:
                raise ValueError(f"{name} is given twice: as {name}= and in decoding=.")
        decoding = Decoding(
            vocab=decoding.vocab if vocab is None else vocab,
            input_vocab=decoding.input_vocab,
            label_names=decoding.label_names if label_names is None else label_names,
        )
        chosen = resolve_analyses(analyses)
        self.data = data
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.top_k = top_k
        self.every_n_epochs = every_n_epochs
        self.decoding = decoding.as_dict()
        self.on_error = on_error
        self.tensorboard_dir = (
            None
            if tensorboard is False or tensorboard is None
            else os.path.join(self.log_dir, "tensorboard")
            if tensorboard is True
            else os.fspath(tensorboard)
        )
        self.verbose = verbose
        self.pipeline = EpochPipeline(
            data,
            self.decoding,
            top_k=top_k,
            pass_options=(pass_options or PassOptions()).as_dict(),
            attention=chosen.get(AttentionAnalysis),
            embeddings=chosen.get(EmbeddingAnalysis),
            features=chosen.get(FeatureAnalysis),
            health=chosen.get(DataHealth),
            generation=chosen.get(GenerationAnalysis),
            verbose=1 if verbose is None else verbose,
        )
        self.enabled = True
        self.last_report: LossReport | None = None
        self.last_embeddings = None
        self._summaries = None
        self._writer: RunWriter | None = None
        self._reports: dict[int, LossReport] = {}  # only without log_dir
        self._epoch_offset: int | None = None

    # -- Keras hooks -------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Opens the run folder (checked writable, locked) before the first epoch."""
        self._epoch_offset = None
        self.enabled = True  # on_error="warn" switches the analysis off for one fit only
        if self.verbose is None:  # follow fit's verbosity
            self.pipeline.verbose = _fit_verbose(self.params)
        # Keras' own bar is mid-line at epoch end (it ends its line after the callbacks).
        self._keras_bar_open = self.params is not None and _fit_verbose(self.params) == 1
        if self.pipeline.attention is not None:
            from keras_erranalysis.compute import find_attention_layers

            find_attention_layers(self.model, self.pipeline.attention_layers())  # if none: error
        task_decoding(self.model, self.decoding)  # a keras-hub task's tokenizer decodes
        if self.log_dir is not None:
            if self._writer is not None:  # a previous fit that was interrupted
                self._writer.release_lock()
            try:
                self._writer = RunWriter(self.log_dir, decoding=self.decoding)
                self._writer.acquire_lock(active=_running_fit())
            except Exception as error:
                self._writer = None
                self._switch_off(error, "cannot use log_dir and is off for this fit")
        if self.enabled and getattr(self.model, "built", False):
            self._preflight()

    def _preflight(self) -> None:
        """The pass on the initial weights: names examples that are NaN before training."""
        try:
            message = self.pipeline.preflight(self.model)
        except Exception as error:
            self._switch_off(error, "cannot analyze this data and is off for this fit")
            return
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

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
        if self.pipeline.verbose and getattr(self, "_keras_bar_open", False):
            sys.stdout.write("\n")  # our lines start below Keras' bar, not at its end
        try:
            self.analyze_epoch(run_epoch, keras_epoch=epoch)
        except BaseException as error:
            if not isinstance(error, Exception):  # KeyboardInterrupt: fit stops here
                self._close()
                raise
            self._switch_off(
                error,
                f"failed at epoch {run_epoch} and is now off for this fit",
                written=" Epochs already written are intact.",
            )

    def _switch_off(self, error: Exception, what: str, *, written: str = "") -> None:
        """``on_error="raise"``: release the folder and re-raise; ``"warn"``: warn, go on."""
        if self.on_error == "raise":
            self._close()
            raise error
        self.enabled = False
        warnings.warn(
            f"ErrorAnalysis {what} ({type(error).__name__}: {error}). Training goes on.{written}",
            RuntimeWarning,
            stacklevel=3,
        )

    def on_train_end(self, logs: dict | None = None) -> None:
        """Releases the run folder."""
        self._close()

    # -- the work ----------------------------------------------------------------------

    def analyze_epoch(self, run_epoch: int, *, keras_epoch: int | None = None) -> LossReport:
        """Runs the epoch pipeline on the current model and records it as ``run_epoch``."""
        out = self.pipeline.run(
            self.model, run_epoch, writer=self._writer, info={"keras_epoch": keras_epoch}
        )
        self.last_report, self.last_embeddings = out.report, out.vectors
        if self._writer is None:
            self._reports[run_epoch] = out.report
        if self.tensorboard_dir is not None:
            self._write_summaries(run_epoch, out)
        return out.report

    def _write_summaries(self, run_epoch: int, out: Any) -> None:
        from keras_erranalysis.present._tensorboard import (
            SummaryWriter,
            log_epoch,
            tensorboard_step,
        )

        if self._summaries is None:
            self._summaries = SummaryWriter(self.tensorboard_dir)
        if self._writer is not None:  # the run folder as written: the pipeline's own view
            write_summaries(
                self._summaries,
                load_run(self.log_dir),
                run_epoch,
                k=self.top_k,
                figures=out.figures,
            )
            return
        frame = out.report.to_frame(**self.decoding)
        log_epoch(
            self._summaries,
            run_epoch,
            out.report,
            frame=frame,
            vectors=out.vectors,
            k=self.top_k,
            figures=out.figures,
        )
        write_health_summary(self._summaries, out.tables, tensorboard_step(run_epoch))

    def _last_epoch(self) -> int:
        if self._writer is not None:
            return self._writer.last_epoch()
        return max(self._reports, default=0)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.release_lock()
            self._writer = None
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
        """The :class:`LossReport` of an analyzed epoch (``-1`` = last)."""
        if self.log_dir is not None:
            return self.run().report(epoch)
        if not self._reports:
            raise ValueError("No epoch analyzed yet: train with this callback first.")
        epochs = sorted(self._reports)
        return self._reports[epochs[epoch] if epoch < 0 else epoch]

    def hardest(
        self, epoch: int = -1, k: int | None = None, by: str = "loss", only_wrong: bool = False
    ) -> pd.DataFrame:
        """The hardest examples of an analyzed epoch (``-1`` = last), with decoded text."""
        report = self.report(epoch)
        return rank_examples(
            report.to_frame(**self.decoding), by=by, k=k or self.top_k, only_wrong=only_wrong
        )

    @property
    def history(self) -> pd.DataFrame:
        """Every analyzed epoch's per-example numbers, one row per (epoch, example)."""
        if self.log_dir is not None:
            return self.run().history
        parts = []
        for epoch, report in sorted(self._reports.items()):
            part = report.scalars()
            part.insert(0, "epoch", epoch)
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _fit_verbose(params: dict | None) -> int:
    """``fit``'s verbosity as a number: its default ``"auto"`` is 1, as Keras' own bar."""
    verbose = (params or {}).get("verbose", 1)
    return 1 if verbose == "auto" else int(verbose)


def _running_fit() -> Any:
    """A test of whether the ``fit`` now calling us still runs.

    Keras calls no hook when a fit stops on an exception or Ctrl-C; the test then turns
    false and the next writer of this process takes the lock over.
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "fit":
        frame = frame.f_back
    if frame is None:  # called by hand, not from a fit: held while the callback lives
        return None
    # Frames take no weak references; the writer drops this test when it lets the lock go.
    thread = threading.get_ident()

    def running() -> bool:
        current = sys._current_frames().get(thread)
        while current is not None:
            if current is frame:
                return True
            current = current.f_back
        return False

    return running
