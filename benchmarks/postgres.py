"""How close does pysaga's PostgreSQL saga log come to raw asyncpg on the same server?

Four figures, each the median of several runs (runs interleave, so slow drift hits every
figure alike):

* **raw asyncpg, 1 row per transaction**: one connection inserting one history-sized row per
  statement (each its own transaction), one at a time: the server's commit rate for a lone
  writer;
* **raw asyncpg, 100 rows per transaction**: the same rows, 100 to a transaction
  (``executemany`` inside ``BEGIN``/``COMMIT``): what batching buys on this server;
* **pysaga log, 1 saga in flight**: sagas written as a 3-step saga writes them (one create,
  then five updates, each with one history entry), one saga at a time;
* **pysaga log, 100 sagas in flight**: the same with 100 concurrent sagas, whose writes share
  transactions (group commit).

The pysaga figures are log writes per second (a create or an update: a saga row written and a
history row appended), with the ratio to the raw rows/s of the matching raw figure (1 in
flight to 1 row per transaction, 100 in flight to 100 rows per transaction).

    .venv/bin/python benchmarks/postgres.py [--dsn URL] [--duration 2] [--runs 3]
        [--in-flight 100]

The DSN defaults to ``PYSAGA_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/test``.
Everything is written to a schema of the run's own, dropped at the end. Nothing here is a
test: numbers depend on the machine, its load and the server's settings (``synchronous_commit``
above all). Compare them within one run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import asyncpg

from pysaga import EntryKind, LogEntry, SagaRecord, SagaStatus, SagaUpdate, StepState, StepStatus
from pysaga.stores.postgres import PostgresSagaLog

DEFAULT_DSN = os.environ.get("PYSAGA_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
UPDATES_PER_SAGA = 5
"""A 3-step saga's writes after its create: start and outcome of each step, less one (the
last outcome and the completion are one write)."""
PAYLOAD = "x" * 120
"""The raw rows' text column: about what a history entry holds."""


@dataclass
class Cell:
    """One figure: its samples (rows or log writes per second), one per run."""

    name: str
    in_flight: int
    samples: list[float] = field(default_factory=list)
    writes: int = 0
    batches: int = 0

    @property
    def rate(self) -> float:
        return statistics.median(self.samples)


# -- raw asyncpg -----------------------------------------------------------------------------


async def raw_rate(conn: asyncpg.Connection, rows_per_txn: int, duration: float) -> float:
    """Rows per second inserted on *conn*, *rows_per_txn* to a transaction."""
    insert = "INSERT INTO raw_log (saga_id, at, kind, payload) VALUES ($1, $2, $3, $4)"
    ids = itertools.count()
    prefix = uuid.uuid4().hex[:8]
    done = 0
    started = time.perf_counter()
    stop_at = started + duration
    while time.perf_counter() < stop_at:
        if rows_per_txn == 1:
            await conn.execute(insert, f"{prefix}-{next(ids)}", time.time(), "step", PAYLOAD)
        else:
            rows = [
                (f"{prefix}-{next(ids)}", time.time(), "step", PAYLOAD) for _ in range(rows_per_txn)
            ]
            async with conn.transaction():
                await conn.executemany(insert, rows)
        done += rows_per_txn
    return done / (time.perf_counter() - started)


# -- the pysaga log --------------------------------------------------------------------------


def _saga_writes(log: PostgresSagaLog, saga_id: str) -> Callable[[], Awaitable[None]]:
    async def write() -> None:
        now = time.time()
        record = SagaRecord(
            saga_id,
            "bench",
            1,
            SagaStatus.RUNNING,
            '{"order_id":1,"qty":1,"reserved":false}',
            owner="bench",
            lease_expires_at=now + 30.0,
            created_at=now,
            updated_at=now,
        )
        await log.create(record, [LogEntry(EntryKind.SAGA_STARTED, at=now, owner="bench")])
        revision = 0
        for n in range(UPDATES_PER_SAGA):
            name = f"step{n // 2}"
            started = n % 2 == 0
            state = StepState(StepStatus.STARTED if started else StepStatus.SUCCEEDED, 1, 0)
            kind = EntryKind.STEP_STARTED if started else EntryKind.STEP_SUCCEEDED
            last = n == UPDATES_PER_SAGA - 1
            update = SagaUpdate(
                [LogEntry(kind, at=time.time(), step=name, attempt=1, owner="bench")],
                status=SagaStatus.COMPLETED if last else None,
                steps={name: state},
                data='{"order_id":1,"qty":1,"reserved":true}' if not started else None,
            )
            revision = await log.update(saga_id, update, revision=revision, owner="bench")

    return write


async def log_rate(log: PostgresSagaLog, in_flight: int, duration: float) -> float:
    """Log writes per second with *in_flight* sagas being written at a time."""
    prefix = uuid.uuid4().hex[:8]
    ids = itertools.count()
    sagas = 0
    stop_at = time.perf_counter() + duration

    async def loop() -> None:
        nonlocal sagas
        while time.perf_counter() < stop_at:
            await _saga_writes(log, f"{prefix}-{next(ids)}")()
            sagas += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(loop)
    return sagas * (1 + UPDATES_PER_SAGA) / (time.perf_counter() - started)


# -- the run ---------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> None:
    schema = f"pysaga_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.dsn)
    try:
        version = await admin.fetchval("SHOW server_version")
        synchronous_commit = await admin.fetchval("SHOW synchronous_commit")
        cells = [
            Cell("raw asyncpg, 1 row/txn", 1),
            Cell("raw asyncpg, 100 rows/txn", 100),
            Cell("pysaga log", 1),
            Cell("pysaga log", args.in_flight),
        ]
        total = len(cells) * args.runs * args.duration
        print(
            f"pysaga PostgreSQL benchmark: {len(cells)} figures x {args.runs} runs x "
            f"{args.duration:g} s (about {total:.0f} s); PostgreSQL {version}, "
            f"synchronous_commit={synchronous_commit}",
            file=sys.stderr,
        )
        url = f"{args.dsn}{'&' if '?' in args.dsn else '?'}schema={schema}"
        async with PostgresSagaLog(url) as log:
            await admin.execute(
                f"CREATE TABLE {schema}.raw_log (id bigserial PRIMARY KEY, saga_id text NOT NULL,"
                " at double precision NOT NULL, kind text NOT NULL, payload text NOT NULL)"
            )
            raw = await asyncpg.connect(args.dsn, server_settings={"search_path": schema})
            try:
                await raw_rate(raw, 1, args.duration / 10)  # warm up: connection, plans
                await log_rate(log, args.in_flight, args.duration / 10)
                for number in range(args.runs):  # runs interleave: drift hits all alike
                    for cell in cells:
                        if cell.name.startswith("raw"):
                            cell.samples.append(await raw_rate(raw, cell.in_flight, args.duration))
                            continue
                        batches, writes = log.commits.batches, log.commits.writes
                        cell.samples.append(await log_rate(log, cell.in_flight, args.duration))
                        cell.batches += log.commits.batches - batches
                        cell.writes += log.commits.writes - writes
                    print(f"  run {number + 1}/{args.runs} done", file=sys.stderr)
            finally:
                await raw.close()
        report(args, cells, version, synchronous_commit)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def report(
    args: argparse.Namespace, cells: list[Cell], version: str, synchronous_commit: str
) -> None:
    raw_one, raw_many, one, many = cells
    headers = ("figure", "in flight", "rows or writes/s", "x raw", "writes/batch")
    rows = [
        (raw_one.name, "1", f"{raw_one.rate:,.0f}", "", ""),
        (raw_many.name, "1", f"{raw_many.rate:,.0f}", "", ""),
    ]
    for cell, ceiling in ((one, raw_one), (many, raw_many)):
        rows.append(
            (
                f"{cell.name}, {cell.in_flight} in flight",
                str(cell.in_flight),
                f"{cell.rate:,.0f}",
                f"{cell.rate / ceiling.rate:.2f}",
                f"{cell.writes / max(1, cell.batches):.1f}",
            )
        )
    print(
        f"\nPostgreSQL {version}, synchronous_commit={synchronous_commit}; Python "
        f"{platform.python_version()}; medians of {args.runs} runs x {args.duration:g} s.\n"
        "raw: rows/s inserted on one connection; pysaga log: log writes/s (1 create + "
        f"{UPDATES_PER_SAGA} updates per saga, each with a history entry); x raw = the log's "
        "rate over the raw figure above it of the same batching (1 in flight: 1 row/txn; "
        "many in flight: 100 rows/txn)\n"
    )
    print(_table(headers, rows, left={0}))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> str:
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="the PostgreSQL server to use")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per figure per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--in-flight", type=int, default=100, help="concurrent sagas")
    args = parser.parse_args(argv)
    anyio.run(benchmark, args)


if __name__ == "__main__":
    main()
