"""Griffe extension for the docs build: Sphinx roles in docstrings shown as code.

daelab's numpydoc docstrings cross-reference with Sphinx roles (``:func:`fit```,
``:class:`~daelab.errors.DataError```), which Markdown would show verbatim. This turns each into
a code span, as Sphinx displays it (``~`` keeps the last dotted part). Used only by mkdocs.yml.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    target = match.group(2).strip()
    return "`" + (target.rsplit(".", 1)[-1] if match.group(1) else target) + "`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
