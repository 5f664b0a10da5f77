"""The wall clock the engine reads.

The orchestrator and the engine stamp log entries and compute timers (step timeouts, retry
times, saga deadlines, lease expiries) in wall seconds since the epoch. They read that time
through :func:`now` instead of calling :func:`time.time` directly, so that a test kit can
point it at a virtual clock (see :mod:`pysaga.testing`) and a one-hour timeout can be tested
without waiting an hour. Production code never changes the source.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("now", "set_source")

_source: Callable[[], float] = time.time


def now() -> float:
    """The current wall time, in seconds since the epoch (``time.time()`` unless redirected)."""
    return _source()


def set_source(source: Callable[[], float] | None) -> Callable[[], float]:
    """Make :func:`now` read ``source`` from now on (``None`` restores :func:`time.time`).

    Returns:
        The previous source, so that a caller can put it back when it is done.
    """
    global _source
    previous = _source
    _source = time.time if source is None else source
    return previous
