"""A tutorial page's program, as a reader builds it: the page's Python blocks, in page order,
pasted into one file.

A block's ``--8<-- "path:section"`` lines are what the site shows in their place (the named
section of the file, dedented, without the section markers), as the docs build renders them.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_INCLUDE = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$')
_MARKER = re.compile(r"^\s*# --8<-- \[(?P<edge>start|end):(?P<section>[\w-]+)\]\s*$")


def section(path: Path, name: str | None) -> str:
    """The lines of *path* that ``--8<-- "path:name"`` shows (the whole file without its
    section markers when *name* is ``None``)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    inside = name is None
    kept: list[str] = []
    found = False
    for line in lines:
        marker = _MARKER.match(line)
        if marker is not None:
            if marker["section"] == name:
                inside = marker["edge"] == "start"
                found = True
            continue
        if inside:
            kept.append(line)
    if name is not None and not found:
        raise LookupError(f"{path} has no section {name!r}")
    return textwrap.dedent("".join(kept))


def python_blocks(page: Path) -> list[str]:
    """The Python code blocks of *page*, in page order, with their includes resolved."""
    blocks = []
    for fence in _FENCE.finditer(page.read_text(encoding="utf-8")):
        if fence["info"].split(" ", 1)[0].strip() != "python":
            continue
        parts = []
        for line in fence["body"].splitlines(keepends=True):
            include = _INCLUDE.match(line.strip())
            if include is None:
                parts.append(line)
            else:
                parts.append(section(ROOT / include["path"], include["section"]))
        blocks.append("".join(parts).rstrip("\n") + "\n")
    return blocks


def page_program(page: Path) -> str:
    """The file a reader gets by pasting the Python blocks of *page* in order."""
    return "\n\n".join(python_blocks(page))


def same_code(one: str, other: str) -> bool:
    """Whether two programs are the same code (comments, blank lines and the module's
    docstring aside)."""

    def tree(source: str) -> str:
        module = ast.parse(source)
        body = module.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        return ast.dump(ast.Module(body=body, type_ignores=[]))

    return tree(one) == tree(other)
