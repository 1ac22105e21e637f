"""Attention at inference: what the model looks at while it writes its own output.

The teacher-forced heatmap shows the attention of a decoder fed the reference. At inference
the decoder is fed its own tokens, and once it has written a wrong one it may look
elsewhere. :func:`generate_attention` decodes a few examples greedily (the same loop as
:func:`~keras_erranalysis.compute.generate_greedy`: a fixed-width decoder buffer filled step
by step) with the chosen attention layers hooked, and keeps, at each step ``t``, the row
``t`` of their weights: the attention of the query that wrote generated token ``t``.

Meant for the handful of examples drawn as heatmaps: it runs without XLA, one call per
step, and returns every step's weights to the host.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_erranalysis.compute._attention_hooks import _recording, find_attention_layers
from keras_erranalysis.compute._attention_roles import model_call_input
from keras_erranalysis.compute._generate import (
    Generated,
    GenerationError,
    LoopSpec,
    _output_logits,
    find_decoder_input,
    greedy_advance,
    greedy_start,
)

# model -> {key: traced loop}; apart from generate_greedy's cache (counted by cache_size).
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class GeneratedAttention:
    """Free-running outputs of a few examples and the attention that wrote them.

    Attributes:
        generated: The outputs (:class:`~keras_erranalysis.compute.Generated`).
        weights: ``{layer path: (N, heads, max_length, T_kv)}`` float32: row ``t`` is the
            attention of the step that wrote generated token ``t`` (zero after the end).
    """

    generated: Generated
    weights: dict[str, np.ndarray]


def generate_attention(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    layers: Sequence[Any] | None = None,
    max_length: int | None = None,
    start_id: int | None = None,
    end_id: int | None = None,
    pad_id: int = 0,
    decoder_input: str | None = None,
    output: str | int | None = None,
) -> GeneratedAttention:
    """Greedy free-running decoding of a few examples, recording attention at every step.

    Args:
        model: A teacher-forced encoder-decoder (see
            :func:`~keras_erranalysis.compute.generate_greedy`).
        inputs: The examples' token inputs by name (``LossReport.inputs`` rows).
        labels: ``(N, T)`` label ids (find the decoder input and its start token).
        layers: The attention layers to record (paths, names or layer objects; default
            all), e.g. the cross-attention layers of
            :func:`~keras_erranalysis.compute.attention_roles`.
        max_length: Most tokens generated (default: the decoder input's length).
        start_id: Start token (default: read from the decoder input).
        end_id: End token where decoding stops (``None``: run to ``max_length``).
        pad_id: Fills the decoder buffer ahead of decoding.
        decoder_input: Name of the decoder input (default: found from the data).
        output: Output of a multi-output model (name or index; default the first).

    Returns:
        A :class:`GeneratedAttention`.

    Raises:
        GenerationError: When the inputs do not fit the teacher-forcing pattern.

    Example:
        >>> rows = {n: v[[3, 17]] for n, v in report.inputs.items()}  # doctest: +SKIP
        >>> found = generate_attention(model, rows, report.label[[3, 17]],
        ...                            layers=["cross_attention"], end_id=2)  # doctest: +SKIP
        >>> found.weights["cross_attention"].shape  # doctest: +SKIP
        (2, 1, 14, 12)
    """
    import tensorflow as tf

    name, start = find_decoder_input(inputs, labels, start_id=start_id, name=decoder_input)
    expected = len(getattr(model, "inputs", None) or ())
    if expected and expected != len(inputs):
        raise GenerationError(
            f"The model takes {expected} inputs but {len(inputs)} are token inputs "
            f"({sorted(inputs)}): greedy decoding feeds token ids only. Pass all the model's "
            "inputs (the source ids and the decoder input), as in LossReport.inputs."
        )
    paths = tuple(find_attention_layers(model, layers))
    length = int(max_length or np.shape(inputs[name])[1])
    dtype = tf.as_dtype(np.asarray(inputs[name]).dtype)
    names = tuple(inputs)
    spec = LoopSpec(length, start, end_id, pad_id, dtype, output)
    key = (names, name, paths, spec)
    functions = _CACHE.setdefault(model, {})
    if key not in functions:
        functions[key] = _traced_loop(model, names, name, paths, spec)
    sources = {k: tf.convert_to_tensor(v) for k, v in inputs.items() if k != name}
    ids, lengths, weights = functions[key](sources)
    ids, lengths = ids.numpy().astype(np.int32), lengths.numpy().astype(np.int32)
    if end_id is None:
        lengths = np.full(len(ids), length, np.int32)
    generated = Generated(ids, lengths, start, end_id, name)
    return GeneratedAttention(
        generated, {p: w.numpy().astype(np.float32) for p, w in weights.items()}
    )


def _traced_loop(
    model: Any,
    names: tuple[str, ...],
    decoder_input: str,
    paths: tuple[str, ...],
    spec: LoopSpec,
) -> Any:
    import tensorflow as tf

    max_length, start_id, end_id, pad_id, dtype, output = spec

    model_ref = weakref.ref(model)
    end = -1 if end_id is None else end_id

    def decode(sources: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
        model = model_ref()
        found = {p: layer for p, layer in find_attention_layers(model).items() if p in paths}
        batch = tf.shape(next(iter(sources.values())))[0]
        positions, decoder_ids, generated, lengths, done = greedy_start(
            batch, max_length, start_id, pad_id, dtype
        )
        arrays = {
            p: tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
            for p in paths
        }

        def step(t: Any, decoder_ids: Any, generated: Any, lengths: Any, done: Any, arrays: Any):
            feed = {**sources, decoder_input: decoder_ids}
            with _recording(found) as recorder:
                outputs = model(model_call_input({n: feed[n] for n in names}), training=False)
            logits = tf.gather(_output_logits(outputs, output), t, axis=1)
            arrays = {
                # row t of each layer's weights: the query that writes token t; zero once done
                p: arrays[p].write(
                    t,
                    tf.where(
                        done[:, None, None],
                        0.0,
                        tf.cast(tf.gather(recorder.records[p].weights, t, axis=2), tf.float32),
                    ),
                )
                for p in paths
            }
            state = greedy_advance(
                t, logits, (decoder_ids, generated, lengths, done), positions, pad_id, end
            )
            return (t + 1, *state, arrays)

        def more(t: Any, decoder_ids: Any, generated: Any, lengths: Any, done: Any, arrays: Any):
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(done)))

        t, _, generated, lengths, _, arrays = tf.while_loop(
            more,
            step,
            (tf.constant(0), decoder_ids, generated, lengths, done, arrays),
            maximum_iterations=max_length,
        )
        weights = {}
        for p in paths:
            stacked = tf.transpose(arrays[p].stack(), [1, 2, 0, 3])  # (B, H, steps, T_kv)
            weights[p] = tf.pad(stacked, [[0, 0], [0, 0], [0, max_length - t], [0, 0]])
        return generated, lengths, weights

    return tf.function(decode, reduce_retracing=True)
