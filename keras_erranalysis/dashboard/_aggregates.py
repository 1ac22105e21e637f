"""Aggregates the dashboard sends instead of rows: histograms, metrics, maps, slices, one example.

Numbers over all the (filtered) rows are computed in numpy on the memory-mapped columns;
only the aggregate (bins, a confusion matrix, at most :data:`MAX_POINTS` sampled points and
a density grid) goes to the browser.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis.dashboard._store import QueryError, RunView

MAX_POINTS = 20_000
DENSITY_BINS = 40
MAX_MATRIX_CLASSES = 30
_CHUNK = 65_536
_IMAGES = (".png", ".jpg", ".jpeg")
_HARDEST_FILE = re.compile(r"^attention_hardest(\d+)_")
# Columns that describe the outcome (not a possible cause): never slice conditions.
_OUTCOME = re.compile(
    r"loss|correct|confidence|true_prob|margin|accuracy|generated|bleu|chrf|wer|cer"
)


def histogram(
    view: RunView, epoch: int, column: str, bins: int, mask: np.ndarray | None
) -> dict[str, Any]:
    """Counts of ``column`` over the rows of ``mask``; edges span the whole column."""
    if column not in view.numeric_columns(epoch):
        raise QueryError(
            f"No numeric column {column!r} to draw; use one of {view.numeric_columns(epoch)}."
        )
    values = np.asarray(view.column(column, epoch))
    if values.dtype == bool:
        values = values.view(np.uint8)

    def make() -> np.ndarray:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size == 0:
            return np.array([0.0, 1.0])
        low, high = float(finite.min()), float(finite.max())
        return np.array([low, high if high > low else low + 1.0])

    low, high = view.cache.get((view.name, epoch, "range", column), make)
    chosen = values if mask is None else values[mask]
    if chosen.dtype.kind == "f":
        chosen = chosen[np.isfinite(chosen)]
    counts, edges = np.histogram(chosen, bins=bins, range=(low, high))
    return {"column": column, "edges": edges.tolist(), "counts": counts.tolist()}


def metrics(view: RunView, epoch: int, mask: np.ndarray | None) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support and the confusion matrix (capped)."""
    names = view.class_names(epoch)
    label = np.asarray(view.array("label", epoch))
    prediction = np.asarray(view.array("prediction", epoch))
    if view.is_sequence(epoch):  # counted tokens
        counted = np.asarray(view.array("token_mask", epoch), bool)
        if mask is not None:
            counted = counted & mask[:, None]
        label, prediction = label[counted], prediction[counted]
    elif mask is not None:
        label, prediction = label[mask], prediction[mask]
    k = max(int(view.meta(epoch)["num_classes"]), int(label.max(initial=-1)) + 1)
    valid = (prediction >= 0) & (prediction < k) & (label >= 0)
    confusion = np.bincount(
        label[valid].astype(np.int64) * k + prediction[valid], minlength=k * k
    ).reshape(k, k)
    support = np.bincount(label[label >= 0].astype(np.int64), minlength=k)[:k]
    hits = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = hits / predicted
        recall = hits / support
        f1 = 2 * precision * recall / (precision + recall)
    shown = [c for c in range(k) if support[c] or predicted[c]]
    if view.is_sequence(epoch) and len(shown) > 200:
        shown = sorted(shown, key=lambda c: -support[c])[:200]

    def name(c: int) -> str:
        return names.token(c) if names is not None else str(c)

    per_class = [
        {
            "class": c,
            "name": name(c),
            "precision": _num(precision[c]),
            "recall": _num(recall[c]),
            "f1": _num(f1[c]),
            "support": int(support[c]),
        }
        for c in shown
    ]
    kept = sorted(shown, key=lambda c: -(support[c] + predicted[c]))
    if len(kept) > MAX_MATRIX_CLASSES:
        kept = sorted(kept[: MAX_MATRIX_CLASSES - 1])
        index = np.full(k, len(kept), np.int64)
        index[kept] = np.arange(len(kept))
        size = len(kept) + 1
        matrix = np.zeros((size, size), np.int64)
        np.add.at(matrix, (index[:, None], index[None, :]), confusion)
        labels = [name(c) for c in kept] + ["other"]
        ids = [*kept, -1]
    else:
        kept = sorted(kept)
        matrix = confusion[np.ix_(kept, kept)]
        labels, ids = [name(c) for c in kept], list(kept)
    return {
        "per_class": per_class,
        "confusion": {"labels": labels, "class_ids": ids, "matrix": matrix.tolist()},
    }


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# -- maps ------------------------------------------------------------------------------


def coordinates(view: RunView, epoch: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``(x, y)`` on a map: the data map, or the embedding's two main axes."""
    if kind == "datamap":
        _, mean_prob, variability = view.dynamics(epoch)
        return variability, mean_prob
    x, y, _ = _projection(view, epoch)
    return x, y


def scatter(view: RunView, epoch: int, kind: str, mask: np.ndarray | None) -> dict[str, Any]:
    """At most :data:`MAX_POINTS` points of the filtered rows, and a density grid of all."""
    if kind == "datamap":
        x, y = coordinates(view, epoch, kind)
        x_range, y_range = (0.0, 0.5), (0.0, 1.0)
        first = view.run.epochs[0]
        x_label = f"variability (std of the true-class probability, epochs {first}..{epoch})"
        y_label = f"confidence (mean true-class probability, epochs {first}..{epoch})"
    else:
        x, y, share = _projection(view, epoch)
        x_range = _span(view, epoch, "pc1", x)
        y_range = _span(view, epoch, "pc2", y)
        x_label = f"embedding PC1 ({share[0]:.0%} of the variance)"
        y_label = f"embedding PC2 ({share[1]:.0%} of the variance)"
    rows = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (True if mask is None else mask))
    shown = _sample(view, epoch, rows)
    ids = np.asarray(view.ids(epoch))[shown].tolist()
    correct = np.asarray(view.column("correct", epoch), bool)[shown].tolist()
    # 6 decimals: shorter JSON, far below a pixel
    xs, ys = (
        np.round(x[shown].astype(float), 6).tolist(),
        np.round(y[shown].astype(float), 6).tolist(),
    )
    points = [
        {"example_id": i, "x": a, "y": b, "correct": c} for i, a, b, c in zip(ids, xs, ys, correct)
    ]
    x_edges = np.linspace(*x_range, DENSITY_BINS + 1)
    y_edges = np.linspace(*y_range, DENSITY_BINS + 1)
    return {
        "kind": kind,
        "total": int(rows.size),
        "points": points,
        "density": {
            "x_edges": x_edges.tolist(),
            "y_edges": y_edges.tolist(),
            "counts": _density(x[rows], y[rows], x_range, y_range).tolist(),
        },
        "x_label": x_label,
        "y_label": y_label,
    }


def _sample(view: RunView, epoch: int, rows: np.ndarray) -> np.ndarray:
    """Up to MAX_POINTS of ``rows``: those of lowest fixed random priority (stable sample)."""
    if rows.size <= MAX_POINTS:
        return rows
    priority = view.cache.get(
        (view.name, epoch, "priority"),
        lambda: np.random.default_rng(0).random(view.n_examples(epoch), dtype=np.float32),
    )
    picked = np.argpartition(priority[rows], MAX_POINTS)[:MAX_POINTS]
    return np.sort(rows[picked])


def _density(x, y, x_range, y_range) -> np.ndarray:
    """``DENSITY_BINS`` x ``DENSITY_BINS`` counts (rows: x bins), values outside clipped in."""
    n = DENSITY_BINS

    def index(values, span):
        low, high = span
        scaled = (np.asarray(values, np.float64) - low) * (n / (high - low or 1.0))
        return np.clip(scaled.astype(np.int64), 0, n - 1)

    flat = index(x, x_range) * n + index(y, y_range)
    return np.bincount(flat, minlength=n * n).reshape(n, n)


def _span(view: RunView, epoch: int, name: str, values: np.ndarray) -> tuple[float, float]:
    low, high = view.cache.get(
        (view.name, epoch, "span", name),
        lambda: np.array([np.nanmin(values), np.nanmax(values)], np.float64),
    )
    return float(low), float(high if high > low else low + 1.0)


def _projection(view: RunView, epoch: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The stored embeddings projected on their first two principal axes (chunked, cached)."""
    if "embedding" not in view.meta(epoch).get("vectors", {}):
        raise QueryError(
            f"Epoch {epoch} of run {view.name!r} stores no embeddings: train with "
            "ErrorAnalysis(..., embeddings=True), or use kind=datamap.",
            404,
        )

    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vectors = view.array("embedding", epoch)
        n, d = vectors.shape[0], int(np.prod(vectors.shape[1:]))
        total, outer = np.zeros(d), np.zeros((d, d))
        for start in range(0, n, _CHUNK):
            block = np.asarray(vectors[start : start + _CHUNK], np.float64).reshape(-1, d)
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
            total += block.sum(0)
            outer += block.T @ block
        mean = total / max(n, 1)
        covariance = outer / max(n, 1) - np.outer(mean, mean)
        values, axes = np.linalg.eigh(covariance)
        top = axes[:, ::-1][:, :2]
        if top.shape[1] < 2:
            top = np.pad(top, ((0, 0), (0, 2 - top.shape[1])))
        top *= np.where(top[np.abs(top).argmax(0), [0, 1]] < 0, -1, 1)
        projected = np.empty((n, 2), np.float32)
        for start in range(0, n, _CHUNK):
            block = np.asarray(vectors[start : start + _CHUNK], np.float64).reshape(-1, d)
            projected[start : start + _CHUNK] = (block - mean) @ top
        variance = max(float(values.sum()), 1e-12)
        shares = np.array([values[::-1][i] / variance if i < d else 0.0 for i in range(2)])
        return projected[:, 0].copy(), projected[:, 1].copy(), shares

    x, y, shares = view.cache.get((view.name, epoch, "pca"), make)
    return x, y, (float(shares[0]), float(shares[1]))


# -- flags -----------------------------------------------------------------------------


def mislabeled_mask(view: RunView, epoch: int) -> np.ndarray:
    """Rows flagged likely mislabeled by the dynamics of epochs up to ``epoch``."""

    def make() -> np.ndarray:
        chosen = [e for e in view.run.epochs if e <= epoch]
        try:
            table = view.run.likely_mislabeled(epochs=chosen)
        except ValueError as error:
            raise QueryError(f"likely_mislabeled cannot be computed here: {error}") from None
        ids = table["example_id"] if "example_id" in table.columns else table.index
        rows = view.rows_of(epoch, np.asarray(ids, dtype=np.int64))
        mask = np.zeros(view.n_examples(epoch), bool)
        mask[rows[rows >= 0]] = True
        return mask

    return view.cache.get((view.name, epoch, "mislabeled"), make)


def health_mask(view: RunView, epoch: int, check: str) -> np.ndarray:
    """Rows a data-health check flagged (the tables of the epoch that ran the checks)."""
    for e in reversed([e for e in view.run.epochs if e <= epoch] or view.run.epochs):
        if "health" not in view.meta(e).get("tables", {}):
            continue
        issues = view.run.table("health", e)
        split = "train"
        if "health_summary" in view.meta(e).get("tables", {}):
            summary = view.run.table("health_summary", e)
            if "validation" in set(summary.get("split", [])):
                split = "validation"
        hit = issues[(issues["check"] == check) & (issues["split"] == split)]
        rows = view.rows_of(epoch, hit["example_id"].to_numpy(np.int64))
        mask = np.zeros(view.n_examples(epoch), bool)
        mask[rows[rows >= 0]] = True
        return mask
    raise QueryError(
        f"Run {view.name!r} holds no data-health tables: train with "
        "ErrorAnalysis(..., analyses=[..., 'health']) to flag health:<check>."
    )


# -- why -------------------------------------------------------------------------------


def why(view: RunView, epoch: int) -> dict[str, Any]:
    """The stored feature comparison, and slices of stored columns where errors concentrate."""
    tables = view.meta(epoch).get("tables", {})
    features = _records(view.run.table("features", epoch)) if "features" in tables else []
    return {"features": features, "slices": _slices(view, epoch)}


def _records(frame: pd.DataFrame, max_chars: int = 200) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, str) and len(value) > max_chars:
                clean[f"{key}__truncated"] = True
                value = value[:max_chars]
            elif isinstance(value, np.generic):
                value = value.item()
            clean[str(key)] = value
        out.append(clean)
    return out


def _conditions(view: RunView, epoch: int) -> list[tuple[str, dict[str, Any], np.ndarray]]:
    """(name, filter, mask) of single conditions: a class, a quartile of a stored column."""
    found = []
    if not view.is_sequence(epoch):
        label = np.asarray(view.column("label", epoch))
        names = view.class_names(epoch)
        for c in np.unique(label[label >= 0])[:200]:
            shown = names.token(int(c)) if names is not None else str(int(c))
            found.append((f"label = {shown}", {"label": [int(c)]}, label == c))
    for column in view.stored_columns(epoch):
        if column in ("example_id", "label", "prediction") or _OUTCOME.search(column):
            continue
        values = np.asarray(view.column(column, epoch), np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0 or finite.min() == finite.max():
            continue
        low, high = np.quantile(finite, [0.25, 0.75])
        above = float(np.nextafter(high, np.inf))
        found.append(
            (f"{column} <= {low:.4g}", {"ranges": {column: [None, float(low)]}}, values <= low)
        )
        found.append((f"{column} > {high:.4g}", {"ranges": {column: [above, None]}}, values > high))
    return found


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = {**a, **b}
    if "ranges" in a and "ranges" in b:
        ranges = dict(a["ranges"])
        for column, (low, high) in b["ranges"].items():
            old = ranges.get(column, [None, None])
            lows = [v for v in (old[0], low) if v is not None]
            highs = [v for v in (old[1], high) if v is not None]
            ranges[column] = [max(lows) if lows else None, min(highs) if highs else None]
        merged["ranges"] = ranges
    if "label" in a and "label" in b:
        merged["label"] = sorted(set(a["label"]) & set(b["label"]))
    return merged


def _slices(view: RunView, epoch: int, top: int = 20) -> list[dict[str, Any]]:
    """Single conditions and pairs (:func:`~keras_erranalysis.analysis.find_slices`)."""
    import scipy.sparse as sp

    from keras_erranalysis.analysis._slices import find_slices

    conditions = _conditions(view, epoch)
    correct = np.asarray(view.column("correct", epoch), bool)
    n = correct.size
    if not conditions or n == 0:
        return []
    min_support = max(5, n // 1000)
    base = float((~correct).mean())
    rows = []
    for name, spec, mask in conditions:
        support = int(mask.sum())
        if support < min_support:
            continue
        wrong = int((mask & ~correct).sum())
        rows.append((name, spec, support, wrong))
    if len(conditions) >= 2:
        matrix = sp.csc_matrix(np.column_stack([m for _, _, m in conditions]).astype(np.int8))
        names = [name for name, _, _ in conditions]
        by_name = {name: spec for name, spec, _ in conditions}
        pairs = find_slices((matrix, names), correct, min_support=min_support, top=top)
        for pair in pairs.itertuples():
            spec = _merge(by_name[pair.condition_a], by_name[pair.condition_b])
            name = f"{pair.condition_a} and {pair.condition_b}"
            rows.append((name, spec, int(pair.support), int(pair.n_wrong)))
    out = [
        {
            "name": name,
            "filter": spec,
            "support": support,
            "n_wrong": wrong,
            "error_rate": wrong / support,
            "lift": (wrong / support) / base if base else None,
            "summary": f"{name}: error rate {wrong / support:.0%} vs {base:.0%} overall, "
            f"{support} examples",
        }
        for name, spec, support, wrong in rows
    ]
    out.sort(key=lambda r: (-r["error_rate"], -r["support"]))
    return out[:top]


# -- one example -----------------------------------------------------------------------


def tokens(view: RunView, epoch: int, row: int) -> list[dict[str, Any]]:
    """The per-token table of a sequence example ([] for a classifier)."""
    if not view.is_sequence(epoch):
        return []
    vocab = view.class_names(epoch)
    decoding = view.run.decoding(epoch)
    label = np.asarray(view.array("label", epoch)[row])
    prediction = np.asarray(view.array("prediction", epoch)[row])
    loss = np.asarray(view.array("token_loss", epoch)[row], np.float64)
    counted = np.asarray(view.array("token_mask", epoch)[row], bool)
    meta = view.meta(epoch)
    source = None
    if view.task(epoch) == "token" and meta.get("inputs"):
        source = np.asarray(view.array(next(iter(meta["inputs"])), epoch)[row])
    input_vocab = decoding["input_vocab"] or vocab

    def token(v, i):
        return v.token(int(i)) if v is not None else str(int(i))

    return [
        {
            "position": t,
            "input": token(input_vocab, source[t]) if source is not None else "",
            "label": token(vocab, label[t]),
            "prediction": token(vocab, prediction[t]),
            "loss": _num(loss[t]),
            "counted": bool(counted[t]),
        }
        for t in range(label.shape[0])
    ]


def trajectory(view: RunView, example_id: int) -> list[dict[str, Any]]:
    """Loss, confidence and correctness of one example in every epoch that holds it."""
    out = []
    for epoch in view.run.epochs:
        row = int(view.rows_of(epoch, np.array([example_id]))[0])
        if row < 0:
            continue
        out.append(
            {
                "epoch": epoch,
                "loss": _num(np.asarray(view.column("loss", epoch))[row]),
                "confidence": _num(np.asarray(view.column("confidence", epoch))[row]),
                "correct": bool(np.asarray(view.column("correct", epoch))[row]),
            }
        )
    return out


def heatmaps(view: RunView, epoch: int, example_id: int) -> list[dict[str, Any]]:
    """Stored images of one example, in every epoch.

    Those are the ``example<id>_*`` files, and the ``attention_hardest<k>_*`` files of an
    epoch where the example was the k-th hardest by loss.
    """
    from urllib.parse import quote

    found = []
    for e in view.run.epochs:
        images = [n for n in view.run.files(e) if n.lower().endswith(_IMAGES)]
        if not images:
            continue
        rank = None
        row = int(view.rows_of(e, np.array([example_id]))[0])
        for name in images:
            mine = name.startswith(f"example{example_id}_")
            match = _HARDEST_FILE.match(name)
            if match and row >= 0:
                if rank is None:
                    rank = _loss_rank(view, e, row)
                mine = int(match.group(1)) == rank
            if mine:
                url = f"./image?run={quote(view.name)}&epoch={e}&name={quote(name)}"
                found.append({"epoch": e, "name": name, "url": url})
    return found


def _loss_rank(view: RunView, epoch: int, row: int) -> int:
    """1-based rank of a row by loss, highest first, NaN/inf first (as the hardest table)."""
    loss = np.asarray(view.column("loss", epoch), np.float64)
    bad = ~np.isfinite(loss)
    if bad[row]:
        return int(bad[:row].sum()) + 1
    mine = loss[row]
    ahead = int(bad.sum()) + int((loss > mine).sum()) + int((loss[:row] == mine).sum())
    return ahead + 1


def _nearest(view: RunView, epoch: int, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~keras_erranalysis.analysis.nearest` with the rows' norms cached per epoch.

    The same chunks and float32 arithmetic, so the same similarities; ties keep row order.
    """
    from keras_erranalysis.analysis._similarity import _CHUNK_ROWS

    vectors = view.array("embedding", epoch)
    n = vectors.shape[0]

    def make() -> np.ndarray:
        return np.concatenate(
            [
                np.linalg.norm(np.asarray(vectors[s : s + _CHUNK_ROWS], np.float32), axis=1)
                for s in range(0, n, _CHUNK_ROWS)
            ]
            or [np.zeros(0, np.float32)]
        )

    norms = view.cache.get((view.name, epoch, "norms"), make)
    query = np.asarray(vectors[row], np.float64).reshape(-1)
    size = np.linalg.norm(query)
    query = (query / size if size > 0 else query).astype(np.float32)
    similarity = np.empty(n, np.float32)  # float32 as nearest computes it; half the traffic
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, n, _CHUNK_ROWS):
            block = np.asarray(vectors[start : start + _CHUNK_ROWS], np.float32)
            stop = start + block.shape[0]
            np.divide(block @ query, norms[start:stop], out=similarity[start:stop])
    similarity[norms == 0] = 0.0
    similarity[row] = -np.inf
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    kth = np.partition(similarity, n - k)[n - k]  # the k-th largest
    candidates = np.flatnonzero(similarity >= kth)
    chosen = candidates[np.lexsort((candidates, -similarity[candidates]))][:k]
    return chosen.astype(np.int64), similarity[chosen].astype(np.float64)


def neighbors(view: RunView, epoch: int, row: int, k: int) -> list[dict[str, Any]]:
    """The ``k`` examples nearest by cosine distance of the stored embeddings."""
    if "embedding" not in view.meta(epoch).get("vectors", {}):
        return []
    found, similarity = _nearest(view, epoch, row, k)
    ids = np.asarray(view.ids(epoch))[found].tolist()
    correct = np.asarray(view.column("correct", epoch), bool)[found].tolist()
    texts = [""] * len(found)
    if "input_text" in view.text_columns(epoch):
        texts = view.texts("input_text", epoch, found)
    return [
        {"example_id": i, "distance": _num(1.0 - s), "correct": c, "input_text": t[:200]}
        for i, s, c, t in zip(ids, similarity.tolist(), correct, texts)
    ]
