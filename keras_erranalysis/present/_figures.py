"""Figures of the analysis: data map, trajectories, margins, per-class and per-bin plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _text_label(token: Any, max_chars: int = 14) -> str:
    """A token as a tick label: visible whitespace, no mathtext, bounded length."""
    text = str(token)
    if text == "" or text.isspace():
        return "\u2423" * max(1, min(len(text), 3))  # open box: a visible space
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text.replace("$", r"\$")  # a "$" pair would start mathtext


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure_and_axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    """The given axes and their figure, or a new figure of that size with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(width, height)
    return fig, fig.add_subplot()


def plot_error_rate_by_bins(
    table: Any,
    *,
    feature_name: str = "",
    overall: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bar chart of a ``features.error_rate_by_bins`` table with 95% Wilson intervals.

    Args:
        table: DataFrame from :func:`keras_erranalysis.analysis.error_rate_by_bins`.
        feature_name: Name of the binned feature, for the axis label and title.
        overall: Overall error rate drawn as a dashed line (default: from the table).
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).

    Example:
        >>> from keras_erranalysis.analysis import error_rate_by_bins
        >>> fig = plot_error_rate_by_bins(error_rate_by_bins(lengths, report.correct),
        ...                               feature_name="length")  # doctest: +SKIP
    """
    fig, ax = _figure_and_axes(ax, max(4.0, 0.9 * len(table) + 2), 3.2)
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
        per_class: DataFrame from :func:`keras_erranalysis.analysis.per_class_metrics`.
        top: Show the ``top`` most frequent classes.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).
    """
    classes = per_class[per_class["class_id"] >= 0]
    table = classes.sort_values("support", ascending=False, kind="stable").head(top)
    fig, ax = _figure_and_axes(ax, max(4.0, 0.35 * len(table) + 2), 3.2)
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["support"], width=0.4, label="true", color="#4c72b0")
    ax.bar(x + 0.2, table["predicted"], width=0.4, label="predicted", color="#dd8452")
    ax.set_xticks(x, [_text_label(c) for c in table.index], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("count")
    ax.set_title("Class frequency" + (f" (top {top})" if len(classes) > top else ""))
    ax.legend(frameon=False)
    return fig


def plot_class_balance(
    balance: pd.DataFrame,
    split: str,
    *,
    top: int = 40,
    ax: Axes | None = None,
) -> Figure:
    """One split's label counts per class, with the model's predicted counts beside them.

    Args:
        balance: The data-health class-balance table (``HealthReport.class_balance``, the
            run's ``health_balance`` table): ``name``, ``<split>_count`` and, with a model,
            ``<split>_predicted``.
        split: The split to draw (``"train"``, ``"validation"``).
        top: Show the ``top`` most frequent classes.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given).
    """
    count = f"{split}_count"
    predicted = f"{split}_predicted"
    table = balance.sort_values(count, ascending=False, kind="stable").head(top)
    names = table["name"] if "name" in table else table.get("class", table.index)
    fig, ax = _figure_and_axes(ax, max(4.0, 0.35 * len(table) + 2), 3.2)
    x = np.arange(len(table))
    both = predicted in table
    width = 0.4 if both else 0.8
    ax.bar(x - (0.2 if both else 0), table[count], width=width, label="labels", color="#4c72b0")
    if both:
        ax.bar(x + 0.2, table[predicted], width=width, label="predicted", color="#dd8452")
    ax.set_xticks(x, [_text_label(c) for c in names], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("examples")
    more = f", top {top} of {len(balance)}" if len(balance) > top else ""
    ax.set_title(_text_label(f"Class balance: {split}{more}", max_chars=60))
    if both:
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
        cm: (K, K) counts from :func:`keras_erranalysis.analysis.confusion_matrix`.
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
    side = min(12.0, 1.5 + 0.4 * k)
    fig, ax = _figure_and_axes(ax, side + 1, side)
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
        dyn: DataFrame from :func:`keras_erranalysis.analysis.compute_dynamics` (or
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
    fig, ax = _figure_and_axes(ax, 5.6, 4.6)
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
    fig, ax = _figure_and_axes(ax, 6.0, 3.6)
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
        dyn: DataFrame from :func:`keras_erranalysis.analysis.compute_dynamics`.
        column: Column to histogram (default ``"aum"``).
        threshold: Flag boundary, shaded to its left. Default: for ``"aum"``, what
            :func:`keras_erranalysis.analysis.likely_mislabeled` flags by default is drawn
            as its own (red) histogram, with the ``aum < -0.2`` cut as a dashed line and,
            when some rows lie in a concentrated cell of the confident joint, their
            ``aum < 0`` cut as a dotted one (the default rule may flag more than the cut,
            not always the lowest AUMs overall); for other columns, -0.2. Sequence dynamics
            (a ``sequence_confidence`` column) with the default ``"aum"`` show
            ``sequence_confidence`` instead, shaded below ``DEFAULT_SEQUENCE_THRESHOLD``:
            what the default rule for sequences flags.
        highlight: Optional boolean mask (aligned with ``dyn``) drawn as a second histogram,
            e.g. known flipped labels in a benchmark.
        highlight_label: Legend text of the highlighted examples.
        bins: Number of bins.
        ax: Axes to draw into; default a new figure.

    Returns:
        The matplotlib Figure.
    """
    from keras_erranalysis.analysis._mislabeled import (
        CONCENTRATED_CELL_AUM_THRESHOLD,
        DEFAULT_AUM_THRESHOLD,
        DEFAULT_SEQUENCE_THRESHOLD,
        default_aum_cut,
        default_flags,
    )

    if threshold is None and column == "aum" and "sequence_confidence" in dyn:
        # Sequences: the default rule flags a low per-token probability of the label sequence.
        column, threshold = "sequence_confidence", DEFAULT_SEQUENCE_THRESHOLD
    if column not in dyn:
        raise ValueError(f"dyn has no column {column!r}; pass the output of compute_dynamics().")
    scores = np.asarray(dyn[column], dtype=float)
    default_rule = threshold is None and column == "aum"
    if threshold is None:
        threshold = default_aum_cut(dyn) if default_rule else DEFAULT_AUM_THRESHOLD
    in_cells = 0
    if default_rule:
        # Exactly what the default rule flags (not always a prefix of the AUM ranking), by
        # position: an index may repeat labels; rows in concentrated cells of the confident
        # joint have their own cut (drawn dotted). One confident joint for both.
        flagged_mask, concentrated = default_flags(dyn, threshold)
        in_cells = int(concentrated.sum())
    else:
        flagged_mask = scores < threshold
    finite = np.isfinite(scores)
    fig, ax = _figure_and_axes(ax, 5.6, 3.4)
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


def _data_map_caption(dyn: pd.DataFrame) -> str:
    counts = dyn["region"].value_counts() if "region" in dyn else pd.Series(dtype=int)
    regions = ", ".join(f"{name}: {int(n)}" for name, n in counts.items())
    return f"Data map (dataset cartography) of {len(dyn)} examples ({regions})"
