"""The SQLite saga log: the embedded default. No server, one file, WAL journal.

Durability: ``synchronous=normal`` (the default) commits without an fsync of the WAL; a
committed write survives the process being killed at any point (SIGKILL included) but not a
power loss or kernel crash. ``synchronous=full`` fsyncs the WAL on every commit and survives
those too, at a cost per commit: group commit shares that cost between concurrent sagas.

Concurrency: writes from concurrent sagas are batched into one transaction (group commit).
Statements run on the event loop's thread with the stdlib ``sqlite3`` module, because a
commit without fsync costs far less than a hand-off to a worker thread; with
``synchronous=full`` a batch of several writes runs in a worker thread so its fsync does not
block the loop (a lone write, from a quiet log, commits on the loop: quicker than the hand-off).

Several processes may open one file (SQLite locks it), but only one orchestrator should
drive sagas at a time on SQLite; to run several, use the PostgreSQL log.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.to_thread

from ..errors import ConcurrencyError, LeaseLost, SagaNotFoundError, SchemaVersionError, StoreError
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
from ._urls import Synchronous
from ._urls import parse_sqlite_url as parse_url

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence
    from types import TracebackType

__all__ = ("SCHEMA_VERSION", "SQLiteSagaLog", "open_database", "parse_url")

logger = logging.getLogger("pysaga.stores.sqlite")

SCHEMA_VERSION = 3
"""The schema this version writes. A file with a newer schema is refused; an older one is
brought up to date when opened (version 2 added the lease's ``incarnation``, version 3 the
definitions and their fingerprints)."""

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pysaga_schema (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pysaga_sagas (
    saga_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    version          INTEGER NOT NULL,
    status           TEXT NOT NULL,
    data             TEXT NOT NULL,
    steps            TEXT NOT NULL,
    failure          TEXT,
    revision         INTEGER NOT NULL,
    owner            TEXT,
    lease_expires_at REAL NOT NULL,
    deadline_at      REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    incarnation      TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pysaga_sagas_active
    ON pysaga_sagas (lease_expires_at) WHERE status IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS pysaga_sagas_name_status ON pysaga_sagas (name, status);
CREATE TABLE IF NOT EXISTS pysaga_history (
    saga_id  TEXT NOT NULL,
    revision INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    step     TEXT,
    attempt  INTEGER NOT NULL,
    at       REAL NOT NULL,
    owner    TEXT,
    failure  TEXT,
    PRIMARY KEY (saga_id, revision, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pysaga_definitions (
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    fingerprint   TEXT NOT NULL,
    outline       TEXT NOT NULL,
    registered_at REAL NOT NULL,
    PRIMARY KEY (name, version, fingerprint)
) WITHOUT ROWID;
"""

_ADDED_COLUMNS = (
    ("incarnation", "TEXT"),  # schema 2: which run of the owner holds the lease
    ("fingerprint", "TEXT"),  # schema 3: the definition a saga was started on
    ("held", "TEXT"),  # schema 3: why no orchestrator drives it (its definition changed)
)
"""Columns of ``pysaga_sagas`` added after schema 1: added to an older file when it opens."""

_ACTIVE = "('running', 'compensating')"
# A live lease held by one incarnation of one owner (parameters: owner, incarnation); a
# released saga (lease 0) is held by nobody.
_HELD_BY = "owner IS ? AND incarnation IS ? AND lease_expires_at > 0"


def _same_definition(
    fingerprints: Mapping[tuple[str, int], str] | None,
) -> tuple[str, list[Any]]:
    """The clause (and its parameters) that keeps, of the wanted kinds, the sagas started on
    the hosted definitions, and those recorded before fingerprints existed (NULL)."""
    if fingerprints is None:
        return "", []
    triples = sorted((name, version, fp) for (name, version), fp in fingerprints.items())
    values = ", ".join("(?, ?, ?)" for _ in triples) or "(NULL, NULL, NULL)"
    clause = f"AND (fingerprint IS NULL OR (name, version, fingerprint) IN (VALUES {values})) "
    return clause, [value for triple in triples for value in triple]


_INSERT_ENTRY = (
    "INSERT INTO pysaga_history (saga_id, revision, idx, kind, step, attempt, at, owner, failure)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Two forms: setting ``status`` (even to its own value) makes SQLite rewrite the indexes on it,
# so a write that leaves the status alone does not name it.
_UPDATE = (
    "UPDATE pysaga_sagas SET steps = json_patch(steps, ?), data = coalesce(?, data),"
    " failure = coalesce(?, failure), revision = revision + 1, updated_at = ?"
    " WHERE saga_id = ? AND revision = ? AND owner = ?"
)
_UPDATE_STATUS = (
    "UPDATE pysaga_sagas SET status = ?, steps = json_patch(steps, ?), data = coalesce(?, data),"
    " failure = coalesce(?, failure), revision = revision + 1, updated_at = ?"
    " WHERE saga_id = ? AND revision = ? AND owner = ?"
)

# An operator's write: any owner, and the lease is set free so a claimer resumes the saga.
_INTERVENE = (
    "UPDATE pysaga_sagas SET status = coalesce(?, status), steps = json_patch(steps, ?),"
    " data = coalesce(?, data), failure = coalesce(?, failure), revision = revision + 1,"
    " updated_at = ?, lease_expires_at = 0 WHERE saga_id = ? AND revision = ?"
)


def open_database(
    path: str,
    synchronous: Synchronous,
    busy_timeout: float,
    setup: Callable[[sqlite3.Connection], object],
    *,
    what: str,
    any_thread: bool = False,
    create: bool = True,
    read_only: bool = False,
) -> sqlite3.Connection:
    """Open a WAL-mode SQLite file (creating it and its directory) and run *setup* on it. A
    file created here is logged at INFO, with its absolute path.

    Args:
        path: The file, or ``":memory:"``.
        synchronous: ``"normal"`` or ``"full"``.
        busy_timeout: Seconds to wait for another process's lock.
        setup: Creates or checks the schema.
        what: What the file holds, for the error message.
        any_thread: Whether the connection may be used from a worker thread too.
        create: Whether a missing file (and its directory) is created; else it must exist.
        read_only: Whether the connection refuses writes (``PRAGMA query_only``); the file
            must exist, and nothing is created.

    Raises:
        StoreError: the file does not exist (and may not be created), or cannot be opened or
            set up.
    """
    target, uri, new = path, False, False
    if path != ":memory:":
        if create and not read_only:
            new = not Path(path).exists()
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        elif not Path(path).is_file():
            where = "" if Path(path).is_absolute() else f" (relative to {os.getcwd()!r})"
            raise StoreError(
                f"no SQLite {what} at {path!r}: the file does not exist{where}; check the "
                "path ('sqlite:////abs/path.db' names an absolute one)"
            )
        else:
            # mode=rw never creates the file (a missing one fails to open)
            target, uri = Path(path).absolute().as_uri() + "?mode=rw", True
    try:
        conn = sqlite3.connect(
            target,
            uri=uri,
            isolation_level=None,
            check_same_thread=not any_thread,
            timeout=busy_timeout,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the SQLite {what} {path!r}: {exc}") from exc
    try:
        if read_only:
            # a reader neither writes nor switches the journal mode: a WAL file is read as it
            # is, and an orchestrator's writes remain visible to it
            conn.execute("PRAGMA query_only=ON")
        elif create:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        setup(conn)  # checks an existing file before anything is written to it
        if not create and not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        if new:
            logger.info("created a new SQLite %s at %s", what, Path(path).absolute())
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open the SQLite {what} {path!r}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass(frozen=True, slots=True)
class _Create:
    record: SagaRecord
    entries: Sequence[LogEntry]


@dataclass(frozen=True, slots=True)
class _Update:
    saga_id: str
    update: SagaUpdate
    revision: int
    owner: str | None  # None: an operator's intervention (no lease check, lease set free)


class SQLiteSagaLog:
    """A :class:`~pysaga.SagaLog` in one SQLite file.

    Args:
        path: The database file (created with its directory if missing, unless *create* is
            false), or ``":memory:"``.
        synchronous: ``"normal"`` (default: survives a killed process) or ``"full"``
            (also survives power loss; fsync on every commit).
        busy_timeout: Seconds to wait for another process's lock before failing.
        create: Whether entering the log creates a missing file (default: a writer such as
            an orchestrator does, and logs where at INFO). ``False`` opens an existing log
            only, and fails with :class:`~pysaga.StoreError` saying the file does not exist.
        read_only: Whether the log is only read: nothing is created, and writes are refused
            (an :class:`~pysaga.Inspector` opens it so).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        busy_timeout: float = 5.0,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(
                f"synchronous={synchronous!r}: use 'normal' (survives a killed process) or "
                "'full' (also survives power loss)"
            )
        self.path = str(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._creates = create and not read_only
        self.read_only = read_only
        self._conn: sqlite3.Connection | None = None
        self._offload = synchronous == "full"
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._commits: GroupCommit[_Create | _Update] = GroupCommit(self._flush)
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def from_url(cls, url: str, *, create: bool = True, read_only: bool = False) -> SQLiteSagaLog:
        """Build from ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

        The query may set ``synchronous=normal|full`` and ``busy_timeout=<seconds>``;
        *create* and *read_only* are as in the class.

        Raises:
            InvalidURLError: a malformed URL.
        """
        path, synchronous, busy_timeout = parse_url(url)
        return cls(
            path,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            create=create,
            read_only=read_only,
        )

    def __repr__(self) -> str:
        return f"<SQLiteSagaLog {self.path!r} synchronous={self.synchronous}>"

    @property
    def commits(self) -> GroupCommit[_Create | _Update]:
        """The group-commit queue (its ``batches`` and ``writes`` counters show the batching)."""
        return self._commits

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError(f"{self!r} is already open; enter it once")
        conn = open_database(
            self.path,
            self.synchronous,
            self.busy_timeout,
            self._migrate if self._creates else self._open_existing,
            what="saga log",
            any_thread=True,
            create=self._creates,
            read_only=self.read_only,
        )
        self._conn = conn
        if self.path != ":memory:" and not self.read_only:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path, self.busy_timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the database (writes already acknowledged are committed)."""
        conn, self._conn = self._conn, None
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await anyio.to_thread.run_sync(checkpointer.stop)
        if conn is not None:
            async with self._lock:
                conn.close()

    def _open_existing(self, conn: sqlite3.Connection) -> None:
        """Check that the file holds a saga log (and bring its schema up to date, unless
        only reading): an existing file that holds none is not turned into one."""
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pysaga_schema'"
        ).fetchone()
        if found is None:
            raise StoreError(
                f"the file {self.path!r} holds no saga log (it has no pysaga tables); check "
                "the path, or start an orchestrator on it to create one"
            )
        if not self.read_only:
            self._migrate(conn)
            return
        row = conn.execute("SELECT max(version) FROM pysaga_schema").fetchone()
        version = row[0] if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the saga log was written with schema version {version}, newer than this "
                f"pysaga's ({SCHEMA_VERSION}); upgrade pysaga to read it"
            )

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM pysaga_schema").fetchone()
            found = row[0] if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the saga log was written with schema version {found}, newer than this "
                    f"pysaga's ({SCHEMA_VERSION}); upgrade pysaga to read it"
                )
            columns = {row[1] for row in conn.execute("PRAGMA table_info(pysaga_sagas)")}
            for column, kind in _ADDED_COLUMNS:  # a log written before they were added
                if column not in columns:
                    conn.execute(f"ALTER TABLE pysaga_sagas ADD COLUMN {column} {kind}")
            if found is None or found < SCHEMA_VERSION:
                conn.execute("INSERT INTO pysaga_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(
                f"{self!r} is not open; use 'async with log:' (the Orchestrator does this)"
            )
        return self._conn

    async def _call(self, fn: Callable[[], _T], *, inline: bool = False) -> _T:
        """Run a synchronous database function, on the loop or on the worker thread (with
        ``synchronous=full``, unless *inline*)."""
        if not self._offload:
            try:
                return fn()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite saga log {self.path!r}: {exc}") from exc
        async with self._lock:  # the connection is used by one thread at a time
            try:
                if inline:
                    return fn()
                return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite saga log {self.path!r}: {exc}") from exc

    # -- writes (group commit) ---------------------------------------------------------------

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        await self._commits.submit(_Create(record, entries))

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        result: int = await self._commits.submit(_Update(saga_id, update, revision, owner))
        return result

    async def intervene(self, saga_id: str, update: SagaUpdate, *, revision: int) -> int:
        result: int = await self._commits.submit(_Update(saga_id, update, revision, None))
        return result

    async def _flush(self, batch: list[PendingWrite[_Create | _Update]]) -> None:
        # With synchronous=full a commit waits for the disk. A batch of one write (a quiet
        # log: one saga at a time) commits on the loop: its wait is shorter than a worker
        # thread's round trip, and nobody else is writing. Batches of several (a busy log)
        # commit in the worker thread, so the loop goes on running the other sagas' steps.
        await self._call(lambda: self._flush_sync(batch), inline=len(batch) == 1)

    def _flush_sync(self, batch: list[PendingWrite[_Create | _Update]]) -> None:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                op = write.op
                try:
                    if isinstance(op, _Update):
                        write.result = self._apply_update(conn, op)
                    else:
                        self._apply_create(conn, op)
                except (ConcurrencyError, SagaNotFoundError) as exc:
                    write.error = exc
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._checkpointer is not None:
            self._checkpointer.committed()

    @staticmethod
    def _apply_create(conn: sqlite3.Connection, op: _Create) -> None:
        r = op.record
        try:
            conn.execute(
                f"INSERT INTO pysaga_sagas ({RECORD_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.saga_id,
                    r.name,
                    r.version,
                    r.status.value,
                    r.data,
                    dump_steps(r.steps),
                    dump_failure(r.failure),
                    r.revision,
                    r.owner,
                    r.lease_expires_at,
                    r.deadline_at,
                    r.created_at,
                    r.updated_at,
                    r.incarnation,
                    r.fingerprint,
                    r.held,
                ),
            )
        except sqlite3.IntegrityError:
            raise ConcurrencyError(r.saga_id, f"a saga with id {r.saga_id!r} exists") from None
        _insert_entries(conn, r.saga_id, r.revision, op.entries)

    @staticmethod
    def _apply_update(conn: sqlite3.Connection, op: _Update) -> int:
        u = op.update
        at = u.entries[-1].at if u.entries else time.time()
        if op.owner is None:
            cur = conn.execute(
                _INTERVENE,
                (
                    None if u.status is None else u.status.value,
                    dump_steps(u.steps),
                    u.data,
                    dump_failure(u.failure),
                    at,
                    op.saga_id,
                    op.revision,
                ),
            )
            if cur.rowcount != 1:
                row = conn.execute(
                    "SELECT 1 FROM pysaga_sagas WHERE saga_id = ?", (op.saga_id,)
                ).fetchone()
                if row is None:
                    raise SagaNotFoundError(op.saga_id)
                raise ConcurrencyError(op.saga_id)
            _insert_entries(conn, op.saga_id, op.revision + 1, u.entries)
            return op.revision + 1
        params = (
            dump_steps(u.steps),
            u.data,
            dump_failure(u.failure),
            at,
            op.saga_id,
            op.revision,
            op.owner,
        )
        if u.status is None:
            cur = conn.execute(_UPDATE, params)
        else:
            cur = conn.execute(_UPDATE_STATUS, (u.status.value, *params))
        if cur.rowcount != 1:
            row = conn.execute(
                "SELECT owner FROM pysaga_sagas WHERE saga_id = ?", (op.saga_id,)
            ).fetchone()
            if row is None:
                raise SagaNotFoundError(op.saga_id)
            if row[0] != op.owner:
                raise LeaseLost(op.saga_id, op.owner)
            raise ConcurrencyError(op.saga_id)
        _insert_entries(conn, op.saga_id, op.revision + 1, u.entries)
        return op.revision + 1

    # -- reads and lease management ----------------------------------------------------------

    async def get(self, saga_id: str) -> SagaRecord | None:
        def read() -> SagaRecord | None:
            row = self._db.execute(
                f"SELECT {RECORD_COLUMNS} FROM pysaga_sagas WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            return None if row is None else record_from_row(row)

        return await self._call(read)

    async def history(self, saga_id: str) -> list[LogEntry]:
        def read() -> list[LogEntry]:
            rows = self._db.execute(
                "SELECT kind, at, step, attempt, failure, owner FROM pysaga_history "
                "WHERE saga_id = ? ORDER BY revision, idx",
                (saga_id,),
            ).fetchall()
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

        return await self._call(read)

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

        pairs = sorted(kinds)
        wanted = ", ".join("(?, ?)" for _ in pairs)
        params = [value for pair in pairs for value in pair]
        # lapsed leases that are not this incarnation's own live ones (a released one is)
        taken = f"lease_expires_at < ? AND NOT ({_HELD_BY})"
        taken_params: list[Any] = [now, owner, incarnation]
        if predecessors:  # and whatever an earlier incarnation of this owner holds
            taken = f"({taken}) OR (owner = ? AND incarnation IS NOT ?)"
            taken_params += [owner, incarnation]
        same, same_params = _same_definition(fingerprints)
        params.extend(same_params)

        def run() -> list[SagaRecord]:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    f"SELECT {RECORD_COLUMNS} FROM pysaga_sagas WHERE status IN {_ACTIVE} "
                    f"AND ({taken}) AND (name, version) IN (VALUES {wanted}) "
                    f"{same}ORDER BY lease_expires_at LIMIT ?",  # lapsed leases first
                    (*taken_params, *params, limit),
                ).fetchall()
                claimed: list[SagaRecord] = []
                for row in rows:
                    rec = record_from_row(row)
                    conn.execute(
                        "UPDATE pysaga_sagas SET owner = ?, incarnation = ?, "
                        "lease_expires_at = ?, revision = revision + 1, updated_at = ?, "
                        "held = NULL "
                        "WHERE saga_id = ? AND revision = ?",
                        (owner, incarnation, now + lease, now, rec.saga_id, rec.revision),
                    )
                    rec.owner, rec.incarnation, rec.lease_expires_at = (
                        owner,
                        incarnation,
                        now + lease,
                    )
                    rec.revision += 1
                    rec.updated_at = now
                    rec.held = None
                    _insert_entries(
                        conn,
                        rec.saga_id,
                        rec.revision,
                        [LogEntry(EntryKind.SAGA_CLAIMED, at=now, owner=owner)],
                    )
                    claimed.append(rec)
                conn.execute("COMMIT")
                return claimed
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return await self._call(run)

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
        wanted = ", ".join("(?, ?)" for _ in pairs)
        params = [value for pair in pairs for value in pair]
        same, same_params = _same_definition(fingerprints)
        params.extend(same_params)

        def read() -> float | None:
            row = self._db.execute(
                f"SELECT min(lease_expires_at) FROM pysaga_sagas WHERE status IN {_ACTIVE} "
                f"AND NOT ({_HELD_BY}) AND (name, version) IN (VALUES {wanted}) {same}",
                (owner, incarnation, *params),
            ).fetchone()
            expiry: float | None = row[0] if row else None
            return expiry

        return await self._call(read)

    async def renew(self, owner: str, *, incarnation: str | None = None, until: float) -> int:
        def run() -> int:
            cur = self._db.execute(
                # a released saga (lease 0) stays released: it waits for a claimer
                f"UPDATE pysaga_sagas SET lease_expires_at = ? WHERE {_HELD_BY} "
                f"AND status IN {_ACTIVE}",
                (until, owner, incarnation),
            )
            return cur.rowcount

        return await self._call(run)

    async def release(
        self,
        owner: str,
        saga_ids: Collection[str] | None = None,
        *,
        incarnation: str | None = None,
    ) -> None:
        def run() -> None:
            if saga_ids is None:
                self._db.execute(
                    "UPDATE pysaga_sagas SET lease_expires_at = 0 "
                    f"WHERE owner = ? AND incarnation IS ? AND status IN {_ACTIVE}",
                    (owner, incarnation),
                )
            else:
                self._db.executemany(
                    "UPDATE pysaga_sagas SET lease_expires_at = 0 WHERE owner = ? "
                    f"AND incarnation IS ? AND saga_id = ? AND status IN {_ACTIVE}",
                    [(owner, incarnation, saga_id) for saga_id in saga_ids],
                )

        await self._call(run)

    async def define(self, definition: DefinitionRecord) -> None:
        def run() -> None:
            self._db.execute(
                "INSERT OR IGNORE INTO pysaga_definitions "
                "(name, version, fingerprint, outline, registered_at) VALUES (?, ?, ?, ?, ?)",
                (
                    definition.name,
                    definition.version,
                    definition.fingerprint,
                    dump_outline(definition.outline),
                    definition.registered_at,
                ),
            )

        await self._call(run)

    async def hold(
        self, name: str, version: int, fingerprint: str, *, note: str, now: float, owner: str
    ) -> list[str]:
        entry = LogEntry(
            EntryKind.SAGA_HELD,
            at=now,
            owner=owner,
            failure=Failure(None, "DefinitionChanged", note),
        )

        def run() -> list[str]:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    f"SELECT saga_id, revision FROM pysaga_sagas WHERE status IN {_ACTIVE} "
                    "AND lease_expires_at < ? AND name = ? AND version = ? "
                    "AND fingerprint = ? AND held IS NULL",
                    (now, name, version, fingerprint),
                ).fetchall()
                for saga_id, revision in rows:
                    conn.execute(
                        "UPDATE pysaga_sagas SET held = ?, revision = revision + 1, "
                        "updated_at = ? WHERE saga_id = ?",
                        (note, now, saga_id),
                    )
                    _insert_entries(conn, saga_id, revision + 1, [entry])
                conn.execute("COMMIT")
                return [saga_id for saga_id, _ in rows]
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return await self._call(run)

    async def versions(
        self, *, name: str | None = None, statuses: Collection[SagaStatus] | None = None
    ) -> list[SagaVersion]:
        clauses: list[str] = []
        params: list[Any] = []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            if values == ["compensating", "running"]:
                clauses.append(f"status IN {_ACTIVE}")  # as in the partial index's clause
            else:
                clauses.append(f"status IN ({', '.join('?' for _ in values)})")
                params.extend(values)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        if statuses is not None and name is None and clauses == [f"status IN {_ACTIVE}"]:
            # the unfinished sagas only (an orchestrator asks at every claim): read them from
            # the partial index rather than the whole (name, status) index
            where = "INDEXED BY pysaga_sagas_active " + where

        def read() -> list[SagaVersion]:
            counted = self._db.execute(VERSION_COUNTS.format(where=where), params).fetchall()
            definitions = self._db.execute(
                "SELECT name, version, fingerprint, outline, registered_at "
                "FROM pysaga_definitions" + (" WHERE name = ?" if name is not None else ""),
                () if name is None else (name,),
            ).fetchall()
            return versions_from_rows(counted, definitions, include_empty=statuses is None)

        return await self._call(read)

    async def active_kinds(self) -> set[tuple[str, int]]:
        def read() -> set[tuple[str, int]]:
            rows = self._db.execute(
                f"SELECT DISTINCT name, version FROM pysaga_sagas WHERE status IN {_ACTIVE}"
            ).fetchall()
            return {(name, version) for name, version in rows}

        return await self._call(read)

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
        if held is not None:
            clauses.append("held IS NOT NULL" if held else "held IS NULL")
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            if values == ["compensating", "running"]:
                # written as in the partial index's clause, so SQLite reads only that index
                clauses.append(f"status IN {_ACTIVE}")
            else:
                clauses.append(f"status IN ({', '.join('?' for _ in values)})")
                params.extend(values)
        if created_before is not None:
            clauses.append("created_at < ?")
            params.append(created_before)
        if updated_before is not None:
            clauses.append("updated_at < ?")
            params.append(updated_before)
        if deadline_before is not None:
            clauses.append("deadline_at < ?")  # NULL (no deadline) never matches
            params.append(deadline_before)
        if timer_before is not None:
            # a step's state is [status, attempts, failures, timeout_at, retry_at]
            clauses.append(
                "EXISTS (SELECT 1 FROM json_each(pysaga_sagas.steps)"
                " WHERE json_extract(value, '$[3]') < ? OR json_extract(value, '$[4]') < ?)"
            )
            params.extend((timer_before, timer_before))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def read() -> list[SagaRecord]:
            rows = self._db.execute(
                f"SELECT {RECORD_COLUMNS} FROM pysaga_sagas {where} "
                "ORDER BY created_at DESC, saga_id LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [record_from_row(row) for row in rows]

        return await self._call(read)

    async def counts(self, *, name: str | None = None) -> dict[SagaStatus, int]:
        # GROUP BY status over the (name, status) index: the table itself is not read
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())

        def read() -> dict[SagaStatus, int]:
            rows = self._db.execute(
                f"SELECT status, COUNT(*) FROM pysaga_sagas {where} GROUP BY status", params
            ).fetchall()
            return {SagaStatus(status): count for status, count in rows}

        return await self._call(read)


# -- WAL checkpoints -------------------------------------------------------------------------


class _Checkpointer:
    """Copies the WAL back into the database file on a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold, which
    makes that one commit (and every saga waiting on it) several milliseconds slower. The log
    turns it off and checkpoints here instead, in PASSIVE mode, which never blocks writers:
    after every ``every`` commits, and at least every ``interval`` seconds.
    """

    def __init__(
        self, path: str, busy_timeout: float, *, every: int = 100, interval: float = 1.0
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._every = every
        self._interval = interval
        self._commits = 0
        self.checkpoints = 0
        """Checkpoints that copied frames (for tests and benchmarks)."""
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pysaga-wal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """Count one commit; wake the thread when a checkpoint is due."""
        self._commits += 1
        if self._commits >= self._every:
            self._commits = 0
            self._wake.set()

    def stop(self) -> None:
        """Stop the thread and wait for it (blocking: call it from a worker thread)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout)
        try:
            while not self._stopping:
                self._wake.wait(self._interval)
                self._wake.clear()
                try:
                    busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if not busy and frames > 0:
                        self.checkpoints += 1
                except sqlite3.Error:  # busy or locked: the next round tries again
                    logger.debug("WAL checkpoint of %s deferred", self._path, exc_info=True)
        finally:
            conn.close()


# -- row encoding ----------------------------------------------------------------------------


def _insert_entries(
    conn: sqlite3.Connection, saga_id: str, revision: int, entries: Sequence[LogEntry]
) -> None:
    conn.executemany(
        _INSERT_ENTRY,
        [
            (
                saga_id,
                revision,
                idx,
                e.kind.value,
                e.step,
                e.attempt,
                e.at,
                e.owner,
                dump_failure(e.failure),
            )
            for idx, e in enumerate(entries)
        ],
    )
