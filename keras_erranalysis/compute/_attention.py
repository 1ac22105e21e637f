"""extract_attention and attention_diagnostics: compiled passes that record attention weights."""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from keras_erranalysis.compute._attention_diagnostics import DIAGNOSTIC_NAMES
from keras_erranalysis.compute._attention_hooks import (
    MaskArg,
    _recording,
    _registry_version,
    find_attention_layers,
)
from keras_erranalysis.compute._pass import check_model, model_strategy, progress_bar

# model -> {options: compiled pass}. Weak keys, and the passes hold the model only weakly,
# so a deleted model frees its traced graphs.
_PASS_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Batch size of ``attention_diagnostics`` for array data when none is given.
DEFAULT_BATCH = 256


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


@dataclasses.dataclass
class AttentionDiagnostics:
    """Attention diagnostics of a whole dataset, and the weights of a few examples.

    Attributes:
        diagnostics: ``{"attn_entropy/<path>": (N,) float32, ...}``, in data order, ready
            to join a per-example table (e.g. ``LossReport.extra``).
        weights: ``{path: float32 (len(kept), heads, T_q, T_kv)}`` for the kept examples,
            in the order of ``kept``; zero-padded where batches had different lengths.
        kept: Positions (in data order) of the examples whose weights were kept.
        layer_paths: The layers analyzed.
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
    batch_size: int | None = None,
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
        batch_size: Batch size for array data (a dataset keeps its own batching);
            None for :data:`DEFAULT_BATCH` (256).
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
    if batch_size is None:  # weights of a batch holding a kept row reach the host whole
        batch_size = DEFAULT_BATCH
    batches, total = _data_batches(model, data, masks, batch_size)
    if masks:
        _check_mask_lengths(model, paths, _inputs_of(data), masks)
    progress = progress_bar(total, verbose)

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


# -- the attention columns of the one pass ---------------------------------------------


class AttentionColumns:
    """Attention diagnostics (and weights of kept rows) as columns of the one pass.

    A column producer for :func:`~keras_erranalysis.compute._losses.run_pass`: the
    attention layers are hooked around the pass's own forward call, so the diagnostics
    cost no second traversal of the data.
    """

    prefixes = tuple(f"{name}/" for name in DIAGNOSTIC_NAMES) + ("kept/w/",)

    def __init__(self, paths: Sequence[str], *, coverage_threshold: float, weights: bool):
        from keras_erranalysis.compute import _attention_hooks

        self.paths = list(paths)
        self.coverage_threshold = float(coverage_threshold)
        self.weights = weights
        self.key = (
            "attention",
            tuple(self.paths),
            _attention_hooks._registry_version,
            self.coverage_threshold,
            weights,
        )

    def hook(self, model: Any) -> Any:
        found = find_attention_layers(model)
        return _recording({p: layer for p, layer in found.items() if p in self.paths})

    def columns(
        self, model: Any, outputs: Any, x: Any, y: Any, sample_weight: Any, recorder: Any
    ) -> dict[str, Any]:
        if not recorder.records:
            raise ValueError(
                f"The attention layers {self.paths} were not called in the forward pass, so "
                "they have no weights. Check the inputs, or select layers that the model "
                "uses with layers=[...]."
            )
        result = recorder.diagnostics(coverage_threshold=self.coverage_threshold)
        if self.weights:
            result.update({"kept/w/" + p: w for p, w in recorder.weights().items()})
        return result


def attention_columns(
    model: Any,
    *,
    layers: Sequence[Any] | None = None,
    keep: Sequence[int] | np.ndarray | None = None,
    hardest: int = 0,
    coverage_threshold: float = 0.1,
) -> AttentionColumns:
    """The attention producer for ``run_pass``.

    ``keep`` (positions) and ``hardest`` (a count) say whether weights are wanted at all;
    ``run_pass(keep=..., keep_hardest=...)`` says whose.
    """
    paths = list(find_attention_layers(model, layers))
    wanted = hardest > 0 or (keep is not None and len(np.asarray(keep).reshape(-1)) > 0)
    return AttentionColumns(paths, coverage_threshold=coverage_threshold, weights=wanted)


def attention_from_pass(
    producer: AttentionColumns, columns: Mapping[str, np.ndarray], kept: Mapping, keep: Any
) -> AttentionDiagnostics:
    """The :class:`AttentionDiagnostics` of a ``run_pass`` result.

    ``keep``: the positions whose weights to return, in that order; positions the pass did
    not keep (not asked for, or not among the hardest candidates) are left out of
    ``kept``.
    """
    keep_arr = np.asarray([] if keep is None else keep, dtype=np.int64).reshape(-1)
    diagnostics = {k: v for k, v in columns.items() if k.startswith(producer.prefixes[:-1])}
    n = len(next(iter(diagnostics.values()))) if diagnostics else 0
    if keep_arr.size and (keep_arr.min() < 0 or keep_arr.max() >= n):
        raise ValueError(
            f"keep asks for examples {sorted(set(keep_arr.tolist()))[:5]} but the data holds "
            f"only {n} examples."
        )
    weights: dict[str, np.ndarray] = {}
    if keep_arr.size and kept:
        # Rows the pass kept (positions asked for, or candidates for the hardest).
        positions = kept["kept/position"]
        keep_arr = np.asarray([i for i in keep_arr if (positions == i).any()], np.int64)
        rows = [int(np.flatnonzero(positions == i)[0]) for i in keep_arr]
        for key, values in kept.items():
            if key.startswith("kept/w/"):
                weights[key[len("kept/w/") :]] = values[rows].astype(np.float32, copy=False)
    else:
        keep_arr = keep_arr[:0]
    return AttentionDiagnostics(
        diagnostics=diagnostics,
        weights=weights,
        kept=keep_arr,
        layer_paths=producer.paths,
        num_examples=n,
    )
