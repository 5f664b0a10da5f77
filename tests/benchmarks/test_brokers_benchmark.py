"""The broker benchmark still runs against the real services and prints every row (its figures
are not checked: speed is measured by running the benchmark, never asserted in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..services import KafkaServer

REPO = Path(__file__).resolve().parents[2]
BROKERS = ("memory", "rabbitmq", "kafka")


@pytest.mark.slow
def test_benchmark_runs_and_reports_every_broker(amqp_url: str, kafka_server: KafkaServer) -> None:
    """A very short run on the test services prints, for every broker, the two message rows
    (raw client vs pysaga), the four remote-saga rows, the aims, and skips nothing."""
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/brokers.py",
            "--duration",
            "0.05",
            "--runs",
            "1",
            "--in-flight",
            "10",
            "--count",
            "200",
            "--amqp-url",
            amqp_url,
            "--kafka-url",
            kafka_server.url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    for broker in BROKERS:
        mine = [row for row in rows if row[:1] == [broker]]
        assert sum("publish" in row[1] or "produce" in row[1] for row in mine) == 1, broker
        assert sum(row[1] == "relay" for row in mine) == 1, broker
        sagas = {(row[1], row[2]) for row in mine if row[1] in ("sqlite", "memory")}
        assert sagas == {("sqlite", "1"), ("sqlite", "10"), ("memory", "1"), ("memory", "10")}
    assert "Aims" in result.stdout
    assert "skipped" not in result.stdout
