"""Attention heatmaps: one head, or every layer and head of one example."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from keras_erranalysis.present._figures import _new_figure, _text_label

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


Head = int | Literal["mean", "all"]


# Keys / queries whose largest weight is below this share of the map's largest weight are
# indistinguishable from zero in the colour map: cropping them loses nothing visible.
_CROP_SHARE = 0.01


def plot_attention(
    weights: Any,
    query_tokens: Sequence[Any] | None = None,
    key_tokens: Sequence[Any] | None = None,
    *,
    head: Head = "mean",
    ax: Axes | None = None,
    title: str | None = None,
    max_labels: int = 40,
    crop: bool | Literal["auto"] = "auto",
    cmap: str = "viridis",
    query_label: str = "queries (target)",
    key_label: str = "keys (source)",
) -> Figure:
    """Heatmap of one example's attention weights, queries down, keys across.

    Args:
        weights: One example's weights: ``(heads, T_q, T_kv)`` or ``(T_q, T_kv)`` (e.g.
            ``extract_attention(model, x)[path][i]``).
        query_tokens: Tokens of the queries (rows; the target side of cross-attention).
            A list shorter than ``T_q`` crops the padding rows. None: positions.
        key_tokens: Tokens of the keys (columns; the source side). Shorter crops padding.
            None: positions, and trailing all-zero (padded) columns are trimmed.
        head: ``"mean"`` for the mean over heads, an int for one head, ``"all"`` for a
            grid with one heatmap per head (shared colour scale).
        ax: Axes to draw into (not with ``head="all"``); default a new figure.
        title: Figure title; default says which head(s).
        max_labels: At most this many tick labels per axis; longer axes show every k-th
            token, prefixed by its position.
        crop: ``True`` to crop to the rows and columns that hold visible weight (at least
            1% of the largest), ``"auto"`` to do so only for axes longer than
            ``max_labels``, ``False`` never. The title says what was cropped.
        cmap: A matplotlib colour map name.
        query_label: Title of the query axis (e.g. ``"queries (source)"`` for an
            encoder's self-attention).
        key_label: Title of the key axis.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).

    Raises:
        ValueError: For weights with a batch axis, a head out of range, more tokens than
            rows or columns (query and key tokens swapped?), or ``ax`` with ``head="all"``.

    Example:
        >>> fig = plot_attention(weights["decoder/cross_attention"][0], tgt_tokens,
        ...                      src_tokens)  # doctest: +SKIP
        >>> fig.savefig("attention.png")  # doctest: +SKIP
    """
    maps = _head_maps(weights)
    if head == "all":
        if ax is not None:
            raise ValueError(
                'head="all" draws a grid of heads in its own figure: leave ax=None, or '
                'pass head="mean" or a head index to draw into your axes.'
            )
        selected, names = maps, [f"head {h}" for h in range(maps.shape[0])]
    elif head == "mean":
        selected = maps.mean(axis=0, keepdims=True)
        names = [f"mean of {maps.shape[0]} heads" if maps.shape[0] > 1 else "attention"]
    elif isinstance(head, (int, np.integer)) and not isinstance(head, bool):
        if not -maps.shape[0] <= head < maps.shape[0]:
            raise ValueError(
                f"head={head} is out of range: the weights have {maps.shape[0]} heads "
                f"(0..{maps.shape[0] - 1})."
            )
        selected, names = maps[[head]], [f"head {head % maps.shape[0]}"]
    else:
        raise ValueError(f'head must be "mean", "all" or an int, got {head!r}.')

    selected, query_tokens, key_tokens = _trim_padding(selected, query_tokens, key_tokens)
    rows, cols = _crop_window(selected, crop, max_labels)
    shown = selected[:, rows[0] : rows[1], cols[0] : cols[1]]
    crop_note = _crop_note(rows, cols, selected.shape[1], selected.shape[2])
    vmax = max(float(shown.max()), 1e-12)

    if head != "all":
        if ax is None:
            fig = _new_figure(*_heatmap_size(*shown.shape[1:], max_labels))
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        image = _draw_heatmap(
            ax, shown[0], query_tokens, key_tokens, rows[0], cols[0], max_labels, cmap, vmax
        )
        ax.set_xlabel(key_label)
        ax.set_ylabel(query_label)
        fig.colorbar(image, ax=ax, label="attention weight", shrink=0.9)
        ax.set_title(_join(title or names[0], crop_note), fontsize=10)
        return fig

    n_heads = shown.shape[0]
    ncols = min(n_heads, 4)
    nrows = math.ceil(n_heads / ncols)
    cell_w, cell_h = _heatmap_size(*shown.shape[1:], max_labels, small=True)
    fig = _new_figure(cell_w * ncols + 1.0, cell_h * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    per_panel_labels = max(4, max_labels // 2)
    image = None
    for index, panel in enumerate(axes):
        if index >= n_heads:
            panel.set_visible(False)
            continue
        first_col, last_row = index % ncols == 0, index // ncols == nrows - 1
        image = _draw_heatmap(
            panel,
            shown[index],
            query_tokens if first_col else None,
            key_tokens if last_row else None,
            rows[0],
            cols[0],
            per_panel_labels,
            cmap,
            vmax,
            ticks=(first_col, last_row),
        )
        panel.set_title(names[index], fontsize=9)
    fig.colorbar(image, ax=axes[:n_heads].tolist(), label="attention weight", shrink=0.9)
    fig.suptitle(_join(title or f"attention, {n_heads} heads", crop_note), fontsize=11)
    return fig


def plot_attention_overview(
    weights_by_layer: Mapping[str, Any],
    example_index: int = 0,
    *,
    tokens: Mapping[str, tuple[Sequence[Any] | None, Sequence[Any] | None]] | None = None,
    layers: Sequence[str] | None = None,
    max_heads: int = 8,
    title: str | None = None,
    cmap: str = "viridis",
) -> Figure:
    """A layer x head grid of heatmaps for one example: where each head looks.

    Each row is a layer: the mean over heads first, then up to ``max_heads`` heads, on one
    colour scale per row. Padding is trimmed as in :func:`plot_attention`.

    Args:
        weights_by_layer: ``{layer_path: (batch, heads, T_q, T_kv)}``, e.g. the result of
            ``extract_attention`` (diagnostic entries in it are skipped).
        example_index: Which example of the batch to show.
        tokens: Optional ``{layer_path: (query_tokens, key_tokens)}`` to crop padding and,
            for short inputs, label the mean column.
        layers: Paths to show, in this order (default: all, in the given order).
        max_heads: At most this many head columns.
        title: Figure title; default names the example.
        cmap: A matplotlib colour map name.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: When no ``(batch, heads, T_q, T_kv)`` weights are given, a layer is
            unknown, or ``example_index`` is out of range.
    """
    arrays = {
        path: np.asarray(value)
        for path, value in weights_by_layer.items()
        if np.ndim(value) == 4 and not path.startswith("attn_")
    }
    if not arrays:
        raise ValueError(
            "weights_by_layer holds no (batch, heads, T_q, T_kv) weights: pass the result of "
            "extract_attention(model, x)."
        )
    paths = list(arrays) if layers is None else list(layers)
    for path in paths:
        if path not in arrays:
            raise ValueError(f"No weights for layer {path!r}; layers are {list(arrays)}.")
        if not -arrays[path].shape[0] <= example_index < arrays[path].shape[0]:
            raise ValueError(
                f"example_index={example_index} is out of range: layer {path!r} holds "
                f"{arrays[path].shape[0]} examples."
            )
    n_heads = max(min(arrays[p].shape[1], max_heads) for p in paths)
    ncols = n_heads + 1 if n_heads > 1 else 1
    fig = _new_figure(1.9 * ncols + 1.6, 1.9 * len(paths) + 0.7)
    grid = fig.subplots(len(paths), ncols, squeeze=False)
    for row, path in enumerate(paths):
        heads = arrays[path][example_index].astype(np.float32)
        query_tokens, key_tokens = (tokens or {}).get(path, (None, None))
        stack = np.concatenate([heads.mean(axis=0, keepdims=True), heads[:max_heads]])
        if heads.shape[0] == 1:
            stack = heads
        stack, query_tokens, key_tokens = _trim_padding(stack, query_tokens, key_tokens)
        label_tokens = max(stack.shape[1:]) <= 16
        vmax = max(float(stack.max()), 1e-12)
        image = None
        for col in range(ncols):
            panel = grid[row, col]
            if col >= stack.shape[0]:
                panel.set_visible(False)
                continue
            image = _draw_heatmap(
                panel,
                stack[col],
                query_tokens if label_tokens else None,
                key_tokens if label_tokens else None,
                0,
                0,
                16 if label_tokens else 6,
                cmap,
                vmax,
                ticks=(col == 0, col == 0),
                fontsize=6,
            )
            if row == 0 or col == 0:
                panel.set_title("mean" if col == 0 and ncols > 1 else f"head {col - 1}", fontsize=8)
            if col == 0:
                panel.set_ylabel(_text_label(path, 28), fontsize=8)
        fig.colorbar(image, ax=grid[row, :].tolist(), shrink=0.8, pad=0.01)
    fig.suptitle(title or f"example {example_index}: attention by layer and head", fontsize=11)
    return fig


def _head_maps(weights: Any) -> np.ndarray:
    maps = np.asarray(weights, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim == 4:
        raise ValueError(
            f"weights of shape {maps.shape} look like a batch: pass one example, e.g. "
            "weights[path][i], of shape (heads, T_q, T_kv)."
        )
    if maps.ndim != 3 or 0 in maps.shape:
        raise ValueError(
            f"weights must have shape (heads, T_q, T_kv) or (T_q, T_kv), got {maps.shape}."
        )
    return np.nan_to_num(maps, nan=0.0)


def _trim_padding(
    maps: np.ndarray, query_tokens: Sequence[Any] | None, key_tokens: Sequence[Any] | None
) -> tuple[np.ndarray, list[Any] | None, list[Any] | None]:
    """Crops padding: to the token lists when given, else trailing all-zero rows/columns."""
    _, t_q, t_kv = maps.shape
    for tokens, size, name, axis in (
        (query_tokens, t_q, "query_tokens", "rows (T_q)"),
        (key_tokens, t_kv, "key_tokens", "columns (T_kv)"),
    ):
        if tokens is not None and len(tokens) > size:
            raise ValueError(
                f"{name} has {len(tokens)} tokens but the map has {size} {axis}. Rows are "
                "queries (the target side), columns are keys (the source side): are the "
                "query and key tokens swapped?"
            )
    if query_tokens is not None:
        n_q = len(query_tokens)
    else:
        n_q = _last_nonzero(maps.max(axis=(0, 2))) + 1
    if key_tokens is not None:
        n_kv = len(key_tokens)
    else:
        n_kv = _last_nonzero(maps.max(axis=(0, 1))) + 1
    n_q, n_kv = max(n_q, 1), max(n_kv, 1)
    query_list = None if query_tokens is None else list(query_tokens)
    key_list = None if key_tokens is None else list(key_tokens)
    return maps[:, :n_q, :n_kv], query_list, key_list


def _last_nonzero(values: np.ndarray) -> int:
    nonzero = np.flatnonzero(values > 0)
    return int(nonzero[-1]) if nonzero.size else len(values) - 1


def _crop_window(
    maps: np.ndarray, crop: bool | str, max_labels: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row_start, row_stop), (col_start, col_stop) of the region holding visible weight."""
    _, t_q, t_kv = maps.shape
    if crop not in (True, False, "auto"):
        raise ValueError(f'crop must be True, False or "auto", got {crop!r}.')
    if crop is False:
        return (0, t_q), (0, t_kv)
    visible = maps.max(axis=0) >= _CROP_SHARE * max(float(maps.max()), 1e-12)

    def window(any_visible: np.ndarray, size: int) -> tuple[int, int]:
        if crop == "auto" and size <= max_labels:
            return 0, size
        hits = np.flatnonzero(any_visible)
        if hits.size == 0:
            return 0, size
        return int(hits[0]), int(hits[-1]) + 1

    return window(visible.any(axis=1), t_q), window(visible.any(axis=0), t_kv)


def _crop_note(rows: tuple[int, int], cols: tuple[int, int], t_q: int, t_kv: int) -> str:
    parts = []
    if rows != (0, t_q):
        parts.append(f"queries {rows[0]}-{rows[1] - 1} of {t_q}")
    if cols != (0, t_kv):
        parts.append(f"keys {cols[0]}-{cols[1] - 1} of {t_kv}")
    return ("cropped to " + ", ".join(parts)) if parts else ""


def _join(title: str, note: str) -> str:
    return f"{title}\n{note}" if note else title


def _heatmap_size(
    t_q: int, t_kv: int, max_labels: int, *, small: bool = False
) -> tuple[float, float]:
    """Inches: about 0.28 per labelled token, within readable bounds."""
    per_token = 0.18 if small else 0.28
    low, high = (2.2, 6.0) if small else (3.5, 12.0)
    width = min(max(per_token * min(t_kv, max_labels) + 1.8, low), high)
    height = min(max(per_token * min(t_q, max_labels) + 1.4, low), high)
    return width, height


def _draw_heatmap(
    ax: Axes,
    matrix: np.ndarray,
    query_tokens: Sequence[Any] | None,
    key_tokens: Sequence[Any] | None,
    row_offset: int,
    col_offset: int,
    max_labels: int,
    cmap: str,
    vmax: float,
    *,
    ticks: tuple[bool, bool] = (True, True),
    fontsize: float | None = None,
) -> Any:
    t_q, t_kv = matrix.shape
    # Nearest for small maps (crisp cells); antialiasing keeps thin diagonals of big maps.
    interpolation = "nearest" if max(t_q, t_kv) <= 128 else "antialiased"
    image = ax.imshow(
        matrix,
        aspect="auto",
        interpolation=interpolation,
        cmap=cmap,
        vmin=0.0,
        vmax=vmax,
        extent=(
            col_offset - 0.5,
            col_offset + t_kv - 0.5,
            row_offset + t_q - 0.5,
            row_offset - 0.5,
        ),
    )
    show_rows, show_cols = ticks
    _set_ticks(ax, "y", query_tokens, row_offset, t_q, max_labels, show_rows, fontsize)
    _set_ticks(ax, "x", key_tokens, col_offset, t_kv, max_labels, show_cols, fontsize)
    return image


def _set_ticks(
    ax: Axes,
    axis: str,
    tokens: Sequence[Any] | None,
    offset: int,
    size: int,
    max_labels: int,
    show: bool,
    fontsize: float | None,
) -> None:
    step = max(1, math.ceil(size / max(max_labels, 1)))
    positions = list(range(offset, offset + size, step))
    if not show:
        getattr(ax, f"set_{axis}ticks")(positions, [""] * len(positions))
        return
    if tokens is None:
        labels = [str(p) for p in positions]
    elif step == 1:
        labels = [_text_label(tokens[p]) for p in positions]
    else:  # thinned: the position tells where the label sits
        labels = [f"{p} {_text_label(tokens[p], 10)}" for p in positions]
    if fontsize is None:
        fontsize = 9 if len(positions) <= 20 else 7
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=90, fontsize=fontsize)
    else:
        ax.set_yticks(positions, labels, fontsize=fontsize)
    ax.tick_params(length=2, pad=1)
