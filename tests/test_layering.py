"""The import rules of ``src/pysaga``: modules meet through public names, and never in a circle.

* No module imports another module's private name (``from .x import _name``, or
  ``x._name`` on an imported module): what one module needs from another is public in that
  module, even if the module itself is private (``_engine``, ``brokers._base``). Private
  *modules* may be imported within the package; only their names are checked.
* No import cycle among the imports that run (at module level or inside a function).
  Imports under ``if TYPE_CHECKING:`` are for the type checker only and do not count. A
  module that imports ``pysaga.a.b`` also runs ``pysaga.a`` (the subpackage's
  ``__init__``) first, so that counts too (unless the importer is inside ``pysaga.a``
  itself); the top-level ``pysaga`` package, which only names the public API and loads its
  modules when a name is first used, does not.
* Declaring a saga or a flow loads no runtime: importing ``pysaga.definition`` or
  ``pysaga.choreography`` alone loads no orchestrator, participant, observer or broker.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import pysaga

SRC = Path(pysaga.__file__).parent
ROOT = "pysaga"

KNOWN_OFFENDERS: dict[str, str] = {
    # Known private-name offenders: "importer: imported name" -> why it is allowed for now.
    # Empty this as they are fixed; an entry that no longer matches anything fails the test.
    # (No import cycle is allowed at all.)
}


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module."""
    line: int
    target: str
    """The module imported from (or imported)."""
    name: str | None
    """The name imported from *target* (``None`` for the module itself)."""
    runtime: bool
    """Whether it runs (``False`` under ``if TYPE_CHECKING:``)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, level: int, name: str | None) -> str:
    """The absolute module name of ``from <level dots><name> import ...`` in *module*."""
    if level == 0:
        return name or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _imports(module: str, source: str | None = None) -> tuple[list[Import], list[tuple[int, str]]]:
    """The imports of *module* (its file, or *source* read as if it were that module) within
    the package, and its reads of another module's private attributes (``stores._something``
    on an imported module), as (line, text)."""
    if source is None:
        source = MODULES[module].read_text()
    tree = ast.parse(source, filename=str(MODULES[module]))
    found: list[Import] = []
    aliases: dict[str, str] = {}  # local name -> the package module it is bound to

    def visit(node: ast.AST, runtime: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            if base == ROOT or base.startswith(ROOT + "."):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in MODULES:
                        found.append(Import(module, node.lineno, sub, None, runtime))
                        aliases[alias.asname or alias.name] = sub
                    else:
                        found.append(Import(module, node.lineno, base, alias.name, runtime))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    found.append(Import(module, node.lineno, alias.name, None, runtime))
                    aliases[alias.asname or alias.name] = alias.name
        for inner in ast.iter_child_nodes(node):
            visit(inner, runtime)

    visit(tree, True)
    private_reads = [
        (node.lineno, f"{node.value.id}.{node.attr}")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and _private(node.attr)
        and f"{aliases[node.value.id]}.{node.attr}" not in MODULES
    ]
    return found, private_reads


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _known(offence: str, seen: set[str]) -> bool:
    for key in KNOWN_OFFENDERS:
        if offence.startswith(key):
            seen.add(key)
            return True
    return False


def _graph() -> dict[str, set[str]]:
    """Every module's runtime imports of other modules of the package (the subpackages they
    run through included, the top-level package excluded)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for imp in _imports(module)[0]:
            if not imp.runtime:
                continue
            target = imp.target
            while target != ROOT and not module.startswith(target + "."):
                if target in MODULES and target != module:
                    graph[module].add(target)
                target = target.rpartition(".")[0]
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _path_within(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle through the first module of *component*, to show in the failure."""
    start = component[0]
    members = set(component)
    paths = [[start]]
    seen = {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & members):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    return component


def test_the_module_walk_finds_the_package() -> None:
    """The rules below read every module, the subpackages' too."""
    for expected in ("pysaga", "pysaga.definition", "pysaga.brokers._base", "pysaga.stores"):
        assert expected in MODULES
    imports, _ = _imports("pysaga.brokers._base")
    assert any(i.target == "pysaga.messaging" and i.runtime for i in imports)


def test_no_module_imports_another_modules_private_name() -> None:
    offences: list[str] = []
    seen: set[str] = set()
    for module in MODULES:
        imports, private_reads = _imports(module)
        for imp in imports:
            if imp.name is not None and _private(imp.name):
                offence = f"{module}: {imp.target}.{imp.name} (line {imp.line})"
                if not _known(offence, seen):
                    offences.append(offence)
        for line, text in private_reads:
            offence = f"{module}: {text} (line {line})"
            if not _known(offence, seen):
                offences.append(offence)
    assert not offences, (
        "modules reach into other modules' private names; make the name public in its module "
        "(no leading underscore) or move it where it is used:\n  " + "\n  ".join(offences)
    )


def test_runtime_imports_form_no_cycle() -> None:
    graph = _graph()
    circles = [" -> ".join(_path_within(graph, c)) for c in _cycles(graph)]
    assert not circles, (
        "runtime imports go round in a circle; move what both sides need to a lower module, "
        "or import it for typing only (under 'if TYPE_CHECKING:'):\n  " + "\n  ".join(circles)
    )


def test_the_known_offenders_still_offend() -> None:
    """Each allowed exception is still needed: one that was fixed is taken off the list."""
    seen: set[str] = set()
    for module in MODULES:
        imports, private_reads = _imports(module)
        for imp in imports:
            if imp.name is not None and _private(imp.name):
                _known(f"{module}: {imp.target}.{imp.name} (line {imp.line})", seen)
        for line, text in private_reads:
            _known(f"{module}: {text} (line {line})", seen)
    assert seen == set(KNOWN_OFFENDERS), sorted(set(KNOWN_OFFENDERS) - seen)


def test_the_import_reader_sees_what_the_rules_need() -> None:
    """The rules can fail: private names, private reads and typing-only imports are told
    apart in a module written for the purpose (read as if it were ``pysaga.observer``)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import _clock, stores\n"
        "from .participant import _Guards, Participant\n"
        "from .errors import __doc__\n"
        "if TYPE_CHECKING:\n"
        "    from .orchestrator import Orchestrator\n"
        "else:\n"
        "    import pysaga.definition\n"
        "def f():\n"
        "    from .models import new_saga_id\n"
        "    return stores._SCHEMES, stores.log_from, _clock.now\n"
    )
    imports, private_reads = _imports("pysaga.observer", source)
    assert {(i.target, i.name, i.runtime) for i in imports} == {
        ("pysaga._clock", None, True),
        ("pysaga.stores", None, True),
        ("pysaga.participant", "_Guards", True),
        ("pysaga.participant", "Participant", True),
        ("pysaga.errors", "__doc__", True),
        ("pysaga.orchestrator", "Orchestrator", False),
        ("pysaga.definition", None, True),
        ("pysaga.models", "new_saga_id", True),
    }
    assert [i.name for i in imports if i.name and _private(i.name)] == ["_Guards"]
    assert private_reads == [(11, "stores._SCHEMES")]


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The rule can fail: a circle drawn by hand is found, and a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _path_within(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", ["pysaga.definition", "pysaga.choreography"])
def test_a_declaration_loads_no_runtime(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "runtime = ('pysaga.orchestrator', 'pysaga.participant', 'pysaga.observer',"
        " 'pysaga._engine', 'pysaga.brokers')\n"
        "print(sorted(m for m in sys.modules if m.startswith(runtime)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {module} loaded {out.stdout.strip()}"


def test_the_public_names_still_load_everything() -> None:
    """``import pysaga`` names its API lazily, and each name is there when asked for."""
    code = (
        "import sys, pysaga\n"
        "assert 'pysaga.orchestrator' not in sys.modules\n"
        "from pysaga import Orchestrator, ChoreographyObserver\n"
        "assert Orchestrator.__module__ == 'pysaga', Orchestrator.__module__\n"
        "print(sorted(n for n in pysaga.__all__ if not hasattr(pysaga, n)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
