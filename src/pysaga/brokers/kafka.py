"""The Kafka broker, on aiokafka: a topic per destination, consumer groups, offsets committed
only after the handler returned.

Topology. A destination is a topic of the same name (characters Kafka does not allow in a
topic name become ``_``, and such a name gets a short hash of the original so two destinations
cannot meet in one topic). The first send to, or subscription on, a destination creates its
topic if it does not exist yet, with *partitions* partitions and *replication_factor* replicas;
what exists is remembered, so this costs one request per topic and broker object. The
dead-letter destination ``<destination>.dead-letter`` is just another topic. A *prefix* (e.g.
``"shop."``) goes before every topic name and every consumer group id, the replies topic's
included, so several applications share a cluster without meeting in a topic or a group; it
may hold only the characters Kafka allows in a topic name (letters, digits, ``.``, ``_``,
``-``). The client id is not prefixed: Kafka does not need it to be unique.

Sending. The record's key is the correlation id (the saga id), so one saga's messages land in
one partition and stay in order; the headers become record headers. The producer asks for
``acks=all`` and is idempotent where the broker supports it (otherwise it says so in the log
and goes on without: a retried send may then be stored twice, which at-least-once delivery
allows). A send returns once the broker acknowledged it; concurrent sends share produce
requests (batches), so many are in flight at once.

Receiving. A subscription is a consumer of the destination's topic in the group named after
the subscription's group (the destination's own group by default), with
``auto_offset_reset="earliest"``: a new group starts with what was published before it first
subscribed. Consumers in one group share the partitions. Messages are handled up to the
subscription's *concurrency* at a time — concurrently across keys, one after the other within a
key, so one saga's messages are handled in order. A message's offset is committed only after
its handler returned, and per partition only up to the first message not done yet (what
follows it waits, committed or not, for it); commits go out in batches, one request for
everything finished while the previous one travelled. A handler that fails beyond what the
shared redelivery rules handle (the dead-letter send itself failed) is tried again in place,
so the partition does not move past it. A subscription reports itself started once the group
gave it its partitions (possibly none, when the group has more members than partitions).

Closing stops fetching, lets handlers in flight finish, commits what finished and leaves the
group. What was not committed is delivered again, to this group's next member that gets the
partition: delivery is at least once.

Replies. Every broker object shares one replies topic (*prefix* + *replies_topic*,
``pysaga.replies`` by default).
A reply channel reads all its partitions from their end, with no consumer group: it has no
offsets to keep (a reply that comes while nobody listens may be lost, as the reply contract
allows) and, unlike a group of its own, it costs no group join and leaves no group behind on
the broker. Its address is ``<replies topic>#<instance id>``, e.g.
``shop.pysaga.replies#<instance id>``: the address names the topic itself, so a reply reaches it
whatever the replier's prefix. A reply carries the instance id in the ``x-pysaga-reply-to``
header and channels skip records meant for another instance. (An address without ``#`` is a
destination, and gets the replier's prefix like any other.)

Connection loss. The client library connects again by itself; a send waits (up to
*request_timeout_ms*) for its batch to be acknowledged, a subscription that lost its place in
the group joins again, and what it had not committed is delivered again.

URL: ``kafka://host:9092[,host2:9092]``, with options as query parameters, e.g.
``kafka://127.0.0.1:9092?fetch_max_wait_ms=5&partitions=8&prefix=shop.``.

Timing. *fetch_max_wait_ms* is how long the broker may hold a fetch when no data is waiting;
Kafka answers as soon as data arrives, but a broker that does not (some Kafka-compatible
servers) adds up to that much to every hop: lower it (1 to 10 ms) there. A new consumer group's
first join waits for the broker (Kafka's ``group.initial.rebalance.delay.ms``, 3 s by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import anyio.lowlevel

try:
    from aiokafka import (  # type: ignore[import-untyped]
        AIOKafkaConsumer,
        AIOKafkaProducer,
        TopicPartition,
    )
    from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.errors import (  # type: ignore[import-untyped]
        CommitFailedError,
        IllegalStateError,
        KafkaConnectionError,
        KafkaError,
        KafkaTimeoutError,
        NoBrokersAvailable,
        NodeNotReadyError,
        RequestTimedOutError,
    )
except ImportError as exc:  # pragma: no cover - depends on what is installed
    if exc.name is None or exc.name.split(".")[0] != "aiokafka":
        raise
    raise ImportError("the Kafka broker needs aiokafka: pip install 'pysaga-core[kafka]'") from exc

from .._backends import require_asyncio
from ..errors import BrokerClosed, BrokerError, BrokerUnavailable
from ._base import BaseBroker, Consumer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = ("KafkaBroker", "topic_name")

logger = logging.getLogger("pysaga.brokers.kafka")

DEFAULT_SERVERS: Final = "127.0.0.1:9092"
DEFAULT_REPLIES_TOPIC: Final = "pysaga.replies"
HEADER_REPLY_TO: Final = "x-pysaga-reply-to"
"""The record header naming the broker instance a reply is for."""

_NO_HEADERS: Final[Mapping[str, str]] = {}
_TOPIC_MAX: Final = 249
_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")
_TOPIC_EXISTS: Final = 36  # TOPIC_ALREADY_EXISTS
_RETRY_PAUSE = 0.1
_STREAK = 64
"""Messages a worker handles one after the other before it lets other tasks run."""
_MAX_RETRY_PAUSE = 5.0

# Errors that mean the broker cannot be reached (now), not that it refused what was asked.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NoBrokersAvailable,
    NodeNotReadyError,
    RequestTimedOutError,
    OSError,
    TimeoutError,
)

_REFUSED_IDEMPOTENCE: set[str] = set()
"""Bootstrap servers whose cluster refused an idempotent producer in this process: later
brokers do not ask again."""

# URL query parameters and how to read them.
_INT_OPTIONS: Final = frozenset(
    {
        "partitions",
        "replication_factor",
        "fetch_max_wait_ms",
        "linger_ms",
        "max_batch_size",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "rebalance_timeout_ms",
        "request_timeout_ms",
        "max_buffered",
        "concurrency",
    }
)
_FLOAT_OPTIONS: Final = frozenset({"connect_timeout", "drain_timeout"})
_BOOL_OPTIONS: Final = frozenset({"idempotence", "create_topics"})
_STR_OPTIONS: Final = frozenset({"client_id", "prefix", "replies_topic"})
_PREFIX_MAX: Final = _TOPIC_MAX - 12
"""The longest prefix: ``topic_name`` keeps the first 238 characters of a name it shortens, so
a prefix up to this long stays whole in every topic name, with room for a character more."""


def topic_name(destination: str) -> str:
    """The Kafka topic that *destination* is sent to.

    A destination made only of the characters Kafka allows (letters, digits, ``.``, ``_``,
    ``-``) and at most 249 long is its own topic name. Any other gets its illegal characters
    replaced by ``_`` and a short hash of the original appended, so two destinations never
    share a topic.

    Args:
        destination: A destination name as given to ``publish`` or ``subscribe``.

    Returns:
        A valid Kafka topic name.
    """
    name = _ILLEGAL.sub("_", destination)
    if name == destination and 0 < len(name) <= _TOPIC_MAX and name not in (".", ".."):
        return name
    digest = hashlib.sha256(destination.encode()).hexdigest()[:10]
    return f"{name[: _TOPIC_MAX - 11]}-{digest}"


def _option(name: str, value: str) -> Any:
    """The value of URL query parameter *name*, read as the option's type."""
    if name in _STR_OPTIONS:
        return value
    if name in _BOOL_OPTIONS:
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"Kafka URL option {name}={value!r} must be true or false")
    if name in _INT_OPTIONS or name in _FLOAT_OPTIONS:
        try:
            return int(value) if name in _INT_OPTIONS else float(value)
        except ValueError:
            raise ValueError(f"Kafka URL option {name}={value!r} is not a number") from None
    known = ", ".join(sorted(_INT_OPTIONS | _FLOAT_OPTIONS | _BOOL_OPTIONS | _STR_OPTIONS))
    raise ValueError(f"unknown Kafka URL option {name!r}; known options: {known}")


def _headers_of(record_headers: Sequence[tuple[str, bytes]]) -> Mapping[str, str]:
    if not record_headers:
        return _NO_HEADERS
    return {
        key: value.decode("utf-8", "replace") if value is not None else ""
        for key, value in record_headers
    }


class _Partition:
    """What one assigned partition has handed out and what may be committed.

    Offsets arrive in increasing order; ``pending`` holds those not yet done, oldest first,
    and ``done`` those finished out of turn. ``commit_at`` is the offset after the longest
    finished prefix: what may be committed.
    """

    __slots__ = (
        "commit_at",
        "committed",
        "done",
        "idle",
        "inflight",
        "pending",
        "revoked",
        "tp",
    )

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.commit_at: int | None = None
        self.committed: int | None = None
        self.inflight = 0
        self.idle: anyio.Event | None = None  # set when inflight drops to 0, if made
        self.revoked = False

    def finish(self, offset: int) -> bool:
        """Mark *offset* done; returns whether ``commit_at`` moved."""
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            last = offset
            done = self.done
            while pending and pending[0] in done:
                last = pending.popleft()
                done.discard(last)
            self.commit_at = last + 1
            return True
        self.done.add(offset)
        return False

    @property
    def uncommitted(self) -> bool:
        return self.commit_at is not None and self.commit_at != self.committed


_Item: TypeAlias = tuple["_Partition | None", Any]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells a consume loop which partitions the group gave it and took away."""

    def __init__(self, loop: _Loop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._loop.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._loop.assign(assigned)


class _Loop:
    """One subscription's fetch loop, worker pool and committer.

    The fetch loop hands records to workers through a queue; records whose key is already
    being handled wait in that key's lane and are taken by the worker that finishes the one
    before them, so a key's records are handled one after the other, in order.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        consumer: Consumer,
        client: Any,
        *,
        accept: Callable[[Any], bool] | None = None,
        group: bool = True,
    ) -> None:
        self.broker = broker
        self.consumer = consumer
        self.client = client
        self.accept = accept
        self.group = group
        self.partitions: dict[Any, _Partition] = {}
        self.lanes: dict[bytes, deque[_Item]] = {}
        self.capacity = broker.max_buffered or 4 * consumer.concurrency
        self.low_water = self.capacity // 2  # fetch again once the buffer is down to this
        self.held = 0
        self.room = anyio.Event()
        self.room.set()
        self.dirty = anyio.Event()
        self.assigned = anyio.Event()
        self.commit_lock = anyio.Lock()
        self.ready: deque[_Item] = deque()
        self.waiting: deque[anyio.Event] = deque()  # idle workers

    # -- the group's decisions ---------------------------------------------------------------

    def assign(self, assigned: Any) -> None:
        for tp in assigned:
            if tp not in self.partitions:
                self.partitions[tp] = _Partition(tp)
        self.assigned.set()

    async def revoke(self, revoked: Any) -> None:
        """Stop handing out records of *revoked*, let their handlers finish for a moment,
        and commit what finished before the partitions go to another member."""
        parts = [self.partitions[tp] for tp in revoked if tp in self.partitions]
        if not parts:
            return
        for part in parts:
            part.revoked = True
        with anyio.move_on_after(self.broker._revoke_timeout):
            for part in parts:
                if part.inflight:
                    part.idle = anyio.Event()
                    await part.idle.wait()
        await self.commit(parts)
        for part in parts:
            self.partitions.pop(part.tp, None)

    # -- committing --------------------------------------------------------------------------

    async def commit(self, parts: Sequence[_Partition] | None = None) -> bool:
        """Commit what finished in *parts* (default: every partition still ours); returns
        False when a retry may help."""
        async with self.commit_lock:
            if parts is None:
                parts = [p for p in self.partitions.values() if not p.revoked]
            offsets = {p.tp: p.commit_at for p in parts if p.uncommitted}
            if not offsets:
                return True
            try:
                await self.client.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on: another member starts from the last commit.
                logger.info(
                    "could not commit offsets of %r for group %r (the group rebalanced; "
                    "what was not committed is delivered again): %s",
                    self.consumer.destination,
                    self.consumer.group,
                    exc,
                )
                return True
            except KafkaError as exc:
                logger.warning(
                    "committing offsets of %r for group %r failed; trying again: %s",
                    self.consumer.destination,
                    self.consumer.group,
                    exc,
                )
                return False
            for part in parts:
                if part.tp in offsets:
                    part.committed = offsets[part.tp]
            return True

    async def committer(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty = anyio.Event()
            if not await self.commit():
                await anyio.sleep(self.broker._retry_pause)
                self.dirty.set()

    # -- fetching ----------------------------------------------------------------------------

    async def fetch(self) -> None:
        client = self.client
        failures = 0
        while True:
            if self.consumer.closing:
                await anyio.sleep_forever()  # the close cancels us once handlers are done
            while self.held >= self.capacity:
                self.room = anyio.Event()
                await self.room.wait()
            try:
                batches = await client.getmany(
                    timeout_ms=1000, max_records=self.capacity - self.held
                )
                failures = 0
            except Exception as exc:  # the client retries what it can; keep consuming
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    logger.warning(
                        "fetching %r for group %r failed; trying again: %s: %s",
                        self.consumer.destination,
                        self.consumer.group,
                        type(exc).__name__,
                        exc,
                    )
                await anyio.sleep(min(_RETRY_PAUSE * failures, _MAX_RETRY_PAUSE))
                continue
            for tp, records in batches.items():
                self.dispatch(tp, records)

    def dispatch(self, tp: Any, records: Sequence[Any]) -> None:
        part: _Partition | None = None
        if self.group:
            part = self.partitions.get(tp)
            if part is None or part.revoked:
                return  # no longer ours: its next owner fetches it from the last commit
        accept = self.accept
        lanes = self.lanes
        ready = self.ready
        for record in records:
            if accept is not None and not accept(record):
                continue
            if part is not None:
                part.pending.append(record.offset)
            self.held += 1
            key = record.key
            item = (part, record)
            if key is None:
                ready.append(item)
                continue
            lane = lanes.get(key)
            if lane is None:
                lanes[key] = deque()
                ready.append(item)
            else:
                lane.append(item)
        waiting = self.waiting
        for _ in range(min(len(ready), len(waiting))):
            waiting.popleft().set()

    # -- handling ----------------------------------------------------------------------------

    async def worker(self) -> None:
        lanes = self.lanes
        ready = self.ready
        streak = 0
        while True:
            if not ready:
                waiter = anyio.Event()
                self.waiting.append(waiter)
                await waiter.wait()
                streak = 0
                continue
            item = ready.popleft()
            while True:
                await self.handle(*item)
                key = item[1].key
                if key is None:
                    break
                lane = lanes[key]
                if lane:
                    item = lane.popleft()
                else:
                    del lanes[key]
                    break
            streak += 1
            if streak >= _STREAK:  # handlers that never wait must not starve the others
                streak = 0
                await anyio.lowlevel.checkpoint()

    async def handle(self, part: _Partition | None, record: Any) -> None:
        try:
            if part is not None and part.revoked:
                return
            consumer = self.consumer
            if consumer.closing:
                return
            headers = _headers_of(record.headers)
            body = record.value if record.value is not None else b""
            if part is None:
                await self.process(body, headers)
                return
            part.inflight += 1
            try:
                try:
                    done = await consumer.process(body, headers)
                except Exception:
                    done = await self.process(body, headers, failed=True)
            finally:
                part.inflight -= 1
                if not part.inflight and part.idle is not None:
                    part.idle.set()
            if done and part.finish(record.offset) and not part.revoked:
                self.dirty.set()
        finally:
            self.held -= 1
            if self.held <= self.low_water:
                self.room.set()

    async def process(
        self, body: bytes, headers: Mapping[str, str], *, failed: bool = False
    ) -> bool:
        """Hand one message to the consumer; a failure to settle it (*failed*: the first try
        failed already) is tried again in place, so the partition does not move past it."""
        failures = 0
        while True:
            if failed:
                if self.consumer.closing:
                    return False
                failures += 1
                logger.exception(
                    "could not settle a message from %r (attempt %d); trying again",
                    self.consumer.destination,
                    failures,
                )
                await anyio.sleep(min(_RETRY_PAUSE * 2**failures, _MAX_RETRY_PAUSE))
            try:
                return await self.consumer.process(body, headers)
            except Exception:
                failed = True

    async def run(self, started: Callable[[], None]) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(self.consumer.concurrency):
                tg.start_soon(self.worker)
            if self.group:
                tg.start_soon(self.committer)
            started()
            await self.fetch()


class KafkaBroker(BaseBroker):
    """A broker on Kafka, through aiokafka.

    Args:
        bootstrap_servers: Where to reach the cluster first: ``"host:port"``, a
            comma-separated list of them, or a sequence (default: ``127.0.0.1:9092``).
        client_id: The name Kafka shows for this client's connections.
        partitions: Partitions of a topic this broker creates (more allow more consumers of
            one group to share the work).
        replication_factor: Replicas of a topic this broker creates.
        create_topics: Create missing topics (``False``: they must exist, or the cluster
            creates them on its own).
        fetch_max_wait_ms: How long the broker may hold a fetch while no data is waiting.
            Kafka answers as soon as data arrives; a broker that does not adds up to this
            much to every hop, so use 1 to 10 there.
        linger_ms: How long a send may wait for others to share its produce request.
        max_batch_size: Bytes of records the producer gathers per partition into one batch;
            a send to a partition whose batch is full waits for it to go out.
        session_timeout_ms: How long the group waits without a heartbeat before it gives a
            member's partitions to others.
        heartbeat_interval_ms: How often a member tells the group it is alive (default: a
            third of the session timeout, at most 3 s).
        rebalance_timeout_ms: How long the group waits for members to join again in a
            rebalance (default: the session timeout).
        request_timeout_ms: How long a request (a send included) may wait for the broker.
        connect_timeout: Seconds to reach the cluster when the broker opens, before
            :class:`~pysaga.BrokerUnavailable`.
        idempotence: Ask for an idempotent producer (no duplicates from the client's own
            retries). A broker that refuses it gets a warning in the log and a plain
            ``acks=all`` producer.
        prefix: Put before every topic name and consumer group id (e.g. ``"shop."``), so
            several applications can share a cluster. Only letters, digits, ``.``, ``_`` and
            ``-``, as in a topic name.
        replies_topic: The topic every reply channel shares, named without the prefix (the
            topic is *prefix* + *replies_topic*).
        max_buffered: Records a subscription holds ahead of its handlers (default: four times
            its concurrency).
        **options: See :class:`~pysaga.brokers.BaseBroker` (``redelivery``, ``concurrency``,
            ``drain_timeout``, ``tracer_provider``).

    Raises:
        ValueError: An option is out of range, or *prefix* has a character Kafka does not allow
            in a topic name or is too long (more than 237 characters) to leave room for a
            destination.

    Example::

        async with KafkaBroker("127.0.0.1:9092") as broker:
            await broker.subscribe("stock", handle)
            await broker.publish("stock", Envelope.of(ReserveStock(sku="book", qty=1)))
    """

    system = "kafka"

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] = DEFAULT_SERVERS,
        *,
        client_id: str = "pysaga",
        partitions: int = 4,
        replication_factor: int = 1,
        create_topics: bool = True,
        fetch_max_wait_ms: int = 100,
        linger_ms: int = 0,
        max_batch_size: int = 262_144,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int | None = None,
        rebalance_timeout_ms: int | None = None,
        request_timeout_ms: int = 30_000,
        connect_timeout: float = 10.0,
        idempotence: bool = True,
        prefix: str = "",
        replies_topic: str = DEFAULT_REPLIES_TOPIC,
        max_buffered: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        servers = (
            [s.strip() for s in bootstrap_servers.split(",")]
            if isinstance(bootstrap_servers, str)
            else [s.strip() for s in bootstrap_servers]
        )
        servers = [s if ":" in s else f"{s}:9092" for s in servers if s]
        if not servers:
            raise ValueError("bootstrap_servers names no server; give 'host:port'")
        if partitions < 1 or replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")
        if fetch_max_wait_ms < 0 or linger_ms < 0:
            raise ValueError("fetch_max_wait_ms and linger_ms must not be negative")
        if heartbeat_interval_ms is None:
            heartbeat_interval_ms = min(3_000, session_timeout_ms // 3)
        if not 0 < heartbeat_interval_ms < session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be above 0 and shorter than session_timeout_ms"
            )
        if connect_timeout <= 0 or request_timeout_ms <= 0:
            raise ValueError("connect_timeout and request_timeout_ms must be > 0")
        if max_buffered is not None and max_buffered < 1:
            raise ValueError("max_buffered must be at least 1 (or None)")
        if _ILLEGAL.search(prefix):
            illegal = "".join(sorted(set(_ILLEGAL.findall(prefix))))
            raise ValueError(
                f"prefix {prefix!r} has characters Kafka does not allow in a topic name "
                f"({illegal!r}); use only letters, digits, '.', '_' and '-', e.g. 'shop.'"
            )
        if len(prefix) > _PREFIX_MAX:
            raise ValueError(
                f"prefix is {len(prefix)} characters long; at most {_PREFIX_MAX} leave room for "
                f"the destination in a Kafka topic name (at most {_TOPIC_MAX} characters)"
            )
        self.bootstrap_servers = servers
        self.client_id = client_id
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.create_topics = create_topics
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.linger_ms = linger_ms
        self.max_batch_size = max_batch_size
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout = connect_timeout
        self.idempotence = idempotence
        self.prefix = prefix
        self.replies_topic = topic_name(prefix + replies_topic)
        """The replies topic's full name, prefix included."""
        self.max_buffered = max_buffered
        self.instance = uuid.uuid4().hex[:16]
        self._retry_pause = 0.5
        self._revoke_timeout = min(self.drain_timeout, session_timeout_ms / 2000)
        self.idempotent = False
        """Whether the producer is idempotent (known once the broker is open)."""
        self._producer: Any = None
        self._admin: Any = None
        self._admin_lock = anyio.Lock()
        self._topics: dict[str, str] = {}  # destination -> its topic
        self._named: dict[str, str] = {}  # topic named in a reply address -> its topic
        self._existing: set[str] = set()
        self._creating: dict[str, anyio.Lock] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaBroker:
        """A broker for ``kafka://host:port[,host2:port][?option=value&...]``.

        Query parameters are the class's options (``fetch_max_wait_ms``, ``partitions``,
        ``client_id``, ``prefix``, ...); keyword *options* win over them (``prefix=`` given
        both ways: the keyword's).

        Args:
            url: The ``kafka://`` URL.
            **options: Options as for the class.

        Returns:
            The broker, not yet entered.

        Raises:
            ValueError: *url* is not a ``kafka://`` URL, names no server, or has an unknown or
                malformed option.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "kafka":
            raise ValueError(
                f"Kafka URL {url!r} must start with 'kafka://', e.g. 'kafka://127.0.0.1:9092'"
            )
        if not parts.netloc:
            raise ValueError(f"Kafka URL {url!r} names no server, e.g. 'kafka://127.0.0.1:9092'")
        merged = {
            name: _option(name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        }
        merged.update(options)
        return cls(parts.netloc, **merged)

    def __repr__(self) -> str:
        return f"<KafkaBroker {','.join(self.bootstrap_servers)} {self._state}>"

    # -- naming ------------------------------------------------------------------------------

    def topic_for(self, destination: str) -> str:
        """The Kafka topic that *destination* is sent to: :func:`topic_name` of the prefix
        and the destination."""
        return topic_name(self.prefix + destination)

    def group_id(self, group: str) -> str:
        """The Kafka consumer group id of subscription group *group*: the prefix and the
        group."""
        return self.prefix + group

    @property
    def reply_address(self) -> str:
        """The address this broker's reply channel receives on."""
        return f"{self.replies_topic}#{self.instance}"

    # -- errors ------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return ",".join(self.bootstrap_servers)

    def _translate(self, exc: BaseException, doing: str) -> BrokerError:
        """pysaga's error for the client library's *exc*, raised while *doing* something."""
        if isinstance(exc, _UNREACHABLE):
            return BrokerUnavailable(
                f"{doing}: cannot reach Kafka at {self._where} ({type(exc).__name__}: {exc}); "
                "check that the brokers are running and that the address each one advertises "
                "is reachable from here"
            )
        return BrokerError(
            f"{doing}: Kafka at {self._where} refused it ({type(exc).__name__}: {exc})"
        )

    @contextlib.contextmanager
    def _map_errors(self, doing: str) -> Iterator[None]:
        """Turn the client library's errors into pysaga's."""
        try:
            yield
        except (KafkaError, OSError, TimeoutError) as exc:
            raise self._translate(exc, doing) from exc

    # -- connection --------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
        }

    async def _start_producer(self, idempotent: bool) -> Any:
        producer = AIOKafkaProducer(
            **self._client_options(),
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_size,
        )
        try:
            await producer.start()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def __aenter__(self) -> Self:
        require_asyncio("the Kafka broker", "aiokafka", "the in-memory broker (memory://)")
        return await super().__aenter__()

    async def _open(self) -> None:
        where = self._where
        try:
            with anyio.fail_after(self.connect_timeout):
                if self.idempotence and where not in _REFUSED_IDEMPOTENCE:
                    try:
                        self._producer = await self._start_producer(True)
                        self.idempotent = True
                        return
                    except _UNREACHABLE:
                        raise
                    except KafkaError as exc:
                        _REFUSED_IDEMPOTENCE.add(where)
                        logger.warning(
                            "Kafka at %s refused an idempotent producer (%s: %s); sending "
                            "with acks=all without it: a send the client retries may be "
                            "stored twice",
                            where,
                            type(exc).__name__,
                            exc,
                        )
                elif self.idempotence:
                    logger.info(
                        "Kafka at %s refused an idempotent producer before; sending with "
                        "acks=all without it",
                        where,
                    )
                self._producer = await self._start_producer(False)
        except (*_UNREACHABLE, KafkaError) as exc:
            raise BrokerUnavailable(
                f"cannot connect to Kafka at {where} within {self.connect_timeout} s "
                f"({type(exc).__name__}: {exc}); check that the brokers are running and "
                "listening there, and that the address each one advertises (its "
                "advertised.listeners) is reachable from this machine"
            ) from exc

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            with anyio.move_on_after(10), contextlib.suppress(Exception):
                await producer.stop()
        if admin is not None:
            with anyio.move_on_after(5), contextlib.suppress(Exception):
                await admin.close()

    # -- topics ------------------------------------------------------------------------------

    async def _admin_client(self) -> Any:
        if self._admin is None:
            async with self._admin_lock:
                if self._admin is None:
                    admin = AIOKafkaAdminClient(**self._client_options())
                    try:
                        await admin.start()
                    except BaseException:
                        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                            await admin.close()
                        raise
                    self._admin = admin
        return self._admin

    async def _topic(self, destination: str) -> str:
        """The topic of *destination*, created if it is missing (once per broker object)."""
        topic = self._topics.get(destination)
        if topic is None:
            topic = self.topic_for(destination)
            await self._ensure_topic(topic)
            self._topics[destination] = topic
        return topic

    async def _named_topic(self, name: str) -> str:
        """The topic called *name* (a reply address names it whole: no prefix is added),
        created if it is missing."""
        topic = self._named.get(name)
        if topic is None:
            topic = topic_name(name)
            await self._ensure_topic(topic)
            self._named[name] = topic
        return topic

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self._existing or not self.create_topics:
            return
        lock = self._creating.get(topic)
        if lock is None:
            lock = self._creating[topic] = anyio.Lock()
        async with lock:
            if topic in self._existing:
                return
            with self._map_errors(f"creating topic {topic!r}"):
                admin = await self._admin_client()
                response = await admin.create_topics(
                    [NewTopic(topic, self.partitions, self.replication_factor)]
                )
                for name, code, message in _topic_errors(response):
                    if code not in (0, _TOPIC_EXISTS) and name == topic:
                        if topic in await admin.list_topics():
                            break  # not ours to create, but there
                        raise BrokerError(
                            f"Kafka at {self._where} refused to create topic {topic!r} (error "
                            f"{code}: {message}); create it yourself, or let this client "
                            "create topics"
                        )
            self._existing.add(topic)
        self._creating.pop(topic, None)

    # -- sending -----------------------------------------------------------------------------

    async def _send(
        self, destination: str, body: bytes, *, key: str | None, headers: Mapping[str, str]
    ) -> None:
        topic = self._topics.get(destination) or await self._topic(destination)
        await self._produce(
            topic,
            body,
            key.encode() if key is not None else None,
            [(name, value.encode()) for name, value in headers.items()] if headers else None,
        )

    async def _send_reply(self, address: str, body: bytes, *, key: str | None) -> None:
        topic_part, sep, instance = address.rpartition("#")
        if not sep:
            await self._send(address, body, key=key, headers=_NO_HEADERS)
            return
        topic = self._named.get(topic_part) or await self._named_topic(topic_part)
        await self._produce(
            topic,
            body,
            key.encode() if key is not None else None,
            [(HEADER_REPLY_TO, instance.encode())],
        )

    async def _produce(
        self, topic: str, body: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> None:
        producer = self._producer
        if producer is None:
            self._check_open()
            raise BrokerClosed(f"{type(self).__name__} has no producer: it is {self._state}")
        try:
            future = await producer.send(topic, body, key=key, headers=headers)
            await future
        except (KafkaError, OSError) as exc:
            raise self._translate(exc, f"sending to topic {topic!r}") from exc

    # -- receiving ---------------------------------------------------------------------------

    def _consumer_client(self, group: str | None, offset_reset: str) -> Any:
        options: dict[str, Any] = {
            **self._client_options(),
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": offset_reset,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
        }
        if group is not None:
            options.update(
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                rebalance_timeout_ms=self.rebalance_timeout_ms,
            )
        return AIOKafkaConsumer(**options)

    async def _consume(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        topic = await self._topic(consumer.destination)
        group = self.group_id(consumer.group)
        client = self._consumer_client(group, "earliest")
        loop = _Loop(self, consumer, client)
        client.subscribe([topic], listener=_Listener(loop))
        try:
            with self._map_errors(f"joining group {group!r} on topic {topic!r}"):
                await client.start()  # joins the group and waits for the assignment
            await loop.assigned.wait()
            await loop.run(task_status.started)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_consumer(loop)

    async def _stop_consumer(self, loop: _Loop) -> None:
        """Commit what finished, and leave the group."""
        if loop.group and loop.partitions:
            with anyio.move_on_after(5):
                await loop.commit()
        with anyio.move_on_after(5), contextlib.suppress(Exception):
            await loop.client.stop()

    async def _consume_replies(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[str]
    ) -> None:
        topic = await self._named_topic(self.replies_topic)
        with self._map_errors(f"reading the partitions of topic {topic!r}"):
            partitions = await self._producer.partitions_for(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        client = self._consumer_client(None, "latest")
        client.assign(tps)
        mine = self.instance.encode()

        def accept(record: Any) -> bool:
            for name, value in record.headers:
                if name == HEADER_REPLY_TO:
                    return bool(value == mine)
            return False

        loop = _Loop(self, consumer, client, accept=accept, group=False)
        address = self.reply_address
        try:
            with self._map_errors(f"reading replies from topic {topic!r}"):
                await client.start()
                await client.seek_to_end(*tps)
                for tp in tps:  # resolve the positions: what is sent from now on arrives
                    await client.position(tp)
            await loop.run(lambda: task_status.started(address))
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_consumer(loop)


def _topic_errors(response: Any) -> Iterator[tuple[str, int, str | None]]:
    """``(topic, error code, message)`` for each topic in a CreateTopics response."""
    for entry in response.topic_errors:
        if len(entry) >= 3:
            yield entry[0], entry[1], entry[2]
        else:
            yield entry[0], entry[1], None
