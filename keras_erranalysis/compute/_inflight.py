"""In-flight recording: per-example losses and margins of the training data, for free.

The training step already computes the model's output for every training example. The
:class:`InFlightRecorder` callback reads that output while ``fit`` runs and scatters
per-example loss, probability of the given label, margin, prediction and correctness into
``tf.Variable`` buffers of size N, indexed by example id. At the end of each epoch the buffers
are copied to the host. There is no extra forward pass, and the gradients are untouched: the
recorded values are computed from ``tf.stop_gradient(y_pred)`` and never reach the loss.

What a step costs: with Keras' sparse categorical cross-entropy (from logits, or from a
softmax layer), the training step's own fused cross-entropy already holds the unreduced loss
and the softmax (as ``softmax - one_hot(label)``, for the gradient). The recorder reads them
from the traced step instead of taking the softmax and the loss again, and one argmax finds
the best other class. A classifier's step then only scatters those scores; the loss pass's
maths (``per_example``, the same function) turns them into the columns once per epoch. Other
losses take the pass's maths in the step.

Example ids travel with the batch, so shuffling is fine. Give them either way:

- as the last element of each batch: ``(x, y, ids)`` or ``(x, y, sample_weight, ids)``
  (ids an integer tensor of shape ``(batch,)``, values in ``[0, num_examples)``);
  :func:`with_example_ids` builds such a dataset from arrays;
- or inside ``x`` when it is a dict: ``({"pixels": ..., "example_id": ...}, y)``
  (the key is ``id_key``).

The recorder strips the ids before Keras' own ``train_step`` / ``test_step`` see the batch,
so the same dataset layout also works for ``validation_data``.

How: on ``on_train_begin`` the recorder replaces, on this model instance only,
``train_step`` (to take the ids off the batch), ``test_step`` (same) and ``compute_loss``
(to record from ``y`` and ``y_pred``), and rebuilds the train/test functions; on
``on_train_end`` (or :meth:`InFlightRecorder.restore`) it puts the originals back.

What the values mean: each example's values come from the forward pass of the step that
trained on it, so they are in training mode (dropout on) and taken with the weights of that
step, not those at the end of the epoch. They are the "training dynamics" of the
cartography and AUM papers; for exact end-of-epoch values use the callback's passes
(``compute_losses``).

The buffers start each epoch at zero and every step *adds* its rows (``scatter_add``), with
a count of sightings. Under a ``tf.distribute`` strategy (tested: ``MirroredStrategy``) they
are mirrored variables with ``SUM`` aggregation and each replica adds the rows of its own
share of the batch: the strategy sums the replicas' sparse updates, so every example's row
holds exactly the values its replica computed, and a step sends the batch's rows, never the
buffer. The recorded values equal a single-device ``fit`` of the same data order to float
rounding (the weights themselves differ by the all-reduce's rounding). An example trained
on more than once in one epoch keeps the mean of its float values, ``correct`` when right at
least half the times, and ``prediction`` -1. (``fit`` itself fails under
``MultiWorkerMirroredStrategy`` in Keras 3, see the README.)

Limits: one analysed output (``output=`` for multi-output models); for sequence outputs the
per-sequence summaries are recorded (``loss`` = mean over counted tokens, ``true_prob`` and
``margin`` of the weakest counted token, ``sequence_prob`` the per-token probability of the
whole label sequence, ``correct`` exact match), not the per-token arrays.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_erranalysis.compute import _inputs, _pass

#: Per-example columns recorded each epoch.
RECORDED = ("loss", "true_prob", "margin", "sequence_prob", "correct", "prediction", "seen")

_PATCHED = ("train_step", "test_step", "compute_loss")


def with_example_ids(
    x: Any,
    y: Any,
    *,
    sample_weight: Any = None,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Builds a batched dataset yielding ``(x, y, ids)`` (or ``(x, y, sample_weight, ids)``).

    ``ids`` are the example positions ``0..N-1`` in the given arrays, so the recorder's
    columns line up with ``x`` and ``y``. Shuffling is reshuffled every epoch.

    Fit this dataset only with an :class:`InFlightRecorder` attached: without it, Keras
    reads a third batch element as ``sample_weight`` and would weight each example's loss
    by its id. Use ``dataset.map(lambda *b: b[:-1])`` for a plain fit of the same data.

    Args:
        x: Inputs: an array, or a dict / tuple of arrays with the same first dimension.
        y: Labels with the same first dimension.
        sample_weight: Optional per-example (or per-token) weights.
        batch_size: Batch size.
        shuffle: Shuffle the examples every epoch (ids travel with them).
        seed: Shuffle seed, for reproducible runs.

    Returns:
        A ``tf.data.Dataset`` for ``model.fit`` with an :class:`InFlightRecorder`.

    Example:
        >>> ds = with_example_ids(np.zeros((10, 3)), np.arange(10), batch_size=4)  # doctest: +SKIP
        >>> recorder = InFlightRecorder(10)  # doctest: +SKIP
        >>> model.fit(ds, epochs=3, callbacks=[recorder])  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    leaves = tf.nest.flatten(x)
    if not leaves:
        raise ValueError("x holds no arrays.")
    num_examples = int(np.shape(leaves[0])[0])
    if num_examples == 0:
        raise ValueError("x holds no examples.")
    ids = np.arange(num_examples, dtype=np.int64)
    parts = (x, y, ids) if sample_weight is None else (x, y, sample_weight, ids)
    for part in parts[1:]:
        for leaf in tf.nest.flatten(part):
            if int(np.shape(leaf)[0]) != num_examples:
                raise ValueError(
                    f"x has {num_examples} examples but y or sample_weight has "
                    f"{int(np.shape(leaf)[0])}: they must have the same length."
                )
    dataset = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        dataset = dataset.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size)


class InFlightRecorder(keras.callbacks.Callback):
    """Records per-example training losses and margins from ``fit``'s own forward pass.

    Args:
        num_examples: N, the number of training examples; ids must lie in ``[0, N)``.
        id_key: Key of the ids in ``x`` when ``x`` is a dict (else ids are the last batch
            element, see the module docstring).
        loss: The per-example loss to record. Defaults to the model's compiled loss, made
            unreduced (as ``compute_losses`` does).
        output: Output to analyse in a multi-output model (name or index).
        from_logits: Whether the output is logits. Default: the loss's own setting, or
            decided per batch from whether the rows look like probabilities.
        ignore_class: Label that does not count in sequence outputs (e.g. ``-100``).
        dtype: Host storage dtype of the float columns, ``"float32"`` or ``"float16"``.

    Attributes:
        epochs: Recorded epoch numbers (1-based, as Keras prints them).

    Example:
        >>> ds = with_example_ids(x_train, y_train, batch_size=64, seed=0)  # doctest: +SKIP
        >>> recorder = InFlightRecorder(len(x_train))  # doctest: +SKIP
        >>> model.fit(ds, epochs=10, callbacks=[recorder])  # doctest: +SKIP
        >>> recorder.likely_mislabeled(k=20)  # doctest: +SKIP
    """

    def __init__(
        self,
        num_examples: int,
        *,
        id_key: str = "example_id",
        loss: Any = None,
        output: str | int | None = None,
        from_logits: bool | None = None,
        ignore_class: int | None = None,
        dtype: str = "float32",
    ):
        super().__init__()
        if int(num_examples) < 1:
            raise ValueError(f"num_examples must be at least 1, got {num_examples}.")
        if np.dtype(dtype) not in (np.dtype("float32"), np.dtype("float16")):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
        self.num_examples = int(num_examples)
        self.id_key = id_key
        self.loss = loss
        self.output = output
        self.from_logits = from_logits
        self.ignore_class = ignore_class
        self.dtype = np.dtype(dtype)
        self.epochs: list[int] = []
        self._history: dict[str, list[np.ndarray]] = {name: [] for name in RECORDED}
        self._floats: tf.Variable | None = None
        self._ints: tf.Variable | None = None
        # Replicas of a MirroredStrategy trace their steps in their own threads: each one
        # keeps its batch's ids here between train_step and compute_loss.
        self._pending = threading.local()
        self._strategy: Any = None
        self._labels = np.full(self.num_examples, -1, np.int64)
        self._originals: dict[str, Any] = {}
        self._spec: Any = None
        self._patched_model: Any = None
        self._probe: Any = None  # learned when the training step is traced

    # -- Keras callback hooks --------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Resolves the loss, creates the buffers and patches the model's steps."""
        model = self.model
        strategy = _pass.model_strategy(model)
        self._spec = _pass.resolve_loss(
            model,
            self.loss,
            self.output,
            ignore_class=self.ignore_class,
            from_logits=self.from_logits,
        )
        if self._floats is None or strategy is not self._strategy:
            # Two packed buffers keep the per-step cost at two scatters. The last row takes
            # out-of-range ids, so a bad id is detected at epoch end instead of crashing
            # (CPU) or being silently dropped (GPU).
            self._strategy = strategy
            size = self.num_examples + 1
            options = {"trainable": False, "aggregation": tf.VariableAggregation.SUM}
            with strategy.scope():
                self._floats = tf.Variable(
                    tf.zeros([size, len(_FLOAT_COLUMNS)]), name="inflight_floats", **options
                )
                self._ints = tf.Variable(
                    tf.zeros([size, len(_INT_COLUMNS)], tf.int32), name="inflight_ints", **options
                )
        self._patch(model)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Zeroes the buffers: steps add their rows (sums of one value and zeros are exact)."""
        size = self.num_examples + 1
        self._floats.assign(tf.zeros([size, len(_FLOAT_COLUMNS)]))
        self._ints.assign(tf.zeros([size, len(_INT_COLUMNS)], tf.int32))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Copies the buffers to the host."""
        n = self.num_examples
        ints = self._ints.numpy()
        if ints[n, 2]:
            self.restore()
            raise ValueError(
                f"Example ids in epoch {epoch + 1} were outside [0, {n}): ids must be "
                "positions 0..num_examples-1. Build the dataset with with_example_ids(x, y), "
                "or pass the right num_examples to InFlightRecorder."
            )
        floats = self._floats.numpy()[:n]
        floats, prediction, correct, seen, label = _from_sums(
            floats, *(ints[:n, i].astype(np.int64) for i in range(len(_INT_COLUMNS)))
        )
        if self._probe is not None and not self._probe.sequence:
            floats, prediction, correct = self._finish(floats, prediction, correct, seen, label)
        np.maximum(self._labels, label, out=self._labels)
        for i, name in enumerate(_FLOAT_COLUMNS):
            self._history[name].append(floats[:, i].astype(self.dtype))
        self._history["prediction"].append(prediction)
        self._history["correct"].append(correct.astype(bool))
        self._history["seen"].append(seen.astype(bool))
        self.epochs.append(int(epoch) + 1)

    def _finish(
        self,
        scores: np.ndarray,
        prediction: np.ndarray,
        correct: np.ndarray,
        seen: np.ndarray,
        label: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Columns of a classifier's epoch from the scores its steps recorded.

        The steps recorded the class axis summed up (loss, the label's probability, the
        best other class's probability and id); the rest of the loss pass's maths, the same
        function, runs here once for all N examples instead of once a step. An example
        trained on more than once keeps the mean scores, prediction -1 and ``correct``
        from its count of right answers (see :func:`_from_sums`).
        """
        values = _pass.per_example(
            None,
            tf.constant(label),
            None,
            self._spec,
            dataclasses.replace(self._probe, kind="sparse"),  # recorded labels are class ids
            scores=(
                tf.constant(scores[:, 0]),
                tf.constant(scores[:, 1]),
                tf.constant(scores[:, 2]),
                tf.constant(prediction.astype(np.int32)),
            ),
        )
        once = seen == 1
        true_prob = values["true_prob"].numpy()
        floats = np.stack(
            [values["loss_sum"].numpy(), true_prob, values["margin"].numpy(), true_prob], axis=1
        )
        floats[seen == 0] = np.nan  # never trained on (whatever ignore_class says of -1)
        prediction = np.where(once, values["prediction"].numpy(), prediction)
        correct = np.where(once, values["correct"].numpy(), correct)
        return floats, prediction, correct

    def on_train_end(self, logs: dict | None = None) -> None:
        """Puts the model's own steps back."""
        self.restore()

    # -- results ---------------------------------------------------------------------------

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Recorded columns, each ``(E, N)``, keyed as in :data:`RECORDED`.

        Examples not seen in an epoch (e.g. with ``steps_per_epoch`` shorter than the data)
        have NaN floats, ``correct=False``, ``prediction=-1`` and ``seen=False``.
        """
        return {name: self.stack(name) for name in RECORDED}

    @property
    def labels(self) -> np.ndarray:
        """The given label of each example, read from the training batches, ``(N,)``.

        -1 for examples never seen, and for sequence outputs (which have no single label).
        """
        return self._labels.copy()

    def stack(self, column: str) -> np.ndarray:
        """One recorded column as an ``(E, N)`` array."""
        if column not in self._history:
            raise KeyError(f"No column {column!r}; recorded columns are {list(RECORDED)}.")
        rows = self._history[column]
        if not rows:
            raise ValueError(
                "Nothing recorded yet: pass the recorder to model.fit(..., callbacks=[recorder]) "
                "and train for at least one epoch."
            )
        return np.stack(rows)

    def dynamics(self, **kwargs: Any) -> Any:
        """Per-example dynamics of the recorded epochs (see ``compute_dynamics``).

        The given labels recorded in the training step fill the ``label`` column (classifier
        outputs; -1 for an example never seen), unless ``label=`` is passed.
        """
        if not self.epochs:
            self.stack("loss")  # raises the "nothing recorded" error
        if "label" not in kwargs:
            kwargs["label"] = None if (self._labels < 0).all() else self._labels.copy()
        from keras_erranalysis.analysis._dynamics import compute_dynamics

        if self._probe is not None and self._probe.sequence:
            kwargs.setdefault("sequence_prob", self._history["sequence_prob"])
        return compute_dynamics(
            self._history["true_prob"],
            self._history["margin"],
            self._history["correct"],
            loss=self._history["loss"],
            prediction=self._history["prediction"],
            epochs=self.epochs,
            **kwargs,
        )

    def likely_mislabeled(self, k: int | None = None, **kwargs: Any) -> Any:
        """Ranked likely label errors of the training data (see ``likely_mislabeled``)."""
        from keras_erranalysis.analysis._mislabeled import likely_mislabeled

        return likely_mislabeled(self.dynamics(), k, **kwargs)

    # -- patching --------------------------------------------------------------------------

    def _patch(self, model: Any) -> None:
        if self._patched_model is not None:
            self.restore()
        # A fit that raised or was interrupted never reached on_train_end: undo its patch.
        for name in _PATCHED:
            previous = getattr(getattr(model, name, None), "_erranalysis_recorder", None)
            if previous is not None:
                previous.restore()
        self._originals = {
            name: (model.__dict__.get(name, _MISSING), getattr(model, name)) for name in _PATCHED
        }
        original_train = self._originals["train_step"][1]
        original_test = self._originals["test_step"][1]
        original_loss = self._originals["compute_loss"][1]
        loss_has_training = "training" in _pass._parameters(original_loss)

        def train_step(data):
            try:
                data, ids = self._split_ids(data)
                self._pending.ids = ids
                return original_train(data)
            except Exception:
                # Raised while tracing: fit stops without on_train_end, so restore here.
                self.restore()
                raise
            finally:
                self._pending.ids = None

        def test_step(data):
            data, _ = self._split_ids(data, required=False)
            return original_test(data)

        def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
            if loss_has_training:
                value = original_loss(x, y, y_pred, sample_weight, training=training)
            else:
                value = original_loss(x, y, y_pred, sample_weight)
            ids = getattr(self._pending, "ids", None)
            if training and ids is not None:
                self._record(ids, y, y_pred, sample_weight)
            return value

        for name, fn in (
            ("train_step", train_step),
            ("test_step", test_step),
            ("compute_loss", compute_loss),
        ):
            fn._erranalysis_recorder = self
            object.__setattr__(model, name, fn)
        self._patched_model = model
        # Keras built the train function before on_train_begin, from the original step.
        model.make_train_function(force=True)
        model.test_function = None

    def restore(self) -> None:
        """Puts back the model's own ``train_step``, ``test_step`` and ``compute_loss``.

        Called by ``on_train_end``; call it yourself if ``fit`` was interrupted.
        """
        model = self._patched_model
        if model is None:
            return
        for name, (own, _) in self._originals.items():
            if own is _MISSING:
                model.__dict__.pop(name, None)
            else:
                object.__setattr__(model, name, own)
        model.train_function = None
        model.test_function = None
        self._patched_model = None
        self._originals = {}

    def _per_example(self, out: Any, y: Any, sample_weight: Any) -> dict[str, tf.Tensor]:
        """This batch's values to add to the buffers (inside the traced step).

        The maths is the loss pass's own (:func:`_pass.per_example`), on a probe made from
        static shapes. When the step's loss took a fused sparse softmax cross-entropy of
        this output (Keras' sparse categorical cross-entropy does, from logits or from a
        softmax layer's logits), its loss and softmax are read
        (:func:`_training_softmax_xent`, :func:`_pass.xent_scores`) instead of computed
        again. A classifier's step then records only those scores and whether the label
        came first; :meth:`_finish` turns them into the columns at the epoch's end, so the
        per-step cost is one argmax and a few ops. A sequence's step reduces its tokens
        itself (the per-token scores are not kept).

        The recorded loss is unweighted: sample weights only decide which tokens of a
        sequence count (weight > 0), and are ignored for classifiers, so an example's loss
        reads the same whatever its training weight.

        Returns:
            ``loss, true_prob, margin, prediction, correct, label`` per example; for a
            classifier with the training step's scores, ``margin`` holds the best other
            class's probability and ``prediction`` its id until :meth:`_finish`.
        """
        stopped = tf.stop_gradient(out)  # the recorded values never reach the gradients
        keras_mask = getattr(out, "_keras_mask", None)
        if keras_mask is not None:
            stopped._keras_mask = keras_mask
        spec = self._spec
        probe = _pass.static_probe(stopped, y, spec)
        self._probe = probe
        xent = _training_softmax_xent(out, y, probe)
        scores = None
        if xent is not None:
            scores = _pass.xent_scores(*xent, tf.shape(out)[:-1])
            if not probe.sequence:
                label, _ = _pass.sparse_label(tf.reshape(y, tf.shape(out)[:-1]))
                loss, true_prob, best_other, other_class = scores
                right = _pass.label_first(true_prob, best_other, label, other_class)
                return {
                    "loss": loss,
                    "true_prob": true_prob,
                    "sequence_prob": true_prob,
                    "margin": best_other,
                    "prediction": other_class,
                    "correct": right,
                    "label": label,
                }
        counts = None
        if probe.sequence and sample_weight is not None:
            counts = tf.cast(tf.cast(sample_weight, tf.float32) > 0, tf.float32)
        values = _pass.per_example(stopped, y, counts, spec, probe, scores=scores)
        n_tokens = values["n_tokens"]
        prediction, label = values["prediction"], values["label"]
        margin = values["margin"]
        sequence_prob = values["true_prob"]
        if probe.sequence:
            # A sequence has no single prediction or label; -1 keeps the columns honest.
            prediction = label = tf.fill(tf.shape(n_tokens), -1)
            sequence_prob = _per_token_probability(
                values["token_true_prob"], values["token_mask"], n_tokens
            )
        else:
            # Recorded as scores, finished at the epoch's end like the fast path's.
            margin = values["true_prob"] - margin
        return {
            "loss": values["loss_sum"] / tf.maximum(tf.cast(n_tokens, tf.float32), 1.0),
            "true_prob": values["true_prob"],
            "margin": margin,
            "sequence_prob": sequence_prob,
            "correct": values["correct"],
            "prediction": prediction,
            "label": label,
        }

    def _split_ids(self, data: Any, *, required: bool = True) -> tuple[Any, Any]:
        """Takes the example ids off a batch; returns ``(batch_without_ids, ids)``."""
        if isinstance(data, (tuple, list)) and data and isinstance(data[0], Mapping):
            x = data[0]
            if self.id_key in x:
                rest = {k: v for k, v in x.items() if k != self.id_key}
                if len(rest) == 1 and not _expects_dict(self.model):
                    rest = next(iter(rest.values()))
                return (rest, *data[1:]), x[self.id_key]
        if isinstance(data, (tuple, list)) and len(data) in (3, 4):
            ids = data[-1]
            if tf.nest.is_nested(ids) or not ids.dtype.is_integer:
                if not required:
                    return data, None
                raise ValueError(
                    "InFlightRecorder needs example ids with each batch, as the last element "
                    "(x, y, ids) or (x, y, sample_weight, ids) with integer ids, or in x as "
                    f"x[{self.id_key!r}]. The last element here is "
                    f"{getattr(ids, 'dtype', type(ids).__name__)!s}, which looks like "
                    "sample_weight: add the ids after it, e.g. with with_example_ids(x, y, "
                    "sample_weight=w)."
                )
            return tuple(data[:-1]), ids
        if not required:
            return data, None
        raise ValueError(
            "InFlightRecorder needs example ids with each batch: yield (x, y, ids) or "
            f"(x, y, sample_weight, ids), or put them in x[{self.id_key!r}]; "
            "with_example_ids(x, y) builds such a dataset."
        )

    def _record(self, ids: Any, y: Any, y_pred: Any, sample_weight: Any) -> None:
        """Scatters this batch's per-example values into the buffers (inside the step)."""
        y = _inputs.select_labels(y, self._spec.output, self.model)
        sample_weight = _inputs.select_weights(sample_weight, self._spec.output, self.model)
        out = _pass.select_output(y_pred, self._spec.output, self.model)
        values = self._per_example(out, y, sample_weight)
        # One compare finds negative ids too (they wrap to huge unsigned values).
        ids = tf.reshape(ids, [-1])
        n = self.num_examples
        valid = tf.cast(tf.cast(ids, tf.int64), tf.uint64) < n
        index = tf.where(valid, tf.cast(ids, tf.int64), n)
        floats = tf.stack([values[name] for name in _FLOAT_COLUMNS], axis=1)
        ints = tf.stack(
            [
                values["prediction"],
                tf.cast(values["correct"], tf.int32),
                tf.ones_like(values["label"]),
                values["label"],
            ],
            axis=1,
        )
        # SUM buffers: under a strategy, it adds up the replicas' sparse rows.
        self._floats.scatter_add(tf.IndexedSlices(floats, index))
        self._ints.scatter_add(tf.IndexedSlices(ints, index))


_MISSING = object()
# ``sequence_prob``: a sequence's per-token probability of its whole label sequence (see
# ``analysis._sequence_dynamics``); a classifier's is its ``true_prob``.
_FLOAT_COLUMNS = ("loss", "true_prob", "margin", "sequence_prob")
_INT_COLUMNS = ("prediction", "correct", "seen", "label")


def _from_sums(
    floats: np.ndarray,
    prediction: np.ndarray,
    correct: np.ndarray,
    seen: np.ndarray,
    label: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-example values from buffers that summed every replica's rows over an epoch.

    ``seen`` counts the times an example was trained on. Once (the usual case) the sums are
    the values themselves (prediction -1 where the output was undefined, e.g. NaN logits);
    an example never trained on gets NaN floats and ``prediction``/``label`` -1; more than
    once gives the mean floats, ``correct`` when right at least half the times, the label
    (its sum divided by the count; -1 if that does not divide, i.e. one id carried different
    labels), and ``prediction`` -1 (a sum of class ids means nothing).
    """
    count = np.maximum(seen, 1)
    floats = np.where(seen[:, None] > 0, floats / count[:, None], np.nan).astype(np.float32)
    prediction = np.where(seen == 1, prediction, -1)
    label = np.where((seen > 0) & (label % count == 0), label // count, -1)
    correct = (seen > 0) & (2 * correct >= seen)
    return floats, prediction, correct, seen > 0, label


def _per_token_probability(token_true_prob: Any, token_mask: Any, n_tokens: Any) -> tf.Tensor:
    """``exp(mean log p)`` over each sequence's counted tokens: 1 without tokens, NaN if one is.

    The same as ``analysis.sequence_probabilities`` (tested against it).
    """
    tiny = float(np.finfo(np.float32).tiny)
    logs = tf.math.log(tf.clip_by_value(token_true_prob, tiny, 1.0))
    total = tf.reduce_sum(tf.where(token_mask, logs, 0.0), axis=-1)
    count = tf.cast(n_tokens, tf.float32)
    value = tf.where(n_tokens > 0, tf.exp(total / tf.maximum(count, 1.0)), 1.0)
    undefined = tf.reduce_any(token_mask & tf.math.is_nan(token_true_prob), axis=-1)
    return tf.where(undefined, math.nan, value)


def _expects_dict(model: Any) -> bool:
    inputs = getattr(model, "_inputs_struct", None)
    return isinstance(inputs, Mapping)


# Ops between the model's output and the fused cross-entropy that leave the values as they are.
_SAME_VALUES = ("Identity", "Reshape", "Cast", "Squeeze", "ExpandDims")


def _training_softmax_xent(out: Any, y: Any, probe: Any) -> tuple[tf.Tensor, tf.Tensor] | None:
    """The training step's own fused sparse softmax cross-entropy of ``out``, if it took one.

    Keras' sparse categorical cross-entropy (TensorFlow backend) calls
    ``SparseSoftmaxCrossEntropyWithLogits`` on the output's logits: for a softmax layer's
    output, on the softmax's input. Its two outputs are the unreduced loss and
    ``softmax - one_hot(label)``, which the gradient needs anyway. They are found in the
    traced step's graph, following only ops that keep the values (reshapes, casts), and
    used only when its labels are the batch's ``y``. Any other path (another loss,
    ``ignore_class``, probabilities not from a softmax op, an eager step) returns None, and
    the pass's maths takes the softmax itself.

    Returns:
        ``(loss, backprop)`` with gradients stopped, or None.
    """
    if probe.kind != "sparse" or probe.from_logits is None or tf.executing_eagerly():
        return None
    source = out
    op = getattr(out, "op", None)
    if op is None:
        return None
    if not probe.from_logits:
        if op.type != "Softmax":
            return None
        source = op.inputs[0]
    frontier, seen = [source], set()
    while frontier:
        tensor = frontier.pop()
        for consumer in tensor.consumers():
            if consumer.name in seen:
                continue
            seen.add(consumer.name)
            if consumer.inputs[0].name != tensor.name:  # e.g. the shape of a Reshape
                continue
            if consumer.type == "SparseSoftmaxCrossEntropyWithLogits":
                loss, backprop = consumer.outputs
                if backprop.shape[-1] not in (None, out.shape[-1]):  # not one row a position
                    return None
                if not _comes_from(consumer.inputs[1], y):  # labels other than the batch's
                    return None
                return tf.stop_gradient(loss), tf.stop_gradient(backprop)
            if consumer.type in _SAME_VALUES and _keeps_values(consumer):
                frontier.append(consumer.outputs[0])
    return None


def _keeps_values(op: Any) -> bool:
    """Whether a cast keeps every value (a widening float cast); other listed ops do."""
    if op.type != "Cast":
        return True
    source, target = op.inputs[0].dtype, op.outputs[0].dtype
    return source.is_floating and target.is_floating and target.size >= source.size


def _comes_from(tensor: Any, source: Any) -> bool:
    """Whether ``tensor`` is ``source`` behind reshapes and casts only."""
    for _ in range(8):
        if tensor.name == source.name:
            return True
        if tensor.op.type not in _SAME_VALUES and tensor.op.type != "Cast":
            return False
        tensor = tensor.op.inputs[0]
    return False
