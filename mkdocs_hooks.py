"""MkDocs hooks for the docs site (configured in mkdocs.yml: ``hooks: [mkdocs_hooks.py]``).

The docstrings use Sphinx roles (``:class:`X```) inside Google-style sections; the Markdown renderer keeps the role
as text before the code span. Drop the role (and a leading ``~``) so ``:class:`~a.b.C``` shows as ``a.b.C``, and
the ``::`` that introduces a reST literal block (Markdown already renders the indented block as code) as ``:``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|py:\w+):<code>~?")
_LITERAL_INTRO = re.compile(r"::</p>")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _LITERAL_INTRO.sub(":</p>", _ROLE.sub("<code>", html))
