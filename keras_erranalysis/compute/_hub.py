"""keras-hub task models: their preprocessor on the data, their own ``generate()``.

A keras-hub ``Seq2SeqLM`` or ``CausalLM`` trains on raw text: ``task.fit(ds)`` maps the
task's preprocessor over ``ds`` (``task.preprocess_samples``), which turns each batch into
the model's inputs (``token_ids``/``padding_mask``, or ``encoder_*``/``decoder_*``), the
labels (the token ids shifted left) and a sample weight (the padding mask of the labels).
:func:`task_data` does the same to the data the pass reads, so the callback takes the very
dataset given to ``fit``; data already preprocessed goes through unchanged.

:func:`generate_task` decodes free-running through the task's own generate function
(``task.make_generate_function()``: its sampler, its cache, its stop tokens), from a
prompt cut out of each example: for a ``Seq2SeqLM`` the start tokens of the decoder input
(as ``generate_preprocess`` puts them); for a ``CausalLM`` the tokens before the first
counted label (a prompt that the sample weight keeps out of the loss), at least the start
token, or ``prompt_length`` tokens. Nothing here imports keras-hub: a task is recognised
by what it has (``preprocess_samples``, ``make_generate_function``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_erranalysis.compute._generate import Generated, GenerationError

SEQ2SEQ_KEYS = ("encoder_token_ids", "decoder_token_ids")
CAUSAL_KEYS = ("token_ids",)


def is_task(model: Any) -> bool:
    """Whether ``model`` is a keras-hub ``Task`` (it preprocesses the data it is fit on)."""
    return callable(getattr(model, "preprocess_samples", None)) and hasattr(model, "backbone")


def is_generative_task(model: Any) -> bool:
    """Whether ``model`` is a keras-hub ``Seq2SeqLM`` or ``CausalLM`` (it can generate)."""
    return is_task(model) and callable(getattr(model, "make_generate_function", None))


def task_tokenizer(model: Any) -> Any:
    """The tokenizer of a keras-hub task's preprocessor, or ``None``."""
    if not is_task(model):
        return None
    return getattr(getattr(model, "preprocessor", None), "tokenizer", None)


def _raw_dataset(model: Any, data: Any) -> bool:
    """Whether ``data`` is a dataset of raw text for the task's preprocessor."""
    import tensorflow as tf

    return (
        is_task(model)
        and getattr(model, "preprocessor", None) is not None
        and isinstance(data, tf.data.Dataset)
        and _has_strings(data.element_spec)
    )


def _has_strings(spec: Any) -> bool:
    import tensorflow as tf

    return any(
        getattr(s, "dtype", None) == tf.string
        for s in tf.nest.flatten(spec)
        if isinstance(s, tf.TensorSpec | tf.RaggedTensorSpec)
    )


def task_data(model: Any, data: Any) -> Any:
    """``data`` as the model's inputs: raw text goes through a keras-hub task's preprocessor.

    ``task.fit(ds)`` preprocesses ``ds`` (``task.preprocess_samples``); the pass does the
    same, so the data given to ``fit`` can be given to the callback. A dataset of model
    inputs (already preprocessed), and any data of a model that is not a task with a
    preprocessor, is returned as it is.

    Raises:
        ValueError: For raw text in arrays (not a dataset), naming the fix.
    """
    import tensorflow as tf

    if not is_task(model) or getattr(model, "preprocessor", None) is None:
        return data
    if isinstance(data, tf.data.Dataset):
        if not _raw_dataset(model, data):
            return data
        return data.map(model.preprocess_samples, num_parallel_calls=tf.data.AUTOTUNE)
    parts = data if isinstance(data, tuple | list) else (data,)
    if any(np.asarray(v).dtype.kind in "USO" for p in parts for v in _leaves(p)):
        raise ValueError(
            f"The data holds raw text for the keras-hub task {type(model).__name__}, in "
            "arrays. Pass a batched tf.data.Dataset of the text (as given to fit), e.g. "
            "tf.data.Dataset.from_tensor_slices(x).batch(32): its preprocessor is mapped over "
            "it as fit does."
        )
    return data


def preprocessed_data(model: Any, data: Any) -> Any:
    """``data`` through a keras-hub task's preprocessor once, kept in memory, for every epoch.

    The callback reads the same examples every analyzed epoch. Mapped in ``tf.data``,
    keras-hub's tokenizers run as graph ops: tracing them takes seconds and each
    traversal tokenizes again. Here each raw batch is preprocessed eagerly (the
    preprocessor's Python path, as ``task.generate()`` uses) and the model inputs, labels
    and sample weights are kept as one in-memory dataset with the same batches, in the same
    order. Batches of different widths (a preprocessor without a fixed sequence length)
    fall back to the ``tf.data`` map, cached after the first traversal.

    Returns:
        The dataset of ``(x, y, sample_weight)`` batches, or ``data`` itself when it holds
        no raw text for a task's preprocessor.
    """
    import keras
    import tensorflow as tf

    if not _raw_dataset(model, data):
        return task_data(model, data)
    batches, size = [], None
    for batch in data:
        x, y, weight = keras.utils.unpack_x_y_sample_weight(batch)
        batches.append(model.preprocess_samples(x, y=y, sample_weight=weight))
        size = size or int(tf.shape(tf.nest.flatten(batches[-1])[0])[0])
    try:
        joined = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *batches)
    except (ValueError, tf.errors.InvalidArgumentError):  # widths differ between batches
        return task_data(model, data).cache()
    return tf.data.Dataset.from_tensor_slices(joined).batch(size)


def _leaves(part: Any) -> list[Any]:
    if part is None:
        return []
    if isinstance(part, Mapping):
        return list(part.values())
    if isinstance(part, tuple | list):
        return list(part)
    return [part]


def _start_tokens(model: Any, seq2seq: bool) -> int:
    """How many tokens the preprocessor puts at the front of a generation prompt."""
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None or not hasattr(preprocessor, "generate_preprocess"):
        return 1
    empty = {"encoder_text": [""], "decoder_text": [""]} if seq2seq else [""]
    found = preprocessor.generate_preprocess(empty)
    mask = found["decoder_padding_mask" if seq2seq else "padding_mask"]
    return max(1, int(np.asarray(mask).sum()))


def _valid_mask(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """Positions up to each row's last non-padding token (the start may equal the pad)."""
    real = ids != pad_id
    last = np.where(real.any(axis=1), ids.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1), -1)
    return np.arange(ids.shape[1])[None, :] <= last[:, None]


def generate_task(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    token_mask: np.ndarray,
    *,
    max_length: int | None = None,
    end_id: int | None = None,
    prompt_length: int | None = None,
    batch_size: int = 64,
) -> tuple[Generated, np.ndarray]:
    """Free-running outputs of a keras-hub ``Seq2SeqLM`` / ``CausalLM`` through its generate.

    Args:
        model: The task (with or without a preprocessor).
        inputs: The model's integer inputs by name, examples on axis 0
            (``LossReport.inputs``): ``encoder_token_ids`` and ``decoder_token_ids``, or
            ``token_ids``.
        token_mask: ``(N, T)`` counted label positions (the sample weight).
        max_length: Most tokens generated after the prompt (default: up to the input's
            length, as the task's own ``generate()``).
        end_id: Stop token (default: the tokenizer's end token, as ``generate()``).
        prompt_length: Tokens of each example fed as the prompt, start token included
            (default: see the module).
        batch_size: Examples per call (the last batch is padded: one compilation).

    Returns:
        ``(generated, reference_mask)``: the outputs after the prompt, cut before the stop
        token, and the label positions they are compared with (``token_mask`` without the
        positions the prompt covers).

    Raises:
        GenerationError: When the inputs are not those of a keras-hub language model.
    """
    seq2seq = all(k in inputs for k in SEQ2SEQ_KEYS)
    if not seq2seq and not all(k in inputs for k in CAUSAL_KEYS):
        raise GenerationError(
            f"{type(model).__name__} is a keras-hub task, but its inputs {sorted(inputs)} "
            "hold neither encoder_token_ids/decoder_token_ids (Seq2SeqLM) nor token_ids "
            "(CausalLM): pass GenerationAnalysis(method=your_decode_fn) for this model."
        )
    tokenizer = task_tokenizer(model)
    if tokenizer is None:
        raise GenerationError(
            f"{type(model).__name__} has no preprocessor: its generate function needs the "
            "tokenizer's start, end and padding ids. Attach it (task.preprocessor = "
            "<the task's preprocessor>) for the analysis, or pass "
            "GenerationAnalysis(method=your_decode_fn)."
        )
    if end_id is None:
        end_id = getattr(tokenizer, "end_token_id", None)
    pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
    key = "decoder_token_ids" if seq2seq else "token_ids"
    ids = np.asarray(inputs[key])
    mask = np.asarray(token_mask, dtype=bool)
    n, width = ids.shape
    if mask.shape != ids.shape:
        raise GenerationError(
            f"The labels' counted positions have shape {mask.shape} but {key} has "
            f"{ids.shape}: the labels must be the token ids shifted left, as the task's "
            "preprocessor makes them."
        )
    if prompt_length is not None:
        prompts = np.full(n, int(prompt_length))
    else:
        first = np.where(mask.any(axis=1), np.argmax(mask, axis=1), 0)
        prompts = np.maximum(_start_tokens(model, seq2seq), first + 1)
    prompts = np.clip(prompts, 1, width)
    total = width if max_length is None else int(prompts.max()) + int(max_length)
    positions = np.arange(total)[None, :]
    buffer = np.full((n, total), pad_id, ids.dtype)
    buffer[:, : min(width, total)] = ids[:, :total]
    prompt_mask = positions < prompts[:, None]
    feed = {
        key: np.where(prompt_mask, buffer, pad_id).astype(ids.dtype),
        key.replace("token_ids", "padding_mask"): prompt_mask,
    }
    if seq2seq:
        source = np.asarray(inputs["encoder_token_ids"])
        feed["encoder_token_ids"] = source
        feed["encoder_padding_mask"] = _valid_mask(source, pad_id)
    out_ids, out_mask = _run(model, feed, key, end_id, batch_size)
    generated = np.full((n, total), pad_id, np.int32)
    lengths = np.zeros(n, np.int32)
    for i in range(n):
        row = out_ids[i, prompts[i] :][out_mask[i, prompts[i] :]]
        stops = np.flatnonzero(row == end_id) if end_id is not None else []
        lengths[i] = stops[0] if len(stops) else len(row)
        generated[i, : len(row)] = row
    reference = mask & (np.arange(width)[None, :] >= prompts[:, None] - 1)
    return Generated(generated, lengths, None, end_id, key), reference


def _run(
    model: Any, feed: Mapping[str, np.ndarray], key: str, end_id: int | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The task's compiled generate function over ``feed``, batch by batch."""
    sampler = type(getattr(model, "sampler", None)).__name__
    if sampler not in ("GreedySampler", "BeamSampler", "ContrastiveSampler", "NoneType"):
        warnings.warn(
            f"{type(model).__name__} generates with {sampler}, which samples at random: the "
            "generated outputs change from call to call and do not compare across epochs. "
            'Compile the task with sampler="greedy" (or "beam") for the analysis.',
            RuntimeWarning,
            stacklevel=4,
        )
    function = model.make_generate_function()
    stop = None if end_id is None else (int(end_id),)
    n = len(feed[key])
    size = max(1, min(batch_size, n))
    ids, masks = [], []
    for start in range(0, n, size):
        stop_row = min(start + size, n)
        batch = {}
        for name, value in feed.items():
            part = value[start:stop_row]
            if stop_row - start < size:  # one shape for every call: one compilation
                fill = np.repeat(part[-1:], size - (stop_row - start), axis=0)
                part = np.concatenate([part, fill])
            batch[name] = part
        out = function(batch, stop_token_ids=stop)
        ids.append(np.asarray(out[key])[: stop_row - start])
        masks.append(np.asarray(out[key.replace("token_ids", "padding_mask")])[: stop_row - start])
    return np.concatenate(ids).astype(np.int64), np.concatenate(masks).astype(bool)


def tokenizer_text(tokenizer: Any, sequences: Sequence[Sequence[int]]) -> list[str]:
    """Texts of id sequences through a keras-hub tokenizer, as ``generate()`` returns them.

    Special tokens (start, end, padding) are left out, as the task's
    ``generate_postprocess`` does.
    """
    special = set(int(i) for i in getattr(tokenizer, "special_token_ids", None) or ())
    rows = [[int(i) for i in row if int(i) not in special] for row in sequences]
    texts = []
    for row in rows:  # one call per row: a ragged batch of empty rows confuses detokenize
        if not row:
            texts.append("")
            continue
        text = tokenizer.detokenize([row])
        text = np.asarray(text).reshape(-1)[0]
        texts.append(text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))
    return texts
