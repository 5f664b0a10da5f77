"""What the PostgreSQL saga log and inbox share: reading their URL, opening a connection pool
on a schema of their own, applying their schema once even when several processes start
together, and turning client errors into :class:`~pysaga.StoreError`.

Needs the ``postgres`` extra (asyncpg).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import SchemaVersionError, StoreError
from ._urls import PostgresOptions, check_schema_name, redact
from ._urls import parse_postgres_url as parse_url

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "the PostgreSQL saga log and inbox need asyncpg: install the extra with "
        "'pip install \"pysaga-core[postgres]\"'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("pysaga.stores.postgres")

__all__ = (
    "RELEASE_TIMEOUT",
    "check_schema",
    "discard",
    "lost_connection",
    "CLIENT_ERRORS",
    "PostgresOptions",
    "apply_schema",
    "check_schema_name",
    "is_connection_error",
    "open_pool",
    "parse_url",
    "redact",
)

CLIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""Every error the PostgreSQL client raises (the server's, the connection's, its own); a store
turns them into :class:`~pysaga.StoreError`."""


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """The pool's reset of a connection given back: nothing to reset (see :func:`open_pool`)."""


async def open_pool(
    options: PostgresOptions, *, what: str, read_only: bool = False
) -> asyncpg.Pool[Any]:
    """A connection pool whose connections find pysaga's tables in ``options.schema``.

    With *read_only*, every transaction of the pool's connections is read-only: the server
    refuses any write, so a reader can never change the log, nor create its tables.

    Raises:
        StoreError: the database cannot be reached.
    """
    try:
        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            options.dsn,
            min_size=1,
            max_size=options.pool_size,
            # pysaga's stores change no session state (no SET, LISTEN, cursors or session
            # advisory locks), so a connection given back needs no reset statement, which
            # would cost a round trip per call (an open transaction is still rolled back)
            reset=_keep_session,
            server_settings={
                "search_path": options.schema,
                # names the schema, so an operator (or a test) can tell whose connections
                # these are in pg_stat_activity
                "application_name": f"pysaga {what} {options.schema}"[:63],
                **({"default_transaction_read_only": "on"} if read_only else {}),
            },
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreError(
            f"cannot open the PostgreSQL {what} at {redact(options.dsn)}: {exc}; check that "
            "the server runs and the URL names an existing database and role"
        ) from exc
    return pool


async def apply_schema(
    pool: asyncpg.Pool[Any],
    schema: str,
    component: str,
    migrations: Sequence[str],
    *,
    where: str = "",
) -> None:
    """Bring *component*'s tables in *schema* up to ``len(migrations)``.

    ``migrations[i]`` takes the schema from version ``i`` to ``i + 1``. Runs in one
    transaction under an advisory lock, so processes that start together apply each
    migration once, and a process that finds a newer schema than it knows refuses it. A
    component created here is logged (at INFO), with *where* (the redacted URL).

    Raises:
        SchemaVersionError: the database holds a newer schema than this pysaga knows.
    """
    target = len(migrations)
    lock = int.from_bytes(
        hashlib.sha256(f"pysaga:{schema}".encode()).digest()[:8], "big", signed=True
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.pysaga_schema "
            "(component text PRIMARY KEY, version integer NOT NULL)"
        )
        found: int | None = await conn.fetchval(
            f"SELECT version FROM {schema}.pysaga_schema WHERE component = $1", component
        )
        current = found or 0
        if current > target:
            raise SchemaVersionError(
                f"the PostgreSQL {component} in schema {schema!r} has schema version {current}, "
                f"newer than this pysaga's ({target}); upgrade pysaga to use it"
            )
        for migration in migrations[current:]:
            await conn.execute(migration)
        if current == 0:
            logger.info(
                "created the PostgreSQL %s in schema %r at %s",
                component.replace("_", " "),
                schema,
                where,
            )
        if current < target:
            await conn.execute(
                f"INSERT INTO {schema}.pysaga_schema (component, version) VALUES ($1, $2) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                component,
                target,
            )


async def check_schema(
    pool: asyncpg.Pool[Any], schema: str, component: str, migrations: Sequence[str], *, where: str
) -> None:
    """Check, without changing anything, that *component*'s tables in *schema* exist at the
    version ``len(migrations)``: what a reader does instead of :func:`apply_schema`.

    Raises:
        StoreError: there is no *component* in *schema* (nothing was ever written there), or
            it has an older schema version, which only a writer may upgrade.
        SchemaVersionError: the database holds a newer schema than this pysaga knows.
    """
    target = len(migrations)
    async with pool.acquire() as conn:
        exists = await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{schema}.pysaga_schema"
        )
        found: int | None = None
        if exists:
            found = await conn.fetchval(
                f"SELECT version FROM {schema}.pysaga_schema WHERE component = $1", component
            )
    if found is None:
        raise StoreError(
            f"no PostgreSQL {component.replace('_', ' ')} in schema {schema!r} at {where}: "
            "its tables do not exist; check the URL's database and ?schema= (an orchestrator "
            "creates them when it first starts)"
        )
    if found > target:
        raise SchemaVersionError(
            f"the PostgreSQL {component} in schema {schema!r} has schema version {found}, "
            f"newer than this pysaga's ({target}); upgrade pysaga to use it"
        )
    if found < target:
        raise StoreError(
            f"the PostgreSQL {component} in schema {schema!r} at {where} has schema version "
            f"{found}, older than this pysaga's ({target}); start an orchestrator of this "
            "pysaga on it once to upgrade it"
        )


RELEASE_TIMEOUT = 10.0
"""Seconds a connection may take to go back to its pool (reset, or closed if the pool replaces
it) before it is terminated instead: a server that stopped answering never holds up a caller."""


def is_connection_error(exc: BaseException) -> bool:
    """Whether *exc* says the connection to the server was lost (or could not be made).

    The client's internal errors count too: it raises one when the server's goodbye (say,
    after ``pg_terminate_backend``) arrived while the connection was idle, and a fresh
    connection is the cure.
    """
    return isinstance(
        exc,
        (
            OSError,
            asyncpg.InternalClientError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.AdminShutdownError,
            asyncpg.CannotConnectNowError,
        ),
    )


def lost_connection(exc: BaseException | None) -> bool:
    """Whether *exc*, or an error it was raised from, says the connection was lost."""
    seen = 0
    while exc is not None and seen < 8:
        if is_connection_error(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def discard(conn: Any) -> None:
    """Drop *conn* before it goes back to its pool: the server ended it, or it is stuck in an
    operation that was cut short. Only this connection: expiring the whole pool would make
    every connection in use close on its way back, and closing one that is stuck in an
    operation can wait for ever; the pool's other connections are dropped the same way if
    they turn out dead."""
    with contextlib.suppress(*CLIENT_ERRORS):
        conn.terminate()
