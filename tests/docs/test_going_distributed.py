"""The "From one process to many" tutorial's program runs as the page says: pasted from the
page's blocks in page order into one file, it runs as a stock and a payments service and an
orchestrator, each a process of its own, on RabbitMQ and PostgreSQL, and a fourth process that
places three orders prints what the page shows. (Killing orchestrators mid-run is what
tests/scale proves.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from tests.docs.test_snippets import pasted_output
from tests.docs.tutorial import page_program

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started" / "going-distributed.md"


@pytest.fixture
def database(postgres_database: str) -> str:
    """A database of this test's own (the parts make their schemas in it)."""
    return postgres_database


@pytest.fixture
def broker(amqp_url: str) -> str:
    """The page's broker URL, with a prefix of this test's own, as the page gives one: its
    queues (``stock``, ``payments``) never meet another run's, or another application's."""
    return f"{amqp_url}?prefix=t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def program(tmp_path: Path) -> Path:
    """The directory of the page's program, pasted from its blocks."""
    (tmp_path / "going_distributed.py").write_text(page_program(PAGE), encoding="utf-8")
    return tmp_path


def run(where: Path, role: str, broker: str, database: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "going_distributed.py", role, broker, database],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@contextmanager
def serving(where: Path, role: str, broker: str, database: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "going_distributed.py", role, broker, database],
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"{role} ready"
        yield process
    finally:
        process.kill()
        process.wait()


async def test_the_orders_end_as_the_page_says(amqp_url: str, database: str, program: Path) -> None:
    run(program, "setup", amqp_url, database)
    with (
        serving(program, "stock", amqp_url, database),
        serving(program, "payments", amqp_url, database),
        serving(program, "orchestrator", amqp_url, database),
    ):
        placed = run(program, "place", amqp_url, database)
    assert placed.stdout == pasted_output("going_distributed")
    conn = await asyncpg.connect(database)
    try:
        levels = await conn.fetchval("SELECT qty FROM levels WHERE sku = 'book'")
        charges = await conn.fetchval("SELECT count(*) FROM charges")
    finally:
        await conn.close()
    assert (levels, charges) == (1, 1)  # order 1 took two books and was charged; 2 was undone
