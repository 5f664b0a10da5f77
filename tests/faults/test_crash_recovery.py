"""Crash recovery for real: worker processes running sagas on a SQLite log are SIGKILLed at
many points, and the next process on the same files finishes every saga with each effect
applied at most once net.

Each *scenario* owns one saga log and one effects database (see ``crash_worker.py``) and runs
a sequence of *generations*, one process each, strictly one after the other:

* most generations kill themselves at a chosen kill point: before or after a saga-log write,
  inside a step once its effect is committed (between the step's intent and its outcome in
  the log), inside a compensation once its undo is committed, or right after claiming the
  sagas a dead process left behind;
* a few are killed from outside at a random moment;
* the last one is not killed and must bring every saga to its end.

Every generation also starts a fresh batch of sagas (some complete, some are refused and
compensate, some fail technically then succeed on retry). The batch alone passes enough kill
points of every kind for the chosen one to be reached, so whether a process dies does not
depend on timing: the random timings change *where* in the work the kill lands, never the
verdict.

The test then reads both files directly and checks every saga: terminal with the expected
status, a history that is consistent (one owner at a time, each new owner announced by a
claim, no step succeeding twice, compensations in reverse order), the effects of a completed
saga present exactly once, those of a compensated saga undone, no effect for any other key,
and, for each kill point, the evidence that the next process picked up exactly there.
"""

from __future__ import annotations

import json
import random
import select
import signal
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    EntryKind,
    Orchestrator,
    Retry,
    Saga,
    SagaLog,
    SagaStatus,
    StepContext,
    StepStatus,
)

from .crash_worker import FIELDS, PIVOT, STEPS

if TYPE_CHECKING:
    from types import TracebackType

    from pysaga import SagaUpdate
    from tests.conftest import LogFactory

WORKER = Path(__file__).with_name("crash_worker.py")
SEED = 20_240_611
SCENARIOS = 4
LEASE = 0.3
PROCESS_TIMEOUT = 90.0
MIN_KILLS = 50

# Kill points per generation: the kind, and the largest n that the generation's new batch
# alone is sure to reach. A batch has a completing saga, one refused at the pivot, one refused
# in the parallel group and one of any shape (at worst refused at its first step): at least
# 10 step effects and 5 undos, and at least 19 saga-log writes even if the engine merged every
# write it can (each saga: its creation, one intent per later stage it reaches, one per
# compensation, its end). The bounds keep a margin below those counts.
KILL_BOUNDS = {
    "before-write": 16,
    "after-write": 16,
    "after-effect": 8,
    "after-undo": 4,
    "after-claim": 1,
    "any": 40,
}
# "after-claim" always follows a kill that leaves a saga unfinished, so the next process
# must claim it. Two rounds per scenario: 14 self-kills, then a random kill from outside.
CYCLE = (
    "after-effect",
    "after-claim",
    "before-write",
    "after-undo",
    "after-claim",
    "after-write",
    "any",
)
ROUNDS = 2

COMPLETING = (
    {},
    {"flaky": {"reserve_stock": 1, "send_receipt": 2}},
    {"flaky": {"hold_payment": 2, "capture_payment": 1}},
    {"flaky": {"book_courier": 1, "send_receipt": 1}},
)
REFUSED_AT_PIVOT = (
    {"refuse": PIVOT},
    {"refuse": PIVOT, "flaky_undo": {"hold_payment": 1}},
    {
        "refuse": PIVOT,
        "flaky": {"reserve_stock": 1},
        "flaky_undo": {"reserve_stock": 2, "book_courier": 1},
    },
)
REFUSED_IN_GROUP = (
    {"refuse": "book_courier"},
    {"refuse": "book_courier", "flaky": {"hold_payment": 1}, "flaky_undo": {"hold_payment": 1}},
    {"refuse": "hold_payment", "flaky_undo": {"book_courier": 1}},
)
ANY_SHAPE = (*COMPLETING, *REFUSED_AT_PIVOT, *REFUSED_IN_GROUP, {"refuse": "reserve_stock"})

# What a refusal at each step leaves to undo, in the order compensation must run.
UNDONE_ON_REFUSAL = {
    "reserve_stock": (),
    "hold_payment": ("book_courier", "reserve_stock"),
    "book_courier": ("hold_payment", "reserve_stock"),
    PIVOT: ("book_courier", "hold_payment", "reserve_stock"),
}
TERMINAL_KINDS = {"saga_completed", "saga_compensated", "saga_failed"}


@dataclass
class Generation:
    owner: str
    index: int
    returncode: int
    kill: dict[str, Any] | None
    done: dict[str, Any] | None
    external: bool = False


@dataclass
class Scenario:
    index: int
    directory: Path
    plan: list[dict[str, Any]] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.directory / "sagas.db"

    @property
    def effects_path(self) -> Path:
        return self.directory / "effects.db"


def _batch(rng: random.Random, scenario: int, gen: int) -> list[dict[str, Any]]:
    shapes = [
        rng.choice(COMPLETING),
        rng.choice(REFUSED_AT_PIVOT),
        rng.choice(REFUSED_IN_GROUP),
        rng.choice(ANY_SHAPE),
    ]
    rng.shuffle(shapes)
    batch = []
    for i, shape in enumerate(shapes):
        saga_id = f"s{scenario}-g{gen:02d}-{i}"
        batch.append({"saga_id": saga_id, "data": {"order_id": saga_id, **shape}})
    return batch


def _leaves_unfinished(kill: dict[str, Any] | None) -> bool:
    """Whether a process killed at this point surely left a saga for the next one to claim."""
    if kill is None:
        return False
    kind = kill["kill"]
    if kind in ("after-effect", "after-undo", "after-claim"):
        return True
    if kill.get("op") != "update":
        return False
    return kind == "before-write" or not TERMINAL_KINDS & set(kill["entries"])


def _diagnose(scenario: Scenario) -> str:
    if not scenario.log_path.exists():
        return "(no saga log)"
    with sqlite3.connect(scenario.log_path) as db:
        rows = db.execute(
            "SELECT saga_id, status, steps, owner, lease_expires_at FROM pysaga_sagas "
            "WHERE status NOT IN ('completed', 'compensated', 'failed')"
        ).fetchall()
    return "unfinished sagas: " + "; ".join(map(str, rows[:10]))


def _run_generation(
    scenario: Scenario,
    gen: int,
    kill: dict[str, Any] | None,
    external_delay: float | None,
) -> Generation:
    owner = f"s{scenario.index}-g{gen:02d}"
    config = {
        "log": f"sqlite:///{scenario.log_path}",
        "effects": str(scenario.effects_path),
        "owner": owner,
        "lease": LEASE,
        "kill": kill,
        "plan": scenario.plan,
    }
    stderr_path = scenario.directory / f"{owner}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: list[str] = []
    try:
        if external_delay is not None:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], PROCESS_TIMEOUT)
            if readable:
                lines.append(proc.stdout.readline())
                if lines[-1] == "ready\n":
                    # sleep in the pipe's wait: the process keeps running meanwhile
                    try:
                        proc.wait(timeout=external_delay)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(
            f"generation {owner} did not finish within {PROCESS_TIMEOUT} s; "
            f"{_diagnose(scenario)}; stderr: {stderr_path.read_text()[-3000:]}"
        ) from None
    lines.extend(out.splitlines(keepends=True))
    kill_line = done_line = None
    for line in lines:
        if line.startswith("{"):
            parsed = json.loads(line)
            if "kill" in parsed:
                kill_line = parsed
            elif "done" in parsed:
                done_line = parsed
    return Generation(
        owner, gen, proc.returncode, kill_line, done_line, external=external_delay is not None
    )


def _run_scenario(index: int, directory: Path) -> Scenario:
    rng = random.Random(SEED * 100 + index)
    scenario = Scenario(index, directory)
    directory.mkdir()
    gen = 0
    previous: Generation | None = None
    for _ in range(ROUNDS):
        for kind in CYCLE:
            if kind == "after-claim" and not (previous and _leaves_unfinished(previous.kill)):
                kind = "after-effect"  # no saga is sure to be left to claim
            spec = {"kind": kind, "n": rng.randint(1, KILL_BOUNDS[kind])}
            scenario.plan.extend(_batch(rng, index, gen))
            result = _run_generation(scenario, gen, spec, None)
            scenario.generations.append(result)
            stderr = (directory / f"{result.owner}.stderr").read_text()[-3000:]
            assert result.returncode == -signal.SIGKILL, (
                f"generation {result.owner} should have killed itself at {spec}, but exited "
                f"with {result.returncode}: {result.done}; stderr: {stderr}"
            )
            assert result.kill is not None, f"generation {result.owner}: no kill line"
            assert result.kill["spec"] == [spec["kind"], spec["n"]]
            previous = result
            gen += 1
        # one kill from outside, at a random moment of the work
        scenario.plan.extend(_batch(rng, index, gen))
        result = _run_generation(scenario, gen, None, rng.uniform(0.0, 0.4))
        assert result.returncode in (0, -signal.SIGKILL), (
            f"generation {result.owner} exited with {result.returncode}; stderr: "
            f"{(directory / f'{result.owner}.stderr').read_text()[-3000:]}"
        )
        scenario.generations.append(result)
        previous = result
        gen += 1
    final = _run_generation(scenario, gen, None, None)
    scenario.generations.append(final)
    assert final.returncode == 0, final
    assert final.done is not None, (
        f"the last generation {final.owner} exited with {final.returncode}; "
        f"{_diagnose(scenario)}; stderr: "
        f"{(directory / f'{final.owner}.stderr').read_text()[-3000:]}"
    )
    return scenario


# -- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    revision: int
    kind: str
    step: str | None
    attempt: int
    owner: str


@dataclass(frozen=True)
class JournalRow:
    seq: int
    op: str
    owner: str
    seen: str | None


def _generation_of(owner: str) -> int:
    return int(owner.rsplit("-g", 1)[1])


def _check_history(
    saga_id: str, entries: list[Entry], expected: str, undone: tuple[str, ...]
) -> list[str]:
    problems: list[str] = []

    def problem(message: str) -> None:
        problems.append(f"{saga_id}: {message}")

    if not entries or entries[0].kind != "saga_started":
        problem(f"history does not begin with saga_started: {entries[:1]}")
        return problems
    terminal = [i for i, e in enumerate(entries) if e.kind in TERMINAL_KINDS]
    if terminal != [len(entries) - 1]:
        problem(f"terminal entries at {terminal} in a history of {len(entries)}")
    if entries[-1].kind != f"saga_{expected}":
        problem(f"history ends with {entries[-1].kind}, expected saga_{expected}")

    # One owner at a time: a new owner shows up only through a claim, never goes back to an
    # earlier generation, and every write comes from the owner of the last claim.
    holder = entries[0].owner
    last_generation = _generation_of(holder)
    for e in entries[1:]:
        if e.kind == "saga_claimed":
            holder = e.owner
        elif e.owner != holder:
            problem(f"{e.kind} at revision {e.revision} by {e.owner} while {holder} held it")
        generation = _generation_of(e.owner)
        if generation < last_generation:
            problem(f"{e.owner} wrote at revision {e.revision} after generation {last_generation}")
        last_generation = generation

    succeeded: Counter[str] = Counter()
    compensated: list[str] = []
    last_attempt: dict[str, int] = {}
    turned_back = False
    for e in entries:
        if e.kind == "saga_compensating":
            if turned_back:
                problem("turned back twice")
            turned_back = True
        elif e.kind == "step_started":
            if turned_back:
                problem(f"step {e.step} started after the saga turned back")
            if e.attempt <= last_attempt.get(e.step or "", 0):
                problem(f"step {e.step} attempt {e.attempt} after {last_attempt[e.step or '']}")
            last_attempt[e.step or ""] = e.attempt
        elif e.kind == "step_succeeded":
            succeeded[e.step or ""] += 1
        elif e.kind.startswith("compensation_"):
            if not turned_back:
                problem(f"{e.kind} of {e.step} before the saga turned back")
            if e.kind == "compensation_succeeded":
                compensated.append(e.step or "")
    twice = [step for step, n in succeeded.items() if n > 1]
    if twice:
        problem(f"steps succeeded more than once: {twice}")
    if expected == "completed":
        if set(succeeded) != set(STEPS) or turned_back or compensated:
            problem(f"completed, yet succeeded={dict(succeeded)} compensated={compensated}")
    elif tuple(compensated) != undone or set(succeeded) != set(undone):
        problem(
            f"compensated in the order {compensated} (expected {list(undone)}); "
            f"succeeded: {sorted(succeeded)}"
        )
    return problems


def _check_effects(
    saga_id: str,
    expected: str,
    undone: tuple[str, ...],
    journal: dict[str, list[JournalRow]],
    present: set[str],
) -> list[str]:
    problems: list[str] = []
    for step in STEPS:
        key = f"{saga_id}/{step}"
        ops = [row.op for row in journal.get(key, [])]
        blind = [
            row for row in journal.get(key, []) if row.op.startswith("undo") and row.seen != key
        ]
        if blind:
            problems.append(f"{key}: compensations that did not see the step's result: {blind}")
        applies, undos = ops.count("apply"), ops.count("undo")
        where = f"{key}: journal {ops}, effect {'present' if key in present else 'absent'}"
        if applies > 1:
            problems.append(f"{where}: the effect was applied {applies} times")
        if applies - undos != (key in present):
            problems.append(f"{where}: the effects table disagrees with the journal")
        first: dict[str, int] = {}
        for position, op in enumerate(ops):
            first.setdefault(op, position)
        if "apply-repeat" in first and first["apply-repeat"] < first.get("apply", -1):
            problems.append(f"{where}: a repeat came before the first application")
        if "undo-nothing" in first and first["undo-nothing"] < first.get("undo", len(ops)):
            problems.append(f"{where}: a compensation found nothing to undo before the undo")
        if expected == "completed":
            if applies != 1 or undos or "undo-nothing" in ops or key not in present:
                problems.append(f"{where}: a completed saga's effect must be there exactly once")
        elif step in undone:
            if applies != 1 or undos != 1 or key in present:
                problems.append(f"{where}: must have been applied once and undone once")
        elif ops or key in present:
            problems.append(f"{where}: this step must have had no effect at all")
    return problems


def _check_kill_points(
    scenario: Scenario,
    history: dict[str, list[Entry]],
    journal: dict[str, list[JournalRow]],
) -> list[str]:
    """Each kill point left the evidence that the next process picked up exactly there."""
    problems: list[str] = []
    for g in scenario.generations:
        kill = g.kill
        if kill is None:
            continue
        kind = kill["kill"]
        where = f"{g.owner} killed {kind} {kill}"
        if kind in ("before-write", "after-write"):
            entries = history.get(kill["saga_id"], [])
            if kill["op"] == "create":
                created_here = bool(entries) and entries[0].owner == g.owner
                if created_here != (kind == "after-write"):
                    problems.append(f"{where}: saga_started written by {entries[:1]}")
                continue
            mine = [
                e.kind
                for e in entries
                if e.revision == kill["revision"]
                and e.owner == g.owner
                and e.kind != "saga_claimed"
            ]
            if kind == "after-write" and mine != kill["entries"]:
                problems.append(f"{where}: revision holds {mine}")
            if kind == "before-write" and mine:
                problems.append(f"{where}: the write landed anyway: {mine}")
        elif kind == "after-claim":
            for saga_id in kill["saga_ids"]:
                claims = [
                    e
                    for e in history.get(saga_id, [])
                    if e.kind == "saga_claimed" and e.owner == g.owner
                ]
                if not claims:
                    problems.append(f"{where}: no claim of {saga_id} by {g.owner} in the log")
        else:
            # The step (or compensation) was in doubt: a later process ran it again with the
            # same key and found its effect (or its undo) already done.
            repeat = "apply-repeat" if kind == "after-effect" else "undo-nothing"
            later = [
                row
                for row in journal.get(kill["key"], [])
                if row.op == repeat and _generation_of(row.owner) > g.index
            ]
            if not later:
                problems.append(f"{where}: no later {repeat} of {kill['key']}")
    return problems


def _check_scenario(scenario: Scenario) -> tuple[list[str], Counter[str]]:
    stats: Counter[str] = Counter()
    with sqlite3.connect(scenario.log_path) as db:
        sagas = {
            saga_id: (status, json.loads(data))
            for saga_id, status, data in db.execute(
                "SELECT saga_id, status, data FROM pysaga_sagas"
            )
        }
        history: dict[str, list[Entry]] = defaultdict(list)
        for saga_id, revision, kind, step, attempt, owner in db.execute(
            "SELECT saga_id, revision, kind, step, attempt, owner FROM pysaga_history "
            "ORDER BY saga_id, revision, idx"
        ):
            history[saga_id].append(Entry(revision, kind, step, attempt, owner))
    with sqlite3.connect(scenario.effects_path) as db:
        present = {key for (key,) in db.execute("SELECT key FROM effects")}
        journal: dict[str, list[JournalRow]] = defaultdict(list)
        for seq, key, op, owner, seen in db.execute(
            "SELECT seq, key, op, owner, seen FROM journal ORDER BY seq"
        ):
            journal[key].append(JournalRow(seq, op, owner, seen))
            stats[f"journal {op}"] += 1

    problems: list[str] = []
    planned = {item["saga_id"]: item["data"] for item in scenario.plan}
    if set(sagas) != set(planned):
        problems.append(
            f"sagas in the log {sorted(set(sagas) ^ set(planned))} differ from the plan"
        )
    known_keys = {f"{saga_id}/{step}" for saga_id in planned for step in STEPS}
    strays = (set(journal) | present) - known_keys
    if strays:
        problems.append(f"effects for keys that belong to no saga step: {sorted(strays)}")
    for saga_id, data in planned.items():
        refuse = data.get("refuse")
        expected = "completed" if refuse is None else "compensated"
        undone = UNDONE_ON_REFUSAL[refuse] if refuse else ()
        status, final_data = sagas.get(saga_id, ("missing", {}))
        stats[status] += 1
        if status != expected:
            problems.append(f"{saga_id} {data}: status {status}, expected {expected}")
        # Every step that succeeded left its result in the data, whatever crashed meanwhile.
        done = STEPS if expected == "completed" else undone
        wanted = {f: None for f in FIELDS.values()}
        wanted.update({FIELDS[step]: f"{saga_id}/{step}" for step in done})
        got = {f: final_data.get(f) for f in wanted}
        if got != wanted:
            problems.append(f"{saga_id}: data {got}, expected {wanted}")
        entries = history.get(saga_id, [])
        stats["claims"] += sum(e.kind == "saga_claimed" for e in entries)
        problems += _check_history(saga_id, entries, expected, undone)
        problems += _check_effects(saga_id, expected, undone, journal, present)
    problems += _check_kill_points(scenario, history, journal)
    return problems, stats


@pytest.mark.slow
def test_sigkill_at_many_points_then_every_saga_finishes_with_effects_once(
    tmp_path: Path,
) -> None:
    """56 self-inflicted SIGKILLs (and up to 8 from outside) over four saga logs, four scenarios
    at a time; then every saga is checked end to end (see the module docstring)."""
    with ThreadPoolExecutor(max_workers=SCENARIOS) as pool:
        futures = [
            pool.submit(_run_scenario, index, tmp_path / f"scenario-{index}")
            for index in range(SCENARIOS)
        ]
        scenarios = [f.result() for f in futures]

    kills: Counter[str] = Counter()
    external = Counter[str]()
    for scenario in scenarios:
        for g in scenario.generations:
            if g.kill is not None:
                assert g.returncode == -signal.SIGKILL
                kills[g.kill["kill"]] += 1
            if g.external:
                external["killed" if g.returncode == -signal.SIGKILL else "finished first"] += 1
    self_kills = sum(kills.values())
    assert self_kills >= MIN_KILLS, f"only {self_kills} kill points: {dict(kills)}"
    # every kind of point was hit, between intent and outcome in particular
    assert set(kills) == set(KILL_BOUNDS) - {"any"}, dict(kills)

    problems: list[str] = []
    totals: Counter[str] = Counter()
    for scenario in scenarios:
        found, stats = _check_scenario(scenario)
        problems += found
        totals += stats
    print(
        f"\n{self_kills} kill points {dict(kills)}; from outside: {dict(external)}; {dict(totals)}"
    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    assert totals["completed"] > 0
    assert totals["compensated"] > 0
    assert totals["journal apply-repeat"] >= kills["after-effect"]
    assert totals["journal undo-nothing"] >= kills["after-undo"]


# -- what the SIGKILL test found, pinned without processes --------------------------------------


class Pair(BaseModel):
    a: str | None = None
    b: str | None = None


class HoldingLog:
    """Delegates to a saga log, holding back the writes that carry a ``step_failed`` entry
    (setting ``held``) until ``release`` is set: a write stays in flight meanwhile."""

    def __init__(self, inner: SagaLog) -> None:
        self.inner = inner
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        if any(e.kind is EntryKind.STEP_FAILED for e in update.entries):
            self.held.set()
            await self.release.wait()
        return await self.inner.update(saga_id, update, revision=revision, owner=owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.anyio
async def test_branch_outcome_staged_while_a_write_is_in_flight_is_written(
    log_factory: LogFactory,
) -> None:
    """Branch ``b`` succeeds while branch ``a``'s retry write is in flight: ``b``'s outcome
    and data still reach the log (a log that lost them would re-run ``b`` after a crash, or
    show a completed saga whose step never succeeded)."""
    saga: Saga[Pair] = Saga("in-flight", Pair)
    log = HoldingLog(log_factory())
    calls: Counter[str] = Counter()

    with saga.parallel("both"):

        @saga.step(retry=Retry(attempts=2, backoff=0, jitter=0))
        async def a(pair: Pair) -> Pair:
            calls["a"] += 1
            if calls["a"] == 1:
                raise ConnectionError("flaky")
            return pair.model_copy(update={"a": "A"})

        @saga.step
        async def b(pair: Pair) -> Pair:
            await log.held.wait()  # a's first attempt failed and its write is in flight
            log.release.set()  # the write goes on only after b's outcome is staged
            return pair.model_copy(update={"b": "B"})

    async with Orchestrator(sagas=[saga], log=log) as orch:
        outcome = await orch.run(saga, Pair())
        record = await orch.get(outcome.saga_id)
        history = await orch.history(outcome.saga_id)
    assert outcome.status is SagaStatus.COMPLETED
    assert record.steps["b"].status is StepStatus.SUCCEEDED
    assert [e.step for e in history if e.kind is EntryKind.STEP_SUCCEEDED] == ["b", "a"]
    assert Pair.model_validate_json(record.data) == Pair(a="A", b="B")


@pytest.mark.anyio
async def test_compensation_sees_what_its_parallel_step_returned(log_factory: LogFactory) -> None:
    """``a`` finishes, then its sibling refuses: ``a``'s compensation gets ``a``'s result."""
    saga: Saga[Pair] = Saga("undo-sees", Pair)
    a_done = anyio.Event()
    seen: list[str | None] = []

    with saga.parallel("both"):

        @saga.step
        async def a(pair: Pair) -> Pair:
            a_done.set()
            return pair.model_copy(update={"a": "reservation-1"})

        @a.compensate
        async def release(pair: Pair, ctx: StepContext) -> None:
            seen.append(pair.a)

        @saga.step
        async def b(pair: Pair) -> Pair:
            await a_done.wait()
            raise BusinessError("sold out")

    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        outcome = await orch.run(saga, Pair())
    assert outcome.status is SagaStatus.COMPENSATED
    assert seen == ["reservation-1"]
