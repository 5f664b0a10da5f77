"""Saga logs and inboxes: ``memory`` and ``sqlite`` ship with the core; ``postgres`` is the
extra of that name.

:func:`from_url` picks one by URL scheme and imports its module only then, so an adapter's
client library is loaded only when it is used.

One rule reads every ``log=`` argument (:class:`~pysaga.Orchestrator`,
:class:`~pysaga.ChoreographyObserver`, :class:`~pysaga.Inspector`, :class:`~pysaga.Operator`)
and the command line's ``--log``:

* ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or a bare file path ending
  in ``.db``, ``.sqlite`` or ``.sqlite3`` (or a :class:`os.PathLike`): the SQLite log in that
  file;
* ``postgresql://user:password@host:5432/database?schema=name``: the PostgreSQL log;
* ``memory://``: a log in this process only.

A writer (an orchestrator, the observer) creates a missing log; a reader (an inspector) never
creates anything, and an operator acts on an existing log only. A malformed URL raises
:class:`~pysaga.InvalidURLError` before anything is opened or imported.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from ..errors import InvalidURLError
from ..protocols import SagaLog

if TYPE_CHECKING:
    from ..protocols import Inbox

__all__ = ("check_url", "from_url", "inbox_from_url", "log_from", "redact_url")

_SCHEMES = {
    "memory": ("pysaga.stores.memory", "InMemorySagaLog"),
    "sqlite": ("pysaga.stores.sqlite", "SQLiteSagaLog"),
    "postgresql": ("pysaga.stores.postgres", "PostgresSagaLog"),
    "postgres": ("pysaga.stores.postgres", "PostgresSagaLog"),
}

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
"""The endings of a bare file path that names a SQLite saga log."""

_FORMS = (
    "'sqlite:///relative.db', 'sqlite:////absolute.db', a file path ending in .db or .sqlite, "
    "'postgresql://user@host:5432/database' or 'memory://'"
)


def check_url(url: str, *, what: str = "saga log") -> str:
    """Check a saga log URL (or bare SQLite file path) without opening anything, and return
    it as a URL: a bare path ``trips.db`` becomes ``sqlite:///trips.db``.

    Needs no client library: a PostgreSQL URL is checked in an install without the
    ``postgres`` extra too.

    Args:
        url: What the user wrote.
        what: What the URL names, for the message (``"saga log"``, ``"inbox"``).

    Returns:
        The URL.

    Raises:
        InvalidURLError: an unknown scheme, a bare name that is not a SQLite file, or a
            malformed URL of a known scheme (a port that is not a number, an unknown option,
            a bad option value, a SQLite URL that names no file).
    """
    if "://" not in url:
        if url.lower().endswith(SQLITE_SUFFIXES):
            return "sqlite:///" + quote(url)
        stem = url.rstrip("/") or "sagas"
        raise InvalidURLError(
            f"{what} {url!r} is neither a URL nor a SQLite file path (those end in .db, "
            f".sqlite or .sqlite3); write '{stem}.db', 'sqlite:///{stem}.db', "
            "'postgresql://user@host:5432/database' or 'memory://'"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidURLError(
            f"{what} URL {redact_url(url)!r} has an unknown scheme {scheme!r}; write {_FORMS}"
        )
    from . import _urls  # no client library; imported only when a URL is read

    if scheme == "sqlite":
        _urls.parse_sqlite_url(url)
    elif scheme != "memory":
        _urls.parse_postgres_url(url)
    return url


def redact_url(url: str) -> str:
    """*url* with its password (if any) replaced by ``***``, for messages and logs.

    Works on any URL, needs no client library and never raises: a string that is not a URL
    comes back as it is.
    """
    from ._urls import redact

    try:
        return redact(url)
    except ValueError:  # not even a URL (say, an IPv6 host with no closing bracket)
        return url


def from_url(url: str, *, create: bool = True, read_only: bool = False) -> SagaLog:
    """Open the saga log named by *url* (not yet entered).

    * ``memory://`` — in this process only; gone when it ends.
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or a bare path ending
      in ``.db``, ``.sqlite`` or ``.sqlite3`` — the embedded default. Query options:
      ``synchronous=normal|full`` (default ``normal``), ``busy_timeout=<seconds>``.
    * ``postgresql://user:password@host:5432/database`` — PostgreSQL (extra ``postgres``),
      for several orchestrator processes sharing one log. Query options: ``schema``,
      ``pool_size``, and the client's connection options (``sslmode``, ...).

    Args:
        url: The URL (see :func:`check_url`).
        create: Whether entering the log creates it (its SQLite file and directory, its
            PostgreSQL schema and tables) when it is missing: what a writer does. ``False``
            opens an existing log only and fails when there is none.
        read_only: Whether the log is only read: it creates nothing and refuses writes.

    Raises:
        InvalidURLError: the URL is malformed or has a scheme pysaga does not know.
        ImportError: the URL needs an extra that is not installed (the message names it).
    """
    url = check_url(url)
    module_name, class_name = _SCHEMES[urlsplit(url).scheme.lower()]
    cls = getattr(importlib.import_module(module_name), class_name)
    log: SagaLog = (
        cls.from_url(url)
        if module_name.endswith(".memory")
        else cls.from_url(url, create=create, read_only=read_only)
    )
    return log


def log_from(
    log: str | os.PathLike[str] | SagaLog, *, create: bool = True, read_only: bool = False
) -> tuple[SagaLog, bool]:
    """The saga log that a ``log=`` argument names, and whether it was made here (then its
    user enters and closes it; a log object passed in belongs to the caller).

    *log* is a URL or a bare SQLite file path (:func:`from_url`, given *create* and
    *read_only*), a :class:`os.PathLike` (the SQLite log in that file, whatever its ending) or
    an object implementing :class:`~pysaga.SagaLog` (used as it is).

    Raises:
        TypeError: *log* is none of these.
        InvalidURLError: a malformed URL, or one with a scheme pysaga does not know.
    """
    if isinstance(log, os.PathLike):
        log = "sqlite:///" + quote(os.fspath(log))
    if isinstance(log, str):
        return from_url(log, create=create, read_only=read_only), True
    if isinstance(log, SagaLog):
        return log, False
    raise TypeError(
        f"log={log!r}: pass a saga log URL ('sqlite:///sagas.db', 'memory://'), a file path "
        "for a SQLite log, or an object implementing pysaga.SagaLog"
    )


_INBOXES = {
    "memory": ("pysaga.stores.memory", "InMemoryInbox"),
    "sqlite": ("pysaga.stores.sqlite_inbox", "SQLiteInbox"),
    "postgresql": ("pysaga.stores.postgres_inbox", "PostgresInbox"),
    "postgres": ("pysaga.stores.postgres_inbox", "PostgresInbox"),
}


def inbox_from_url(url: str) -> Inbox:
    """Open the participant inbox named by *url* (not yet entered): ``memory://``,
    ``sqlite:///path.db`` or ``postgresql://...`` (the same URL forms as :func:`from_url`).

    Raises:
        InvalidURLError: the URL is malformed or has a scheme pysaga does not know.
    """
    url = check_url(url, what="inbox")
    module_name, class_name = _INBOXES[urlsplit(url).scheme.lower()]
    cls = getattr(importlib.import_module(module_name), class_name)
    inbox: Inbox = cls.from_url(url)
    return inbox
