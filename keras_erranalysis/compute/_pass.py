"""Keras plumbing of the loss pass: data, loss resolution, checks and the compiled step.

Private: :func:`keras_erranalysis.compute_losses` is the public entry point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from keras_erranalysis.compute._inputs import (
    WEIGHT_PROBLEMS,
    as_array,
    check_output,
    check_part,
    reader_message,
    select_labels,
    select_output,
    select_weights,
    weight_problems,
)

# Tolerance for "rows sum to one": softmax outputs in float16 still pass.
_PROB_SUM_TOL = 2e-3


@dataclasses.dataclass
class LossSpec:
    """What the pass needs to know about the loss."""

    fn: Any  # (y_true, y_pred) -> unreduced (B,) or (B, T)
    name: str
    kind: str | None  # "sparse" | "dense" | "binary" | None (infer from shapes)
    from_logits: bool | None
    ignore_class: int | None
    output: str | int | None
    source: Any = None  # the loss object the user or compile() gave (cache identity)


@dataclasses.dataclass
class Probe:
    """Shapes learned from running the model once, eagerly, on the first batch."""

    sequence: bool
    num_classes: int
    kind: str  # "sparse" | "dense" | "binary"
    from_logits: bool | None  # None: decided per batch in the graph (see per_example)


# -- model and data --------------------------------------------------------------------


def check_model(model: Any) -> None:
    """Raises a clear error for something that is not a built Keras model."""
    if not callable(model) or not hasattr(model, "built"):
        raise TypeError(f"Expected a Keras model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"Model {getattr(model, 'name', '')!r} is not built, so it has no weights to "
            "analyse. Build it first: train it, call it on a batch, or give it an "
            "`keras.Input` / `model.build(input_shape)`."
        )


def array_parts(data: Any) -> tuple[tuple, int] | None:
    """``(parts, n)`` for in-memory data ``(x, y[, sample_weight])``; None for a dataset.

    Checks what :func:`as_dataset` checks for arrays: two or three parts of the same
    length, at least one example, strings (not other objects) in object arrays.
    """
    if isinstance(data, tf.data.Dataset):
        return None
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 3):
            raise ValueError(
                f"data as a tuple must be (x, y) or (x, y, sample_weight); got {len(data)} items."
            )
        for index, part in enumerate(data):
            check_part(part, ("x", "y", "sample_weight")[index])
        parts = tuple(_as_arrays(part) for part in data if part is not None)
        n = _num_examples(parts[0])
        for part in parts[1:]:
            if _num_examples(part) != n:
                raise ValueError(
                    f"x has {n} examples but y or sample_weight has {_num_examples(part)}: "
                    "they must have the same length."
                )
        if n == 0:
            raise ValueError("The data holds no examples: x and y are empty.")
        for leaf in tf.nest.flatten(parts):
            if leaf.dtype.kind == "O" and not all(isinstance(v, (str, bytes)) for v in leaf.flat):
                raise ValueError(
                    "An input array has dtype object with values that are not strings: "
                    "convert it to a numeric dtype (np.asarray(x, dtype='float32')) or to "
                    "strings."
                )
        return parts, n
    if isinstance(data, Mapping) or hasattr(data, "shape"):
        raise ValueError(
            "compute_losses needs labels: pass (x, y) or a dataset that yields (x, y) or "
            "(x, y, sample_weight), not x alone."
        )
    raise TypeError(reader_message(data))


def as_dataset(data: Any, batch_size: int) -> tf.data.Dataset:
    """Turns a dataset or a tuple of arrays into a batched ``tf.data.Dataset``."""
    arrays = array_parts(data)
    if arrays is None:
        dataset = data
    else:
        parts, n = arrays
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        dataset = _array_slices(parts, n, batch_size)
    card = int(tf.data.experimental.cardinality(dataset))
    if card == tf.data.experimental.INFINITE_CARDINALITY:
        raise ValueError(
            "The dataset is infinite (it repeats): pass a finite one, e.g. dataset.take(n)."
        )
    if card == 0:
        raise ValueError("The data holds no examples: the dataset is empty.")
    return dataset


#: Bytes of array rows handed to TensorFlow at a time (see :func:`_array_slices`).
CHUNK_BYTES = 8 << 20


class _HeldArrays:
    """The arrays of one dataset, held by the dataset.

    Its generator holds only a weak reference: TensorFlow keeps every ``from_generator``
    function for the life of the process, and with it whatever the function holds.
    """

    __slots__ = ("parts", "__weakref__")

    def __init__(self, parts: Any) -> None:
        self.parts = parts


def _row_bytes(array: np.ndarray) -> int:
    """Bytes of one row; for object arrays, of its strings (a sample's mean length)."""
    if array.dtype.kind != "O":
        return array[:1].nbytes
    sample = array.reshape(len(array), -1)[:256].reshape(-1)
    return int(sum(len(v) for v in sample) / max(len(sample), 1) * (array[:1].size or 1))


def _array_slices(parts: tuple, n: int, batch_size: int) -> tf.data.Dataset:
    """Batches of in-memory arrays without copying them whole into TensorFlow.

    ``from_tensor_slices`` would embed the arrays in the dataset as one constant (a full
    copy, and another while the first iterator starts: about 3x the data at the peak). A
    generator hands over slices of about :data:`CHUNK_BYTES` instead (a whole number of
    batches each), which TensorFlow batches natively, so the batches are the same and the
    memory held is one slice.
    """
    leaves = tf.nest.flatten(parts)
    row_bytes = max(1, sum(_row_bytes(leaf) for leaf in leaves))
    chunk = batch_size * max(1, CHUNK_BYTES // (batch_size * row_bytes))

    def spec(array: np.ndarray) -> tf.TensorSpec:
        dtype = tf.string if array.dtype.kind in "USO" else tf.as_dtype(array.dtype)
        return tf.TensorSpec((None, *array.shape[1:]), dtype)

    held = _HeldArrays(parts)
    reference = weakref.ref(held)

    def slices():
        arrays = reference()
        if arrays is None:  # the dataset is gone; nothing reads this generator then
            return
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            yield tf.nest.map_structure(lambda array, rows=rows: array[rows], arrays.parts)

    dataset = tf.data.Dataset.from_generator(
        slices, output_signature=tf.nest.map_structure(spec, parts)
    )

    def batches(*part):
        # Slices of the chunk, not its rows re-batched one by one (10x slower on big batches).
        rows = tf.shape(tf.nest.flatten(part)[0], out_type=tf.int64)[0]
        return tf.data.Dataset.range((rows + batch_size - 1) // batch_size).map(
            lambda i: tf.nest.map_structure(
                lambda t: t[i * batch_size : (i + 1) * batch_size], part
            )
        )

    dataset = dataset.flat_map(batches)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))
    dataset._keras_erranalysis_arrays = held  # the arrays live as long as the dataset
    return dataset


def _as_arrays(part: Any) -> Any:
    if isinstance(part, Mapping):
        return {k: as_array(v) for k, v in part.items()}
    if isinstance(part, (list, tuple)) and part and hasattr(part[0], "shape") and np.ndim(part[0]):
        return tuple(as_array(p) for p in part)
    return as_array(part)


def _num_examples(part: Any) -> int:
    leaves = tf.nest.flatten(part)
    return int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else 0


def cardinality(dataset: tf.data.Dataset) -> int | None:
    """Number of batches, or None when unknown."""
    card = int(tf.data.experimental.cardinality(dataset))
    return card if card >= 0 else None


def first_batch(dataset: tf.data.Dataset) -> tuple[Any, Any, Any]:
    """Returns the first ``(x, y, sample_weight)`` of the dataset."""
    for batch in dataset.take(1):
        return unpack(batch)
    raise ValueError(
        "The data holds no examples: compute_losses needs at least one batch. Check that "
        "the dataset is not exhausted or filtered to nothing."
    )


def unpack(batch: Any, *, with_ids: bool = False) -> tuple[Any, ...]:
    """Splits a batch into ``(x, y, sample_weight)`` (``with_ids``: and ``ids`` or None).

    A 4-item batch ``(x, y, sample_weight, ids)`` carries example ids with the data, so
    they stay attached to their rows through sharding across workers.
    """
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3, 4):
        parts = (*batch, None, None)[:4]
        return parts if with_ids else parts[:3]
    raise ValueError(
        "Each batch must be (x, y), (x, y, sample_weight) or (x, y, sample_weight, ids) "
        "so losses can be computed; "
        f"got {type(batch).__name__}"
        + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        + "."
    )


def model_strategy(model: Any) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy the model was built under (default if none)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy if strategy is not None else tf.distribute.get_strategy()


# -- loss ------------------------------------------------------------------------------


def resolve_loss(
    model: Any,
    loss: Any,
    output: str | int | None,
    *,
    ignore_class: int | None,
    from_logits: bool | None,
) -> LossSpec:
    """Finds the unreduced loss to use and what it expects."""
    import keras

    output = check_output(model, output)
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "The model is not compiled with a loss: pass loss=..., e.g. "
                "keras.losses.SparseCategoricalCrossentropy(from_logits=True)."
            )
        if isinstance(loss, Mapping) or (isinstance(loss, (list, tuple)) and len(loss) > 1):
            loss = _loss_for_output(model, loss, output)
        elif isinstance(loss, (list, tuple)):
            loss = loss[0]
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    source = loss
    if isinstance(loss, keras.losses.Loss):
        config = _safe_config(loss)
        name = type(loss).__name__
        if hasattr(loss, "fn"):  # LossFunctionWrapper: the name of the wrapped function
            name = getattr(loss.fn, "__name__", name)
        own_logits = config.get("from_logits")
        if from_logits is not None and own_logits is not None and from_logits != own_logits:
            try:
                loss = type(loss).from_config({**config, "from_logits": from_logits})
            except Exception as error:  # noqa: BLE001 - any user subclass may refuse
                raise ValueError(
                    f"Loss {name} has from_logits={own_logits}, but from_logits="
                    f"{from_logits} was asked and it could not be re-made: pass a loss "
                    "with the right from_logits instead."
                ) from error
        fn = loss.call  # unreduced, no mask or weights applied
        if ignore_class is None:
            ignore_class = config.get("ignore_class")
        logits = from_logits if from_logits is not None else own_logits
    elif callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        params = _parameters(loss)
        fn = loss
        logits = from_logits
        if "from_logits" in params:
            default = params["from_logits"].default
            if logits is None and isinstance(default, bool):
                logits = default
            chosen = logits

            def fn(y_true, y_pred, _loss=loss, _chosen=chosen):
                return _loss(y_true, y_pred, from_logits=_chosen)

    else:
        raise TypeError(
            f"loss must be a Keras loss, a loss name or a callable, got {type(loss).__name__}."
        )
    return LossSpec(
        fn=fn,
        name=name,
        kind=_kind_from_name(name),
        from_logits=logits,
        ignore_class=ignore_class,
        output=output,
        source=source,
    )


def _loss_for_output(model: Any, losses: Any, output: str | int | None) -> Any:
    names = list(getattr(model, "output_names", None) or [])
    if output is None:
        raise ValueError(
            f"The model has several outputs {names or list(losses)}: pass output=NAME to "
            "choose the one to analyse."
        )
    if isinstance(losses, Mapping):
        key = output if isinstance(output, str) else (names[output] if names else output)
        if key not in losses:
            raise ValueError(f"No loss for output {output!r}; losses are for {list(losses)}.")
        return losses[key]
    index = names.index(output) if isinstance(output, str) else output
    return losses[index]


def _safe_config(loss: Any) -> dict[str, Any]:
    try:
        return dict(loss.get_config())
    except Exception:  # noqa: BLE001 - user losses may not implement it
        return {}


def _parameters(fn: Any) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def _kind_from_name(name: str) -> str | None:
    lowered = name.lower()
    if "sparse" in lowered:
        return "sparse"
    if "binary" in lowered:
        return "binary"
    if "categorical" in lowered or lowered in ("kl_divergence", "kldivergence"):
        return "dense"
    return None


# -- output selection and the probe ----------------------------------------------------


def probe(model: Any, spec: LossSpec, batch: tuple[Any, Any, Any]) -> Probe:
    """Runs the model once eagerly and checks labels against the output shape."""
    x, y, _ = batch
    out = select_output(model(x, training=False), spec.output, model)
    out_shape = tuple(int(d) for d in out.shape)
    y = select_labels(y, spec.output, model)
    if y is None:
        raise ValueError(
            "Each batch needs labels y for the analysed output: pass (x, y) or a dataset "
            "that yields (x, y) or (x, y, sample_weight)."
        )
    if not hasattr(y, "dtype") or not hasattr(y, "shape"):
        raise ValueError(
            f"The labels of the analysed output are a {type(y).__name__}, not an array: "
            "give one array (or tensor) of labels per output."
        )
    y_shape = tuple(int(d) for d in y.shape)
    if len(out_shape) not in (1, 2, 3):
        raise ValueError(
            f"The output has shape {out_shape}: expected (batch, classes) for a classifier or "
            "(batch, time, classes) for a sequence output. Pass output=NAME to pick another."
        )
    binary_out = len(out_shape) == 1 or out_shape[-1] == 1
    sequence = len(out_shape) == 3
    kind = spec.kind
    if kind is None:
        if binary_out:
            kind = "binary"
        elif y_shape == out_shape:
            kind = "dense"
        else:
            kind = "sparse"
    if kind == "binary" and not binary_out:
        kind = "dense" if y_shape == out_shape else "sparse"
    if binary_out and kind != "binary":
        raise ValueError(
            f"The output {out_shape} has a single unit, but {spec.name} needs one score per "
            "class (at least 2). For a yes/no output use BinaryCrossentropy; otherwise give "
            "the last layer one unit per class."
        )
    num_classes = 2 if binary_out else out_shape[-1]
    _check_label_shape(kind, y_shape, out_shape, spec.name)
    if not np.issubdtype(np.dtype(y.dtype.as_numpy_dtype), np.number) and y.dtype != tf.bool:
        raise ValueError(f"Labels must be numbers, got dtype {y.dtype.name}.")
    every_prob, prob_like = _looks_like_probabilities(
        out.numpy(), binary_out, _prob_sum_tol(out.dtype)
    )
    from_logits = spec.from_logits
    if from_logits is None:
        from_logits = prob_like is False
    if from_logits and every_prob and not binary_out:
        raise ValueError(
            "The model's outputs look like probabilities (every row is in [0, 1] and sums "
            "to 1, e.g. after a softmax), but the loss expects logits (from_logits=True). "
            "Pass from_logits=False, or remove the final softmax from the model."
        )
    if not from_logits and prob_like is False:
        raise ValueError(
            "The model's outputs are not probabilities (values outside [0, 1] or rows not "
            "summing to 1), but the loss expects probabilities (from_logits=False). Pass "
            "from_logits=True if the model outputs logits, or add a softmax/sigmoid."
        )
    return Probe(sequence=sequence, num_classes=num_classes, kind=kind, from_logits=from_logits)


def static_probe(out: Any, y: Any, spec: LossSpec) -> Probe:
    """A :class:`Probe` from static shapes only, for use inside a traced step (no eager run).

    ``from_logits`` stays ``spec.from_logits``: when that is None, :func:`per_example`
    decides per batch from whether the output looks like probabilities.
    """
    rank = out.shape.rank
    if rank not in (1, 2, 3):
        raise ValueError(
            f"The output has shape {tuple(out.shape)}: expected (batch, classes) for a "
            "classifier or (batch, time, classes) for a sequence output. Pass output=NAME to "
            "pick another."
        )
    binary_out = rank == 1 or out.shape[-1] == 1
    y_shape = y.shape
    one_hot = y_shape.rank == rank and (y_shape[-1] is None or y_shape[-1] == out.shape[-1])
    if binary_out:
        kind = "binary"
    elif spec.kind in ("sparse", "dense"):
        kind = spec.kind
    else:
        kind = "dense" if one_hot else "sparse"
    num_classes = 2 if binary_out else int(out.shape[-1])
    return Probe(
        sequence=rank == 3, num_classes=num_classes, kind=kind, from_logits=spec.from_logits
    )


def _check_label_shape(kind: str, y_shape: tuple, out_shape: tuple, loss_name: str) -> None:
    if kind == "dense":
        if y_shape != out_shape:
            raise ValueError(
                f"Labels of shape {y_shape} do not fit the output {out_shape}: {loss_name} "
                f"needs one-hot labels of the output's shape. For class ids of shape "
                f"{out_shape[:-1]} use SparseCategoricalCrossentropy."
            )
        return
    if kind == "binary":
        wanted = out_shape if len(out_shape) == 1 or out_shape[-1] != 1 else out_shape[:-1]
        if y_shape not in (wanted, wanted + (1,)):
            raise ValueError(
                f"Labels of shape {y_shape} do not fit the binary output {out_shape}: "
                f"expected labels of shape {wanted} or {wanted + (1,)}."
            )
        return
    wanted = out_shape[:-1]
    if y_shape not in (wanted, wanted + (1,)):
        hint = ""
        if y_shape == out_shape:
            hint = " They look one-hot: use CategoricalCrossentropy, or pass class ids."
        raise ValueError(
            f"Labels of shape {y_shape} do not fit the output {out_shape}: {loss_name} needs "
            f"class ids of shape {wanted}.{hint}"
        )


def _prob_sum_tol(dtype: Any) -> float:
    """How far from 1 a row of probabilities may sum: 16-bit softmax rows are off by ~eps."""
    eps = {tf.float16: 2.0**-10, tf.bfloat16: 2.0**-7}.get(tf.as_dtype(dtype), 0.0)
    return max(_PROB_SUM_TOL, 4 * eps)


def _looks_like_probabilities(
    values: np.ndarray, binary: bool, tol: float = _PROB_SUM_TOL
) -> tuple[bool, bool | None]:
    """Whether output rows are probability vectors.

    Returns:
        ``(every, finite)``: ``every`` is True when all rows are finite probability
        vectors (a softmax output: the evidence for "probabilities where logits are
        expected"); ``finite`` says whether the finite rows are (None: no finite row), so
        a NaN example alone never makes a probabilities model look like logits.
    """
    values = np.asarray(values, dtype=np.float64)
    rows = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(-1, 1)
    is_finite = np.isfinite(rows).all(axis=1)
    with np.errstate(invalid="ignore"):
        ok = np.all((rows >= 0.0) & (rows <= 1.0), axis=1)
        if not binary:
            ok &= np.abs(rows.sum(axis=-1) - 1.0) < tol
    every = bool(rows.size and is_finite.all() and ok.all())
    finite = bool(ok[is_finite].all()) if is_finite.any() else None
    return every, finite


# -- the compiled step -----------------------------------------------------------------


def per_example(
    out: Any,
    y: Any,
    sample_weight: Any,
    spec: LossSpec,
    probe_: Probe,
    *,
    scores: tuple[Any, Any, Any, Any] | None = None,
) -> dict[str, tf.Tensor]:
    """Per-example (and, for sequences, per-token) results from the analysed output.

    The one implementation of the pass's maths, shared by the compiled step and the
    in-flight recorder. The Keras mask is read from ``out._keras_mask``. With
    ``probe_.from_logits`` None, each batch is taken as probabilities when every value is
    in [0, 1] (and, for several classes, every row sums to 1), else as logits.

    Args:
        out: The model output, ``(batch, classes)``, ``(batch, time, classes)``, or a single
            unit for binary outputs.
        y: Labels of that output.
        sample_weight: Per-example or per-token weights, or None.
        spec: The resolved loss.
        probe_: Shapes and loss kind (from :func:`probe` or :func:`static_probe`).
        scores: The class axis already summed up, per position: ``(loss, true_prob,
            best_other, other_class)`` (e.g. :func:`xent_scores` of the training step's own
            cross-entropy). Then neither the softmax nor the loss is computed, and ``out``
            (None allowed) is read for its Keras mask only. Sparse labels only.

    Returns:
        Tensors keyed ``loss_sum, n_tokens, confidence, true_prob, margin, correct,
        token_accuracy, label, prediction, label_invalid, label_fractional`` (plus
        ``token_*`` columns for sequences). A sequence's example-level numbers are those
        of its weakest counted token, as exact-match correctness is: ``true_prob`` and
        ``margin`` are the lowest over its counted tokens (``margin > 0`` exactly when
        ``correct``); ``confidence`` stays the token mean of the top probability.
    """
    num_classes = probe_.num_classes
    binary = probe_.kind == "binary"
    keras_mask = getattr(out, "_keras_mask", None)
    if scores is None:
        tol = _prob_sum_tol(out.dtype)
        out = float32_output(out)
    if binary:
        if out.shape.rank == 1 or out.shape[-1] != 1:
            out = tf.expand_dims(out, -1)
        if probe_.from_logits is None:  # decided per batch: probabilities or logits
            looks_prob = tf.reduce_all((out >= 0.0) & (out <= 1.0))
            positive = tf.where(looks_prob, out, tf.sigmoid(out))
        else:
            positive = tf.sigmoid(out) if probe_.from_logits else out
        probs = tf.concat([1.0 - positive, positive], axis=-1)
        label_shape = tf.shape(out)[:-1]
        y_float = tf.reshape(tf.cast(y, tf.float32), tf.shape(out))
        label = tf.cast(tf.reshape(y_float, label_shape) > 0.5, tf.int32)
        loss_values = spec.fn(y_float, out)
        fractional = tf.zeros(label_shape, tf.bool)
    else:
        logits = None
        if scores is not None:
            probs = None
        elif probe_.from_logits is None:  # decided per batch: probabilities or logits
            looks_prob = tf.reduce_all((out >= 0.0) & (out <= 1.0)) & tf.reduce_all(
                tf.abs(tf.reduce_sum(out, axis=-1) - 1.0) < tol
            )
            probs = tf.where(looks_prob, out, tf.nn.softmax(out, axis=-1))
        else:
            # From the logits (a softmax output's own input): no probability row is formed.
            logits = out if probe_.from_logits else softmax_logits(out)
            probs = out if logits is None else None
        label_shape = tf.shape(out)[:-1] if scores is None else tf.shape(scores[0])
        if probe_.kind == "dense":
            label = tf.argmax(y, axis=-1, output_type=tf.int32)
            y_for_loss = tf.cast(y, tf.float32)
            fractional = tf.zeros(label_shape, tf.bool)
        else:
            y_flat = tf.reshape(y, label_shape)
            label, fractional = sparse_label(y_flat)
    weight = tf.ones(label_shape, tf.float32)
    if keras_mask is not None:
        weight *= tf.cast(tf.reshape(keras_mask, label_shape), tf.float32)
    if spec.ignore_class is not None:
        weight *= tf.cast(tf.not_equal(label, spec.ignore_class), tf.float32)
    if sample_weight is not None:
        sw = tf.cast(sample_weight, tf.float32)
        if sw.shape.rank is not None and sw.shape.rank > 1 and sw.shape[-1] == 1:
            sw = sw[..., 0] if label.shape.rank == sw.shape.rank - 1 else sw
        if sw.shape.rank == 1 and label.shape.rank == 2:
            sw = sw[:, None]
        weight *= sw
    counted = weight > 0
    in_range = (label >= 0) & (label < num_classes)
    invalid = counted & ~in_range
    safe_label = tf.where(in_range, label, tf.zeros_like(label))
    if not binary and scores is None and logits is not None:
        scores = logit_scores(logits, safe_label, num_classes)
        if probe_.kind == "dense" or not is_sparse_xent(spec):  # another loss: its own value
            y_loss = y_for_loss if probe_.kind == "dense" else safe_label
            scores = (spec.fn(y_loss, out), *scores[1:])
    if scores is not None:
        loss_values = scores[0]
    elif not binary:
        if probe_.kind == "dense":
            loss_values = spec.fn(y_for_loss, out)
        else:
            loss_values = spec.fn(safe_label, out)
    loss_values = tf.cast(loss_values, tf.float32)
    loss_values = tf.reshape(loss_values, label_shape)

    if scores is not None:
        _, true_prob, best_other, other_class = scores
    else:
        true_prob = tf.gather(probs, safe_label, batch_dims=safe_label.shape.rank)
        is_label = tf.equal(tf.range(num_classes, dtype=tf.int32), safe_label[..., None])
        other_class, best_other = _best_other(tf.where(is_label, -math.inf, probs))
    prediction = tf.where(
        label_first(true_prob, best_other, safe_label, other_class), safe_label, other_class
    )
    if probs is None:
        confidence = tf.maximum(true_prob, best_other)  # a NaN logit: the whole row NaN
    else:
        confidence = tf.reduce_max(probs, axis=-1)  # keeps a NaN that argmax skips
    margin = true_prob - best_other
    # Rows whose probabilities are undefined (a NaN or +inf logit, every class at -inf):
    # the plain max gives NaN, XLA's skips NaN and gives -inf or a NaN-row gather. Such a
    # row has no prediction (-1) and is never right; argmax would pick an arbitrary class.
    undefined = ~tf.math.is_finite(confidence) | tf.math.is_nan(true_prob)
    if probs is not None and probe_.from_logits is not True:
        # Probabilities taken as given keep a lone NaN in its place, which XLA's max skips.
        undefined |= tf.reduce_any(~tf.math.is_finite(probs), axis=-1)
    prediction = tf.where(undefined, -1, prediction)
    confidence = tf.where(undefined, math.nan, confidence)
    true_prob = tf.where(undefined, math.nan, true_prob)
    margin = tf.where(undefined, math.nan, margin)
    right = tf.equal(prediction, label) & ~undefined
    token_loss = tf.where(counted, loss_values * weight, 0.0)

    if probe_.sequence:
        n_tokens = tf.reduce_sum(tf.cast(counted, tf.int32), axis=-1)
        denom = tf.maximum(tf.cast(n_tokens, tf.float32), 1.0)
        has_tokens = n_tokens > 0
        token_right = tf.reduce_sum(tf.cast(right & counted, tf.float32), axis=-1)
        any_undefined = tf.reduce_any(undefined & counted, axis=-1)
        return {
            "loss_sum": tf.reduce_sum(token_loss, axis=-1),
            "n_tokens": n_tokens,
            # where, not a product: an uncounted position may hold NaN (0 * NaN = NaN)
            "confidence": tf.reduce_sum(tf.where(counted, confidence, 0.0), -1) / denom,
            # Example-level, as correctness (exact match) is: the weakest counted token's
            # probability of its label (1 without tokens: nothing contradicts the label).
            # XLA's min skips NaN: an undefined counted token makes it NaN here.
            "true_prob": tf.where(
                any_undefined,
                math.nan,
                tf.reduce_min(tf.where(counted, true_prob, 1.0), axis=-1),
            ),
            # The weakest token's margin: > 0 exactly when every counted token is right.
            "margin": tf.where(
                any_undefined,
                math.nan,
                tf.where(
                    has_tokens,
                    tf.reduce_min(tf.where(counted, margin, math.inf), axis=-1),
                    0.0,
                ),
            ),
            "correct": tf.reduce_all(right | ~counted, axis=-1),
            "token_accuracy": tf.where(has_tokens, token_right / denom, 1.0),
            "label": label,
            "prediction": prediction,
            "token_loss": token_loss,
            "token_confidence": confidence,
            "token_true_prob": true_prob,
            "token_margin": margin,
            "token_mask": counted,
            "label_invalid": tf.reduce_any(invalid, axis=-1),
            "label_fractional": tf.reduce_any(fractional & counted, axis=-1),
        }
    return {
        "loss_sum": token_loss,
        "n_tokens": tf.cast(counted, tf.int32),
        "confidence": confidence,
        "true_prob": true_prob,
        "margin": margin,
        "correct": right,
        "token_accuracy": tf.cast(right, tf.float32),
        "label": label,
        "prediction": prediction,
        "label_invalid": invalid,
        "label_fractional": fractional & counted,
    }


# Activations whose 16-bit output loses what a float32 loss needs: re-made from the logits.
_ACTIVATIONS = {"Softmax": tf.nn.softmax, "Sigmoid": tf.sigmoid}
# Ops between an activation and the model's output that pass its values on unchanged.
_PASS_THROUGH = ("Identity", "StopGradient")


def float32_output(out: Any) -> tf.Tensor:
    """The analysed output in float32; a 16-bit softmax or sigmoid re-made from its logits.

    Under ``mixed_float16`` a softmax or sigmoid output is float16: a probability below
    about 6e-5 is subnormal there, XLA flushes it to 0, and a loss from it caps at
    ``-log(1e-7)`` = 16.118 (Keras' clip). Inside a traced step the activation's input (the
    logits) is still in the graph, so the same activation is applied to the logits cast to
    float32: no probability underflows before float32's range, and Keras' cross-entropies,
    which look for a ``Softmax``/``Sigmoid`` op under their output, take the loss from
    float32 logits as they do for a float32 model. Eagerly, or for any other op, the output
    is cast as it is. Gradients never flow through it (the pass only records).
    """
    if out.dtype == tf.float32 or tf.executing_eagerly() or not hasattr(out, "op"):
        return tf.cast(out, tf.float32)
    tensor = out
    for _ in range(8):
        op = tensor.op
        if op.type in _PASS_THROUGH:
            tensor = op.inputs[0]
            continue
        if op.type in _ACTIVATIONS and len(op.inputs) == 1:
            logits = tf.stop_gradient(tf.cast(op.inputs[0], tf.float32))
            return _ACTIVATIONS[op.type](logits)
        break
    return tf.cast(out, tf.float32)


def softmax_logits(out: Any) -> tf.Tensor | None:
    """The input of the softmax op that made ``out`` inside a traced step, or None."""
    if tf.executing_eagerly() or not hasattr(out, "op"):
        return None
    op = out.op
    while op.type in _PASS_THROUGH:
        op = op.inputs[0].op
    if op.type != "Softmax" or len(op.inputs) != 1:
        return None
    return tf.stop_gradient(tf.cast(op.inputs[0], tf.float32))  # the pass only records


def logit_scores(logits: Any, label: Any, num_classes: int) -> tuple[tf.Tensor, ...]:
    """``(loss, true_prob, best_other, other_class)`` per position, from logits.

    One log-sum-exp over the class axis, then the label's and the best other class's
    log-probabilities: no probability row is formed (the pass's cost on large vocabularies).
    The loss is the sparse cross-entropy, computed as the fused kernel does (logits shifted
    by their maximum). A row with a NaN or +inf logit, or every logit at -inf, gets NaN
    probabilities, as its softmax would; a -inf logit only rules its class out.
    """
    top = tf.reduce_max(logits, axis=-1, keepdims=True)
    shifted = logits - top
    log_sum = tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=-1))
    label_shifted = tf.gather(shifted, label, batch_dims=label.shape.rank)
    is_label = tf.equal(tf.range(num_classes, dtype=tf.int32), label[..., None])
    other_class, other_shifted = _best_other(tf.where(is_label, -math.inf, shifted))
    log_true = label_shifted - log_sum
    return -log_true, tf.exp(log_true), tf.exp(other_shifted - log_sum), other_class


def is_sparse_xent(spec: LossSpec) -> bool:
    """Whether the loss is Keras' sparse categorical cross-entropy (its value from logits)."""
    import keras

    source = spec.source
    return type(source) is keras.losses.SparseCategoricalCrossentropy or (
        source is keras.losses.sparse_categorical_crossentropy
    )


def sparse_label(y: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Class ids from sparse labels, and whether each was fractional (e.g. 2.5)."""
    if y.dtype.is_floating:
        fractional = tf.not_equal(y, tf.floor(y))
    else:
        fractional = tf.zeros(tf.shape(y), tf.bool)
    # Saturate, never wrap: a huge id (2**40) must stay out of range.
    label = tf.cast(tf.clip_by_value(tf.cast(y, tf.float64), -(2.0**31), 2.0**31 - 1), tf.int32)
    return label, fractional


def xent_scores(loss: Any, backprop: Any, label_shape: Any) -> tuple[tf.Tensor, ...]:
    """Per-position ``scores`` for :func:`per_example` from a fused cross-entropy's outputs.

    ``SparseSoftmaxCrossEntropyWithLogits`` returns the loss and ``backprop = softmax -
    one_hot(label)`` (rows flattened), which the gradient needs anyway. Every other class's
    probability is there, and the label's own entry (its probability minus one) is below
    them all, so one argmax finds the best other class; the label's probability is
    ``exp(-loss)``. No softmax is taken again.
    """
    other_class, best_other = _best_other(backprop)
    loss = tf.reshape(loss, label_shape)
    return (
        loss,
        tf.exp(-loss),
        tf.reshape(best_other, label_shape),
        tf.reshape(other_class, label_shape),
    )


def _best_other(others: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """The best class of ``others`` (the label's entry pushed below) and its value."""
    other_class = tf.argmax(others, axis=-1, output_type=tf.int32)
    return other_class, tf.gather(others, other_class, batch_dims=other_class.shape.rank)


def label_first(true_prob: Any, best_other: Any, label: Any, other_class: Any) -> tf.Tensor:
    """Whether argmax (the first maximum) picks the label over the best other class.

    False where either probability is NaN.
    """
    return (true_prob > best_other) | ((true_prob == best_other) & (label < other_class))


@dataclasses.dataclass
class LossColumns:
    """The loss columns of the pass: a column producer (see ``_compiled.Producer``)."""

    spec: LossSpec
    probe: Probe
    prefixes = ()  # the loss columns are the report's; no prefix sets them apart

    @property
    def key(self) -> tuple:
        spec = self.spec
        return (
            "loss",
            id(spec.source),
            spec.name,
            spec.kind,
            spec.from_logits,
            spec.ignore_class,
            spec.output,
            dataclasses.astuple(self.probe),
        )

    def hook(self, model: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def columns(
        self, model: Any, outputs: Any, x: Any, y: Any, sample_weight: Any, state: Any
    ) -> dict[str, tf.Tensor]:
        y = select_labels(y, self.spec.output, model)
        sample_weight = select_weights(sample_weight, self.spec.output, model)
        out = select_output(outputs, self.spec.output, model)
        result = per_example(out, y, sample_weight, self.spec, self.probe)
        if sample_weight is not None:
            result["weight_problem"] = weight_problems(sample_weight)
        return result


def gathered(strategy: Any):
    """Wraps a replica step into one that runs on every replica and gathers the results.

    One gather per dtype, not per column: across workers each gather is a collective round
    trip. Collective gathers take numbers only: bools travel as int32.
    """

    def wrap(replica_step):
        def step(x, y, sample_weight, ids=None):
            layouts: list[dict[str, list[tuple[str, Any]]]] = []

            def packed(*args):
                result = replica_step(*args)
                groups: dict[str, list[tf.Tensor]] = {}
                layout: dict[str, list[tuple[str, Any]]] = {}
                shapes = {}
                for key, value in result.items():
                    wire = tf.int32 if value.dtype == tf.bool else value.dtype
                    layout.setdefault(wire.name, []).append((key, value.dtype))
                    shapes[key] = tf.shape(value)[1:]
                    width = tf.reduce_prod(tf.shape(value)[1:])
                    flat = tf.reshape(tf.cast(value, wire), tf.stack([tf.shape(value)[0], width]))
                    groups.setdefault(wire.name, []).append(flat)
                layouts.append(layout)  # the same on every replica
                return {name: tf.concat(parts, axis=1) for name, parts in groups.items()}, shapes

            per_replica, shapes = strategy.run(packed, args=(x, y, sample_weight, ids))
            results = {}
            for name, columns in layouts[0].items():
                block = strategy.gather(per_replica[name], axis=0)
                local = {
                    key: strategy.experimental_local_results(shapes[key])[0] for key, _ in columns
                }
                widths = [tf.reduce_prod(local[key]) for key, _ in columns]
                for (key, dtype), part in zip(columns, tf.split(block, widths, axis=1)):
                    shape = tf.concat([tf.shape(block)[:1], local[key]], axis=0)
                    results[key] = tf.cast(tf.reshape(part, shape), dtype)
            return results

        return step

    return wrap


def is_multi_worker(strategy: Any) -> bool:
    """Whether the strategy spans several processes (collectives, no XLA for gathers)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


# -- host-side checks ------------------------------------------------------------------


def check_batch(
    host: dict[str, Any], spec: LossSpec, probe_: Probe, weights: dict[int, int] | None = None
) -> None:
    """Raises clear errors for bad labels; drops the check columns from ``host``.

    Sample-weight problems are counted into ``weights`` (examples per bit of
    :data:`WEIGHT_PROBLEMS`) for :func:`check_weights` at the end of the pass, so the
    message gives the whole data's count.
    """
    problems = host.pop("weight_problem", None)
    if problems is not None and weights is not None and problems.any():
        for bit in WEIGHT_PROBLEMS:
            weights[bit] = weights.get(bit, 0) + int(np.count_nonzero(problems & bit))
    invalid = host.pop("label_invalid")
    fractional = host.pop("label_fractional")
    if fractional.any():
        raise ValueError(
            f"Labels hold fractional values but {spec.name} is a sparse loss that needs "
            "integer class ids. Pass integer labels, or use CategoricalCrossentropy for "
            "one-hot / soft labels."
        )
    if invalid.any():
        labels = host["label"]
        out_of_range = (labels < 0) | (labels >= probe_.num_classes)
        if spec.ignore_class is not None:
            out_of_range &= labels != spec.ignore_class
        bad_values = sorted({int(v) for v in labels[out_of_range]})
        raise ValueError(
            f"Labels {bad_values[:5]} are outside the output's {probe_.num_classes} classes "
            f"(0..{probe_.num_classes - 1}). Fix the labels, or pass ignore_class=ID for a "
            "label id that should not count (e.g. -100 for padding)."
        )


def progress_bar(total: int | None, verbose: int, *, unit_name: str = "batch") -> Any:
    """A progress bar over ``total`` units, or None when ``verbose`` is 0.

    In a terminal or a notebook, Keras' live bar. Elsewhere (output redirected to a log
    file or a pipe) Keras would still redraw it with carriage returns and colour codes at
    every update, so there it is one plain line at the end: ``12/12 - 1s - 80ms/batch``.
    """
    if not verbose:
        return None
    import keras

    live = interactive_output()
    return keras.utils.Progbar(total, verbose=1 if live else 2, unit_name=unit_name)


def interactive_output() -> bool:
    """Whether standard output is a terminal or a notebook (where a live bar renders)."""
    import sys

    stream = sys.stdout
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        terminal = False
    return terminal or "ipykernel" in sys.modules


def named_inputs(x: Any) -> dict[str, Any]:
    """The model inputs of a batch by name: dict keys, ``input_<i>``, or ``input``."""
    if isinstance(x, Mapping):
        return dict(x)
    if isinstance(x, (list, tuple)):
        return {f"input_{i}": v for i, v in enumerate(x)}
    return {"input": x}


def kept_inputs(x: Any, strategy: Any) -> dict[str, np.ndarray]:
    """Host copies of the integer or string inputs (token ids, raw text) of one batch."""
    named = named_inputs(x)
    kept = {}
    distributed = strategy is not None and strategy.num_replicas_in_sync > 1
    for name, value in named.items():
        local = strategy.experimental_local_results(value)[0] if distributed else value
        dtype = local.dtype
        if not (dtype.is_integer or dtype == tf.string) or local.shape.rank > 2:
            continue
        if distributed:
            if is_multi_worker(strategy) and dtype not in (tf.int32, tf.int64):
                if dtype == tf.string:
                    continue  # collective gathers take numbers only
                wide = strategy.run(lambda v: tf.cast(v, tf.int64), args=(value,))
                value = tf.cast(strategy.gather(wide, axis=0), dtype)
            else:
                value = strategy.gather(value, axis=0)
        kept[name] = value.numpy()
    return kept
