"""A stock service process for the crash test of the transactional outbox.

Usage: ``python -m tests.participants.outbox_worker <broker-url> <inbox-url> <service> <mode>``.

Mode ``crash``: the process kills itself with SIGKILL right after the first handler's
transaction commits, before the reply written to the outbox is sent (through the
participant's ``on_commit`` hook). Mode ``serve``: it runs until it is killed,
with a relay that sends outbox messages older than 0.2 s. Either prints ``ready`` once it
consumes its commands.
"""

from __future__ import annotations

import os
import signal
import sys

import anyio

from pysaga.messaging import Envelope

from .stock import stock_service


async def main(broker_url: str, inbox_url: str, service: str, mode: str) -> None:
    def die(envelope: Envelope) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    stock, _ = stock_service(
        service,
        broker_url,
        inbox_url,
        events=f"{service}-events",
        relay_grace=0.2,
        relay_interval=0.1,
        on_commit=[die] if mode == "crash" else [],
    )
    async with stock:
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:5])
