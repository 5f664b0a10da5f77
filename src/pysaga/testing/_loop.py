"""Virtual time: an asyncio event loop whose clock only moves when every task is waiting.

The loop's :meth:`~VirtualTimeLoop.time` is a counter, not the system's clock. When nothing is
ready to run and no I/O arrives, the loop does not sleep until its next timer: it moves the
counter to that timer at once. ``anyio.sleep(3600)``, ``anyio.fail_after(3600)`` and every
timer built on them (step timeouts, retry backoffs, saga deadlines, lease renewals, broker
redelivery backoffs) then take as long as the code around them needs, not an hour.

pysaga's own reading of wall time (:func:`pysaga._clock.now`) follows the loop: it returns the
wall time at which the loop's clock started, plus the virtual seconds elapsed since.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _clock

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("VirtualClock", "VirtualTimeLoop", "current_clock", "virtual_time_backend")


class VirtualClock:
    """The clock of a :class:`VirtualTimeLoop`: it moves only when the loop jumps or when
    :meth:`advance` is called.

    Args:
        autojump_threshold: Real seconds the loop waits for I/O (a socket, a thread's result)
            before it jumps to its next timer. The default, 0, jumps as soon as every task
            waits, which is right for the in-memory saga log and broker; raise it (0.05, say)
            when a test also waits on real I/O, so that a virtual timeout does not fire before
            the I/O had a chance to arrive.

    Attributes:
        jumps: How many times the loop moved the clock to its next timer.
    """

    def __init__(self, *, autojump_threshold: float = 0.0) -> None:
        if not autojump_threshold >= 0:
            raise ValueError(f"autojump_threshold must be >= 0 seconds, got {autojump_threshold!r}")
        self.autojump_threshold = autojump_threshold
        # Loop time starts at 0, so that the seconds a test jumps add up exactly.
        self._start = self._time = 0.0
        self._epoch = time.time()
        self.jumps = 0

    def __repr__(self) -> str:
        return f"<VirtualClock elapsed={self.elapsed:.3f}s jumps={self.jumps}>"

    def time(self) -> float:
        """The loop's time (what ``loop.time()`` and ``anyio.current_time()`` return): 0.0
        when the clock was made, then the virtual seconds elapsed."""
        return self._time

    def now(self) -> float:
        """Virtual wall time, in seconds since the epoch: the real wall time when the clock
        was made, plus :attr:`elapsed`. pysaga stamps log entries and computes timers with it
        while code runs on this clock's loop."""
        return self._epoch + (self._time - self._start)

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the clock was made."""
        return self._time - self._start

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds* at once.

        Timers that are due by then fire, earliest first, as soon as the loop runs again:
        after ``await anyio.sleep(0.001)`` they all have. You rarely need this: waiting
        (``anyio.sleep``, or :meth:`SagaWorld.wait_for <pysaga.testing.SagaWorld.wait_for>`)
        already jumps over idle time. Use it to make time pass *without* letting anything
        run in between, as a process that was frozen for a while would see it.

        Raises:
            ValueError: *seconds* is negative (time does not go back).
        """
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward; advance() got {seconds!r}")
        self._time += seconds

    def _jump(self, seconds: float) -> None:
        self._time += seconds
        self.jumps += 1


class _JumpingSelector(selectors.DefaultSelector):
    """The loop's selector: when asked to wait for I/O until the next timer and none comes
    (within the clock's threshold), it moves the clock to that timer instead of sleeping."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            # Nothing scheduled (wait for I/O as long as it takes), or something is ready.
            return super().select(timeout)
        ready = super().select(min(timeout, self._clock.autojump_threshold))
        if not ready:
            self._clock._jump(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on a :class:`VirtualClock`.

    Everything that waits on the loop's clock (``asyncio.sleep``, ``anyio.sleep``,
    ``anyio.fail_after``, ``loop.call_later``) waits in virtual time, and pysaga reads its wall
    time from the same clock while the loop runs. Real I/O still works, but a timeout around it
    fires as soon as every task waits, unless the clock's ``autojump_threshold`` lets the I/O
    arrive first.

    Run a test on it through anyio's pytest plugin with :func:`virtual_time_backend`, or a
    program with ``asyncio.run(main(), loop_factory=VirtualTimeLoop)`` (Python 3.12+) or
    ``asyncio.Runner(loop_factory=VirtualTimeLoop)``.

    Args:
        clock: The clock to run on (default: a new one).
        autojump_threshold: For a new clock, see :class:`VirtualClock`.
    """

    def __init__(
        self, clock: VirtualClock | None = None, *, autojump_threshold: float = 0.0
    ) -> None:
        self.clock = clock or VirtualClock(autojump_threshold=autojump_threshold)
        """This loop's clock."""
        super().__init__(_JumpingSelector(self.clock))
        self._follows_clock = True
        _follow_virtual_loops()

    def time(self) -> float:
        """The virtual time (see :meth:`VirtualClock.time`)."""
        return self.clock.time()

    def close(self) -> None:
        """Close the loop; pysaga's wall time stops following it."""
        super().close()
        if self._follows_clock:
            self._follows_clock = False
            _unfollow_virtual_loops()


_following = 0
_previous_source: Callable[[], float] | None = None


def _wall_time() -> float:
    """pysaga's wall time while virtual loops exist: the running loop's virtual wall time
    when that loop is a virtual one, the system's otherwise."""
    loop = asyncio._get_running_loop()
    if isinstance(loop, VirtualTimeLoop):
        return loop.clock.now()
    return time.time()


def _follow_virtual_loops() -> None:
    global _following, _previous_source
    if _following == 0:
        _previous_source = _clock.set_source(_wall_time)
    _following += 1


def _unfollow_virtual_loops() -> None:
    global _following, _previous_source
    _following -= 1
    if _following == 0:
        _clock.set_source(_previous_source)
        _previous_source = None


def current_clock() -> VirtualClock:
    """The virtual clock of the running event loop.

    Raises:
        RuntimeError: no event loop is running, or it is not a :class:`VirtualTimeLoop` (the
            message says how to run a test on one).
    """
    loop = asyncio._get_running_loop()
    if isinstance(loop, VirtualTimeLoop):
        return loop.clock
    raise RuntimeError(
        "this code does not run on virtual time; run the test on it with an anyio_backend "
        "fixture that returns pysaga.testing.virtual_time_backend()"
    )


def virtual_time_backend(*, autojump_threshold: float = 0.0) -> tuple[str, dict[str, Any]]:
    """An ``anyio_backend`` value that runs tests on a :class:`VirtualTimeLoop`.

    Return it from an ``anyio_backend`` fixture (in a test module, or a ``conftest.py`` for a
    whole directory) and every ``@pytest.mark.anyio`` test there runs on virtual time::

        @pytest.fixture
        def anyio_backend() -> tuple[str, dict[str, Any]]:
            return virtual_time_backend()

    Args:
        autojump_threshold: Real seconds to wait for I/O before jumping (see
            :class:`VirtualClock`).

    Returns:
        ``("asyncio", {"loop_factory": ...})``, as anyio's pytest plugin takes it.
    """
    if not autojump_threshold >= 0:
        raise ValueError(f"autojump_threshold must be >= 0 seconds, got {autojump_threshold!r}")

    return ("asyncio", {"loop_factory": _VirtualLoopFactory(autojump_threshold)})


@dataclass(frozen=True, slots=True)
class _VirtualLoopFactory:
    """Makes virtual-time loops for anyio's test runner (a class, so the kit can tell that a
    test asked for virtual time)."""

    autojump_threshold: float

    def __call__(self) -> VirtualTimeLoop:
        return VirtualTimeLoop(autojump_threshold=self.autojump_threshold)


def asks_for_virtual_time(anyio_backend: object) -> bool:
    """Whether an ``anyio_backend`` value is one :func:`virtual_time_backend` made."""
    if not isinstance(anyio_backend, tuple) or len(anyio_backend) != 2:
        return False
    options = anyio_backend[1]
    return isinstance(options, dict) and isinstance(
        options.get("loop_factory"), _VirtualLoopFactory
    )
