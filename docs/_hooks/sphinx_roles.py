"""A mkdocs hook: Sphinx roles left in docstrings (``:func:`name```) render as plain code.

mkdocstrings renders docstrings as Markdown, where ``:meth:`Engine.step``` would show the
role itself before the code span. This drops the role, and the ``~`` that Sphinx uses to
shorten a dotted name, so the API pages read ``Engine.step``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):<code>~?")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Replace ``:role:<code>~name</code>`` by ``<code>name</code>`` in a built page."""
    return _ROLE.sub("<code>", html)
