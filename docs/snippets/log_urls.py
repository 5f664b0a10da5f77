"""Where a saga log is: a writer creates it and says where, a reader only opens it.

Run it with ``python log_urls.py``; it keeps its saga log in ``data/trips.db``.
"""

from __future__ import annotations

import logging

import anyio

from pysaga import Inspector, InvalidURLError, Orchestrator, StoreError


async def main() -> None:
    # --8<-- [start:main]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("pysaga.stores").setLevel(logging.INFO)

    # a writer creates the log (file and directory) and says where
    async with Orchestrator(sagas=[], log="data/trips.db"):
        pass

    # a reader opens the same file: a bare path ending in .db is a SQLite log
    async with Inspector("data/trips.db") as inspector:
        print("sagas:", sum((await inspector.counts()).values()))

    # a typo: the reader says the file does not exist, and creates nothing
    try:
        async with Inspector("data/tirps.db"):
            pass
    except StoreError as exc:
        print("StoreError:", str(exc).partition(":")[0])

    # a malformed URL is refused before anything is opened, its password hidden
    try:
        Inspector("postgresql://app:secret@db:54x/shop")
    except InvalidURLError as exc:
        print("InvalidURLError:", exc)
    # --8<-- [end:main]


if __name__ == "__main__":
    anyio.run(main)
