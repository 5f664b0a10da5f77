"""How much does pysaga cost per saga, and how close does SQLite get to its own ceiling?

One 3-step saga (two compensatable steps, then a pivot; each does trivial work) is run for a
fixed time, again and again:

* by a hand-written asyncio try/except version: the floor, with no durability at all;
* by pysaga on the in-memory saga log (``memory://``): the engine's own cost;
* by pysaga on SQLite, ``synchronous=normal`` (the default) and ``synchronous=full``;

each one saga at a time and with many in flight, on the success path and on the compensation
path (the pivot raises ``BusinessError``, so two compensations run). Every cell is the median
of several runs. Next to them: SQLite's group commit (log writes per saga, writes per commit),
and the stdlib ``sqlite3`` rate of one-row-per-transaction inserts on a WAL file measured in
the same run: the ceiling the SQLite saga log works under.

    .venv/bin/python benchmarks/engine.py [--duration 2] [--runs 3] [--in-flight 100]
    .venv/bin/python benchmarks/engine.py --profile memory     # where one saga's time goes

Nothing here is a test: numbers depend on the machine. Compare them within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Saga, SagaStatus, StepContext
from pysaga.stores.sqlite import SQLiteSagaLog

AIM_ONE_AT_A_TIME = 600
"""SQLite (synchronous=normal), success path, one saga at a time: sagas/s we aim at or above."""
AIM_IN_FLIGHT = 4_000
"""The same with 100 sagas in flight."""
AIM_MEMORY = 60_000
"""The in-memory log, success path, one saga at a time: the engine's own cost."""
AIM_FULL = 700
"""SQLite synchronous=full (survives power loss), success path, one saga at a time."""
AIM_FULL_VS_JSONL = 0.70
"""...and at least this share of a hand-written fsync'd JSON-lines log in the same run."""
AIM_FULL_IN_FLIGHT = 5_000
"""SQLite synchronous=full, success path, 100 in flight."""
AIM_BYTES_PER_WAITING_SAGA = 2_048
"""Memory an orchestrator holds per saga in flight that waits on a slow step."""


# -- the saga under test -------------------------------------------------------------------------


class Order(BaseModel):
    order_id: int
    qty: int = 1
    reserved: bool = False
    fail: bool = False


work: Counter[str] = Counter()
"""The steps' trivial work: count calls, by step."""


async def create(order: Order, ctx: StepContext) -> None:
    work[ctx.step] += 1


async def cancel(order: Order, ctx: StepContext) -> None:
    work["cancel"] += 1


async def reserve(order: Order, ctx: StepContext) -> Order:
    work[ctx.step] += 1
    return order.model_copy(update={"reserved": True})


async def release(order: Order, ctx: StepContext) -> None:
    work["release"] += 1


async def pay(order: Order, ctx: StepContext) -> None:
    work[ctx.step] += 1
    if order.fail:
        raise BusinessError("declined")


bench = Saga("bench", Order)
bench.step(create).compensate(cancel)
bench.step(reserve).compensate(release)
bench.step(pivot=True)(pay)

SUCCESS, COMPENSATION = Order(order_id=1), Order(order_id=2, fail=True)


async def floor(order: Order) -> SagaStatus:
    """The same saga, hand-written: no log, no retries, no recovery."""
    saga_id = str(uuid.uuid4())

    def ctx(step: str, *, compensating: bool = False) -> StepContext:
        return StepContext(saga_id, "bench", step, 1, f"{saga_id}/{step}", compensating)

    undo: list[tuple[Callable[[Order, StepContext], Awaitable[None]], str]] = []
    try:
        await create(order, ctx("create"))
        undo.append((cancel, "create"))
        order = await reserve(order, ctx("reserve"))
        undo.append((release, "reserve"))
        await pay(order, ctx("pay"))
    except BusinessError:
        for compensation, step in reversed(undo):
            await compensation(order, ctx(step, compensating=True))
        return SagaStatus.COMPENSATED
    return SagaStatus.COMPLETED


class JsonLinesLog:
    """The durable floor: the same saga written by hand to an append-only JSON-lines file,
    fsync'd before each step runs (its intent) and after the last one (the outcome), as a
    careful hand-written saga would: the same four durable writes per saga as pysaga's log,
    with no recovery, no leases, no revisions and no inspection."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("ab", buffering=0)

    def write(self, record: dict[str, object]) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def durable_floor(log: JsonLinesLog) -> Callable[[Order], Awaitable[SagaStatus]]:
    """The saga, hand-written, with an fsync'd JSON line before each step and at the end."""

    async def run(order: Order) -> SagaStatus:
        saga_id = str(uuid.uuid4())

        def ctx(step: str, *, compensating: bool = False) -> StepContext:
            return StepContext(saga_id, "bench", step, 1, f"{saga_id}/{step}", compensating)

        log.write({"saga": saga_id, "started": order.model_dump(), "intent": "create"})
        undo: list[tuple[Callable[[Order, StepContext], Awaitable[None]], str]] = []
        try:
            await create(order, ctx("create"))
            undo.append((cancel, "create"))
            log.write({"saga": saga_id, "done": "create", "intent": "reserve"})
            order = await reserve(order, ctx("reserve"))
            undo.append((release, "reserve"))
            log.write(
                {"saga": saga_id, "done": "reserve", "data": order.model_dump(), "intent": "pay"}
            )
            await pay(order, ctx("pay"))
        except BusinessError as exc:
            log.write({"saga": saga_id, "failed": "pay", "reason": str(exc)})
            for compensation, step in reversed(undo):
                await compensation(order, ctx(step, compensating=True))
                log.write({"saga": saga_id, "undone": step})
            return SagaStatus.COMPENSATED
        log.write({"saga": saga_id, "done": "pay", "status": "completed"})
        return SagaStatus.COMPLETED

    return run


# -- the contenders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One way to run the saga."""

    name: str
    log: str | None
    """None: the hand-written floor; "jsonl": the hand-written durable floor; "memory"; or
    "normal"/"full" for SQLite."""

    @contextlib.asynccontextmanager
    async def open(self, workdir: Path) -> AsyncIterator[Runner]:
        """Yield a runner with a fresh saga log (a new file, for SQLite)."""
        if self.log is None:
            yield Runner(floor)
            return
        if self.log == "jsonl":
            jsonl = JsonLinesLog(workdir / f"{uuid.uuid4().hex}.jsonl")
            try:
                yield Runner(durable_floor(jsonl))
            finally:
                jsonl.close()
            return
        if self.log == "memory":
            async with Orchestrator(sagas=[bench], log="memory://") as orchestrator:
                yield Runner(_driver(orchestrator))
            return
        path = workdir / f"{uuid.uuid4().hex}.db"
        sqlite = SQLiteSagaLog(path, synchronous="full" if self.log == "full" else "normal")
        async with Orchestrator(sagas=[bench], log=sqlite) as orchestrator:
            yield Runner(_driver(orchestrator), sqlite)


@dataclass
class Runner:
    """``run(order) -> status``, and the SQLite log whose group commit we watch, if any."""

    run: Callable[[Order], Awaitable[SagaStatus]]
    sqlite: SQLiteSagaLog | None = None

    def commits(self) -> tuple[int, int]:
        """Batches and writes committed so far."""
        if self.sqlite is None:
            return 0, 0
        return self.sqlite.commits.batches, self.sqlite.commits.writes


def _driver(orchestrator: Orchestrator) -> Callable[[Order], Awaitable[SagaStatus]]:
    async def run(order: Order) -> SagaStatus:
        return (await orchestrator.run(bench, order)).status

    return run


CONTENDERS = (
    Contender("hand-written floor", None),
    Contender("hand-written fsync'd JSON lines", "jsonl"),
    Contender("pysaga memory", "memory"),
    Contender("pysaga sqlite normal", "normal"),
    Contender("pysaga sqlite full", "full"),
)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Sample:
    rate: float
    p50: float
    p99: float
    sagas: int
    batches: int = 0
    writes: int = 0


async def measure(
    run: Callable[[Order], Awaitable[SagaStatus]],
    order: Order,
    expected: SagaStatus,
    in_flight: int,
    duration: float,
) -> Sample:
    """Run sagas from *in_flight* concurrent loops for *duration* seconds (each loop runs one
    saga at least, however late it starts on a busy machine)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def loop() -> None:
        clock = time.perf_counter
        while True:
            started = clock()
            status = await run(order)
            latencies.append(clock() - started)
            if status is not expected:
                raise RuntimeError(f"the saga ended {status}, expected {expected}")
            if clock() >= stop_at:
                break

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(loop)
    elapsed = time.perf_counter() - started
    if len(latencies) < 2:
        latencies *= 2
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Sample(len(latencies) / elapsed, cuts[49], cuts[98], len(latencies))


@dataclass
class Cell:
    contender: Contender
    path: str
    in_flight: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def p50(self) -> float:
        return statistics.median(s.p50 for s in self.samples)

    @property
    def p99(self) -> float:
        return statistics.median(s.p99 for s in self.samples)

    @property
    def writes_per_saga(self) -> float:
        return sum(s.writes for s in self.samples) / sum(s.sagas for s in self.samples)

    @property
    def writes_per_batch(self) -> float:
        return sum(s.writes for s in self.samples) / max(1, sum(s.batches for s in self.samples))


def raw_sqlite_rate(path: Path, synchronous: str, duration: float) -> float:
    """Transactions per second, each inserting one row, with stdlib sqlite3 on a WAL file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL, payload TEXT)")
        payload = "x" * 200
        done = 0
        started = time.perf_counter()
        stop_at = started + duration
        while time.perf_counter() < stop_at:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (at, payload) VALUES (?, ?)", (time.time(), payload))
            conn.execute("COMMIT")
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        conn.close()


async def benchmark(args: argparse.Namespace, workdir: Path) -> None:
    paths = {"success": (SUCCESS, SagaStatus.COMPLETED)}
    paths["compensation"] = (COMPENSATION, SagaStatus.COMPENSATED)
    cells = [
        Cell(contender, path, in_flight)
        for path in paths
        for in_flight in (1, args.in_flight)
        for contender in CONTENDERS
    ]
    total = len(cells) * args.runs * args.duration + 2 * args.runs * args.duration / 2
    print(
        f"pysaga engine benchmark: {len(cells)} cells x {args.runs} runs x {args.duration:g} s "
        f"(about {total:.0f} s); Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}",
        file=sys.stderr,
    )
    ceilings: dict[str, list[float]] = {"normal": [], "full": []}
    for number in range(args.runs):  # runs interleave, so slow drift hits every cell alike
        for cell in cells:
            order, expected = paths[cell.path]
            async with cell.contender.open(workdir) as runner:
                await measure(runner.run, order, expected, cell.in_flight, args.duration / 20)
                batches, writes = runner.commits()
                sample = await measure(runner.run, order, expected, cell.in_flight, args.duration)
                sample.batches = runner.commits()[0] - batches
                sample.writes = runner.commits()[1] - writes
            cell.samples.append(sample)
        for synchronous, rates in ceilings.items():
            path = workdir / f"raw-{synchronous}-{number}.db"
            rates.append(raw_sqlite_rate(path, synchronous, args.duration / 2))
        print(f"  run {number + 1}/{args.runs} done", file=sys.stderr)
    report(args, cells, {k: statistics.median(v) for k, v in ceilings.items()})
    report_aims(args, cells)
    if args.waiting:
        for log in ("sqlite", "memory"):
            per_saga = await held_per_waiting_saga(workdir, args.waiting, log)
            print(
                f"  memory per in-flight saga waiting on a slow step ({args.waiting:,} in flight, "
                f"{log} log, tracemalloc): {per_saga:,.0f} bytes vs <= "
                f"{AIM_BYTES_PER_WAITING_SAGA:,} "
                f"({'met' if per_saga <= AIM_BYTES_PER_WAITING_SAGA else 'MISSED'})"
            )


# -- reporting -----------------------------------------------------------------------------------


def report(args: argparse.Namespace, cells: list[Cell], ceilings: dict[str, float]) -> None:
    floors = {(c.path, c.in_flight): c.rate for c in cells if c.contender.log is None}
    headers = (
        "path",
        "in flight",
        "implementation",
        "sagas/s",
        "p50 ms",
        "p99 ms",
        "us/saga",
        "x floor",
        "writes/saga",
        "writes/batch",
    )
    rows = []
    for cell in cells:
        sqlite = cell.contender.log in ("normal", "full")
        rows.append(
            (
                cell.path,
                str(cell.in_flight),
                cell.contender.name,
                f"{cell.rate:,.0f}",
                f"{cell.p50 * 1e3:.3f}",
                f"{cell.p99 * 1e3:.3f}",
                f"{1e6 / cell.rate:,.1f}",
                f"{floors[cell.path, cell.in_flight] / cell.rate:,.1f}",
                f"{cell.writes_per_saga:.2f}" if sqlite else "",
                f"{cell.writes_per_batch:.1f}" if sqlite else "",
            )
        )
    print(
        f"\n3-step saga; medians of {args.runs} runs x {args.duration:g} s; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}. "
        "us/saga = 1e6 / (sagas/s); x floor = that cost over the hand-written floor's; "
        "writes = SQLite log writes (group commit: one transaction per batch)\n"
    )
    print(_table(headers, rows, left={0, 2}))

    print(
        "\nStore ceiling, stdlib sqlite3 on a WAL file, 1 row per transaction, one at a time: "
        f"synchronous=normal {ceilings['normal']:,.0f} txn/s, "
        f"synchronous=full {ceilings['full']:,.0f} txn/s"
    )
    for cell in cells:
        if cell.contender.log in ("normal", "full") and cell.in_flight == 1:
            bound = ceilings[cell.contender.log] / cell.writes_per_saga
            print(
                f"  {cell.contender.name}, {cell.path}, one at a time: the store alone would "
                f"allow {bound:,.0f} sagas/s ({cell.writes_per_saga:.2f} commits per saga); "
                f"pysaga reaches {cell.rate / bound:.0%} of it"
            )
    one, many = (
        next(
            c
            for c in cells
            if c.contender.log == "normal" and c.path == "success" and c.in_flight == in_flight
        )
        for in_flight in (1, args.in_flight)
    )
    print(
        f"\nAims (SQLite synchronous=normal, success path): one at a time {one.rate:,.0f} sagas/s "
        f"vs >= {AIM_ONE_AT_A_TIME:,}: {_verdict(one.rate, AIM_ONE_AT_A_TIME)}; "
        f"{args.in_flight} in flight {many.rate:,.0f} sagas/s vs >= {AIM_IN_FLIGHT:,} "
        f"(aim set for 100): {_verdict(many.rate, AIM_IN_FLIGHT)}"
    )


def report_aims(args: argparse.Namespace, cells: list[Cell]) -> None:
    """The kernel's aims: the engine's own cost, and durability at a fair price."""

    def cell(contender: str | None, in_flight: int) -> Cell:
        return next(
            c
            for c in cells
            if c.contender.log == contender and c.path == "success" and c.in_flight == in_flight
        )

    memory, full, jsonl = cell("memory", 1), cell("full", 1), cell("jsonl", 1)
    full_many = cell("full", args.in_flight)
    floor = cell(None, 1)
    print(
        f"\nAims (success path): memory:// one at a time {memory.rate:,.0f} sagas/s "
        f"({1e6 / memory.rate:.1f} us/saga; the hand-written floor {1e6 / floor.rate:.1f} us) vs "
        f">= {AIM_MEMORY:,}: {_verdict(memory.rate, AIM_MEMORY)}"
    )
    print(
        f"  SQLite synchronous=full one at a time {full.rate:,.0f} sagas/s vs >= {AIM_FULL:,}: "
        f"{_verdict(full.rate, AIM_FULL)}; vs the fsync'd JSON-lines floor {jsonl.rate:,.0f} "
        f"sagas/s: {full.rate / jsonl.rate:.0%} (aim >= {AIM_FULL_VS_JSONL:.0%})"
    )
    print(
        f"  SQLite synchronous=full {args.in_flight} in flight {full_many.rate:,.0f} sagas/s vs "
        f">= {AIM_FULL_IN_FLIGHT:,} (aim set for 100): "
        f"{_verdict(full_many.rate, AIM_FULL_IN_FLIGHT)}"
    )


async def held_per_waiting_saga(workdir: Path, sagas: int, log: str) -> float:
    """Bytes the process holds per saga in flight whose first step waits (tracemalloc).

    *sagas* are started on one orchestrator and left waiting on their first step; what was
    allocated since before the first start, and is still held, is divided among them. On
    ``memory`` the log's own copy of each record is counted too; on SQLite the state is in
    the file and what is counted is the orchestrator's.
    """
    gate = anyio.Event()
    waiting = Saga("waiting", Order)

    @waiting.step
    async def slow(order: Order) -> None:
        await gate.wait()

    url = "memory://" if log == "memory" else f"sqlite:///{workdir / uuid.uuid4().hex}.db"
    async with Orchestrator(sagas=[waiting], log=url, drain_timeout=30) as orchestrator:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        ids = [await orchestrator.start(waiting, Order(order_id=n)) for n in range(sagas)]
        await anyio.sleep(0.5)  # every saga reaches its step
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        gate.set()
        for saga_id in ids:
            await orchestrator.wait(saga_id)
    return held / sagas


def _verdict(rate: float, aim: float) -> str:
    return f"{'met' if rate >= aim else 'MISSED'}, {rate / aim:.1f}x"


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


# -- profiling -----------------------------------------------------------------------------------


async def profile(args: argparse.Namespace, workdir: Path) -> None:
    """Profile one-at-a-time sagas on one log, and print where the time goes."""
    contender = next(c for c in CONTENDERS if c.log == args.profile)
    order, expected = (
        (COMPENSATION, SagaStatus.COMPENSATED)
        if args.path == "compensation"
        else (SUCCESS, SagaStatus.COMPLETED)
    )
    async with contender.open(workdir) as runner:
        await measure(runner.run, order, expected, 1, 0.2)
        profiler = cProfile.Profile()
        profiler.enable()
        sample = await measure(runner.run, order, expected, 1, args.duration)
        profiler.disable()
    print(
        f"{contender.name}, {args.path} path, one at a time: {sample.sagas:,} sagas, "
        f"{sample.rate:,.0f} sagas/s under the profiler\n"
    )
    stats = pstats.Stats(profiler)
    by_file: Counter[str] = Counter()
    for (filename, _, _), row in stats.stats.items():  # type: ignore[attr-defined]
        by_file[_where(filename)] += row[2]  # own time
    total = sum(by_file.values())
    print(f"-- own time by file, of {total:.2f} s --")
    for where, seconds in by_file.most_common(args.top):
        print(f"{seconds / total:6.1%}  {where}")
    print()
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"-- top {args.top} by {key} --")
        stats.sort_stats(key).print_stats(args.top)


def _where(filename: str) -> str:
    """A short name for a source file: ``pysaga/_engine.py``, ``anyio/...``, ``<built-in>``."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    if filename.startswith(("<", "~")):
        return "<built-in>"
    return "/".join(parts[-2:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run of a cell")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--in-flight", type=int, default=100, help="concurrent sagas")
    parser.add_argument(
        "--profile",
        choices=("memory", "normal", "full"),
        help="instead: profile one saga at a time on this log (normal/full: SQLite)",
    )
    parser.add_argument("--path", choices=("success", "compensation"), default="success")
    parser.add_argument(
        "--waiting",
        type=int,
        default=10_000,
        help="sagas left waiting on a slow step to measure memory per saga (0: skip)",
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pysaga-bench-") as workdir:
        anyio.run(benchmark if args.profile is None else profile, args, Path(workdir))


if __name__ == "__main__":
    main()
