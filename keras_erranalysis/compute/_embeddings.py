"""compute_embeddings: per-example vectors from a layer of the model, pooled on the device."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from keras_erranalysis._columns import Pooling, check_pooling

_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_layer(model: Any) -> Any:
    """The layer :func:`compute_embeddings` uses when none is named.

    The last layer in the model's graph, before the output, whose output is a single float
    tensor of shape ``(batch, features)`` or ``(batch, time, features)``, skipping output
    layers and layers whose output has the output's own shape (logits before a softmax).
    For a classifier this is typically the pooled encoder output (the input of the final
    ``Dense``); for a sequence model, the last hidden states (pooled over time).

    Args:
        model: A functional or ``Sequential`` Keras model.

    Returns:
        The Keras layer.

    Raises:
        ValueError: For a subclassed model (no graph to read) or when no layer qualifies;
            the message says to pass ``layer=``.
    """
    outputs = _model_outputs(model)
    output_layers = {
        id(t._keras_history.operation) for t in outputs if hasattr(t, "_keras_history")
    }
    output_shapes = {tuple(t.shape) for t in outputs}
    input_ids = {id(t) for t in _flat(model.inputs)}
    for layer in reversed(model.layers):
        if id(layer) in output_layers or type(layer).__name__ == "InputLayer":
            continue
        tensor = _layer_output(layer)
        if tensor is None or id(tensor) in input_ids:
            continue
        shape = tuple(tensor.shape)
        if len(shape) not in (2, 3) or shape in output_shapes:
            continue
        if not str(tensor.dtype).startswith(("float", "bfloat")):
            continue
        return layer
    raise ValueError(
        f"No layer of model {model.name!r} has a (batch, [time,] features) float output "
        "before the output layer. Pass layer='<name>' (see model.summary())."
    )


def _model_outputs(model: Any) -> list[Any]:
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs or not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no graph of layers to read (a "
            "subclassed model, or one not built on keras.Input). Build it as a functional or "
            "Sequential model, or compute embeddings yourself and pass them to the run."
        )
    return _flat(outputs)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flat(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return [value]


def _layer_output(layer: Any) -> Any:
    try:
        tensor = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None  # shared layer (several call sites) or never called symbolically
    return tensor if hasattr(tensor, "shape") and hasattr(tensor, "dtype") else None


def resolve_layer(model: Any, layer: Any = None) -> Any:
    """Returns the layer named by ``layer`` (a name or a Layer), or :func:`default_layer`."""
    if layer is None:
        return default_layer(model)
    if isinstance(layer, str):
        try:
            return model.get_layer(layer)
        except ValueError:
            names = [sub.name for sub in model.layers]
            raise ValueError(
                f"No layer named {layer!r} in model {model.name!r}; its layers are {names}."
            ) from None
    if not any(layer is sub for sub in model.layers):
        raise ValueError(
            f"Layer {getattr(layer, 'name', layer)!r} is not a top-level layer of model "
            f"{model.name!r}. Pass one of {[sub.name for sub in model.layers]}."
        )
    return layer


def _pool_tf(values: Any, mask: Any, pooling: str) -> Any:
    import tensorflow as tf

    values = tf.cast(values, tf.float32)
    rank = values.shape.rank
    if rank == 2:
        return values
    if rank != 3:  # e.g. (batch, h, w, c) feature maps: global average
        return tf.reduce_mean(values, axis=list(range(1, rank - 1)))
    if mask is None:
        counted = tf.ones(tf.shape(values)[:2], tf.bool)
    else:
        counted = tf.cast(mask, tf.bool)
    weights = tf.cast(counted, tf.float32)[..., None]
    any_counted = tf.reduce_any(counted, axis=1)[:, None]
    if pooling == "mean":
        total = tf.reduce_sum(values * weights, axis=1)
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
    if pooling == "max":
        filled = tf.where(counted[..., None], values, tf.fill(tf.shape(values), -np.inf))
        return tf.where(any_counted, tf.reduce_max(filled, axis=1), 0.0)
    length = tf.shape(values)[1]
    positions = tf.range(length)[None, :]
    if pooling == "first":
        index = tf.reduce_min(tf.where(counted, positions, length), axis=1)
    else:
        index = tf.reduce_max(tf.where(counted, positions, -1), axis=1)
    index = tf.clip_by_value(index, 0, length - 1)
    picked = tf.gather(values, index, batch_dims=1)
    return tf.where(any_counted, picked, 0.0)


def compute_embeddings(
    model: Any,
    data: Any,
    *,
    layer: Any = None,
    pooling: Pooling = "mean",
    batch_size: int | None = None,
    jit_compile: bool | Literal["auto"] = "auto",
) -> np.ndarray:
    """One vector per example from a layer of the model, in one compiled pass.

    Args:
        model: A built functional or ``Sequential`` Keras 3 model (TensorFlow backend).
        data: The same data as for :func:`~keras_erranalysis.compute_losses` (a batched
            ``tf.data.Dataset`` of ``(x, y[, sample_weight])`` or such a tuple of arrays), so
            row ``i`` is the same example in both; ``x`` alone (array, dict of arrays or a
            dataset of inputs) works too.
        layer: Layer name (or the Layer) whose output to take. Default: see
            :func:`default_layer` (the pooled last hidden layer before the output, for a
            classifier typically the pooled encoder output).
        pooling: How a ``(batch, time, features)`` output becomes one vector: ``"mean"``
            (default), ``"max"``, ``"first"`` or ``"last"`` counted position. Positions the
            layer's Keras mask marks as padding never count. Outputs with more axes (image
            feature maps) are averaged over all but the last axis.
        batch_size: Batch size for numpy input (ignored for a dataset); None to let the
            pass pick it from a memory budget, as :func:`~keras_erranalysis.compute_losses`
            does.
        jit_compile: ``True`` for XLA, ``False`` for none, ``"auto"`` to try XLA and fall
            back (with a warning) when the layers do not compile with it.

    Returns:
        ``(N, D)`` float32 array, one row per example in data order.

    Raises:
        ValueError: For an unknown layer, a subclassed model without ``layer`` graph, or
            empty data.

    Example:
        >>> vectors = compute_embeddings(model, (x_val, y_val))  # doctest: +SKIP
        >>> vectors.shape  # doctest: +SKIP
        (500, 64)
    """
    import keras
    import tensorflow as tf

    check_pooling(pooling)
    target = resolve_layer(model, layer)
    tensor = _layer_output(target)
    if tensor is None:
        raise ValueError(
            f"Layer {target.name!r} has no single symbolic output (it is shared or returns "
            "several tensors); name another layer."
        )
    # One traced function per (model, layer, pooling, XLA): the callback calls this every
    # epoch, and retracing each time would cost more than the pass.
    steps = _STEPS.setdefault(model, {})

    def compiled(jit: bool) -> Any:
        key = (id(target), pooling, jit)
        if key not in steps:
            extractor = keras.Model(model.inputs, tensor)

            @tf.function(jit_compile=jit, reduce_retracing=True)
            def step(x: Any) -> Any:
                hidden = extractor(x, training=False)
                return _pool_tf(hidden, getattr(hidden, "_keras_mask", None), pooling)

            steps[key] = step
        return steps[key]

    step = compiled(jit_compile is True or jit_compile == "auto")
    parts = []
    for x in _inputs(model, data, batch_size):
        try:
            parts.append(step(x).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            if jit_compile != "auto" or parts:
                raise
            warnings.warn(
                f"XLA could not compile the embedding pass ({type(error).__name__}); running "
                "without XLA. Pass jit_compile=False to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            step = compiled(False)
            parts.append(step(x).numpy())
    if not parts:
        raise ValueError("The data holds no examples: compute_embeddings needs at least one batch.")
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def _inputs(model: Any, data: Any, batch_size: int | None):
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        for batch in data:
            if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
                yield batch[0]
            else:
                yield batch
        return
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        data = data[0]
    from keras_erranalysis.compute import _compiled, _pass

    x = _pass._as_arrays(data)
    n = _pass._num_examples(x)
    if batch_size is None:
        batch_size = _compiled.auto_batch_size(model, x, max(n, 1), 0)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    yield from _pass._array_slices((x,), n, batch_size).map(lambda inputs: inputs)


# --------------------------------------------------------------------------------------
# The embedding column of the one pass
# --------------------------------------------------------------------------------------


class EmbeddingColumns:
    """One pooled vector per example from a layer, as a column of the one pass.

    A column producer for :func:`~keras_erranalysis.compute._losses.run_pass`: the layer's
    output is recorded during the pass's own forward call (its ``call`` is wrapped for the
    duration of the trace), so embeddings cost no second traversal and no second forward.
    """

    prefixes = ("embedding",)

    def __init__(self, layer: Any, pooling: str) -> None:
        check_pooling(pooling)
        self.layer = layer
        self.pooling = pooling
        self.key = ("embedding", id(layer), pooling)

    def hook(self, model: Any) -> Any:
        return _recording_output(self.layer)

    def columns(
        self, model: Any, outputs: Any, x: Any, y: Any, sample_weight: Any, recorded: list
    ) -> dict[str, Any]:
        if len(recorded) != 1:
            raise ValueError(
                f"Layer {self.layer.name!r} was called {len(recorded)} times in the forward "
                "pass: name a layer the model calls exactly once."
            )
        hidden = recorded[0]
        return {"embedding": _pool_tf(hidden, getattr(hidden, "_keras_mask", None), self.pooling)}


def embedding_columns(model: Any, *, layer: Any = None, pooling: str = "mean") -> Any:
    """The embedding producer for ``run_pass``."""
    target = resolve_layer(model, layer)
    if _layer_output(target) is None:
        raise ValueError(
            f"Layer {target.name!r} has no single symbolic output (it is shared or returns "
            "several tensors); name another layer."
        )
    return EmbeddingColumns(target, pooling)


class _recording_output:
    """Records what ``layer.call`` returns while active (Keras attaches the mask after)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def __enter__(self) -> list:
        layer = self.layer
        self.had_own = "call" in layer.__dict__
        self.previous = layer.__dict__.get("call")
        original = layer.call
        recorded: list = []

        def call(*args: Any, **kwargs: Any) -> Any:
            outputs = original(*args, **kwargs)
            recorded.append(outputs)
            return outputs

        object.__setattr__(layer, "call", call)
        return recorded

    def __exit__(self, *exc: Any) -> None:
        if self.had_own:
            object.__setattr__(self.layer, "call", self.previous)
        else:
            self.layer.__dict__.pop("call", None)
