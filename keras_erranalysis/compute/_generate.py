"""Free-running (generated) outputs of a seq2seq model: greedy decoding in one compiled loop.

A teacher-forced pass shows what the model predicts when it is fed the reference; at
inference it is fed its own predictions. :func:`generate_greedy` decodes the standard Keras
encoder-decoder (source input(s) plus a decoder input shifted right by a start token, as in
the Keras seq2seq examples) the way it runs at inference: a ``tf.function`` holding a
``tf.while_loop`` over positions, which writes each step's argmax into the decoder input
for the next step and stops at the end token (or the maximum length).

The decoder input is a fixed ``(batch, max_length)`` buffer filled as decoding goes: every
step calls the model on the whole buffer and reads the logits at the current position. A
causal decoder (an RNN, a Transformer decoder with a causal mask) never looks past the
current position, so the not-yet-written positions (padding) change nothing; the fixed
shape lets XLA compile the loop once. The compiled loop is cached per model and shapes,
so analysing many epochs compiles it once.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from keras_erranalysis._errors import AnalyzeError

END_TOKENS = ("</s>", "<eos>", "[END]", "<end>", "[SEP]", "<|endoftext|>")


class GenerationError(AnalyzeError):
    """The model's inputs do not fit the teacher-forcing pattern greedy decoding needs."""


@dataclasses.dataclass
class Generated:
    """Free-running outputs of N examples.

    Attributes:
        ids: ``(N, max_length)`` int32 generated ids; after the end token (kept), ``pad_id``.
        lengths: ``(N,)`` generated tokens before the end token (all of them when none).
        start_id: The start token fed at the first step (``None`` for a user callable).
        end_id: The end token (``None``: decoding ran to ``max_length``).
        decoder_input: Name of the model input that takes the shifted decoder ids.
        reference: ``(N, T)`` label positions the outputs are compared with, when not the
            pass's token mask (a keras-hub task: the labels after the prompt).
    """

    ids: np.ndarray
    lengths: np.ndarray
    start_id: int | None
    end_id: int | None
    decoder_input: str | None
    reference: np.ndarray | None = None

    def sequences(self) -> list[list[int]]:
        """Each example's generated ids, cut before the end token."""
        return [row[:n].tolist() for row, n in zip(self.ids, self.lengths)]


def end_id_from_tokens(tokens: Sequence[str] | None) -> int | None:
    """The id of the first usual end-of-sequence token in a vocabulary, or ``None``.

    Example:
        >>> end_id_from_tokens(["", "<s>", "</s>", "a"])
        2
        >>> end_id_from_tokens(["", "a"]) is None
        True
    """
    if not tokens:
        return None
    index = {token: i for i, token in enumerate(tokens)}
    for token in END_TOKENS:
        if token in index:
            return index[token]
    return None


def find_decoder_input(
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    start_id: int | None = None,
    name: str | None = None,
) -> tuple[str, int]:
    """Which model input is the decoder input shifted right by a start token, and that token.

    The decoder input is a 2-D integer input as wide as the labels whose every row begins
    with the same id (the start token). When several fit, the one equal to the labels
    shifted right (where the labels are not padding) wins.

    Args:
        inputs: The model's integer inputs by name (``LossReport.inputs``).
        labels: ``(N, T)`` label ids.
        start_id: The start token when known (``None``: read from the data).
        name: The decoder input's name when known.

    Returns:
        ``(name, start_id)``.

    Raises:
        GenerationError: When no input fits, naming the fix.
    """
    labels = np.asarray(labels)
    fix = (
        "Greedy decoding needs the standard teacher-forcing pattern: source input(s) plus a "
        "decoder input as wide as the labels whose rows all begin with the same start id "
        "(the labels shifted right). Pass GenerationAnalysis(start_id=...) when the start "
        "id varies, or GenerationAnalysis(method=your_decode_fn) (inputs batch -> (B, T) "
        "ids) for any other model."
    )
    if labels.ndim != 2:
        raise GenerationError(f"The labels have shape {labels.shape}, not (N, T). {fix}")
    if len(inputs) < 2:
        raise GenerationError(
            f"The model takes {len(inputs)} integer input(s) ({sorted(inputs)}); a seq2seq "
            f"model with teacher forcing takes a source and a decoder input. {fix}"
        )
    candidates = []
    for key, value in inputs.items():
        if name is not None and key != name:
            continue
        value = np.asarray(value)
        if value.ndim != 2 or value.dtype.kind not in "iu" or value.shape != labels.shape:
            continue
        first = value[:, 0]
        if len(first) == 0:
            continue
        if start_id is not None and not (first == start_id).all():
            continue
        if start_id is None and not (first == first[0]).all():
            continue
        counted = labels[:, :-1] != 0
        shifted = float((value[:, 1:] == labels[:, :-1])[counted].mean()) if counted.any() else 0
        candidates.append((shifted, key, int(first[0])))
    if not candidates:
        shapes = {k: tuple(np.shape(v)) for k, v in inputs.items()}
        raise GenerationError(
            f"No model input fits as the decoder input (inputs {shapes}, labels "
            f"{labels.shape}). {fix}"
        )
    _, key, start = max(candidates, key=lambda c: c[0])
    return key, start


_DEAD = -1e9  # log-probability of a beam that must not be chosen (no inf: no NaN)

# model -> {key: compiled decode function}; a model's functions go when the model goes.
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def cache_size(model: Any) -> int:
    """How many decode loops are compiled for ``model`` (tests and benchmarks check 1)."""
    return len(_CACHE.get(model, {}))


def _output_logits(outputs: Any, output: str | int | None) -> Any:
    if isinstance(outputs, Mapping):
        key = output if output is not None else next(iter(outputs))
        return outputs[key]
    if isinstance(outputs, list | tuple):
        return outputs[0 if output is None else int(output)]
    return outputs


class LoopSpec(NamedTuple):
    """The constants of a free-running decode loop (one traced loop per distinct spec)."""

    max_length: int
    start_id: int
    end_id: int | None
    pad_id: int
    dtype: Any  # the decoder input's tf dtype
    output: str | int | None


def _decode_function(
    model: Any,
    names: tuple[str, ...],
    decoder_input: str,
    spec: LoopSpec,
    *,
    as_dict: bool,
    jit_compile: bool,
    beam_width: int = 1,
) -> Any:
    import tensorflow as tf

    max_length, start_id, end_id, pad_id, dtype, output = spec
    key = (names, decoder_input, as_dict, spec, jit_compile, beam_width)
    functions = _CACHE.setdefault(model, {})
    if key in functions:
        return functions[key]
    end = -1 if end_id is None else end_id

    def call(sources: dict[str, Any], decoder_ids: Any) -> Any:
        feed = {**sources, decoder_input: decoder_ids}
        args = feed if as_dict else [feed[n] for n in names]
        return _output_logits(model(args, training=False), output)

    def decode(sources: dict[str, Any]) -> tuple[Any, Any]:
        batch = tf.shape(next(iter(sources.values())))[0]
        positions, decoder_ids, generated, lengths, done = greedy_start(
            batch, max_length, start_id, pad_id, dtype
        )

        def more(t: Any, decoder_ids: Any, generated: Any, lengths: Any, done: Any) -> Any:
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(done)))

        def step(t: Any, decoder_ids: Any, generated: Any, lengths: Any, done: Any) -> Any:
            logits = tf.gather(call(sources, decoder_ids), t, axis=1)
            state = greedy_advance(
                t, logits, (decoder_ids, generated, lengths, done), positions, pad_id, end
            )
            return (t + 1, *state)

        _, _, generated, lengths, _ = tf.while_loop(
            more,
            step,
            (tf.constant(0), decoder_ids, generated, lengths, done),
            maximum_iterations=max_length,
        )
        return generated, lengths

    def beam(sources: dict[str, Any]) -> tuple[Any, Any]:
        # Beams live on axis 1 of (B, K, ...) tensors; the model sees them as B*K rows.
        k = beam_width
        batch = tf.shape(next(iter(sources.values())))[0]
        wide = {n: tf.repeat(v, k, axis=0) for n, v in sources.items()}
        positions = tf.range(max_length)[tf.newaxis, tf.newaxis, :]
        decoder_ids = tf.concat(
            [
                tf.fill([batch, k, 1], tf.constant(start_id, dtype)),
                tf.fill([batch, k, max_length - 1], tf.constant(pad_id, dtype)),
            ],
            axis=2,
        )
        generated = tf.fill([batch, k, max_length], tf.constant(pad_id, tf.int32))
        lengths = tf.fill([batch, k], tf.constant(max_length, tf.int32))
        done = tf.zeros([batch, k], tf.bool)
        # Only the first beam is live at the start: k copies would give k equal beams.
        scores = tf.tile(tf.concat([[0.0], tf.fill([k - 1], _DEAD)], 0)[tf.newaxis], [batch, 1])
        state = (tf.constant(0), decoder_ids, generated, lengths, done, scores)

        def more(t: Any, *rest: Any) -> Any:
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(rest[3])))

        def step(t, decoder_ids, generated, lengths, done, scores):  # noqa: ANN001, ANN202
            flat = tf.reshape(decoder_ids, [batch * k, max_length])
            logits = tf.gather(call(wide, flat), t, axis=1)
            vocab = tf.shape(logits)[-1]
            log_probs = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [batch, k, -1])
            # A finished beam continues with padding at no cost, so it keeps its score.
            finished = tf.where(tf.range(vocab) == pad_id, 0.0, _DEAD)
            log_probs = tf.where(done[:, :, tf.newaxis], finished, log_probs)
            total = tf.reshape(scores[:, :, tf.newaxis] + log_probs, [batch, -1])
            best_scores, best = tf.math.top_k(total, k=k)
            scores = tf.ensure_shape(best_scores, scores.shape)  # one shape across steps
            parent = best // vocab
            token = tf.cast(best % vocab, tf.int32)
            decoder_ids = tf.gather(decoder_ids, parent, batch_dims=1)
            generated = tf.gather(generated, parent, batch_dims=1)
            lengths = tf.gather(lengths, parent, batch_dims=1)
            was_done = tf.gather(done, parent, batch_dims=1)
            token = tf.where(was_done, tf.constant(pad_id, tf.int32), token)
            generated = tf.where(positions == t, token[:, :, tf.newaxis], generated)
            decoder_ids = tf.where(
                positions == t + 1, tf.cast(token, dtype)[:, :, tf.newaxis], decoder_ids
            )
            ended = tf.logical_and(tf.logical_not(was_done), token == end)
            lengths = tf.where(ended, t, lengths)
            return t + 1, decoder_ids, generated, lengths, tf.logical_or(was_done, ended), scores

        _, _, generated, lengths, _, scores = tf.while_loop(
            more, step, state, maximum_iterations=max_length
        )
        top = tf.argmax(scores, axis=1, output_type=tf.int32)[:, tf.newaxis]
        return (
            tf.gather(generated, top, batch_dims=1)[:, 0],
            tf.gather(lengths, top, batch_dims=1)[:, 0],
        )

    function = tf.function(
        decode if beam_width == 1 else beam, jit_compile=jit_compile, reduce_retracing=True
    )
    functions[key] = function
    return function


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def generate_greedy(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    max_length: int | None = None,
    start_id: int | None = None,
    end_id: int | None = None,
    pad_id: int = 0,
    decoder_input: str | None = None,
    input_names: Sequence[str] | None = None,
    output: str | int | None = None,
    batch_size: int = 256,
    jit_compile: bool | str = "auto",
    beam_width: int = 1,
) -> Generated:
    """Greedy (or beam-search) free-running decoding of a teacher-forced encoder-decoder.

    Args:
        model: A Keras model called as ``model(inputs)`` with the source input(s) and the
            decoder input (the labels shifted right by a start token).
        inputs: The model's integer inputs by name, examples on axis 0
            (``LossReport.inputs``: model input names, or ``input_0, input_1...`` for a
            model called with a list).
        labels: ``(N, T)`` label ids (find the decoder input and its start token).
        max_length: Most tokens generated (default: the decoder input's length).
        start_id: Start token (default: the id every decoder input row begins with).
        end_id: End token where decoding stops (``None``: run to ``max_length``).
        pad_id: Fills the decoder input ahead of decoding, and the outputs after the end.
        decoder_input: Name of the decoder input (default: found from the data).
        input_names: The model's inputs in call order when ``inputs`` are ``input_0``...
            (default: the order of ``inputs``).
        output: Output of a multi-output model (name or index; default the first).
        batch_size: Examples per call of the compiled loop (the last batch is padded to
            it, so the loop compiles once).
        jit_compile: XLA: ``True``, ``False`` or ``"auto"`` (XLA, falling back without it
            when the model does not compile).
        beam_width: Beams kept per step (1: greedy). Beam search keeps the ``beam_width``
            prefixes of highest summed log-probability (no length penalty) and returns the
            best finished one; the model runs on ``batch_size * beam_width`` rows per step.

    Returns:
        :class:`Generated`.

    Raises:
        GenerationError: When the inputs do not fit the pattern.
    """
    import tensorflow as tf

    name, start = find_decoder_input(inputs, labels, start_id=start_id, name=decoder_input)
    names = tuple(input_names or inputs)
    as_dict = not all(re.fullmatch(r"input_\d+", n) for n in inputs)
    expected = len(getattr(model, "inputs", None) or ())
    if expected and expected != len(inputs):
        raise GenerationError(
            f"The model takes {expected} inputs but {len(inputs)} are integer token inputs "
            f"({sorted(inputs)}): greedy decoding feeds token ids only. Pass "
            "GenerationAnalysis(method=your_decode_fn) (inputs batch -> (B, T) ids)."
        )
    sources = {k: np.asarray(v) for k, v in inputs.items() if k != name}
    length = int(max_length or np.shape(inputs[name])[1])
    n = len(labels)
    dtype = tf.as_dtype(np.asarray(inputs[name]).dtype)
    size = max(1, min(max(1, batch_size // max(1, int(beam_width))), n))
    spec = LoopSpec(length, start, end_id, pad_id, dtype, output)
    attempts = [True, False] if jit_compile == "auto" else [bool(jit_compile)]
    for position, jit in enumerate(attempts):
        function = _decode_function(
            model, names, name, spec, as_dict=as_dict, jit_compile=jit, beam_width=int(beam_width)
        )
        try:
            ids, lengths = _run(function, sources, n, size)
            break
        except (
            tf.errors.InvalidArgumentError,
            tf.errors.UnimplementedError,
            tf.errors.InternalError,
        ):
            _CACHE.get(model, {}).clear()  # keep only what works
            if position == len(attempts) - 1:
                raise
    if end_id is None:
        lengths = np.full(n, length, np.int32)
    return Generated(ids, lengths, start, end_id, name)


def _run(function: Any, sources: Mapping[str, np.ndarray], n: int, size: int) -> tuple:
    ids, lengths = [], []
    for start, stop in _batches(n, size):
        batch = {}
        for key, value in sources.items():
            part = value[start:stop]
            if stop - start < size:  # one shape for every call: one compilation
                fill = np.zeros((size - (stop - start), *part.shape[1:]), part.dtype)
                part = np.concatenate([part, fill])
            batch[key] = part
        out, count = function(batch)
        ids.append(out.numpy()[: stop - start])
        lengths.append(count.numpy()[: stop - start])
    return np.concatenate(ids).astype(np.int32), np.concatenate(lengths).astype(np.int32)


def generate_with(
    decode_fn: Callable[[Any], Any],
    inputs: Mapping[str, np.ndarray],
    *,
    end_id: int | None = None,
    pad_id: int = 0,
    batch_size: int = 256,
) -> Generated:
    """Free-running outputs from a user function (inputs batch -> ``(B, T)`` ids).

    Args:
        decode_fn: Gets a batch of ``inputs`` (a dict, examples on axis 0) and returns that
            batch's generated ids, ``(B, T)`` (or B sequences, padded here with ``pad_id``).
        inputs: The model's inputs by name.
        end_id: End token: the outputs are cut before it.
        pad_id: Fills short rows.
        batch_size: Examples per call.

    Returns:
        :class:`Generated` (``start_id`` and ``decoder_input`` are ``None``).
    """
    n = len(next(iter(inputs.values())))
    rows: list[list[int]] = []
    for start, stop in _batches(n, batch_size):
        out = decode_fn({k: np.asarray(v)[start:stop] for k, v in inputs.items()})
        out = out.numpy() if hasattr(out, "numpy") else out
        batch = [np.asarray(r).ravel().astype(np.int64).tolist() for r in out]
        if len(batch) != stop - start:
            raise GenerationError(
                f"The decode function returned {len(batch)} sequences for {stop - start} "
                "examples: return one row of ids per example."
            )
        rows.extend(batch)
    width = max([len(r) for r in rows] + [1])
    ids = np.full((n, width), pad_id, np.int32)
    lengths = np.zeros(n, np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        if end_id is not None and end_id in row:
            lengths[i] = row.index(end_id)
        else:  # no end token: the row up to its trailing padding
            kept = np.flatnonzero(np.asarray(row) != pad_id)
            lengths[i] = kept[-1] + 1 if kept.size else 0
    return Generated(ids, lengths, None, end_id, None)


def greedy_start(batch: Any, max_length: int, start_id: int, pad_id: int, dtype: Any) -> tuple:
    """The greedy loop's first state: ``(positions, decoder_ids, generated, lengths, done)``.

    The decoder input holds the start token then padding; nothing is generated yet, every
    length is ``max_length`` (no end token seen) and no row is done.
    """
    import tensorflow as tf

    positions = tf.range(max_length)[tf.newaxis, :]
    decoder_ids = tf.concat(
        [
            tf.fill([batch, 1], tf.constant(start_id, dtype)),
            tf.fill([batch, max_length - 1], tf.constant(pad_id, dtype)),
        ],
        axis=1,
    )
    generated = tf.fill([batch, max_length], tf.constant(pad_id, tf.int32))
    lengths = tf.fill([batch], tf.constant(max_length, tf.int32))
    return positions, decoder_ids, generated, lengths, tf.zeros([batch], tf.bool)


def greedy_advance(
    t: Any, logits: Any, state: tuple, positions: Any, pad_id: int, end: int
) -> tuple:
    """One greedy step from position ``t``'s logits ``(B, V)``.

    Args:
        t: The position written.
        logits: The model's logits at ``t``.
        state: ``(decoder_ids, generated, lengths, done)``.
        positions: ``(1, max_length)`` position ids.
        pad_id: Written after a row is done.
        end: The end token (``-1``: none).

    Returns:
        The next ``(decoder_ids, generated, lengths, done)``: the argmax token written at
        ``t`` and fed at ``t + 1``; a row that writes ``end`` is done, its length ``t``.
    """
    import tensorflow as tf

    decoder_ids, generated, lengths, done = state
    token = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
    token = tf.where(done, tf.constant(pad_id, tf.int32), token)
    generated = tf.where(positions == t, token[:, tf.newaxis], generated)
    decoder_ids = tf.where(
        positions == t + 1, tf.cast(token, decoder_ids.dtype)[:, tf.newaxis], decoder_ids
    )
    ended = tf.logical_and(tf.logical_not(done), token == end)
    lengths = tf.where(ended, t, lengths)
    return decoder_ids, generated, lengths, tf.logical_or(done, ended)


def generation_end_id(option: Any, vocab: Any = None) -> int | None:
    """The end token: the option's ``end_id``, else the vocabulary's usual end token."""
    if option.end_id is not None:
        return int(option.end_id)
    return end_id_from_tokens(getattr(vocab, "tokens", None))


def decode_report(
    model: Any,
    report: Any,
    option: Any,
    *,
    vocab: Any = None,
    output: str | int | None = None,
    batch_size: int | None = None,
    jit_compile: bool | str = "auto",
) -> Generated:
    """Decodes a pass's examples free-running and stores the ids on the report.

    Sets ``report.generated`` (ids, ``(N, max_length)``) and
    ``report.extra["generated_length"]``.

    Args:
        model: The model of the pass.
        report: A sequence :class:`~keras_erranalysis.LossReport` with its inputs kept.
        option: A :class:`~keras_erranalysis.GenerationAnalysis`.
        vocab: The target :class:`~keras_erranalysis.Vocabulary` (finds the end token).
        output: Output of a multi-output model.
        batch_size: Examples per compiled call (default 256).
        jit_compile: XLA for the loop.

    Returns:
        :class:`Generated`.

    Raises:
        GenerationError: For a classifier, a report without inputs, or inputs that do
            not fit the teacher-forcing pattern.
    """
    if not report.is_sequence:
        raise GenerationError(
            "Generation decodes sequence outputs (seq2seq); this model's output is a "
            "classifier's: leave generate / 'generate' out."
        )
    if not report.inputs:
        raise GenerationError(
            "Generation needs the model's token inputs, and this pass kept none: run "
            "compute_losses with keep_inputs=True."
        )
    from keras_erranalysis.compute._hub import generate_task, is_generative_task

    batch_size = batch_size or 256
    if not callable(option.method) and is_generative_task(model):
        # a keras-hub Seq2SeqLM / CausalLM: its own generate function, sampler and stop
        # token; the outputs are compared with the labels after the prompt.
        generated, reference = generate_task(
            model,
            report.inputs,
            report.token_mask,
            max_length=option.max_length,
            end_id=option.end_id,
            prompt_length=option.prompt_length,
            batch_size=min(batch_size, 64),
        )
        generated.reference = reference
        report.generated = generated.ids
        report.extra["generated_length"] = generated.lengths
        return generated
    end_id = generation_end_id(option, vocab)
    if callable(option.method):
        generated = generate_with(
            option.method, report.inputs, end_id=end_id, batch_size=batch_size
        )
    else:
        generated = generate_greedy(
            model,
            report.inputs,
            report.label,
            max_length=option.max_length,
            start_id=option.start_id,
            end_id=end_id,
            output=output,
            batch_size=batch_size,
            jit_compile=jit_compile,
            beam_width=option.beam_width,
        )
    report.generated = generated.ids
    report.extra["generated_length"] = generated.lengths
    return generated


def score_generated(
    report: Any, *, end_id: int | None, vocab: Any = None, reference: np.ndarray | None = None
) -> dict[str, float]:
    """Adds the ``generated_*`` columns of stored outputs to ``report.extra``.

    Reads ``report.generated`` and ``report.extra["generated_length"]`` (set by
    :func:`decode_report`); the maths is ``analysis.generated_metrics``.

    Returns:
        The corpus numbers (exact match, corpus BLEU, chrF, ROUGE-1/2/L, ...) and the
        teacher-forced ``perplexity`` of the references (``exp`` of the mean token loss).
    """
    from keras_erranalysis.analysis import generated_metrics, perplexity

    lengths = np.asarray(report.extra["generated_length"])
    ids = np.asarray(report.generated)
    columns, corpus = generated_metrics(
        report.label,
        report.token_mask if reference is None else reference,
        [row[:n].tolist() for row, n in zip(ids, lengths)],
        teacher_forced_correct=report.correct,
        end_id=end_id,
        vocab=vocab,
    )
    report.extra.update(columns)
    corpus["perplexity"] = perplexity(report.loss_sum, report.n_tokens)[1]  # teacher-forced
    return corpus


def add_generated(
    model: Any, report: Any, option: Any, *, vocab: Any = None, **decode: Any
) -> dict[str, float]:
    """:func:`decode_report` then :func:`score_generated`: ids and columns on the report.

    Args:
        model: The model of the pass.
        report: A sequence :class:`~keras_erranalysis.LossReport` with its inputs kept.
        option: A :class:`~keras_erranalysis.GenerationAnalysis`.
        vocab: The target :class:`~keras_erranalysis.Vocabulary`.
        **decode: :func:`decode_report`'s other options (``output``, ``batch_size``,
            ``jit_compile``).

    Returns:
        The corpus numbers, with ``decode_seconds`` (the decoding's wall time).
    """
    import time

    started = time.perf_counter()
    generated = decode_report(model, report, option, vocab=vocab, **decode)
    seconds = time.perf_counter() - started
    corpus = score_generated(
        report, end_id=generated.end_id, vocab=vocab, reference=generated.reference
    )
    return {**corpus, "decode_seconds": seconds}
