"""A participant's inbox in PostgreSQL, with a transactional outbox.

Two tables in the schema the URL names: ``pysaga_inbox`` (the messages a service handled, with
the replies it gave, keyed by consumer and message id) and ``pysaga_outbox`` (replies and
events written in a handler's transaction, waiting to be sent).

It is a :class:`~pysaga.TransactionalInbox`: a :class:`~pysaga.Participant` using it handles
each command in one transaction (claim the message, run the handler with its own writes on
the same connection, record the reply, queue the reply and the events in the outbox) and sends
what the outbox holds after the commit. Several copies of a service, in several processes, may
share one inbox: the primary key on (consumer, message id) makes the second copy of a message
wait for the first and then answer from its record.

Needs the ``postgres`` extra (asyncpg).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Self

import anyio

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "the PostgreSQL inbox needs asyncpg: install the extra with "
        "'pip install \"pysaga-core[postgres]\"'"
    ) from exc

from .._backends import require_asyncio
from ..errors import StoreError
from ..protocols import InboxRecord, OutboxMessage
from ._postgres import (
    RELEASE_TIMEOUT,
    PostgresOptions,
    apply_schema,
    check_schema_name,
    discard,
    lost_connection,
    open_pool,
    parse_url,
    redact,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
    from types import TracebackType

    from asyncpg.pool import PoolConnectionProxy

__all__ = ("MIGRATIONS", "PostgresInbox", "PostgresInboxTransaction")

logger = logging.getLogger("pysaga.stores")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pysaga_inbox (
        consumer       text NOT NULL,
        message_id     text NOT NULL,
        reply_type     text NOT NULL,
        schema_version integer NOT NULL,
        payload        text NOT NULL,
        handled_at     double precision NOT NULL,
        PRIMARY KEY (consumer, message_id)
    );
    CREATE INDEX pysaga_inbox_handled_at ON pysaga_inbox (handled_at);
    CREATE TABLE pysaga_outbox (
        id          bigserial PRIMARY KEY,
        consumer    text NOT NULL,
        message_id  text NOT NULL,
        destination text NOT NULL,
        is_reply    boolean NOT NULL,
        envelope    bytea NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX pysaga_outbox_message ON pysaga_outbox (consumer, message_id);
    """,
)
"""The inbox's schema migrations: ``MIGRATIONS[i]`` takes it from version ``i`` to ``i + 1``."""

_CLAIMED = InboxRecord(reply_type="", schema_version=0, payload="", handled_at=0.0)
"""What a claimed message's row holds until its reply is recorded (never committed so)."""

_GET = (
    "SELECT reply_type, schema_version, payload, handled_at FROM pysaga_inbox"
    " WHERE consumer = $1 AND message_id = $2"
)
_INSERT = (
    "INSERT INTO pysaga_inbox (consumer, message_id, reply_type, schema_version, payload,"
    " handled_at) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (consumer, message_id) DO NOTHING RETURNING true"
)
_FINISH = """
WITH recorded AS (
    UPDATE pysaga_inbox SET reply_type = $3, schema_version = $4, payload = $5, handled_at = $6
    WHERE consumer = $1 AND message_id = $2
)
INSERT INTO pysaga_outbox (consumer, message_id, destination, is_reply, envelope)
SELECT $1, $2, * FROM unnest($7::text[], $8::boolean[], $9::bytea[])
RETURNING id
"""
_RECORD = (
    "UPDATE pysaga_inbox SET reply_type = $3, schema_version = $4, payload = $5,"
    " handled_at = $6 WHERE consumer = $1 AND message_id = $2"
)
_TAKE = (
    "SELECT id, destination, is_reply, envelope FROM pysaga_outbox"
    " WHERE created_at < clock_timestamp() - make_interval(secs => $1)"
    " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
)
_UNSENT = (
    "SELECT id, destination, is_reply, envelope FROM pysaga_outbox"
    " WHERE consumer = $1 AND message_id = $2 ORDER BY id FOR UPDATE SKIP LOCKED"
)
_ANY_UNSENT = "SELECT EXISTS (SELECT FROM pysaga_outbox WHERE consumer = $1 AND message_id = $2)"
_DELETE = "DELETE FROM pysaga_outbox WHERE id = ANY($1::bigint[])"

_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _row(row: Any) -> InboxRecord:
    return InboxRecord(row[0], row[1], row[2], row[3])


def _args(record: InboxRecord) -> tuple[str, int, str, float]:
    return (record.reply_type, record.schema_version, record.payload, record.handled_at)


class PostgresInbox:
    """An :class:`~pysaga.Inbox` (and :class:`~pysaga.TransactionalInbox`) in PostgreSQL.

    Args:
        dsn: The server, as ``postgresql://user:password@host:5432/database`` (without
            pysaga's own options; :meth:`from_url` takes a URL with them).
        schema: The PostgreSQL schema its tables live in (created if missing).
        pool_size: The most connections it opens. A participant holds one per command it
            handles at the same time, and its relay one more.

    Example::

        stock = Participant("stock", broker=..., inbox="postgresql://app@db/shop?schema=stock")
    """

    def __init__(self, dsn: str, *, schema: str = "public", pool_size: int = 8) -> None:
        if pool_size < 1:
            raise ValueError(f"PostgresInbox: pool_size must be at least 1, got {pool_size}")
        self._options = PostgresOptions(parse_url(dsn).dsn, check_schema_name(schema), pool_size)
        self._pool: asyncpg.Pool[Any] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresInbox:
        """Build from ``postgresql://user:password@host:5432/database?schema=s&pool_size=8``."""
        options = parse_url(url)
        return cls(options.dsn, schema=options.schema, pool_size=options.pool_size)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema its tables live in."""
        return self._options.schema

    def __repr__(self) -> str:
        return f"<PostgresInbox {redact(self._options.dsn)!r} schema={self.schema!r}>"

    async def __aenter__(self) -> Self:
        if self._pool is not None:
            raise RuntimeError(f"{self!r} is already open; enter it once")
        require_asyncio("the PostgreSQL inbox", "asyncpg", "the SQLite inbox (sqlite:///inbox.db)")
        pool = await open_pool(self._options, what="inbox")
        try:
            with self._errors():
                await apply_schema(pool, self.schema, "inbox", MIGRATIONS)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def _db(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with inbox:'")
        return self._pool

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except _ERRORS as exc:
            raise StoreError(
                f"PostgreSQL inbox in schema {self.schema!r}: {type(exc).__name__}: {exc}"
            ) from exc

    # -- Inbox -------------------------------------------------------------------------------

    async def get(self, consumer: str, message_id: str) -> InboxRecord | None:
        with self._errors():
            row = await self._db.fetchrow(_GET, consumer, message_id)
        return None if row is None else _row(row)

    async def put(self, consumer: str, message_id: str, record: InboxRecord) -> InboxRecord:
        with self._errors():
            inserted = await self._db.fetchval(_INSERT, consumer, message_id, *_args(record))
            if inserted:
                return record
            row = await self._db.fetchrow(_GET, consumer, message_id)
        if row is None:  # purged between the two statements: it is not recorded now
            return await self.put(consumer, message_id, record)
        return _row(row)

    async def purge(self, before: float) -> int:
        with self._errors():
            status: str = await self._db.execute(
                "DELETE FROM pysaga_inbox WHERE handled_at < $1", before
            )
        return int(status.rsplit(" ", 1)[-1])

    # -- TransactionalInbox ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, consumer: str) -> AsyncIterator[PostgresInboxTransaction]:
        """Open a transaction for *consumer* on a connection of the pool: it commits when the
        block ends normally and rolls back when it raises.

        Raises:
            StoreError: the database failed to start or commit it.
        """
        pool = self._db
        with self._errors():
            conn = await pool.acquire()
        try:
            transaction = conn.transaction()
            with self._errors():
                await transaction.start()
            try:
                yield PostgresInboxTransaction(self, conn, consumer)
            except BaseException:
                with anyio.move_on_after(10, shield=True), contextlib.suppress(*_ERRORS):
                    await transaction.rollback()
                raise
            with self._errors():
                await transaction.commit()
        except BaseException as exc:
            if lost_connection(exc):
                discard(conn)
            raise
        finally:
            # bounded: a connection that cannot be reset in time is terminated by the pool
            await pool.release(conn, timeout=RELEASE_TIMEOUT)

    @contextlib.asynccontextmanager
    async def _discard_if_lost(self, conn: Any) -> AsyncIterator[None]:
        try:
            yield
        except BaseException as exc:
            if lost_connection(exc):
                discard(conn)
            raise

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        # Without waiting for the flush to disk: a delete lost in a crash only means that the
        # relay sends those messages once more, which at-least-once delivery allows. One round
        # trip, and no disk wait on the path of every command. Each command deletes its own
        # (not batched with others'), so one delete stuck on a dead connection holds up only
        # its own command, never the service.
        listed = ", ".join(str(int(outbox_id)) for outbox_id in ids)
        with self._errors():
            await self._db.execute(
                "BEGIN; SET LOCAL synchronous_commit TO off;"
                f" DELETE FROM pysaga_outbox WHERE id IN ({listed}); COMMIT"
            )

    async def relay(
        self,
        send: Callable[[OutboxMessage], Awaitable[None]],
        *,
        older_than: float,
        limit: int = 100,
    ) -> int:
        failure: Exception | None = None
        sent: list[int] = []
        with self._errors():
            async with self._db.acquire() as conn, self._discard_if_lost(conn), conn.transaction():
                rows = await conn.fetch(_TAKE, float(older_than), limit)
                for row in rows:
                    try:
                        await send(OutboxMessage(row[1], bytes(row[3]), row[2]))
                    except Exception as exc:  # the rest waits for the next round
                        failure = exc
                        break
                    sent.append(row[0])
                if sent:
                    await conn.execute(_DELETE, sent)
        if failure is not None:
            raise failure
        return len(sent)


class PostgresInboxTransaction:
    """One open transaction of a :class:`PostgresInbox` (an :class:`~pysaga.InboxTransaction`).

    Its :attr:`connection` is the asyncpg connection the transaction runs on; a handler's own
    writes through it commit with the inbox record and the outbox messages.
    """

    def __init__(self, inbox: PostgresInbox, conn: PoolConnectionProxy[Any], consumer: str) -> None:
        self._inbox = inbox
        self._conn = conn
        self.consumer = consumer

    @property
    def connection(self) -> PoolConnectionProxy[Any]:
        """The asyncpg connection (a pool's connection) the transaction runs on."""
        return self._conn

    async def claim(self, message_id: str) -> InboxRecord | None:
        with self._inbox._errors():
            while True:
                if await self._conn.fetchval(_INSERT, self.consumer, message_id, *_args(_CLAIMED)):
                    return None
                # Another transaction recorded it (this insert waited for it to commit): a
                # new statement sees what it committed.
                row = await self._conn.fetchrow(_GET, self.consumer, message_id)
                if row is not None:
                    return _row(row)

    async def unsent(self, message_id: str) -> list[tuple[int, OutboxMessage]] | None:
        with self._inbox._errors():
            rows = await self._conn.fetch(_UNSENT, self.consumer, message_id)
            if not rows:
                return (
                    []
                    if await self._conn.fetchval(_ANY_UNSENT, self.consumer, message_id)
                    else None
                )
        return [(row[0], OutboxMessage(row[1], bytes(row[3]), row[2])) for row in rows]

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        if ids:
            with self._inbox._errors():
                await self._conn.execute(_DELETE, list(ids))

    async def add(self, message_id: str, record: InboxRecord) -> None:
        with self._inbox._errors():
            await self._conn.execute(_INSERT, self.consumer, message_id, *_args(record))

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        with self._inbox._errors():
            await self._conn.execute("SAVEPOINT pysaga_handler")
        try:
            yield
        except Exception:  # (when cancelled, the whole transaction rolls back instead)
            try:
                await self._conn.execute("ROLLBACK TO SAVEPOINT pysaga_handler")
            except _ERRORS:  # the connection is gone: the transaction cannot commit anyway
                logger.warning("could not roll back to the handler's savepoint", exc_info=True)
            raise

    async def finish(
        self, message_id: str, record: InboxRecord, messages: Sequence[OutboxMessage]
    ) -> list[int]:
        with self._inbox._errors():
            if not messages:
                await self._conn.execute(_RECORD, self.consumer, message_id, *_args(record))
                return []
            rows = await self._conn.fetch(
                _FINISH,
                self.consumer,
                message_id,
                *_args(record),
                [m.destination for m in messages],
                [m.reply for m in messages],
                [m.envelope for m in messages],
            )
        return [row[0] for row in rows]
