"""What only the PostgreSQL saga log does: URLs, its schema and migrations, several logs (as
several orchestrator processes) sharing one database, group commit in one statement, and
connections lost under it. The store contract itself runs in test_contract.py."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import asyncpg
import pytest

from pysaga import (
    ConcurrencyError,
    EntryKind,
    LogEntry,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    SchemaVersionError,
    StepState,
    StepStatus,
    StoreError,
)
from pysaga.stores import from_url
from pysaga.stores.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresSagaLog

pytestmark = pytest.mark.anyio


def rec(saga_id: str, *, owner: str = "me", lease: float = 1e12, name: str = "s") -> SagaRecord:
    return SagaRecord(
        saga_id,
        name,
        1,
        SagaStatus.RUNNING,
        "{}",
        owner=owner,
        lease_expires_at=lease,
        created_at=1.0,
        updated_at=1.0,
    )


START = [LogEntry(EntryKind.SAGA_STARTED, at=1.0)]


def step(n: int) -> SagaUpdate:
    return SagaUpdate(
        [LogEntry(EntryKind.STEP_STARTED, at=2.0 + n, step=f"x{n}", attempt=1, owner="me")],
        steps={f"x{n}": StepState(StepStatus.STARTED, 1, 0)},
    )


def schema_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["schema"]


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, outside any log's pool."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def terminate_log_connections(admin: asyncpg.Connection, schema: str) -> int:
    """End the server side of this test's log connections (and only those)."""
    pids = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        f"pysaga saga log {schema}",
    )
    for row in pids:
        await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])
    return len(pids)


# -- URLs and construction -------------------------------------------------------------------


def test_url_options() -> None:
    """schema and pool_size are the log's own; other query options go to the client."""
    log = from_url("postgresql://app:secret@db.internal:6432/sagas?schema=orders&pool_size=3")
    assert isinstance(log, PostgresSagaLog)
    assert (log.schema, log.pool_size) == ("orders", 3)
    assert log.options.dsn == "postgresql://app:secret@db.internal:6432/sagas"
    passthrough = PostgresSagaLog("postgres://u@h/db?sslmode=disable&schema=x")
    assert passthrough.options.dsn == "postgresql://u@h/db?sslmode=disable"
    default = PostgresSagaLog("postgresql://u@h/db")
    assert (default.schema, default.pool_size) == ("public", 8)


def test_keywords_override_the_url() -> None:
    """The constructor's schema and pool_size win over the URL's."""
    log = PostgresSagaLog("postgresql://u@h/db?schema=a&pool_size=2", schema="b", pool_size=5)
    assert (log.schema, log.pool_size) == ("b", 5)


def test_repr_hides_the_password() -> None:
    """The password never shows in the log's repr (nor so in its messages)."""
    text = repr(PostgresSagaLog("postgresql://app:secret@h/db?schema=s"))
    assert "secret" not in text
    assert "app:***@h" in text


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("postgresql://u@h/db?pool_size=0", {}, "at least 1"),
        ("postgresql://u@h/db?pool_size=many", {}, "whole number"),
        ("postgresql://u@h/db?schema=no-dashes", {}, "plain identifier"),
        ("postgresql://u@h/db?schema=x;drop", {}, "plain identifier"),
        ("postgresql://u@h/db", {"schema": "1abc"}, "plain identifier"),
        ("postgresql://u@h/db", {"pool_size": 0}, "at least 1"),
        ("mysql://u@h/db", {}, "not a PostgreSQL URL"),
    ],
)
def test_bad_values(url: str, kwargs: dict[str, object], match: str) -> None:
    """Bad options fail at construction with a message that says what to write."""
    with pytest.raises(ValueError, match=match):
        PostgresSagaLog(url, **kwargs)  # type: ignore[arg-type]


async def test_not_open_is_explained() -> None:
    """Using a log that is not entered says how to open it."""
    with pytest.raises(RuntimeError, match="async with"):
        await PostgresSagaLog("postgresql://u@h/db").get("a")


async def test_unreachable_server_is_a_store_error() -> None:
    """A server that cannot be reached is reported as StoreError, without the password."""
    log = PostgresSagaLog("postgresql://u:secret@127.0.0.1:1/db")
    with pytest.raises(StoreError, match="cannot open the PostgreSQL saga log") as info:
        async with log:
            pass
    assert "secret" not in str(info.value)


# -- schema ----------------------------------------------------------------------------------


async def test_migrations_applied_once_when_many_start_together(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    """Eight logs entering at once on a fresh schema apply the schema once, and all work."""
    schema = schema_of(postgres_url)
    logs = [PostgresSagaLog(postgres_url, pool_size=1) for _ in range(8)]
    async with anyio.create_task_group() as tg:
        for log in logs:
            tg.start_soon(log.__aenter__)
    try:
        for n, log in enumerate(logs):
            await log.create(rec(f"s{n}"), START)
        assert len(await logs[0].list(limit=100)) == 8
    finally:
        for log in logs:
            await log.aclose()
    versions = await admin.fetch(f"SELECT component, version FROM {schema}.pysaga_schema")
    assert [tuple(row) for row in versions] == [("saga_log", SCHEMA_VERSION)]
    tables = await admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
        "ORDER BY table_name",
        schema,
    )
    assert [row[0] for row in tables] == [
        "pysaga_definitions",
        "pysaga_history",
        "pysaga_sagas",
        "pysaga_schema",
    ]
    indexes = await admin.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)
    assert {row[0] for row in indexes} >= {
        "pysaga_sagas_active",
        "pysaga_sagas_name_status",
        "pysaga_sagas_created",
    }


async def test_a_schema_1_log_is_migrated(postgres_url: str, admin: asyncpg.Connection) -> None:
    """A log written before fingerprints (schema 1) gets migration 2 when it opens: its sagas
    read back without a fingerprint and are still claimed and written."""
    schema = schema_of(postgres_url)
    await admin.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await admin.execute(f"SET search_path TO {schema}")
    await admin.execute(MIGRATIONS[0])
    await admin.execute(
        "CREATE TABLE pysaga_schema (component text PRIMARY KEY, version integer NOT NULL)"
    )
    await admin.execute("INSERT INTO pysaga_schema VALUES ('saga_log', 1)")
    await admin.execute(
        "INSERT INTO pysaga_sagas VALUES "
        "('old', 's', 1, 'running', '{}', '{}', NULL, 3, 'gone', 0, NULL, 1.0, 2.0)"
    )
    await admin.execute("RESET search_path")
    async with PostgresSagaLog(postgres_url) as log:
        old = await log.get("old")
        assert old is not None
        assert (old.fingerprint, old.held, old.revision) == (None, None, 3)
        claimed = await log.claim(
            "me", kinds={("s", 1)}, lease=10.0, now=5.0, fingerprints={("s", 1): "f1"}
        )
        assert [r.saga_id for r in claimed] == ["old"]
        await log.update("old", SagaUpdate([], SagaStatus.COMPLETED), revision=4, owner="me")
    version = await admin.fetchval(
        f"SELECT version FROM {schema}.pysaga_schema WHERE component = 'saga_log'"
    )
    assert version == SCHEMA_VERSION


async def test_newer_schema_is_refused(postgres_url: str, admin: asyncpg.Connection) -> None:
    """A schema written by a newer pysaga is refused with advice, and nothing is changed."""
    schema = schema_of(postgres_url)
    async with PostgresSagaLog(postgres_url) as log:
        await log.create(rec("a"), START)
    await admin.execute(
        f"UPDATE {schema}.pysaga_schema SET version = $1 WHERE component = 'saga_log'",
        SCHEMA_VERSION + 1,
    )
    with pytest.raises(SchemaVersionError, match="upgrade pysaga"):
        async with PostgresSagaLog(postgres_url):
            pass
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.pysaga_sagas") == 1


async def test_a_log_from_before_incarnations_is_brought_up_to_date(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    """A schema at version 1 (no lease incarnation) opens: the column is added, the sagas
    in it read back with no incarnation, and their owner's new incarnation takes them."""
    schema = schema_of(postgres_url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    await admin.execute(f"SET search_path TO {schema}")
    await admin.execute(MIGRATIONS[0])
    await admin.execute(
        "CREATE TABLE pysaga_schema (component text PRIMARY KEY, version integer NOT NULL)"
    )
    await admin.execute("INSERT INTO pysaga_schema VALUES ('saga_log', 1)")
    await admin.execute(
        "INSERT INTO pysaga_sagas (saga_id, name, version, status, data, steps, revision,"
        " owner, lease_expires_at, created_at, updated_at)"
        " VALUES ('old', 's', 1, 'running', '{}', '{}', 3, 'me', 1e12, 1, 1)"
    )
    await admin.execute("RESET search_path")
    async with PostgresSagaLog(postgres_url) as log:
        got = await log.get("old")
        assert got is not None
        assert (got.owner, got.incarnation, got.revision) == ("me", None, 3)
        claimed = await log.claim(
            "me", incarnation="new", kinds={("s", 1)}, lease=5.0, now=10.0, predecessors=True
        )
        assert [(r.saga_id, r.incarnation) for r in claimed] == [("old", "new")]
    version = await admin.fetchval(
        f"SELECT version FROM {schema}.pysaga_schema WHERE component = 'saga_log'"
    )
    assert version == SCHEMA_VERSION


async def test_reopen_keeps_what_was_written(postgres_url: str) -> None:
    """A second log on the schema reads what the first one wrote, byte for byte."""
    data = '{"b": 2,  "a": [1, 2.50]}'  # kept as text: spacing and key order survive
    steps = {"x": StepState(StepStatus.STARTED, 2, 1, timeout_at=1700000000.123456, retry_at=None)}
    record = rec("a")
    record.data, record.steps = data, steps
    async with PostgresSagaLog(postgres_url) as log:
        await log.create(record, START)
    async with PostgresSagaLog(postgres_url) as log:
        assert await log.get("a") == record


async def test_a_server_error_is_a_store_error(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    """An error the server reports reaches the caller as StoreError, saying what failed."""
    async with PostgresSagaLog(postgres_url) as log:
        await log.create(rec("a"), START)
        await admin.execute(f"DROP TABLE {schema_of(postgres_url)}.pysaga_history")
        with pytest.raises(StoreError, match="could not read the history of saga 'a'"):
            await log.history("a")
        with pytest.raises(StoreError, match="could not write"):
            await log.update("a", step(1), revision=0, owner="me")


# -- several logs on one database ------------------------------------------------------------


async def test_concurrent_claimers_split_the_sagas(postgres_url: str) -> None:
    """Two logs (two pools, as two orchestrator processes) claiming 200 expired sagas at the
    same time get disjoint sets that together hold every saga, each claimed once."""
    async with PostgresSagaLog(postgres_url) as setup, anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(setup.create, rec(f"s{n:03d}", owner="gone", lease=5.0), START)
    got: dict[str, list[str]] = {"one": [], "two": []}

    async def claimer(owner: str) -> None:
        async with PostgresSagaLog(postgres_url, pool_size=2) as log:
            while True:
                claimed = await log.claim(owner, kinds={("s", 1)}, lease=60.0, now=10.0, limit=7)
                if not claimed:
                    return
                got[owner].extend(r.saga_id for r in claimed)
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(claimer, "one")
        tg.start_soon(claimer, "two")
    one, two = set(got["one"]), set(got["two"])
    assert len(one) == len(got["one"])
    assert len(two) == len(got["two"])
    assert not one & two
    assert one | two == {f"s{n:03d}" for n in range(200)}
    async with PostgresSagaLog(postgres_url) as log:
        for saga_id in ("s000", "s199"):
            record = await log.get(saga_id)
            assert record is not None
            assert record.owner == ("one" if saga_id in one else "two")
            assert record.revision == 1
            claims = [e for e in await log.history(saga_id) if e.kind is EntryKind.SAGA_CLAIMED]
            assert [e.owner for e in claims] == [record.owner]


async def test_a_claim_retried_after_its_reply_was_lost_returns_its_sagas(
    postgres_url: str,
) -> None:
    """If a claim committed but its reply never arrived, the retry (same owner, same time)
    returns those sagas too: otherwise their owner would neither drive nor claim them."""
    async with PostgresSagaLog(postgres_url) as log:
        for n in range(5):
            await log.create(rec(f"s{n}", owner="gone", lease=5.0), START)
        lost = await log.claim("me", kinds={("s", 1)}, lease=60.0, now=10.0, limit=3)
        assert len(lost) == 3
        async with log._db.acquire() as conn:
            again = await log._claim_on(
                conn, "me", kinds={("s", 1)}, lease=60.0, now=10.0, limit=100, again=True
            )
        assert [r.saga_id for r in again[:3]] == sorted(r.saga_id for r in lost)
        assert {r.saga_id for r in again} == {f"s{n}" for n in range(5)}
        # a later claim at another time does not take them back
        assert await log.claim("me", kinds={("s", 1)}, lease=60.0, now=11.0) == []


# -- group commit ----------------------------------------------------------------------------


async def test_concurrent_writes_share_batches_and_all_land(postgres_url: str) -> None:
    """Concurrent creates and updates are flushed in fewer batches than writes, and every
    write lands with its history."""
    async with PostgresSagaLog(postgres_url) as log:
        async with anyio.create_task_group() as tg:
            for n in range(150):
                tg.start_soon(log.create, rec(f"s{n}"), START)
        revisions: dict[str, int] = {}

        async def advance(saga_id: str) -> None:
            revision = 0
            for k in range(3):
                revision = await log.update(saga_id, step(k), revision=revision, owner="me")
            revisions[saga_id] = revision

        async with anyio.create_task_group() as tg:
            for n in range(150):
                tg.start_soon(advance, f"s{n}")
        assert log.commits.writes == 150 * 4
        assert log.commits.batches < log.commits.writes // 4
        assert set(revisions.values()) == {3}
        for saga_id in ("s0", "s77", "s149"):
            record = await log.get(saga_id)
            assert record is not None
            assert record.revision == 3
            assert set(record.steps) == {"x0", "x1", "x2"}
            history = await log.history(saga_id)
            assert [e.kind for e in history] == [EntryKind.SAGA_STARTED] + [
                EntryKind.STEP_STARTED
            ] * 3


async def test_a_duplicate_create_fails_only_itself(postgres_url: str) -> None:
    """A create of an existing id, batched with other creates, fails alone."""
    async with PostgresSagaLog(postgres_url) as log:
        await log.create(rec("dup"), START)
        outcomes: dict[str, str] = {}

        async def create(saga_id: str, name: str) -> None:
            try:
                await log.create(rec(saga_id, name=name), START)
                outcomes[f"{saga_id}/{name}"] = "ok"
            except ConcurrencyError as exc:
                outcomes[f"{saga_id}/{name}"] = str(exc)

        batches = log.commits.batches
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(create, f"new{n}", "s")
            tg.start_soon(create, "dup", "other")
        assert log.commits.batches - batches < 11  # they shared a batch
        assert outcomes.pop("dup/other") == "a saga with id 'dup' exists"
        assert set(outcomes.values()) == {"ok"}
        assert len(await log.list(limit=100)) == 11
        original = await log.get("dup")
        assert original is not None
        assert original.name == "s"
        assert len(await log.history("dup")) == 1


async def test_two_writes_to_one_saga_in_a_batch_apply_in_turn(postgres_url: str) -> None:
    """A batch holding a saga's create and its first update applies them in order."""
    async with PostgresSagaLog(postgres_url) as log:
        results: list[object] = []

        async def create() -> None:
            results.append(await log.create(rec("a"), START))

        async def update() -> None:
            results.append(await log.update("a", step(0), revision=0, owner="me"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(create)
            tg.start_soon(update)
        assert results == [None, 1]
        assert log.commits.batches == 1
        assert len(await log.history("a")) == 2


# -- connections lost ------------------------------------------------------------------------


async def test_killed_connections_fail_the_calls_in_flight_then_work_again(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    """When the server ends the log's connections in the middle of concurrent writes, the
    writes in flight fail with StoreError (or land), every saga stays consistent, and the
    writes and reads after it work.

    A row lock held by the test keeps one batch waiting inside the server, so that the
    connections are surely ended under writes in flight.
    """
    schema = schema_of(postgres_url)
    async with PostgresSagaLog(postgres_url, pool_size=4) as log:
        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(log.create, rec(f"s{n}"), START)
        errors: list[StoreError] = []
        landed = 0
        busy, killed = anyio.Event(), anyio.Event()

        async def writer(saga_id: str) -> None:
            nonlocal landed
            revision = 0
            for k in range(1000):
                try:
                    revision = await log.update(saga_id, step(k), revision=revision, owner="me")
                except StoreError as exc:  # lost (a refusal would be a subclass)
                    errors.append(exc)
                    return
                landed += 1
                if landed >= 200:
                    busy.set()
                if killed.is_set():
                    return

        async def reader() -> None:
            while not killed.is_set():
                try:
                    await log.get("s0")
                    await log.counts()
                except StoreError as exc:
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(writer, f"s{n}")
            tg.start_soon(reader)
            await busy.wait()
            async with admin.transaction():
                await admin.execute(
                    f"SELECT 1 FROM {schema}.pysaga_sagas WHERE saga_id = 's0' FOR UPDATE"
                )
                waiting = 0
                while not waiting:  # until a batch waits on the lock
                    waiting = await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                        f"pysaga saga log {schema}",
                    )
                assert await terminate_log_connections(admin, schema) >= 1
            killed.set()
        assert errors, "the batch waiting on the lock failed"
        for error in errors:
            assert type(error) is StoreError
            assert "connection to the server was lost" in str(error)
            assert "may or may not have been committed" in str(error) or "read" in str(error)

        # the next calls work again: reads, writes, lease upkeep
        records = await log.list(limit=100)
        assert len(records) == 40
        for record in records:
            history = await log.history(record.saga_id)
            assert len(history) == record.revision + 1  # each write landed whole, or not
            new_revision = await log.update(
                record.saga_id, step(9999), revision=record.revision, owner="me"
            )
            assert new_revision == record.revision + 1
        assert await log.renew("me", until=2e12) == 40
        assert await log.counts() == {SagaStatus.RUNNING: 40}


async def test_reads_and_lease_upkeep_retry_once_on_a_lost_connection(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    """After the server ended every idle connection of the log, a read, a renew, a release
    and a claim succeed at once on a fresh connection."""
    schema = schema_of(postgres_url)
    async with PostgresSagaLog(postgres_url, pool_size=2) as log:
        await log.create(rec("a", owner="gone", lease=5.0), START)
        for call in range(4):
            await terminate_log_connections(admin, schema)
            if call == 0:
                assert await log.get("a") is not None
            elif call == 1:
                assert await log.renew("gone", until=6.0) == 1
            elif call == 2:
                await log.release("gone")
            else:
                claimed = await log.claim("me", kinds={("s", 1)}, lease=60.0, now=10.0)
                assert [r.saga_id for r in claimed] == ["a"]


# -- the guide's example (docs/guides/postgresql.md) -----------------------------------------


class TestTheGuide:
    """docs/snippets/postgres_log.py, which needs a PostgreSQL server (so it runs here)."""

    def load(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        snippets = Path(__file__).resolve().parents[2] / "docs" / "snippets"
        spec = importlib.util.spec_from_file_location("postgres_log", snippets / "postgres_log.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "postgres_log", module)
        spec.loader.exec_module(module)
        return module

    async def test_two_orchestrators_share_one_log(
        self,
        postgres_url: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Both orchestrators' sagas complete on the one log, each written by its starter."""
        snippet = self.load(monkeypatch)
        counts = await snippet.main(postgres_url)
        assert counts == {SagaStatus.COMPLETED: 100}
        assert capsys.readouterr().out == (
            "100 signups completed by two orchestrators on one log\n"
        )
        async with PostgresSagaLog(postgres_url) as log:
            owners = {record.owner for record in await log.list(limit=200)}
        assert owners == {"replica-1", "replica-2"}

    def test_the_urls_on_the_page_open_the_logs_they_say(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The URL and object forms on the page configure the log as the page says."""
        snippet = self.load(monkeypatch)
        by_url = snippet.by_url.log
        assert isinstance(by_url, PostgresSagaLog)
        assert (by_url.schema, by_url.pool_size) == ("sagas", 8)
        assert snippet.by_object.log is snippet.log
        assert (snippet.log.schema, snippet.log.pool_size) == ("sagas", 8)
