"""Compute: attention weights and per-example attention diagnostics from one compiled pass.

Keras attention layers keep no weights after a forward pass: without
``return_attention_scores=True`` :class:`keras.layers.MultiHeadAttention` takes a fused path
that never forms the score matrix. This module asks for the scores without rebuilding the
model: inside the traced function it temporarily replaces each attention layer *instance's*
``call`` with a wrapper that forces ``return_attention_scores=True``, records the weights
(and the mask the layer applied) under the layer's path, and hands the normal output on.
The instance attribute is removed again in ``finally``, so the model is exactly as before,
also when the pass raises. Nothing is hooked during training steps.

Three levels, from low to high:

* :func:`recording_attention`: a context manager to use *inside* your own ``tf.function``
  (e.g. a compiled loss pass) so that attention weights and diagnostics become more
  outputs of that same pass.
* :func:`extract_attention`: the weights of a batch, ``{layer_path: (batch, heads, T_q,
  T_kv)}``, from one compiled forward pass.
* :func:`attention_diagnostics`: per-example diagnostics over a whole dataset (memory
  O(examples x layers)), plus the full weights of a few chosen examples.

Diagnostics (per example and per layer, all computed on the device):

* ``attn_entropy/<path>``: entropy of each query's weights over its valid keys, divided by
  ``log(number of valid keys)`` so 0 = all weight on one key and 1 = uniform; averaged over
  heads and over the valid queries that have at least two valid keys to choose from.
* ``attn_uncovered/<path>``: share of the valid keys (source tokens) that no valid query
  gives more than ``coverage_threshold`` of its weight (head-averaged weights). 0 = every
  source token is attended by some target token; high = tokens skipped.
* ``attn_diagonality/<path>``: how close the head-averaged weight lies to the diagonal of
  the (valid part of the) map, after scaling both axes to ``[0, 1]``:
  ``1 - D / U`` clipped to ``[0, 1]``, where ``D`` is the weight-averaged distance
  ``|i / (n_q - 1) - j / (n_k - 1)|`` summed over queries and ``U`` the same for uniform
  weights. 1 = on the diagonal, 0 = no closer than uniform attention.
* ``attn_monotonicity/<path>``: share of consecutive valid queries whose most-attended key
  (head-averaged) does not move backwards. 1 = monotone alignment. Uniform weights are
  trivially monotone, so read it together with entropy.

An example with no valid query gets NaN in every diagnostic. Valid positions come from the
mask the layer itself applied (Keras masks from ``mask_zero=True`` embeddings, padding and
causal masks, ``attention_mask``), combined with any ``query_mask`` / ``key_mask`` given.

Two Keras behaviours to know when reading the weights:

* ``MultiHeadAttention`` deletes the Keras mask of the tensors it is called on, so another
  layer that reads the same tensor after it gets no mask and really attends to padding.
  The weights show that (it is what the model does); give such layers their own masked
  tensor, or pass ``key_mask`` for the diagnostics.
* With scores asked for, Keras zeroes the weights of fully masked (padded) queries, while
  its fused path averages all values there. Outputs at real positions are identical; the
  outputs at padded query positions of a recorded pass can differ from ``predict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from keras_erranalysis._pass import check_model, model_strategy

DIAGNOSTIC_NAMES = ("attn_entropy", "attn_uncovered", "attn_diagonality", "attn_monotonicity")

# fn(layer, call, args, kwargs) -> (outputs, weights) or (outputs, weights, valid)
AttentionFn = Callable[[Any, Callable[..., Any], tuple, dict], tuple]

_USER_REGISTRY: dict[type, AttentionFn] = {}
_registry_version = 0
MaskArg = Any  # array (N, T) or Mapping[layer path, array (N, T)]


# -- registry ---------------------------------------------------------------------------


def register_attention_layer(cls: type, fn: AttentionFn) -> None:
    """Teaches the extraction how to get the attention weights of a layer class.

    ``fn(layer, call, args, kwargs)`` is called instead of the layer's ``call`` during the
    extraction pass, where ``call`` is the layer's own bound ``call`` and ``args`` /
    ``kwargs`` are what Keras passed it. It must return ``(outputs, weights)`` or
    ``(outputs, weights, valid)``: ``outputs`` exactly what ``call`` would return,
    ``weights`` of shape ``(batch, heads, T_q, T_kv)`` or ``(batch, T_q, T_kv)``, and
    optionally ``valid``, a boolean mask of the query/key pairs the layer allowed, shape
    ``(batch, T_q, T_kv)`` (broadcastable). Without ``valid``, a pair counts as valid when
    some head gives it non-zero weight (masked softmax gives exact zeros).

    Subclasses are covered too (the closest registered class wins), and a registration
    overrides the built-in handling of Keras classes.

    Args:
        cls: The layer class.
        fn: The function described above.

    Example:
        >>> def my_attention_fn(layer, call, args, kwargs):  # doctest: +SKIP
        ...     outputs, weights = call(*args, return_weights=True, **kwargs)
        ...     return outputs, weights
        >>> register_attention_layer(MyAttention, my_attention_fn)  # doctest: +SKIP
    """
    global _registry_version
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a layer class, got {type(cls).__name__}.")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    _USER_REGISTRY[cls] = fn
    _registry_version += 1


def unregister_attention_layer(cls: type) -> None:
    """Removes a registration made with :func:`register_attention_layer` (no-op if none)."""
    global _registry_version
    _USER_REGISTRY.pop(cls, None)
    _registry_version += 1


def _builtin_handlers() -> dict[type, Callable[..., Any]]:
    import keras

    return {
        keras.layers.MultiHeadAttention: _mha_family,
        keras.layers.GroupQueryAttention: _mha_family,
        keras.layers.Attention: _dot_family,  # AdditiveAttention subclasses it
    }


def _handler_for(layer: Any) -> tuple[Callable[..., Any], bool] | None:
    """(handler, is_user_fn) for the closest registered class of ``layer``, or None."""
    builtin = _builtin_handlers()
    for klass in type(layer).__mro__:
        if klass in _USER_REGISTRY:
            return _USER_REGISTRY[klass], True
        if klass in builtin:
            return builtin[klass], False
    return None


def _searched_names() -> list[str]:
    names = [  # the keras.layers names (GroupQueryAttention's class is GroupedQueryAttention)
        "keras.layers.MultiHeadAttention",
        "GroupQueryAttention",
        "Attention",
        "AdditiveAttention",
    ]
    names += [cls.__name__ for cls in _USER_REGISTRY]
    return names


# -- finding layers ---------------------------------------------------------------------


def find_attention_layers(model: Any, layers: Sequence[Any] | None = None) -> dict[str, Any]:
    """Finds the attention layers of a model at any depth, keyed by their path.

    Args:
        model: A built Keras model (functional, Sequential or subclassed) or layer.
        layers: Optional selection: layer paths, names, path suffixes (``"cross_attention"``
            matches ``"decoder/cross_attention"``) or layer objects. None selects all.

    Returns:
        ``{path: layer}`` in the model's layer order. ``path`` is ``layer.path`` (its name
        when it has no path).

    Raises:
        ValueError: When the model has no attention layer (naming the classes searched) or
            a selection matches none of them (naming those found).
    """
    found: dict[str, Any] = {}
    seen: set[int] = set()
    for layer in _all_layers(model):
        if id(layer) in seen or _handler_for(layer) is None:
            continue
        seen.add(id(layer))
        path = getattr(layer, "path", None) or layer.name
        unique, k = path, 2
        while unique in found:
            unique, k = f"{path}_{k}", k + 1
        found[unique] = layer
    if not found:
        raise ValueError(
            f"Model {getattr(model, 'name', '')!r} has no attention layer: searched at every "
            f"depth for {', '.join(_searched_names())} (keras-hub TransformerEncoder / "
            "TransformerDecoder are found through their MultiHeadAttention sublayers). For "
            "an attention layer class of your own, call register_attention_layer(cls, fn)."
        )
    if layers is None:
        return found
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        layers = [layers]
    selected: dict[str, Any] = {}
    for wanted in layers:
        matches = {
            path: layer
            for path, layer in found.items()
            if layer is wanted
            or (
                isinstance(wanted, str)
                and (path == wanted or layer.name == wanted or path.endswith("/" + wanted))
            )
        }
        if not matches:
            raise ValueError(
                f"layers={wanted!r} matches no attention layer of the model; its attention "
                f"layers are {list(found)}. Pass paths or names from that list."
            )
        selected.update(matches)
    return {path: layer for path, layer in found.items() if path in selected}


def _all_layers(model: Any) -> list[Any]:
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    result, stack = [], [model]
    while stack:  # a fallback for objects without Keras' own traversal
        layer = stack.pop()
        result.append(layer)
        stack.extend(reversed(getattr(layer, "layers", None) or getattr(layer, "_layers", [])))
    return result


# -- recording --------------------------------------------------------------------------


@dataclasses.dataclass
class AttentionRecord:
    """What one call of one attention layer produced during a recorded pass.

    Attributes:
        weights: Attention weights, ``(batch, heads, T_q, T_kv)`` (a head axis of 1 for
            single-head layers), in the layer's compute dtype.
        valid: Boolean mask of the query/key pairs the layer allowed, broadcastable to
            ``(batch, T_q, T_kv)``, or None when the layer applied no mask.
        query_valid: Boolean ``(batch, T_q)`` mask of real (non-padding) queries when the
            layer knows it but does not zero those rows itself (``keras.layers.Attention``),
            else None.
    """

    weights: Any
    valid: Any | None = None
    query_valid: Any | None = None


class AttentionRecorder:
    """Collects :class:`AttentionRecord` s while :func:`recording_attention` is active.

    Attributes:
        layers: ``{path: layer}`` of the hooked layers.
        records: ``{path: AttentionRecord}`` of the calls seen so far. A layer called
            several times in one pass (a shared layer) gets ``path``, ``path#2``, ...
    """

    def __init__(self, layers: Mapping[str, Any]) -> None:
        self.layers = dict(layers)
        self.records: dict[str, AttentionRecord] = {}

    def weights(self) -> dict[str, Any]:
        """``{path: weights tensor (batch, heads, T_q, T_kv)}`` of the recorded calls."""
        return {path: record.weights for path, record in self.records.items()}

    def diagnostics(
        self,
        *,
        query_mask: Any = None,
        key_mask: Any = None,
        coverage_threshold: float = 0.1,
    ) -> dict[str, Any]:
        """Per-example diagnostics of every recorded call, as ``(batch,)`` float32 tensors.

        Call it inside the same traced function as the forward pass.

        Args:
            query_mask: Extra boolean ``(batch, T_q)`` mask of real queries (True = real),
                one tensor for every layer or a mapping ``{path: tensor}``.
            key_mask: Extra boolean ``(batch, T_kv)`` mask of real keys, same forms.
            coverage_threshold: Weight above which a key counts as attended.

        Returns:
            ``{"attn_entropy/<path>": tensor, "attn_uncovered/<path>": ..., ...}``.
        """
        result = {}
        for path, record in self.records.items():
            values = attention_diagnostics_tensors(
                record.weights,
                valid=record.valid,
                query_valid=record.query_valid,
                query_mask=_for_layer(query_mask, path),
                key_mask=_for_layer(key_mask, path),
                coverage_threshold=coverage_threshold,
                layer_path=path,
            )
            for name, value in values.items():
                result[f"{name}/{path}"] = value
        return result


def _for_layer(mask: Any, path: str) -> Any:
    if isinstance(mask, Mapping):
        return mask.get(path.split("#")[0])
    return mask


@contextlib.contextmanager
def recording_attention(
    model: Any, layers: Sequence[Any] | None = None
) -> Iterator[AttentionRecorder]:
    """Records the attention weights of every (or the selected) attention layer.

    While active, each attention layer instance gets a ``call`` attribute that forces
    ``return_attention_scores=True``, records the weights and mask under the layer's path
    and returns only the normal output (or what the caller asked for). Flash attention is
    switched off on those layers for the duration. Everything is undone on exit, also on
    errors. Use it *inside* a ``tf.function`` and return the recorded tensors from that
    function: a traced function does not run Python again, so a context entered outside it
    records only on the first trace.

    Args:
        model: A built Keras model.
        layers: Optional selection, as in :func:`find_attention_layers`.

    Yields:
        An :class:`AttentionRecorder`; its ``records`` fill as the model runs.

    Example:
        >>> @tf.function  # doctest: +SKIP
        ... def step(x):
        ...     with recording_attention(model) as recorder:
        ...         y = model(x, training=False)
        ...     return y, recorder.weights(), recorder.diagnostics()
    """
    with _recording(find_attention_layers(model, layers)) as recorder:
        yield recorder


@contextlib.contextmanager
def _recording(found: Mapping[str, Any]) -> Iterator[AttentionRecorder]:
    recorder = AttentionRecorder(found)
    hooked: list[tuple[Any, bool, Any, dict[str, Any]]] = []
    try:
        for path, layer in found.items():
            had_own_call = "call" in layer.__dict__
            previous = layer.__dict__.get("call")
            saved = {
                name: layer.__dict__[name]
                for name in ("_flash_attention", "_return_attention_scores")
                if name in layer.__dict__
            }
            hooked.append((layer, had_own_call, previous, saved))
            if saved.get("_flash_attention"):
                # A layer with flash attention refuses to return scores.
                object.__setattr__(layer, "_flash_attention", False)
            object.__setattr__(layer, "call", _make_wrapper(layer, path, recorder))
        yield recorder
    finally:
        for layer, had_own_call, previous, saved in reversed(hooked):
            if had_own_call:
                object.__setattr__(layer, "call", previous)
            else:
                layer.__dict__.pop("call", None)
            for name, value in saved.items():
                object.__setattr__(layer, name, value)


def _make_wrapper(layer: Any, path: str, recorder: AttentionRecorder) -> Callable[..., Any]:
    original = layer.call  # bound class method (or an outer hook when nested)
    handler, is_user_fn = _handler_for(layer)
    signature = inspect.signature(type(layer).call.__get__(layer, type(layer)))

    def call(*args: Any, **kwargs: Any) -> Any:
        if is_user_fn:
            result = handler(layer, original, args, kwargs)
            if not isinstance(result, tuple) or len(result) not in (2, 3):
                raise ValueError(
                    f"The function registered for {type(layer).__name__} must return "
                    f"(outputs, weights) or (outputs, weights, valid); got {type(result)}."
                )
            outputs, weights = result[0], result[1]
            record = AttentionRecord(weights, result[2] if len(result) == 3 else None)
            record.weights = _as_4d(record.weights, layer, path)
            if record.valid is None:
                record.valid = tf.reduce_any(tf.not_equal(record.weights, 0), axis=1)
        else:
            outputs, record = handler(layer, original, signature, args, kwargs)
            record.weights = _as_4d(record.weights, layer, path)
        key, k = path, 2
        while key in recorder.records:
            key, k = f"{path}#{k}", k + 1
        recorder.records[key] = record
        return outputs

    return call


def _as_4d(weights: Any, layer: Any, path: str) -> Any:
    weights = tf.convert_to_tensor(weights)
    if weights.shape.rank == 3:
        weights = weights[:, None]
    if weights.shape.rank != 4:
        raise ValueError(
            f"Attention layer {path!r} ({type(layer).__name__}) gives weights of rank "
            f"{weights.shape.rank}; only sequence attention (batch, heads, T_q, T_kv) is "
            "supported (e.g. not MultiHeadAttention with several attention_axes). Leave it "
            "out with layers=[...]."
        )
    return weights


def _mha_family(
    layer: Any, call: Callable[..., Any], signature: inspect.Signature, args: tuple, kwargs: dict
) -> tuple[Any, AttentionRecord]:
    """MultiHeadAttention, its subclasses (keras-hub's CachedMultiHeadAttention) and GQA."""
    import keras

    bound = signature.bind(*args, **kwargs)
    arguments = bound.arguments
    wanted = bool(arguments.get("return_attention_scores", False))
    # Read the masks before the call: MultiHeadAttention removes the Keras masks.
    valid = _mha_valid(layer, signature, arguments, keras)
    arguments["return_attention_scores"] = True
    result = call(*bound.args, **bound.kwargs)
    weights = result[1]
    if wanted:
        outputs = result
    elif len(result) == 2:
        outputs = result[0]
    else:  # (output, scores, cache) -> (output, cache)
        outputs = (result[0], *result[2:])
    return outputs, AttentionRecord(weights, valid)


def _mha_valid(
    layer: Any, signature: inspect.Signature, arguments: Mapping[str, Any], keras: Any
) -> Any:
    attention_mask = arguments.get("attention_mask")
    if "query_mask" not in signature.parameters or not hasattr(layer, "_compute_attention_mask"):
        # e.g. CachedMultiHeadAttention: only the explicit attention_mask is applied.
        return None if attention_mask is None else tf.cast(attention_mask, tf.bool)
    query, value = arguments["query"], arguments["value"]
    if isinstance(layer, keras.layers.MultiHeadAttention):
        # MHA ignores a query_mask argument and reads the Keras mask of the query.
        query_mask = getattr(query, "_keras_mask", None)
    else:
        query_mask = arguments.get("query_mask")
    valid = layer._compute_attention_mask(
        query,
        value,
        query_mask=query_mask,
        value_mask=arguments.get("value_mask"),
        key_mask=arguments.get("key_mask"),
        attention_mask=attention_mask,
        use_causal_mask=bool(arguments.get("use_causal_mask", False)),
    )
    return None if valid is None else tf.cast(valid, tf.bool)


def _dot_family(
    layer: Any, call: Callable[..., Any], signature: inspect.Signature, args: tuple, kwargs: dict
) -> tuple[Any, AttentionRecord]:
    """keras.layers.Attention and AdditiveAttention: (batch, T_q, T_kv) weights."""
    bound = signature.bind(*args, **kwargs)
    arguments = bound.arguments
    wanted = bool(arguments.get("return_attention_scores", False))
    inputs = arguments["inputs"]
    mask = arguments.get("mask")
    query_mask = mask[0] if mask else None
    value_mask = mask[1] if mask else None
    valid = None
    if value_mask is not None:
        valid = tf.cast(value_mask, tf.bool)[:, None, :]
    if arguments.get("use_causal_mask", False):
        t_q, t_kv = tf.shape(inputs[0])[1], tf.shape(inputs[1])[1]
        rows = tf.range(t_q)[:, None]
        cols = tf.range(t_kv)[None, :]
        causal = (rows >= cols)[None]
        valid = causal if valid is None else valid & causal
    arguments["return_attention_scores"] = True
    result = call(*bound.args, **bound.kwargs)
    outputs = result if wanted else result[0]
    query_valid = None if query_mask is None else tf.cast(query_mask, tf.bool)
    return outputs, AttentionRecord(result[1], valid, query_valid)


# -- diagnostics on the device ----------------------------------------------------------


def attention_diagnostics_tensors(
    weights: Any,
    *,
    valid: Any = None,
    query_valid: Any = None,
    query_mask: Any = None,
    key_mask: Any = None,
    coverage_threshold: float = 0.1,
    layer_path: str = "",
) -> dict[str, Any]:
    """Per-example attention diagnostics of one layer, as TensorFlow ops.

    Works eagerly, inside ``tf.function`` and with XLA. The definitions are in the module
    docstring.

    Args:
        weights: ``(batch, heads, T_q, T_kv)`` or ``(batch, T_q, T_kv)`` attention weights.
        valid: Boolean mask of allowed query/key pairs, broadcastable to
            ``(batch, T_q, T_kv)``; None = all pairs.
        query_valid: Boolean ``(batch, T_q)`` mask of real queries; None = all.
        query_mask: Another ``(batch, T_q)`` mask of real queries (e.g. from the user).
        key_mask: A ``(batch, T_kv)`` mask of real keys.
        coverage_threshold: Weight above which a key counts as attended by a query.
        layer_path: Used in error messages only.

    Returns:
        ``{"attn_entropy": (batch,), "attn_uncovered": ..., "attn_diagonality": ...,
        "attn_monotonicity": ...}`` float32 tensors; NaN for an example with no valid query.
    """
    w = tf.cast(tf.convert_to_tensor(weights), tf.float32)
    if w.shape.rank == 3:
        w = w[:, None]
    shape = tf.shape(w)
    batch, t_q, t_kv = shape[0], shape[2], shape[3]
    pair = tf.ones(tf.stack([batch, t_q, t_kv]), tf.bool)
    if valid is not None:
        valid = tf.cast(valid, tf.bool)
        if valid.shape.rank == 4:  # per-head masks: a pair is valid if any head may use it
            valid = tf.reduce_any(valid, axis=1)
        if valid.shape.rank == 2:
            valid = valid[None]
        pair = pair & valid
    for mask, axis, what in (
        (query_valid, 2, "query"),
        (query_mask, 2, "query"),
        (key_mask, 1, "key"),
    ):
        if mask is None:
            continue
        mask = tf.cast(mask, tf.bool)
        _check_mask_length(mask, w, axis=3 if what == "key" else 2, what=what, path=layer_path)
        pair = pair & tf.expand_dims(mask, axis)
    pair_f = tf.cast(pair, tf.float32)
    n_keys = tf.reduce_sum(pair_f, axis=-1)  # (B, Q)
    query_ok = n_keys > 0
    query_ok_f = tf.cast(query_ok, tf.float32)
    n_queries = tf.reduce_sum(query_ok_f, axis=-1)  # (B,)

    # Renormalise over the valid keys (a user mask may drop keys the model used).
    masked = w * pair_f[:, None]
    probs = tf.math.divide_no_nan(masked, tf.reduce_sum(masked, axis=-1, keepdims=True))

    # Entropy, normalised by log(valid keys); only queries with a choice count.
    plogp = tf.where(probs > 0, probs * tf.math.log(tf.maximum(probs, 1e-30)), 0.0)
    entropy = -tf.reduce_sum(plogp, axis=-1)  # (B, H, Q)
    entropy = tf.math.divide_no_nan(entropy, tf.math.log(tf.maximum(n_keys, 1.0))[:, None])
    choice = tf.cast(query_ok & (n_keys >= 2), tf.float32)
    entropy = tf.math.divide_no_nan(
        tf.reduce_sum(tf.reduce_mean(entropy, axis=1) * choice, axis=-1),
        tf.reduce_sum(choice, axis=-1),
    )

    mean_probs = tf.reduce_mean(probs, axis=1)  # (B, Q, K), zero outside valid pairs

    # Coverage: valid keys that no valid query attends to above the threshold.
    key_ok = tf.reduce_any(pair, axis=1)  # (B, K)
    attended = tf.reduce_any(pair & (mean_probs > coverage_threshold), axis=1)
    uncovered = tf.math.divide_no_nan(
        tf.reduce_sum(tf.cast(key_ok & ~attended, tf.float32), axis=-1),
        tf.reduce_sum(tf.cast(key_ok, tf.float32), axis=-1),
    )

    # Diagonality: weighted distance to the diagonal vs. that of uniform weights.
    key_ok_f = tf.cast(key_ok, tf.float32)
    n_valid_keys = tf.reduce_sum(key_ok_f, axis=-1)
    query_pos = (tf.cumsum(query_ok_f, axis=-1) - 1.0) / tf.maximum(n_queries - 1.0, 1.0)[:, None]
    key_pos = (tf.cumsum(key_ok_f, axis=-1) - 1.0) / tf.maximum(n_valid_keys - 1.0, 1.0)[:, None]
    distance = tf.abs(query_pos[:, :, None] - key_pos[:, None, :]) * pair_f  # (B, Q, K)
    weighted = tf.reduce_sum(mean_probs * distance, axis=[1, 2])
    uniform = tf.reduce_sum(
        tf.math.divide_no_nan(tf.reduce_sum(distance, axis=-1), n_keys), axis=-1
    )
    diagonality = tf.where(
        uniform > 0,
        tf.clip_by_value(1.0 - tf.math.divide_no_nan(weighted, uniform), 0.0, 1.0),
        1.0,
    )

    # Monotonicity: the most-attended key of consecutive valid queries never moves back.
    argmax = tf.argmax(tf.where(pair, mean_probs, -1.0), axis=-1, output_type=tf.int32)
    order = tf.argsort(tf.cast(~query_ok, tf.int32), axis=-1, stable=True)
    argmax = tf.gather(argmax, order, batch_dims=1)  # valid queries first, in order
    step_index = tf.range(t_q - 1)[None, :]
    has_pair = tf.cast(step_index + 1, tf.float32) < n_queries[:, None]
    forward = argmax[:, 1:] >= argmax[:, :-1]
    n_pairs = tf.reduce_sum(tf.cast(has_pair, tf.float32), axis=-1)
    monotonicity = tf.where(
        n_pairs > 0,
        tf.math.divide_no_nan(
            tf.reduce_sum(tf.cast(forward & has_pair, tf.float32), axis=-1), n_pairs
        ),
        1.0,
    )

    nan = tf.fill(tf.shape(n_queries), math.nan)
    any_query = n_queries > 0
    values = {
        "attn_entropy": entropy,
        "attn_uncovered": uncovered,
        "attn_diagonality": diagonality,
        "attn_monotonicity": monotonicity,
    }
    return {name: tf.where(any_query, value, nan) for name, value in values.items()}


def _check_mask_length(mask: Any, weights: Any, *, axis: int, what: str, path: str) -> None:
    mask_len = mask.shape[-1] if mask.shape.rank else None
    weight_len = weights.shape[axis]
    if mask_len is not None and weight_len is not None and mask_len != weight_len:
        length = "T_q" if what == "query" else "T_kv"
        raise ValueError(
            f"{what}_mask has length {mask_len} but attention layer {path!r} has "
            f"{length}={weight_len}. Give masks per layer: {what}_mask={{'{path}': array}}."
        )


# -- compiled passes --------------------------------------------------------------------

# model -> {options: compiled pass}. Weak keys, and the passes hold the model only weakly,
# so a deleted model frees its traced graphs.
_PASS_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Pass:
    """One compiled forward pass returning attention weights and/or diagnostics."""

    def __init__(
        self,
        model: Any,
        paths: Sequence[str],
        *,
        weights: bool,
        diagnostics: bool,
        coverage_threshold: float,
        jit: bool,
    ) -> None:
        model_ref = weakref.ref(model)
        paths = list(paths)
        self.jit = jit
        strategy = model_strategy(model)

        def replica_step(x: Any, masks: Mapping[str, Any]) -> dict[str, Any]:
            model = model_ref()
            found = {p: layer for p, layer in find_attention_layers(model).items() if p in paths}
            with _recording(found) as recorder:
                model(x, training=False)
            if not recorder.records:
                raise ValueError(
                    f"The attention layers {paths} were not called in the forward pass, so "
                    "they have no weights. Check the inputs, or select layers that the "
                    "model uses with layers=[...]."
                )
            out: dict[str, Any] = {}
            if weights:
                for path, value in recorder.weights().items():
                    out["w/" + path] = value
            if diagnostics:
                out.update(
                    recorder.diagnostics(
                        query_mask=_mask_arg(masks, "query"),
                        key_mask=_mask_arg(masks, "key"),
                        coverage_threshold=coverage_threshold,
                    )
                )
            return out

        if strategy.num_replicas_in_sync > 1:
            # One compiled step per replica: a single traced function would be reused
            # across replicas with the variables (and device) of the first one under XLA.
            per_replica_steps: dict[Any, Any] = {}

            def on_replica(x: Any, masks: Mapping[str, Any]) -> dict[str, Any]:
                replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
                replica = int(tf.get_static_value(replica_id))
                if replica not in per_replica_steps:
                    per_replica_steps[replica] = tf.function(
                        replica_step, jit_compile=jit, reduce_retracing=True
                    )
                return per_replica_steps[replica](x, masks)

            def step(x: Any, masks: Mapping[str, Any]) -> dict[str, Any]:
                per_replica = strategy.run(on_replica, args=(x, masks))
                return {k: strategy.gather(v, axis=0) for k, v in per_replica.items()}

            self.function = tf.function(step, reduce_retracing=True)
        else:
            self.function = tf.function(replica_step, jit_compile=jit, reduce_retracing=True)

    def __call__(self, x: Any, masks: Mapping[str, Any]) -> dict[str, np.ndarray]:
        result = self.function(x, masks)
        return {key: value.numpy() for key, value in result.items()}


def _mask_arg(masks: Mapping[str, Any], name: str) -> Any:
    """The user mask for all layers (``name``) or per layer (``name/<path>``), or None."""
    if name in masks:
        return masks[name]
    prefix = name + "/"
    nested = {k[len(prefix) :]: v for k, v in masks.items() if k.startswith(prefix)}
    return nested or None


def _get_pass(model: Any, paths: Sequence[str], **options: Any) -> _Pass:
    key = (tuple(paths), _registry_version, tuple(sorted(options.items())))
    try:
        cache = _PASS_CACHE.setdefault(model, {})
    except TypeError:  # an unhashable model: no caching
        cache = {}
    if key not in cache:
        cache[key] = _Pass(model, paths, **options)
    return cache[key]


def _check_jit(jit_compile: Any) -> None:
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}.")


def _run_batches(
    model: Any,
    paths: Sequence[str],
    batches: Any,
    *,
    jit_compile: bool | Literal["auto"],
    coverage_threshold: float,
    diagnostics: bool,
    weights_wanted: Callable[[int, int], bool],
    progress: Any = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Runs the pass over ``(x, masks)`` batches; yields (offset, host results) per batch.

    ``weights_wanted(offset, batch_size)`` says whether a batch needs its weights on the
    host; the other batches run a pass that returns diagnostics only.
    """
    _check_jit(jit_compile)
    jit = bool(jit_compile)
    offset = 0
    first = True
    for index, (x, masks) in enumerate(batches):
        size = _batch_size(x, model_strategy(model))
        need_weights = weights_wanted(offset, size)
        if need_weights or diagnostics:
            options = dict(
                weights=need_weights,
                diagnostics=diagnostics,
                coverage_threshold=float(coverage_threshold),
            )
            try:
                host = _get_pass(model, paths, jit=jit, **options)(x, masks)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
                if not (jit and jit_compile == "auto" and first):
                    raise
                warnings.warn(
                    f"XLA could not compile the attention pass ({type(error).__name__}); "
                    "running without XLA. Pass jit_compile=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                jit = False
                host = _get_pass(model, paths, jit=False, **options)(x, masks)
            first = False
            yield offset, host
        offset += size
        if progress is not None:
            progress.update(index + 1)


def _batch_size(x: Any, strategy: Any = None) -> int:
    leaves = tf.nest.flatten(x)
    if not leaves:
        raise ValueError("The inputs are empty: pass at least one input array.")
    leaf = leaves[0]
    if isinstance(leaf, tf.distribute.DistributedValues):
        local = strategy.experimental_local_results(leaf)
        return int(sum(int(part.shape[0]) for part in local))
    return int(np.shape(leaf)[0]) if np.ndim(leaf) else 1


def _pad_to(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenates on axis 0, zero-padding the last two axes to the largest size."""
    if len({a.shape[1:] for a in arrays}) == 1:
        return np.concatenate(arrays, axis=0)
    t_q = max(a.shape[-2] for a in arrays)
    t_kv = max(a.shape[-1] for a in arrays)
    padded = [
        np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, t_q - a.shape[-2]), (0, t_kv - a.shape[-1])])
        for a in arrays
    ]
    return np.concatenate(padded, axis=0)


def _distributed(model: Any, dataset: Any) -> Any:
    """Splits each batch of ``dataset`` over the model's replicas when there are several."""
    strategy = model_strategy(model)
    if strategy.num_replicas_in_sync <= 1:
        return dataset
    return strategy.experimental_distribute_dataset(dataset)


# -- public: a batch -------------------------------------------------------------------


def extract_attention(
    model: Any,
    x: Any,
    *,
    layers: Sequence[Any] | None = None,
    jit_compile: bool | Literal["auto"] = "auto",
    diagnostics: bool = False,
    batch_size: int | None = None,
    query_mask: MaskArg = None,
    key_mask: MaskArg = None,
    coverage_threshold: float = 0.1,
) -> dict[str, np.ndarray]:
    """Attention weights of every attention layer for a batch, from one compiled pass.

    Args:
        model: A built Keras 3 model (TensorFlow backend), possibly under a
            ``tf.distribute`` strategy.
        x: The model's inputs for some examples (an array, a list or a dict of arrays), as
            you would pass them to ``model(x)``.
        layers: Optional selection of layers (paths, names, path suffixes or layer
            objects); default all attention layers found at any depth.
        jit_compile: ``True`` for XLA, ``False`` for none, ``"auto"`` to try XLA and fall
            back when the model does not compile with it.
        diagnostics: Also return the per-example diagnostics (see the module docstring),
            under keys ``"attn_entropy/<path>"`` etc., each of shape ``(batch,)``.
        batch_size: Split ``x`` into batches of this size (default: one pass over all).
        query_mask: Extra boolean ``(batch, T_q)`` mask of real queries for the diagnostics
            (True = real): one array for all layers, or ``{path: array}``.
        key_mask: Extra boolean ``(batch, T_kv)`` mask of real keys, same forms.
        coverage_threshold: Weight above which a key counts as attended (``attn_uncovered``).

    Returns:
        ``{layer_path: float32 array (batch, heads, T_q, T_kv)}`` (a head axis of 1 for
        single-head layers; padded keys carry exactly zero weight), plus the diagnostics
        when asked. A layer called twice (shared) also gets ``path#2``.

    Raises:
        ValueError: For a model without attention layers (naming the classes searched), an
            unknown layer selection, or an unbuilt model.

    Example:
        >>> weights = extract_attention(model, x_batch)  # doctest: +SKIP
        >>> weights["decoder/cross_attention"].shape  # doctest: +SKIP
        (8, 4, 12, 15)
    """
    check_model(model)
    if isinstance(x, tf.data.Dataset):
        raise TypeError(
            "extract_attention takes the inputs of one batch (arrays); for a dataset use "
            "attention_diagnostics(model, dataset, keep=[...])."
        )
    paths = list(find_attention_layers(model, layers))  # fails early with a clear message
    n = _batch_size(x)
    masks = _user_masks(query_mask, key_mask)
    if diagnostics:
        _check_mask_lengths(model, paths, x, masks)
    batches = _array_batches(model, x, masks, n if batch_size is None else batch_size, n)
    weights: dict[str, list[np.ndarray]] = {}
    diag: dict[str, list[np.ndarray]] = {}
    for _, host in _run_batches(
        model,
        paths,
        batches,
        jit_compile=jit_compile,
        coverage_threshold=coverage_threshold,
        diagnostics=diagnostics,
        weights_wanted=lambda offset, size: True,
    ):
        for key, value in host.items():
            if key.startswith("w/"):
                weights.setdefault(key[2:], []).append(value.astype(np.float32, copy=False))
            else:
                diag.setdefault(key, []).append(value)
    result = {path: _pad_to(parts) for path, parts in weights.items()}
    result.update({key: np.concatenate(parts) for key, parts in diag.items()})
    return result


def _user_masks(query_mask: MaskArg, key_mask: MaskArg) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for name, mask in (("query", query_mask), ("key", key_mask)):
        if mask is None:
            continue
        if isinstance(mask, Mapping):
            for path, array in mask.items():
                masks[f"{name}/{path}"] = np.asarray(array).astype(bool)
        else:
            masks[name] = np.asarray(mask).astype(bool)
    return masks


def _check_mask_lengths(model: Any, paths: Sequence[str], x: Any, masks: Mapping) -> None:
    """Compares user mask lengths with each layer's T_q / T_kv, on one example."""
    if not masks:
        return
    first = tf.nest.map_structure(lambda a: np.asarray(a)[:1], x)
    host = _get_pass(
        model, paths, jit=False, weights=True, diagnostics=False, coverage_threshold=0.1
    )(first, {})
    for key, value in host.items():
        path = key[2:]
        for name, axis, length in (("query", -2, "T_q"), ("key", -1, "T_kv")):
            mask = masks.get(f"{name}/{path.split('#')[0]}", masks.get(name))
            if mask is not None and mask.shape[-1] != value.shape[axis]:
                raise ValueError(
                    f"{name}_mask has length {mask.shape[-1]} but attention layer {path!r} "
                    f"has {length}={value.shape[axis]}. Give masks per layer: "
                    f"{name}_mask={{'{path}': array}}, or select layers with layers=[...]."
                )


def _array_batches(
    model: Any, x: Any, masks: Mapping[str, np.ndarray], batch_size: int, n: int
) -> Iterator[tuple[Any, dict[str, Any]]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for name, mask in masks.items():
        if mask.ndim != 2 or mask.shape[0] != n:
            raise ValueError(
                f"{name.split('/')[0]}_mask must have shape (examples, T) with {n} examples; "
                f"got {mask.shape}."
            )
    x = tf.nest.map_structure(np.asarray, x)
    if model_strategy(model).num_replicas_in_sync > 1:
        # tf.data reads a list as one tensor: hand several inputs over as a tuple.
        inputs = tuple(x) if isinstance(x, list) else x
        dataset = tf.data.Dataset.from_tensor_slices((inputs, dict(masks))).batch(batch_size)
        yield from _distributed(model, dataset)
        return
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        part = tf.nest.map_structure(lambda a, s=start, e=stop: a[s:e], x)
        yield part, {k: v[start:stop] for k, v in masks.items()}


# -- public: a dataset -----------------------------------------------------------------


@dataclasses.dataclass
class AttentionDiagnostics:
    """Attention diagnostics of a whole dataset, and the weights of a few examples.

    Attributes:
        diagnostics: ``{"attn_entropy/<path>": (N,) float32, ...}``, in data order, ready
            to join a per-example table (e.g. ``LossReport.extra``).
        weights: ``{path: float32 (len(kept), heads, T_q, T_kv)}`` for the kept examples,
            in the order of ``kept``; zero-padded where batches had different lengths.
        kept: Positions (in data order) of the examples whose weights were kept.
        layer_paths: The layers analysed.
        num_examples: N.
    """

    diagnostics: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    kept: np.ndarray
    layer_paths: list[str]
    num_examples: int

    def layer_means(self) -> dict[str, dict[str, float]]:
        """``{diagnostic: {path: mean over examples (NaN-aware)}}``: a one-look summary."""
        summary: dict[str, dict[str, float]] = {}
        for key, values in self.diagnostics.items():
            name, path = key.split("/", 1)
            finite = values[np.isfinite(values)]
            summary.setdefault(name, {})[path] = float(finite.mean()) if finite.size else math.nan
        return summary


def attention_diagnostics(
    model: Any,
    data: Any,
    *,
    layers: Sequence[Any] | None = None,
    keep: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
    query_mask: MaskArg = None,
    key_mask: MaskArg = None,
    coverage_threshold: float = 0.1,
    jit_compile: bool | Literal["auto"] = "auto",
    verbose: int = 0,
) -> AttentionDiagnostics:
    """Per-example attention diagnostics over a dataset, keeping few weights on the host.

    Each batch runs one compiled pass that reduces the weights to four numbers per example
    and layer on the device; only batches holding a ``keep`` example also bring their
    weights back, and only the kept rows are stored. Host memory is O(examples x layers)
    plus the kept weights.

    Args:
        model: A built Keras 3 model (TensorFlow backend).
        data: The inputs: an array / list / dict of arrays, a tuple ``(x, y)`` or
            ``(x, y, sample_weight)`` of them, or a batched ``tf.data.Dataset`` yielding
            ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``. Labels are ignored.
        layers: Optional selection of attention layers (paths, names or layer objects).
        keep: Positions (in data order) of examples whose full weights to keep, e.g. the
            hardest ones.
        batch_size: Batch size for array data (a dataset keeps its own batching).
        query_mask: Extra boolean ``(N, T_q)`` mask of real queries (arrays only), one
            array for all layers or ``{path: array}``.
        key_mask: Extra boolean ``(N, T_kv)`` mask of real keys, same forms.
        coverage_threshold: Weight above which a key counts as attended.
        jit_compile: ``True``, ``False`` or ``"auto"`` (try XLA, fall back cleanly).
        verbose: 0 for silence, 1 for a progress bar.

    Returns:
        An :class:`AttentionDiagnostics`.

    Raises:
        ValueError: For a model without attention, an unknown layer, an empty dataset, or
            ``keep`` positions beyond the data.

    Example:
        >>> result = attention_diagnostics(model, (x_val, y_val), keep=[3, 17])  # doctest: +SKIP
        >>> report.extra.update(result.diagnostics)  # doctest: +SKIP
    """
    check_model(model)
    paths = list(find_attention_layers(model, layers))
    keep_arr = np.asarray([] if keep is None else keep, dtype=np.int64).reshape(-1)
    if keep_arr.size and keep_arr.min() < 0:
        raise ValueError("keep holds negative positions: pass positions in data order (>= 0).")
    keep_set = set(keep_arr.tolist())
    masks = _user_masks(query_mask, key_mask)
    batches, total = _data_batches(model, data, masks, batch_size)
    if masks:
        _check_mask_lengths(model, paths, _inputs_of(data), masks)
    progress = None
    if verbose:
        import keras

        progress = keras.utils.Progbar(total, unit_name="batch")

    def weights_wanted(offset: int, size: int) -> bool:
        return any(offset <= i < offset + size for i in keep_set)

    diag: dict[str, list[np.ndarray]] = {}
    kept_rows: dict[int, dict[str, np.ndarray]] = {}
    n = 0
    for offset, host in _run_batches(
        model,
        paths,
        batches,
        jit_compile=jit_compile,
        coverage_threshold=coverage_threshold,
        diagnostics=True,
        weights_wanted=weights_wanted,
        progress=progress,
    ):
        size = 0
        for key, value in host.items():
            if key.startswith("w/"):
                for i in keep_set:
                    if offset <= i < offset + value.shape[0]:
                        row = value[i - offset].astype(np.float32)
                        kept_rows.setdefault(i, {})[key[2:]] = row
            else:
                diag.setdefault(key, []).append(value)
                size = value.shape[0]
        n = offset + size
    if not diag:
        raise ValueError("The data holds no examples: the dataset is empty or exhausted.")
    missing = sorted(keep_set - set(kept_rows))
    if missing:
        raise ValueError(
            f"keep asks for examples {missing[:5]} but the data holds only {n} examples."
        )
    weights: dict[str, np.ndarray] = {}
    if keep_arr.size:
        for path in kept_rows[int(keep_arr[0])]:
            weights[path] = _pad_to([kept_rows[int(i)][path][None] for i in keep_arr])
    return AttentionDiagnostics(
        diagnostics={key: np.concatenate(parts) for key, parts in diag.items()},
        weights=weights,
        kept=keep_arr,
        layer_paths=paths,
        num_examples=n,
    )


def _data_batches(
    model: Any, data: Any, masks: Mapping[str, np.ndarray], batch_size: int
) -> tuple[Iterator[tuple[Any, dict[str, Any]]], int | None]:
    if isinstance(data, tf.data.Dataset):
        if masks:
            raise ValueError(
                "query_mask / key_mask work with array data only: pass the data as arrays, "
                "or give the model Keras masks (e.g. Embedding(mask_zero=True))."
            )
        card = int(tf.data.experimental.cardinality(data))
        if card == tf.data.experimental.INFINITE_CARDINALITY:
            raise ValueError(
                "The dataset is infinite (it repeats): pass a finite one, e.g. dataset.take(n)."
            )

        total = card if card >= 0 else None
        if model_strategy(model).num_replicas_in_sync > 1:
            # map passes a tuple element as separate arguments: x is always the first.
            inputs_only = data.map(lambda *element: (element[0], {}))
            return iter(_distributed(model, inputs_only)), total

        def generate() -> Iterator[tuple[Any, dict[str, Any]]]:
            for element in data:
                if isinstance(element, tuple) and 1 <= len(element) <= 3:
                    element = element[0]
                yield element, {}

        return generate(), total
    x = _inputs_of(data)
    n = _batch_size(x)
    if n == 0:
        raise ValueError("The data holds no examples: x is empty.")
    return _array_batches(model, x, masks, batch_size, n), math.ceil(n / batch_size)


def _inputs_of(data: Any) -> Any:
    """The inputs of array data given as x, (x, y) or (x, y, sample_weight)."""
    if isinstance(data, tuple) and len(data) in (2, 3):
        return data[0]
    return data
