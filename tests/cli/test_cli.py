"""The ``pysaga`` command answers an operator's questions about a saga log and carries out
their actions, on SQLite and PostgreSQL logs, as text and as JSON, and turns bad input into
one line on stderr and a non-zero exit status.

``main()`` runs its own event loop, so these tests are plain functions: the saga log is
written beforehand, by a real orchestrator, in a fixture that runs its own loop too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    DefinitionRecord,
    EntryKind,
    LogEntry,
    Operator,
    Orchestrator,
    Retry,
    Saga,
    SagaRecord,
    SagaStatus,
    StepContext,
)
from pysaga.cli import main
from pysaga.operations import default_operator
from pysaga.stores import from_url

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


ORDER = order_saga()
"""The definition the logs' sagas run (``draw tests.cli.test_cli:ORDER`` finds it)."""


@dataclass(frozen=True)
class Log:
    """A saga log holding one saga in each status."""

    url: str
    ids: dict[SagaStatus, str]


STUCK_FOR = 3600.0
"""How long ago the running and the compensating sagas were last written."""


async def _build(url: str) -> dict[SagaStatus, str]:
    saga = ORDER
    async with Orchestrator(sagas=[saga], log=from_url(url)) as orch:
        done = await orch.run(saga, Order())
        undone = await orch.run(saga, Order(amount=500))
        failed = await orch.run(saga, Order(amount=500, fail_undo=True))
        settled = await orch.run(saga, Order(amount=500, fail_undo=True))
    then = time.time() - STUCK_FOR
    async with from_url(url) as log:
        for saga_id, status, at in (
            ("stuck-1", SagaStatus.RUNNING, then),
            ("undoing-1", SagaStatus.COMPENSATING, then + 1),
        ):
            record = SagaRecord(
                saga_id=saga_id,
                name="order",
                version=1,
                status=status,
                data='{"amount": 7, "fail_undo": false}',
                owner="gone",
                lease_expires_at=at + 15.0,
                created_at=at,
                updated_at=at,
            )
            await log.create(record, [LogEntry(EntryKind.SAGA_STARTED, at=at, owner="gone")])
        await Operator(log).resolve(settled.saga_id, reason="released by hand", by="carol")
    return {
        SagaStatus.COMPLETED: done.saga_id,
        SagaStatus.COMPENSATED: undone.saga_id,
        SagaStatus.FAILED: failed.saga_id,
        SagaStatus.RESOLVED: settled.saga_id,
        SagaStatus.RUNNING: "stuck-1",
        SagaStatus.COMPENSATING: "undoing-1",
    }


def _drop_schema(dsn: str, schema: str) -> None:
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    anyio.run(drop)


@pytest.fixture(params=["sqlite", "postgres"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    """A SQLite log in a file, or a PostgreSQL log in a schema of its own (dropped after)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sagas.db'}"
        yield Log(url=url, ids=anyio.run(_build, url))
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"pysaga_test_{uuid.uuid4().hex[:12]}"
    url = f"{dsn}?schema={schema}"
    try:
        yield Log(url=url, ids=anyio.run(_build, url))
    finally:
        _drop_schema(dsn, schema)


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
        assert len(rows) == 6
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
        assert [r["saga_id"] for r in old] == ["undoing-1", "stuck-1"]
        assert len(run_json(capsys, "list", "--log", log.url, "--limit", "2")) == 2
        status, out, err = run(capsys, "list", "--log", log.url, "--name", "nobody")
        assert (status, out, err) == (0, "no sagas\n", "")

    def test_stuck(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """--stuck lists only unfinished sagas silent for that long, longest silent first."""
        found = run_json(capsys, "list", "--log", log.url, "--stuck", "60")
        assert [r["saga_id"] for r in found] == ["stuck-1", "undoing-1"]
        status, out, _ = run(
            capsys, "list", "--log", log.url, "--stuck", "60", "--timer-grace", "30"
        )
        assert status == 0
        assert len(out.splitlines()) == 3
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
        assert len(json.loads(out)) == 6


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
        assert counts == {status.value: 1 for status in SagaStatus}
        assert list(counts) == [status.value for status in SagaStatus]
        status, out, err = run(capsys, "stats", "--log", log.url)
        assert (status, err) == (0, "")
        rows = [line.split() for line in out.splitlines()]
        assert rows[0] == ["STATUS", "COUNT"]
        assert ["resolved", "1"] in rows
        assert rows[-1] == ["total", "6"]
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

    def test_output_cut_short_by_its_reader_is_not_an_error(self) -> None:
        """``pysaga draw ... | head -1``: the reader closes the pipe after one line; the
        command ends quietly with status 0 instead of a BrokenPipeError traceback."""
        reader = subprocess.Popen(
            ["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, time; from pysaga.cli import main; "
                "sys.stdout.write('x\\n'); sys.stdout.flush(); time.sleep(0.5); "
                "sys.exit(main(['draw', 'tests.cli.test_cli:ORDER']))",
            ],
            stdout=reader.stdin,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(timeout=10)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 0, done.stderr


def refund_saga(*, renamed: bool = False) -> Saga[Order]:
    """take_back (compensated) -> pay_back; *renamed* renames the first step, as a careless
    edit that keeps ``version=1`` would."""
    saga: Saga[Order] = Saga("refund", Order)

    async def take_back(order: Order, ctx: StepContext) -> None:
        pass

    async def put_back(order: Order, ctx: StepContext) -> None:
        pass

    async def pay_back(order: Order, ctx: StepContext) -> None:
        pass

    first = saga.step(name="collect" if renamed else "take_back")(take_back)
    first.compensate(put_back)
    saga.step(pay_back)
    return saga


async def _hold_one(url: str) -> str:
    """A refund saga in flight on a definition that was changed since, under the same version:
    an orchestrator hosting the changed one holds it. Returns its id."""
    before, after = refund_saga(), refund_saga(renamed=True)
    before.seal()
    now = time.time()
    async with from_url(url) as log:
        await log.define(DefinitionRecord("refund", 1, before.fingerprint, before.outline(), now))
        record = SagaRecord(
            saga_id="refund-1",
            name="refund",
            version=1,
            status=SagaStatus.RUNNING,
            data="{}",
            owner="gone",
            created_at=now,
            updated_at=now,
            fingerprint=before.fingerprint,
        )
        await log.create(record, [LogEntry(EntryKind.SAGA_STARTED, at=now, owner="gone")])
    async with Orchestrator(sagas=[after], log=from_url(url)):
        pass
    return record.saga_id


class TestVersions:
    def test_held_saga_in_versions_list_and_show(
        self, log: Log, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """versions counts the sagas per name, version and fingerprint by status, with the
        held ones and each definition's steps; list marks the held saga and --held finds it;
        show says which steps differ."""
        held_id = anyio.run(_hold_one, log.url)
        before, after = refund_saga(), refund_saga(renamed=True)
        found = run_json(capsys, "versions", "--log", log.url)
        by_key = {(v["name"], v["version"], v["fingerprint"]): v for v in found}
        assert set(by_key) == {
            ("order", 1, None),
            ("order", 1, ORDER.fingerprint),
            ("refund", 1, before.fingerprint),
            ("refund", 1, after.fingerprint),
        }
        known = by_key["order", 1, ORDER.fingerprint]
        assert known["counts"] == {
            "running": 0, "compensating": 0, "completed": 1, "compensated": 1, "failed": 1,
            "resolved": 1,
        }  # fmt: skip
        assert [step["name"] for step in known["steps"]] == ["reserve", "charge"]
        assert by_key["order", 1, None]["steps"] is None
        stale = by_key["refund", 1, before.fingerprint]
        assert (stale["counts"]["running"], stale["held"], stale["total"]) == (1, 1, 1)
        assert by_key["refund", 1, after.fingerprint]["total"] == 0  # hosted, nothing yet

        status, out, err = run(capsys, "versions", "--log", log.url, "--name", "refund")
        assert (status, err) == (0, "")
        header, *rows = out.splitlines()
        assert header.split()[:4] == ["NAME", "VERSION", "FINGERPRINT", "RUNNING"]
        assert "HELD" in header.split()
        row = next(r for r in rows if before.fingerprint in r)
        assert "take_back*, pay_back" in row

        status, out, err = run(capsys, "list", "--log", log.url, "--name", "refund")
        assert (status, err) == (0, "")
        assert "running (held)" in out
        (listed,) = run_json(capsys, "list", "--log", log.url, "--held")
        assert listed["saga_id"] == held_id
        assert listed["fingerprint"] == before.fingerprint
        assert "step 'take_back' is gone" in listed["held"]

        status, out, err = run(capsys, "show", "--log", log.url, held_id)
        assert (status, err) == (0, "")
        (held_line,) = [line for line in out.splitlines() if line.lstrip().startswith("held")]
        assert "step 'collect' is new" in held_line
        assert f"fingerprint {before.fingerprint}" in out
        assert "saga_held" in out
        err = one_line_error(capsys, 2, "list", "--log", log.url, "--held", "--status", "failed")
        assert "--held" in err


class TestActions:
    def test_retry(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """retry sends the FAILED saga back to compensating and says so; its timeline shows
        who retried it and why; an action that no longer fits is refused."""
        saga_id = log.ids[SagaStatus.FAILED]
        status, out, err = run(
            capsys, "retry", saga_id, "--log", log.url, "--reason", "warehouse is back",
            "--by", "alice",
        )  # fmt: skip
        assert (status, err) == (0, "")
        assert out == (
            f"saga {saga_id} (order) retried: now compensating; an orchestrator running it "
            "resumes it\n"
        )
        shown = run_json(capsys, "show", "--log", log.url, saga_id)
        assert shown["record"]["status"] == "compensating"
        assert shown["record"]["steps"]["reserve"] == {
            "status": "compensating",
            "attempts": 1,
            "failures": 0,
            "timeout_at": None,
            "retry_at": None,
        }
        last = shown["events"][-1]
        assert (last["kind"], last["owner"]) == ("operator_retried", "alice")
        assert last["failure"] == "OperatorRetried: retried by alice: warehouse is back"
        status, out, _ = run(capsys, "show", "--log", log.url, saga_id)
        assert "operator_retried  (OperatorRetried: retried by alice" in out
        err = one_line_error(capsys, 1, "retry", saga_id, "--log", log.url, "--reason", "again")
        assert f"cannot retry saga {saga_id!r}: it is COMPENSATING, not FAILED" in err

    def test_abort(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """abort turns the RUNNING saga back; --json prints its new record, with a failure
        that names the OS user when --by is not given."""
        record = run_json(
            capsys, "abort", "stuck-1", "--log", log.url, "--reason", "customer cancelled"
        )
        assert record["status"] == "compensating"
        assert record["lease_expires_at"] == 0
        who = default_operator()
        assert record["failure"] == {
            "step": None,
            "type": "OperatorAborted",
            "message": f"aborted by {who}: customer cancelled",
            "business": False,
            "details": {"by": who, "reason": "customer cancelled"},
        }
        err = one_line_error(capsys, 1, "abort", "stuck-1", "--log", log.url, "--reason", "x")
        assert "it is COMPENSATING already" in err

    def test_resolve(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """resolve settles the FAILED saga for good; a RUNNING one is refused."""
        err = one_line_error(capsys, 1, "resolve", "stuck-1", "--log", log.url, "--reason", "x")
        assert "cannot resolve saga 'stuck-1': it is RUNNING, not FAILED" in err
        saga_id = log.ids[SagaStatus.FAILED]
        status, out, err = run(
            capsys, "resolve", saga_id, "--log", log.url, "--reason", "refunded", "--by", "bo"
        )
        assert (status, err) == (0, "")
        assert out == f"saga {saga_id} (order) resolved: now resolved\n"
        assert run_json(capsys, "stats", "--log", log.url)["resolved"] == 2
        err = one_line_error(capsys, 1, "resolve", saga_id, "--log", log.url, "--reason", "x")
        assert "an operator resolved it already" in err

    def test_bad_action_input(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown id, a missing or empty reason: one line, nothing written."""
        err = one_line_error(capsys, 1, "retry", "nope", "--log", log.url, "--reason", "x")
        assert "no saga with id 'nope'" in err
        err = one_line_error(capsys, 2, "abort", "stuck-1", "--log", log.url)
        assert "--reason" in err
        err = one_line_error(capsys, 2, "abort", "stuck-1", "--log", log.url, "--reason", " ")
        assert "give a reason" in err
        assert run_json(capsys, "stats", "--log", log.url)["running"] == 1


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


class TestDrawProgress:
    TARGET = "tests.cli.test_cli:ORDER"

    def test_compensated_saga(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """--saga marks one saga's progress on its definition's chart with mermaid classes:
        here the failed step, and the step and compensation undone."""
        saga_id = log.ids[SagaStatus.COMPENSATED]
        status, out, err = run(capsys, "draw", self.TARGET, "--saga", saga_id, "--log", log.url)
        assert (status, err) == (0, "")
        chart = ORDER.to_mermaid().rstrip("\n")
        assert out.startswith(chart + "\n")
        added = out[len(chart) + 1 :].splitlines()
        assert [line.split()[1] for line in added if line.lstrip().startswith("classDef")] == [
            "done", "running", "failed", "compensated", "pending",
        ]  # fmt: skip
        assert [line for line in added if line.lstrip().startswith("class ")] == [
            "    class s1 failed",
            "    class s0,c0,compensated compensated",
        ]

    def test_json_and_other_states(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """--json gives each node's state; a completed saga is done throughout, one that
        has not run a step yet is all still to come, a failed undo is marked failed."""
        for state, progress in (
            (SagaStatus.COMPLETED, {"s0": "done", "s1": "done", "completed": "done"}),
            (SagaStatus.RUNNING, {"s0": "pending", "s1": "pending"}),
            (SagaStatus.FAILED, {"s0": "done", "c0": "failed", "s1": "failed"}),
        ):
            saga_id = log.ids[state]
            drawn = run_json(capsys, "draw", self.TARGET, "--saga", saga_id, "--log", log.url)
            assert (drawn["saga_id"], drawn["status"]) == (saga_id, state.value)
            assert drawn["progress"] == progress
            assert drawn["mermaid"].startswith(ORDER.to_mermaid())

    def test_bad_input(
        self, log: Log, definitions: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        err = one_line_error(capsys, 1, "draw", self.TARGET, "--saga", "nope", "--log", log.url)
        assert "no saga with id 'nope'" in err
        err = one_line_error(
            capsys, 1, "draw", f"{definitions}:ship", "--saga", "stuck-1", "--log", log.url
        )
        assert "is a 'order' saga, not 'ship'" in err
        err = one_line_error(capsys, 2, "draw", self.TARGET, "--log", log.url)
        assert "--saga" in err


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

    def test_unreachable_postgres(self, capsys: pytest.CaptureFixture[str]) -> None:
        for argv in (["stats"], ["abort", "x", "--reason", "y"]):
            err = one_line_error(
                capsys, 1, *argv, "--log", "postgresql://nobody@127.0.0.1:1/none?schema=s"
            )
            assert "cannot use the saga log" in err
            assert "check that the server runs" in err

    def test_bad_postgres_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(
            capsys, 2, "list", "--log", "postgresql://127.0.0.1/db?schema=not-an-identifier"
        )
        assert "not a plain identifier" in err
        err = one_line_error(capsys, 2, "list", "--log", "postgresql://127.0.0.1/db?pool_size=0")
        assert "pool_size" in err

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
