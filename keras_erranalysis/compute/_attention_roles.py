"""What each attention layer attends from and to: its role, read from the graph, not its name.

A heatmap's axes need tokens: the rows of a decoder's cross-attention are target positions
and its columns source tokens; an encoder's self-attention has source tokens on both axes;
a decoder's self-attention has target positions down and the decoder's inputs (the targets
shifted right) across. A layer's name says none of this reliably (``dec/self_attention``
is not an encoder layer because it lacks the word "decoder").

:func:`attention_roles` traces the model once (a ``tf.function`` trace, nothing runs) with
every attention layer hooked, and walks the traced graph back from the tensor each call
reads its queries from, and the one it reads its keys from, to the model inputs that reach
them. Then:

- queries and keys reached by different inputs: **cross**-attention;
- the same inputs, among them the decoder input: **decoder self**-attention;
- the same inputs, without the decoder input: **encoder self**-attention.

The decoder input is the one the caller names (found from the data: the labels shifted
right by a start token), else the inputs that reach some cross-attention's queries but
not its keys. Layers the trace cannot see through (a call whose signature does not name a
query and a key, or a model that does not trace) fall back to shapes: query and key
lengths that differ make a cross-attention; equal ones are matched to the one input of
that length.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from keras_erranalysis.compute._attention_hooks import _recording, find_attention_layers

Kind = Literal["cross", "encoder_self", "decoder_self"]


@dataclasses.dataclass(frozen=True)
class AttentionRole:
    """The role of one attention layer, and which inputs' tokens label its axes.

    Attributes:
        kind: ``"cross"``, ``"encoder_self"`` or ``"decoder_self"``.
        query_inputs: The model inputs that reach the layer's queries (input names as in
            ``LossReport.inputs``); empty when decided by shapes.
        key_inputs: The model inputs that reach its keys.
        query_input: The input whose tokens label the queries, or ``None`` for the
            target side (rows labelled with the tokens they predict).
        key_input: The input whose tokens label the keys (``None``: unknown, positions).
        decided_by: ``"graph"`` or ``"shapes"``.
    """

    kind: Kind
    query_inputs: tuple[str, ...] = ()
    key_inputs: tuple[str, ...] = ()
    query_input: str | None = None
    key_input: str | None = None
    decided_by: Literal["graph", "shapes"] = "graph"


def model_call_input(inputs: Mapping[str, Any]) -> Any:
    """The model's call argument for inputs named as in ``LossReport.inputs``.

    ``{"input": x}`` is one array, ``input_0, input_1...`` a list, other names a dict.
    """
    names = list(inputs)
    if names == ["input"]:
        return inputs["input"]
    if all(re.fullmatch(r"input_\d+", name) for name in names):
        return [inputs[name] for name in sorted(names, key=lambda n: int(n[6:]))]
    return dict(inputs)


def traced_input_sets(
    model: Any, inputs: Mapping[str, Any], *, layers: Sequence[Any] | None = None
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None]:
    """Which model inputs reach each attention call's queries and keys, from one trace.

    Args:
        model: A built Keras model.
        inputs: Inputs of at least one example by name (``LossReport.inputs``).
        layers: Optional selection of attention layers.

    Returns:
        ``{record key: (query inputs, key inputs)}`` (keys as in the recorded weights:
        ``path``, ``path#2`` for a second call), ``None`` for a call whose query and key
        tensors are unknown.
    """
    import tensorflow as tf

    found = find_attention_layers(model, layers)
    names = list(inputs)
    sample = {name: np.asarray(value)[:1] for name, value in inputs.items()}
    specs = [tf.TensorSpec((None, *v.shape[1:]), tf.as_dtype(v.dtype)) for v in sample.values()]
    result: dict[str, Any] = {}

    def trace(*flat: Any) -> Any:
        by_op = {tensor.op.name: name for tensor, name in zip(flat, names)}
        with _recording(found) as recorder:
            model(model_call_input(dict(zip(names, flat))), training=False)
        for key, record in recorder.records.items():
            if record.query is None or record.key is None:
                result[key] = None
                continue
            result[key] = (
                _reached(record.query, by_op, names),
                _reached(record.key, by_op, names),
            )
        return tf.constant(0)

    tf.function(trace, autograph=False).get_concrete_function(*specs)
    return result


def _reached(tensor: Any, by_op: Mapping[str, str], order: Sequence[str]) -> tuple[str, ...]:
    """The named inputs among the ancestors of ``tensor`` in its graph, in ``order``."""
    found: set[str] = set()
    stack = [getattr(tensor, "op", None)]
    seen: set[str] = set()
    while stack:
        op = stack.pop()
        if op is None or op.name in seen:
            continue
        seen.add(op.name)
        if op.name in by_op:
            found.add(by_op[op.name])
            continue
        stack.extend(t.op for t in op.inputs)
    return tuple(name for name in order if name in found)


def attention_roles(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    decoder_input: str | None = None,
    layers: Sequence[Any] | None = None,
) -> dict[str, AttentionRole]:
    """The role of every attention layer (cross, encoder self, decoder self), by the graph.

    Args:
        model: A built Keras model.
        inputs: The model's token inputs by name (``LossReport.inputs``), at least one
            example; their widths serve the shape fallback.
        shapes: ``{record key: (T_q, T_kv)}`` of the recorded weights, for the layers the
            trace cannot decide (default: none; such layers are left out).
        decoder_input: The input that takes the decoder's (shifted) tokens, when known
            (e.g. from :func:`~keras_erranalysis.compute.find_decoder_input`).
        layers: Optional selection of attention layers.

    Returns:
        ``{record key: AttentionRole}``; a layer neither the trace nor the shapes decide
        (several inputs of its length) is left out.

    Example:
        >>> roles = attention_roles(model, report.inputs)  # doctest: +SKIP
        >>> roles["dec/self_attention"].kind  # doctest: +SKIP
        'decoder_self'
    """
    names = list(inputs)
    try:
        sets = traced_input_sets(model, inputs, layers=layers)
    except Exception:  # noqa: BLE001 - a model that does not trace: shapes decide
        sets = {}
    decoders = _decoder_inputs(sets, decoder_input)
    roles: dict[str, AttentionRole] = {}
    for key, pair in sets.items():
        if pair is not None and pair[0] and pair[1]:
            roles[key] = _role_from_graph(*pair, decoders)
    widths = {name: np.shape(value)[1] for name, value in inputs.items() if np.ndim(value) == 2}
    for key, (t_q, t_kv) in (shapes or {}).items():
        if key not in roles:
            role = _role_from_shapes(int(t_q), int(t_kv), widths, decoders, names)
            if role is not None:
                roles[key] = role
    return roles


def _decoder_inputs(sets: Mapping[str, Any], decoder_input: str | None) -> set[str]:
    if decoder_input is not None:
        return {decoder_input}
    decoders: set[str] = set()
    for pair in sets.values():
        if pair is not None and set(pair[0]) != set(pair[1]):
            decoders |= set(pair[0]) - set(pair[1])
    return decoders


def _role_from_graph(
    query_inputs: tuple[str, ...], key_inputs: tuple[str, ...], decoders: set[str]
) -> AttentionRole:
    def first(candidates: Sequence[str], preferred: set[str], avoid: bool) -> str:
        chosen = [n for n in candidates if (n in preferred) != avoid]
        return (chosen or list(candidates))[0]

    if set(query_inputs) != set(key_inputs):
        return AttentionRole(
            "cross", query_inputs, key_inputs, None, first(key_inputs, decoders, avoid=True)
        )
    if decoders & set(key_inputs):
        key = first(key_inputs, decoders, avoid=False)
        return AttentionRole("decoder_self", query_inputs, key_inputs, None, key)
    key = first(key_inputs, decoders, avoid=True)
    return AttentionRole("encoder_self", query_inputs, key_inputs, key, key)


def _role_from_shapes(
    t_q: int, t_kv: int, widths: Mapping[str, int], decoders: set[str], order: Sequence[str]
) -> AttentionRole | None:
    if t_q != t_kv:
        sources = [n for n in order if widths.get(n) == t_kv and n not in decoders]
        key = sources[0] if len(sources) == 1 else None
        return AttentionRole("cross", key_input=key, decided_by="shapes")
    fitting = [n for n in order if widths.get(n) == t_q]
    if len(fitting) == 1 and fitting[0] in decoders:
        return AttentionRole("decoder_self", key_input=fitting[0], decided_by="shapes")
    if len(fitting) == 1:
        name = fitting[0]
        return AttentionRole("encoder_self", query_input=name, key_input=name, decided_by="shapes")
    return None  # several inputs of that length, or none: undecided
