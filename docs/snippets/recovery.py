"""Recovery: an orchestrator stops in the middle of a step, and another one finishes the saga.

Run it with ``python recovery.py``; it writes its saga log to ``transfers.db``.
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel

from pysaga import Orchestrator, Saga, SagaOutcome, StepContext


class Bank:
    """A bank that applies each debit once per key, and whose reply can get lost."""

    def __init__(self) -> None:
        self.balance = 100
        self.applied: dict[str, int] = {}  # idempotency key -> amount
        self.keys_seen: list[str] = []
        self.lose_next_reply = False
        self.reply_lost: anyio.Event | None = None

    async def debit(self, key: str, amount: int) -> None:
        self.keys_seen.append(key)
        if key not in self.applied:  # a repeated call has no second effect
            self.applied[key] = amount
            self.balance -= amount
        if self.lose_next_reply:
            self.lose_next_reply = False
            if self.reply_lost is not None:
                self.reply_lost.set()
            await anyio.sleep_forever()  # the debit happened, but its reply never arrives


bank = Bank()


class Transfer(BaseModel):
    amount: int
    debited: bool = False
    notified: bool = False


transfer = Saga("transfer", Transfer, version=1)


@transfer.step(pivot=True)
async def debit(t: Transfer, ctx: StepContext) -> Transfer:
    await bank.debit(ctx.idempotency_key, t.amount)
    return t.model_copy(update={"debited": True})


@transfer.step
async def notify(t: Transfer) -> Transfer:
    return t.model_copy(update={"notified": True})


# --8<-- [start:main]
async def main(log: str = "sqlite:///transfers.db") -> SagaOutcome[Transfer]:
    bank.lose_next_reply = True
    bank.reply_lost = anyio.Event()

    # The first orchestrator starts the saga, and stops while `debit` waits for its reply.
    async with Orchestrator(sagas=[transfer], log=log, owner="first", drain_timeout=0) as orch:
        saga_id = await orch.start(transfer, Transfer(amount=30))
        await bank.reply_lost.wait()
    # Leaving the block interrupted the step and gave the saga's lease back at once. A killed
    # process gives nothing back: its lease runs out after `lease` seconds instead.

    # A second orchestrator (another process, in real life) claims the saga and finishes it.
    async with Orchestrator(sagas=[transfer], log=log, owner="second") as orch:
        outcome = await orch.wait(saga_id)
        for entry in await orch.history(saga_id):
            step = f"{entry.step or ''} {entry.attempt or ''}"
            print(f"  {entry.kind:<16} {step:<9} by {entry.owner}")
    calls, keys = len(bank.keys_seen), len(set(bank.keys_seen))
    print(f"{outcome.status}: balance {bank.balance}, {calls} debit calls with {keys} key")
    return outcome


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:main]
