"""Compute and search: embeddings of the analysed examples from a layer, cosine neighbours.

:func:`compute_embeddings` runs one compiled pass (a ``tf.function`` over the data) that
returns one vector per example from a named layer, pooled over time with the layer's mask
(padding never counts). :func:`nearest` is an exact cosine-similarity search in numpy that
reads the vectors in chunks (a memory-mapped ``embedding.npy`` is never loaded whole);
:func:`similar_examples` (``Run.similar``) joins the neighbours with their losses, labels and
decoded text: "find more examples like this failure".

Exact search costs one pass over the ``N x D`` matrix per query: about 0.1 s for
300,000 x 64 vectors and 0.2-0.3 s for a million (memory-mapped, float16 or float32, 2-core
machine; ``benchmarks/bench_presentation.py``). Beyond a few million vectors, or for many
queries at once, build an index from the stored ``embedding.npy``: ``faiss``
(``IndexFlatIP`` on normalised vectors is still exact, batched and multithreaded;
``IndexHNSWFlat`` / ``IndexIVFFlat`` are approximate), ``hnswlib`` or ``annoy``.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

Pooling = Literal["mean", "max", "first", "last"]
POOLINGS = ("mean", "max", "first", "last")
EMBEDDING = "embedding"  # the stored array's name in a run epoch (embedding.npy)
_CHUNK_ROWS = 1 << 16
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------
# Which layer
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Pooling (plain numpy / TF-agnostic maths on arrays is in pool_numpy for tests)
# --------------------------------------------------------------------------------------


def pool_numpy(
    values: np.ndarray, mask: np.ndarray | None = None, pooling: str = "mean"
) -> np.ndarray:
    """Pools ``(N, T, D)`` hidden states to ``(N, D)`` over the positions where ``mask`` is True.

    The reference implementation of the pooling done on the device by
    :func:`compute_embeddings` (rows with no counted position give zeros).

    Args:
        values: ``(N, T, D)`` array (``(N, D)`` is returned as is).
        mask: ``(N, T)`` booleans, True where a position counts (default: all).
        pooling: ``"mean"``, ``"max"``, ``"first"`` (first counted position) or ``"last"``
            (last counted position).

    Returns:
        ``(N, D)`` float32 array.
    """
    _check_pooling(pooling)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 2:
        return values
    if values.ndim != 3:
        return values.reshape(values.shape[0], -1, values.shape[-1]).mean(axis=1)
    counted = np.ones(values.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    any_counted = counted.any(axis=1)
    if pooling == "mean":
        total = (values * counted[..., None]).sum(axis=1)
        return (total / np.maximum(counted.sum(axis=1), 1)[:, None]).astype(np.float32)
    if pooling == "max":
        filled = np.where(counted[..., None], values, -np.inf).max(axis=1)
        return np.where(any_counted[:, None], filled, 0.0).astype(np.float32)
    positions = np.arange(values.shape[1])
    if pooling == "first":
        index = np.where(counted, positions, values.shape[1]).min(axis=1)
    else:
        index = np.where(counted, positions, -1).max(axis=1)
    index = np.clip(index, 0, values.shape[1] - 1)
    picked = values[np.arange(values.shape[0]), index]
    return np.where(any_counted[:, None], picked, 0.0).astype(np.float32)


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


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


# --------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------


def compute_embeddings(
    model: Any,
    data: Any,
    *,
    layer: Any = None,
    pooling: Pooling = "mean",
    batch_size: int = 32,
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
        batch_size: Batch size for numpy input (ignored for a dataset).
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

    _check_pooling(pooling)
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
    for x in _inputs(data, batch_size):
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


def _inputs(data: Any, batch_size: int):
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    from keras_erranalysis import _pass

    x = _pass._as_arrays(data)
    n = _pass._num_examples(x)
    yield from _pass._array_slices((x,), n, batch_size).map(lambda inputs: inputs)


def storage_array(vectors: np.ndarray) -> np.ndarray:
    """The array to store: float16 (half the disk) unless a value would overflow it."""
    values = np.asarray(vectors)
    if values.dtype == np.float16:
        return values
    finite = np.isfinite(values)
    if finite.all() and (values.size == 0 or np.abs(values).max() < 6.0e4):
        return values.astype(np.float16)
    return values.astype(np.float32)


# --------------------------------------------------------------------------------------
# Exact cosine search
# --------------------------------------------------------------------------------------


def nearest(
    vectors: np.ndarray,
    query: np.ndarray,
    k: int = 10,
    *,
    exclude: int | None = None,
    chunk_rows: int = _CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` most cosine-similar to ``query``, exactly.

    Reads ``vectors`` (any float dtype, memory-mapped is fine) ``chunk_rows`` rows at a time,
    so extra memory is ``chunk_rows x D`` floats whatever ``N`` is. Zero vectors have
    similarity 0. Ties keep row order.

    Args:
        vectors: ``(N, D)`` array.
        query: ``(D,)`` vector.
        k: How many neighbours.
        exclude: A row to leave out (the query's own row).
        chunk_rows: Rows per chunk.

    Returns:
        ``(rows, similarities)``, most similar first.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {vectors.shape}.")
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    if q.shape[0] != vectors.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dims, vectors have {vectors.shape[1]}.")
    q_norm = np.linalg.norm(q)
    q = q / q_norm if q_norm > 0 else q
    best_rows = np.empty(0, dtype=np.int64)
    best_sims = np.empty(0, dtype=np.float64)
    for start in range(0, vectors.shape[0], chunk_rows):
        block = np.asarray(vectors[start : start + chunk_rows], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sims = (block @ q.astype(np.float32)) / norms
        sims = np.where(norms > 0, sims, 0.0).astype(np.float64)
        rows = np.arange(start, start + block.shape[0])
        if exclude is not None and start <= exclude < start + block.shape[0]:
            keep = rows != exclude
            rows, sims = rows[keep], sims[keep]
        if k < sims.shape[0]:
            top = np.argpartition(-sims, k)[:k] if k else np.empty(0, dtype=np.int64)
            rows, sims = rows[top], sims[top]
        best_rows = np.concatenate([best_rows, rows])
        best_sims = np.concatenate([best_sims, sims])
    order = np.lexsort((best_rows, -best_sims))[:k]
    return best_rows[order], best_sims[order]


def similar_examples(
    run: Any,
    example_id: int,
    k: int = 10,
    *,
    epoch: int = -1,
    name: str = EMBEDDING,
) -> pd.DataFrame:
    """The examples nearest to one example in a run's stored embedding space.

    Args:
        run: A :class:`~keras_erranalysis.run.Run`.
        example_id: The example to start from.
        k: How many neighbours.
        epoch: Which epoch's embeddings (``-1`` = last).
        name: The stored array (default ``embedding``, as the callback writes it).

    Returns:
        One row per neighbour, most similar first: ``rank, example_id, similarity, loss,
        label, prediction, confidence, correct`` and decoded text columns when the run
        can decode them.

    Raises:
        KeyError: When the epoch holds no embeddings or no such example.
    """
    try:
        vectors = run.array(name, epoch)
    except KeyError:
        raise KeyError(
            f"Epoch {run.meta(epoch)['epoch']} of {str(run.log_dir)!r} holds no {name!r} "
            "array: train with ErrorAnalysis(..., embeddings=True) to store embeddings."
        ) from None
    ids = np.asarray(run.array("example_id", epoch))
    hits = np.flatnonzero(ids == example_id)
    if hits.size == 0:
        raise KeyError(f"No example with id {example_id} in epoch {run.meta(epoch)['epoch']}.")
    row = int(hits[0])
    rows, sims = nearest(vectors, np.asarray(vectors[row], dtype=np.float32), k, exclude=row)
    decoding = {key: run.vocabulary(key) for key in ("vocab", "input_vocab", "label_names")}
    frame = run.report(epoch).select(rows).to_frame(**decoding)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame.insert(2, "similarity", sims.astype(np.float32))
    wanted = [
        "rank",
        "example_id",
        "similarity",
        "loss",
        "label",
        "prediction",
        "confidence",
        "correct",
        "input_text",
        "label_text",
        "prediction_text",
    ]
    return frame[[c for c in wanted if c in frame.columns]]
