"""The PostgreSQL saga log: two orchestrators (as two processes would) share one log.

Run it with ``python postgres_log.py postgresql://user@host:5432/database``; it writes to the
schema ``pysaga_demo`` of that database.
"""

from __future__ import annotations

import sys

import anyio
from pydantic import BaseModel

from pysaga import Orchestrator, Saga, SagaStatus
from pysaga.stores.postgres import PostgresSagaLog


class Signup(BaseModel):
    email: str
    account: str | None = None
    welcomed: bool = False


signup = Saga("signup", Signup, version=1)


@signup.step(pivot=True)
async def create_account(s: Signup) -> Signup:
    return s.model_copy(update={"account": f"acct:{s.email}"})


@signup.step
async def send_welcome(s: Signup) -> Signup:
    return s.model_copy(update={"welcomed": True})


# --8<-- [start:urls]
# By URL: the schema holds pysaga's tables (created if missing); pool_size caps connections.
by_url = Orchestrator(
    sagas=[signup], log="postgresql://app:secret@db.internal:5432/shop?schema=sagas&pool_size=8"
)
# Or build the log yourself, to keep a handle on it (keywords win over the URL's options):
log = PostgresSagaLog("postgresql://app:secret@db.internal:5432/shop", schema="sagas")
by_object = Orchestrator(sagas=[signup], log=log)
# --8<-- [end:urls]


# --8<-- [start:replicas]
async def main(url: str) -> dict[SagaStatus, int]:
    """Two orchestrators on one log each start 50 signups; return the log's counts."""
    async with (
        Orchestrator(sagas=[signup], log=url, owner="replica-1") as one,
        Orchestrator(sagas=[signup], log=url, owner="replica-2") as two,
    ):
        started = [
            (orch, await orch.start(signup, {"email": f"user{n}@example.com"}))
            for n in range(50)
            for orch in (one, two)
        ]
        for orch, saga_id in started:
            await orch.wait(saga_id)
    async with PostgresSagaLog(url) as shared:
        counts = await shared.counts(name="signup")
    print(f"{counts[SagaStatus.COMPLETED]} signups completed by two orchestrators on one log")
    return counts


if __name__ == "__main__":
    anyio.run(main, f"{sys.argv[1]}?schema=pysaga_demo")
    # --8<-- [end:replicas]
