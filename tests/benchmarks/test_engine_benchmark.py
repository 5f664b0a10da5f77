"""The engine benchmark still runs and prints its comparison (its figures are not checked:
speed is measured by running the benchmark, never asserted in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_runs_and_reports_every_contender() -> None:
    """A very short run prints every contender on both paths, the store's ceiling and the
    aims."""
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/engine.py",
            "--duration",
            "0.05",
            "--runs",
            "1",
            "--in-flight",
            "10",
            "--waiting",
            "200",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for contender in (
        "hand-written floor",
        "hand-written fsync'd JSON lines",
        "pysaga memory",
        "pysaga sqlite normal",
        "pysaga sqlite full",
    ):
        assert out.count(contender) >= 4, contender  # 2 paths x 2 concurrency levels
    assert "Store ceiling" in out
    assert "Aims" in out
    assert "vs the fsync'd JSON-lines floor" in out
    assert out.count("memory per in-flight saga waiting on a slow step") == 2
