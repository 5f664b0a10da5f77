"""The ``pysaga`` command: questions about a saga log, and an operator's actions, from a shell.

Every command that uses a log takes it as ``--log URL`` (or the ``PYSAGA_LOG`` environment
variable), in the forms every ``log=`` argument takes (see :mod:`pysaga.stores`). ``list``,
``show``, ``stats``, ``versions`` and ``draw --saga`` only read it, through an
:class:`~pysaga.Inspector`, and create nothing (no file, no directory, no schema);
``retry``, ``abort`` and ``resolve`` act on one saga of an existing log through an
:class:`~pysaga.Operator`::

    pysaga list --log sqlite:///sagas.db --status failed
    pysaga show --log sagas.db 5f0c...
    pysaga stats --log postgresql://app@db/shop?schema=sagas
    pysaga versions --log sqlite:///sagas.db --name place-order
    pysaga retry --log sqlite:///sagas.db 5f0c... --reason "warehouse is back"
    pysaga draw shop.sagas:place_order [--saga 5f0c... --log sqlite:///sagas.db]

``--json`` (before or after the command) prints machine-readable JSON instead of text. On a
terminal, tables fit its width (``list --wide`` prints every field in full) and statuses are
coloured (unless ``NO_COLOR`` is set). ``--version`` prints the installed version.

Bad input ends the command with one line on stderr, never a traceback, and a non-zero exit
status: 2 for a usage error (a missing or malformed argument, a malformed log URL), 1 when
what was asked for cannot be found, opened or done (an unknown saga id, a missing SQLite
file, a log that cannot be reached or whose extra is not installed, an action the saga's
state does not allow, a ``draw`` target that cannot be imported or is neither a saga nor a
choreography).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from typing import Any, NoReturn, TextIO

import anyio

from . import stores
from ._mermaid import choreography_progress_of, mark_nodes, progress_of
from ._render import (
    Style,
    counts_text,
    record_json,
    records_text,
    timeline_json,
    timeline_text,
    version_json,
    versions_text,
)
from ._version import __version__
from .choreography import Choreography
from .definition import Saga
from .errors import InvalidURLError, OperatorActionRefused, PysagaError, SagaNotFoundError
from .inspection import Inspector
from .models import SagaStatus
from .operations import Operator

__all__ = ("console_main", "main")

LOG_ENV = "PYSAGA_LOG"
"""The environment variable that gives the saga log URL when ``--log`` is not passed."""

DEBUG_ENV = "PYSAGA_DEBUG"
"""Set (to anything) to see the traceback of an unexpected error instead of its one line."""

USAGE = 2
"""Exit status for bad usage."""
NOT_FOUND = 1
"""Exit status when what was asked for cannot be found, opened or done."""
INTERRUPTED = 130
"""Exit status when the command was interrupted (Ctrl-C)."""


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
    parser.add_argument("--version", action="version", version=f"pysaga {__version__}")
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
    listing.add_argument(
        "--wide",
        action="store_true",
        help="print every field in full (on a terminal, long fields are cut to fit its width)",
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
        help="draw a saga definition or choreography as a mermaid flowchart, with one saga's "
        "progress",
    )
    draw.add_argument(
        "target",
        metavar="MODULE:SAGA",
        help="a module path and the name of a pysaga.Saga or pysaga.Choreography in it",
    )
    draw.add_argument(
        "--saga",
        metavar="SAGA_ID",
        help="mark this saga's progress (done, running, failed, compensated, still to come); "
        "needs the log",
    )
    return parser


# -- commands ------------------------------------------------------------------------------


def _log_url(args: argparse.Namespace) -> str:
    url: str | None = args.log or os.environ.get(LOG_ENV)
    if not url:
        raise CommandError(
            f"no saga log given: pass --log URL (sqlite:///path.db, postgresql://...) or set "
            f"{LOG_ENV}",
            USAGE,
        )
    try:
        url = stores.check_url(url)
    except InvalidURLError as exc:
        raise CommandError(str(exc), USAGE) from None
    if url.lower().startswith("memory:"):
        raise CommandError(
            f"{url!r} is a saga log inside one process, which this command (a process of its "
            "own) cannot see; give the sqlite:/// or postgresql:// URL the orchestrator uses",
            USAGE,
        )
    return url


def _style(args: argparse.Namespace, stream: TextIO) -> Style:
    """Printing to a terminal: fit its width (not with ``--wide``) and colour the statuses
    (not with ``NO_COLOR`` set). Printing to a pipe or a file: cut nothing (unless ``COLUMNS``
    gives a width) and colour nothing."""
    tty = stream.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    if getattr(args, "wide", False):
        return Style(colour=colour)
    if os.environ.get("COLUMNS", "").strip().isdigit() or tty:
        return Style(width=shutil.get_terminal_size().columns, colour=colour)
    return Style(colour=colour)


_DONE = {"retry": "retried", "abort": "aborted", "resolve": "resolved"}


def _no_saga(saga_id: str, url: str) -> CommandError:
    return CommandError(f"no saga with id {saga_id!r} in {stores.redact_url(url)}")


async def _act(args: argparse.Namespace, url: str, out: list[str]) -> None:
    async with Operator(url) as operator:
        act = {"retry": operator.retry, "abort": operator.abort, "resolve": operator.resolve}
        try:
            record = await act[args.command](args.saga_id, reason=args.reason, by=args.by)
        except SagaNotFoundError:
            raise _no_saga(args.saga_id, url) from None
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


async def _run_log_command(args: argparse.Namespace, style: Style, out: list[str]) -> None:
    url = _log_url(args)
    if args.command in _DONE:
        await _act(args, url, out)
        return
    if (
        args.command == "list"
        and args.stuck is not None
        and (args.status or args.older_than is not None)
    ):
        raise CommandError("list: --stuck cannot be combined with --status or --older-than", USAGE)
    if args.command == "list" and args.held:
        if args.stuck is not None:
            raise CommandError("list: --stuck cannot be combined with --held", USAGE)
        if args.status or args.older_than is not None:
            raise CommandError(
                "list: --held cannot be combined with --status or --older-than", USAGE
            )
    async with Inspector(url) as inspector:
        if args.command == "draw":
            await _draw_saga(args, inspector, url, out)
        elif args.command == "list":
            if args.stuck is not None:
                records = await inspector.stuck(
                    no_progress_for=args.stuck,
                    timer_grace=args.timer_grace,
                    name=args.name,
                    limit=args.limit,
                )
            elif args.held:
                records = await inspector.held(name=args.name, limit=args.limit)
            else:
                statuses = None if not args.status else [SagaStatus(s) for s in args.status]
                records = await inspector.list(
                    name=args.name, status=statuses, older_than=args.older_than, limit=args.limit
                )
            out.append(
                _dumps([record_json(r) for r in records])
                if args.json
                else records_text(records, style)
            )
        elif args.command == "show":
            try:
                timeline = await inspector.timeline(args.saga_id)
            except SagaNotFoundError:
                raise _no_saga(args.saga_id, url) from None
            out.append(
                _dumps(timeline_json(timeline)) if args.json else timeline_text(timeline, style)
            )
        elif args.command == "versions":
            found = await inspector.versions(name=args.name)
            text = versions_text(found, style)
            out.append(_dumps([version_json(v) for v in found]) if args.json else text)
        else:  # stats
            counts = await inspector.counts(name=args.name)
            if args.json:
                out.append(_dumps({status.value: n for status, n in counts.items()}))
            else:
                out.append(counts_text(counts, style))


def load_saga(target: str) -> Saga[Any] | Choreography:
    """Import ``MODULE:NAME`` and return the saga definition or choreography it names.

    The current directory is put on ``sys.path`` first, so a module next to the caller is
    found. *NAME* may be dotted (``module:holder.saga``).

    Args:
        target: A dotted module path and an attribute name, separated by a colon.

    Returns:
        The :class:`~pysaga.Saga` or :class:`~pysaga.Choreography`.

    Raises:
        CommandError: *target* is malformed, cannot be imported, or is neither.
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
    if not isinstance(obj, Saga | Choreography):
        what = f"the class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
        raise CommandError(
            f"{target!r} is {what}, not a pysaga.Saga or pysaga.Choreography; name the Saga "
            "or Choreography object"
        )
    return obj


def _chart(args: argparse.Namespace) -> tuple[Saga[Any] | Choreography, str]:
    flow = load_saga(args.target)
    try:
        return flow, flow.to_mermaid()
    except PysagaError as exc:
        raise CommandError(f"cannot draw {args.target!r}: {_one_line(exc)}") from None


def _draw(args: argparse.Namespace, out: list[str]) -> None:
    flow, chart = _chart(args)
    if args.json:
        out.append(_dumps({"name": flow.name, "version": flow.version, "mermaid": chart}))
    else:
        out.append(chart.rstrip("\n"))


async def _draw_saga(
    args: argparse.Namespace, inspector: Inspector, url: str, out: list[str]
) -> None:
    flow, chart = _chart(args)
    record = await inspector.log.get(args.saga)
    if record is None:
        raise _no_saga(args.saga, url)
    if record.name != flow.name:
        raise CommandError(
            f"draw: saga {args.saga!r} is a {record.name!r} saga, not {flow.name!r}; name "
            "its definition"
        )
    progress = (
        progress_of(flow, record)
        if isinstance(flow, Saga)
        else choreography_progress_of(flow, record)
    )
    marked = mark_nodes(chart, progress)
    if args.json:
        out.append(
            _dumps(
                {
                    "name": flow.name,
                    "version": flow.version,
                    "saga_id": record.saga_id,
                    "status": record.status.value,
                    "progress": progress,
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
        The exit status: 0 on success, 1 when what was asked for cannot be found, opened or
        done, 2 for a usage error. Errors are printed to stderr as one line, never as a
        traceback.
    """
    out: list[str] = []
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        if args.command == "draw" and args.saga is None:
            if args.log is not None:
                raise CommandError("draw: --log is used with --saga SAGA_ID only", USAGE)
            _draw(args, out)
        else:
            try:
                anyio.run(_run_log_command, args, _style(args, sys.stdout), out)
            except CommandError:
                raise
            except InvalidURLError as exc:
                raise CommandError(str(exc), USAGE) from None
            except PysagaError as exc:  # the log could not be opened, read or written
                text = " ".join(str(exc).split()) or type(exc).__name__
                raise CommandError(f"cannot use the saga log: {text}") from None
            except OSError as exc:
                raise CommandError(f"cannot use the saga log: {_one_line(exc)}") from None
            except ImportError as exc:  # the log's extra is not installed
                raise CommandError(f"cannot open the saga log: {_one_line(exc)}") from None
    except CommandError as exc:
        print(f"pysaga: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("pysaga: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"pysaga: unexpected error: {_one_line(exc)} (a bug in pysaga: please report it; "
            f"{DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return NOT_FOUND
    try:
        for text in out:
            print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (| head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
    return 0


def console_main() -> NoReturn:
    """The console-script entry point: run :func:`main` and exit with its status."""
    sys.exit(main())
