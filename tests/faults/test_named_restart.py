"""Restarts with real processes: an orchestrator is SIGKILLed in the middle of a few hundred
sagas and started again, and every saga must finish, once, promptly.

* Under the same ``owner=`` name (SQLite and PostgreSQL): the new process is a new
  incarnation of that name; it takes its predecessor's sagas back as it starts, without
  waiting for their leases (15 s by default) to run out, and resumes the first one in under
  2 s. Before incarnations, it renewed those leases without driving the sagas, and they
  stayed ``running`` for good.
* Two named replicas on PostgreSQL, one killed and brought back under its name while the
  other runs on: the killed one's sagas are taken back by its new incarnation, the other
  replica never touches them, and all finish.
* Under a random name: the new process resumes the dead one's sagas as soon as their leases
  lapse (its claim wakes at the earliest expiry), so within one lease of the kill.

Each worker (``restart_worker.py``) journals every step effect with its pid, so the checks
can tell a step run again because it was in doubt at the kill (allowed: once more, by the
new process) from any other repeat (not allowed).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pysaga import EntryKind, SagaStatus
from pysaga.models import ACTIVE_STATUSES
from pysaga.stores import from_url

from .restart_worker import SAGA_NAME, STEPS, Journal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pysaga import LogEntry, SagaLog, SagaRecord

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAGAS = 300
FIRST_RESUME_WITHIN = 2.0
"""Seconds from a named restart's spawn to its first claim of a predecessor's saga."""


@dataclass
class Life:
    """One process of the test: an orchestrator's life, from spawn to exit or kill."""

    name: str
    process: anyio.abc.Process
    lines: BufferedByteReceiveStream
    spawned_at: float
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    @property
    def incarnation(self) -> str:
        return str(self.ready["incarnation"])

    async def expect(self, key: str, within: float) -> dict[str, Any]:
        """The next line of the process (within *within* seconds), which must carry *key*."""
        with anyio.fail_after(within):
            raw = await self.lines.receive_until(b"\n", 1 << 16)
        line: dict[str, Any] = json.loads(raw)
        assert key in line, f"{self.name}: expected {key!r}, got {line}"
        return line

    async def kill(self) -> float:
        """SIGKILL; returns when it was sent."""
        killed_at = time.time()
        self.process.kill()
        await self.process.wait()
        return killed_at


class Run:
    """The test's processes and the shared saga log and effects file."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.effects = tmp_path / "effects.db"
        self.lives: list[Life] = []
        # Made (in WAL mode, with its table) before any worker opens it: two workers switching
        # a new file to WAL at the same moment can meet "database is locked" without waiting.
        Journal(str(self.effects)).conn.close()

    async def spawn(
        self, name: str, *, owner: str | None, lease: float | None, sagas: tuple[int, int]
    ) -> Life:
        config = {
            "log": self.url,
            "effects": str(self.effects),
            "owner": owner,
            "lease": lease,
            "sagas": list(sagas),
            "total": SAGAS,
        }
        spawned_at = time.time()
        process = await anyio.open_process(
            [sys.executable, "-m", "tests.faults.restart_worker", json.dumps(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(self.tmp_path / f"{name}.stderr").open("ab"),
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        )
        assert process.stdout is not None
        life = Life(name, process, BufferedByteReceiveStream(process.stdout), spawned_at)
        self.lives.append(life)
        life.ready = await life.expect("ready", 60)
        return life

    def stderr(self, name: str) -> str:
        return (self.tmp_path / f"{name}.stderr").read_text()[-3000:]

    async def stop_all(self) -> None:
        for life in self.lives:
            if life.process.returncode is None:
                life.process.kill()
                await life.process.wait()


@asynccontextmanager
async def running(url: str, tmp_path: Path) -> AsyncIterator[tuple[Run, SagaLog]]:
    run = Run(url, tmp_path)
    log = from_url(url)
    try:
        async with log:
            yield run, log
    finally:
        with anyio.CancelScope(shield=True):
            await run.stop_all()


async def wait_for_completed(log: SagaLog, at_least: int) -> None:
    """Until *at_least* sagas completed: the kill then lands in the middle of the run."""
    with anyio.fail_after(60):
        while True:  # the log is written by another process: it can only be polled
            if (await log.counts(name=SAGA_NAME)).get(SagaStatus.COMPLETED, 0) >= at_least:
                return
            await anyio.sleep(0.02)


async def kill_after_a_renewal(life: Life, log: SagaLog) -> float:
    """Kill *life* just after it renewed its leases, so that they lapse a whole lease after
    the kill (a periodic look for lapsed leases is then at its worst: it comes after they
    lapsed, not just as they do)."""
    with anyio.fail_after(30):
        last = max(r.lease_expires_at for r in await unfinished(log))
        while True:
            await anyio.sleep(0.01)
            now = max(r.lease_expires_at for r in await unfinished(log))
            if now > last + 0.2:
                return await life.kill()
            last = now


async def unfinished(log: SagaLog) -> list[SagaRecord]:
    return await log.list(name=SAGA_NAME, statuses=ACTIVE_STATUSES, limit=10 * SAGAS)


@dataclass
class Verdict:
    """What the checks found, for the figures the tests report."""

    histories: dict[str, list[LogEntry]]
    repeats: int

    def claims_after(self, at: float) -> list[tuple[str, LogEntry]]:
        """Every claim written at or after *at*, oldest first."""
        found = [
            (saga_id, e)
            for saga_id, history in self.histories.items()
            for e in history
            if e.kind is EntryKind.SAGA_CLAIMED and e.at >= at
        ]
        return sorted(found, key=lambda pair: pair[1].at)


async def verify(run: Run, log: SagaLog, *, killed: Life, in_doubt: set[str]) -> Verdict:
    """Every saga completed once, each step succeeded once in the log, and each step's effect
    ran once, or twice when its saga was in flight at the kill (first by the killed process,
    then by its successor)."""
    records = await log.list(name=SAGA_NAME, limit=10 * SAGAS)
    assert len(records) == SAGAS
    problems = [
        f"{r.saga_id} is {r.status}" for r in records if r.status is not SagaStatus.COMPLETED
    ]
    histories = {r.saga_id: await log.history(r.saga_id) for r in records}
    for saga_id, history in histories.items():
        kinds = Counter(e.kind for e in history)
        if kinds[EntryKind.SAGA_STARTED] != 1 or kinds[EntryKind.SAGA_COMPLETED] != 1:
            problems.append(f"{saga_id}: {dict(kinds)}")
        elif history[-1].kind is not EntryKind.SAGA_COMPLETED:
            problems.append(f"{saga_id}: ends with {history[-1].kind}")
        succeeded = Counter(e.step for e in history if e.kind is EntryKind.STEP_SUCCEEDED)
        if succeeded != dict.fromkeys(STEPS, 1):
            problems.append(f"{saga_id}: steps succeeded {dict(succeeded)}")
    conn = sqlite3.connect(run.effects)
    try:
        rows = conn.execute("SELECT saga_id, step, pid FROM journal ORDER BY seq").fetchall()
    finally:
        conn.close()
    effects: dict[tuple[str, str], list[int]] = defaultdict(list)
    for saga_id, step, pid in rows:
        effects[saga_id, step].append(pid)
    repeats = 0
    for saga_id in histories:
        for step in STEPS:
            pids = effects.get((saga_id, step), [])
            if not pids:
                problems.append(f"{saga_id}.{step}: its effect never ran")
            elif len(pids) > 1:
                repeats += 1
                if (
                    saga_id not in in_doubt
                    or len(pids) != 2
                    or pids[0] != killed.pid
                    or pids[1] == killed.pid
                ):
                    problems.append(f"{saga_id}.{step}: ran in processes {pids}")
    assert not problems, f"{len(problems)} problems, first: {problems[:10]}"
    return Verdict(histories, repeats)


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagas.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_a_named_orchestrator_killed_and_restarted_takes_its_sagas_back_at_once(
    log_url: str, tmp_path: Path
) -> None:
    """``Orchestrator(owner="orch-1")`` (default 15 s lease) is SIGKILLed with most of its
    300 sagas in flight and started again under the same name: it resumes them at once, not
    after their leases ran out, and each finishes once."""
    async with running(log_url, tmp_path) as (run, log):
        first = await run.spawn("orch-1-first", owner="orch-1", lease=None, sagas=(0, SAGAS))
        assert (await first.expect("started", 120))["started"] == SAGAS
        await wait_for_completed(log, 20)
        killed_at = await first.kill()
        left = await unfinished(log)
        assert len(left) >= 100, f"only {len(left)} sagas in flight at the kill"
        assert {(r.owner, r.incarnation) for r in left} == {("orch-1", first.incarnation)}
        held_until = min(r.lease_expires_at for r in left)

        second = await run.spawn("orch-1-second", owner="orch-1", lease=None, sagas=(0, SAGAS))
        assert second.incarnation != first.incarnation
        assert (await second.expect("started", 60))["started"] == 0
        done = await second.expect("done", 120)

        verdict = await verify(run, log, killed=first, in_doubt={r.saga_id for r in left})
    claims = verdict.claims_after(killed_at)
    assert {saga_id for saga_id, _ in claims} == {r.saga_id for r in left}
    assert all(e.owner == "orch-1" for _, e in claims)
    first_resume = claims[0][1].at - second.spawned_at
    print(
        f"\n{log_url.split(':')[0]}: {len(left)} sagas in flight at the kill; first resumed "
        f"{first_resume:.2f} s after the restart (leases held for {held_until - killed_at:.1f}"
        f" s more), all {len(left)} claimed {claims[-1][1].at - second.spawned_at:.2f} s "
        f"after it, last saga done {done['at'] - second.spawned_at:.2f} s after it; "
        f"{verdict.repeats} step effects re-run (in doubt at the kill)"
    )
    assert first_resume < FIRST_RESUME_WITHIN
    assert claims[-1][1].at < held_until, "the restart waited for the old leases to lapse"


async def test_two_named_replicas_on_postgres_one_killed_and_back_under_its_name(
    postgres_url: str, tmp_path: Path
) -> None:
    """``replica-1`` and ``replica-2`` share a PostgreSQL log, 150 sagas each. ``replica-1``
    is SIGKILLed mid-run and started again under its name while ``replica-2`` runs on: its
    new incarnation takes its sagas back at once, ``replica-2`` never writes to them, and
    all 300 finish once."""
    half = SAGAS // 2
    async with running(postgres_url, tmp_path) as (run, log):
        one, two = await together(
            run.spawn("replica-1-first", owner="replica-1", lease=None, sagas=(0, half)),
            run.spawn("replica-2", owner="replica-2", lease=None, sagas=(half, half)),
        )
        assert (await one.expect("started", 120))["started"] == half
        assert (await two.expect("started", 120))["started"] == half
        await wait_for_completed(log, 20)
        killed_at = await one.kill()
        left = await unfinished(log)
        orphans = {r.saga_id for r in left if r.owner == "replica-1"}
        assert len(orphans) >= 50, f"only {len(orphans)} of replica-1's sagas in flight"
        assert {r.incarnation for r in left if r.owner == "replica-1"} == {one.incarnation}

        back = await run.spawn("replica-1-back", owner="replica-1", lease=None, sagas=(0, half))
        assert (await back.expect("started", 60))["started"] == 0
        await back.expect("done", 120)
        await two.expect("done", 120)

        verdict = await verify(run, log, killed=one, in_doubt=orphans)
    claims = verdict.claims_after(killed_at)
    assert {saga_id for saga_id, _ in claims} == orphans
    assert all(e.owner == "replica-1" for _, e in claims)
    for saga_id in orphans:  # after the kill, only replica-1 (back) wrote to its sagas
        late = [e for e in verdict.histories[saga_id] if e.at >= killed_at]
        assert {e.owner for e in late} == {"replica-1"}, saga_id
    for n in range(half, SAGAS):
        assert {e.owner for e in verdict.histories[f"order-{n}"]} == {"replica-2"}
    first_resume = claims[0][1].at - back.spawned_at
    print(
        f"\nreplicas: {len(orphans)} of replica-1's sagas in flight at the kill; first resumed "
        f"{first_resume:.2f} s after its restart, all {len(orphans)} within "
        f"{claims[-1][1].at - back.spawned_at:.2f} s; {verdict.repeats} step effects re-run"
    )
    assert first_resume < FIRST_RESUME_WITHIN


async def test_an_orchestrator_restarted_under_a_random_name_resumes_within_one_lease(
    log_url: str, tmp_path: Path
) -> None:
    """A random-named orchestrator (``lease=3``) is SIGKILLed mid-run, just after it renewed
    its leases; its successor, under another random name, claims each saga as soon as its
    lease lapses, so within one lease of the kill, not at its next periodic look (which,
    every ``lease / 2``, would come up to a second after the lapse)."""
    lease = 3.0
    async with running(log_url, tmp_path) as (run, log):
        first = await run.spawn("first", owner=None, lease=lease, sagas=(0, SAGAS))
        assert (await first.expect("started", 120))["started"] == SAGAS
        await wait_for_completed(log, 20)
        killed_at = await kill_after_a_renewal(first, log)
        left = await unfinished(log)
        assert len(left) >= 100, f"only {len(left)} sagas in flight at the kill"
        lapse = min(r.lease_expires_at for r in left)

        second = await run.spawn("second", owner=None, lease=lease, sagas=(0, SAGAS))
        assert second.ready["ready"] != first.ready["ready"]
        assert (await second.expect("started", 60))["started"] == 0
        await second.expect("done", 120)

        verdict = await verify(run, log, killed=first, in_doubt={r.saga_id for r in left})
    claims = verdict.claims_after(killed_at)
    assert {saga_id for saga_id, _ in claims} == {r.saga_id for r in left}
    assert {e.owner for _, e in claims} == {second.ready["ready"]}
    first_claim = claims[0][1].at
    print(
        f"\n{log_url.split(':')[0]}: {len(left)} sagas in flight; the first lease lapsed "
        f"{lapse - killed_at:.2f} s after the kill, the first claim came "
        f"{first_claim - lapse:.3f} s later, the last {claims[-1][1].at - killed_at:.2f} s "
        f"after the kill (lease {lease:g} s)"
    )
    assert first_claim >= lapse  # no saga was taken from a live lease
    assert first_claim - lapse < 0.8  # a periodic look would come 1 s or more after it
    assert claims[-1][1].at - killed_at < lease + 0.5


async def together(*calls: Any) -> list[Any]:
    """Run the awaitables *calls* concurrently; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int, call: Any) -> None:
        results[index] = await call

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(one, index, call)
    return results
