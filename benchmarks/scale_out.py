"""Do more orchestrator processes run more sagas? 1 against 3, on PostgreSQL and RabbitMQ.

The flow is the scale-out tests' purchase (``tests/scale/shop.py``): a remote ``reserve`` step
on a stock service, a remote ``charge`` pivot on a payment service, a local ``complete``. The two
services are processes of their own with PostgreSQL transactional inboxes (their writes, inbox
record and reply commit together); the orchestrators share one PostgreSQL saga log and one
RabbitMQ. Each run starts the services, then N orchestrator processes that each start their
share of the orders at once, and waits until every saga has ended.

A run's rate is its sagas divided by the time from the first saga's creation to the last one's
end, read from the saga log (so process start-up is not counted). Each figure is the median of
``--runs`` runs; the two configurations alternate, so slow drift hits both alike.

    .venv/bin/python benchmarks/scale_out.py [--orders 900] [--runs 3] [--amqp URL] [--dsn URL]

Everything is written to a schema of the run's own, dropped at the end. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import anyio.abc
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scale.shop import BALANCES, STOCK, TABLES, plan  # noqa: E402

DEFAULT_DSN = os.environ.get("PYSAGA_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_AMQP = os.environ.get("PYSAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids() -> dict[str, list[int]]:
    """The processes of the broker and the database server on this machine, by role."""
    found: dict[str, list[int]] = {"RabbitMQ": [], "PostgreSQL": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "beam.smp":
            found["RabbitMQ"].append(int(entry.name))
        elif comm in ("postgres", "postmaster"):
            found["PostgreSQL"].append(int(entry.name))
    return found


def cpu_by_pid(roles: dict[str, list[int]]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pids in roles.values() for pid in pids}


def cpu_used(roles: dict[str, list[int]], before: dict[int, float]) -> dict[str, float]:
    """CPU seconds each role used since *before* (a process that started since counts whole:
    PostgreSQL forks a backend per connection)."""
    return {
        role: sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids)
        for role, pids in roles.items()
    }


async def start(args: list[str], logs: Path) -> anyio.abc.Process:
    process = await anyio.open_process(
        [sys.executable, "-m", "tests.scale.worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=logs.open("ab"),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    with anyio.fail_after(120):
        line = b""
        while not line.endswith(b"ready\n"):
            line += await process.stdout.receive()
    return process


async def stop(process: anyio.abc.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def one_run(
    dsn: str, amqp: str, orders: int, orchestrators: int, scratch: Path
) -> tuple[float, dict[str, float]]:
    """Run *orders* purchases over *orchestrators* processes; return sagas per second and the
    CPU milliseconds per saga each part of the system used."""
    schema = f"pysaga_bench_{uuid.uuid4().hex[:10]}"
    database = f"{dsn}?schema={schema}"
    suffix = uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}; {TABLES}")
        # enough of everything: the benchmark measures the happy path's rate
        await conn.executemany(
            "INSERT INTO shop_stock VALUES ($1, $2)", [(k, 1_000_000) for k in STOCK]
        )
        await conn.executemany(
            "INSERT INTO shop_balances VALUES ($1, $2)", [(k, 10_000_000) for k in BALANCES]
        )
    finally:
        await conn.close()
    plan_file = scratch / f"plan-{suffix}.json"
    plan_file.write_text(json.dumps([o.model_dump() for o in plan(orders, seed=1)]))
    processes: list[anyio.abc.Process] = []
    roles: dict[str, list[int]] = {"orchestrators": [], "stock": [], "payment": []}
    roles.update(server_pids())
    try:
        for kind in ("stock", "payment"):
            process = await start(
                ["participant", kind, suffix, amqp, database], scratch / f"{kind}.log"
            )
            processes.append(process)
            roles[kind].append(process.pid)
        share = -(-orders // orchestrators)

        async def orchestrator(n: int) -> None:
            args = [str(plan_file), str(n * share), str(share)]
            process = await start(
                ["orchestrator", suffix, amqp, database, *args], scratch / f"orch-{n}.log"
            )
            processes.append(process)
            roles["orchestrators"].append(process.pid)

        before = cpu_by_pid(roles)  # the orchestrators are not started yet: 0 for them
        async with anyio.create_task_group() as tg:
            for n in range(orchestrators):
                tg.start_soon(orchestrator, n)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            with anyio.fail_after(600):
                while True:
                    total, ended = await conn.fetchrow(
                        "SELECT count(*), count(*) FILTER (WHERE status IN "
                        "('completed', 'compensated', 'failed')) FROM pysaga_sagas"
                    )
                    if total == orders and ended == orders:
                        break
                    await anyio.sleep(0.1)
            first, last = await conn.fetchrow(
                "SELECT min(created_at), max(updated_at) FROM pysaga_sagas"
            )
            for role, pids in server_pids().items():  # backends opened during the run
                roles[role] = sorted(set(roles[role]) | set(pids))
            used = cpu_used(roles, before)
        finally:
            await conn.close()
    finally:
        for process in processes:
            await stop(process)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()
    cpu = {role: seconds * 1000 / orders for role, seconds in used.items()}
    return float(orders / (last - first)), cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=900)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--amqp", default=DEFAULT_AMQP)
    args = parser.parse_args()
    samples: dict[int, list[float]] = {1: [], 3: []}
    cpu: dict[int, list[dict[str, float]]] = {1: [], 3: []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for n in (1, 3):
                rate, used = await one_run(args.dsn, args.amqp, args.orders, n, Path(tmp))
                samples[n].append(rate)
                cpu[n].append(used)
                print(f"run {run + 1}: {n} orchestrator(s): {rate:,.0f} sagas/s", flush=True)
    one, three = (statistics.median(samples[n]) for n in (1, 3))
    print()
    print(
        f"# scale-out: {args.orders} purchases, PostgreSQL log + RabbitMQ, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    print("| orchestrator processes | sagas/s (median) | min | max | x one |")
    print("|---|--:|--:|--:|--:|")
    for n, med in ((1, one), (3, three)):
        s = samples[n]
        print(f"| {n} | {med:,.0f} | {min(s):,.0f} | {max(s):,.0f} | {med / one:.2f} |")
    print()
    print("CPU per saga, ms (median of runs; includes the whole run, start-up of the sagas too):")
    roles = list(cpu[1][0])
    print("| orchestrator processes | " + " | ".join(roles) + " | total | cores busy |")
    print("|---|" + "--:|" * (len(roles) + 2))
    for n in (1, 3):
        medians = {r: statistics.median(c[r] for c in cpu[n]) for r in roles}
        total = sum(medians.values())
        rate = statistics.median(samples[n])
        cells = " | ".join(f"{medians[r]:.1f}" for r in roles)
        print(f"| {n} | {cells} | {total:.1f} | {total * rate / 1000:.2f} |")


if __name__ == "__main__":
    anyio.run(main)
