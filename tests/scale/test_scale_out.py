"""Scale-out and survival: three orchestrator processes and two services share one PostgreSQL
database and one broker (RabbitMQ, or a Kafka-protocol broker) and run 500 purchases.

While they run, the test does harm: it kills an orchestrator with SIGKILL and starts it again,
or it cuts every broker connection and terminates every PostgreSQL connection. Then it checks:

* every saga ended, none FAILED;
* the history of each saga shows one driver at a time: after an orchestrator claimed it, no
  entry by anyone else until the next claim (fencing by lease and revision);
* every effect in the services' own tables happened exactly once net, by idempotency key: a
  completed order reserved and charged once, a compensated one reserved at most once and
  released what it reserved, and charged never;
* stock and money are conserved.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import asyncpg
import pytest

from pysaga import EntryKind, SagaStatus
from pysaga.stores.postgres import PostgresSagaLog
from tests.brokers.rabbit_tools import close_connections

from .shop import BALANCES, STOCK, TABLES, plan

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 500
ORCHESTRATORS = 3


@dataclass
class Worker:
    """One process of the run, started again under the same arguments if need be."""

    name: str
    args: list[str]
    logs: Path
    """Where the process writes its log (every life appends to it)."""
    process: anyio.abc.Process | None = None
    lives: int = 0

    async def start(self) -> None:
        self.lives += 1
        self.process = await anyio.open_process(
            [sys.executable, "-m", "tests.scale.worker", *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.logs.open("ab"),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.process.stdout is not None
        with anyio.fail_after(60):
            line = b""
            while not line.endswith(b"ready\n"):
                chunk = await self.process.stdout.receive()
                line += chunk

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        with anyio.move_on_after(30):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def schema_of(database: str) -> str:
    return parse_qs(urlsplit(database).query)["schema"][0]


async def prepare(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(TABLES)
        await conn.executemany("INSERT INTO shop_stock VALUES ($1, $2)", list(STOCK.items()))
        await conn.executemany("INSERT INTO shop_balances VALUES ($1, $2)", list(BALANCES.items()))
    finally:
        await conn.close()


@asynccontextmanager
async def shop_run(
    broker: str, database: str, tmp_path: Path
) -> AsyncIterator[tuple[list[Worker], list[Worker], str]]:
    """The services and the orchestrators, started; all stopped on the way out."""
    suffix = uuid.uuid4().hex[:8]
    orders = plan(ORDERS, seed=7)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps([o.model_dump() for o in orders]))
    services = [
        Worker(kind, ["participant", kind, suffix, broker, database], tmp_path / f"{kind}.log")
        for kind in ("stock", "payment")
    ]
    share = -(-ORDERS // ORCHESTRATORS)
    orchestrators = [
        Worker(
            f"orchestrator-{n}",
            ["orchestrator", suffix, broker, database, str(plan_file), str(n * share), str(share)],
            tmp_path / f"orchestrator-{n}.log",
        )
        for n in range(ORCHESTRATORS)
    ]
    try:
        for w in services:
            await w.start()
        async with anyio.create_task_group() as tg:
            for w in orchestrators:
                tg.start_soon(w.start)
        yield services, orchestrators, f"purchase-{suffix}"
    finally:
        with anyio.CancelScope(shield=True):
            for w in [*orchestrators, *services]:
                await w.stop()


async def finished(log: PostgresSagaLog, name: str) -> int:
    counts = await log.counts(name=name)
    return sum(n for status, n in counts.items() if status.is_terminal)


async def wait_until(log: PostgresSagaLog, name: str, done: int, within: float) -> None:
    """Poll the log until *done* sagas of *name* ended (another process drives them)."""
    with anyio.fail_after(within):
        while await finished(log, name) < done:  # noqa: ASYNC110 - the log is in another process
            await anyio.sleep(0.2)


async def audit(dsn: str, database: str, name: str) -> Counter[str]:
    """Check the run (see the module's docstring); return how many sagas ended each way and
    how many were taken over by another orchestrator."""
    schema = schema_of(database)
    orders = {o.order_id: o for o in plan(ORDERS, seed=7)}
    async with PostgresSagaLog.from_url(database) as log:
        counts = await log.counts(name=name)
        assert sum(counts.values()) == ORDERS
        if not set(counts) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}:
            failed = await log.list(name=name, status=SagaStatus.FAILED, limit=5)
            reasons = Counter(
                str(r.failure)
                for r in await log.list(name=name, status=SagaStatus.FAILED, limit=ORDERS)
            )
            pytest.fail(f"{counts}; why: {dict(reasons)}; e.g. {failed[:1]}")
        assert counts.get(SagaStatus.COMPLETED, 0) > 0
        assert counts.get(SagaStatus.COMPENSATED, 0) > 0
        records = await log.list(name=name, limit=ORDERS + 1)
        status = {r.saga_id: r.status for r in records}
        two_drivers = []
        summary: Counter[str] = Counter(s.value for s in status.values())
        for saga_id in status:
            holder = None
            for entry in await log.history(saga_id):
                if entry.kind is EntryKind.SAGA_CLAIMED:
                    summary["taken over"] += 1
                if entry.kind in (EntryKind.SAGA_STARTED, EntryKind.SAGA_CLAIMED):
                    holder = entry.owner
                elif entry.owner != holder:
                    two_drivers.append((saga_id, entry.kind, entry.owner, holder))
        assert not two_drivers, f"written by a non-holder: {two_drivers[:5]}"
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        moves = await conn.fetch("SELECT key, kind, sku, qty FROM shop_stock_moves")
        payments = await conn.fetch("SELECT key, kind, customer, amount FROM shop_payments")
        levels = dict(await conn.fetch("SELECT sku, level FROM shop_stock"))
        balances = dict(await conn.fetch("SELECT customer, balance FROM shop_balances"))
        outbox = await conn.fetchval("SELECT count(*) FROM pysaga_outbox")
    finally:
        await conn.close()
    rows = Counter((r["key"], r["kind"]) for r in [*moves, *payments])
    assert [k for k, n in rows.items() if n > 1] == [], "an effect happened twice"
    sold: Counter[str] = Counter()
    paid: Counter[str] = Counter()
    by_saga: dict[str, set[str]] = defaultdict(set)
    for key, kind in rows:
        by_saga[key.split("/")[0]].add(kind)
    for saga_id, st in status.items():
        o = orders[saga_id]
        kinds = by_saga[saga_id]
        if st is SagaStatus.COMPLETED:
            assert kinds == {"reserve", "charge"}, (saga_id, kinds)
            sold[o.sku] += o.qty
            paid[o.customer] += o.amount
        else:
            assert "charge" not in kinds, (saga_id, kinds)
            assert kinds in (set(), {"release"}, {"reserve", "release"}), (saga_id, kinds)
    assert {sku: STOCK[sku] - levels[sku] for sku in STOCK} == {sku: sold[sku] for sku in STOCK}
    assert {c: BALANCES[c] - balances[c] for c in BALANCES} == {c: paid[c] for c in BALANCES}
    assert outbox == 0, "every reply left the outbox"
    return summary


Harm = Callable[[list[Worker], list[Worker], PostgresSagaLog, str], Awaitable[None]]


async def run_and_audit(
    broker: str, database: str, dsn: str, tmp_path: Path, harm: Harm
) -> tuple[list[Worker], Counter[str]]:
    await prepare(dsn, schema_of(database))
    async with (
        shop_run(broker, database, tmp_path) as (services, orchestrators, name),
        PostgresSagaLog.from_url(database) as log,
    ):
        await harm(services, orchestrators, log, name)
        try:
            await wait_until(log, name, ORDERS, within=180)
        except TimeoutError:
            stuck = await log.list(
                name=name, statuses=[SagaStatus.RUNNING, SagaStatus.COMPENSATING]
            )
            for record in stuck[:3]:
                print(record)
                for entry in await log.history(record.saga_id):
                    print("   ", entry)
            for w in [*services, *orchestrators]:
                if w.process is not None and w.process.returncode is None:
                    w.process.send_signal(signal.SIGUSR1)
            await anyio.sleep(1)
            for w in [*services, *orchestrators]:
                await w.stop()
                print(f"---- {w.name}: {w.logs}")
            raise
    summary = await audit(dsn, database, name)
    print(f"{broker.split(':')[0]}: {dict(summary)}")
    return orchestrators, summary


async def test_an_orchestrator_killed_mid_run_loses_nothing_and_repeats_nothing(
    real_broker_url: str, postgres_url: str, postgres_dsn: str, tmp_path: Path
) -> None:
    """SIGKILL one of three orchestrators a fifth of the way in, then start it again."""

    async def kill_one(
        services: list[Worker], orchestrators: list[Worker], log: PostgresSagaLog, name: str
    ) -> None:
        await wait_until(log, name, ORDERS // 5, within=180)
        victim = orchestrators[1]
        await victim.kill()
        await anyio.sleep(0.5)
        await victim.start()

    orchestrators, summary = await run_and_audit(
        real_broker_url, postgres_url, postgres_dsn, tmp_path, kill_one
    )
    assert orchestrators[1].lives == 2
    assert summary["taken over"] > 0, "the killed orchestrator's sagas were claimed again"


async def test_connections_cut_mid_run_lose_nothing(
    real_broker_url: str,
    postgres_url: str,
    postgres_dsn: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A fifth of the way in, every PostgreSQL connection of the run is terminated and every
    broker connection is lost (RabbitMQ closes each worker's connection; the Kafka-protocol
    broker is frozen for three seconds, so the clients' requests time out)."""
    schema = schema_of(postgres_url)

    async def cut(
        services: list[Worker], orchestrators: list[Worker], log: PostgresSagaLog, name: str
    ) -> None:
        await wait_until(log, name, ORDERS // 5, within=180)
        conn = await asyncpg.connect(postgres_dsn)
        try:
            terminated = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE $1",
                f"pysaga % {schema}",
            )
        finally:
            await conn.close()
        assert terminated >= ORCHESTRATORS + len(services)
        workers = [*services, *orchestrators]
        if real_broker_url.startswith("amqp"):
            closed = 0
            for w in workers:
                assert w.process is not None
                closed += await close_connections(
                    f"pysaga {socket.gethostname()} pid {w.process.pid}"
                )
            assert closed == len(workers)
        else:
            server = request.getfixturevalue("kafka_server")
            server.pause()
            try:
                await anyio.sleep(3.0)
            finally:
                server.resume()

    await run_and_audit(real_broker_url, postgres_url, postgres_dsn, tmp_path, cut)
