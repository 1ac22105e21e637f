"""Present: matplotlib figures (attention heatmaps, and more below).

Every function builds a :class:`matplotlib.figure.Figure` with matplotlib's object API, not
``pyplot``: nothing opens a window, nothing piles up in pyplot's figure list, and it works
headless (PNG through the Agg canvas). Save a figure with ``fig.savefig("x.png")``; in a
notebook it displays as it is returned. Arrays in, figures out; no Keras here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _text_label(token: Any, max_chars: int = 14) -> str:
    """A token as a tick label: visible whitespace, no mathtext, bounded length."""
    text = str(token)
    if text == "" or text.isspace():
        return "\u2423" * max(1, min(len(text), 3))  # open box: a visible space
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text.replace("$", r"\$")  # a "$" pair would start mathtext


# ======================================================================================
# Attention heatmaps
# ======================================================================================

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
        ax.set_xlabel("keys (source)")
        ax.set_ylabel("queries (target)")
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


# ======================================================================================
# (other plots go below, in their own sections)
# ======================================================================================


# ======================================================================================
# Features and metrics: error rate by bins, class frequency, confusion matrix
# (tables come from keras_erranalysis.features / keras_erranalysis.metrics)
# ======================================================================================


def plot_error_rate_by_bins(
    table: Any,
    *,
    feature_name: str = "",
    overall: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bar chart of a ``features.error_rate_by_bins`` table with 95% Wilson intervals.

    Args:
        table: DataFrame from :func:`keras_erranalysis.features.error_rate_by_bins`.
        feature_name: Name of the binned feature, for the axis label and title.
        overall: Overall error rate drawn as a dashed line (default: from the table).
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).

    Example:
        >>> from keras_erranalysis.features import error_rate_by_bins
        >>> fig = plot_error_rate_by_bins(error_rate_by_bins(lengths, report.correct),
        ...                               feature_name="length")  # doctest: +SKIP
    """
    if ax is None:
        fig = _new_figure(max(4.0, 0.9 * len(table) + 2), 3.2)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    x = np.arange(len(table))
    rate = np.asarray(table["error_rate"], dtype=float)
    low = np.asarray(table["ci_low"], dtype=float)
    high = np.asarray(table["ci_high"], dtype=float)
    ax.bar(
        x, rate, yerr=np.vstack([rate - low, high - rate]), color="#c44e52", alpha=0.85, capsize=3
    )
    counts = np.asarray(table["n"])
    if overall is None and counts.sum():
        overall = float(np.asarray(table["n_wrong"]).sum() / counts.sum())
    if overall is not None:
        ax.axhline(overall, color="0.3", linestyle="--", linewidth=1, label="overall")
        ax.legend(frameon=False)
    for xi, n in enumerate(counts):
        ax.annotate(
            f"n={n}",
            (xi, 0),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
            color="white",
        )
    ax.set_xticks(
        x, [_text_label(b, 24) for b in table["bin"]], rotation=30, ha="right", fontsize=8
    )
    name = _text_label(feature_name, 40) if feature_name else ""
    ax.set_xlabel(name or "bin")
    ax.set_ylabel("error rate")
    top = float(np.nanmax(high)) if len(high) and np.isfinite(high).any() else 1.0
    ax.set_ylim(0, min(1.0, max(0.05, top * 1.15)))
    ax.set_title(f"Error rate by {name}" if name else "Error rate by bin")
    return fig


def plot_class_frequency(
    per_class: Any,
    *,
    top: int = 40,
    ax: Axes | None = None,
) -> Figure:
    """Each class's support next to how often it is predicted (imbalance at a glance).

    Args:
        per_class: DataFrame from :func:`keras_erranalysis.metrics.per_class_metrics`.
        top: Show the ``top`` most frequent classes.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).
    """
    classes = per_class[per_class["class_id"] >= 0]
    table = classes.sort_values("support", ascending=False, kind="stable").head(top)
    if ax is None:
        fig = _new_figure(max(4.0, 0.35 * len(table) + 2), 3.2)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["support"], width=0.4, label="true", color="#4c72b0")
    ax.bar(x + 0.2, table["predicted"], width=0.4, label="predicted", color="#dd8452")
    ax.set_xticks(x, [_text_label(c) for c in table.index], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("count")
    ax.set_title("Class frequency" + (f" (top {top})" if len(classes) > top else ""))
    ax.legend(frameon=False)
    return fig


def plot_confusion_matrix(
    cm: Any,
    *,
    label_names: Sequence[Any] | Mapping[int, Any] | None = None,
    normalize: bool = True,
    max_classes: int = 30,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of a confusion matrix (rows = true class), annotated when small.

    With more than ``max_classes`` classes only the most frequent true classes are shown.

    Args:
        cm: (K, K) counts from :func:`keras_erranalysis.metrics.confusion_matrix`.
        label_names: Class names (a list or an ``{id: name}`` mapping).
        normalize: Show each row as shares of its true class.
        max_classes: Largest number of classes drawn.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).
    """
    cm = np.asarray(cm)
    k_all = cm.shape[0]
    if label_names is None:
        names = [str(i) for i in range(k_all)]
    elif isinstance(label_names, Mapping):
        names = [str(label_names.get(i, i)) for i in range(k_all)]
    else:
        given = [str(t) for t in label_names]
        names = [given[i] if i < len(given) else str(i) for i in range(k_all)]
    keep = np.flatnonzero(cm.sum(axis=1) + cm.sum(axis=0) > 0)
    n_present = len(keep)
    if n_present > max_classes:
        keep = np.sort(keep[np.argsort(-cm.sum(axis=1)[keep], kind="stable")[:max_classes]])
    shown = cm[np.ix_(keep, keep)].astype(np.float64)
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.nan_to_num(shown / shown.sum(axis=1, keepdims=True))
    k = len(keep)
    if ax is None:
        side = min(12.0, 1.5 + 0.4 * k)
        fig = _new_figure(side + 1, side)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.9, label="share of true class" if normalize else "count")
    labels = [_text_label(names[i]) for i in keep]
    ax.set_xticks(np.arange(k), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        peak = shown.max() if shown.size else 0.0
        for i in range(k):
            for j in range(k):
                value = shown[i, j]
                if value:
                    text = f"{value:.2f}" if normalize else f"{int(value)}"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value > 0.6 * peak else "black",
                    )
    hidden = f", {k} most frequent of {n_present} classes" if k < n_present else ""
    ax.set_title(
        "Confusion matrix" + (" (row-normalised" if normalize else " (counts") + hidden + ")"
    )
    return fig


# ======================================================================================
# Saving
# ======================================================================================


def figure_png(figure: Any) -> bytes:
    """Renders a Figure (or passes PNG bytes through) to PNG bytes, headless.

    Args:
        figure: A :class:`matplotlib.figure.Figure` or PNG bytes.

    Returns:
        The PNG file's bytes.
    """
    import io

    if isinstance(figure, (bytes, bytearray)):
        return bytes(figure)
    if not hasattr(figure, "savefig"):
        raise TypeError(
            f"An image must be a matplotlib Figure or PNG bytes, got {type(figure).__name__}."
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi, bbox_inches="tight")
    return buffer.getvalue()


# ======================================================================================
# Training dynamics (data map, trajectories, margins); data from keras_erranalysis.dynamics
# ======================================================================================


def plot_data_map(
    dyn: Any,
    *,
    max_points: int = 20000,
    seed: int = 0,
    confidence_threshold: float = 0.5,
    variability_threshold: float = 0.2,
    ax: Axes | None = None,
) -> Figure:
    """Data map of the cartography paper: variability (x) vs confidence (y), by correctness.

    Args:
        dyn: DataFrame from :func:`keras_erranalysis.dynamics.compute_dynamics` (or
            ``run.dynamics()``), with ``confidence``, ``variability``, ``correctness``.
        max_points: Draw at most this many examples (a seeded random sample; the title
            says so), so a million-example map stays light.
        seed: Seed of that sample.
        confidence_threshold: Region boundary drawn as a dashed line (as in the dynamics).
        variability_threshold: Region boundary drawn as a dashed line.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = plot_data_map(run.dynamics())  # doctest: +SKIP
    """
    missing = [c for c in ("confidence", "variability", "correctness") if c not in dyn]
    if missing:
        raise ValueError(
            f"dyn lacks column(s) {missing}: pass the output of compute_dynamics() or "
            "run.dynamics()."
        )
    if ax is None:
        fig = _new_figure(5.6, 4.6)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    total = len(dyn)
    rows = np.arange(total)
    if total > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False))
    confidence = np.asarray(dyn["confidence"], dtype=float)[rows]
    variability = np.asarray(dyn["variability"], dtype=float)[rows]
    correctness = np.asarray(dyn["correctness"], dtype=float)[rows]
    points = ax.scatter(
        variability,
        confidence,
        c=correctness,
        cmap="coolwarm_r",
        vmin=0.0,
        vmax=1.0,
        s=6 if len(rows) > 2000 else 14,
        alpha=0.6,
        linewidths=0,
    )
    fig.colorbar(points, ax=ax, label="correctness (share of epochs right)")
    ax.axvline(variability_threshold, color="0.4", linestyle="--", linewidth=0.8)
    ax.axhline(confidence_threshold, color="0.4", linestyle="--", linewidth=0.8)
    for text, (x, y, ha) in {
        "easy-to-learn": (0.01, 0.98, "left"),
        "hard-to-learn": (0.01, 0.02, "left"),
        "ambiguous": (0.99, 0.5, "right"),
    }.items():
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va="center", fontsize=8, color="0.25")
    ax.set_xlim(0.0, max(0.5, float(np.nanmax(variability, initial=0.0)) * 1.05))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("variability (std of p(given label) across epochs)")
    ax.set_ylabel("confidence (mean p(given label))")
    sample = f", {len(rows):,} of {total:,} shown" if len(rows) < total else ""
    ax.set_title(f"Data map ({total:,} examples{sample})")
    return fig


def plot_loss_trajectories(
    values: Any,
    examples: Sequence[int],
    *,
    example_id: Any = None,
    epochs: Sequence[int] | None = None,
    column: str = "loss",
    labels: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Per-epoch values of chosen examples, over the median and 10-90% band of all examples.

    Args:
        values: ``(E, N)`` history (e.g. ``run.stack("loss")``), or a list of E ``(N,)``
            arrays (``run.arrays("loss")``, read one epoch at a time).
        examples: Example ids to draw (looked up in ``example_id``), e.g.
            ``likely_mislabeled(dyn, k=5).index``.
        example_id: ``(N,)`` ids of the columns (default positions ``0..N-1``).
        epochs: Epoch numbers of the rows (default ``1..E``).
        column: Name of the plotted value, for the axis label.
        labels: Legend text per example (default ``"#<id>"``).
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure.

    Example:
        >>> top = run.likely_mislabeled(k=5).index  # doctest: +SKIP
        >>> fig = plot_loss_trajectories(run.arrays("loss"), top,
        ...                              example_id=run.array("example_id"))  # doctest: +SKIP
    """
    rows = list(values) if not isinstance(values, np.ndarray) else values
    num_epochs = len(rows)
    if num_epochs == 0:
        raise ValueError("values has no epochs: record at least one epoch first.")
    width = int(np.shape(rows[0])[0])
    ids = np.arange(width) if example_id is None else np.asarray(example_id)
    where = {int(v): i for i, v in enumerate(ids.tolist())}
    unknown = [e for e in examples if int(e) not in where]
    if unknown:
        raise ValueError(f"Example ids {unknown[:5]} are not in example_id.")
    columns = [where[int(e)] for e in examples]
    steps = np.arange(1, num_epochs + 1) if epochs is None else np.asarray(epochs)
    low, mid, high = (np.empty(num_epochs) for _ in range(3))
    picked = np.empty((num_epochs, len(columns)))
    for t in range(num_epochs):
        row = np.asarray(rows[t], dtype=np.float64)
        low[t], mid[t], high[t] = np.nanquantile(row, [0.1, 0.5, 0.9])
        picked[t] = row[columns]
    if ax is None:
        fig = _new_figure(6.0, 3.6)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.fill_between(steps, low, high, color="0.85", label="all examples, 10-90%")
    ax.plot(steps, mid, color="0.5", linewidth=1.2, label="all examples, median")
    names = labels if labels is not None else [f"#{e}" for e in examples]
    for j, name in enumerate(names):
        ax.plot(steps, picked[:, j], marker="o", markersize=3, label=_text_label(name, 30))
    ax.set_xlabel("epoch")
    ax.set_ylabel(_text_label(column, 30))
    ax.set_title(f"{_text_label(column, 30)} across epochs")
    ax.legend(fontsize=7, frameon=False, loc="best")
    return fig


def plot_margin_histogram(
    dyn: Any,
    *,
    column: str = "aum",
    threshold: float | None = None,
    highlight: Any = None,
    highlight_label: str = "highlighted",
    bins: int = 50,
    ax: Axes | None = None,
) -> Figure:
    """Histogram of area under the margin (or another score) with the flagged region marked.

    Args:
        dyn: DataFrame from :func:`keras_erranalysis.dynamics.compute_dynamics`.
        column: Column to histogram (default ``"aum"``).
        threshold: Flag boundary, shaded to its left. Default: for ``"aum"``, what
            :func:`keras_erranalysis.dynamics.likely_mislabeled` flags by default is drawn
            as its own (red) histogram, with the ``aum < -0.2`` cut as a dashed line and,
            when some rows lie in a concentrated cell of the confident joint, their
            ``aum < 0`` cut as a dotted one (the default rule may flag more than the cut,
            not always the lowest AUMs overall); for other columns, -0.2.
        highlight: Optional boolean mask (aligned with ``dyn``) drawn as a second histogram,
            e.g. known flipped labels in a benchmark.
        highlight_label: Legend text of the highlighted examples.
        bins: Number of bins.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure.
    """
    from keras_erranalysis.dynamics import (
        CONCENTRATED_CELL_AUM_THRESHOLD,
        DEFAULT_AUM_THRESHOLD,
        _aum_cl_flags,
    )

    if column not in dyn:
        raise ValueError(f"dyn has no column {column!r}; pass the output of compute_dynamics().")
    scores = np.asarray(dyn[column], dtype=float)
    default_rule = threshold is None and column == "aum"
    if threshold is None:
        threshold = DEFAULT_AUM_THRESHOLD
    in_cells = 0
    if default_rule:
        # Exactly what the default rule flags (not always a prefix of the AUM ranking), by
        # position: an index may repeat labels; rows in concentrated cells of the confident
        # joint have their own cut (drawn dotted). One confident joint for both.
        flagged_mask, concentrated = _aum_cl_flags(dyn, threshold)
        in_cells = int(concentrated.sum())
    else:
        flagged_mask = scores < threshold
    finite = np.isfinite(scores)
    if ax is None:
        fig = _new_figure(5.6, 3.4)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    shown = scores[finite] if finite.any() else np.array([-1.0, 1.0])
    cuts = [threshold, CONCENTRATED_CELL_AUM_THRESHOLD] if in_cells else [threshold]
    low = min(float(shown.min()), *cuts)
    high = max(float(shown.max()), *cuts)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    ax.hist(scores[finite], bins=edges, color="#4c72b0", alpha=0.8, label="all examples")
    if highlight is not None:
        mask = np.asarray(highlight, dtype=bool)
        if mask.shape != scores.shape:
            raise ValueError(f"highlight must have {len(scores)} values, got {mask.shape}.")
        ax.hist(
            scores[finite & mask],
            bins=edges,
            color="#dd8452",
            alpha=0.8,
            label=_text_label(highlight_label, 30),
        )
    flagged = int((flagged_mask & finite).sum())
    if default_rule:
        ax.hist(
            scores[finite & flagged_mask],
            bins=edges,
            color="#c44e52",
            alpha=0.8,
            label=f"flagged: {flagged:,}",
        )
        ax.axvline(
            threshold, color="#c44e52", linestyle="--", linewidth=1, label=f"aum < {threshold:g}"
        )
        if in_cells:
            cell_cut = CONCENTRATED_CELL_AUM_THRESHOLD
            ax.axvline(
                cell_cut,
                color="#c44e52",
                linestyle=":",
                linewidth=1,
                label=f"aum < {cell_cut:g} in concentrated cells ({in_cells:,} rows in them)",
            )
        title = f"{_text_label(column, 30)} (flagged by the default rule)"
    else:
        ax.axvspan(low, threshold, color="#c44e52", alpha=0.12, label=f"flagged: {flagged:,}")
        ax.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1)
        title = f"{_text_label(column, 30)} (flagged below {threshold:.3g})"
    ax.set_xlim(low, high)
    ax.set_xlabel(_text_label(column, 30))
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    return fig
