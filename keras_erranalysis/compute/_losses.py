"""compute_losses: the compiled, unreduced pass over a model's data."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from keras_erranalysis._loss_report import LossReport, Reduction, _text
from keras_erranalysis.decoding import Vocabulary


def compute_losses(
    model: Any,
    data: Any,
    *,
    loss: Any = None,
    output: str | int | None = None,
    batch_size: int | None = None,
    reduction: Reduction = "mean",
    ignore_class: int | None = None,
    from_logits: bool | None = None,
    ids: np.ndarray | None = None,
    keep_inputs: bool = True,
    jit_compile: bool | Literal["auto"] = "auto",
    generate: Any = None,
    vocab: Any = None,
    verbose: int = 1,
) -> LossReport:
    """Runs one compiled, unreduced loss pass and returns per-example results.

    Args:
        model: A built Keras 3 model (TensorFlow backend).
        data: A batched ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``, or
            such a tuple of numpy arrays / dicts of arrays (batched here by ``batch_size``).
            A dataset of ``(x, y, sample_weight, ids)`` (``sample_weight`` may be None)
            carries example ids with each batch: results come back sorted by id, which
            keeps them in order under ``MultiWorkerMirroredStrategy`` sharding. For a
            multi-output model, ``y`` and ``sample_weight`` may take any form ``fit``
            accepts (a dict by output name, a list or tuple in the model's output order);
            the pass reads those of ``output``. Sample weights must be finite and >= 0.
        loss: A Keras loss (object, name) or a callable ``(y_true, y_pred)`` returning
            unreduced losses. Defaults to the model's compiled loss, re-made unreduced.
        output: Name or index of the output to analyze, for multi-output models.
        batch_size: Batch size for numpy input (ignored for a dataset). ``None`` (the
            default) lets the pass pick it from a memory budget: 256 MB divided by an
            estimate of one example's bytes on the device (its inputs, twice the float32
            outputs of every layer of the model's graph, and eight float32 copies of its
            analyzed output row), clamped to 32..65,536 rows and evened out over the data.
            The pass keeps no gradients, so this is far larger than a training batch (see
            ``keras_erranalysis.compute._compiled.auto_batch_size``). Whatever the batch
            size, up to 32 batches (about 8,192 rows) run in one compiled call and their
            results reach the host once per call.
        reduction: How ``loss`` summarises a sequence: ``"mean"`` or ``"sum"`` over its
            counted tokens. Both are always kept as ``loss_mean`` and ``loss_sum``.
        ignore_class: Label id that does not count (e.g. ``-100`` for NER sub-tokens).
            Defaults to the loss's own ``ignore_class``.
        from_logits: Whether the output is logits. Defaults to the loss's own setting.
        ids: Stable example ids, one per example in data order (default ``0..N-1``, or
            the ids the batches carry).
        keep_inputs: Keep integer/string inputs (token ids) so examples can be decoded.
        jit_compile: ``True`` for XLA, ``False`` for none, ``"auto"`` to try XLA and fall
            back cleanly when the model does not compile with it. In ``"auto"`` mode a
            dataset whose batches may change length (e.g. ``padded_batch`` without
            ``padded_shapes``) runs without XLA: every new length would cost a compilation.
        generate: Also decode each example free-running, as the model runs at inference
            (seq2seq): ``"greedy"`` or ``True``, a beam width (an integer), a function
            (inputs batch -> ``(B, T)`` ids) or a
            :class:`~keras_erranalysis.GenerationAnalysis`; ``None`` (default) does not.
            Adds the ids (``report.generated``) and the same ``generated_*`` columns as the
            callback's ``"generate"`` analysis to ``report.extra``.
        vocab: The target vocabulary, for ``generate`` only: finds the end token
            (``</s>``, ``<eos>``, ``[END]``) and gives CER, BLEU and chrF their characters
            (default: ids as tokens). ``report.to_frame(vocab=...)`` decodes the text.
        verbose: 0 for silence, 1 for a progress bar.

    Returns:
        A :class:`LossReport`.

    Raises:
        ValueError: For an unbuilt model, empty data, labels that do not fit the output,
            float labels for a sparse loss, probabilities given where logits are expected
            (or the reverse), a multi-output model without ``output`` (or an ``output`` it
            does not have), NaN, negative or infinite sample weights, or data the pass
            cannot read (an unbatched dataset, ragged or sparse tensors, text given to a
            numeric input): each message names the fix.

    Example:
        >>> report = compute_losses(model, (x_val, y_val), verbose=0)  # doctest: +SKIP
        >>> report.hardest(5)  # doctest: +SKIP
    """
    options = {
        name: value
        for name, value in locals().items()
        if name not in ("model", "data", "generate", "vocab")
    }
    from keras_erranalysis.compute._generate import add_generated
    from keras_erranalysis.options import generation_option

    option = generation_option(generate)
    if option is not None and not keep_inputs:
        raise ValueError("generate= decodes from the model's token inputs: leave keep_inputs=True.")
    report = run_pass(model, data, **options).report
    if option is not None:
        add_generated(
            model,
            report,
            option,
            vocab=Vocabulary.from_any(vocab),
            output=output,
            batch_size=batch_size,
            jit_compile=jit_compile,
        )
    return report


@dataclasses.dataclass
class PassResult:
    """What one traversal of the data gave (see :func:`run_pass`).

    Attributes:
        report: The loss columns, as :func:`compute_losses` returns them.
        columns: The extra producers' per-example columns (e.g. ``attn_entropy/<path>``,
            ``embedding``), rows in the report's order.
        kept: The ``kept/`` columns of the rows asked for (e.g. attention weights
            ``kept/w/<path>``) and their data positions ``kept/position``.
    """

    report: LossReport
    columns: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]


def run_pass(
    model: Any,
    data: Any,
    *,
    extra: Sequence[Any] = (),
    keep: Sequence[int] | np.ndarray = (),
    keep_hardest: int = 0,
    **options: Any,
) -> PassResult:
    """The loss columns and every ``extra`` producer's columns, in ONE traversal of data.

    ``options`` as for :func:`compute_losses`. ``extra``: column producers sharing the
    model's forward call (attention diagnostics, embeddings: see
    ``_attention.attention_columns`` and ``_embeddings.embedding_columns``). ``keep``: data
    positions whose ``kept/`` columns (e.g. attention weights) come back to the host;
    ``keep_hardest``: also those of the examples of highest loss (the ``keep_hardest``
    highest by ``loss_mean`` and by ``loss_sum``, NaN/inf first), chosen on the device
    while the data is read, so heatmaps of the hardest examples need no second pass.
    """
    import tensorflow as tf

    from keras_erranalysis.compute import _compiled, _hub, _inputs, _pass

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(compute_losses).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("generate", "vocab")
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"run_pass got unknown options {unknown}; see compute_losses.")
    settings = {**defaults, **options}
    loss, output, batch_size = settings["loss"], settings["output"], settings["batch_size"]
    reduction, ids, verbose = settings["reduction"], settings["ids"], settings["verbose"]
    ignore_class, from_logits = settings["ignore_class"], settings["from_logits"]
    keep_inputs, jit_compile = settings["keep_inputs"], settings["jit_compile"]
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    _pass.check_model(model)
    data = _hub.task_data(model, data)  # raw text through a keras-hub task's preprocessor
    arrays = _pass.array_parts(data)
    spec = _pass.resolve_loss(
        model, loss, output, ignore_class=ignore_class, from_logits=from_logits
    )
    strategy = _pass.model_strategy(model)
    replicated = strategy.num_replicas_in_sync > 1
    kept: dict[str, np.ndarray] | None = None  # inputs kept straight from the arrays
    first = None
    if arrays is not None:
        parts, n = arrays
        _inputs.check_input_dtypes(_inputs.input_pairs_of_arrays(parts[0], model))
        probe = _pass.probe(model, spec, _head(parts, min(n, batch_size or _PROBE_ROWS)))
        if batch_size is None:
            labels = _inputs.select_labels(parts[1], spec.output, model)
            width = probe.num_classes * (labels.shape[1] if probe.sequence else 1)
            batch_size = _compiled.auto_batch_size(model, parts[0], n, width)
        if keep_inputs and not _pass.is_multi_worker(strategy):
            kept = _compiled.kept_input_arrays(parts[0])
        dataset = _pass.as_dataset(data, batch_size)
    else:
        dataset = _pass.as_dataset(data, batch_size or _PROBE_ROWS)
        _inputs.check_dataset(dataset, model, spec.output)
        if replicated:
            first = _pass.first_batch(dataset)
        else:  # the probe's batch is the traversal's first: the data is read once
            iterator = iter(dataset)
            try:
                first = _pass.unpack(next(iterator), with_ids=True)
            except StopIteration:
                raise ValueError(
                    "The data holds no examples: compute_losses needs at least one batch. "
                    "Check that the dataset is not exhausted or filtered to nothing."
                ) from None
        probe = _pass.probe(model, spec, first[:3])
        batch_size = int(np.shape(tf.nest.flatten(first[0])[0])[0])
        if jit_compile == "auto" and _compiled.ragged(dataset):
            jit_compile = False  # every new length would cost an XLA compilation

    if jit_compile and replicated:
        # One XLA program would reach the other replicas' variables on their devices
        # (InvalidArgumentError), and has no kernel for the cross-worker gather.
        if jit_compile is True:
            warnings.warn(
                "jit_compile=True is ignored under a multi-replica tf.distribute strategy: "
                "the pass runs without XLA.",
                RuntimeWarning,
                stacklevel=2,
            )
        jit_compile = False
    compiled = _compiled.pass_function(
        model,
        [_pass.LossColumns(spec, probe), *extra],
        strategy,
        jit_compile,
        distributed_step=_pass.gathered(strategy),
    )
    total = _pass.cardinality(dataset)
    weight_problems: dict[int, int] = {}
    traversal = _Traversal(
        compiled,
        strategy,
        batch_size,
        keep_inputs=keep_inputs and kept is None,
        keep=np.asarray(keep, np.int64).reshape(-1),
        top=keep_hardest,
        progress=_pass.progress_bar(total, verbose),
        check=lambda host: _pass.check_batch(host, spec, probe, weight_problems),
    )
    while True:
        try:
            if arrays is None and not replicated:
                chunks = traversal.iterator(iterator, first)
            elif arrays is not None and not replicated and batch_size >= _compiled.ROWS_PER_CALL:
                chunks = traversal.arrays(*arrays)  # few large batches: straight from numpy
            else:
                chunks = traversal.dataset(dataset)
            break
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            if not (compiled.jit and jit_compile == "auto"):
                raise
            warnings.warn(
                f"XLA could not compile the loss pass ({type(error).__name__}); "
                "running without XLA. Pass jit_compile=False to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            compiled.disable_xla()
            weight_problems.clear()
            if arrays is None and not replicated:  # start again: a new reading of the data
                iterator = iter(dataset)
                first = _pass.unpack(next(iterator), with_ids=True)
    if not chunks or sum(c["loss_sum"].shape[0] for c in chunks) == 0:
        raise ValueError(
            "The data holds no examples: compute_losses needs at least one batch. Check "
            "that the dataset is not exhausted (a one-shot iterator) or filtered to nothing."
        )
    if traversal.progress is not None and (total is None or traversal.done < total):
        traversal.progress.target = traversal.done  # now known: the bar ends with its line
        traversal.progress.update(traversal.done, finalize=True)
    _inputs.check_weights(weight_problems, sum(c["loss_sum"].shape[0] for c in chunks))
    prefixes = tuple(p for producer in extra for p in producer.prefixes)
    kept_columns = _split(chunks, ("kept/",))
    extra_columns = _split(chunks, prefixes)
    report, order = _assemble(chunks, spec, probe, ids=ids, reduction=reduction)
    if kept is not None:
        report.inputs = kept
    columns = {}
    for key, parts in extra_columns.items():
        columns[key] = _concat(parts) if order is None else _concat(parts)[order]
    kept_rows = {key: _concat(parts) for key, parts in kept_columns.items() if parts}
    return PassResult(report=report, columns=columns, kept=kept_rows)


def _split(chunks: list[dict[str, Any]], prefixes: tuple[str, ...]) -> dict[str, list]:
    """Pops the columns whose names start with one of ``prefixes`` out of every chunk."""
    names = [k for k in chunks[0] if prefixes and k.startswith(prefixes)] if chunks else []
    return {name: [chunk.pop(name) for chunk in chunks] for name in names}


class _Traversal:
    """One reading of the data: host columns per compiled call."""

    def __init__(self, compiled, strategy, batch_size, *, keep_inputs, keep, top, progress, check):
        self.compiled = compiled
        self.top = top
        self.strategy = strategy
        self.batch_size = batch_size
        self.keep_inputs = keep_inputs
        self.keep = keep
        self.progress = progress
        self.check = check
        self.done = 0  # batches read

    def _add(self, chunks: list, host: dict, batches: int, offset: int, done: int) -> tuple:
        self.check(host)
        if self.top and chunks:
            self._narrow(chunks[-1], host)
        inputs = {key[6:]: host.pop(key) for key in list(host) if key.startswith("input/")}
        if self.keep_inputs:
            host["inputs"] = inputs
        chunks.append(host)
        done += batches
        self.done = done
        if self.progress is not None:
            self.progress.update(done)
        return offset + host["loss_sum"].shape[0], done

    def _narrow(self, previous: dict, host: dict) -> None:
        """Moves the kept rows of ``previous`` into ``host``, keeping the hardest only."""
        names = [key for key in host if key.startswith("kept/")]
        for name in names:
            host[name] = _concat([previous.pop(name), host[name]])
            previous[name] = host[name][:0]
        rows = np.isin(host["kept/position"], self.keep)
        for score in (host["kept/score"], host["kept/score_sum"]):
            order = np.argsort(-np.nan_to_num(score, nan=np.inf), kind="stable")
            rows[order[: self.top]] = True
        for name in names:
            host[name] = host[name][rows]

    def iterator(self, iterator: Any, first: tuple) -> list[dict[str, Any]]:
        """Single device: the first batch (already read), then the loop in the graph."""
        from keras_erranalysis.compute import _compiled

        compiled = self.compiled
        chunks: list[dict[str, Any]] = []
        host = compiled.run([first], keep_inputs=self.keep_inputs, keep=self.keep, top=self.top)
        offset, done = self._add(chunks, host, 1, 0, 0)
        steps = _compiled.steps_per_call(self.batch_size)
        while True:
            ran = compiled.run_iterator(
                iterator,
                steps=steps,
                pad_to=self.batch_size,
                keep_inputs=self.keep_inputs,
                offset=offset,
                keep=self.keep,
                top=self.top,
            )
            if ran is None:
                return chunks
            host, count = ran
            offset, done = self._add(chunks, host, count, offset, done)
            if count < steps:
                return chunks

    def arrays(self, parts: tuple, n: int) -> list[dict[str, Any]]:
        """In-memory data in large batches: one call per batch, sliced from the arrays.

        Under XLA a smaller last batch is padded to the others' size (one compilation);
        the padding rows are cut from the results.
        """
        import tensorflow as tf

        from keras_erranalysis.compute import _compiled

        chunks: list[dict[str, Any]] = []
        offset = done = 0
        size = self.batch_size
        for start in range(0, n, size):
            rows = min(size, n - start)
            stop = start + (size if self.compiled.jit else rows)
            index = np.minimum(np.arange(start, stop), n - 1) if stop > n else slice(start, stop)
            batch = tf.nest.map_structure(
                lambda array, index=index: _compiled.as_tensor(array[index]), parts
            )
            host = self.compiled.run(
                [(*batch, None, None)[:4]],
                keep_inputs=self.keep_inputs,
                offset=start,
                keep=self.keep,
                top=self.top,
            )
            if stop > n:  # cut the padding rows
                real = host.get("kept/position", np.zeros(0)) < n
                host = {
                    key: value[real] if key.startswith("kept/") else value[:rows]
                    for key, value in host.items()
                }
            offset, done = self._add(chunks, host, 1, offset, done)
        return chunks

    def dataset(self, dataset: Any) -> list[dict[str, Any]]:
        """A whole dataset: in the graph on one device, grouped from Python under a strategy."""
        from keras_erranalysis.compute import _compiled, _pass

        strategy = self.strategy
        if strategy.num_replicas_in_sync == 1:
            iterator = iter(dataset)
            try:
                first = _pass.unpack(next(iterator), with_ids=True)
            except StopIteration:
                return []
            return self.iterator(iterator, first)
        # Collectives across workers stay one batch per call: the same order on each worker.
        multi_worker = _pass.is_multi_worker(strategy)
        steps = 1 if multi_worker else _compiled.steps_per_call(self.batch_size)
        batches = (
            _pass.unpack(b, with_ids=True)
            for b in strategy.experimental_distribute_dataset(dataset)
        )
        chunks: list[dict[str, Any]] = []
        offset = done = 0
        for group in _compiled.groups(batches, steps):
            host = self.compiled.run(
                group, keep_inputs=False, offset=offset, keep=self.keep, top=self.top
            )
            if self.keep_inputs:
                per_batch = [_pass.kept_inputs(batch[0], strategy) for batch in group]
                for name in per_batch[0]:
                    host["input/" + name] = _concat([b[name] for b in per_batch])
            offset, done = self._add(chunks, host, len(group), offset, done)
        return chunks


#: Rows of in-memory data the probe runs eagerly when the pass picks its batch size.
_PROBE_ROWS = 32


def _head(parts: tuple, rows: int) -> tuple[Any, Any, Any]:
    """The first ``rows`` examples of in-memory ``(x, y[, sample_weight])``, as tensors."""
    import tensorflow as tf

    from keras_erranalysis.compute import _compiled

    head = tf.nest.map_structure(lambda array: _compiled.as_tensor(array[:rows]), parts)
    return (*head, None)[:3]


def _to_numpy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value.numpy()


def _assemble(
    chunks: list[dict[str, Any]],
    spec: Any,
    probe: Any,
    *,
    ids: np.ndarray | None,
    reduction: str,
) -> tuple[LossReport, np.ndarray | None]:
    n = sum(c["loss_sum"].shape[0] for c in chunks)
    carried = "example_id" in chunks[0]
    if carried and ids is not None:
        raise ValueError(
            "The batches carry ids (x, y, sample_weight, ids) and ids= was given too: "
            "pass only one of them."
        )
    if carried:
        example_id = np.concatenate([c.pop("example_id") for c in chunks]).astype(np.int64)
        if len(np.unique(example_id)) != n:
            raise ValueError("The ids the batches carry must be unique, one per example.")
        order = np.argsort(example_id, kind="stable")
        example_id = example_id[order]
    elif ids is None:
        example_id = np.arange(n, dtype=np.int64)
    else:
        example_id = np.asarray(ids).reshape(-1)
        if example_id.shape[0] != n:
            raise ValueError(
                f"ids has {example_id.shape[0]} entries but the data holds {n} examples: "
                "pass one id per example, in data order."
            )
        if len(np.unique(example_id)) != n:
            raise ValueError("ids must be unique: each example needs its own id.")
    # Column by column, each popped from the chunks as it is joined (and put in id order),
    # so the peak is the chunks plus one column, not two copies of everything.
    columns: dict[str, np.ndarray] = {}
    for key in [k for k in chunks[0] if k != "inputs"]:
        columns[key] = _concat([c.pop(key) for c in chunks])
        if carried:  # results in id order, whatever order the workers' shards came back in
            columns[key] = columns[key][order]
    inputs: dict[str, np.ndarray] = {}
    for name in chunks[0].get("inputs", {}):
        inputs[name] = _concat([c["inputs"][name] for c in chunks])
        if inputs[name].dtype.kind in "SO":
            inputs[name] = np.array([_text(v) for v in inputs[name].reshape(-1)]).reshape(
                inputs[name].shape
            )
    if carried:
        inputs = {key: value[order] for key, value in inputs.items()}
    loss_sum = columns["loss_sum"].astype(np.float32, copy=False)
    n_tokens = columns["n_tokens"].astype(np.int32, copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss_mean = np.where(n_tokens > 0, loss_sum / np.maximum(n_tokens, 1), 0.0)
    loss_mean = loss_mean.astype(np.float32)
    sequence = probe.sequence
    report = LossReport(
        task="sequence" if sequence else "classification",
        num_classes=probe.num_classes,
        example_id=example_id,
        loss=loss_mean if reduction == "mean" else loss_sum,
        loss_sum=loss_sum,
        loss_mean=loss_mean,
        label=columns["label"].astype(np.int32, copy=False),
        prediction=columns["prediction"].astype(np.int32, copy=False),
        confidence=columns["confidence"].astype(np.float32, copy=False),
        true_prob=columns["true_prob"].astype(np.float32, copy=False),
        margin=columns["margin"].astype(np.float32, copy=False),
        correct=columns["correct"].astype(bool, copy=False),
        token_accuracy=columns["token_accuracy"].astype(np.float32, copy=False),
        n_tokens=n_tokens,
        inputs=inputs,
        reduction=reduction,
    )
    if sequence:
        report.token_loss = columns["token_loss"].astype(np.float32, copy=False)
        report.token_confidence = columns["token_confidence"].astype(np.float32, copy=False)
        report.token_true_prob = columns["token_true_prob"].astype(np.float32, copy=False)
        report.token_margin = columns["token_margin"].astype(np.float32, copy=False)
        report.token_mask = columns["token_mask"].astype(bool, copy=False)
    return report, (order if carried else None)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenates along axis 0, padding the other axes when batches differ in length."""
    if parts[0].ndim < 2 or len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts, axis=0)
    largest = np.max([p.shape for p in parts], axis=0)
    padded = []
    for part in parts:
        pad = [(0, 0)] + [(0, int(m) - s) for m, s in zip(largest[1:], part.shape[1:])]
        fill: Any = False if part.dtype == bool else ("" if part.dtype.kind in "US" else 0)
        padded.append(np.pad(part, pad, constant_values=fill))
    return np.concatenate(padded, axis=0)
