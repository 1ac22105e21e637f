"""Wrong vs right, feature by feature: effect sizes and tests (compare_features)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from keras_erranalysis.analysis._features import _PHRASES, Example, Features, extract_features

# Columns of the table returned by compare_features, in order.
COMPARE_COLUMNS = [
    "feature",
    "kind",
    "test",
    "support",
    "n_wrong",
    "wrong_value",
    "right_value",
    "difference",
    "ratio",
    "effect",
    "p_value",
    "p_adjusted",
    "significant",
    "summary",
]


def binary_tests(
    n_wrong_with: np.ndarray,
    support: np.ndarray,
    n_wrong: int | np.ndarray,
    n_total: int | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p-values of 2x2 tables (wrong/right x with/without), vectorised.

    Chi-squared with Yates' correction (what ``scipy.stats.chi2_contingency`` computes on a
    2x2 table) in closed form for all tables at once; Fisher's exact test
    (``scipy.stats.fisher_exact``) where an expected count is below 5, once per distinct table.

    Args:
        n_wrong_with: (F,) wrong examples having the feature.
        support: (F,) examples having the feature.
        n_wrong: Number of wrong examples (scalar, or (F,) for tables of different totals).
        n_total: Number of examples (scalar or (F,)).

    Returns:
        ``(p_values, used_fisher)`` arrays of shape (F,).

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import binary_tests
        >>> # 50 of 200 examples are wrong; feature A: 40 of its 50 examples wrong, B: 3 of 10
        >>> p, used_fisher = binary_tests(np.array([40, 3]), np.array([50, 10]), 50, 200)
        >>> bool(p[0] < 1e-20), round(float(p[1]), 3), used_fisher.tolist()
        (True, 0.713, [False, True])
    """
    import scipy.stats as st  # imported when used: it costs ~0.5 s

    a = np.asarray(n_wrong_with, dtype=np.float64)
    s = np.asarray(support, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_total, dtype=np.float64), a.shape)
    w = np.broadcast_to(np.asarray(n_wrong, dtype=np.float64), a.shape)
    r = n - w
    b = s - a
    c = w - a
    d = r - b
    denom = s * (n - s) * w * r
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.maximum(np.abs(a * d - b * c) - n / 2.0, 0.0)
        stat = np.where(denom > 0, n * diff**2 / denom, 0.0)
        expected_min = np.where(n > 0, np.minimum(s, n - s) * np.minimum(w, r) / n, 0.0)
    p = np.where(denom > 0, st.chi2.sf(stat, 1), 1.0)
    fisher = (expected_min < 5) & (denom > 0)
    if fisher.any():
        tables = np.column_stack([a[fisher], s[fisher], w[fisher], n[fisher]]).astype(np.int64)
        uniq, inverse = np.unique(tables, axis=0, return_inverse=True)
        p_unique = np.empty(len(uniq))
        for k, (a_k, s_k, w_k, n_k) in enumerate(uniq.tolist()):
            table = [[a_k, w_k - a_k], [s_k - a_k, n_k - w_k - (s_k - a_k)]]
            p_unique[k] = st.fisher_exact(table).pvalue
        p[fisher] = p_unique[inverse.ravel()]
    return p, fisher


def _cohens_d(w: np.ndarray, r: np.ndarray) -> float:
    nw, nr = len(w), len(r)
    var = ((nw - 1) * w.var(ddof=1) + (nr - 1) * r.var(ddof=1)) / max(nw + nr - 2, 1)
    diff = w.mean() - r.mean()
    if var <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return float(diff / math.sqrt(var))


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return "nan"
    if p < 1e-300:
        return "< 1e-300"
    if p >= 0.001:
        return f"= {p:.2g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"= {mantissa}e{int(exponent)}"


def _format_share(x: float) -> str:
    if 0 < x < 0.01:
        return f"{x:.1%}"
    return f"{x:.0%}"


def _numeric_summary(name: str, w: float, r: float, ratio: float, d: float, p: str) -> str:
    more, less, unit = _PHRASES.get(name, (f"higher {name}", f"lower {name}", ""))
    if name in _PHRASES:
        head = "wrong examples are"
    else:
        head = "wrong examples have"
    if np.isfinite(ratio) and ratio > 0 and w > 0 and r > 0:
        if ratio >= 1:
            size = f"{ratio:.1f}x" if ratio >= 1.5 else _format_share(ratio - 1)
            return f"{head} {size} {more} ({w:.3g} vs {r:.3g}{unit}, adj. p {p})"
        size = f"{1 / ratio:.1f}x" if ratio <= 2 / 3 else _format_share(1 - ratio)
        return f"{head} {size} {less} ({w:.3g} vs {r:.3g}{unit}, adj. p {p})"
    return (
        f"mean {name} is {w:.3g} in wrong examples against {r:.3g} in right ones "
        f"(d = {d:.2f}, adj. p {p})"
    )


def _binary_summary(name: str, kind: str, rw: float, rr: float, p: str) -> str:
    if kind in ("token", "ngram"):
        what = f"contain {name!r}"
    elif kind == "label":
        what = f"have {name.replace('=', ' ', 1)}"
    else:
        what = f"have {name}"
    return (
        f"{_format_share(rw)} of wrong examples {what} against {_format_share(rr)} of right "
        f"ones (adj. p {p})"
    )


_FRAME_HELP = (
    "compare_features takes a LossReport, a boolean array (True = right), or a DataFrame "
    "with a 'correct' column (or 'label' and 'prediction' columns), the example ids as its "
    "index (or an 'example_id' column) and the text in a 'text' or 'input_text' column"
)


def _from_frame(
    frame: pd.DataFrame, *, need_text: bool
) -> tuple[np.ndarray, np.ndarray, list[str] | None, np.ndarray | None, dict[str, np.ndarray]]:
    """``correct``, ids, texts, labels and numeric report columns of a hand-built frame."""
    columns = list(frame.columns)
    if "correct" in frame.columns:
        correct = frame["correct"].to_numpy()
        if correct.dtype != bool and not pd.Series(correct).isin([0, 1, True, False]).all():
            raise ValueError(f"The 'correct' column must be boolean (True = right). {_FRAME_HELP}.")
        correct = correct.astype(bool)
    elif "label" in frame.columns and "prediction" in frame.columns:
        correct = (frame["label"].to_numpy() == frame["prediction"].to_numpy()).astype(bool)
    else:
        raise ValueError(f"{_FRAME_HELP}; this frame has columns {columns}.")
    ids = (
        frame["example_id"].to_numpy() if "example_id" in frame.columns else frame.index.to_numpy()
    )
    text_column = next((c for c in ("text", "input_text") if c in frame.columns), None)
    if need_text and text_column is None:
        raise ValueError(
            f"No text to take features from: {_FRAME_HELP} (or pass texts=); this frame has "
            f"columns {columns}."
        )
    texts = None if text_column is None else [str(t) for t in frame[text_column].tolist()]
    labels = None
    if "label" in frame.columns and frame["label"].dtype.kind in "iub":
        labels = frame["label"].to_numpy()
    extra = {
        c: frame[c].to_numpy(dtype=np.float64)
        for c in ("confidence",)
        if c in frame.columns and frame[c].dtype.kind in "iuf"
    }
    return correct, ids, texts, labels, extra


def _resolve_report(report_or_correct: Any) -> tuple[np.ndarray, Any]:
    if hasattr(report_or_correct, "correct"):
        return np.asarray(report_or_correct.correct, dtype=bool), report_or_correct
    correct = np.asarray(report_or_correct)
    if correct.ndim != 1:
        raise ValueError(
            f"correct must be a 1-D boolean array (one entry per example), got shape "
            f"{correct.shape}: pass a LossReport or report.correct."
        )
    if correct.dtype != bool:
        if not np.isin(correct, (0, 1)).all():
            raise ValueError(
                "correct must be boolean (True = the model got the example right); "
                "pass e.g. predictions == labels."
            )
        correct = correct.astype(bool)
    return correct, None


def _report_features(report: Any, **kwargs: Any) -> Features:
    """Extract features from a LossReport's inputs when no texts / tokens are given."""
    inputs = dict(getattr(report, "inputs", None) or {})
    input_name = kwargs.pop("input_name", None)
    if not inputs:
        raise ValueError(
            "this LossReport holds no inputs to extract features from: pass texts=, tokens= "
            "or token_ids= (or features= from extract_features)."
        )
    if input_name is None:
        input_name = next(iter(inputs))
    if input_name not in inputs:
        raise ValueError(
            f"input_name={input_name!r} is not among the report's inputs {list(inputs)}."
        )
    values = np.asarray(inputs[input_name])
    if values.dtype.kind in "USO":
        flat = values.reshape(len(values), -1)
        if flat.shape[1] == 1:
            return extract_features([str(v) for v in flat[:, 0]], **kwargs)
        return extract_features(None, [[str(v) for v in row] for row in flat], **kwargs)
    return extract_features(token_ids=values, **kwargs)


def compare_features(
    report_or_correct: Any,
    texts: Sequence[str] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    *,
    token_ids: np.ndarray | Sequence[Sequence[int]] | None = None,
    features: Features | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
    vocab: Sequence[str] | None = None,
    vocab_counts: Mapping[Any, int] | None = None,
    input_name: str | None = None,
    example_ids: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | pd.DataFrame | None = None,
    report_columns: Sequence[str] | None = None,
    ngram_range: tuple[int, int] = (1, 3),
    min_support: int = 5,
    extractors: Iterable[Callable[[Example], Mapping[str, float | bool]]] = (),
    pos: bool = True,
    tokenizer: str | Callable[[str], list[str]] | None = None,
    alpha: float = 0.05,
    test: str = "welch",
    top: int | None = None,
) -> pd.DataFrame:
    """Test which features separate the wrong examples from the right ones.

    Numeric features: mean in each group, difference, ratio, Cohen's d (``effect``), and
    Welch's t-test (``test="welch"``) or Mann-Whitney U (``test="mannwhitney"``). Binary
    features: share of each group having the feature, ratio, Cohen's h (``effect``), and
    chi-squared (Yates) or Fisher's exact test when an expected count is below 5. All p-values
    are corrected together with Benjamini-Hochberg. Rows are sorted by p-value, then by the
    absolute effect.

    Args:
        report_or_correct: A LossReport (uses ``correct``, ``example_id``, 1-D ``label``,
            ``inputs`` when no text is given, ``confidence`` and ``extra`` columns), a (N,)
            boolean array, True where the model is right, or a DataFrame with a ``correct``
            column (or ``label`` and ``prediction`` columns), ids as its index (or an
            ``example_id`` column), text in a ``text`` or ``input_text`` column and an
            optional numeric ``confidence`` column.
        texts: N texts (see :func:`extract_features`).
        tokens: N token lists.
        token_ids: Padded token ids.
        features: Precomputed :func:`extract_features` output (fastest when repeated every
            epoch); the other extraction arguments are then ignored.
        labels: (N,) labels for ``label=`` indicators (default: the report's, if 1-D).
        label_names: Names of the label values.
        vocab: id -> token, to name token-id features.
        vocab_counts: Training token frequencies (rare / out-of-vocabulary shares).
        input_name: Which of ``report.inputs`` to use when no text is given (default: first).
        example_ids: (N,) ids when ``report_or_correct`` is an array.
        extra: More per-example numeric columns to test (mapping or DataFrame of N rows).
        report_columns: Report columns tested as numeric features (default ``confidence`` and
            every 1-D column in ``report.extra``, e.g. ``attn_entropy``).
        ngram_range: Passed to :func:`extract_features`.
        min_support: Passed to :func:`extract_features`.
        extractors: Passed to :func:`extract_features`.
        pos: Passed to :func:`extract_features`.
        tokenizer: Passed to :func:`extract_features`.
        alpha: Level of the false discovery rate for ``significant``.
        test: ``"welch"`` or ``"mannwhitney"`` for numeric features.
        top: Keep only the first ``top`` rows.

    Returns:
        DataFrame with columns ``feature, kind, test, support, n_wrong, wrong_value,
        right_value, difference, ratio, effect, p_value, p_adjusted, significant, summary``.
        ``support`` counts examples with the feature (binary) or with a value (numeric);
        ``wrong_value``/``right_value`` are group means or group shares. Empty when one of
        the groups is empty.

    Raises:
        ValueError: For an unknown ``test`` or inputs of mismatched lengths.
    """
    import scipy.stats as st  # imported when used: it costs ~0.5 s

    if test not in ("welch", "mannwhitney"):
        raise ValueError(f"test={test!r} is not supported: use 'welch' or 'mannwhitney'.")
    if isinstance(report_or_correct, pd.DataFrame):
        frame = report_or_correct
        report_or_correct, frame_ids, frame_texts, frame_labels, frame_extra = _from_frame(
            frame, need_text=texts is None and tokens is None and token_ids is None
        )
        example_ids = frame_ids if example_ids is None else example_ids
        texts = frame_texts if texts is None and tokens is None and token_ids is None else texts
        labels = frame_labels if labels is None else labels
        extra = {**frame_extra, **dict(extra or {})} if frame_extra or extra is not None else None
    correct, report = _resolve_report(report_or_correct)
    n = len(correct)
    if report is not None:
        example_ids = np.asarray(report.example_id)
        rep_label = np.asarray(report.label) if getattr(report, "label", None) is not None else None
        if labels is None and rep_label is not None and rep_label.ndim == 1:
            labels = rep_label
    if features is None:
        kwargs = dict(
            labels=labels,
            vocab=vocab,
            vocab_counts=vocab_counts,
            example_ids=example_ids,
            ngram_range=ngram_range,
            min_support=min_support,
            extractors=extractors,
            pos=pos,
            tokenizer=tokenizer,
            label_names=label_names,
        )
        if texts is None and tokens is None and token_ids is None and report is not None:
            features = _report_features(report, input_name=input_name, **kwargs)
        else:
            features = extract_features(texts, tokens, token_ids=token_ids, **kwargs)
    if features.numeric.shape[0] != n:
        raise ValueError(
            f"features describe {features.numeric.shape[0]} examples but correct has {n}: "
            "pass features and the report / correct array of the same examples."
        )

    numeric = {c: features.numeric[c].to_numpy(dtype=np.float64) for c in features.numeric}
    builtin = _builtin_numeric()
    kinds = {
        c: "numeric" if c in builtin else ("pos" if c.startswith("pos_") else "user")
        for c in numeric
    }
    if report is not None:
        cols = report_columns
        if cols is None:
            cols = ["confidence"] + list((getattr(report, "extra", None) or {}).keys())
        for c in cols:
            values = getattr(report, c, None)
            if values is None:
                values = (getattr(report, "extra", None) or {}).get(c)
            numeric_column = values is not None and np.asarray(values).dtype.kind in "biuf"
            if numeric_column and np.ndim(values) == 1 and len(values) == n:
                numeric[c] = np.asarray(values, dtype=np.float64)
                kinds[c] = "report"
    if extra is not None:
        for c in extra:
            values = np.asarray(extra[c], dtype=np.float64)
            if values.shape != (n,):
                raise ValueError(
                    f"extra column {c!r} has shape {values.shape}; expected ({n},): one "
                    "number per example."
                )
            numeric[c] = values
            kinds[c] = "extra"

    wrong = ~correct
    n_wrong = int(wrong.sum())
    if n_wrong == 0 or n_wrong == n:
        return pd.DataFrame(columns=COMPARE_COLUMNS)

    parts = []
    num = _numeric_table(numeric, kinds, wrong, test)
    if len(num):
        parts.append(num)
    binary = _binary_table(features, wrong)
    if len(binary):
        parts.append(binary)
    if not parts:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    table["p_adjusted"] = st.false_discovery_control(table["p_value"].to_numpy(), method="bh")
    table["significant"] = table["p_adjusted"].to_numpy() <= alpha
    order = np.lexsort(
        (
            table["feature"].to_numpy(dtype=str),
            -np.abs(table["effect"].to_numpy()),
            table["p_value"].to_numpy(),
        )
    )
    if top is not None:
        order = order[:top]
    table = table.iloc[order].reset_index(drop=True)
    # A feature named after a 100 kB token would fill features.csv, the report and
    # TensorBoard with it, once per row: names are cut (their start names them well enough).
    table["feature"] = [_cut(f, FEATURE_CHARS) for f in table["feature"]]
    table["summary"] = [
        _numeric_summary(f, w, r, q, e, _format_p(p))
        if t in ("welch", "mannwhitney")
        else _binary_summary(f, k, w, r, _format_p(p))
        for f, k, t, w, r, q, e, p in zip(
            table["feature"],
            table["kind"],
            table["test"],
            table["wrong_value"],
            table["right_value"],
            table["ratio"],
            table["effect"],
            table["p_adjusted"],
        )
    ]
    return table[COMPARE_COLUMNS]


# Longest feature name in compare_features' table (longer ones end with "…").
FEATURE_CHARS = 100


def _cut(text: str, max_chars: int) -> str:
    text = str(text)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


def features_summary(table: pd.DataFrame, *, top: int = 5) -> str:
    """A few plain-text lines from a :func:`compare_features` table (for logs, TensorBoard).

    The text is not escaped: feature names are user data, escape them before writing
    markdown or HTML.

    Args:
        table: Output of :func:`compare_features`.
        top: Largest number of features listed.

    Returns:
        One line per significant feature, strongest first, or one line saying why there is
        none.

    Example:
        >>> import numpy as np
        >>> from keras_erranalysis.analysis import compare_features, features_summary
        >>> texts = ["a short one", "a much much longer text with many words"] * 20
        >>> correct = np.array([True, False] * 20)
        >>> print(features_summary(compare_features(correct, texts, pos=False), top=2))
        - wrong examples are 3.5x longer (39 vs 11 characters, adj. p < 1e-300)
        - wrong examples are 2.7x longer (8 vs 3 tokens, adj. p < 1e-300)
        - ... and 24 more significant features
    """
    if table.empty:
        return "No comparison: every example is right, or every example is wrong."
    significant = table[table["significant"]]
    if significant.empty:
        return (
            f"No feature separates the wrong examples from the right ones "
            f"({len(table)} features tested, Benjamini-Hochberg)."
        )
    lines = [f"- {text}" for text in significant["summary"].head(top)]
    more = len(significant) - len(lines)
    if more > 0:
        lines.append(f"- ... and {more} more significant features")
    return "\n".join(lines)


def _builtin_numeric() -> set[str]:
    return {
        "n_tokens",
        "n_chars",
        "rare_share",
        "oov_share",
        "digit_share",
        "punct_share",
        "upper_share",
        "nonascii_share",
    }


def _numeric_table(
    numeric: Mapping[str, np.ndarray], kinds: Mapping[str, str], wrong: np.ndarray, test: str
) -> pd.DataFrame:
    import scipy.stats as st  # imported when used: it costs ~0.5 s

    rows = []
    for name, values in numeric.items():
        values = np.asarray(values, dtype=np.float64)  # float32 sums of large values overflow
        ok = np.isfinite(values)
        w = values[ok & wrong]
        r = values[ok & ~wrong]
        if len(w) < 2 or len(r) < 2:
            continue
        w_mean, r_mean = float(w.mean()), float(r.mean())
        if np.ptp(values[ok]) == 0:
            continue  # constant: nothing to test
        with warnings.catch_warnings():
            # near-constant groups: scipy warns about precision; the p-value is still usable
            warnings.simplefilter("ignore", RuntimeWarning)
            if test == "mannwhitney":
                p = float(st.mannwhitneyu(w, r, alternative="two-sided").pvalue)
            elif w.var() == 0 and r.var() == 0:
                p = 0.0  # two different constants: perfectly separated
            else:
                p = float(st.ttest_ind(w, r, equal_var=False).pvalue)
        ratio = w_mean / r_mean if r_mean != 0 else (math.inf if w_mean > 0 else math.nan)
        rows.append(
            (
                name,
                kinds.get(name, "numeric"),
                test,
                int(ok.sum()),
                len(w),
                w_mean,
                r_mean,
                w_mean - r_mean,
                ratio,
                _cohens_d(w, r),
                p,
            )
        )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS[: COMPARE_COLUMNS.index("p_value") + 1])


def _binary_table(features: Features, wrong: np.ndarray) -> pd.DataFrame:
    x = features.binary
    if x.shape[1] == 0:
        return pd.DataFrame()
    n = x.shape[0]
    n_wrong = int(wrong.sum())
    support = np.bincount(x.indices, minlength=x.shape[1]).astype(np.int64)
    a = np.asarray(x.T @ wrong.astype(np.int64)).ravel()
    testable = (support > 0) & (support < n)
    idx = np.flatnonzero(testable)
    a, s = a[idx], support[idx]
    p, fisher = binary_tests(a, s, n_wrong, n)
    rate_w = a / n_wrong
    rate_r = (s - a) / (n - n_wrong)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = rate_w / rate_r
    effect = 2 * np.arcsin(np.sqrt(rate_w)) - 2 * np.arcsin(np.sqrt(rate_r))
    names = np.asarray(features.binary_names, dtype=object)[idx]
    kinds = np.asarray(features.binary_kinds, dtype=object)[idx]
    return pd.DataFrame(
        {
            "feature": names,
            "kind": kinds,
            "test": np.where(fisher, "fisher", "chi2"),
            "support": s,
            "n_wrong": a,
            "wrong_value": rate_w,
            "right_value": rate_r,
            "difference": rate_w - rate_r,
            "ratio": ratio,
            "effect": effect,
            "p_value": p,
        }
    )
