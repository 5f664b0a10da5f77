"""An orchestrator process for the kill test: starts one saga of ``shop.ShopSetup`` and runs
until it is killed.

Usage: ``python -m tests.remote.orchestrator_worker <broker-url> <log-path> <suffix>``. It prints
the saga id on one line once the saga is started.
"""

from __future__ import annotations

import sys

import anyio

from pysaga import Orchestrator

from .shop import ShopSetup, order


async def main(broker_url: str, log_path: str, suffix: str) -> None:
    shop = ShopSetup(suffix)
    async with Orchestrator(
        sagas=[shop.saga], log=f"sqlite:///{log_path}", broker=broker_url, lease=1.0
    ) as orch:
        saga_id = await orch.start(shop.saga, order(7))
        print(saga_id, flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
