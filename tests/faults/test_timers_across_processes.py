"""Timers kept in the saga log, across real processes: an orchestrator is killed (SIGKILL) or
frozen (SIGSTOP) while a step waits on its timeout, and another orchestrator takes over.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from pysaga import EntryKind, Orchestrator, SagaStatus, StepStatus

from .timer_worker import LEASE, parcel_saga

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def worker(log_url: str, ship_timeout: float) -> AsyncIterator[tuple[anyio.abc.Process, str]]:
    """A worker orchestrator that started one saga; yields the process and the saga id."""
    process = await anyio.open_process(
        [sys.executable, "-m", "tests.faults.timer_worker", log_url, str(ship_timeout)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive()
        yield process, line.decode().strip()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()


async def freeze(process: anyio.abc.Process, log_url: str) -> None:
    """SIGSTOP *process* at a moment it holds no write lock on a SQLite log (a process frozen
    inside one of its short transactions, a lease renewal say, would keep every other process
    from the file for as long as it stays frozen, which is not what these tests are about)."""
    for _ in range(50):
        process.send_signal(signal.SIGSTOP)
        if not log_url.startswith("sqlite:///"):
            return
        probe = sqlite3.connect(log_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen mid-transaction: let it finish, try again
            process.send_signal(signal.SIGCONT)
            await anyio.sleep(0.02)
        finally:
            probe.close()
    raise AssertionError("the worker held the log's write lock at every try")


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'sagas.db'}"


async def test_a_step_timeout_survives_a_killed_orchestrator_and_fires_on_schedule(
    log_url: str,
) -> None:
    """The worker dies 1 s into a 6 s step timeout. The orchestrator that claims the saga
    times the step out when the first one would have, not 6 s after it took over."""
    timeout = 6.0
    async with worker(log_url, timeout) as (process, saga_id):
        await anyio.sleep(1.0)
        process.kill()
        await process.wait()
    killed_at = time.time()
    saga = parcel_saga(ship_timeout=timeout, hang=True)
    async with Orchestrator(sagas=[saga], log=log_url, lease=LEASE, claim_interval=0.2) as orch:
        with anyio.fail_after(60):
            outcome = await orch.wait(saga_id)
        history = await orch.history(saga_id)
        record = await orch.get(saga_id)
    assert outcome.status is SagaStatus.COMPENSATED
    assert outcome.failure is not None
    assert outcome.failure.type == "TimeoutError"
    (started,) = [e for e in history if e.kind is EntryKind.STEP_STARTED and e.step == "ship"]
    (failed,) = [e for e in history if e.kind is EntryKind.STEP_FAILED]
    assert failed.owner == orch.owner
    assert started.owner == "worker"
    due = started.at + timeout
    assert failed.at >= due - 0.01
    # A timer started afresh by the new holder could not fire before it claimed the saga
    # (after the dead one's lease ran out) plus the full timeout.
    assert failed.at < killed_at + timeout, "the step timed out on its first timer, not a new one"
    assert record.steps["label"].status is StepStatus.COMPENSATED
    assert all(s.timeout_at is None and s.retry_at is None for s in record.steps.values())


async def test_a_frozen_orchestrator_whose_saga_was_finished_elsewhere_drops_its_timer(
    log_url: str,
) -> None:
    """The worker is frozen (SIGSTOP) while its step waits; its lease runs out and another
    orchestrator finishes the saga. Thawed, the worker's overdue timer fires: its write is
    refused (fenced by the lease), it says so in one log line, and the saga stays completed."""
    async with worker(log_url, 3.0) as (process, saga_id):
        await anyio.sleep(0.5)
        await freeze(process, log_url)
        saga = parcel_saga(ship_timeout=30, hang=False)
        async with Orchestrator(sagas=[saga], log=log_url, lease=LEASE, claim_interval=0.2) as orch:
            with anyio.fail_after(30):
                outcome = await orch.wait(saga_id)
            assert outcome.status is SagaStatus.COMPLETED
            await anyio.sleep(3.0)  # the frozen worker's 3 s timer is overdue now
            process.send_signal(signal.SIGCONT)
            # It wakes, its timer fires, its write is refused; then it finds the saga
            # finished in the log, and its own wait for it returns: the worker exits.
            with anyio.fail_after(30):
                await process.wait()
            history = await orch.history(saga_id)
            record = await orch.get(saga_id)
    assert process.stderr is not None
    errors = (await process.stderr.receive(65536)).decode()
    assert "'worker' lost the lease on saga" in errors
    assert record.status is SagaStatus.COMPLETED
    claimed = next(i for i, e in enumerate(history) if e.kind is EntryKind.SAGA_CLAIMED)
    assert all(e.owner == orch.owner for e in history[claimed:]), (
        "fenced: no write by the old holder"
    )
    assert not any(e.kind is EntryKind.STEP_FAILED for e in history)
