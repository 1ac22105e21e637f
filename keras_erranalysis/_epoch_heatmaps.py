"""The heatmaps of an analyzed epoch: which rows, which axes, and attention at inference.

Wiring between the pass and the figures: the rows to draw (the hardest, and a watch list
of right examples spread over lengths, see :mod:`keras_erranalysis.analysis._watch`), each
attention layer's role read from the model's graph (which tokens label which axis), and,
when free-running generation is analysed, the cross-attention recorded while the model
writes its own output for those rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_erranalysis._loss_report import LossReport
from keras_erranalysis.analysis import example_lengths, rank_examples, update_watch_list


def heatmap_rows(
    report: LossReport, n: int, watch: list[int] | None
) -> tuple[list[int], list[int], list[int]]:
    """Rows to draw: the ``n`` hardest by loss, then a watch list of right examples.

    Args:
        report: The epoch's pass.
        n: How many hardest examples.
        watch: The watch list so far (``None``: choose it now, ``n // 2`` right examples
            (at least one) spread over the examples' lengths; still ``None`` while no
            example is right). See :func:`~keras_erranalysis.analysis.update_watch_list`.

    Returns:
        ``(hardest, watched, watch)``: positions of the hardest examples, of the watch list
        given (or, when none was, the one chosen now) without those, and the watch list
        for the next epochs: the same examples, except that one turned wrong is replaced
        by a right one of the nearest length.
    """
    hardest = hardest_rows(report, n)
    update = watch_update(report, n, watch)
    shown = watch if watch else update.watch
    return hardest, [r for r in shown or [] if r not in hardest], update.watch


def hardest_rows(report: LossReport, n: int) -> list[int]:
    """Positions of the ``n`` examples of highest loss."""
    positions = report.scalars().assign(position=np.arange(len(report)))
    return rank_examples(positions, by="loss", k=n)["position"].tolist()


def watch_update(report: LossReport, n: int, watch: list[int] | None) -> Any:
    """The watch list after this epoch (:func:`~keras_erranalysis.analysis.update_watch_list`)."""
    return update_watch_list(
        example_lengths(report), report.correct, report.confidence, max(1, n // 2), watch
    )


def watch_notes(epoch: int, report: LossReport, update: Any) -> tuple[dict[str, Any], list[str]]:
    """The watch list in the epoch's ``meta.json`` info, and a console line per change.

    Returns:
        ``({"watch": [example ids], "watch_replaced": [...], "watch_added": [...]}, lines)``.
    """
    ids = report.example_id
    lengths = example_lengths(report)
    replaced = [
        {
            "example_id": int(ids[old]),
            "length": int(lengths[old]),
            "replaced_by": None if new is None else int(ids[new]),
            "replacement_length": None if new is None else int(lengths[new]),
        }
        for old, new in update.replaced
    ]
    lines = [
        f"ErrorAnalysis epoch {epoch}: watched example {r['example_id']} (length {r['length']}) "
        "turned wrong; "
        + (
            "no right example is left to replace it."
            if r["replaced_by"] is None
            else f"example {r['replaced_by']} (length {r['replacement_length']}) is watched "
            "from the next epoch."
        )
        for r in replaced
    ]
    notes = {
        "watch": [int(ids[r]) for r in update.watch or []],
        "watch_replaced": replaced,
        "watch_added": [int(ids[r]) for r in update.added],
    }
    return notes, lines


def layer_roles(
    model: Any,
    report: LossReport,
    weights: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``{layer path: AttentionRole}`` of the layers in ``weights``, for the heatmaps' axes.

    Args:
        model: The model.
        report: A pass over the examples (its inputs and labels).
        weights: ``{path: (rows, heads, T_q, T_kv)}`` weights (their shapes are the
            fallback where the graph says nothing).
        layers: The attention layers analysed (default: all).
    """
    from keras_erranalysis.compute import GenerationError, attention_roles, find_decoder_input

    decoder = None
    if report.is_sequence and len(report.inputs) > 1:
        try:
            decoder = find_decoder_input(report.inputs, report.label)[0]
        except GenerationError:  # no input is the shifted labels: the graph decides alone
            decoder = None
    return attention_roles(
        model,
        report.inputs,
        shapes={path: tuple(np.shape(w)[-2:]) for path, w in weights.items()},
        decoder_input=decoder,
        layers=layers,
    )


def inference_attention(
    model: Any,
    report: LossReport,
    rows: Sequence[int],
    roles: Mapping[str, Any],
    *,
    generation: Any,
    vocab: Any = None,
    output: str | int | None = None,
) -> tuple[dict[str, np.ndarray] | None, list[list[int]] | None]:
    """The cross-attention of ``rows`` while the model writes its own output (greedy).

    Only when free-running generation is analysed with the greedy method (a user's decode
    function cannot be hooked) and the model has a cross-attention layer; one small
    decode of those rows.

    Args:
        model: The model.
        report: The epoch's pass.
        rows: The report positions drawn as heatmaps.
        roles: ``{path: AttentionRole}`` of the attention layers.
        generation: The :class:`~keras_erranalysis.GenerationAnalysis` option, or ``None``.
        vocab: The target vocabulary (its end token stops decoding).
        output: The output of a multi-output model.

    Returns:
        ``({path: (len(rows), heads, T_gen, T_kv)}, generated ids per row (with the end
        token when written))``, or ``(None, None)``.
    """
    from keras_erranalysis.compute import GenerationError, end_id_from_tokens
    from keras_erranalysis.compute._generate_attention import generate_attention

    cross = [path for path, role in roles.items() if role.kind == "cross" and "#" not in path]
    if generation is None or callable(generation.method) or not cross or not rows:
        return None, None
    if not report.is_sequence or len(report.inputs) < 2:
        return None, None
    end_id = generation.end_id
    if end_id is None and vocab is not None:
        end_id = end_id_from_tokens(vocab.tokens)
    picked = np.asarray(rows, np.int64)
    try:
        found = generate_attention(
            model,
            {name: np.asarray(values)[picked] for name, values in report.inputs.items()},
            np.asarray(report.label)[picked],
            layers=cross,
            max_length=generation.max_length,
            start_id=generation.start_id,
            end_id=end_id,
            output=output,
        )
    except GenerationError:  # the generation step says why, with the fix
        return None, None
    generated = found.generated
    width = generated.ids.shape[1]
    ids = [  # with the end token: the row that wrote it is part of the picture
        row[: n + 1 if n < width else n].tolist()
        for row, n in zip(generated.ids, generated.lengths)
    ]
    return found.weights, ids
