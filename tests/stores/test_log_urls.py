"""One rule for saga log URLs: the Orchestrator, the ChoreographyObserver, the Inspector and
the Operator read a ``log=`` argument the same way, with the same errors. A writer creates a
missing log and says where; a reader creates nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from pysaga import (
    Choreography,
    ChoreographyObserver,
    Inspector,
    InvalidURLError,
    Operator,
    Orchestrator,
    StoreError,
)
from pysaga.stores import check_url, from_url, inbox_from_url, log_from, redact_url
from pysaga.stores.sqlite import SQLiteSagaLog

pytestmark = pytest.mark.anyio


def users() -> dict[str, Any]:
    """Each class that takes a ``log=`` argument, as a function of it."""
    from pydantic import BaseModel

    class Started(BaseModel):
        pass

    class Done(BaseModel):
        pass

    flow = Choreography("flow", starts=Started, completes=Done, deadline=60)
    return {
        "Orchestrator": lambda log: Orchestrator(sagas=[], log=log),
        "ChoreographyObserver": lambda log: ChoreographyObserver(flow, log=log, broker="memory://"),
        "Inspector": Inspector,
        "Operator": Operator,
    }


MALFORMED = [
    ("trips", "'trips' is neither a URL nor a SQLite file path"),
    ("mongodb://127.0.0.1/sagas", "unknown scheme 'mongodb'"),
    ("postgresql://u:secret@127.0.0.1:54x/db", "the port '54x' is not a number"),
    ("postgresql://127.0.0.1/db?bogus=1", "unknown option 'bogus'"),
    ("postgresql://127.0.0.1/db?schema=a-b", "not a plain identifier"),
    ("sqlite:///sagas.db?busy_timeout=-1", "busy_timeout must be a number of seconds >= 0"),
    ("sqlite:///sagas.db?synchronous=off", "synchronous must be 'normal' or 'full'"),
]


@pytest.mark.parametrize(("url", "says"), MALFORMED)
def test_malformed_urls_are_refused_alike(
    url: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every user of a log raises the same InvalidURLError (a ValueError too) at once,
    before opening anything, with the password hidden."""
    monkeypatch.chdir(tmp_path)
    messages = set()
    for name, user in users().items():
        with pytest.raises(InvalidURLError) as info:
            user(url)
        assert says in str(info.value), name
        assert "secret" not in str(info.value)
        assert isinstance(info.value, ValueError)
        messages.add(str(info.value))
    assert len(messages) == 1
    with pytest.raises(InvalidURLError) as info:  # an inbox URL follows the same rule
        inbox_from_url(url)
    assert says in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_check_url_needs_no_client_library() -> None:
    """A PostgreSQL URL is checked without importing the PostgreSQL adapter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pysaga.stores import check_url\n"
        "check_url('postgresql://u@h:5432/db?schema=s&sslmode=require&pool_size=2')\n"
        "try:\n"
        "    check_url('postgresql://u@h:x/db')\n"
        "except ValueError:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('asyncpg', 'pysaga.stores.p'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_forms() -> None:
    assert check_url("trips.db") == "sqlite:///trips.db"
    assert check_url("data/trips.sqlite") == "sqlite:///data/trips.sqlite"
    assert check_url("/var/lib/app/trips.sqlite3") == "sqlite:////var/lib/app/trips.sqlite3"
    for url in ("sqlite:///a.db", "memory://", "postgresql://u@h/db", "postgres://h/db"):
        assert check_url(url) == url
    log = from_url("trips.db")
    assert isinstance(log, SQLiteSagaLog)
    assert log.path == "trips.db"
    path_log, owned = log_from(Path("logs") / "trips.data")  # a PathLike: whatever its ending
    assert isinstance(path_log, SQLiteSagaLog)
    assert (path_log.path, owned) == (os.path.join("logs", "trips.data"), True)


def test_redact_url() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/shop") == "postgresql://app:***@db:5432/shop"
    assert redact_url("postgresql://app@db/shop") == "postgresql://app@db/shop"
    assert redact_url("amqp://guest:guest@127.0.0.1/") == "amqp://guest:***@127.0.0.1/"
    assert redact_url("sqlite:///sagas.db") == "sqlite:///sagas.db"
    assert redact_url("postgresql://a:b@[::1") == "postgresql://a:b@[::1"  # not a URL at all


async def test_readers_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Inspector and the Operator say that the file does not exist, and leave no file
    or directory behind; the same for a bare path and a URL."""
    monkeypatch.chdir(tmp_path)
    for reader in (Inspector, Operator):
        for log in ("sub/sagas.db", "sqlite:///sub/sagas.db", Path("sub/sagas.db")):
            with pytest.raises(StoreError, match=r"'sub/sagas.db': the file does not exist"):
                async with reader(log):
                    pass
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_a_writer_creates_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An orchestrator given a bare path creates the file and its directory, and logs the
    absolute path once; opening it again logs nothing; then a reader opens it."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="pysaga.stores")
    async with Orchestrator(sagas=[], log="data/sagas.db"):
        pass
    created = [r.getMessage() for r in caplog.records if "created" in r.getMessage()]
    assert created == [f"created a new SQLite saga log at {tmp_path / 'data' / 'sagas.db'}"]
    caplog.clear()
    async with Orchestrator(sagas=[], log="sqlite:///data/sagas.db"):
        pass
    assert not [r for r in caplog.records if "created" in r.getMessage()]
    async with Inspector("data/sagas.db") as inspector:
        assert sum((await inspector.counts()).values()) == 0


async def test_an_inspector_cannot_write(tmp_path: Path) -> None:
    """An inspector's log is opened read-only: a write is refused by SQLite itself."""
    path = tmp_path / "sagas.db"
    async with Orchestrator(sagas=[], log=path):
        pass
    async with Inspector(path) as inspector:
        with pytest.raises(StoreError, match="readonly"):
            await inspector.log.release("someone")


async def test_postgres_reader_creates_no_schema(postgres_dsn: str) -> None:
    import uuid

    import asyncpg

    schema = f"pysaga_absent_{uuid.uuid4().hex[:12]}"
    for reader in (Inspector, Operator):
        with pytest.raises(StoreError, match=f"no PostgreSQL saga log in schema '{schema}'"):
            async with reader(f"{postgres_dsn}?schema={schema}"):
                pass
    conn = await asyncpg.connect(postgres_dsn)
    try:
        found = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
    finally:
        await conn.close()
    assert found == 0


async def test_postgres_inspector_is_read_only(postgres_url: str) -> None:
    async with Orchestrator(sagas=[], log=postgres_url):
        pass
    async with Inspector(postgres_url) as inspector:
        assert sum((await inspector.counts()).values()) == 0
        with pytest.raises(StoreError, match="read-only transaction"):
            await inspector.log.release("someone")


async def test_the_docs_program(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The saga log page's program prints what the page shows, logs where it created the
    log, and leaves no file for the mistyped name."""
    from ..docs.test_snippets import load, pasted_output

    monkeypatch.chdir(tmp_path)
    stores_logger = logging.getLogger("pysaga.stores")
    monkeypatch.setattr(stores_logger, "level", stores_logger.level)  # the program sets it
    caplog.set_level(logging.INFO, logger="pysaga.stores")
    await load("log_urls", monkeypatch).main()
    assert capsys.readouterr().out == pasted_output("log_urls")
    created = tmp_path / "data" / "trips.db"
    assert f"created a new SQLite saga log at {created}" in caplog.messages
    assert sorted(p.name for p in created.parent.iterdir()) == ["trips.db"]
