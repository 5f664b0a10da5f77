"""Which async backend is running, and refusing one an adapter cannot run on.

pysaga's core runs on anyio, so on asyncio and on trio alike. Some adapters' client libraries
(aio-pika, aiokafka, asyncpg) run on asyncio only: under trio they would fail deep inside the
library, with its own words. They call :func:`require_asyncio` when they open, which says in
plain words what to do instead.
"""

from __future__ import annotations

import asyncio
import sys

from .errors import UnsupportedBackend

__all__ = ("current_backend", "require_asyncio")


def current_backend() -> str:
    """The async library running the calling task: ``"asyncio"``, ``"trio"``, or a
    description of another."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return "an event loop other than asyncio"


def require_asyncio(what: str, library: str, instead: str) -> None:
    """Refuse to open *what* unless the calling task runs on asyncio.

    Args:
        what: The adapter, as the user knows it (``"the RabbitMQ broker"``).
        library: Its client library, which needs asyncio (``"aio-pika"``).
        instead: What to use under the running backend (``"the in-memory broker, memory://"``).

    Raises:
        UnsupportedBackend: the running backend is not asyncio.
    """
    backend = current_backend()
    if backend != "asyncio":
        raise UnsupportedBackend(
            f"{what} needs asyncio (its client library, {library}, runs on asyncio only), but "
            f"this program runs on {backend}; run it on asyncio (anyio.run(main) or "
            f"asyncio.run(main())), or under {backend} use {instead}"
        )
