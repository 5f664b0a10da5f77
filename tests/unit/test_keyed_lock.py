"""The per-key lock the participant and the choreography observer handle messages under."""

from __future__ import annotations

import anyio
import pytest

from pysaga._keyed_lock import KeyedLock

pytestmark = pytest.mark.anyio


async def test_one_key_is_held_in_turn_and_other_keys_do_not_wait() -> None:
    lock = KeyedLock()
    order: list[str] = []

    async def hold(key: str, name: str, release_when: anyio.Event) -> None:
        await lock.acquire(key)
        order.append(f"{name} in")
        await release_when.wait()
        order.append(f"{name} out")
        lock.release(key)

    first_done, second_done, other_done = anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, "saga-1", "first", first_done)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(hold, "saga-1", "second", second_done)
        tg.start_soon(hold, "saga-2", "other", other_done)
        await anyio.wait_all_tasks_blocked()
        assert order == ["first in", "other in"]  # the second waits for the first only
        other_done.set()
        first_done.set()
        await anyio.wait_all_tasks_blocked()
        assert order == ["first in", "other in", "other out", "first out", "second in"]
        second_done.set()
    assert order[-1] == "second out"


async def test_a_released_key_is_free_again() -> None:
    lock = KeyedLock()
    await lock.acquire("k")
    lock.release("k")
    lock.release("k")  # releasing a free key does nothing
    with anyio.fail_after(1):
        await lock.acquire("k")
    lock.release("k")
