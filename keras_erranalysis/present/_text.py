"""Table cells as one line of safe text: markdown for TensorBoard, TSV for the projector."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# Markdown's backslash-escapable characters (Python-Markdown with tables, as TensorBoard
# renders); "<", ">", "&" and quotes become HTML entities instead.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|])")


# Unicode category Cc, and the bidirectional controls (U+202E would show "exe.txt" as
# "txt.exe" and reorder the cells after it).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def format_value(value: Any) -> str:
    """A cell value as text: ``yes``/``no``, 4 significant digits, UTF-8 bytes decoded."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        return f"{float(value):.4g}"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def one_line(value: Any, max_chars: int | None = None) -> str:
    """A value as one line of plain text, safe for a terminal, a TSV file or a table cell.

    Line breaks become a visible ``↵``, tabs a space, other control characters (NUL, ESC,
    which could recolour or rewrite a terminal) and bidirectional controls (U+202E, which
    reverses the text after it) a replacement character ``�``.

    Args:
        value: Any value (floats with 4 significant digits, booleans as yes/no).
        max_chars: Longer text is cut and ends with ``…`` (None: no limit).

    Returns:
        The text.
    """
    return _one_line(format_value(value), max_chars)


def _one_line(text: str, max_chars: int | None) -> str:
    text = _LINE_BREAKS.sub(" \u21b5 ", text).replace("\t", " ")
    # Other control characters (NUL, ESC, ...) could confuse viewers: show a placeholder.
    text = _CONTROL.sub("\ufffd", text)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text


def markdown_cell(value: Any, *, max_chars: int | None = 200) -> str:
    r"""Renders one value as the text of a markdown table cell, safely.

    Line breaks become a visible ``↵``, control characters a replacement character; every
    markdown special character (``|``, backticks, ``*``, brackets, ...) is backslash-escaped
    and ``<``, ``>``, ``&`` and quotes become HTML entities, so the cell renders as the
    literal text in any markdown viewer and can neither break the table nor inject markup.

    Args:
        value: Any value; floats are shown with 4 significant digits, booleans as yes/no.
        max_chars: Longer text is cut and ends with ``…`` (None: no limit).

    Returns:
        The escaped cell text.

    Example:
        >>> markdown_cell("a|b <i>")
        'a\\|b &lt;i&gt;'
    """
    if isinstance(value, (int, float, np.integer, np.floating, bool, np.bool_)):
        return format_value(value)  # digits, "-", ".", "e", "nan", "inf", "yes"/"no"
    text = _one_line(format_value(value), max_chars)
    # Backslash-escape first, then turn HTML specials into entities: an entity's own "#"
    # must not be backslash-escaped.
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return html.escape(text, quote=True)


def markdown_table(
    frame: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    max_chars: int | None = 200,
) -> str:
    """Renders a DataFrame as a GitHub-flavoured markdown table with every cell escaped.

    Args:
        frame: The table.
        columns: Columns to show, in order (default: all); missing ones are skipped.
        max_chars: Maximum characters per cell (see :func:`markdown_cell`).

    Returns:
        The markdown text (header, separator, one line per row).
    """
    names = [c for c in (columns or frame.columns) if c in frame.columns]
    if not names:
        raise ValueError("markdown_table needs at least one column that exists in the frame.")
    lines = [
        "| " + " | ".join(markdown_cell(name, max_chars=max_chars) for name in names) + " |",
        "|" + "|".join("---" for _ in names) + "|",
    ]
    for row in frame[names].itertuples(index=False, name=None):
        lines.append(
            "| " + " | ".join(markdown_cell(v, max_chars=max_chars) or " " for v in row) + " |"
        )
    return "\n".join(lines)


def tsv_cell(value: Any, *, max_chars: int | None = 500) -> str:
    """Renders one value for a TSV file: no tab, no line break, no control character."""
    return _one_line(format_value(value), max_chars)


def _tsv_column(series: pd.Series, max_chars: int = 500) -> pd.Series:
    """:func:`tsv_cell` over a whole column, vectorised (the projector's metadata can be big)."""
    values = series.to_numpy()
    if series.dtype.kind == "b":
        return pd.Series(np.where(values, "yes", "no"), dtype=object)
    if series.dtype.kind in "iu":
        return pd.Series(values.astype(str), dtype=object)
    if series.dtype.kind == "f":
        return pd.Series([f"{v:.4g}" for v in values.tolist()], dtype=object)
    text = pd.Series([format_value(v) for v in values.tolist()], dtype=object)
    text = text.str.replace(_LINE_BREAKS, " \u21b5 ", regex=True).str.replace("\t", " ")
    text = text.str.replace(_CONTROL, "\ufffd", regex=True)
    long = text.str.len() > max_chars
    if long.any():
        text[long] = text[long].str.slice(0, max_chars - 1) + "\u2026"
    return text


def _tsv_rows(frame: pd.DataFrame) -> str:
    """Every row of ``frame`` as a TSV line (no header), each ending with a newline."""
    columns = [_tsv_column(frame[name]) for name in frame.columns]
    joined = columns[0].str.cat(columns[1:], sep="\t") if len(columns) > 1 else columns[0]
    return "".join(line + "\n" for line in joined.tolist())
