"""Ranking examples: the hardest, the confidently wrong, the least confident."""

from __future__ import annotations

import numpy as np
import pandas as pd

# by -> (column, ascending, wrong examples only)
RANKINGS: dict[str, tuple[str, bool, bool]] = {
    "loss": ("loss", False, False),
    "confidence": ("confidence", True, False),
    "margin": ("margin", True, False),
    "true_prob": ("true_prob", True, False),
    "confidently_wrong": ("confidence", False, True),
}

# Numeric columns where a higher value is better: ranked lowest first when named as ``by``.
HIGHER_IS_BETTER = frozenset(
    {
        "correct",
        "token_accuracy",
        "generated_correct",
        "generated_bleu",
        "generated_chrf",
        "generated_rouge_1",
        "generated_rouge_2",
        "generated_rouge_l",
    }
)


def ranking(by: str, frame: pd.DataFrame) -> tuple[str, bool, bool]:
    """``(column, ascending, wrong only)`` of a named ranking or of any numeric column.

    A column that is not a named ranking (e.g. ``generated_cer``) ranks highest first,
    or lowest first when higher is better (:data:`HIGHER_IS_BETTER`, e.g. ``generated_bleu``).
    """
    if by in RANKINGS:
        return RANKINGS[by]
    if by in frame.columns and pd.api.types.is_numeric_dtype(frame[by]):
        return by, by in HIGHER_IS_BETTER, False
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    raise ValueError(
        f"by must be one of {sorted(RANKINGS)} or a numeric column of the table "
        f"({', '.join(c for c in numeric if c not in RANKINGS)}), got {by!r}."
    )


# The views written to the per-epoch hardest-example log: view name -> ranking.
LOG_VIEWS = {
    "highest_loss": "loss",
    "confidently_wrong": "confidently_wrong",
    "least_confident": "confidence",
}


def rank_examples(
    frame: pd.DataFrame,
    *,
    by: str = "loss",
    k: int | None = 20,
    only_wrong: bool = False,
) -> pd.DataFrame:
    """Returns the rows of a per-example table ranked hardest first.

    Examples whose loss is NaN or infinite always come first: they are the ones a person
    must see. Ties keep data order, so rankings are deterministic.

    Args:
        frame: A per-example table with at least ``loss``, ``confidence``, ``true_prob``,
            ``margin`` and ``correct`` columns (``LossReport.to_frame()``).
        by: One of ``"loss"`` (highest first), ``"confidence"`` (least confident first),
            ``"margin"`` (most negative first), ``"true_prob"`` (lowest first) and
            ``"confidently_wrong"`` (wrong examples, most confident first), or any
            numeric column (e.g. ``"generated_cer"``: highest first; lowest first for
            scores where higher is better, such as ``"generated_bleu"``).
        k: How many rows to return (None for all).
        only_wrong: Keep only examples the model gets wrong.

    Returns:
        The top ``k`` rows with a ``rank`` column (1 = hardest) in front.

    Example:
        >>> table = pd.DataFrame({"loss": [0.1, 2.0, np.nan], "correct": [True, False, False],
        ...                       "confidence": [0.9, 0.8, 0.5], "true_prob": [0.9, 0.1, 0.2],
        ...                       "margin": [0.8, -0.7, -0.1]})
        >>> rank_examples(table, by="loss", k=2)["loss"].tolist()
        [nan, 2.0]
    """
    column, ascending, wrong_only = ranking(by, frame)
    missing = {column, "loss", "correct"} - set(frame.columns)
    if missing:
        raise ValueError(f"The table lacks column(s) {sorted(missing)} needed to rank by {by!r}.")
    rows = frame
    if only_wrong or wrong_only:
        rows = rows[~rows["correct"].astype(bool)]
    nonfinite = ~np.isfinite(rows["loss"].to_numpy(dtype=np.float64))
    values = rows[column].to_numpy(dtype=np.float64)
    key = values if ascending else -values
    key = np.where(np.isnan(key), np.inf, key)
    # lexsort: last key is primary -> non-finite losses first, then the ranking key
    order = np.lexsort((np.arange(len(rows)), key, ~nonfinite))
    if k is not None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}.")
        order = order[:k]
    ranked = rows.iloc[order].reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


def log_views(frame: pd.DataFrame, *, k: int) -> pd.DataFrame:
    """Stacks the views of the hardest-example log into one table with a ``view`` column."""
    tables = []
    for view, by in LOG_VIEWS.items():
        table = rank_examples(frame, by=by, k=k)
        table.insert(0, "view", view)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
