"""The SQLite saga log: choosing durability, and watching group commit at work.

Run it with ``python sqlite_log.py``; it writes its saga log to ``signups.db``.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from pydantic import BaseModel

from pysaga import Orchestrator, Saga, SagaStatus
from pysaga.stores.sqlite import SQLiteSagaLog


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
# By URL: a relative path has three slashes, an absolute one four.
default = Orchestrator(sagas=[signup], log="sqlite:///signups.db")  # synchronous=normal
on_disk = Orchestrator(sagas=[signup], log="sqlite:////var/lib/shop/sagas.db?synchronous=full")
# Or build the log yourself, to keep a handle on it:
log = SQLiteSagaLog("signups.db", synchronous="full", busy_timeout=5.0)
by_object = Orchestrator(sagas=[signup], log=log)
# --8<-- [end:urls]


# --8<-- [start:group-commit]
async def main(directory: str = ".") -> tuple[int, int]:
    """Sign up 200 users at once; return (writes, commits) of the saga log."""
    log = SQLiteSagaLog(Path(directory) / "signups.db", synchronous="full")
    async with Orchestrator(sagas=[signup], log=log) as orch:
        ids = [await orch.start(signup, {"email": f"user{n}@example.com"}) for n in range(200)]
        outcomes = [await orch.wait(saga_id) for saga_id in ids]
    completed = sum(outcome.status is SagaStatus.COMPLETED for outcome in outcomes)
    writes, commits = log.commits.writes, log.commits.batches
    print(f"{completed} sagas completed: {writes} writes in {commits} commits")
    return writes, commits


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:group-commit]
