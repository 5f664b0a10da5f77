"""The tutorial runs as read: each page's Python blocks, pasted into one file in page order,
are the page's program, and it does what the page shows.

"From one process to many" needs RabbitMQ and PostgreSQL: tests/docs/test_going_distributed.py
runs its page's program the same way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_snippets import pasted_output
from tests.docs.tutorial import ROOT, page_program, same_code

PAGES = ROOT / "docs" / "getting-started"
SNIPPETS = ROOT / "docs" / "snippets"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(
    ("page", "program"),
    [
        ("first-saga.md", "first_saga.py"),
        ("testing.md", "testing_kit.py"),
        ("going-distributed.md", "going_distributed.py"),
    ],
)
def test_the_pages_blocks_in_order_are_its_whole_program(page: str, program: str) -> None:
    """Nothing is left out or out of order: pasted in page order, the blocks are the program
    the page names, line for line (its docstring and comments aside)."""
    pasted = page_program(PAGES / page)
    compile(pasted, page, "exec")  # no SyntaxError (a __future__ import after code, say)
    assert same_code(pasted, (SNIPPETS / program).read_text(encoding="utf-8"))


def test_first_saga_pasted_in_page_order_prints_what_the_page_shows(tmp_path: Path) -> None:
    (tmp_path / "first_saga.py").write_text(page_program(PAGES / "first-saga.md"))

    result = run(["first_saga.py"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == pasted_output("first_saga")
    assert (tmp_path / "trips.db").exists()


def test_the_testing_pages_tests_pasted_in_page_order_pass_under_pytest(tmp_path: Path) -> None:
    """The file sits next to the first page's program and the remote-steps guide's, as the
    page says, and pytest (no configuration of ours) runs it: as many tests pass as the page
    shows."""
    (tmp_path / "first_saga.py").write_text(page_program(PAGES / "first-saga.md"))
    shutil.copy(SNIPPETS / "remote_steps.py", tmp_path / "remote_steps.py")
    (tmp_path / "testing_kit.py").write_text(page_program(PAGES / "testing.md"))
    page = (PAGES / "testing.md").read_text(encoding="utf-8")
    shown = re.search(r"<!-- pytest: testing_kit -->\n```[^\n]*\n(\d+) passed\n```", page)
    assert shown is not None

    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "testing_kit.py"], tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{shown[1]} passed in [\d.]+s", summary), summary


def test_each_tutorial_page_says_what_to_install() -> None:
    """A reader starting from a page knows what to install: pysaga from a clone or a wheel
    (and the released name), pytest on the testing page, the extras on the distributed one."""
    first = (PAGES / "first-saga.md").read_text(encoding="utf-8")
    assert "pip install /path/to/pysaga" in first
    assert "python -m build" in first
    assert "pip install pysaga-core" in first
    assert "pip install pytest" in (PAGES / "testing.md").read_text(encoding="utf-8")
    distributed = (PAGES / "going-distributed.md").read_text(encoding="utf-8")
    assert 'pip install "/path/to/pysaga[rabbitmq,postgres]"' in distributed
