"""Present: attention heatmaps of chosen examples of a report, with tokens on the axes.

Which tokens label which axis follows the layer's role (``roles``, from
:func:`~keras_erranalysis.compute.attention_roles`, which reads it from the model's graph):

- cross-attention: rows are the target positions, labelled with the tokens they predict
  (the report's labels, decoded with ``vocab``), columns the source tokens (the input that
  reaches the keys, decoded with ``input_vocab``);
- decoder self-attention: rows the target positions, columns the decoder's inputs (the
  targets shifted right by the start token, decoded with ``vocab``);
- encoder self-attention: the source tokens on both axes.

Without a role only shapes decide: query and key lengths that differ make a cross-attention,
equal ones the source on both axes when it fits (else the target). A layer's name is never
read. Padding is cut: input positions after the last non-zero id, target positions after
the counted ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_erranalysis.decoding import Vocabulary


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", text).strip("-") or "layer"


def _source_tokens(
    report: Any, row: int, input_vocab: Vocabulary | None, name: str | None = None
) -> list[str] | None:
    if not report.inputs or (name is not None and name not in report.inputs):
        return None
    ids = np.asarray(report.inputs[name or next(iter(report.inputs))][row])
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        return None
    nonzero = np.flatnonzero(ids)
    ids = ids[: nonzero[-1] + 1] if nonzero.size else ids[:0]
    if input_vocab is None:
        return [str(int(t)) for t in ids]
    return [input_vocab.token(t) for t in ids]


def _target_tokens(report: Any, row: int, vocab: Vocabulary | None) -> list[str] | None:
    if not report.is_sequence:
        return None
    labels = np.asarray(report.label[row])
    counted = int(np.asarray(report.token_mask[row]).sum())
    labels = labels[:counted]
    if vocab is None:
        return [str(int(t)) for t in labels]
    tokens = [vocab.token(t) for t in labels]
    while tokens and tokens[-1] == "":  # padding labels that a lost Keras mask let count
        tokens.pop()
    return tokens


def _reference_ids(report: Any, row: int) -> list[int]:
    """The counted label ids of a sequence example, without trailing padding (id 0)."""
    labels = np.asarray(report.label[row])[: int(np.asarray(report.token_mask[row]).sum())]
    ids = [int(t) for t in labels]
    while ids and ids[-1] == 0:  # padding labels that a lost Keras mask let count
        ids.pop()
    return ids


def axis_tokens(
    report: Any,
    row: int,
    layer_path: str,
    shape: tuple[int, int],
    *,
    vocab: Vocabulary | None = None,
    input_vocab: Vocabulary | None = None,
    role: Any = None,
) -> tuple[list[str] | None, list[str] | None]:
    """The (query, key) tokens of one example for one layer's ``(T_q, T_kv)`` map.

    Args:
        report: A :class:`~keras_erranalysis.LossReport`.
        row: Position of the example in the report.
        layer_path: The attention layer's path (named in messages only: the role decides).
        shape: ``(T_q, T_kv)`` of the layer's weights for this example.
        vocab: Target vocabulary.
        input_vocab: Source vocabulary.
        role: The layer's :class:`~keras_erranalysis.compute.AttentionRole` (anything with
            ``kind``, ``query_input`` and ``key_input``); ``None``: decided by shapes.

    Returns:
        Token lists (None where no tokens fit that axis: plain positions are shown).
    """
    t_q, t_kv = shape
    target = _target_tokens(report, row, vocab)

    def fits(tokens: list[str] | None, length: int) -> list[str] | None:
        return tokens if tokens is not None and len(tokens) <= length else None

    if role is not None:
        if role.key_input is None:
            keys = None
        elif role.kind == "decoder_self":  # the decoder reads the targets shifted right
            keys = _source_tokens(report, row, vocab, role.key_input)
        else:
            keys = _source_tokens(report, row, input_vocab, role.key_input)
        if role.kind in ("cross", "decoder_self"):
            queries = target
        elif role.query_input is not None:
            queries = _source_tokens(report, row, input_vocab, role.query_input)
        else:
            queries = None
        return fits(queries, t_q), fits(keys, t_kv)
    source = _source_tokens(report, row, input_vocab)
    if t_q != t_kv:
        return fits(target, t_q), fits(source, t_kv)
    side = fits(source, t_q) or fits(target, t_q)
    return side, side


def axis_names(role: Any) -> tuple[str, str]:
    """The (query, key) axis titles of a heatmap for a layer's role (``None``: cross)."""
    kind = getattr(role, "kind", "cross")
    if kind == "decoder_self":
        return "queries (target)", "keys (decoder input, shifted)"
    if kind == "encoder_self":
        return "queries (source)", "keys (source)"
    return "queries (target)", "keys (source)"


def example_heatmaps(
    report: Any,
    weights: Mapping[str, np.ndarray],
    rows: Sequence[int],
    *,
    names: Sequence[str] | None = None,
    vocab: Any = None,
    input_vocab: Any = None,
    layers: Sequence[str] | None = None,
    roles: Mapping[str, Any] | None = None,
    generated: Mapping[str, np.ndarray] | None = None,
    generated_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Heatmaps of some examples, one Figure per example and layer.

    A layer with weights in ``generated`` (recorded while the model wrote its own output,
    :func:`~keras_erranalysis.compute.generate_attention`) gets two panels side by side:
    the teacher-forced map, queries labelled with the reference, and the free-running one,
    queries labelled with the generated tokens.

    Args:
        report: The report the examples come from (for tokens and titles).
        weights: ``{layer_path: (len(rows), heads, T_q, T_kv)}``, e.g.
            ``AttentionDiagnostics.weights``.
        rows: Report positions of the examples, in the order of ``weights``.
        names: A name prefix per example (default ``example<i>``).
        vocab: Target vocabulary (anything :class:`Vocabulary` accepts).
        input_vocab: Source vocabulary.
        layers: Only these layer paths (default: all in ``weights``).
        roles: ``{layer_path: AttentionRole}`` (see
            :func:`~keras_erranalysis.compute.attention_roles`): which tokens label which
            axis. Layers without one are decided by their shapes.
        generated: ``{layer_path: (len(rows), heads, T_gen, T_kv)}`` attention at
            inference, row ``t`` the step that wrote generated token ``t``.
        generated_ids: Each example's generated ids (with the end token when written),
            labelling the free-running panel's queries.

    Returns:
        ``{"<name>_<layer>": Figure}``, names safe as file names.
    """
    from keras_erranalysis.present._attention_plots import plot_attention

    target_vocab = Vocabulary.from_any(vocab)
    source_vocab = Vocabulary.from_any(input_vocab)
    figures = {}
    for j, row in enumerate(rows):
        prefix = names[j] if names is not None else f"example{int(report.example_id[row])}"
        for path in layers or list(weights):
            example = np.asarray(weights[path][j])
            role = (roles or {}).get(path)
            query, key = axis_tokens(
                report,
                row,
                path,
                example.shape[-2:],
                vocab=target_vocab,
                input_vocab=source_vocab,
                role=role,
            )
            status = "right" if bool(report.correct[row]) else "wrong"
            title = (
                f"{path} | example {int(report.example_id[row])} ({status}, "
                f"loss {float(report.loss[row]):.3g})"
            )
            query_name, key_name = axis_names(role)
            name = f"{_safe(prefix)}_{_safe(path)}"
            if generated is not None and path in generated and generated_ids is not None:
                ids = [int(t) for t in generated_ids[j]]
                tokens = [target_vocab.token(t) for t in ids] if target_vocab is not None else ids
                free = "right" if ids == _reference_ids(report, row) else "wrong"
                figures[name] = plot_teacher_forced_and_generated(
                    example,
                    np.asarray(generated[path][j]),
                    query,
                    [str(t) for t in tokens],
                    key,
                    title=title.replace(
                        f"({status},", f"(teacher-forced {status}, free-running {free},"
                    ),
                    key_label=key_name,
                )
                continue
            figures[name] = plot_attention(
                example, query, key, title=title, query_label=query_name, key_label=key_name
            )
    return figures


def plot_teacher_forced_and_generated(
    teacher_forced: np.ndarray,
    generated: np.ndarray,
    reference_tokens: Sequence[str] | None,
    generated_tokens: Sequence[str],
    key_tokens: Sequence[str] | None,
    *,
    title: str = "",
    key_label: str = "keys (source)",
) -> Any:
    """One example's cross-attention fed the reference (left) and fed its own output (right).

    Args:
        teacher_forced: ``(heads, T_q, T_kv)`` weights of the teacher-forced pass.
        generated: ``(heads, T_gen, T_kv)`` weights recorded during free-running decoding.
        reference_tokens: The reference tokens (left panel's queries).
        generated_tokens: The generated tokens (right panel's queries; rows beyond them,
            after the end token, are cut).
        key_tokens: The source tokens (both panels' keys).
        title: Figure title.
        key_label: Title of the key axes.

    Returns:
        A matplotlib Figure with two heatmaps.
    """
    from keras_erranalysis.present._attention_plots import _heatmap_size, plot_attention
    from keras_erranalysis.present._figures import _new_figure

    t_kv = teacher_forced.shape[-1]
    rows = max(teacher_forced.shape[-2], len(generated_tokens))
    width, height = _heatmap_size(rows, t_kv, 40)
    fig = _new_figure(2 * width, height + 0.4)
    left, right = fig.subplots(1, 2)
    plot_attention(
        teacher_forced,
        reference_tokens,
        key_tokens,
        ax=left,
        title="teacher-forced (fed the reference)",
        query_label="queries (reference)",
        key_label=key_label,
    )
    plot_attention(
        generated[:, : max(1, len(generated_tokens))],
        list(generated_tokens) or None,
        key_tokens,
        ax=right,
        title="free-running (fed its own output)",
        query_label="queries (generated)",
        key_label=key_label,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
