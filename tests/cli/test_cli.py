"""The ``pysaga`` command answers an operator's questions about a SQLite saga log, as text
and as JSON, and turns bad input into one line on stderr and a non-zero exit status.

``main()`` runs its own event loop, so these tests are plain functions: the saga log is
written beforehand, by a real orchestrator, in a fixture that runs its own loop too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    EntryKind,
    LogEntry,
    Orchestrator,
    Retry,
    Saga,
    SagaRecord,
    SagaStatus,
    StepContext,
)
from pysaga.cli import main
from pysaga.stores.sqlite import SQLiteSagaLog

ONCE = Retry(attempts=1, backoff=0, jitter=0)
ROOT = Path(__file__).resolve().parents[2]


class Order(BaseModel):
    amount: int = 10
    fail_undo: bool = False


def order_saga() -> Saga[Order]:
    """reserve -> charge; charging over 100 is refused; the undo of reserve may fail."""
    saga: Saga[Order] = Saga("order", Order)

    @saga.step(retry=ONCE)
    async def reserve(order: Order, ctx: StepContext) -> None:
        pass

    @reserve.compensate(retry=ONCE)
    async def release(order: Order, ctx: StepContext) -> None:
        if order.fail_undo:
            raise ConnectionError("warehouse unreachable")

    @saga.step(retry=ONCE)
    async def charge(order: Order, ctx: StepContext) -> None:
        if order.amount > 100:
            raise BusinessError("over the limit")

    return saga


@dataclass(frozen=True)
class Log:
    """A SQLite saga log holding one saga in each of four statuses."""

    url: str
    ids: dict[SagaStatus, str]


STUCK_FOR = 3600.0
"""How long ago the running saga was last written."""


async def _build(path: Path) -> dict[SagaStatus, str]:
    saga = order_saga()
    async with Orchestrator(sagas=[saga], log=SQLiteSagaLog(path)) as orch:
        done = await orch.run(saga, Order())
        undone = await orch.run(saga, Order(amount=500))
        failed = await orch.run(saga, Order(amount=500, fail_undo=True))
    then = time.time() - STUCK_FOR
    running = SagaRecord(
        saga_id="stuck-1",
        name="order",
        version=1,
        status=SagaStatus.RUNNING,
        data='{"amount": 7, "fail_undo": false}',
        owner="gone",
        lease_expires_at=then + 15.0,
        created_at=then,
        updated_at=then,
    )
    async with SQLiteSagaLog(path) as log:
        await log.create(running, [LogEntry(EntryKind.SAGA_STARTED, at=then, owner="gone")])
    return {
        SagaStatus.COMPLETED: done.saga_id,
        SagaStatus.COMPENSATED: undone.saga_id,
        SagaStatus.FAILED: failed.saga_id,
        SagaStatus.RUNNING: "stuck-1",
    }


@pytest.fixture
def log(tmp_path: Path) -> Log:
    path = tmp_path / "sagas.db"
    ids = anyio.run(_build, path)
    return Log(url=f"sqlite:///{path}", ids=ids)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in-process; return its exit status, stdout and stderr."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out, err = run(capsys, "--json", *argv)
    assert (status, err) == (0, "")
    return json.loads(out)


class TestList:
    def test_table(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """A table with a header and one row per saga, newest first, with ISO UTC times
        and the failure of the sagas that turned back."""
        status, out, err = run(capsys, "list", "--log", log.url)
        assert (status, err) == (0, "")
        header, *rows = out.splitlines()
        assert header.split() == [
            "ID", "NAME", "VERSION", "STATUS", "CREATED", "UPDATED", "OWNER", "FAILURE",
        ]  # fmt: skip
        assert len(rows) == 4
        by_id = {row.split()[0]: row for row in rows}
        assert set(by_id) == set(log.ids.values())
        for state, saga_id in log.ids.items():
            assert by_id[saga_id].split()[3] == state.value
        assert "BusinessError: over the limit" in by_id[log.ids[SagaStatus.COMPENSATED]]
        assert rows[-1].split()[0] == "stuck-1"  # started first, listed last
        created = by_id["stuck-1"].split()[4]
        assert created.endswith("Z")
        assert "T" in created

    def test_filters(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """--status (several), --name, --older-than and --limit narrow the list."""
        found = run_json(capsys, "list", "--log", log.url, "--status", "failed", "compensated")
        assert {r["saga_id"] for r in found} == {
            log.ids[SagaStatus.FAILED],
            log.ids[SagaStatus.COMPENSATED],
        }
        assert run_json(capsys, "list", "--log", log.url, "--name", "nobody") == []
        old = run_json(capsys, "list", "--log", log.url, "--older-than", str(STUCK_FOR / 2))
        assert [r["saga_id"] for r in old] == ["stuck-1"]
        assert len(run_json(capsys, "list", "--log", log.url, "--limit", "2")) == 2
        status, out, err = run(capsys, "list", "--log", log.url, "--name", "nobody")
        assert (status, out, err) == (0, "no sagas\n", "")

    def test_stuck(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """--stuck lists only unfinished sagas silent for that long."""
        found = run_json(capsys, "list", "--log", log.url, "--stuck", "60")
        assert [r["saga_id"] for r in found] == ["stuck-1"]
        status, out, _ = run(capsys, "list", "--log", log.url, "--stuck", "60")
        assert status == 0
        assert len(out.splitlines()) == 2
        assert run_json(capsys, "list", "--log", log.url, "--stuck", str(STUCK_FOR * 2)) == []

    def test_json_records(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """JSON records carry statuses as strings, times as floats and the data decoded."""
        (record,) = run_json(capsys, "list", "--log", log.url, "--status", "compensated")
        assert record["status"] == "compensated"
        assert record["data"] == {"amount": 500, "fail_undo": False}
        assert isinstance(record["created_at"], float)
        assert record["steps"]["charge"]["status"] == "failed"
        assert record["failure"]["type"] == "BusinessError"

    def test_log_from_environment(
        self, log: Log, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without --log, PYSAGA_LOG names the log; --json may follow the command too."""
        monkeypatch.setenv("PYSAGA_LOG", log.url)
        status, out, err = run(capsys, "list", "--json")
        assert (status, err) == (0, "")
        assert len(json.loads(out)) == 4


class TestShow:
    def test_text(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """The record, its steps and one timeline line per event, with the failure."""
        saga_id = log.ids[SagaStatus.COMPENSATED]
        status, out, err = run(capsys, "show", saga_id, "--log", log.url)
        assert (status, err) == (0, "")
        lines = out.splitlines()
        assert lines[0] == f"saga {saga_id}: order v1, compensated"
        assert any(line.split()[:2] == ["reserve", "compensated"] for line in lines)
        assert any(line.split()[:2] == ["charge", "failed"] for line in lines)
        events = lines[lines.index(next(x for x in lines if x.startswith("timeline"))) + 1 :]
        assert events[0].split()[1] == "saga_started"
        assert events[-1].split()[1] == "saga_compensated"
        (charge_failed,) = [e for e in events if "step_failed" in e]
        assert "charge #1" in charge_failed
        assert "BusinessError: over the limit" in charge_failed
        assert all(e.lstrip().startswith("+") for e in events)

    def test_json(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """The record and its events, oldest first, with the gap since the one before."""
        saga_id = log.ids[SagaStatus.FAILED]
        shown = run_json(capsys, "show", "--log", log.url, saga_id)
        assert shown["record"]["saga_id"] == saga_id
        assert shown["record"]["status"] == "failed"
        kinds = [e["kind"] for e in shown["events"]]
        assert kinds[0] == "saga_started"
        assert kinds[-1] == "saga_failed"
        assert "compensation_failed" in kinds
        assert shown["events"][0]["since_previous"] == 0.0
        assert isinstance(shown["duration"], float)


class TestStats:
    def test_text_and_json(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """A count for every status, zero where there is none, and the total."""
        counts = run_json(capsys, "stats", "--log", log.url)
        assert counts == {
            "running": 1,
            "compensating": 0,
            "completed": 1,
            "compensated": 1,
            "failed": 1,
            "resolved": 0,
        }
        status, out, err = run(capsys, "stats", "--log", log.url)
        assert (status, err) == (0, "")
        rows = [line.split() for line in out.splitlines()]
        assert rows[0] == ["STATUS", "COUNT"]
        assert ["compensating", "0"] in rows
        assert rows[-1] == ["total", "4"]
        assert set(run_json(capsys, "stats", "--log", log.url, "--name", "x").values()) == {0}

    def test_python_dash_m(self, log: Log) -> None:
        """``python -m pysaga`` is the same command."""
        done = subprocess.run(
            [sys.executable, "-m", "pysaga", "stats", "--log", log.url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert json.loads(done.stdout)["completed"] == 1


DEFINITIONS = """
from pydantic import BaseModel
from pysaga import Saga, StepContext

class Parcel(BaseModel):
    weight: int = 1

ship: Saga[Parcel] = Saga("ship", Parcel)

@ship.step
async def pack(parcel: Parcel, ctx: StepContext) -> None: ...

@pack.compensate
async def unpack(parcel: Parcel, ctx: StepContext) -> None: ...

@ship.step
async def send(parcel: Parcel, ctx: StepContext) -> None: ...

not_a_saga = 42
model = Parcel
"""


@pytest.fixture
def definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of saga definitions in the current directory; returns its name."""
    name = f"cli_defs_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(DEFINITIONS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


class TestDraw:
    def test_mermaid(self, definitions: str, capsys: pytest.CaptureFixture[str]) -> None:
        """The saga found by MODULE:SAGA is drawn as the same chart to_mermaid() gives."""
        status, out, err = run(capsys, "draw", f"{definitions}:ship")
        assert (status, err) == (0, "")
        ship = sys.modules[definitions].ship
        assert out == ship.to_mermaid().rstrip("\n") + "\n"
        drawn = run_json(capsys, "draw", f"{definitions}:ship")
        assert drawn == {"name": "ship", "version": 1, "mermaid": ship.to_mermaid()}


def one_line_error(capsys: pytest.CaptureFixture[str], status: int, *argv: str) -> str:
    """Run bad input: assert the exit status, no stdout and exactly one stderr line."""
    got, out, err = run(capsys, *argv)
    assert (got, out) == (status, "")
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pysaga: ")
    assert "Traceback" not in err
    return err


class TestBadInput:
    def test_unknown_saga_id(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(capsys, 1, "show", "--log", log.url, "nope")
        assert f"no saga with id 'nope' in {log.url}" in err

    def test_missing_file_is_not_created(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        missing = tmp_path / "absent.db"
        for argv in (["stats"], ["list"], ["show", "x"], ["--json", "list"]):
            err = one_line_error(capsys, 1, *argv, "--log", f"sqlite:///{missing}")
            assert "does not exist" in err
            assert str(missing) in err
        assert not missing.exists()

    def test_bad_scheme(self, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(capsys, 2, "stats", "--log", "mongodb://127.0.0.1/sagas")
        assert "unknown scheme 'mongodb'" in err

    def test_no_log(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("PYSAGA_LOG", raising=False)
        err = one_line_error(capsys, 2, "list")
        assert "--log" in err
        assert "PYSAGA_LOG" in err

    def test_not_a_database(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"this is not a database, but long enough to look like one" * 20)
        one_line_error(capsys, 1, "stats", "--log", f"sqlite:///{junk}")

    def test_usage(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        one_line_error(capsys, 2, "list", "--log", log.url, "--status", "lost")
        one_line_error(capsys, 2, "list", "--log", log.url, "--limit", "0")
        one_line_error(capsys, 2, "list", "--log", log.url, "--stuck", "-5")
        one_line_error(capsys, 2, "list", "--log", log.url, "--stuck", "5", "--status", "failed")
        one_line_error(capsys, 2, "show", "--log", log.url)
        one_line_error(capsys, 2, "frobnicate")
        one_line_error(capsys, 2)

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        assert "list" in capsys.readouterr().out

    @pytest.mark.parametrize(
        ("target", "status", "says"),
        [
            ("no_colon", 2, "is not MODULE:SAGA"),
            ("surely_not_a_module_xyz:saga", 1, "no module named 'surely_not_a_module_xyz'"),
            ("{defs}:missing", 1, "has no attribute 'missing'"),
            ("{defs}:not_a_saga", 1, "is int, not a pysaga.Saga"),
            ("{defs}:model", 1, "is the class Parcel, not a pysaga.Saga"),
        ],
    )
    def test_bad_draw_target(
        self,
        definitions: str,
        capsys: pytest.CaptureFixture[str],
        target: str,
        status: int,
        says: str,
    ) -> None:
        err = one_line_error(capsys, status, "draw", target.format(defs=definitions))
        assert says in err

    def test_draw_module_that_raises(
        self, definitions: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / f"{definitions}_broken.py").write_text("raise RuntimeError('no config')\n")
        err = one_line_error(capsys, 1, "draw", f"{definitions}_broken:saga")
        assert "RuntimeError: no config" in err
        sys.modules.pop(f"{definitions}_broken", None)


def test_the_console_script_is_declared() -> None:
    """`pip install` puts a `pysaga` command on the PATH that runs this CLI."""
    from importlib.metadata import entry_points

    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "pysaga"]
    assert script.value == "pysaga.cli:console_main"
