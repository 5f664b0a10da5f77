"""Reading saga log and inbox URLs (SQLite and PostgreSQL), and hiding a password, without
any client library: :func:`pysaga.stores.check_url` checks a URL before an adapter (and the
``postgres`` extra) is imported, so a mistyped URL is reported the same way in every install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import InvalidURLError

__all__ = (
    "CLIENT_OPTIONS",
    "PostgresOptions",
    "Synchronous",
    "check_schema_name",
    "parse_postgres_url",
    "parse_sqlite_url",
    "redact",
)

Synchronous = Literal["normal", "full"]
"""The SQLite log's ``synchronous`` setting."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_OPTIONS = ("schema", "pool_size")
CLIENT_OPTIONS = (
    "host",
    "port",
    "user",
    "password",
    "passfile",
    "database",
    "dbname",
    "service",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
)
"""The query options the PostgreSQL client reads from a URL (connection and TLS settings)."""


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """A PostgreSQL URL, split into what the client takes and pysaga's own options.

    Attributes:
        dsn: The URL without pysaga's options, as the client takes it.
        schema: The PostgreSQL schema pysaga's tables live in.
        pool_size: The most connections the pool opens.
    """

    dsn: str
    schema: str = "public"
    pool_size: int = 8


def check_schema_name(schema: str) -> str:
    """Return *schema* if it is a plain identifier (it is written into SQL unquoted).

    Raises:
        ValueError: it is not.
    """
    if not _NAME.match(schema):
        raise ValueError(
            f"schema {schema!r} is not a plain identifier; use letters, digits and '_' "
            "(at most 63, not starting with a digit)"
        )
    return schema


def parse_postgres_url(url: str) -> PostgresOptions:
    """Read ``postgresql://user:password@host:5432/database?schema=pysaga&pool_size=8``.

    ``schema`` (default ``public``) and ``pool_size`` (default 8) are pysaga's; the client's
    connection options (:data:`CLIENT_OPTIONS`: ``sslmode=require``, say) go to the client.

    Raises:
        InvalidURLError: not a PostgreSQL URL, a port that is not a number, an unknown option
            or a bad value. The message shows the URL with its password hidden.
    """
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidURLError(f"not a PostgreSQL URL: {shown!r}; write 'postgresql://user@host/db'")
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise InvalidURLError(
            f"PostgreSQL URL {shown!r}: the port {port!r} is not a number from 0 to 65535; "
            "write 'postgresql://user@host:5432/db'"
        ) from None
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTIONS:
            ours[key] = value
        elif key in CLIENT_OPTIONS:
            theirs.append((key, value))
        else:
            raise InvalidURLError(
                f"PostgreSQL URL {shown!r}: unknown option {key!r}; pysaga's options are "
                f"{' and '.join(_OPTIONS)}, and the client takes its connection options "
                "(sslmode, sslrootcert, target_session_attrs, ...; see the PostgreSQL guide)"
            )
    try:
        schema = check_schema_name(ours.get("schema", "public"))
    except ValueError as exc:
        raise InvalidURLError(f"PostgreSQL URL {shown!r}: {exc}") from None
    try:
        pool_size = int(ours.get("pool_size", "8"))
    except ValueError:
        raise InvalidURLError(
            f"PostgreSQL URL {shown!r}: pool_size must be a whole number"
        ) from None
    if pool_size < 1:
        raise InvalidURLError(f"PostgreSQL URL {shown!r}: pool_size must be at least 1")
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs)))
    return PostgresOptions(dsn, schema, pool_size)


def parse_sqlite_url(url: str) -> tuple[str, Synchronous, float]:
    """Read ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (query options
    ``synchronous=normal|full`` and ``busy_timeout=<seconds>``).

    Returns:
        The file path, the synchronous setting and the busy timeout.

    Raises:
        InvalidURLError: not a SQLite URL, no file named, or an unknown or bad option.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise InvalidURLError(f"not a sqlite URL: {url!r}; write 'sqlite:///sagas.db'")
    path = unquote(parts.path)
    if parts.netloc == ":memory:" or path == "/:memory:":
        path = ":memory:"
    elif path.startswith("/"):
        path = path[1:]  # sqlite:///rel -> "rel"; sqlite:////abs -> "/abs"
    if not path:
        raise InvalidURLError(
            f"sqlite URL {url!r} names no file; write 'sqlite:///sagas.db' (relative) or "
            "'sqlite:////var/lib/app/sagas.db' (absolute)"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"synchronous", "busy_timeout"}
    if unknown:
        raise InvalidURLError(
            f"sqlite URL {url!r}: unknown option(s) {sorted(unknown)}; "
            "known: synchronous, busy_timeout"
        )
    sync = query.get("synchronous", "normal").lower()
    if sync not in ("normal", "full"):
        raise InvalidURLError(f"sqlite URL {url!r}: synchronous must be 'normal' or 'full'")
    try:
        busy_timeout = float(query.get("busy_timeout", "5"))
    except ValueError:
        busy_timeout = -1.0
    if not 0 <= busy_timeout < float("inf"):
        raise InvalidURLError(
            f"sqlite URL {url!r}: busy_timeout must be a number of seconds >= 0, "
            f"not {query['busy_timeout']!r}"
        )
    return path, "full" if sync == "full" else "normal", busy_timeout


def redact(dsn: str) -> str:
    """*dsn* with its password hidden, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    userinfo, at, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***{at}{host}"))
