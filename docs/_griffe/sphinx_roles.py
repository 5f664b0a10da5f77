"""A griffe extension for the docs build: render reST markup in docstrings as Markdown.

pysaga's docstrings are Google style, with a little reStructuredText inside (roles such as
``:class:`~pysaga.BusinessError``` and ``::`` before a literal block), which reads well in
``help()`` and in editors. This extension rewrites that markup while the API reference is
built, so the source keeps one spelling and the site shows links and code blocks:

* ``:role:`target```, ``:role:`~pkg.target``` and ``:role:`title <target>``` become
  cross-references (a name without a package is looked up next to the object that
  mentions it); a target the site does not render stays plain code, with no warning;
* a paragraph ending in ``::`` followed by an indented block becomes a fenced Python block.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|attr|mod|exc|data|obj|const)"
    r":`(?:(?P<title>[^`<]+?)\s*<(?P<target>[^`>]+)>|(?P<tilde>~)?(?P<bare>[^`]+))`"
)


def _role(match: re.Match[str], scope: str) -> str:
    if match["target"]:
        target, title = match["target"], match["title"]
    else:
        target = match["bare"]
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
    target = target.strip().removesuffix("()")
    if not target.startswith("pysaga"):  # relative to the class or module that documents it
        target = f"{scope}.{target}"
    if match["role"] in ("meth", "func") and not title.endswith(")"):
        title += "()"
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def _literal_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            head = line.rstrip()[:-2].rstrip()
            indent = len(line) - len(line.lstrip())
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (
                not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
            ):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                pad = " " * indent
                if head.strip():
                    out.append(head + ":")
                out.append("")
                out.append(pad + "```python")
                out.extend(
                    pad + b if b.strip() else ""
                    for b in textwrap.dedent("\n".join(block)).split("\n")
                )
                out.append(pad + "```")
                if j < len(lines):
                    out.append("")
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite reST roles and literal blocks in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as it is loaded."""
        if obj.docstring is None:
            return
        value = obj.docstring.value
        scope = obj if obj.kind in (griffe.Kind.CLASS, griffe.Kind.MODULE) else obj.parent
        path = scope.path if scope is not None else obj.path
        value = _ROLE.sub(lambda match: _role(match, path), value)
        value = _literal_blocks(value)
        obj.docstring.value = value
