"""What only the SQLite saga log does: a file that outlives the process, a schema version,
URLs, durability settings and group commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from pysaga import EntryKind, LogEntry, SagaRecord, SagaStatus, SagaUpdate, SchemaVersionError
from pysaga.stores import from_url
from pysaga.stores.memory import InMemorySagaLog
from pysaga.stores.sqlite import SCHEMA_VERSION, SQLiteSagaLog

pytestmark = pytest.mark.anyio


def rec(saga_id: str) -> SagaRecord:
    return SagaRecord(
        saga_id,
        "s",
        1,
        SagaStatus.RUNNING,
        "{}",
        owner="me",
        lease_expires_at=100.0,
        created_at=1.0,
        updated_at=1.0,
    )


START = [LogEntry(EntryKind.SAGA_STARTED, at=1.0)]


async def test_survives_reopen(tmp_path: Path) -> None:
    """What was written is there after the log is closed and opened again."""
    path = tmp_path / "deep" / "dir" / "sagas.db"
    async with SQLiteSagaLog(path) as log:
        await log.create(rec("a"), START)
        await log.update("a", SagaUpdate([], SagaStatus.COMPLETED), revision=0, owner="me")
    async with SQLiteSagaLog(path) as log:
        got = await log.get("a")
        assert got is not None
        assert got.status is SagaStatus.COMPLETED
        assert got.revision == 1


async def test_schema_version_recorded_and_newer_refused(tmp_path: Path) -> None:
    """The schema version is kept; a file from a newer pysaga is refused with advice."""
    path = tmp_path / "sagas.db"
    async with SQLiteSagaLog(path):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM pysaga_schema").fetchall() == [(SCHEMA_VERSION,)]
        conn.execute("UPDATE pysaga_schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="upgrade pysaga"):
        async with SQLiteSagaLog(path):
            pass


SCHEMA_1 = """
CREATE TABLE pysaga_schema (version INTEGER NOT NULL);
INSERT INTO pysaga_schema (version) VALUES (1);
CREATE TABLE pysaga_sagas (
    saga_id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
    status TEXT NOT NULL, data TEXT NOT NULL, steps TEXT NOT NULL, failure TEXT,
    revision INTEGER NOT NULL, owner TEXT, lease_expires_at REAL NOT NULL, deadline_at REAL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE pysaga_history (
    saga_id TEXT NOT NULL, revision INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL,
    step TEXT, attempt INTEGER NOT NULL, at REAL NOT NULL, owner TEXT, failure TEXT,
    PRIMARY KEY (saga_id, revision, idx)
) WITHOUT ROWID;
INSERT INTO pysaga_sagas VALUES
    ('old', 's', 1, 'running', '{}', '{}', NULL, 3, 'gone', 0, NULL, 1.0, 2.0);
"""
"""A log file as pysaga wrote it before fingerprints (schema 1), with one unfinished saga."""


async def test_a_schema_1_file_gains_the_fingerprint_columns(tmp_path: Path) -> None:
    """A log written before fingerprints opens: its columns and table are added, its sagas
    read back without a fingerprint, and they can still be claimed and written."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1)
    async with SQLiteSagaLog(path) as log:
        old = await log.get("old")
        assert old is not None
        assert (old.fingerprint, old.held, old.revision) == (None, None, 3)
        claimed = await log.claim(
            "me", kinds={("s", 1)}, lease=10.0, now=5.0, fingerprints={("s", 1): "f1"}
        )
        assert [r.saga_id for r in claimed] == ["old"]
        await log.update("old", SagaUpdate([], SagaStatus.COMPLETED), revision=4, owner="me")
        versions = await log.versions()
        assert [(v.name, v.fingerprint, dict(v.counts)) for v in versions] == [
            ("s", None, {SagaStatus.COMPLETED: 1})
        ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT max(version) FROM pysaga_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
    async with SQLiteSagaLog(path) as log:  # opening it again changes nothing
        got = await log.get("old")
        assert got is not None
        assert got.status is SagaStatus.COMPLETED


async def test_a_log_from_before_incarnations_is_brought_up_to_date(tmp_path: Path) -> None:
    """A file at schema version 1 (no lease incarnation) opens: the column is added, the
    sagas in it read back with no incarnation, and their owner's new incarnation takes them."""
    path = tmp_path / "sagas.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE pysaga_schema (version INTEGER NOT NULL);
            INSERT INTO pysaga_schema VALUES (1);
            CREATE TABLE pysaga_sagas (
                saga_id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
                status TEXT NOT NULL, data TEXT NOT NULL, steps TEXT NOT NULL, failure TEXT,
                revision INTEGER NOT NULL, owner TEXT, lease_expires_at REAL NOT NULL,
                deadline_at REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL
            ) WITHOUT ROWID;
            INSERT INTO pysaga_sagas VALUES
                ('old', 's', 1, 'running', '{}', '{}', NULL, 3, 'me', 1e12, NULL, 1, 1);
            """
        )
    conn.close()
    async with SQLiteSagaLog(path) as log:
        got = await log.get("old")
        assert got is not None
        assert (got.owner, got.incarnation, got.revision) == ("me", None, 3)
        claimed = await log.claim(
            "me", incarnation="new", kinds={("s", 1)}, lease=5.0, now=10.0, predecessors=True
        )
        assert [(r.saga_id, r.incarnation) for r in claimed] == [("old", "new")]
    async with SQLiteSagaLog(path) as log:  # a second opening finds it up to date
        got = await log.get("old")
        assert got is not None
        assert got.incarnation == "new"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT max(version) FROM pysaga_schema").fetchone() == (
            SCHEMA_VERSION,
        )
    conn.close()
    assert SCHEMA_VERSION >= 2  # version 2 added the incarnation


async def test_wal_and_synchronous(tmp_path: Path) -> None:
    """The default is WAL with synchronous=NORMAL; FULL can be asked for."""
    async with SQLiteSagaLog(tmp_path / "a.db") as log:
        assert log._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert log._db.execute("PRAGMA synchronous").fetchone() == (1,)
    async with from_url(f"sqlite:///{tmp_path}/b.db?synchronous=full") as log:
        assert isinstance(log, SQLiteSagaLog)
        assert log._db.execute("PRAGMA synchronous").fetchone() == (2,)
        # the FULL path runs its batches on a worker thread: check it works end to end
        await log.create(rec("a"), START)
        assert (await log.get("a")) is not None


@pytest.mark.parametrize(
    ("url", "path", "sync"),
    [
        ("sqlite:///sagas.db", "sagas.db", "normal"),
        ("sqlite:///dir/sagas.db?synchronous=FULL", "dir/sagas.db", "full"),
        ("sqlite:////abs/sagas.db", "/abs/sagas.db", "normal"),
        ("sqlite://:memory:", ":memory:", "normal"),
    ],
)
def test_urls(url: str, path: str, sync: str) -> None:
    """SQLite URLs name relative and absolute files and options."""
    log = from_url(url)
    assert isinstance(log, SQLiteSagaLog)
    assert (log.path, log.synchronous) == (path, sync)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?color=blue", "unknown option"),
        ("sqlite://", "names no file"),
        ("mongodb://x", "unknown scheme"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    """Bad URLs fail with a message that says what to write."""
    with pytest.raises(ValueError, match=match):
        from_url(url)


def test_memory_url() -> None:
    """memory:// gives the in-memory log."""
    assert isinstance(from_url("memory://"), InMemorySagaLog)


async def test_not_open_is_explained(tmp_path: Path) -> None:
    """Using a log that is not entered says how to open it."""
    with pytest.raises(RuntimeError, match="async with"):
        await SQLiteSagaLog(tmp_path / "x.db").get("a")


@pytest.mark.parametrize("sync", ["normal", "full"])
async def test_group_commit_batches_concurrent_writes(tmp_path: Path, sync: str) -> None:
    """Writes from concurrent sagas share transactions; a refused write in a batch does not
    disturb the others."""
    async with SQLiteSagaLog(tmp_path / "g.db", synchronous=sync) as log:  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            for n in range(100):
                tg.start_soon(log.create, rec(f"s{n}"), START)
        assert log.commits.writes == 100
        assert log.commits.batches < 100
        outcomes: dict[str, str] = {}

        async def finish(saga_id: str, revision: int) -> None:
            try:
                await log.update(
                    saga_id, SagaUpdate([], SagaStatus.COMPLETED), revision=revision, owner="me"
                )
                outcomes[saga_id] = "ok"
            except Exception as exc:
                outcomes[saga_id] = type(exc).__name__

        async with anyio.create_task_group() as tg:
            for n in range(100):
                # every tenth write carries a stale revision
                tg.start_soon(finish, f"s{n}", 5 if n % 10 == 0 else 0)
        assert sum(v == "ok" for v in outcomes.values()) == 90
        assert {v for k, v in outcomes.items() if int(k[1:]) % 10 == 0} == {"ConcurrencyError"}
        done = await log.list(status=SagaStatus.COMPLETED, limit=1000)
        assert len(done) == 90


async def test_wal_is_checkpointed_off_the_commit_path(tmp_path: Path) -> None:
    """The commit path never checkpoints (autocheckpoint is off); a background thread does,
    and stops when the log closes."""
    path = tmp_path / "wal.db"
    async with SQLiteSagaLog(path) as log:
        assert log._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        checkpointer = log._checkpointer
        assert checkpointer is not None
        for n in range(3000):
            await log.create(rec(f"s{n:05d}"), START)
            if n % 200 == 0:
                await anyio.sleep(0.01)  # let the checkpoint thread have the GIL
    assert not checkpointer._thread.is_alive()
    assert checkpointer.checkpoints >= 3
