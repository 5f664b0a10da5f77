"""An orchestrator dies while a reply is outstanding; the saga finishes after a restart, and
the participant applies the command once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from pysaga import EntryKind, Orchestrator, SagaStatus

from .conftest import BrokerKit
from .shop import ShopSetup, order

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def test_orchestrator_killed_while_a_reply_is_outstanding(
    kit: BrokerKit, suffix: str, tmp_path: Path
) -> None:
    shop = ShopSetup(suffix)
    shop.ledger.charge_arrived = anyio.Event()
    shop.ledger.charge_gate = anyio.Event()
    log = tmp_path / "sagas.db"
    async with kit.make() as broker:
        stock, payments = shop.participants(broker)
        async with stock, payments:
            if kit.kind == "memory":
                # One process only: the first orchestrator "dies" by being cancelled mid-saga.
                with anyio.move_on_after(30):
                    async with Orchestrator(
                        sagas=[shop.saga], log=f"sqlite:///{log}", broker=broker, lease=1.0
                    ) as first:
                        saga_id = await first.start(shop.saga, order(7))
                        await shop.ledger.charge_arrived.wait()
                        first._tg.cancel_scope.cancel()  # type: ignore[union-attr]
            else:
                worker = await anyio.open_process(
                    [
                        sys.executable,
                        "-m",
                        "tests.remote.orchestrator_worker",
                        kit.url,
                        str(log),
                        suffix,
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                try:
                    assert worker.stdout is not None
                    with anyio.fail_after(30):
                        line = b""
                        while not line.endswith(b"\n"):
                            line += await worker.stdout.receive()
                        saga_id = line.decode().strip()
                        await shop.ledger.charge_arrived.wait()
                finally:
                    worker.send_signal(signal.SIGKILL)
                    await worker.wait()
            # The orchestrator is gone; the payments service now charges and replies to nobody.
            shop.ledger.charge_gate.set()
            async with Orchestrator(
                sagas=[shop.saga],
                log=f"sqlite:///{log}",
                broker=broker,
                lease=1.0,
                claim_interval=0.2,
            ) as second:
                with anyio.fail_after(30):
                    outcome = await second.wait(saga_id)
                history = await second.history(saga_id)
    assert outcome.status is SagaStatus.COMPLETED
    assert outcome.data.payment_id == "p-o-7"
    assert shop.ledger.effects[("charge", f"{saga_id}/charge")] == 1, "charged once"
    assert not shop.ledger.repeated()
    charge = [e for e in history if e.step == "charge"]
    # The new orchestrator resumed the attempt in flight (same attempt, same command id,
    # under the timer the first one set) rather than starting a new one.
    assert [(e.kind, e.attempt) for e in charge] == [
        (EntryKind.STEP_STARTED, 1),
        (EntryKind.STEP_SUCCEEDED, 1),
    ]
    assert charge[0].owner != charge[1].owner, "two orchestrators drove it, one after the other"
