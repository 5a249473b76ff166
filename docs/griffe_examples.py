"""A griffe extension for the API reference: ``Example:`` sections render as code.

flowjoint's docstrings head their doctests ``Example:`` (Google style allows both
spellings); griffe knows the plural ``Examples:`` as a section of doctest code and
treats the singular as a plain admonition. This renames the heading before parsing.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(Extension):
    """Rename ``Example:`` to ``Examples:`` in every docstring."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
