"""The defect of issue 12, as a user met it, with a real process: a saga is started on SQLite,
its orchestrator is killed after the first step, that step is renamed in the code without a
version bump, and an orchestrator starts again. The saga must not be driven on the changed
definition (before, the renamed step ran again, the finished one was never compensated, and
the saga ended ``compensated`` with no warning): it is held, and finishes once the original
definition is hosted again, with no step run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from pysaga import Inspector, Orchestrator, Saga, SagaStatus, StepContext

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys, anyio
    from pydantic import BaseModel
    from pysaga import Orchestrator, Saga, StepContext

    log, effects = sys.argv[1], sys.argv[2]

    class Order(BaseModel):
        order_id: str = "o-1"

    saga = Saga("order", Order)

    @saga.step
    async def reserve(order: Order, ctx: StepContext) -> None:
        with open(effects, "a") as f:
            f.write(f"do {ctx.step}\\n")

    @reserve.compensate
    async def release(order: Order, ctx: StepContext) -> None:
        with open(effects, "a") as f:
            f.write(f"undo {ctx.step}\\n")

    @saga.step
    async def charge(order: Order, ctx: StepContext) -> None:
        print("charging", flush=True)
        await anyio.sleep_forever()

    @saga.step
    async def confirm(order: Order, ctx: StepContext) -> None:
        pass

    async def main() -> None:
        async with Orchestrator(sagas=[saga], log=log, lease=1.0) as orch:
            await orch.run(saga, Order(), saga_id="order-1")

    anyio.run(main)
    """
)


class Order(BaseModel):
    order_id: str = "o-1"


def definition(effects: Path, *, first: str, version: int = 1) -> Saga[Order]:
    """reserve (or its renamed self) -> charge -> confirm, writing what runs to *effects*."""
    saga: Saga[Order] = Saga("order", Order, version=version)

    def note(line: str) -> None:
        with effects.open("a") as f:
            f.write(line + "\n")

    async def reserve(order: Order, ctx: StepContext) -> None:
        note(f"do {ctx.step}")

    async def release(order: Order, ctx: StepContext) -> None:
        note(f"undo {ctx.step}")

    saga.step(name=first)(reserve).compensate(release)

    @saga.step
    async def charge(order: Order, ctx: StepContext) -> None:
        note(f"do {ctx.step}")

    @saga.step
    async def confirm(order: Order, ctx: StepContext) -> None:
        note(f"do {ctx.step}")

    return saga


async def test_a_renamed_step_after_a_kill_is_held_then_finished(tmp_path: Path) -> None:
    """SIGKILL after the first step, rename it keeping version 1, restart: the saga is held
    (not compensated, nothing re-run); with the original back as version 1 it completes."""
    log = f"sqlite:///{tmp_path / 'sagas.db'}"
    effects = tmp_path / "effects.txt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    child = await anyio.open_process(
        [sys.executable, str(script), log, str(effects)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        line = b""
        with anyio.fail_after(60):
            while not line.endswith(b"\n"):
                line += await child.stdout.receive()
        assert line.decode().strip() == "charging"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert effects.read_text().splitlines() == ["do reserve"]

    renamed = definition(effects, first="reserve_stock")
    async with Orchestrator(
        sagas=[renamed], log=log, lease=1.0, claim_interval=0.05, drain_timeout=0
    ) as orch:
        inspector = Inspector(orch.log)
        with anyio.fail_after(10):  # the killed process's lease (1 s) must lapse first
            while not await inspector.held():  # noqa: ASYNC110 - the log is polled
                await anyio.sleep(0.05)
        (held,) = await inspector.held()
        assert held.saga_id == "order-1"
        assert held.status is SagaStatus.RUNNING
        assert held.held is not None
        assert "step 'reserve' is gone; step 'reserve_stock' is new" in held.held
        await anyio.sleep(0.3)  # more claim rounds: still nothing runs
    assert effects.read_text().splitlines() == ["do reserve"]

    original = definition(effects, first="reserve")
    changed = definition(effects, first="reserve_stock", version=2)
    async with Orchestrator(sagas=[original, changed], log=log) as orch:
        with anyio.fail_after(10):
            outcome = await orch.wait("order-1")
        assert outcome.status is SagaStatus.COMPLETED
    assert effects.read_text().splitlines() == ["do reserve", "do charge", "do confirm"]
