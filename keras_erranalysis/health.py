"""check_data: the data-health checks over arrays, with the model's part run by compute.

Wiring only: the model runs in :mod:`keras_erranalysis.compute` (embeddings, the initial
losses and predictions, the cause of a NaN loss via the pipeline's pre-flight), and the
checks are :func:`keras_erranalysis.analysis.health_checks`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_erranalysis.analysis import HealthReport, Split, health_checks
from keras_erranalysis.decoding import Vocabulary


def check_data(
    train: Any = None,
    validation: Any = None,
    *,
    model: Any = None,
    vocab: Any = None,
    label_vocab: Any = None,
    label_names: Sequence[str] | None = None,
    texts: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    threshold: float = 0.5,
    cosine_threshold: float = 0.99,
    pad: int = 0,
    unk_id: int | None = None,
    embedding_layer: str | None = None,
    pass_options: Mapping[str, Any] | None = None,
) -> HealthReport:
    """Looks for problems in the data itself: duplicates, leakage, label conflicts, ...

    The checks and their thresholds are listed in :mod:`keras_erranalysis.analysis._health`
    (and in the data-health guide). With a model, three more: embeddings for the outlier
    check (and for near-duplicates of numeric inputs), the predicted class distribution,
    and the examples whose loss is NaN or inf under the model's current weights, with the
    cause.

    Args:
        train: ``(x, y)`` (or ``x`` alone, or ``None`` with ``texts``) of the training set.
        validation: ``(x, y)`` of the validation set, or ``None``.
        model: A built Keras model (optional).
        vocab: Decodes the input token ids (list, dict, lookup layer or
            :class:`~keras_erranalysis.Vocabulary`).
        label_vocab: Decodes label token ids of sequence labels.
        label_names: Class names.
        texts: The raw texts: a list for the training set, or
            ``{"train": [...], "validation": [...]}``. Duplicates are then found on them.
        threshold: Near-duplicate cut on character (token) 3-gram Jaccard similarity.
        cosine_threshold: Near-duplicate cut on cosine similarity (numbers, embeddings).
        pad: The padding id.
        unk_id: The out-of-vocabulary id (default: ``"[UNK]"`` in ``vocab``).
        embedding_layer: Layer for the embeddings (default: see
            :func:`~keras_erranalysis.compute.default_layer`).
        pass_options: Options of :func:`~keras_erranalysis.compute_losses` (e.g. the loss,
            ``ignore_class``, ``jit_compile``).

    Returns:
        A :class:`~keras_erranalysis.analysis.HealthReport`: ``.summary`` (one line per
        check and split), ``.issues`` (check, split, example_id, score, detail, text),
        ``.class_balance`` and ``.flags(split)``.

    Example:
        >>> from keras_erranalysis import check_data
        >>> health = check_data(texts={"train": ["forthright", "abbot", "abbot"],
        ...                            "validation": ["forthrigth"]})
        >>> [line for line in health.summary if "also in training" in line]
        ['1 validation inputs also in training (100.0%; 0 exact, 1 near)']
    """
    by_split = _texts_by_split(texts)
    data = {"train": train, "validation": validation}
    splits = {}
    for name, value in data.items():
        if value is None and name not in by_split:
            continue
        x, y = _unpack(value)
        splits[name] = Split(x=x, y=y, texts=by_split.get(name))
    if "train" not in splits:
        raise ValueError("check_data needs the training set: train=(x, y) or texts=[...].")
    if model is not None:
        for name, split in splits.items():
            _model_part(model, split, data[name], embedding_layer, dict(pass_options or {}))
    return health_checks(
        splits,
        vocab=Vocabulary.from_any(vocab),
        label_vocab=Vocabulary.from_any(label_vocab),
        label_names=label_names,
        threshold=threshold,
        cosine_threshold=cosine_threshold,
        pad=pad,
        unk_id=unk_id,
    )


def _texts_by_split(texts: Any) -> dict[str, Sequence[str]]:
    if texts is None:
        return {}
    if isinstance(texts, Mapping):
        unknown = set(texts) - {"train", "validation"}
        if unknown:
            raise ValueError(f"texts has unknown splits {sorted(unknown)}: use train, validation.")
        return dict(texts)
    return {"train": texts}


def _unpack(value: Any) -> tuple[Any, Any]:
    if value is None:
        return None, None
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        return _array(value[0]), None if value[1] is None else np.asarray(value[1])
    return _array(value), None


def _array(x: Any) -> Any:
    if isinstance(x, Mapping):
        return x  # several inputs: compared only through texts or embeddings
    return np.asarray(x)


def _model_part(
    model: Any, split: Split, data: Any, layer: str | None, pass_options: dict[str, Any]
) -> None:
    """Embeddings, predictions and the causes of NaN losses, from the model as it is."""
    from keras_erranalysis.compute import compute_embeddings, compute_losses
    from keras_erranalysis.pipeline import EpochPipeline

    if data is None:
        return
    x, y = _unpack(data)
    try:
        split.embeddings = compute_embeddings(
            model, x, layer=layer, jit_compile=pass_options.get("jit_compile", "auto")
        )
    except ValueError as error:
        warnings.warn(f"check_data: no embeddings ({error}).", RuntimeWarning, stacklevel=3)
    if y is None:
        return
    pipeline = EpochPipeline((x, y), decoding={}, pass_options=pass_options, verbose=0)
    report = compute_losses(model, (x, y), verbose=0, **pass_options)
    if not report.is_sequence:
        split.predictions = report.prediction
    split.nonfinite_cause = pipeline.nonfinite_causes(model, report)
