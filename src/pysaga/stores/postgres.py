"""The PostgreSQL saga log: one log that several orchestrator processes share.

Durability: a write is acknowledged once PostgreSQL has committed it, with the server's
``synchronous_commit`` setting deciding what "committed" means (``on``, the server default:
flushed to the server's write-ahead log, and to a synchronous standby if one is configured).
pysaga does not change the setting; set it on the server, the database or the role.

Group commit: writes from concurrent sagas in one process are queued, and one leader sends a
whole batch as one statement, so a batch of any size costs one round trip and one commit.
The statement is set-based over arrays (``unnest``): the new sagas are inserted with
``ON CONFLICT DO NOTHING`` (a duplicate id fails only its own write), the updates are applied
where revision and owner still match, and the history entries of the writes that landed are
appended. Writes that matched nothing are then told apart (no such saga, lease lost, stale
revision) by one more read.

Several orchestrators: every saga carries a lease (owner, the owner's incarnation, and
expiry). An orchestrator claims sagas whose lease expired with ``FOR UPDATE SKIP LOCKED``, so
replicas that claim at the same moment never get the same saga and never wait for each other.
Every write checks the saga's revision and owner: an orchestrator that lost a saga gets
:class:`~pysaga.LeaseLost` and stops driving it.

Connection loss: a call whose connection breaks raises :class:`~pysaga.StoreError`; the pool
opens a new connection for the next call. Reads and lease upkeep (claim, renew, release) are
tried once more on a fresh connection first. A write whose connection broke is not retried:
it may or may not have been committed, and the orchestrator resumes the saga from the log.

Needs the ``postgres`` extra (asyncpg).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio

from .._backends import require_asyncio
from ..errors import ConcurrencyError, LeaseLost, SagaNotFoundError, StoreError
from ..models import (
    DefinitionRecord,
    EntryKind,
    Failure,
    LogEntry,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    SagaVersion,
)
from ._codec import (
    RECORD_COLUMNS,
    VERSION_COUNTS,
    dump_failure,
    dump_outline,
    dump_steps,
    load_failure,
    record_from_row,
    versions_from_rows,
)
from ._group_commit import GroupCommit, PendingWrite
from ._postgres import (
    CLIENT_ERRORS,
    RELEASE_TIMEOUT,
    PostgresOptions,
    apply_schema,
    check_schema,
    check_schema_name,
    is_connection_error,
    open_pool,
    parse_url,
    redact,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )
    from types import TracebackType

    import asyncpg

__all__ = ("MIGRATIONS", "SCHEMA_VERSION", "PostgresSagaLog")

_T = TypeVar("_T")

_COMPONENT = "saga_log"
"""The saga log's name in the schema's ``pysaga_schema`` table."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the current-state table, its indexes, and the history
    """
    CREATE TABLE pysaga_sagas (
        saga_id          text COLLATE "C" PRIMARY KEY,
        name             text COLLATE "C" NOT NULL,
        version          integer NOT NULL,
        status           text COLLATE "C" NOT NULL,
        data             text NOT NULL,
        steps            jsonb NOT NULL,
        failure          text,
        revision         bigint NOT NULL,
        owner            text COLLATE "C",
        lease_expires_at double precision NOT NULL,
        deadline_at      double precision,
        created_at       double precision NOT NULL,
        updated_at       double precision NOT NULL
    ) WITH (fillfactor = 90);
    CREATE INDEX pysaga_sagas_active
        ON pysaga_sagas (lease_expires_at) WHERE status IN ('running', 'compensating');
    CREATE INDEX pysaga_sagas_name_status ON pysaga_sagas (name, status);
    CREATE INDEX pysaga_sagas_created ON pysaga_sagas (created_at);
    CREATE TABLE pysaga_history (
        saga_id  text COLLATE "C" NOT NULL,
        revision bigint NOT NULL,
        idx      integer NOT NULL,
        kind     text NOT NULL,
        step     text,
        attempt  integer NOT NULL,
        at       double precision NOT NULL,
        owner    text,
        failure  text,
        PRIMARY KEY (saga_id, revision, idx)
    );
    """,
    # 2: a lease is held by an owner's incarnation (the run of it that holds it)
    """
    ALTER TABLE pysaga_sagas ADD COLUMN IF NOT EXISTS incarnation text COLLATE "C";
    """,
    # 3: the definition each saga was started on, the mark of a saga held for an operator,
    # and the outline of each definition an orchestrator hosted
    """
    ALTER TABLE pysaga_sagas
        ADD COLUMN fingerprint text COLLATE "C",
        ADD COLUMN held text;
    CREATE TABLE pysaga_definitions (
        name          text COLLATE "C" NOT NULL,
        version       integer NOT NULL,
        fingerprint   text COLLATE "C" NOT NULL,
        outline       text NOT NULL,
        registered_at double precision NOT NULL,
        PRIMARY KEY (name, version, fingerprint)
    );
    """,
)
"""``MIGRATIONS[i]`` takes the saga log's tables from schema version ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema this version writes. A database with a newer schema is refused."""

# written as in the partial index's clause, so PostgreSQL can use that index
_ACTIVE = "status IN ('running', 'compensating')"

_GET = f"SELECT {RECORD_COLUMNS} FROM pysaga_sagas WHERE saga_id = $1"

# One batch of writes in one statement (so one round trip and one implicit transaction):
# creates ($1-$13, then $31-$33: their incarnations, fingerprints and held marks), updates
# ($14-$21) and the history entries of both ($22-$30). Entries are kept only for the writes
# that landed; the statement returns the ids of those writes.
_WRITE_BATCH = f"""
WITH created AS (
    INSERT INTO pysaga_sagas ({RECORD_COLUMNS})
    SELECT c.saga_id, c.name, c.version, c.status, c.data, c.steps::jsonb, c.failure,
           c.revision, c.owner, c.lease_expires_at, c.deadline_at, c.created_at, c.updated_at,
           c.incarnation, c.fingerprint, c.held
    FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::int8[], $9::text[], $10::float8[], $11::float8[],
                $12::float8[], $13::float8[], $31::text[], $32::text[], $33::text[])
        AS c(saga_id, name, version, status, data, steps, failure, revision, owner,
             lease_expires_at, deadline_at, created_at, updated_at, incarnation, fingerprint,
             held)
    ON CONFLICT (saga_id) DO NOTHING
    RETURNING saga_id
), updated AS (
    UPDATE pysaga_sagas s
    SET status = coalesce(u.status, s.status),
        steps = s.steps || u.steps::jsonb,
        data = coalesce(u.data, s.data),
        failure = coalesce(u.failure, s.failure),
        revision = s.revision + 1,
        updated_at = u.at
    FROM unnest($14::text[], $15::int8[], $16::text[], $17::text[], $18::text[], $19::text[],
                $20::text[], $21::float8[])
        AS u(saga_id, revision, owner, status, steps, data, failure, at)
    WHERE s.saga_id = u.saga_id AND s.revision = u.revision AND s.owner = u.owner
    RETURNING s.saga_id
), entries AS (
    INSERT INTO pysaga_history (saga_id, revision, idx, kind, step, attempt, at, owner, failure)
    SELECT e.saga_id, e.revision, e.idx, e.kind, e.step, e.attempt, e.at, e.owner, e.failure
    FROM unnest($22::text[], $23::int8[], $24::int4[], $25::text[], $26::text[], $27::int4[],
                $28::float8[], $29::text[], $30::text[])
        AS e(saga_id, revision, idx, kind, step, attempt, at, owner, failure)
    WHERE e.saga_id IN (SELECT saga_id FROM created UNION ALL SELECT saga_id FROM updated)
)
SELECT saga_id FROM created UNION ALL SELECT saga_id FROM updated
"""

# An operator's write ($1 saga, $2 revision): whoever holds the saga, it is written if still at
# that revision, its lease is set free, and the entries ($8-$14) are appended in the same
# statement. Returns the new revision, or no row.
_INTERVENE = """
WITH updated AS (
    UPDATE pysaga_sagas
    SET status = coalesce($3, status),
        steps = steps || $4::jsonb,
        data = coalesce($5, data),
        failure = coalesce($6, failure),
        revision = revision + 1,
        updated_at = $7,
        lease_expires_at = 0
    WHERE saga_id = $1 AND revision = $2
    RETURNING saga_id, revision
), entries AS (
    INSERT INTO pysaga_history (saga_id, revision, idx, kind, step, attempt, at, owner, failure)
    SELECT u.saga_id, u.revision, e.idx, e.kind, e.step, e.attempt, e.at, e.owner, e.failure
    FROM updated u,
         unnest($8::int4[], $9::text[], $10::text[], $11::int4[], $12::float8[], $13::text[],
                $14::text[]) AS e(idx, kind, step, attempt, at, owner, failure)
)
SELECT revision FROM updated
"""


_SAME_DEFINITION = """({fingerprints}::text[] IS NULL OR fingerprint IS NULL
       OR (name, version, fingerprint) IN (
           SELECT k.name, k.version, k.fingerprint
           FROM unnest($3::text[], $4::int4[], {fingerprints}::text[])
               AS k(name, version, fingerprint)))"""
"""Of the wanted kinds ($3/$4), the sagas started on the wanted fingerprints (the parameter
*fingerprints*, aligned with them; NULL: any), and those recorded before fingerprints existed."""


def _held_by(owner: str, incarnation: str) -> str:
    """A live lease held by the incarnation (parameter *incarnation*) of the owner (parameter
    *owner*); a released saga (lease 0) is held by nobody."""
    return (
        f"owner IS NOT DISTINCT FROM {owner} AND incarnation IS NOT DISTINCT FROM {incarnation}"
        " AND lease_expires_at > 0"
    )


def _claim_sql(predecessors: bool) -> str:
    """Claim in one statement: lock the oldest expired leases that no other claimer holds
    locked (SKIP LOCKED: concurrent claimers split the sagas and never wait on each other),
    take them, and record the claims. $1 now, $2 owner, $3/$4 the wanted kinds, $5 limit,
    $6 the new lease, $7 the incarnation, $8 the wanted kinds' fingerprints (NULL: any; a
    saga without a fingerprint matches any). With *predecessors*, the sagas another incarnation
    of $2 holds are taken too, whatever their lease."""
    taken = f"lease_expires_at < $1 AND NOT ({_held_by('$2', '$7')})"
    if predecessors:
        taken = f"({taken}) OR (owner = $2 AND incarnation IS DISTINCT FROM $7)"
    return f"""
WITH picked AS (
    SELECT saga_id, lease_expires_at AS old_lease FROM pysaga_sagas
    WHERE {_ACTIVE}
      AND ({taken})
      AND (name, version) IN (SELECT k.name, k.version
                              FROM unnest($3::text[], $4::int4[]) AS k(name, version))
      AND {_SAME_DEFINITION.format(fingerprints="$8")}
    ORDER BY lease_expires_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pysaga_sagas s
    SET owner = $2, incarnation = $7, lease_expires_at = $6, revision = s.revision + 1,
        updated_at = $1, held = NULL
    FROM picked p
    WHERE s.saga_id = p.saga_id
    RETURNING s.*, p.old_lease
), entries AS (
    INSERT INTO pysaga_history (saga_id, revision, idx, kind, step, attempt, at, owner, failure)
    SELECT saga_id, revision, 0, '{EntryKind.SAGA_CLAIMED.value}', NULL, 0, $1, $2, NULL
    FROM claimed
)
SELECT {RECORD_COLUMNS} FROM claimed ORDER BY old_lease, saga_id
"""


_CLAIM = _claim_sql(predecessors=False)
_CLAIM_WITH_PREDECESSORS = _claim_sql(predecessors=True)

# After a claim whose connection broke: the sagas that claim may have taken all the same
# (the last entry at their current revision is this owner's claim at this time, and the
# saga is held by this incarnation, $6).
_CLAIMED_BEFORE = f"""
SELECT {", ".join(f"s.{c.strip()}" for c in RECORD_COLUMNS.split(","))}
FROM pysaga_sagas s
JOIN pysaga_history h ON h.saga_id = s.saga_id AND h.revision = s.revision AND h.idx = 0
WHERE s.{_ACTIVE} AND s.owner = $2 AND s.incarnation IS NOT DISTINCT FROM $6
  AND h.kind = '{EntryKind.SAGA_CLAIMED.value}' AND h.at = $1 AND h.owner = $2
  AND (s.name, s.version) IN (SELECT k.name, k.version
                              FROM unnest($3::text[], $4::int4[]) AS k(name, version))
ORDER BY s.saga_id
LIMIT $5
"""

# When a claim will next find something: the earliest lease, among unfinished sagas of the
# wanted kinds ($3/$4), that is not a live one of incarnation $2 of owner $1.
_NEXT_EXPIRY = f"""
SELECT min(lease_expires_at) FROM pysaga_sagas
WHERE {_ACTIVE} AND NOT ({_held_by("$1", "$2")})
  AND (name, version) IN (SELECT k.name, k.version
                          FROM unnest($3::text[], $4::int4[]) AS k(name, version))
  AND {_SAME_DEFINITION.format(fingerprints="$5")}
"""


# Hold the unfinished sagas of one definition ($2 name, $3 version, $4 fingerprint) whose lease
# expired before $1 and that are not held yet: mark them ($5 the note), and record it ($6 the
# orchestrator, $7 the entry's failure).
_HOLD = f"""
WITH held AS (
    UPDATE pysaga_sagas
    SET held = $5, revision = revision + 1, updated_at = $1
    WHERE {_ACTIVE} AND lease_expires_at < $1 AND name = $2 AND version = $3
      AND fingerprint = $4 AND held IS NULL
    RETURNING saga_id, revision
), entries AS (
    INSERT INTO pysaga_history (saga_id, revision, idx, kind, step, attempt, at, owner, failure)
    SELECT saga_id, revision, 0, '{EntryKind.SAGA_HELD.value}', NULL, 0, $1, $6, $7
    FROM held
)
SELECT saga_id FROM held ORDER BY saga_id
"""


@dataclass(frozen=True, slots=True)
class _Create:
    record: SagaRecord
    entries: Sequence[LogEntry]


@dataclass(frozen=True, slots=True)
class _Update:
    saga_id: str
    update: SagaUpdate
    revision: int
    owner: str


_Write = _Create | _Update


class PostgresSagaLog:
    """A :class:`~pysaga.SagaLog` in PostgreSQL, for several orchestrator processes.

    Args:
        dsn: ``postgresql://user:password@host:5432/database``; its query may carry
            ``schema`` and ``pool_size`` (see :meth:`from_url`) and client options such as
            ``sslmode=require``.
        schema: The PostgreSQL schema of the log's tables (created if missing); overrides
            the URL's ``schema``. Default ``public``.
        pool_size: The most connections the log opens; overrides the URL's ``pool_size``.
            Default 8. Writes use one connection at a time (group commit); the others serve
            reads and lease upkeep.
        create: Whether opening the log creates its schema and tables when they are missing
            (default; a writer such as an orchestrator does). ``False`` opens an existing log
            only and fails when there is none, changing nothing.
        read_only: Whether the log is only read: nothing is created, and the server refuses
            every write on its connections (an :class:`~pysaga.Inspector` opens it so).

    Raises:
        InvalidURLError: a malformed URL (a port that is not a number, an unknown option).
        ValueError: a bad schema name or pool size.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int | None = None,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        options = parse_url(dsn)
        if schema is not None:
            options = PostgresOptions(options.dsn, check_schema_name(schema), options.pool_size)
        if pool_size is not None:
            if pool_size < 1:
                raise ValueError(f"pool_size={pool_size}: a pool needs at least 1 connection")
            options = PostgresOptions(options.dsn, options.schema, pool_size)
        self.options = options
        self._creates = create and not read_only
        self.read_only = read_only
        self._pool: asyncpg.Pool[Any] | None = None
        self._commits: GroupCommit[_Write] = GroupCommit(self._flush)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True, read_only: bool = False) -> PostgresSagaLog:
        """Build from ``postgresql://user:password@host:5432/database?schema=pysaga&pool_size=8``.

        ``schema`` (default ``public``) and ``pool_size`` (default 8) are pysaga's options;
        the client's connection options (``sslmode=require``, say) go to the PostgreSQL
        client; any other option is refused. *create* and *read_only* are as in the class.
        """
        return cls(url, create=create, read_only=read_only)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the log's tables."""
        return self.options.schema

    @property
    def pool_size(self) -> int:
        """The most connections the log opens."""
        return self.options.pool_size

    def __repr__(self) -> str:
        return f"<PostgresSagaLog {redact(self.options.dsn)!r} schema={self.schema}>"

    @property
    def commits(self) -> GroupCommit[_Write]:
        """The group-commit queue (its ``batches`` and ``writes`` counters show the batching)."""
        return self._commits

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._pool is not None:
            raise RuntimeError(f"{self!r} is already open; enter it once")
        require_asyncio(
            "the PostgreSQL saga log", "asyncpg", "the SQLite saga log (sqlite:///sagas.db)"
        )
        where = redact(self.options.dsn)
        pool = await open_pool(self.options, what="saga log", read_only=self.read_only)
        try:
            if self._creates:
                await apply_schema(pool, self.schema, _COMPONENT, MIGRATIONS, where=where)
            else:
                await check_schema(pool, self.schema, _COMPONENT, MIGRATIONS, where=where)
        except CLIENT_ERRORS as exc:
            pool.terminate()
            raise StoreError(
                f"cannot set up the PostgreSQL saga log in schema {self.schema!r} at {where}: {exc}"
            ) from exc
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        await self._warm_up()
        return self

    async def _warm_up(self) -> None:
        """Run the write and the read of one saga once, writing nothing: a new server
        connection pays for loading the tables' catalog entries and planning on its first
        statements (several milliseconds), and a saga's first write should not."""
        try:
            async with self._connection() as conn:
                if not self.read_only:  # the server refuses even an empty write then
                    await conn.fetch(_WRITE_BATCH, *([[]] * 33))
                await conn.fetchrow(_GET, "")
        except CLIENT_ERRORS as exc:
            await self.aclose()
            raise self._error("open the log", exc) from exc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (writes already acknowledged are committed).

        Waits up to 10 seconds for calls still running, then closes their connections.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(10):
                try:
                    await pool.close()
                    return
                except CLIENT_ERRORS:  # a broken connection: nothing left to close cleanly
                    pass
            pool.terminate()

    @property
    def _db(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise RuntimeError(
                f"{self!r} is not open; use 'async with log:' (the Orchestrator does this)"
            )
        return self._pool

    def _error(self, doing: str, exc: BaseException, *, write: bool = False) -> StoreError:
        where = f"PostgreSQL saga log (schema {self.schema!r} at {redact(self.options.dsn)})"
        if is_connection_error(exc):
            advice = "the connection to the server was lost; the next call opens a new one"
            if write:
                advice += (
                    "; the write may or may not have been committed (the orchestrator "
                    "resumes the saga from the log)"
                )
        else:
            advice = "the server refused the statement"
        return StoreError(f"{where}: could not {doing}: {type(exc).__name__}: {exc} ({advice})")

    async def _run(
        self,
        doing: str,
        fn: Callable[[asyncpg.pool.PoolConnectionProxy[Any]], Awaitable[_T]],
        *,
        on_retry: Callable[[asyncpg.pool.PoolConnectionProxy[Any]], Awaitable[_T]] | None = None,
    ) -> _T:
        """Run *fn* on a pooled connection; once more (as *on_retry*, if given) on a fresh one
        if the connection broke. Client errors become :class:`~pysaga.StoreError`."""
        try:
            async with self._connection() as conn:
                return await fn(conn)
        except CLIENT_ERRORS as exc:
            if not is_connection_error(exc):
                raise self._error(doing, exc) from exc
        try:
            async with self._connection() as conn:
                return await (on_retry or fn)(conn)
        except CLIENT_ERRORS as exc:
            raise self._error(doing, exc) from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """A pooled connection. When one breaks under a call, the pool replaces every
        connection it holds (as they are next used): what ended one connection (the server
        restarting, or ending them all) has most likely ended the idle ones too, and a retry
        must not meet another dead one.

        A connection goes back under a time limit: one that cannot be reset (or, once the
        pool replaces its connections, closed) in time, because the server stopped answering
        it, is terminated instead of holding up its caller for ever."""
        pool = self._db
        conn = await pool.acquire()
        try:
            yield conn
        except CLIENT_ERRORS as exc:
            if is_connection_error(exc):
                await pool.expire_connections()
                with contextlib.suppress(*CLIENT_ERRORS):  # it may be gone already
                    conn.terminate()
            raise
        finally:
            await pool.release(conn, timeout=RELEASE_TIMEOUT)

    # -- writes (group commit) ---------------------------------------------------------------

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        await self._commits.submit(_Create(record, entries))

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        result: int = await self._commits.submit(_Update(saga_id, update, revision, owner))
        return result

    async def intervene(self, saga_id: str, update: SagaUpdate, *, revision: int) -> int:
        entries = list(update.entries)
        at = entries[-1].at if entries else time.time()
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    _INTERVENE,
                    saga_id,
                    revision,
                    None if update.status is None else update.status.value,
                    dump_steps(update.steps),
                    update.data,
                    dump_failure(update.failure),
                    at,
                    list(range(len(entries))),
                    [e.kind.value for e in entries],
                    [e.step for e in entries],
                    [e.attempt for e in entries],
                    [e.at for e in entries],
                    [e.owner for e in entries],
                    [dump_failure(e.failure) for e in entries],
                )
                if row is not None:
                    new_revision: int = row[0]
                    return new_revision
                found = await conn.fetchval(
                    "SELECT 1 FROM pysaga_sagas WHERE saga_id = $1", saga_id
                )
        except CLIENT_ERRORS as exc:
            raise self._error(f"write to saga {saga_id!r}", exc, write=True) from exc
        if found is None:
            raise SagaNotFoundError(saga_id)
        raise ConcurrencyError(saga_id)

    async def _flush(self, batch: list[PendingWrite[_Write]]) -> None:
        ids = [_saga_id(write.op) for write in batch]
        # two writes to one saga in one batch: apply them in turn, each on its own
        groups = [batch] if len(set(ids)) == len(ids) else [[write] for write in batch]
        done = 0
        try:
            async with self._connection() as conn:
                for group in groups:
                    await self._write(conn, group)
                    done += len(group)
        except CLIENT_ERRORS as exc:
            error = self._error("write to the log", exc, write=True)
            for write in batch[done:]:  # the groups committed before keep their results
                write.error = error

    async def _write(
        self, conn: asyncpg.pool.PoolConnectionProxy[Any], batch: list[PendingWrite[_Write]]
    ) -> None:
        """Apply one batch (no saga twice) in one statement; set each write's outcome."""
        creates = [w.op for w in batch if isinstance(w.op, _Create)]
        updates = sorted(
            (w.op for w in batch if isinstance(w.op, _Update)), key=lambda op: op.saga_id
        )
        entries: list[tuple[str, int, int, LogEntry]] = []
        for c in creates:
            r = c.record
            entries.extend((r.saga_id, r.revision, i, e) for i, e in enumerate(c.entries))
        for u in updates:
            entries.extend(
                (u.saga_id, u.revision + 1, i, e) for i, e in enumerate(u.update.entries)
            )
        landed = {
            row[0]
            for row in await conn.fetch(
                _WRITE_BATCH,
                [c.record.saga_id for c in creates],
                [c.record.name for c in creates],
                [c.record.version for c in creates],
                [c.record.status.value for c in creates],
                [c.record.data for c in creates],
                [dump_steps(c.record.steps) for c in creates],
                [dump_failure(c.record.failure) for c in creates],
                [c.record.revision for c in creates],
                [c.record.owner for c in creates],
                [c.record.lease_expires_at for c in creates],
                [c.record.deadline_at for c in creates],
                [c.record.created_at for c in creates],
                [c.record.updated_at for c in creates],
                [u.saga_id for u in updates],
                [u.revision for u in updates],
                [u.owner for u in updates],
                [None if u.update.status is None else u.update.status.value for u in updates],
                [dump_steps(u.update.steps) for u in updates],
                [u.update.data for u in updates],
                [dump_failure(u.update.failure) for u in updates],
                [u.update.entries[-1].at if u.update.entries else time.time() for u in updates],
                [saga_id for saga_id, _, _, _ in entries],
                [revision for _, revision, _, _ in entries],
                [idx for _, _, idx, _ in entries],
                [e.kind.value for _, _, _, e in entries],
                [e.step for _, _, _, e in entries],
                [e.attempt for _, _, _, e in entries],
                [e.at for _, _, _, e in entries],
                [e.owner for _, _, _, e in entries],
                [dump_failure(e.failure) for _, _, _, e in entries],
                [c.record.incarnation for c in creates],
                [c.record.fingerprint for c in creates],
                [c.record.held for c in creates],
            )
        }
        missed: list[PendingWrite[_Write]] = []
        for write in batch:
            op = write.op
            if isinstance(op, _Create):
                if op.record.saga_id not in landed:
                    saga_id = op.record.saga_id
                    write.error = ConcurrencyError(saga_id, f"a saga with id {saga_id!r} exists")
            elif op.saga_id in landed:
                write.result = op.revision + 1
            else:
                missed.append(write)
        if not missed:
            return
        # Why did these updates match nothing? The same rules as the SQLite log.
        try:
            rows = await conn.fetch(
                "SELECT saga_id, owner FROM pysaga_sagas WHERE saga_id = ANY($1::text[])",
                [_saga_id(write.op) for write in missed],
            )
        except CLIENT_ERRORS as exc:
            error = self._error("read why a write was refused", exc)
            for write in missed:
                write.error = error
            return
        owners = {row[0]: row[1] for row in rows}
        for write in missed:
            op = write.op
            assert isinstance(op, _Update)
            if op.saga_id not in owners:
                write.error = SagaNotFoundError(op.saga_id)
            elif owners[op.saga_id] != op.owner:
                write.error = LeaseLost(op.saga_id, op.owner)
            else:
                write.error = ConcurrencyError(op.saga_id)

    # -- reads and lease management ----------------------------------------------------------

    async def get(self, saga_id: str) -> SagaRecord | None:
        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> SagaRecord | None:
            row = await conn.fetchrow(_GET, saga_id)
            return None if row is None else record_from_row(row)

        return await self._run(f"read saga {saga_id!r}", read)

    async def history(self, saga_id: str) -> list[LogEntry]:
        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> list[LogEntry]:
            rows = await conn.fetch(
                "SELECT kind, at, step, attempt, failure, owner FROM pysaga_history "
                "WHERE saga_id = $1 ORDER BY revision, idx",
                saga_id,
            )
            return [
                LogEntry(
                    EntryKind(kind),
                    at=at,
                    step=step,
                    attempt=attempt,
                    failure=load_failure(failure),
                    owner=owner,
                )
                for kind, at, step, attempt, failure, owner in rows
            ]

        return await self._run(f"read the history of saga {saga_id!r}", read)

    async def claim(
        self,
        owner: str,
        *,
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        lease: float,
        now: float,
        limit: int = 100,
        predecessors: bool = False,
        fingerprints: Mapping[tuple[str, int], str] | None = None,
    ) -> list[SagaRecord]:
        if not kinds or limit <= 0:
            return []

        async def run(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> list[SagaRecord]:
            return await self._claim_on(
                conn,
                owner,
                incarnation=incarnation,
                kinds=kinds,
                lease=lease,
                now=now,
                limit=limit,
                predecessors=predecessors,
                fingerprints=fingerprints,
            )

        async def rerun(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> list[SagaRecord]:
            return await self._claim_on(
                conn,
                owner,
                incarnation=incarnation,
                kinds=kinds,
                lease=lease,
                now=now,
                limit=limit,
                again=True,
                predecessors=predecessors,
                fingerprints=fingerprints,
            )

        return await self._run("claim expired sagas", run, on_retry=rerun)

    @staticmethod
    async def _claim_on(
        conn: asyncpg.pool.PoolConnectionProxy[Any],
        owner: str,
        *,
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        lease: float,
        now: float,
        limit: int,
        fingerprints: Mapping[tuple[str, int], str] | None = None,
        again: bool = False,
        predecessors: bool = False,
    ) -> list[SagaRecord]:
        """Claim on *conn* for *owner*'s *incarnation*. ``again``: this claim is a retry
        after its first try lost its connection, which may have committed before it broke;
        the sagas it took are this incarnation's now and it would never claim them back, so
        they are returned first."""
        pairs = sorted(kinds)
        names = [name for name, _ in pairs]
        versions = [version for _, version in pairs]
        before: list[SagaRecord] = []
        if again:
            rows = await conn.fetch(
                _CLAIMED_BEFORE, now, owner, names, versions, limit, incarnation
            )
            before = [record_from_row(row) for row in rows]
            if len(before) >= limit:
                return before
        wanted = None if fingerprints is None else [fingerprints.get(pair) for pair in pairs]
        rows = await conn.fetch(
            _CLAIM_WITH_PREDECESSORS if predecessors else _CLAIM,
            now,
            owner,
            names,
            versions,
            limit - len(before),
            now + lease,
            incarnation,
            wanted,
        )
        return before + [record_from_row(row) for row in rows]

    async def next_expiry(
        self,
        owner: str,
        *,
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        fingerprints: Mapping[tuple[str, int], str] | None = None,
    ) -> float | None:
        if not kinds:
            return None
        pairs = sorted(kinds)

        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> float | None:
            expiry: float | None = await conn.fetchval(
                _NEXT_EXPIRY,
                owner,
                incarnation,
                [name for name, _ in pairs],
                [version for _, version in pairs],
                None if fingerprints is None else [fingerprints.get(pair) for pair in pairs],
            )
            return expiry

        return await self._run("read when a lease runs out next", read)

    async def renew(self, owner: str, *, incarnation: str | None = None, until: float) -> int:
        async def run(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> int:
            # Rows a write of this orchestrator holds right now are skipped (renewed next
            # round): waiting for them could deadlock with that write, which locks the same
            # rows in another order.
            status = await conn.execute(
                "UPDATE pysaga_sagas s SET lease_expires_at = $1 FROM ("
                f" SELECT saga_id FROM pysaga_sagas WHERE owner = $2 AND {_ACTIVE}"
                " AND incarnation IS NOT DISTINCT FROM $3"
                " AND lease_expires_at > 0"  # a released saga stays released
                " FOR UPDATE SKIP LOCKED) held WHERE s.saga_id = held.saga_id",
                until,
                owner,
                incarnation,
            )
            return _row_count(status)

        return await self._run(f"renew the leases of {owner!r}", run)

    async def release(
        self,
        owner: str,
        saga_ids: Collection[str] | None = None,
        *,
        incarnation: str | None = None,
    ) -> None:
        async def run(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
            if saga_ids is None:
                await conn.execute(  # skipping rows in a write, as renew does
                    "UPDATE pysaga_sagas s SET lease_expires_at = 0 FROM ("
                    f" SELECT saga_id FROM pysaga_sagas WHERE owner = $1 AND {_ACTIVE}"
                    " AND incarnation IS NOT DISTINCT FROM $2"
                    " FOR UPDATE SKIP LOCKED) held WHERE s.saga_id = held.saga_id",
                    owner,
                    incarnation,
                )
            else:
                await conn.execute(
                    "UPDATE pysaga_sagas SET lease_expires_at = 0 "
                    f"WHERE owner = $1 AND saga_id = ANY($2::text[]) AND {_ACTIVE}"
                    " AND incarnation IS NOT DISTINCT FROM $3",
                    owner,
                    list(saga_ids),
                    incarnation,
                )

        await self._run(f"release the leases of {owner!r}", run)

    async def define(self, definition: DefinitionRecord) -> None:
        async def run(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
            await conn.execute(
                "INSERT INTO pysaga_definitions "
                "(name, version, fingerprint, outline, registered_at) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT DO NOTHING",
                definition.name,
                definition.version,
                definition.fingerprint,
                dump_outline(definition.outline),
                definition.registered_at,
            )

        await self._run(f"record the definition of {definition.name!r}", run)

    async def hold(
        self, name: str, version: int, fingerprint: str, *, note: str, now: float, owner: str
    ) -> list[str]:
        failure = dump_failure(Failure(None, "DefinitionChanged", note))

        async def run(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> list[str]:
            rows = await conn.fetch(_HOLD, now, name, version, fingerprint, note, owner, failure)
            return [row[0] for row in rows]

        return await self._run(f"hold sagas of {name!r} version {version}", run)

    async def versions(
        self, *, name: str | None = None, statuses: Collection[SagaStatus] | None = None
    ) -> list[SagaVersion]:
        clauses: list[str] = []
        params: list[Any] = []
        if name is not None:
            params.append(name)
            clauses.append(f"name = ${len(params)}")
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            if values == ["compensating", "running"]:
                clauses.append(_ACTIVE)  # as in the partial index's clause
            else:
                params.append(values)
                clauses.append(f"status = ANY(${len(params)}::text[])")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> list[SagaVersion]:
            counted = await conn.fetch(VERSION_COUNTS.format(where=where), *params)
            if name is None:
                definitions = await conn.fetch(
                    "SELECT name, version, fingerprint, outline, registered_at "
                    "FROM pysaga_definitions"
                )
            else:
                definitions = await conn.fetch(
                    "SELECT name, version, fingerprint, outline, registered_at "
                    "FROM pysaga_definitions WHERE name = $1",
                    name,
                )
            return versions_from_rows(counted, definitions, include_empty=statuses is None)

        return await self._run("count sagas per definition", read)

    async def active_kinds(self) -> set[tuple[str, int]]:
        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> set[tuple[str, int]]:
            rows = await conn.fetch(
                f"SELECT DISTINCT name, version FROM pysaga_sagas WHERE {_ACTIVE}"
            )
            return {(name, version) for name, version in rows}

        return await self._run("read the kinds of unfinished sagas", read)

    async def list(
        self,
        *,
        name: str | None = None,
        status: SagaStatus | None = None,
        statuses: Collection[SagaStatus] | None = None,
        created_before: float | None = None,
        updated_before: float | None = None,
        deadline_before: float | None = None,
        timer_before: float | None = None,
        held: bool | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        clauses: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if held is not None:
            clauses.append("held IS NOT NULL" if held else "held IS NULL")
        if name is not None:
            clauses.append(f"name = {param(name)}")
        if status is not None:
            clauses.append(f"status = {param(status.value)}")
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            if values == ["compensating", "running"]:
                clauses.append(_ACTIVE)  # as in the partial index's clause
            else:
                clauses.append(f"status = ANY({param(values)}::text[])")
        if created_before is not None:
            clauses.append(f"created_at < {param(created_before)}")
        if updated_before is not None:
            clauses.append(f"updated_at < {param(updated_before)}")
        if deadline_before is not None:
            clauses.append(f"deadline_at < {param(deadline_before)}")  # NULL never matches
        if timer_before is not None:
            # a step's state is [status, attempts, failures, timeout_at, retry_at]
            at = param(timer_before)
            clauses.append(
                "EXISTS (SELECT 1 FROM jsonb_each(steps) AS t(step, state) WHERE"
                f" (t.state ->> 3)::float8 < {at} OR (t.state ->> 4)::float8 < {at})"
            )
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM pysaga_sagas {where} "
            f"ORDER BY created_at DESC, saga_id LIMIT {param(max(limit, 0))}"
        )

        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> list[SagaRecord]:
            return [record_from_row(row) for row in await conn.fetch(sql, *params)]

        return await self._run("list sagas", read)

    async def counts(self, *, name: str | None = None) -> dict[SagaStatus, int]:
        async def read(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> dict[SagaStatus, int]:
            if name is None:
                rows = await conn.fetch("SELECT status, count(*) FROM pysaga_sagas GROUP BY status")
            else:
                rows = await conn.fetch(
                    "SELECT status, count(*) FROM pysaga_sagas WHERE name = $1 GROUP BY status",
                    name,
                )
            return {SagaStatus(status): count for status, count in rows}

        return await self._run("count sagas", read)


# -- row encoding ----------------------------------------------------------------------------


def _saga_id(op: _Write) -> str:
    return op.record.saga_id if isinstance(op, _Create) else op.saga_id


def _row_count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])
