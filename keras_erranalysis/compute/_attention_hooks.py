"""Finding attention layers and recording their weights during a call, without a rebuild."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow as tf

from keras_erranalysis.compute._attention_diagnostics import attention_diagnostics_tensors

# fn(layer, call, args, kwargs) -> (outputs, weights) or (outputs, weights, valid)
AttentionFn = Callable[[Any, Callable[..., Any], tuple, dict], tuple]


_USER_REGISTRY: dict[type, AttentionFn] = {}


_registry_version = 0


MaskArg = Any  # array (N, T) or Mapping[layer path, array (N, T)]


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
        query: The tensor the layer read its queries from (None when unknown), so the
            inputs that reach it can be traced (:func:`attention_roles`).
        key: The tensor the layer read its keys from (None when unknown).
    """

    weights: Any
    valid: Any | None = None
    query_valid: Any | None = None
    query: Any | None = dataclasses.field(default=None, repr=False)
    key: Any | None = dataclasses.field(default=None, repr=False)


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
            record.query, record.key = _query_and_key(signature, args, kwargs)
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


def _query_and_key(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """The query and key tensors of a call whose signature names them, else ``(None, None)``.

    Keras' convention: ``call(query, value, key=None, ...)`` (the key defaults to the
    value), or ``call(inputs=[query, value, key], ...)``.
    """
    try:
        arguments = signature.bind(*args, **kwargs).arguments
    except TypeError:
        return None, None
    if "query" in arguments and "value" in arguments:
        key = arguments.get("key")
        return arguments["query"], arguments["value"] if key is None else key
    inputs = arguments.get("inputs")
    if isinstance(inputs, list | tuple) and len(inputs) in (2, 3):
        return inputs[0], inputs[-1]
    return None, None


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


def _call_with_scores(call: Callable[..., Any], bound: inspect.BoundArguments) -> tuple[bool, Any]:
    """Calls the layer with ``return_attention_scores=True``; says if the caller asked too."""
    wanted = bool(bound.arguments.get("return_attention_scores", False))
    bound.arguments["return_attention_scores"] = True
    return wanted, call(*bound.args, **bound.kwargs)


def _mha_family(
    layer: Any, call: Callable[..., Any], signature: inspect.Signature, args: tuple, kwargs: dict
) -> tuple[Any, AttentionRecord]:
    """MultiHeadAttention, its subclasses (keras-hub's CachedMultiHeadAttention) and GQA."""
    import keras

    bound = signature.bind(*args, **kwargs)
    # Read the masks before the call: MultiHeadAttention removes the Keras masks.
    valid = _mha_valid(layer, signature, bound.arguments, keras)
    query_and_key = _query_and_key(signature, args, kwargs)
    wanted, result = _call_with_scores(call, bound)
    weights = result[1]
    if wanted:
        outputs = result
    elif len(result) == 2:
        outputs = result[0]
    else:  # (output, scores, cache) -> (output, cache)
        outputs = (result[0], *result[2:])
    return outputs, AttentionRecord(weights, valid, None, *query_and_key)


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
    query_and_key = _query_and_key(signature, args, kwargs)
    wanted, result = _call_with_scores(call, bound)
    outputs = result if wanted else result[0]
    query_valid = None if query_mask is None else tf.cast(query_mask, tf.bool)
    return outputs, AttentionRecord(result[1], valid, query_valid, *query_and_key)
