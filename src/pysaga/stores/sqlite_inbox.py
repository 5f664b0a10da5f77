"""A participant's inbox in SQLite: the messages it handled, with the replies it gave.

One small table, ``pysaga_inbox``, keyed by (consumer, message id); it may live in its own file
or next to the service's own tables. Statements run on the event loop's thread with the stdlib
``sqlite3`` module (WAL, ``synchronous=normal`` by default): one short write per handled
message, cheaper than a hand-off to a worker thread.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Self

from ..errors import StoreError
from ..protocols import InboxRecord
from .sqlite import open_database, parse_url

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from ._urls import Synchronous

__all__ = ("SQLiteInbox",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pysaga_inbox (
    consumer       TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    reply_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    handled_at     REAL NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pysaga_inbox_handled_at ON pysaga_inbox (handled_at);
"""


class SQLiteInbox:
    """An :class:`~pysaga.Inbox` in a SQLite file.

    Args:
        path: The database file (created with its directory if missing), or ``":memory:"``.
        synchronous: ``"normal"`` (survives a killed process) or ``"full"`` (also power loss).
        busy_timeout: Seconds to wait for another process's lock before failing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = str(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteInbox:
        """Build from ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
        path, synchronous, busy_timeout = parse_url(url)
        return cls(path, synchronous=synchronous, busy_timeout=busy_timeout)

    def __repr__(self) -> str:
        return f"<SQLiteInbox {self.path!r}>"

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError(f"{self!r} is already open; enter it once")
        self._conn = open_database(
            self.path,
            self.synchronous,
            self.busy_timeout,
            lambda conn: conn.executescript(_SCHEMA),
            what="inbox",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with inbox:'")
        return self._conn

    async def get(self, consumer: str, message_id: str) -> InboxRecord | None:
        try:
            row = self._db.execute(
                "SELECT reply_type, schema_version, payload, handled_at FROM pysaga_inbox"
                " WHERE consumer = ? AND message_id = ?",
                (consumer, message_id),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite inbox {self.path!r}: {exc}") from exc
        return None if row is None else InboxRecord(*row)

    async def put(self, consumer: str, message_id: str, record: InboxRecord) -> InboxRecord:
        try:
            inserted = self._db.execute(
                "INSERT INTO pysaga_inbox VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (consumer, message_id) DO NOTHING",
                (
                    consumer,
                    message_id,
                    record.reply_type,
                    record.schema_version,
                    record.payload,
                    record.handled_at,
                ),
            ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite inbox {self.path!r}: {exc}") from exc
        if inserted:
            return record
        found = await self.get(consumer, message_id)
        assert found is not None
        return found

    async def purge(self, before: float) -> int:
        try:
            return self._db.execute(
                "DELETE FROM pysaga_inbox WHERE handled_at < ?", (before,)
            ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite inbox {self.path!r}: {exc}") from exc
