"""Error rate by bins of a feature, and slices of the data where the model fails most."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from keras_erranalysis.analysis._feature_stats import _format_share, _resolve_report, binary_tests
from keras_erranalysis.analysis._features import Features


def _wilson(k: np.ndarray, n: np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k / n
        denom = 1 + z**2 / n
        centre = (phat + z**2 / (2 * n)) / denom
        half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def error_rate_by_bins(
    values: np.ndarray | pd.Series, correct: np.ndarray, bins: int | Sequence[float] = 5
) -> pd.DataFrame:
    """Error rate in quantile bins of a numeric feature (e.g. length quintiles).

    Args:
        values: (N,) numbers; NaN values are left out.
        correct: (N,) booleans, True where the model is right (or a LossReport).
        bins: Number of quantile bins (fewer when values repeat), or explicit bin edges.

    Returns:
        One row per bin: ``bin`` (interval label), ``lower``, ``upper``, ``n``, ``n_wrong``,
        ``error_rate``, ``ci_low``, ``ci_high`` (95% Wilson interval) and ``share_of_errors``.

    Raises:
        ValueError: If the arrays have different lengths.

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import error_rate_by_bins
        >>> lengths = np.array([2, 3, 3, 4, 8, 9, 9, 12])
        >>> correct = np.array([True, True, True, True, False, True, False, False])
        >>> table = error_rate_by_bins(lengths, correct, bins=2)
        >>> table[["bin", "n", "n_wrong", "error_rate"]]
               bin  n  n_wrong  error_rate
        0   [2, 6]  4        0        0.00
        1  (6, 12]  4        3        0.75
    """
    correct, _ = _resolve_report(correct)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != correct.shape:
        raise ValueError(
            f"values has shape {values.shape} and correct {correct.shape}: give one value per "
            "example."
        )
    ok = np.isfinite(values)
    v = values[ok]
    wrong = ~correct[ok]
    if isinstance(bins, int):
        if len(np.unique(v)) <= bins:
            cats = pd.Categorical(v)
            uniq = np.asarray(cats.categories, dtype=np.float64)
            codes = cats.codes
            lower = upper = uniq
            labels = [f"{u:g}" for u in uniq]
        else:
            codes_s, edges = pd.qcut(v, q=bins, retbins=True, duplicates="drop", labels=False)
            codes = np.asarray(codes_s)
            lower, upper = edges[:-1], edges[1:]
            labels = [
                f"[{lo:.4g}, {hi:.4g}]" if i == 0 else f"({lo:.4g}, {hi:.4g}]"
                for i, (lo, hi) in enumerate(zip(lower, upper))
            ]
    else:
        edges = np.asarray(bins, dtype=np.float64)
        codes = np.asarray(pd.cut(v, edges, labels=False, include_lowest=True))
        codes = np.where(np.isnan(codes.astype(float)), -1, codes).astype(int)
        lower, upper = edges[:-1], edges[1:]
        labels = [f"({lo:.4g}, {hi:.4g}]" for lo, hi in zip(lower, upper)]
    k = len(labels)
    codes = np.asarray(codes)
    inside = codes >= 0
    n_bin = np.bincount(codes[inside], minlength=k)
    n_wrong_bin = np.bincount(codes[inside], weights=wrong[inside], minlength=k).astype(np.int64)
    lo, hi = _wilson(n_wrong_bin, n_bin)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = n_wrong_bin / n_bin
        share = n_wrong_bin / max(int(wrong.sum()), 1)
    return pd.DataFrame(
        {
            "bin": labels,
            "lower": lower,
            "upper": upper,
            "n": n_bin,
            "n_wrong": n_wrong_bin,
            "error_rate": rate,
            "ci_low": lo,
            "ci_high": hi,
            "share_of_errors": share,
        }
    )


def _conditions(
    features: Features | tuple[sp.spmatrix, Sequence[str]],
    quantiles: Sequence[float],
) -> tuple[sp.csc_matrix, list[str], np.ndarray]:
    """All single conditions: binary flags plus thresholds of the numeric columns.

    Returns the (N, C) 0/1 CSC matrix, the condition texts and a group id per condition
    (conditions on the same numeric column share a group and are never paired).
    """
    if isinstance(features, Features):
        matrix, names, kinds = features.binary, features.binary_names, features.binary_kinds
        numeric = features.numeric
    else:
        matrix, names = features
        kinds = ["user"] * len(names)
        numeric = None
    matrix = sp.csc_matrix(matrix, dtype=np.int32)
    texts = [
        f"contains {nm!r}"
        if kd in ("token", "ngram")
        else (nm.replace("=", " = ", 1) if kd == "label" else nm)
        for nm, kd in zip(names, kinds)
    ]
    groups = list(range(len(texts)))
    blocks = [matrix]
    if numeric is not None and len(numeric.columns):
        cols = []
        for j, col in enumerate(numeric.columns):
            values = numeric[col].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            if len(np.unique(finite)) < 2:
                continue
            seen = set()
            for q in quantiles:
                thr = float(np.quantile(finite, q))
                if q >= 0.5:
                    flag, text = values > thr, f"{col} > {thr:.4g}"
                else:
                    flag, text = values <= thr, f"{col} <= {thr:.4g}"
                if text in seen or not flag.any() or flag.all():
                    continue
                seen.add(text)
                cols.append(flag)
                texts.append(text)
                groups.append(len(names) + j)
        if cols:
            blocks.append(sp.csc_matrix(np.column_stack(cols).astype(np.int32)))
    out = sp.hstack(blocks, format="csc", dtype=np.int32) if len(blocks) > 1 else matrix
    return out, texts, np.asarray(groups)


def find_slices(
    features: Features | tuple[sp.spmatrix, Sequence[str]],
    correct: np.ndarray,
    *,
    min_support: int = 20,
    top: int = 20,
    max_conditions: int = 200,
    quantiles: Sequence[float] = (0.25, 0.75),
    alpha: float = 0.05,
    require_gain: bool = True,
) -> pd.DataFrame:
    """Pairs of conditions ("n_tokens > 12 and contains 'ph'") with the highest error rate.

    Conditions are the binary features plus, for each numeric column, "<= 25% quantile"
    and "> 75% quantile". The ``max_conditions`` conditions with the best lower 95% bound
    on their own error rate are paired; pair supports come from sparse products
    ``X^T X`` and ``X_wrong^T X_wrong``. Kept pairs have at least ``min_support`` examples,
    are smaller than both conditions and more error-prone than either alone. Two tests,
    each Benjamini-Hochberg corrected over the kept pairs: ``p_value``, the slice against
    the rest of the data; ``p_gain``, the slice against the rest of its more error-prone
    condition (does adding the second condition matter?). With ``require_gain`` only pairs
    whose corrected ``p_gain`` is at most ``alpha`` are returned, so a strong single
    feature paired with an unrelated one does not crowd the list.

    Args:
        features: :func:`extract_features` output, or ``(sparse 0/1 matrix, names)``.
        correct: (N,) booleans, True where the model is right (or a LossReport).
        min_support: Minimum number of examples in a slice.
        top: Number of slices returned.
        max_conditions: Number of single conditions that are paired.
        quantiles: Quantiles turned into thresholds on the numeric columns.
        alpha: FDR level for ``significant`` and ``require_gain``.
        require_gain: Keep only pairs that beat their stronger condition significantly.

    Returns:
        DataFrame, highest error rate first: ``condition_a, condition_b, support, n_wrong,
        error_rate, base_error_rate, lift, error_rate_a, error_rate_b, gain, p_value,
        p_adjusted, significant, p_gain, p_gain_adjusted, summary, example_ids`` (array of
        the slice's example ids; :func:`slice_examples` gives the same).

    Example:
        >>> import numpy as np
        >>> import scipy.sparse as sp
        >>> from keras_erranalysis.analysis import find_slices
        >>> i = np.arange(200)
        >>> long, rare = i % 2 == 0, i % 4 < 2
        >>> wrong = (long & rare & (i % 8 == 0)) | (i % 10 == 1)
        >>> flags = sp.csr_matrix(np.column_stack([long, rare]).astype(np.int32))
        >>> slices = find_slices((flags, ["long", "rare"]), ~wrong, min_support=20)
        >>> slices.loc[0, "summary"]
        'rare and long: error rate 50% vs 22% overall and 35% for rare alone, 50 examples'
    """
    import scipy.stats as st  # imported when used: it costs ~0.5 s

    correct, _ = _resolve_report(correct)
    matrix, texts, groups = _conditions(features, quantiles)
    if matrix.shape[0] != len(correct):
        raise ValueError(
            f"features describe {matrix.shape[0]} examples but correct has {len(correct)}."
        )
    example_ids = (
        features.example_ids if isinstance(features, Features) else np.arange(len(correct))
    )
    columns = [
        "condition_a",
        "condition_b",
        "support",
        "n_wrong",
        "error_rate",
        "base_error_rate",
        "lift",
        "error_rate_a",
        "error_rate_b",
        "gain",
        "p_value",
        "p_adjusted",
        "significant",
        "p_gain",
        "p_gain_adjusted",
        "summary",
        "example_ids",
    ]
    n = len(correct)
    wrong = (~correct).astype(np.int32)
    n_wrong = int(wrong.sum())
    base = n_wrong / n if n else math.nan
    support = np.diff(matrix.indptr)
    wrong_with = np.asarray(matrix.T @ wrong).ravel()
    eligible = np.flatnonzero(support >= min_support)
    if len(eligible) < 2 or n_wrong == 0:
        return pd.DataFrame(columns=columns)
    low, _ = _wilson(wrong_with[eligible], support[eligible])
    chosen = eligible[np.argsort(-low, kind="stable")[:max_conditions]]
    sub = matrix[:, chosen].tocsc()
    pair_n = (sub.T @ sub).toarray()
    sub_w = sp.csc_matrix(sub.multiply(wrong[:, None]))
    pair_w = (sub_w.T @ sub_w).toarray()
    s1 = support[chosen]
    w1 = wrong_with[chosen]
    r1 = w1 / s1
    i, j = np.triu_indices(len(chosen), k=1)
    pn, pw = pair_n[i, j], pair_w[i, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = pw / pn
    keep = (
        (pn >= min_support)
        & (pn < s1[i])
        & (pn < s1[j])
        & (rate > np.maximum(r1[i], r1[j]))
        & (groups[chosen][i] != groups[chosen][j])
    )
    i, j, pn, pw, rate = i[keep], j[keep], pn[keep], pw[keep], rate[keep]
    if len(i) == 0:
        return pd.DataFrame(columns=columns)
    p, _ = binary_tests(pw, pn, n_wrong, n)
    p_adj = st.false_discovery_control(p, method="bh")
    strong = np.where(r1[i] >= r1[j], i, j)
    p_gain, _ = binary_tests(pw, pn, w1[strong], s1[strong])
    p_gain_adj = st.false_discovery_control(p_gain, method="bh")
    order = np.lexsort((-pn, -rate))
    if require_gain:
        order = order[p_gain_adj[order] <= alpha]
    rows = []
    seen: set[bytes] = set()
    # pairs of co-extensive conditions ("phil" / "phil phoned") select the same examples:
    # show each example set once
    for k in order[: 50 * top]:
        if len(rows) >= top:
            break
        a, b = chosen[i[k]], chosen[j[k]]
        mask = (matrix[:, a].toarray().ravel() > 0) & (matrix[:, b].toarray().ravel() > 0)
        fingerprint = np.packbits(mask).tobytes()
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        best = max(r1[i[k]], r1[j[k]])
        summary = (
            f"{texts[a]} and {texts[b]}: error rate {_format_share(rate[k])} vs "
            f"{_format_share(base)} overall and {_format_share(best)} for "
            f"{texts[chosen[strong[k]]]} alone, {int(pn[k])} examples"
        )
        rows.append(
            (
                texts[a],
                texts[b],
                int(pn[k]),
                int(pw[k]),
                float(rate[k]),
                base,
                float(rate[k] / base) if base else math.nan,
                float(r1[i[k]]),
                float(r1[j[k]]),
                float(rate[k] - best),
                float(p[k]),
                float(p_adj[k]),
                bool(p_adj[k] <= alpha),
                float(p_gain[k]),
                float(p_gain_adj[k]),
                summary,
                np.asarray(example_ids)[mask],
            )
        )
    return pd.DataFrame(rows, columns=columns)


def slice_examples(
    features: Features | tuple[sp.spmatrix, Sequence[str]],
    *conditions: str,
    correct: np.ndarray | None = None,
    only_wrong: bool = False,
    quantiles: Sequence[float] = (0.25, 0.75),
) -> np.ndarray:
    """Example ids matching all the given conditions (texts as shown by :func:`find_slices`).

    Args:
        features: The same features given to :func:`find_slices`.
        *conditions: Condition texts, e.g. ``"contains 'ph'"``, ``"n_tokens > 12"``.
        correct: (N,) booleans, needed with ``only_wrong``.
        only_wrong: Keep only the examples the model gets wrong.
        quantiles: The same quantiles as given to :func:`find_slices`.

    Returns:
        Array of example ids.

    Raises:
        KeyError: For a condition that is not one of the features' conditions.

    Example:
        >>> import numpy as np
        >>> import scipy.sparse as sp
        >>> from keras_erranalysis.analysis import slice_examples
        >>> i = np.arange(200)
        >>> flags = sp.csr_matrix(np.column_stack([i % 2 == 0, i % 4 < 2]).astype(np.int32))
        >>> slice_examples((flags, ["long", "rare"]), "long", "rare")[:4]
        array([ 0,  4,  8, 12])
    """
    matrix, texts, _ = _conditions(features, quantiles)
    index = {t: k for k, t in enumerate(texts)}
    mask = np.ones(matrix.shape[0], dtype=bool)
    for cond in conditions:
        if cond not in index:
            close = [t for t in texts if cond.lower() in t.lower()][:5]
            raise KeyError(
                f"unknown condition {cond!r}; use the texts shown by find_slices"
                + (f", e.g. {close}" if close else "")
            )
        mask &= matrix[:, index[cond]].toarray().ravel() > 0
    if only_wrong:
        if correct is None:
            raise ValueError("only_wrong=True needs correct=: pass report.correct.")
        correct_arr, _ = _resolve_report(correct)
        mask &= ~correct_arr
    ids = features.example_ids if isinstance(features, Features) else np.arange(matrix.shape[0])
    return np.asarray(ids)[mask]
