"""The in-memory broker: the embedded default, and the test double with the same semantics.

Queues live in a *hub*. A :class:`MemoryBroker` is a connection to one: brokers created with
the same name in one process share a hub (``memory://shop``, or ``MemoryBroker("shop")``), so
an orchestrator and its participants can each open their own; an unnamed broker gets a hub of
its own. Closing a broker is like a process going away: what its consumers had not finished
goes back to the queue for the others.

Fault injection for tests sits on the hub (:attr:`MemoryBroker.faults`): drop, duplicate,
delay or reorder the deliveries that match a message type or a predicate.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import anyio
import anyio.abc
from pydantic import BaseModel

from ..errors import DecodeError
from ..messaging import Envelope, message_type
from ._base import BaseBroker, Consumer

__all__ = ("Faults", "Match", "MemoryBroker")

logger = logging.getLogger("pysaga.brokers")

_Item: TypeAlias = tuple[bytes, Mapping[str, str], str | None]
"""A message in a queue: body, headers, key (the correlation id)."""

Match: TypeAlias = str | type[BaseModel] | Callable[[str, Envelope | None], bool] | None
"""Which deliveries a fault applies to: a message type name, a message model, a predicate
``(destination, envelope) -> bool`` (the envelope is ``None`` for undecodable bodies), or
``None`` for all."""


class _Queue:
    """A FIFO with waiting readers; items taken but not acknowledged are put back in front."""

    __slots__ = ("_waiters", "held", "items")

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self._waiters: deque[anyio.Event] = deque()
        self.held: list[_Item] = []  # reordered items waiting for the next put

    def put(self, item: _Item, *, front: bool = False) -> None:
        if front:
            self.items.appendleft(item)
        else:
            self.items.append(item)
            while self.held:
                self.items.append(self.held.pop(0))
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.is_set():
                waiter.set()
                return

    async def get(self) -> _Item:
        while not self.items:
            waiter = anyio.Event()
            self._waiters.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                if waiter.is_set():  # woken but leaving: pass the wake-up on
                    self._wake()
                raise
        return self.items.popleft()


@dataclass
class _Rule:
    action: str
    match: Match
    times: int
    copies: int = 1
    seconds: float = 0.0

    def matches(self, destination: str, envelope: Envelope | None) -> bool:
        match = self.match
        if match is None:
            return True
        if isinstance(match, str):
            return envelope is not None and envelope.type == match
        if isinstance(match, type) and issubclass(match, BaseModel):
            return envelope is not None and envelope.type == message_type(match)
        if isinstance(match, type):
            return False
        return bool(match(destination, envelope))


@dataclass
class Faults:
    """Faults to inject into deliveries, for tests. Each rule applies to the next *times*
    deliveries that match it (a delivery is one message reaching one consumer group); the
    first matching rule wins.

    ``fired`` records each fault that happened, as ``(action, destination, type)``.
    """

    _rules: list[_Rule] = field(default_factory=list)
    fired: list[tuple[str, str, str]] = field(default_factory=list)

    def drop(self, match: Match = None, *, times: int = 1) -> None:
        """Lose the matching deliveries (the publisher is not told)."""
        self._rules.append(_Rule("drop", match, times))

    def duplicate(self, match: Match = None, *, times: int = 1, copies: int = 1) -> None:
        """Deliver the matching messages *copies* extra times."""
        self._rules.append(_Rule("duplicate", match, times, copies=copies))

    def delay(self, match: Match = None, *, seconds: float, times: int = 1) -> None:
        """Deliver the matching messages *seconds* late (others overtake them)."""
        self._rules.append(_Rule("delay", match, times, seconds=seconds))

    def reorder(self, match: Match = None, *, times: int = 1, hold: float = 0.5) -> None:
        """Deliver each matching message after the next message to the same group (or after
        *hold* seconds if none comes)."""
        self._rules.append(_Rule("reorder", match, times, seconds=hold))

    def clear(self) -> None:
        """Remove every rule that has not fired yet."""
        self._rules.clear()

    def _take(self, destination: str, body: bytes) -> _Rule | None:
        if not self._rules:
            return None
        try:
            envelope: Envelope | None = Envelope.decode(body)
        except DecodeError:
            envelope = None
        for rule in self._rules:
            if rule.times > 0 and rule.matches(destination, envelope):
                rule.times -= 1
                if rule.times == 0:
                    self._rules.remove(rule)
                kind = envelope.type if envelope else "(undecodable)"
                self.fired.append((rule.action, destination, kind))
                return rule
        return None


class _Hub:
    """The broker's side: every destination's group queues."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups: dict[str, dict[str, _Queue]] = {}
        self.faults = Faults()

    def queue(self, destination: str, group: str) -> _Queue:
        groups = self.groups.setdefault(destination, {})
        queue = groups.get(group)
        if queue is None:
            queue = groups[group] = _Queue()
        return queue

    def publish(
        self, destination: str, item: _Item, spawn: Callable[..., None], *, own_group: bool = True
    ) -> None:
        groups = self.groups.get(destination)
        if not groups:
            if not own_group:
                return
            groups = {destination: self.queue(destination, destination)}
        for queue in list(groups.values()):
            self._deliver(destination, queue, item, spawn)

    def _deliver(
        self, destination: str, queue: _Queue, item: _Item, spawn: Callable[..., None]
    ) -> None:
        rule = self.faults._take(destination, item[0])
        if rule is None:
            queue.put(item)
        elif rule.action == "duplicate":
            for _ in range(1 + rule.copies):
                queue.put(item)
        elif rule.action == "delay":
            spawn(_put_later, queue, item, rule.seconds)
        elif rule.action == "reorder":
            queue.held.append(item)
            spawn(_release_held, queue, item, rule.seconds)
        # "drop": nothing


async def _put_later(queue: _Queue, item: _Item, seconds: float) -> None:
    await anyio.sleep(seconds)
    queue.put(item)


async def _release_held(queue: _Queue, item: _Item, seconds: float) -> None:
    await anyio.sleep(seconds)
    if any(held is item for held in queue.held):
        queue.held = [held for held in queue.held if held is not item]
        queue.put(item)


_hubs: weakref.WeakValueDictionary[str, _Hub] = weakref.WeakValueDictionary()


class MemoryBroker(BaseBroker):
    """A broker inside this process: no server, same contract as RabbitMQ and Kafka.

    Args:
        name: Brokers with the same name share queues (``None``: a hub of its own).
        **options: See :class:`~pysaga.brokers.BaseBroker` (redelivery, concurrency, ...).

    Example::

        async with MemoryBroker() as broker:
            await broker.subscribe("stock", handle)
            await broker.publish("stock", Envelope.of(ReserveStock(sku="book", qty=1)))
    """

    system = "memory"

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        hub = _hubs.get(name) if name is not None else None
        if hub is None:
            hub = _Hub(name or f"private-{uuid.uuid4().hex[:8]}")
            if name is not None:
                _hubs[name] = hub
        self._hub = hub
        self._options = options

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBroker:
        """``memory://`` (a private hub) or ``memory://name`` (shared in this process)."""
        name = urlsplit(url).netloc or None
        return cls(name, **options)

    def __repr__(self) -> str:
        return f"<MemoryBroker hub={self._hub.name!r} {self._state}>"

    def connect(self) -> MemoryBroker:
        """Another broker on the same queues, as a second process would open."""
        broker = MemoryBroker(**self._options)
        broker._hub = self._hub
        return broker

    @property
    def faults(self) -> Faults:
        """The fault rules applied to every delivery on this broker's hub."""
        return self._hub.faults

    def pending(self, destination: str, group: str | None = None) -> int:
        """Messages waiting (not taken by a consumer) in *destination*'s *group*."""
        queue = self._hub.groups.get(destination, {}).get(group or destination)
        return 0 if queue is None else len(queue.items) + len(queue.held)

    # -- transport ---------------------------------------------------------------------------

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        self._check_open().start_soon(fn, *args)

    async def _send(
        self, destination: str, body: bytes, *, key: str | None, headers: Mapping[str, str]
    ) -> None:
        self._hub.publish(destination, (body, dict(headers), key), self._spawn)
        # Let the consumers run, as a network round trip would: a burst of sends is then
        # shared among competing consumers instead of going to whichever runs first.
        await anyio.lowlevel.checkpoint()

    async def _send_reply(self, address: str, body: bytes, *, key: str | None) -> None:
        self._hub.publish(address, (body, {}, key), self._spawn, own_group=False)

    async def _consume(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        queue = self._hub.queue(consumer.destination, consumer.group)
        task_status.started()
        await self._work(consumer, queue)

    async def _consume_replies(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[str]
    ) -> None:
        address = f"reply.{uuid.uuid4().hex}"
        queue = self._hub.queue(address, address)
        try:
            task_status.started(address)
            await self._work(consumer, queue)
        finally:
            self._hub.groups.pop(address, None)

    async def _work(self, consumer: Consumer, queue: _Queue) -> None:
        """Handle up to ``consumer.concurrency`` messages at once, one key at a time: a
        message whose key (saga) is being handled waits for it, as on a Kafka partition."""
        busy: dict[str, deque[_Item]] = {}  # key in hand -> its messages waiting

        async def settle(item: _Item) -> bool:
            try:
                return await consumer.process(item[0], item[1])
            except Exception:  # e.g. the dead-letter send failed: try again later
                logger.exception("could not settle a message on %r", consumer.destination)
                await anyio.sleep(0.1)
                return False

        async def worker() -> None:
            while not consumer.closing:
                item = await queue.get()
                key = item[2]
                waiting: deque[_Item] = deque()
                if key is not None:
                    if key in busy:  # its saga's earlier message is in hand: after it
                        busy[key].append(item)
                        continue
                    busy[key] = waiting
                acked = False
                try:
                    while True:
                        acked = await settle(item)
                        if not acked or not waiting:
                            break
                        item = waiting.popleft()
                finally:
                    if key is not None:
                        del busy[key]
                    for later in reversed(waiting):  # back in front, in their order
                        queue.put(later, front=True)
                    if not acked:  # closing, failed or cancelled: back to the queue
                        queue.put(item, front=True)

        async with anyio.create_task_group() as tg:
            for _ in range(consumer.concurrency):
                tg.start_soon(worker)
