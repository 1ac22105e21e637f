"""The data the pass reads: the analysed output, its labels and weights, and input checks.

- which output: ``output=`` checked against the model's outputs, and the labels and sample
  weights of that output picked from any form ``fit`` accepts (one array, a dict by output
  name, a list or tuple in the model's output order);
- data the pass cannot read (unbatched datasets, ragged or sparse tensors, rows of
  different lengths, generators, text given to a numeric input): a clear error naming the
  fix, read from shapes and dtypes only;
- sample weights that are NaN, negative or infinite: counted in the compiled step, refused
  at the end of the pass with the count.

Private: used by :mod:`keras_erranalysis.compute._pass` and ``compute_losses``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

# -- which output, and its labels and weights ------------------------------------------


def output_names(model: Any) -> list[str]:
    """The model's output names in Keras' order (the order of list labels), or []."""
    return [str(name) for name in (getattr(model, "output_names", None) or [])]


def _output_count(model: Any) -> int | None:
    """How many outputs the model has (None: not known before it is called)."""
    names = output_names(model)
    if names:
        return len(names)
    symbolic = _symbolic(model, "outputs")
    return len(symbolic) if isinstance(symbolic, (list, tuple)) else None


def _symbolic(model: Any, name: str) -> Any:
    """``model.<name>`` (``input``, ``output``, ``outputs``), or None when it has none.

    Subclassed models, and Sequential models never called, have no symbolic tensors.
    """
    try:
        return getattr(model, name)
    except Exception:  # noqa: BLE001 - only used for checks: no tensor means no check
        return None


def check_output(model: Any, output: Any) -> str | int | None:
    """``output`` checked against the model's outputs (a negative index made positive).

    Raises:
        ValueError: When ``output`` names no output or its index is out of range; the
            message lists the outputs there are.
    """
    if output is None:
        return None
    names = output_names(model)
    choose = f"pass output= one of {names} or an index 0..{len(names) - 1}" if names else ""
    if isinstance(output, np.integer):
        output = int(output)
    if isinstance(output, bool) or not isinstance(output, (int, str)):
        raise TypeError(
            f"output must be an output name or index, got {type(output).__name__} "
            f"{output!r}" + (f": {choose}." if choose else ".")
        )
    if not names:
        return output
    if isinstance(output, str):
        if output not in names:
            raise ValueError(
                f"No output named {output!r}: the model's outputs are {names}; {choose}."
            )
        return output
    if not -len(names) <= output < len(names):
        count = f"{len(names)} output" + ("s" if len(names) > 1 else "")
        raise ValueError(
            f"output={output} is out of range: the model has {count} {names}; {choose}."
        )
    return output % len(names)


def select_output(outputs: Any, output: str | int | None, model: Any) -> Any:
    """Picks the analysed output out of a model's outputs."""
    if isinstance(outputs, Mapping):
        keys = list(outputs)
        if output is None:
            if len(keys) == 1:
                return outputs[keys[0]]
            raise ValueError(f"The model has several outputs {keys}: pass output=NAME.")
        key = output
        if isinstance(output, int):  # Keras' output order (names sorted for a dict)
            order = [n for n in output_names(model) if n in outputs] or sorted(keys)
            if not -len(order) <= output < len(order):
                raise ValueError(
                    f"output={output} is out of range: the model has {len(order)} outputs "
                    f"{order}; pass output= one of these names or an index."
                )
            key = order[output]
        if key not in outputs:
            raise ValueError(f"No output named {output!r}; outputs are {keys}.")
        return outputs[key]
    if isinstance(outputs, (list, tuple)):
        names = list(getattr(model, "output_names", None) or [])
        if output is None:
            if len(outputs) == 1:
                return outputs[0]
            raise ValueError(
                f"The model has {len(outputs)} outputs {names}: pass output=NAME or an index."
            )
        if isinstance(output, str):
            if output not in names:
                raise ValueError(f"No output named {output!r}; outputs are {names}.")
            return outputs[names.index(output)]
        if not -len(outputs) <= output < len(outputs):
            raise ValueError(
                f"output={output} is out of range: the model has {len(outputs)} outputs "
                f"{names}; pass output= one of these names or an index."
            )
        return outputs[output]
    if output not in (None, 0) and output != (getattr(model, "output_names", None) or [None])[0]:
        raise ValueError(f"The model has a single output; output={output!r} does not name it.")
    return outputs


def select_labels(y: Any, output: str | int | None, model: Any) -> Any:
    """The labels of the analysed output, from labels in any form ``fit`` accepts.

    ``y`` may be one array or tensor, a dict keyed by output name, or a list / tuple with
    one entry per output in the model's output order.
    """
    return _for_output(y, output, model, what="labels", required=True)


def select_weights(sample_weight: Any, output: str | int | None, model: Any) -> Any:
    """The sample weights of the analysed output (None: unweighted).

    Like :func:`select_labels`; one array weights every output, as in ``fit``, and a dict
    without the output's key leaves it unweighted.
    """
    return _for_output(sample_weight, output, model, what="sample_weight", required=False)


def _for_output(value: Any, output: Any, model: Any, *, what: str, required: bool) -> Any:
    if value is None:
        return None
    names = output_names(model)
    if isinstance(value, Mapping):
        keys = list(value)
        if output is None and len(keys) == 1:
            return value[keys[0]]
        key = names[output] if isinstance(output, int) and output < len(names) else output
        if isinstance(output, int) and not names:
            ordered = sorted(keys)  # Keras flattens a dict in key order
            key = ordered[output] if output < len(ordered) else output
        if key in value:
            return value[key]
        if output is None:
            single = names[0] if len(names) == 1 else None
            if single in value:
                return value[single]
            raise ValueError(
                f"The {what} are a dict with keys {keys} for several outputs: pass "
                f"output=NAME to choose the one to analyse (the model's outputs are "
                f"{names or keys})."
            )
        if len(keys) == 1 and len(names) <= 1:
            return value[keys[0]]  # one output: whatever its key
        if not required:
            return None
        raise ValueError(
            f"The {what} have no entry for output {output!r}: their keys are {keys}. Key "
            f"them by the model's output names {names}, as fit does."
            if names
            else f"The {what} have no entry for output {output!r}: their keys are {keys}."
        )
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return value[0]
        if _output_count(model) == 1:
            raise ValueError(
                f"The {what} are a {type(value).__name__} of {len(value)} entries, but the "
                f"model has one output: pass its {what} as one array."
            )
        if output is None:
            raise ValueError(
                f"The {what} are a {type(value).__name__} of {len(value)} entries, one per "
                f"output: pass output=NAME or an index to choose the one to analyse"
                + (f" (the model's outputs are {names})." if names else ".")
            )
        index = names.index(output) if isinstance(output, str) and output in names else output
        if not isinstance(index, int):
            raise ValueError(
                f"The {what} are a {type(value).__name__} in output order, but the model "
                f"names no output {output!r}: pass output= as an index."
            )
        if index >= len(value):
            raise ValueError(
                f"The {what} have {len(value)} entries but output {output!r} is the "
                f"model's output number {index} (0-based) of {names}: give one entry per "
                "output, in the model's output order."
            )
        return value[index]
    return value


# -- data the pass cannot read --------------------------------------------------------


def reader_message(data: Any) -> str:
    """What to do with data the pass cannot read: generators, Keras PyDataset, loaders."""
    kind = type(data).__name__
    signature = (
        "output_signature=(tf.TensorSpec((None, ...), tf.float32), tf.TensorSpec((None,), "
        "tf.int64))"
    )
    if inspect.isgenerator(data) or callable(data) and not hasattr(data, "__len__"):
        what = "generator" if inspect.isgenerator(data) else "function"
        once = (
            "it can be read only once, while the analysis reads the data every epoch, and "
            if what == "generator"
            else ""
        )
        return (
            f"Cannot read a Python {what}: {once}the pass needs the shapes and dtypes of "
            "its batches. Wrap the function that makes the batches: "
            f"tf.data.Dataset.from_generator(make_batches, {signature}), and pass that dataset."
        )
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # keras PyDataset, Sequence
        return (
            f"Cannot read a {kind} (a Keras PyDataset / Sequence): pass a tf.data.Dataset of "
            "the same batches, e.g. tf.data.Dataset.from_generator(lambda: (data[i] for i in "
            f"range(len(data))), {signature}), or a tuple (x, y[, sample_weight]) of arrays."
        )
    return (
        f"Cannot read data of type {kind}: pass a batched tf.data.Dataset or a tuple "
        "(x, y[, sample_weight]) of numpy arrays."
    )


def check_part(part: Any, name: str) -> None:
    """Clear errors for parts numpy cannot hold as rectangular arrays."""
    if part is None:
        return
    leaves = (
        list(part.items())
        if isinstance(part, Mapping)
        else list(enumerate(part))
        if isinstance(part, (list, tuple)) and any(_composite(p) for p in part)
        else [(None, part)]
    )
    for key, leaf in leaves:
        where = name if key is None else f"{name}[{key!r}]"
        if isinstance(leaf, tf.RaggedTensor):
            raise ValueError(
                f"{where} is a tf.RaggedTensor (rows of different lengths), but the pass needs "
                f"rectangular batches. Pad it: {where}.to_tensor() pads with 0 (then mask the "
                "padding, e.g. ignore_class=0 or mask_zero=True), or pass "
                "tf.data.Dataset.from_tensor_slices(...).padded_batch(n) instead."
            )
        if isinstance(leaf, tf.SparseTensor):
            raise ValueError(
                f"{where} is a tf.SparseTensor, but the pass takes dense batches: pass "
                f"tf.sparse.to_dense({where}), or a tf.data.Dataset that densifies each batch."
            )
        if inspect.isgenerator(leaf) or isinstance(leaf, tf.data.Dataset):
            raise TypeError(
                f"{where} is a {type(leaf).__name__}: in a tuple (x, y[, sample_weight]) each "
                "part must be an array. Pass a tf.data.Dataset that yields (x, y) batches "
                "instead of the tuple."
            )


def _composite(value: Any) -> bool:
    return isinstance(value, (tf.RaggedTensor, tf.SparseTensor))


def as_array(value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError as error:
        if "inhomogeneous" not in str(error):
            raise
        raise ValueError(
            "The data holds rows of different lengths, which make no rectangular array. Pad "
            "them to one length: keras.utils.pad_sequences(rows, padding='post') (then mask "
            "the padding, e.g. ignore_class=0 or mask_zero=True), or pass a tf.data.Dataset "
            "built with padded_batch(n)."
        ) from None


def check_dataset(dataset: tf.data.Dataset, model: Any, output: str | int | None) -> None:
    """Clear errors for datasets the pass cannot read: unbatched, ragged or sparse batches.

    Read from ``element_spec`` only: no element is read.
    """
    spec = dataset.element_spec
    parts = spec if isinstance(spec, tuple) else (spec,)
    for index, part in enumerate(parts[:3]):
        name = ("x", "y", "sample_weight")[index]
        flat = tf.nest.flatten(part, expand_composites=False)
        paths = _paths(part, name)
        for path, leaf in zip(paths, flat):
            if isinstance(leaf, tf.RaggedTensorSpec):
                raise ValueError(
                    f"The dataset yields {path} as a tf.RaggedTensor (rows of different "
                    "lengths), but the pass needs rectangular batches. Pad them: build the "
                    "batches with padded_batch(n) instead of batch / ragged_batch, or map "
                    "each batch through .to_tensor() (then mask the padding, e.g. "
                    "ignore_class=0 or mask_zero=True)."
                )
            if isinstance(leaf, tf.SparseTensorSpec):
                raise ValueError(
                    f"The dataset yields {path} as a tf.SparseTensor, but the pass takes "
                    "dense batches: map each batch through tf.sparse.to_dense."
                )
    if len(parts) < 2:
        return
    x_spec, y_spec = parts[0], parts[1]
    try:
        labels = select_labels(y_spec, output, model)
    except ValueError:
        labels = None  # the probe names the problem with the labels
    pairs = _input_pairs(x_spec, model)
    outputs = _symbolic(model, "output")
    if outputs is None:
        outputs = _symbolic(model, "outputs")
    try:
        out_rank = None if outputs is None else _rank(select_output(outputs, output, model))
    except ValueError:  # the probe names a wrong output
        out_rank = None
    label_rank = _rank(labels)
    # Batched labels have at least the output's rank minus its class axis.
    unbatched = label_rank is not None and label_rank <= max((out_rank or 2) - 2, 0)
    # Inputs of one example: the model's input shape without its batch axis, exactly.
    unbatched |= bool(pairs) and all(_one_example(spec, wanted) for _, spec, wanted in pairs)
    if unbatched:
        shapes = ", ".join(
            f"{path} of shape {tuple(leaf.shape)}"
            for path, leaf in zip(_paths(x_spec, "x"), tf.nest.flatten(x_spec))
        )
        label_shape = "" if labels is None else f", labels of shape {tuple(labels.shape)}"
        raise ValueError(
            f"The dataset yields single examples ({shapes}{label_shape}), not batches: call "
            ".batch(n) on it, e.g. dataset.batch(32) (padded_batch(32) for sequences of "
            "different lengths)."
        )
    check_input_dtypes(pairs)


def _one_example(spec: Any, wanted: Any) -> bool:
    """Whether ``spec`` has exactly the shape of one example of the model input ``wanted``."""
    given, model_shape = tf.TensorShape(spec.shape), tf.TensorShape(wanted.shape)
    if given.rank is None or model_shape.rank is None or given.rank != model_shape.rank - 1:
        return False
    return given.rank > 0 and given[0] is not None and given.is_compatible_with(model_shape[1:])


def _rank(value: Any) -> int | None:
    """The rank of a tensor, spec or Keras tensor (whose shape is a tuple); None: unknown."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return tf.TensorShape(shape).rank


def check_input_dtypes(pairs: list[tuple[str, Any, Any]]) -> None:
    """Refuses text given to a numeric model input, naming the input and the fix."""
    for path, spec, wanted in pairs:
        given = tf.as_dtype(spec.dtype)
        want = tf.as_dtype(wanted.dtype)
        if given == tf.string and want != tf.string:
            raise ValueError(
                f"{path} holds strings, but the model's input{_input_name(wanted)} takes "
                f"{want.name}: turn the text into numbers first (a TextVectorization or "
                "StringLookup layer, in the model or in dataset.map), or give the model a "
                "string input (keras.Input(shape=(), dtype='string'))."
            )


def _input_name(tensor: Any) -> str:
    name = str(getattr(tensor, "name", "") or "")
    return "" if not name or name.startswith("keras_tensor") else f" {name!r}"


def input_pairs_of_arrays(x: Any, model: Any) -> list[tuple[str, Any, Any]]:
    """``(path, spec, model input)`` for in-memory inputs ``x`` (see :func:`_input_pairs`)."""

    def spec(array: np.ndarray) -> tf.TensorSpec:
        dtype = tf.string if array.dtype.kind in "USO" else tf.as_dtype(array.dtype)
        return tf.TensorSpec(array.shape, dtype)

    return _input_pairs(tf.nest.map_structure(spec, x), model)


def _input_pairs(x_spec: Any, model: Any) -> list[tuple[str, Any, Any]]:
    """The data's input specs next to the model's inputs, where the structures match."""
    inputs = _symbolic(model, "input")
    if inputs is None:
        inputs = _symbolic(model, "inputs")
    if inputs is None:  # a subclassed model has no symbolic inputs
        return []
    if isinstance(x_spec, Mapping) and isinstance(inputs, Mapping):
        return [(f"x[{k!r}]", x_spec[k], inputs[k]) for k in inputs if k in x_spec]
    if isinstance(x_spec, (list, tuple)) and isinstance(inputs, (list, tuple)):
        if len(x_spec) != len(inputs):
            return []
        return [(f"x[{i}]", s, w) for i, (s, w) in enumerate(zip(x_spec, inputs))]
    if isinstance(x_spec, tf.TensorSpec) and not isinstance(inputs, (Mapping, list, tuple)):
        return [("x", x_spec, inputs)]
    if isinstance(x_spec, tf.TensorSpec) and isinstance(inputs, (list, tuple)):
        return [("x", x_spec, inputs[0])] if len(inputs) == 1 else []
    return []


def _paths(structure: Any, name: str) -> list[str]:
    """A readable path (``x['ids']``, ``y[1]``) per leaf of ``structure``, in flatten order."""
    if isinstance(structure, Mapping):
        return [p for k in sorted(structure) for p in _paths(structure[k], f"{name}[{k!r}]")]
    if isinstance(structure, (list, tuple)):
        return [p for i, v in enumerate(structure) for p in _paths(v, f"{name}[{i}]")]
    return [name]


# -- sample weights -------------------------------------------------------------------


#: Bits of :func:`weight_problems`, and how :func:`check_weights` names them.
WEIGHT_PROBLEMS = {1: "NaN", 2: "a negative weight", 4: "an infinite weight"}


def weight_problems(sample_weight: Any) -> tf.Tensor:
    """Per example, the bits of :data:`WEIGHT_PROBLEMS` its weights have (0: none)."""
    weight = tf.cast(sample_weight, tf.float32)
    weight = tf.reshape(weight, tf.stack([tf.shape(weight)[0], -1]))
    found = tf.zeros(tf.shape(weight)[:1], tf.int32)
    for bit, bad in (
        (1, tf.math.is_nan(weight)),
        (2, weight < 0.0),
        (4, weight == math.inf),
    ):
        found += bit * tf.cast(tf.reduce_any(bad, axis=1), tf.int32)
    return found


def check_weights(counts: Mapping[int, int], n: int) -> None:
    """Raises when some sample weights are NaN, negative or infinite.

    The pass would count such a token as weight 0 (NaN and negative ones) or make its
    loss infinite, while Keras multiplies the loss by the weight: the numbers would
    silently differ from training's. Args: ``counts``, examples per bit of
    :data:`WEIGHT_PROBLEMS`; ``n``, the examples read.
    """
    found = [(count, WEIGHT_PROBLEMS[bit]) for bit, count in sorted(counts.items()) if count]
    if not found:
        return
    listed = ", ".join(f"{count} with {what}" for count, what in found)
    total = sum(count for count, _ in found)
    raise ValueError(
        f"sample_weight is not a finite number >= 0 for some of the {n} examples ({listed}"
        f"{'; an example may count twice' if len(found) > 1 else ''}). A weight multiplies "
        "the example's loss: NaN spreads, a negative weight rewards the error, and the "
        f"analysis would count {'them' if total > 1 else 'it'} differently from training. "
        "Fix the weights, e.g. np.nan_to_num(w, nan=0.0, posinf=0.0) and np.clip(w, 0, "
        "None), or drop those examples."
    )
