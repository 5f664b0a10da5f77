"""Saga logs: where sagas are recorded. ``memory`` and ``sqlite`` ship with the core.

:func:`from_url` picks one by URL scheme and imports its module only then, so an adapter's
client library is loaded only when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..protocols import Inbox, SagaLog

__all__ = ("from_url", "inbox_from_url")

_SCHEMES = {
    "memory": ("pysaga.stores.memory", "InMemorySagaLog"),
    "sqlite": ("pysaga.stores.sqlite", "SQLiteSagaLog"),
}


def from_url(url: str) -> SagaLog:
    """Open the saga log named by *url* (not yet entered).

    * ``memory://`` — in this process only; gone when it ends.
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — the embedded default.
      Query options: ``synchronous=normal|full`` (default ``normal``).

    Raises:
        ValueError: for a scheme pysaga does not know.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        raise ValueError(
            f"saga log URL {url!r}: the PostgreSQL saga log is not available in this version "
            "of pysaga; use 'sqlite:///path/to/sagas.db' or 'memory://'"
        )
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


_INBOXES = {
    "memory": ("pysaga.stores.memory", "InMemoryInbox"),
    "sqlite": ("pysaga.stores.sqlite_inbox", "SQLiteInbox"),
}


def inbox_from_url(url: str) -> Inbox:
    """Open the participant inbox named by *url* (not yet entered): ``memory://`` or
    ``sqlite:///path.db`` (the same URL forms as :func:`from_url`).

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
