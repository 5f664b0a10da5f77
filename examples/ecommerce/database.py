"""The storage every service of the shop uses: a database of its own.

Each service owns one database and no service reads another's. Where it lives is the one
thing that changes between the two ways the shop runs:

* **in one process** (``make demo``), each service has its own SQLite file;
* **as separate processes** (``distributed.py``), each has its own PostgreSQL schema, the
  same schema as its inbox. A handler then passes its ``ctx`` to :meth:`Database.transaction`,
  and the service's writes join the transaction the participant handles the message in: the
  rows, the inbox record and the events it publishes commit together, or not at all.

The services write their SQL once, with PostgreSQL's ``$1`` placeholders, in the subset both
databases speak; on SQLite they become ``?1``.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence

    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    from pysaga import HandlerContext

__all__ = (
    "Database",
    "SqliteDatabase",
    "Transaction",
    "from_cents",
    "open_database",
    "to_cents",
)

CENT = Decimal("0.01")
Row = tuple[Any, ...]


class Transaction(Protocol):
    """The statements a service runs inside one transaction."""

    async def execute(self, sql: str, *args: object) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None: ...

    async def fetchone(self, sql: str, *args: object) -> Row | None: ...

    async def fetchall(self, sql: str, *args: object) -> list[Row]: ...


class Database(Protocol):
    """One service's database."""

    def transaction(
        self, ctx: HandlerContext | None = None
    ) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """One transaction: all of its writes are committed, or none.

        Given the ``ctx`` of a handler that the participant runs in a PostgreSQL transaction
        (a transactional inbox in the same database), the writes join that transaction, so
        they commit with the inbox record and the events, or not at all. Otherwise the
        transaction is the database's own.
        """
        ...

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        """Read rows outside any saga (for queries and reports)."""
        ...


@contextlib.asynccontextmanager
async def open_database(where: Path | str, tables: str) -> AsyncIterator[Database]:
    """Open a service's database and create its *tables* if they are missing.

    Args:
        where: A SQLite file's path, or a ``postgresql://`` URL with ``?schema=`` naming the
            service's schema.
        tables: The ``CREATE TABLE IF NOT EXISTS`` statements of the service.
    """
    if not str(where).startswith(("postgresql://", "postgres://")):
        sqlite = SqliteDatabase(Path(where), tables)
        try:
            yield sqlite
        finally:
            sqlite.close()
    else:
        async with _PostgresDatabase.open(str(where), tables) as database:
            yield database


# -- SQLite: the embedded default ------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(\d+)")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]*")


def _sqlite_sql(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql)


class SqliteDatabase:
    """A SQLite file, one transaction at a time. The read model keeps its file this way too.

    Statements run on the event loop: on a small local file each takes microseconds, less
    than a trip to a worker thread would cost. ``COMMIT`` is the one that may wait for the
    disk (when it checkpoints the write-ahead log), so it runs in a worker thread.
    """

    def __init__(self, path: Path, tables: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(tables)
        self._one_at_a_time = anyio.Lock()

    def _run(self, sql: str, args: Sequence[object]) -> list[Row]:
        return self._conn.execute(_sqlite_sql(sql), tuple(args)).fetchall()

    @contextlib.asynccontextmanager
    async def transaction(self, ctx: HandlerContext | None = None) -> AsyncIterator[Transaction]:
        async with self._one_at_a_time:
            self._run("BEGIN IMMEDIATE", ())
            try:
                yield _SqliteTransaction(self)
            except BaseException:
                self._run("ROLLBACK", ())
                raise
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._run, "COMMIT", ())

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        async with self._one_at_a_time:  # between transactions: what is committed
            return self._run(sql, args)

    def query(self, sql: str, *args: object) -> list[Row]:
        """Read rows at once, without waiting for a transaction to end (the read model's
        queries: the projection's transactions are one statement long)."""
        return self._run(sql, args)

    def close(self) -> None:
        self._conn.close()


class _SqliteTransaction:
    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def execute(self, sql: str, *args: object) -> None:
        self._db._run(sql, args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self._db._conn.executemany(_sqlite_sql(sql), [tuple(row) for row in rows])

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        rows = self._db._run(sql, args)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        return self._db._run(sql, args)


# -- PostgreSQL: the service's own schema ----------------------------------------------------


class _PostgresDatabase:
    """A schema of a PostgreSQL database, reached through a small pool of connections whose
    ``search_path`` is that schema."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, tables: str) -> AsyncIterator[_PostgresDatabase]:
        import asyncpg  # the "postgres" extra: only the distributed shop needs it

        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        schema = dict(query).get("schema", "public")
        if not _SCHEMA.fullmatch(schema):
            raise ValueError(f"{url!r}: the schema must be a plain name, like 'stock'")
        dsn = urlunsplit(parts._replace(query=urlencode([kv for kv in query if kv[0] != "schema"])))
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=4,
            server_settings={"search_path": schema, "application_name": f"shop {schema}"},
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Copies of one service starting together create the tables once.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", schema)
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                await conn.execute(tables)
            yield cls(pool)
        finally:
            await pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self, ctx: HandlerContext | None = None) -> AsyncIterator[Transaction]:
        joined = ctx.transaction if ctx is not None else None
        if joined is not None:
            # The participant's transaction: a savepoint in it, so that an error raised in
            # the block (a refusal, say) undoes this block's writes and nothing else.
            async with joined.transaction():
                yield _PostgresTransaction(joined)
            return
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PostgresTransaction(conn)

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        return [tuple(row) for row in await self._pool.fetch(sql, *args)]


class _PostgresTransaction:
    def __init__(self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        await self._conn.executemany(sql, [tuple(row) for row in rows])

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        return [tuple(row) for row in await self._conn.fetch(sql, *args)]


def to_cents(amount: Decimal) -> int:
    return int(amount.quantize(CENT) * 100)


def from_cents(cents: int | Decimal) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)
