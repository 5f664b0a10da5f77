"""The ``pysaga`` command: questions about a saga log, and an operator's actions, from a shell.

Every command that uses a log takes it as ``--log URL`` (or the ``PYSAGA_LOG`` environment
variable). ``list``, ``show``, ``stats``, ``versions`` and ``draw --saga`` only read it, through an
:class:`~pysaga.Inspector`; ``retry``, ``abort`` and ``resolve`` act on one saga through an
:class:`~pysaga.Operator`::

    pysaga list --log sqlite:///sagas.db --status failed
    pysaga show --log sqlite:///sagas.db 5f0c...
    pysaga stats --log postgresql://app@db/shop?schema=sagas
    pysaga versions --log sqlite:///sagas.db --name place-order
    pysaga retry --log sqlite:///sagas.db 5f0c... --reason "warehouse is back"
    pysaga draw shop.sagas:place_order [--saga 5f0c... --log sqlite:///sagas.db]

``--json`` (before or after the command) prints machine-readable JSON instead of text.

Bad input ends the command with one line on stderr and a non-zero exit status: 2 for a
usage error (a missing or malformed argument, an unknown log URL scheme), 1 when what was
asked for cannot be found, opened or done (an unknown saga id, a missing SQLite file, a log
that cannot be reached, an action the saga's state does not allow, a ``draw`` target that
cannot be imported or is not a saga).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import anyio

from ._mermaid import mark_progress, progress_of
from .definition import Saga
from .errors import OperatorActionRefused, PysagaError, SagaNotFoundError
from .inspection import Inspector, Timeline
from .models import SagaRecord, SagaStatus, SagaVersion
from .operations import Operator

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("console_main", "main")

LOG_ENV = "PYSAGA_LOG"
"""The environment variable that gives the saga log URL when ``--log`` is not passed."""

USAGE = 2
"""Exit status for bad usage."""
NOT_FOUND = 1
"""Exit status when what was asked for cannot be found or opened."""

_FAILURE_WIDTH = 60


class CommandError(Exception):
    """A command cannot go on; its message is the one line the user sees.

    Args:
        message: What went wrong and, where it helps, what to do.
        status: The exit status: 1 (not found / unreachable) or 2 (usage).
    """

    def __init__(self, message: str, status: int = NOT_FOUND) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error as one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see '{self.prog} --help')", USAGE)


# -- arguments -----------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be >= 0")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog="pysaga",
        description="Questions about a saga log, and an operator's actions on its sagas.",
        epilog=f"The saga log URL comes from --log, else from the {LOG_ENV} environment variable.",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    # given again on each command, so it may come after the command name too
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    reads_log = _Parser(add_help=False)
    reads_log.add_argument(
        "--log",
        metavar="URL",
        help=f"the saga log: sqlite:///path.db or postgresql://user@host/db?schema=name "
        f"(default: ${LOG_ENV})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list", parents=[common, reads_log], help="list sagas, newest first"
    )
    listing.add_argument("--name", help="only sagas of this definition")
    listing.add_argument(
        "--status",
        nargs="+",
        action="extend",
        choices=[status.value for status in SagaStatus],
        metavar="STATUS",
        help="only sagas in these statuses: " + ", ".join(s.value for s in SagaStatus),
    )
    listing.add_argument(
        "--older-than", type=_seconds, metavar="SECONDS", help="only sagas started earlier"
    )
    listing.add_argument(
        "--stuck",
        type=_seconds,
        metavar="SECONDS",
        help="only unfinished sagas not written for SECONDS, with a step timer overdue by "
        "--timer-grace, or past their deadline",
    )
    listing.add_argument(
        "--timer-grace",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="with --stuck: how long a step timer may be overdue (default 60)",
    )
    listing.add_argument(
        "--held",
        action="store_true",
        help="only unfinished sagas held for an operator (their definition changed)",
    )
    listing.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="at most N (default 100)"
    )

    show = commands.add_parser(
        "show", parents=[common, reads_log], help="one saga's state and timeline"
    )
    show.add_argument("saga_id", metavar="SAGA_ID")

    stats = commands.add_parser("stats", parents=[common, reads_log], help="sagas per status")
    stats.add_argument("--name", help="only sagas of this definition")

    versions = commands.add_parser(
        "versions",
        parents=[common, reads_log],
        help="sagas per name, version and definition fingerprint, with counts by status",
    )
    versions.add_argument("--name", help="only sagas of this name")

    actions = {
        "retry": "send a FAILED saga back to work: what gave up runs again, with a fresh budget",
        "abort": "turn a RUNNING saga back: it compensates",
        "resolve": "mark a FAILED saga RESOLVED: settled by hand, nothing more runs",
    }
    for action, text in actions.items():
        acting = commands.add_parser(action, parents=[common, reads_log], help=text)
        acting.add_argument("saga_id", metavar="SAGA_ID")
        acting.add_argument("--reason", required=True, help="why (kept in the saga's history)")
        acting.add_argument("--by", help="who (default: the user running this command)")

    draw = commands.add_parser(
        "draw",
        parents=[common, reads_log],
        help="draw a saga definition as a mermaid flowchart, with one saga's progress",
    )
    draw.add_argument(
        "target", metavar="MODULE:SAGA", help="a module path and the name of a pysaga.Saga in it"
    )
    draw.add_argument(
        "--saga",
        metavar="SAGA_ID",
        help="mark this saga's progress (done, running, failed, compensated, still to come); "
        "needs the log",
    )
    return parser


# -- formatting ----------------------------------------------------------------------------


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(text: str, width: int = _FAILURE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in (head, *lines))


def _data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def record_json(record: SagaRecord) -> dict[str, Any]:
    """A saga record as a JSON-able dict: statuses as strings, times as epoch seconds.

    Args:
        record: The record.

    Returns:
        The record's fields; ``data`` is the saga's data decoded from its JSON text.
    """
    return {
        "saga_id": record.saga_id,
        "name": record.name,
        "version": record.version,
        "status": record.status.value,
        "data": _data(record.data),
        "steps": {
            name: {
                "status": s.status.value,
                "attempts": s.attempts,
                "failures": s.failures,
                "timeout_at": s.timeout_at,
                "retry_at": s.retry_at,
            }
            for name, s in record.steps.items()
        },
        "revision": record.revision,
        "owner": record.owner,
        "lease_expires_at": record.lease_expires_at,
        "deadline_at": record.deadline_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "failure": None if record.failure is None else record.failure.to_json(),
        "fingerprint": record.fingerprint,
        "held": record.held,
    }


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    """A saga's timeline as a JSON-able dict.

    Args:
        timeline: The timeline.

    Returns:
        ``{"record": ..., "duration": seconds, "events": [...]}``, oldest event first.
    """
    return {
        "record": record_json(timeline.record),
        "duration": timeline.duration,
        "events": [
            {
                "kind": event.kind.value,
                "step": event.step,
                "attempt": event.attempt,
                "at": event.at,
                "since_previous": event.since_previous,
                "failure": event.failure,
                "owner": event.owner,
            }
            for event in timeline.events
        ],
    }


def _records_text(records: Sequence[SagaRecord]) -> str:
    if not records:
        return "no sagas"
    header = ("ID", "NAME", "VERSION", "STATUS", "CREATED", "UPDATED", "OWNER", "FAILURE")
    rows = [
        (
            r.saga_id,
            r.name,
            str(r.version),
            r.status.value + (" (held)" if r.held is not None else ""),
            _when(r.created_at),
            _when(r.updated_at),
            r.owner or "-",
            "-" if r.failure is None else _short(str(r.failure)),
        )
        for r in records
    ]
    return _table(header, rows)


def _timeline_text(timeline: Timeline) -> str:
    r = timeline.record
    lines = [
        f"saga {r.saga_id}: {r.name} v{r.version}, {r.status.value}",
        f"  created   {_when(r.created_at)}",
        f"  updated   {_when(r.updated_at)}",
        f"  deadline  {_when(r.deadline_at)}",
        f"  owner     {r.owner or '-'}",
        f"  defined   fingerprint {r.fingerprint or '- (recorded before fingerprints)'}",
    ]
    if r.held is not None:
        lines.append(f"  held      {r.held}")
    if r.failure is not None:
        lines.append(f"  failure   {r.failure}")
    lines.append(f"  data      {r.data}")
    if r.steps:
        lines.append("steps:")
        rows = [
            (name, s.status.value, f"attempts {s.attempts}", f"failures {s.failures}")
            for name, s in r.steps.items()
        ]
        lines.extend("  " + line for line in _table(("", "", "", ""), rows).splitlines()[1:])
    lines.append(f"timeline ({len(timeline.events)} events, {timeline.duration:.3f}s):")
    for event in timeline.events:
        step = f" {event.step} #{event.attempt}" if event.step else ""
        failure = f"  ({event.failure})" if event.failure else ""
        gap = f"+{event.since_previous:.3f}s"
        lines.append(f"  {gap:>10}  {event.kind.value}{step}{failure}")
    return "\n".join(lines)


def version_json(found: SagaVersion) -> dict[str, Any]:
    """One definition's sagas (:meth:`Inspector.versions`) as a JSON-able dict.

    Args:
        found: The definition's entry.

    Returns:
        Name, version, fingerprint, a count for every status, the held and total counts,
        and the definition's steps (``None`` when the log has no record of it).
    """
    definition = found.definition
    return {
        "name": found.name,
        "version": found.version,
        "fingerprint": found.fingerprint,
        "counts": {status.value: found.counts.get(status, 0) for status in SagaStatus},
        "held": found.held,
        "total": found.total,
        "steps": None if definition is None else definition.outline.get("steps"),
        "registered_at": None if definition is None else definition.registered_at,
    }


def _outline_text(found: SagaVersion) -> str:
    if found.definition is None:
        return "-"
    steps = found.definition.outline.get("steps") or []
    return ", ".join(
        str(step.get("name")) + ("*" if step.get("compensated") else "") for step in steps
    )


def _versions_text(found: Sequence[SagaVersion]) -> str:
    if not found:
        return "no sagas"
    header = (
        "NAME",
        "VERSION",
        "FINGERPRINT",
        *(status.value.upper() for status in SagaStatus),
        "HELD",
        "STEPS (* compensated)",
    )
    rows = [
        (
            v.name,
            str(v.version),
            v.fingerprint or "-",
            *(str(v.counts.get(status, 0)) for status in SagaStatus),
            str(v.held),
            _short(_outline_text(v)),
        )
        for v in found
    ]
    return _table(header, rows)


# -- commands ------------------------------------------------------------------------------


def _log_url(args: argparse.Namespace) -> str:
    url: str | None = args.log or os.environ.get(LOG_ENV)
    if not url:
        raise CommandError(
            f"no saga log given: pass --log URL (sqlite:///path.db, postgresql://...) or set "
            f"{LOG_ENV}",
            USAGE,
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from .stores.sqlite import parse_url

        try:
            path = parse_url(url)[0]
        except ValueError as exc:
            raise CommandError(str(exc), USAGE) from None
        if path != ":memory:" and not Path(path).is_file():
            # opening it would create an empty log: say so instead
            raise CommandError(
                f"no saga log at {url}: the file {path!r} does not exist "
                f"(relative to {os.getcwd()!r}; 'sqlite:////abs/path.db' names an absolute path)"
            )
    elif scheme in ("postgresql", "postgres"):
        from .stores._postgres import parse_url as parse_postgres_url

        try:
            parse_postgres_url(url)
        except ValueError as exc:
            raise CommandError(str(exc), USAGE) from None
    return url


def _inspector(url: str) -> Inspector:
    try:
        return Inspector(url)
    except ValueError as exc:
        raise CommandError(str(exc), USAGE) from None


def _shown(url: str) -> str:
    """*url* without a password, for messages."""
    from .stores._postgres import redact

    return redact(url) if urlsplit(url).scheme.lower().startswith("postgres") else url


_DONE = {"retry": "retried", "abort": "aborted", "resolve": "resolved"}


async def _act(args: argparse.Namespace, url: str, out: list[str]) -> None:
    try:
        operator = Operator(url)
    except ValueError as exc:
        raise CommandError(str(exc), USAGE) from None
    async with operator:
        act = {"retry": operator.retry, "abort": operator.abort, "resolve": operator.resolve}
        try:
            record = await act[args.command](args.saga_id, reason=args.reason, by=args.by)
        except SagaNotFoundError:
            raise CommandError(f"no saga with id {args.saga_id!r} in {_shown(url)}") from None
        except OperatorActionRefused as exc:
            raise CommandError(str(exc)) from None
        except ValueError as exc:
            raise CommandError(f"{args.command}: {exc}", USAGE) from None
    if args.json:
        out.append(_dumps(record_json(record)))
    else:
        out.append(
            f"saga {record.saga_id} ({record.name}) {_DONE[args.command]}: now "
            f"{record.status.value}"
            + ("" if record.status.is_terminal else "; an orchestrator running it resumes it")
        )


async def _run_log_command(args: argparse.Namespace, out: list[str]) -> None:
    url = _log_url(args)
    if args.command in _DONE:
        await _act(args, url, out)
        return
    async with _inspector(url) as inspector:
        if args.command == "draw":
            await _draw_saga(args, inspector, url, out)
        elif args.command == "list":
            if args.stuck is not None:
                if args.status or args.older_than is not None:
                    raise CommandError(
                        "list: --stuck cannot be combined with --status or --older-than",
                        USAGE,
                    )
                if args.held:
                    raise CommandError("list: --stuck cannot be combined with --held", USAGE)
                records = await inspector.stuck(
                    no_progress_for=args.stuck,
                    timer_grace=args.timer_grace,
                    name=args.name,
                    limit=args.limit,
                )
            elif args.held:
                if args.status or args.older_than is not None:
                    raise CommandError(
                        "list: --held cannot be combined with --status or --older-than", USAGE
                    )
                records = await inspector.held(name=args.name, limit=args.limit)
            else:
                statuses = None if not args.status else [SagaStatus(s) for s in args.status]
                records = await inspector.list(
                    name=args.name, status=statuses, older_than=args.older_than, limit=args.limit
                )
            out.append(
                _dumps([record_json(r) for r in records]) if args.json else _records_text(records)
            )
        elif args.command == "show":
            try:
                timeline = await inspector.timeline(args.saga_id)
            except SagaNotFoundError:
                raise CommandError(f"no saga with id {args.saga_id!r} in {_shown(url)}") from None
            out.append(_dumps(timeline_json(timeline)) if args.json else _timeline_text(timeline))
        elif args.command == "versions":
            found = await inspector.versions(name=args.name)
            out.append(
                _dumps([version_json(v) for v in found]) if args.json else _versions_text(found)
            )
        else:  # stats
            counts = await inspector.counts(name=args.name)
            if args.json:
                out.append(_dumps({status.value: n for status, n in counts.items()}))
            else:
                rows = [(status.value, str(n)) for status, n in counts.items()]
                rows.append(("total", str(sum(counts.values()))))
                out.append(_table(("STATUS", "COUNT"), rows))


def load_saga(target: str) -> Saga[Any]:
    """Import ``MODULE:NAME`` and return the saga definition it names.

    The current directory is put on ``sys.path`` first, so a module next to the caller is
    found. *NAME* may be dotted (``module:holder.saga``).

    Args:
        target: A dotted module path and an attribute name, separated by a colon.

    Returns:
        The :class:`~pysaga.Saga`.

    Raises:
        CommandError: *target* is malformed, cannot be imported, or is not a saga.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(
            f"draw: {target!r} is not MODULE:SAGA (for example 'shop.sagas:place_order')",
            USAGE,
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CommandError(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                f"(looked in {os.getcwd()!r} and the installed packages)"
            ) from None
        raise CommandError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    except Exception as exc:
        raise CommandError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(
                f"{target!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(obj, Saga):
        what = f"the class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
        raise CommandError(f"{target!r} is {what}, not a pysaga.Saga; name the Saga object")
    return obj


def _chart(args: argparse.Namespace) -> tuple[Saga[Any], str]:
    saga = load_saga(args.target)
    try:
        return saga, saga.to_mermaid()
    except PysagaError as exc:
        raise CommandError(f"cannot draw {args.target!r}: {_one_line(exc)}") from None


def _draw(args: argparse.Namespace, out: list[str]) -> None:
    saga, chart = _chart(args)
    if args.json:
        out.append(_dumps({"name": saga.name, "version": saga.version, "mermaid": chart}))
    else:
        out.append(chart.rstrip("\n"))


async def _draw_saga(
    args: argparse.Namespace, inspector: Inspector, url: str, out: list[str]
) -> None:
    saga, chart = _chart(args)
    record = await inspector.log.get(args.saga)
    if record is None:
        raise CommandError(f"no saga with id {args.saga!r} in {_shown(url)}")
    if record.name != saga.name:
        raise CommandError(
            f"draw: saga {args.saga!r} is a {record.name!r} saga, not {saga.name!r}; name "
            "its definition"
        )
    marked = mark_progress(chart, saga, record)
    if args.json:
        out.append(
            _dumps(
                {
                    "name": saga.name,
                    "version": saga.version,
                    "saga_id": record.saga_id,
                    "status": record.status.value,
                    "progress": progress_of(saga, record),
                    "mermaid": marked,
                }
            )
        )
    else:
        out.append(marked.rstrip("\n"))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


# -- entry points --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``pysaga`` command.

    Args:
        argv: The arguments, without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when what was asked for cannot be found or opened,
        2 for a usage error. Errors are printed to stderr as one line.
    """
    out: list[str] = []
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        if args.command == "draw" and args.saga is None:
            if args.log is not None:
                raise CommandError("draw: --log is used with --saga SAGA_ID only", USAGE)
            _draw(args, out)
        else:
            try:
                anyio.run(_run_log_command, args, out)
            except CommandError:
                raise
            except PysagaError as exc:  # the log could not be opened, read or written
                raise CommandError(f"cannot use the saga log: {_one_line(exc)}") from None
            except OSError as exc:
                raise CommandError(f"cannot use the saga log: {_one_line(exc)}") from None
    except CommandError as exc:
        print(f"pysaga: {exc}", file=sys.stderr)
        return exc.status
    for text in out:
        print(text)
    return 0


def console_main() -> NoReturn:
    """The console-script entry point: run :func:`main` and exit with its status."""
    sys.exit(main())
