"""The two saga logs are interchangeable: a hypothesis state machine drives random sequences
of creates, updates (fresh or stale, by the holder or not), claims (taking predecessors'
sagas back or not), renewals, releases and looks at the next lease expiry, by owners with
several incarnations, against the in-memory log and the SQLite log side by side, and every
answer (results, errors, records, histories, listings) must be the same from both."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pysaga import (
    EntryKind,
    Failure,
    LogEntry,
    PysagaError,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepState,
    StepStatus,
)
from pysaga.stores.memory import InMemorySagaLog
from pysaga.stores.sqlite import SQLiteSagaLog

IDS = st.sampled_from(["a", "b", "c", "d"])
OWNERS = st.sampled_from(["o1", "o2", "o3"])
INCARNATIONS = st.sampled_from([None, "i1", "i2"])
NAMES = st.sampled_from([("s", 1), ("s", 2), ("t", 1)])
STATUSES = st.sampled_from(list(SagaStatus))
STEP_STATES = st.dictionaries(
    st.sampled_from(["x", "y", "z"]),
    st.builds(StepState, st.sampled_from(list(StepStatus)), st.integers(0, 3), st.integers(0, 3)),
    max_size=2,
)
FAILURES = st.none() | st.builds(
    Failure,
    st.none() | st.just("x"),
    st.sampled_from(["ValueError", "BusinessError"]),
    st.text("abc ", max_size=5),
    st.booleans(),
    st.none() | st.dictionaries(st.just("k"), st.integers(0, 3), max_size=1),
)
TIMES = st.integers(0, 100).map(float)


def outcome(call: Any) -> Any:
    """The result of a call, or the type and message of the pysaga error it raised."""
    try:
        return ("ok", call())
    except PysagaError as exc:
        return ("error", type(exc).__name__, str(exc))


class LogsAgree(RuleBasedStateMachine):
    """Every operation goes to both logs; their answers must match."""

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.memory = InMemorySagaLog()
        self.sqlite = SQLiteSagaLog(Path(self._tmp.name) / "sagas.db")
        self.revisions: dict[str, int] = {}

    @initialize()
    def open_logs(self) -> None:
        self.portal.call(self.memory.__aenter__)
        self.portal.call(self.sqlite.__aenter__)
        for saga_id, owner in (("a", "o1"), ("b", "o2")):
            self.create(saga_id, ("s", 1), owner, "i1", 50.0, SagaStatus.RUNNING, {}, 0.0)

    def teardown(self) -> None:
        self.portal.call(self.sqlite.aclose)
        self._portal_cm.__exit__(None, None, None)
        self._tmp.cleanup()

    def both(self, method: str, *args: Any, **kwargs: Any) -> Any:
        answers = [
            outcome(lambda log=log: self.portal.call(lambda: getattr(log, method)(*args, **kwargs)))
            for log in (self.memory, self.sqlite)
        ]
        assert answers[0] == answers[1], (method, args, kwargs, answers)
        return answers[0]

    @rule(
        saga_id=IDS,
        kind=NAMES,
        owner=OWNERS,
        incarnation=INCARNATIONS,
        lease=TIMES,
        status=STATUSES,
        steps=STEP_STATES,
        at=TIMES,
    )
    def create(
        self,
        saga_id: str,
        kind: tuple[str, int],
        owner: str,
        incarnation: str | None,
        lease: float,
        status: SagaStatus,
        steps: dict[str, StepState],
        at: float,
    ) -> None:
        record = SagaRecord(
            saga_id,
            kind[0],
            kind[1],
            status,
            f'{{"n": {int(at)}}}',
            steps=steps,
            owner=owner,
            lease_expires_at=lease,
            created_at=at,
            updated_at=at,
            incarnation=incarnation,
        )
        self.both("create", record, [LogEntry(EntryKind.SAGA_STARTED, at=at, owner=owner)])

    @rule(
        saga_id=IDS,
        holder=st.sampled_from([True, True, True, False]),
        owner=OWNERS,
        stale=st.sampled_from([False, False, False, True]),
        status=st.none() | STATUSES,
        steps=STEP_STATES,
        data=st.none() | st.just('{"n": 99}'),
        failure=FAILURES,
        at=TIMES,
    )
    def update(
        self,
        saga_id: str,
        holder: bool,
        owner: str,
        stale: bool,
        status: SagaStatus | None,
        steps: dict[str, StepState],
        data: str | None,
        failure: Failure | None,
        at: float,
    ) -> None:
        current = self.portal.call(self.memory.get, saga_id)
        if holder and current is not None and current.owner is not None:
            owner = current.owner  # mostly as the holder, sometimes as a stranger
        revision = (current.revision if current else 0) - (1 if stale else 0)
        entries = [
            LogEntry(
                EntryKind.STEP_SUCCEEDED, at=at, step="x", attempt=1, owner=owner, failure=failure
            )
        ]
        self.both(
            "update",
            saga_id,
            SagaUpdate(entries, status, steps, data, failure),
            revision=revision,
            owner=owner,
        )

    @rule(
        owner=OWNERS,
        incarnation=INCARNATIONS,
        kinds=st.sets(NAMES),
        lease=TIMES,
        now=TIMES,
        predecessors=st.booleans(),
    )
    def claim(
        self,
        owner: str,
        incarnation: str | None,
        kinds: set[tuple[str, int]],
        lease: float,
        now: float,
        predecessors: bool,
    ) -> None:
        # (a limit above the number of sagas: which ones a limited claim takes first is the
        # log's choice; the contract suite checks the limit itself)
        answers = [
            outcome(
                lambda log=log: self.portal.call(
                    lambda: log.claim(
                        owner,
                        incarnation=incarnation,
                        kinds=kinds,
                        lease=lease,
                        now=now,
                        limit=10,
                        predecessors=predecessors,
                    )
                )
            )
            for log in (self.memory, self.sqlite)
        ]
        assert answers[0][0] == answers[1][0] == "ok"
        taken = [sorted(records, key=lambda r: r.saga_id) for _, records in answers]
        assert taken[0] == taken[1]

    @rule(owner=OWNERS, incarnation=INCARNATIONS, until=TIMES)
    def renew(self, owner: str, incarnation: str | None, until: float) -> None:
        self.both("renew", owner, incarnation=incarnation, until=until)

    @rule(owner=OWNERS, incarnation=INCARNATIONS, ids=st.none() | st.sets(IDS, max_size=2))
    def release(self, owner: str, incarnation: str | None, ids: set[str] | None) -> None:
        self.both("release", owner, ids, incarnation=incarnation)

    @rule(owner=OWNERS, incarnation=INCARNATIONS, kinds=st.sets(NAMES))
    def next_expiry(self, owner: str, incarnation: str | None, kinds: set[tuple[str, int]]) -> None:
        self.both("next_expiry", owner, incarnation=incarnation, kinds=kinds)

    @invariant()
    def same_state(self) -> None:
        for saga_id in ("a", "b", "c", "d"):
            self.both("get", saga_id)
            self.both("history", saga_id)
        self.both("active_kinds")
        self.both("counts")
        self.both("counts", name="s")
        filters: list[dict[str, Any]] = [
            {},
            {"status": SagaStatus.RUNNING},
            {"statuses": (SagaStatus.RUNNING, SagaStatus.COMPENSATING), "updated_before": 50.0},
            {"statuses": (SagaStatus.FAILED,), "created_before": 30.0, "name": "s"},
        ]
        for kwargs in filters:
            listed = [
                sorted(
                    self.portal.call(lambda log=log, kwargs=kwargs: log.list(**kwargs)),
                    key=lambda r: r.saga_id,
                )
                for log in (self.memory, self.sqlite)
            ]
            assert listed[0] == listed[1], kwargs


LogsAgree.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
test_the_logs_agree = LogsAgree.TestCase
