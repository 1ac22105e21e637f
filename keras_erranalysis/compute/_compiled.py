"""The compiled pass: one traversal of the data, several batches per call, one cache.

Private. A pass is a set of *column producers* (the loss columns always; attention
diagnostics and embeddings when asked) that share one forward call of the model per batch.
:class:`PassFunction` compiles them into two functions:

- the *step* ``(x, y, sample_weight, ids) -> {column: tensor}`` for one batch, with XLA
  when asked;
- the *group* function, a plain ``tf.function`` that runs the step over several batches
  (as Keras' ``steps_per_execution`` does), cuts the padding rows, and joins each column on
  the device, so the host fetches every column once per group rather than once per batch.

Compiled functions live in one cache (:func:`pass_function`), keyed by the model (weakly)
and by everything that changes the traced graph: the producers' keys, the strategy and the
XLA choice. Nothing else recompiles.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from keras_erranalysis.compute._pass import _row_bytes, named_inputs

#: Device memory (bytes) one batch of the pass may use when it picks its own batch size.
MEMORY_BUDGET = 256 << 20
#: Bounds of the batch size the pass picks for itself.
MIN_AUTO_BATCH, MAX_AUTO_BATCH = 32, 65_536
#: Rows a group call aims to hold, and the most batches one call runs.
ROWS_PER_CALL, MAX_STEPS_PER_CALL = 8_192, 32


class Producer(Protocol):
    """A set of per-example columns computed from one forward call of the model.

    ``key`` identifies what the producer computes (it is part of the cache key: two
    producers with the same key must trace the same graph); its column names start with
    one of ``prefixes``, and a ``kept/`` column returns only the rows asked for (see
    :func:`_select_kept`). ``hook(model)`` is a context
    manager entered around the model's call (e.g. recording attention); what it yields is
    handed to ``columns``.
    """

    key: tuple
    prefixes: tuple[str, ...]  # names of its columns start with one of these

    def hook(self, model: Any) -> contextlib.AbstractContextManager: ...

    def columns(
        self, model: Any, outputs: Any, x: Any, y: Any, sample_weight: Any, state: Any
    ) -> dict[str, tf.Tensor]: ...


# -- batch size ------------------------------------------------------------------------


def auto_batch_size(model: Any, x: Any, n: int, output_row: int) -> int:
    """The batch size the pass picks for ``n`` examples of in-memory input ``x``.

    The rule: ``MEMORY_BUDGET`` (256 MB) divided by an estimate of the bytes one example
    takes on the device, clamped to ``[MIN_AUTO_BATCH, MAX_AUTO_BATCH]`` (32 .. 65,536)
    and to ``n``, then evened out so that every batch has about the same size (no small
    last batch). One example takes its input bytes, plus twice (a safety factor for
    temporaries the estimate does not see, e.g. attention scores) the float32 bytes of
    every layer output of the model's graph (4 x the analysed output for a model without
    one), plus 8 float32 copies of its analysed output row (the pass's per-class maths).
    The pass keeps no gradients and no optimizer state, so this is far larger than a
    training batch.
    """
    input_bytes = sum(_row_bytes(leaf) for leaf in tf.nest.flatten(x))
    length = max(
        [int(np.shape(leaf)[1]) for leaf in tf.nest.flatten(x) if np.ndim(leaf) > 1] or [1]
    )
    hidden = _activation_elements(model, length)
    if hidden is None:
        hidden = 4 * output_row
    row_bytes = input_bytes + 4 * (2 * hidden + 8 * output_row)
    size = int(np.clip(MEMORY_BUDGET // max(row_bytes, 1), MIN_AUTO_BATCH, MAX_AUTO_BATCH))
    size = min(size, n)
    batches = -(-n // size)
    return -(-n // batches)


def _activation_elements(model: Any, length: int) -> int | None:
    """Elements of every layer output for one example, from the model's graph, or None."""
    total = 0
    try:
        layers = list(model.layers)
    except (AttributeError, ValueError):
        return None
    if not layers:
        return None
    for layer in layers:
        try:
            outputs = tf.nest.flatten(layer.output)
        except (AttributeError, ValueError, RuntimeError):
            return None
        for tensor in outputs:
            shape = getattr(tensor, "shape", None)
            if shape is None:
                return None
            dims = [length if d is None else int(d) for d in tuple(shape)[1:]]
            total += int(np.prod(dims)) if dims else 1
    return total


def steps_per_call(batch_size: int) -> int:
    """Batches one group call runs: about ``ROWS_PER_CALL`` rows, at most 32 batches."""
    return int(np.clip(-(-ROWS_PER_CALL // max(batch_size, 1)), 1, MAX_STEPS_PER_CALL))


# -- the compiled functions ------------------------------------------------------------


class PassFunction:
    """The step and group functions of one model and one set of producers.

    The model is held weakly: the cache is keyed by the model, so a deleted model frees
    its traced graphs.
    """

    def __init__(
        self,
        model: Any,
        producers: Sequence[Producer],
        strategy: Any,
        *,
        jit: bool,
        auto: bool,
        distributed_step: Callable[[Any], Any] | None = None,
    ) -> None:
        self._model = weakref.ref(model)
        self._producers = list(producers)
        self._strategy = strategy
        self._distributed_step = distributed_step
        self.auto = auto
        self.jit = jit
        self._build()

    @property
    def replicated(self) -> bool:
        return self._strategy.num_replicas_in_sync > 1

    def _replica_step(self, x: Any, y: Any, sample_weight: Any, ids: Any = None) -> dict:
        model = self._model()
        with contextlib.ExitStack() as stack:
            states = [stack.enter_context(p.hook(model)) for p in self._producers]
            outputs = model(x, training=False)
        result: dict[str, tf.Tensor] = {}
        for producer, state in zip(self._producers, states):
            result.update(producer.columns(model, outputs, x, y, sample_weight, state))
        if ids is not None:
            result["example_id"] = tf.reshape(tf.cast(ids, tf.int64), [-1])
        return result

    def _build(self) -> None:
        step = self._replica_step
        if self.replicated and self._distributed_step is not None:
            step = self._distributed_step(step)
        # No autograph, as in Keras' own train and predict steps: the step's Python control
        # flow is on static values only, and converting it costs seconds at the first call.
        self._step = tf.function(step, jit_compile=self.jit, reduce_retracing=True, autograph=False)
        self._group = tf.function(self._run_group, reduce_retracing=True, autograph=False)
        self._loop = tf.function(self._run_loop, reduce_retracing=True, autograph=False)

    def disable_xla(self) -> None:
        """Switches to the plain ``tf.function`` for good (XLA did not compile)."""
        self.jit = False
        self._build()

    # -- single device: the loop over the iterator runs inside the function ------------

    def run_iterator(
        self,
        iterator: Any,
        *,
        steps: int,
        pad_to: int | None,
        keep_inputs: bool,
        offset: int = 0,
        keep: Any = (),
        top: int = 0,
    ) -> tuple[dict[str, np.ndarray], int] | None:
        """Runs up to ``steps`` batches of ``iterator`` in one call.

        Returns host arrays per column and the number of batches run, or None when the
        iterator was already exhausted. ``pad_to``: under XLA, the rows every batch is
        padded to (the padding rows are cut from the results), so a smaller last batch
        costs no second compilation. ``offset``: the data position of the first row;
        ``keep``: the data positions whose ``kept/`` columns to return, and ``top``: how
        many rows of highest loss per batch to return too (see :func:`_select_kept`).
        """
        try:
            result, count = self._loop(
                iterator,
                steps,
                pad_to if self.jit else None,
                keep_inputs,
                tf.constant(offset, tf.int64),
                _keep_tensor(keep),
                top,
            )
        except tf.errors.OutOfRangeError:
            return None
        return {key: value.numpy() for key, value in result.items()}, int(count)

    def _one(
        self,
        batch: Any,
        pad_to: int | None,
        keep_inputs: bool,
        offset: Any,
        keep: Any,
        top: int,
    ) -> tuple[dict[str, tf.Tensor], Any]:
        x, y, sample_weight, ids = _unpack(batch)
        kept = kept_input_tensors(x) if keep_inputs else {}
        rows = tf.shape(tf.nest.flatten(x)[0])[0]
        if pad_to is not None:
            x, y, sample_weight, ids = tf.nest.map_structure(
                lambda t: _pad_rows_to(t, rows, pad_to), (x, y, sample_weight, ids)
            )
        result = dict(self._step(x, y, sample_weight, ids))
        if pad_to is not None:
            result = {key: value[:rows] for key, value in result.items()}
        result.update({"input/" + name: value for name, value in kept.items()})
        return _select_kept(result, offset, keep, rows, top), rows

    def _run_loop(
        self,
        iterator: Any,
        steps: int,
        pad_to: int | None,
        keep_inputs: bool,
        offset: Any,
        keep: Any,
        top: int,
    ):
        first, rows = self._one(iterator.get_next(), pad_to, keep_inputs, offset, keep, top)
        keys = list(first)
        arrays = [
            tf.TensorArray(
                first[key].dtype,
                size=0,
                dynamic_size=True,
                infer_shape=False,
                element_shape=tf.TensorShape(None),
            ).write(0, first[key])
            for key in keys
        ]
        largest = [tf.shape(first[key]) for key in keys]
        spec = iterator.element_spec
        if steps > 1:
            pending = iterator.get_next_as_optional()
        else:
            pending = tf.experimental.Optional.empty(spec)

        def more(count, offset, arrays, largest, pending):
            return (count < steps) & pending.has_value()

        def body(count, offset, arrays, largest, pending):
            result, rows = self._one(pending.get_value(), pad_to, keep_inputs, offset, keep, top)
            arrays = [a.write(count, result[key]) for a, key in zip(arrays, keys)]
            largest = [tf.maximum(m, tf.shape(result[key])) for m, key in zip(largest, keys)]
            pending = tf.cond(
                count + 1 < steps,
                iterator.get_next_as_optional,
                lambda: tf.experimental.Optional.empty(spec),
            )
            return count + 1, offset + tf.cast(rows, tf.int64), arrays, largest, pending

        start = (tf.constant(1), offset + tf.cast(rows, tf.int64), arrays, largest, pending)
        count, _, arrays, largest, _ = tf.while_loop(more, body, start)
        joined = {key: _joined(a, m, count) for key, a, m in zip(keys, arrays, largest)}
        return joined, count

    # -- batches from Python (several replicas; the first batch of a dataset) ----------

    def _run_group(
        self, batches: tuple, keep_inputs: bool, offset: Any, keep: Any, top: int
    ) -> dict:
        results = []
        for x, y, sample_weight, ids in batches:
            result = dict(self._step(x, y, sample_weight, ids))
            if keep_inputs:
                result.update({"input/" + k: v for k, v in kept_input_tensors(x).items()})
            rows = tf.shape(next(v for k, v in result.items() if not k.startswith("kept/")))[0]
            results.append(_select_kept(result, offset, keep, rows, top))
            offset += tf.cast(rows, tf.int64)
        return {key: _join([r[key] for r in results]) for key in results[0]}

    def run(
        self,
        batches: Sequence[tuple],
        *,
        keep_inputs: bool,
        offset: int = 0,
        keep: Any = (),
        top: int = 0,
    ) -> dict[str, np.ndarray]:
        """Runs a group of ``(x, y, sample_weight, ids)`` batches; host arrays per column."""
        result = self._group(
            tuple(batches),
            keep_inputs,
            tf.constant(offset, tf.int64),
            _keep_tensor(keep),
            top,
        )
        return {key: value.numpy() for key, value in result.items()}


def _keep_tensor(keep: Any) -> tf.Tensor:
    """``keep`` padded with -1 (no position) to a power of two of at least 8 entries.

    The compiled loop is traced per shape of its arguments: without the padding, the watch
    list growing from none to a few examples would trace (and compile) the pass again.
    """
    positions = np.asarray(keep, np.int64).reshape(-1)
    size = max(8, 1 << int(max(positions.size - 1, 0)).bit_length())
    padded = np.full(size, -1, np.int64)
    padded[: positions.size] = positions
    return tf.constant(padded)


def _select_kept(result: dict, offset: Any, keep: Any, rows: Any, top: int = 0) -> dict:
    """Keeps only some rows of every ``kept/`` column.

    Such columns are large per example (e.g. attention weights): only the rows at data
    positions ``keep``, and the ``top`` rows of highest loss of each batch (by ``loss_mean``
    and by ``loss_sum``; NaN and infinite losses first, as the tables rank them), leave
    the device. The hardest
    examples are not known before the pass; a batch's ``top`` rows are candidates that
    the host narrows to the overall hardest. ``kept/position`` says which positions the
    rows are, ``kept/score`` and ``kept/score_sum`` their ranking losses.
    """
    names = [key for key in result if key.startswith("kept/")]
    if not names:
        return result
    positions = offset + tf.range(tf.cast(rows, tf.int64), dtype=tf.int64)
    chosen = tf.reduce_any(tf.equal(positions[:, None], keep[None, :]), axis=1)
    mean = tf.math.divide_no_nan(
        result["loss_sum"], tf.cast(tf.maximum(result["n_tokens"], 1), tf.float32)
    )
    scores = {
        "kept/score": tf.where(tf.math.is_finite(mean), mean, math.inf),
        "kept/score_sum": tf.where(
            tf.math.is_finite(result["loss_sum"]), result["loss_sum"], math.inf
        ),
    }
    if top > 0:
        for score in scores.values():
            hardest = tf.math.top_k(score, tf.minimum(top, tf.cast(rows, tf.int32))).indices
            hits = tf.scatter_nd(hardest[:, None], tf.ones_like(hardest), tf.shape(chosen))
            chosen |= hits > 0
    result = dict(result)
    for name in names:
        result[name] = tf.boolean_mask(result[name], chosen)
    result["kept/position"] = tf.boolean_mask(positions, chosen)
    result.update({name: tf.boolean_mask(score, chosen) for name, score in scores.items()})
    return result


def _unpack(batch: Any) -> tuple:
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3, 4):
        return (*batch, None, None)[:4]
    raise ValueError(
        "Each batch must be (x, y), (x, y, sample_weight) or (x, y, sample_weight, ids) "
        f"so losses can be computed; got {type(batch).__name__}."
    )


def _pad_rows_to(tensor: Any, rows: Any, size: int) -> Any:
    """Pads ``tensor`` from ``rows`` to ``size`` rows with copies of its first row."""
    if tensor is None:
        return None
    return tf.concat([tensor, tf.repeat(tensor[:1], tf.maximum(size - rows, 0), axis=0)], 0)


def _joined(array: Any, largest: Any, count: Any) -> tf.Tensor:
    """The batches written to ``array`` joined on axis 0, other axes padded to ``largest``."""
    rank = largest.shape[0]
    if rank is None or rank < 2:
        return array.concat()
    fill = "" if array.dtype == tf.string else tf.zeros((), array.dtype)

    def pad(index, out):
        value = array.read(index)
        shape = tf.shape(value)
        paddings = tf.stack([tf.zeros_like(shape), largest - shape], axis=1)
        paddings = tf.tensor_scatter_nd_update(paddings, [[0, 1]], [0])
        return index + 1, out.write(index, tf.pad(value, paddings, constant_values=fill))

    out = tf.TensorArray(array.dtype, size=count, infer_shape=False)
    _, out = tf.while_loop(lambda index, out: index < count, pad, (tf.constant(0), out))
    return out.concat()


def _join(values: list[tf.Tensor]) -> tf.Tensor:
    """Concatenates on axis 0, padding the other axes to the largest size (zero, False, "")."""
    if len(values) == 1:
        return values[0]
    rank = values[0].shape.rank
    if rank is None or rank < 2:
        return tf.concat(values, axis=0)
    shapes = [tf.shape(v) for v in values]
    largest = tf.reduce_max(tf.stack(shapes), axis=0)
    dtype = values[0].dtype
    fill = "" if dtype == tf.string else tf.zeros((), dtype)
    padded = []
    for value, shape in zip(values, shapes):
        paddings = tf.stack([tf.zeros_like(shape), largest - shape], axis=1)
        paddings = tf.tensor_scatter_nd_update(paddings, [[0, 1]], [0])
        padded.append(tf.pad(value, paddings, constant_values=fill))
    return tf.concat(padded, axis=0)


def kept_input_tensors(x: Any) -> dict[str, tf.Tensor]:
    """The integer or string inputs (token ids, raw text) of one batch, by input name."""
    return {
        name: value
        for name, value in named_inputs(x).items()
        if (value.dtype.is_integer or value.dtype == tf.string) and value.shape.rank <= 2
    }


def kept_input_arrays(x: Any) -> dict[str, np.ndarray]:
    """:func:`kept_input_tensors` for numpy inputs: copies of the arrays themselves."""
    kept = {}
    for name, value in named_inputs(x).items():
        value = np.asarray(value)
        if value.dtype.kind in "iu" and value.ndim <= 2:
            kept[name] = value.copy()
        elif value.dtype.kind in "USO" and value.ndim <= 2:
            kept[name] = value.astype(str)
    return kept


# -- the one cache ---------------------------------------------------------------------

# model -> {key: PassFunction}. Weak keys; PassFunction holds the model weakly.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pass_function(
    model: Any,
    producers: Sequence[Producer],
    strategy: Any,
    jit_compile: Any,
    distributed_step: Callable[[Any], Any] | None = None,
) -> PassFunction:
    """The compiled pass of ``model`` and ``producers``, made once and reused across calls.

    Re-making the functions on every call would trace (and, with XLA, compile) the model
    again at every analysed epoch.
    """
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}.")
    key = (tuple(p.key for p in producers), id(strategy), jit_compile)
    try:
        cache = _CACHE.setdefault(model, {})
    except TypeError:  # an unhashable model: no caching
        cache = {}
    if key not in cache:
        cache[key] = PassFunction(
            model,
            producers,
            strategy,
            jit=bool(jit_compile),
            auto=jit_compile == "auto",
            distributed_step=distributed_step,
        )
    return cache[key]


def cached_functions(model: Any) -> dict:
    """The cached pass functions of ``model`` (for tests)."""
    try:
        return dict(_CACHE.get(model, {}))
    except TypeError:
        return {}


# -- batches ---------------------------------------------------------------------------


def groups(batches: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    """Lists of up to ``size`` consecutive batches."""
    group: list[tuple] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def ragged(dataset: Any) -> bool:
    """Whether the dataset's batches may differ in a non-batch axis (e.g. ``padded_batch``)."""
    shapes = [getattr(spec, "shape", None) for spec in tf.nest.flatten(dataset.element_spec)]
    return any(
        shape.rank is None or None in tuple(shape)[1:] for shape in shapes if shape is not None
    )


def as_tensor(array: np.ndarray) -> tf.Tensor:
    """A numpy array as a tensor (object arrays of text as ``tf.string``)."""
    if array.dtype.kind in "OU":
        return tf.convert_to_tensor(array, tf.string)
    return tf.convert_to_tensor(array)
