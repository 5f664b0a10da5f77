"""docs/getting-started/testing.md: the page's test file, as a user would write it with only
the plugin's fixtures, passes under pytest on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "docs" / "snippets" / "testing_kit.py"


def test_the_pages_test_file_passes_under_pytest() -> None:
    """Run by pytest in a process of its own, it collects its eight tests and all pass; the
    fixtures it uses come from the installed plugin (no conftest.py is on its path)."""
    assert not (SNIPPET.parent / "conftest.py").exists()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(SNIPPET)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout
