"""Errors shared by the layers: each names the problem and the fix."""

from __future__ import annotations


class AnalyzeError(ValueError):
    """The model and the data do not fit together, or the data cannot be read."""
