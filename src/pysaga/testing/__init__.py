"""pysaga's test kit: run a saga's tests in an in-memory world, on virtual time, with faults.

Sagas are hard to test because what matters happens between the steps: a timeout an hour
later, a retry after a backoff, a message delivered twice, a process dying after a write. The
kit makes each of these one line of a test:

* :class:`SagaWorld` is a fresh in-memory world per test: a broker hub of its own, an
  in-memory saga log, and helpers to run orchestrators and participants on them.
* :class:`VirtualTimeLoop` is an asyncio event loop whose clock jumps to the next timer as
  soon as every task waits; :func:`virtual_time_backend` runs pytest tests on it, so a
  one-hour step timeout fires in milliseconds.
* Faults: :meth:`SagaWorld.fail_step` (a step raises on its first attempts),
  :meth:`SagaWorld.crash_after` and :meth:`SagaWorld.restart_orchestrator` (an orchestrator
  dies after a given log write, and a new one resumes its sagas), and
  :attr:`SagaWorld.faults` (drop, duplicate, delay or reorder broker deliveries).
* :meth:`SagaWorld.wait_for` waits until a saga gets somewhere, and fails with the saga's
  timeline when it does not.

pysaga installs a pytest plugin that gives tests the ``saga_world`` fixture (see
:mod:`pysaga.testing.plugin`). It is only used by tests that ask for it.
"""

from __future__ import annotations

from ._loop import VirtualClock, VirtualTimeLoop, current_clock, virtual_time_backend
from ._world import Crash, SagaWorld, SimulatedCrash

__all__ = (
    "Crash",
    "SagaWorld",
    "SimulatedCrash",
    "VirtualClock",
    "VirtualTimeLoop",
    "current_clock",
    "virtual_time_backend",
)
