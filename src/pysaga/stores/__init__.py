"""Saga logs and inboxes: ``memory`` and ``sqlite`` ship with the core; ``postgres`` is the
extra of that name.

:func:`from_url` picks one by URL scheme and imports its module only then, so an adapter's
client library is loaded only when it is used.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from ..protocols import SagaLog

if TYPE_CHECKING:
    from ..protocols import Inbox

__all__ = ("from_url", "inbox_from_url", "log_from")

_SCHEMES = {
    "memory": ("pysaga.stores.memory", "InMemorySagaLog"),
    "sqlite": ("pysaga.stores.sqlite", "SQLiteSagaLog"),
    "postgresql": ("pysaga.stores.postgres", "PostgresSagaLog"),
    "postgres": ("pysaga.stores.postgres", "PostgresSagaLog"),
}


def from_url(url: str) -> SagaLog:
    """Open the saga log named by *url* (not yet entered).

    * ``memory://`` — in this process only; gone when it ends.
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — the embedded default.
      Query options: ``synchronous=normal|full`` (default ``normal``).
    * ``postgresql://user:password@host:5432/database`` — PostgreSQL (extra ``postgres``),
      for several orchestrator processes sharing one log.

    Raises:
        ValueError: for a scheme pysaga does not know.
    """
    scheme = urlsplit(url).scheme.lower()
    try:
        module_name, class_name = _SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"'{s}://'" for s in _SCHEMES)
        raise ValueError(
            f"saga log URL {url!r} has an unknown scheme {scheme!r}; use one of {known}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    log: SagaLog = cls.from_url(url)
    return log


def log_from(log: str | os.PathLike[str] | SagaLog) -> tuple[SagaLog, bool]:
    """The saga log that a ``log=`` argument names, and whether it was made here (then its
    user enters and closes it; a log object passed in belongs to the caller).

    *log* is a URL (:func:`from_url`), a file path (the SQLite log in that file) or an object
    implementing :class:`~pysaga.SagaLog`.

    Raises:
        TypeError: *log* is none of these.
        ValueError: a URL with a scheme pysaga does not know.
    """
    if isinstance(log, os.PathLike):
        log = "sqlite:///" + quote(os.fspath(log))
    if isinstance(log, str):
        return from_url(log), True
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
        ValueError: for a scheme pysaga does not know.
    """
    scheme = urlsplit(url).scheme.lower()
    try:
        module_name, class_name = _INBOXES[scheme]
    except KeyError:
        known = ", ".join(f"'{s}://'" for s in _INBOXES)
        raise ValueError(
            f"inbox URL {url!r} has an unknown scheme {scheme!r}; use one of {known}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    inbox: Inbox = cls.from_url(url)
    return inbox
