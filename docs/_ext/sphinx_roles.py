"""Griffe extension: show the docstrings' Sphinx roles as code in the mkdocs site.

The docstrings are Google style but cross-reference with reST roles
(``:func:`compute_dynamics```, ``:class:`~keras_erranalysis.decoding.Vocabulary```), which
Markdown would print verbatim. This rewrites each role to a code span, keeping what Sphinx
would show (the last dotted part after ``~``), and a paragraph's closing ``::`` (reST's literal
block marker) to ``:``, and a Keras-style ``Example:`` section title to ``Examples:``, the
title griffe's Google parser reads as doctest code (the singular would be an admonition, whose
``x[...][0]`` Markdown takes for a link). Only the rendered site changes, never the source.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL_MARK = re.compile(r"(?<=\S)::$", re.MULTILINE)
_EXAMPLE_TITLE = re.compile(r"^Example:$", re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    return f"`{shown}`"


def rewrite(text: str) -> str:
    """The docstring text with reST roles, ``::`` markers and ``Example:`` made Markdown."""
    text = _EXAMPLE_TITLE.sub("Examples:", text)
    return _LITERAL_MARK.sub(":", _ROLE.sub(_code, text))


class SphinxRoles(griffe.Extension):
    """Rewrites every loaded docstring with :func:`rewrite`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
