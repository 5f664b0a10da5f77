"""Declaring sagas: every mistake fails at declaration time, with a message that says how to
fix it; correct declarations produce the expected shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from pysaga import Retry, Saga, SagaDefinitionError, StepContext, StepKind
from pysaga.definition import describe_changes

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str = "o-1"
    qty: int = 1


class Other(BaseModel):
    x: int = 0


async def ok_step(order: Order, ctx: StepContext) -> Order:
    return order


class TestSagaConstructor:
    def test_name_must_be_usable(self) -> None:
        """A saga name with spaces is refused and the message shows a good name."""
        with pytest.raises(SagaDefinitionError, match="place-order"):
            Saga("place order", Order)

    def test_data_type_must_be_a_pydantic_model(self) -> None:
        """The data type must be a pydantic model class."""
        with pytest.raises(SagaDefinitionError, match="pydantic model"):
            Saga("s", dict)  # type: ignore[type-var]

    @pytest.mark.parametrize("version", [0, -1, True, "1"])
    def test_version_must_be_positive_int(self, version: object) -> None:
        """Versions are ints >= 1."""
        with pytest.raises(SagaDefinitionError, match="version"):
            Saga("s", Order, version=version)  # type: ignore[arg-type]

    def test_deadline_must_be_positive(self) -> None:
        """A zero deadline is refused."""
        with pytest.raises(SagaDefinitionError, match="deadline"):
            Saga("s", Order, deadline=0)

    def test_definition_error_is_a_type_error(self) -> None:
        """Callers catching TypeError also catch declaration errors."""
        assert issubclass(SagaDefinitionError, TypeError)


class TestStepDeclaration:
    def test_bare_and_called_decorators(self) -> None:
        """@saga.step works bare and with arguments, and keeps declaration order."""
        saga = Saga("s", Order)

        @saga.step
        async def first(order: Order) -> None: ...

        @saga.step(name="second-step", timeout=2.5, retry=Retry(attempts=5))
        async def second(order: Order, ctx: StepContext) -> Order:
            return order

        assert [s.name for s in saga.steps] == ["first", "second-step"]
        assert saga.steps[1].timeout == 2.5
        assert saga.steps[1].retry.attempts == 5
        assert saga.steps[0].wants_context is False
        assert saga.steps[1].wants_context is True

    def test_duplicate_step_name(self) -> None:
        """Two steps with one name are refused, and the fix (name=...) is suggested."""
        saga = Saga("s", Order)
        saga.step(ok_step)
        with pytest.raises(SagaDefinitionError, match="already used.*name="):
            saga.step(ok_step)

    def test_sync_function_refused(self) -> None:
        """A plain def is refused with the hint to add async."""
        saga = Saga("s", Order)

        def sync_step(order: Order) -> None: ...

        with pytest.raises(SagaDefinitionError, match="async def"):
            saga.step(sync_step)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "source",
        [
            "async def f(): ...",
            "async def f(a, b, c): ...",
            "async def f(a, *, key): ...",
            "async def f(*args): ...",
        ],
    )
    def test_wrong_signature_refused(self, source: str) -> None:
        """Steps take (data) or (data, ctx); the message shows the right signature."""
        namespace: dict[str, object] = {}
        exec(source, namespace)
        saga = Saga("s", Order)
        with pytest.raises(SagaDefinitionError, match=r"wrong signature.*data: Order, ctx"):
            saga.step(namespace["f"])  # type: ignore[arg-type]

    def test_wrong_data_annotation_refused(self) -> None:
        """Annotating the data parameter with another model is refused."""
        saga = Saga("s", Order)

        async def step(data: Other) -> None: ...

        with pytest.raises(SagaDefinitionError, match="annotated Other"):
            saga.step(step)

    def test_wrong_return_annotation_refused(self) -> None:
        """Returning another model is refused at declaration."""
        saga = Saga("s", Order)

        async def step(data: Order) -> Other:
            return Other()

        with pytest.raises(SagaDefinitionError, match="return"):
            saga.step(step)

    def test_bad_policy_values(self) -> None:
        """Timeouts and retry objects are checked."""
        saga = Saga("s", Order)
        with pytest.raises(SagaDefinitionError, match="timeout"):
            saga.step(timeout=0)(ok_step)
        with pytest.raises(SagaDefinitionError, match="pysaga.Retry"):
            saga.step(retry=3)(ok_step)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"attempts": 0}, "at least 1"),
            ({"backoff": -1}, "backoff"),
            ({"multiplier": 0.5}, "multiplier"),
            ({"jitter": 2}, "jitter"),
            ({"retry_on": ValueError}, "tuple of exception classes"),
        ],
    )
    def test_retry_validation(self, kwargs: dict[str, object], match: str) -> None:
        """Retry policies are validated when built."""
        with pytest.raises(SagaDefinitionError, match=match):
            Retry(**kwargs)  # type: ignore[arg-type]


class TestKindsAndCompensations:
    def test_kinds_follow_the_pivot(self) -> None:
        """Steps before the pivot are compensatable, after it retriable."""
        saga = Saga("s", Order)

        @saga.step
        async def a(order: Order) -> None: ...

        @saga.step(pivot=True)
        async def b(order: Order) -> None: ...

        @saga.step
        async def c(order: Order) -> None: ...

        assert [s.kind for s in saga.steps] == [
            StepKind.COMPENSATABLE,
            StepKind.PIVOT,
            StepKind.RETRIABLE,
        ]
        assert saga.pivot is b
        assert c.retry.attempts is None  # retried until it succeeds
        assert a.retry.attempts == 3

    def test_second_pivot_refused(self) -> None:
        """A saga has at most one pivot."""
        saga = Saga("s", Order)
        saga.step(pivot=True)(ok_step)

        async def other(order: Order) -> None: ...

        with pytest.raises(SagaDefinitionError, match="at most one pivot"):
            saga.step(pivot=True)(other)

    def test_compensation_after_pivot_refused(self) -> None:
        """A compensatable step after the pivot is refused, with the reason."""
        saga = Saga("s", Order)
        saga.step(pivot=True)(ok_step)

        @saga.step
        async def ship(order: Order) -> None: ...

        with pytest.raises(SagaDefinitionError, match="after the pivot"):

            @ship.compensate
            async def unship(order: Order) -> None: ...

    def test_pivot_cannot_be_compensated(self) -> None:
        """The pivot is the point of no return."""
        saga = Saga("s", Order)
        pivot = saga.step(pivot=True)(ok_step)

        async def undo(order: Order) -> None: ...

        with pytest.raises(SagaDefinitionError, match="point of no return"):
            pivot.compensate(undo)

    def test_compensation_for_unknown_step(self) -> None:
        """Declaring a compensation by an unknown step name lists the known steps."""
        saga = Saga("s", Order)
        saga.step(ok_step)
        with pytest.raises(SagaDefinitionError, match="unknown step 'nope'.*'ok_step'"):
            saga.compensate("nope")

    def test_compensation_by_name_and_twice(self) -> None:
        """saga.compensate(name) registers; a second compensation is refused."""
        saga = Saga("s", Order)
        step = saga.step(ok_step)

        @saga.compensate("ok_step", retry=Retry(attempts=2))
        async def undo(order: Order, ctx: StepContext) -> None: ...

        assert step.compensation is undo
        assert step.compensation_retry.attempts == 2
        with pytest.raises(SagaDefinitionError, match="already has the compensation"):
            step.compensate(undo)

    def test_compensation_signature_checked(self) -> None:
        """Compensations are checked like steps."""
        saga = Saga("s", Order)
        step = saga.step(ok_step)

        def not_async(order: Order) -> None: ...

        with pytest.raises(SagaDefinitionError, match="async def"):
            step.compensate(not_async)  # type: ignore[type-var]

    async def test_step_object_stays_callable(self) -> None:
        """A declared step can be called directly in a unit test."""
        saga = Saga("s", Order)
        step = saga.step(ok_step)
        ctx = StepContext("id", "s", "ok_step", 1, "id/ok_step")
        assert await step(Order(), ctx) == Order()


class TestParallelAndSealing:
    def test_parallel_groups_make_stages(self) -> None:
        """Steps inside parallel() form one stage."""
        saga = Saga("s", Order)
        saga.step(name="a")(ok_step)
        with saga.parallel("both"):
            saga.step(name="b")(ok_step)
            saga.step(name="c")(ok_step)
        saga.step(name="d")(ok_step)
        assert [[s.name for s in stage] for stage in saga.stages] == [
            ["a"],
            ["b", "c"],
            ["d"],
        ]

    def test_parallel_errors(self) -> None:
        """Nesting, empty groups, reused names and a pivot inside a group are refused."""
        saga = Saga("s", Order)
        with pytest.raises(SagaDefinitionError, match="do not nest"), saga.parallel("g1"):
            saga.step(name="x")(ok_step)
            with saga.parallel("g2"):
                pass
        with pytest.raises(SagaDefinitionError, match="declares no step"), saga.parallel("g3"):
            pass
        with pytest.raises(SagaDefinitionError, match="already used"), saga.parallel("g1"):
            pass
        with (
            pytest.raises(SagaDefinitionError, match="pivot cannot run inside"),
            saga.parallel("g4"),
        ):
            saga.step(name="p", pivot=True)(ok_step)

    def test_empty_saga_refused_when_used(self) -> None:
        """An orchestrator refuses a saga without steps."""
        saga = Saga("s", Order)
        with pytest.raises(SagaDefinitionError, match="no steps"):
            saga.seal()

    def test_sealed_saga_refuses_new_steps(self) -> None:
        """Once an orchestrator took the saga, it cannot change."""
        saga = Saga("s", Order)
        saga.step(ok_step)
        saga.seal()

        async def late(order: Order) -> None: ...

        with pytest.raises(SagaDefinitionError, match="already in use"):
            saga.step(late)


class TestMermaid:
    def test_drawing(self) -> None:
        """The drawing shows each step's kind, the groups and the way back."""
        saga = Saga("place-order", Order)

        @saga.step
        async def reserve(order: Order) -> None: ...

        @reserve.compensate
        async def release(order: Order) -> None: ...

        with saga.parallel("notify"):
            saga.step(name="email")(ok_step)
            saga.step(name="sms")(ok_step)

        saga.step(name="charge", pivot=True)(ok_step)
        saga.step(name="ship")(ok_step)
        text = saga.to_mermaid()
        assert text.startswith("flowchart LR\n")
        assert 's0["reserve"]' in text
        assert 'subgraph g1["parallel: notify"]' in text
        assert '{{"charge (pivot)"}}' in text
        assert '("ship (retriable)")' in text
        assert 'c0[/"release"/]' in text
        assert "s3 -. fails .-> c0" in text
        assert "s4 -. fails" not in text  # nothing turns back after the pivot


class Documented(BaseModel):
    """An order (this docstring is documentation only)."""

    order_id: str = Field("o-2", description="the shop's id", title="Order id", min_length=1)
    qty: int = Field(3, gt=0)


class Grown(BaseModel):
    order_id: str = "o-1"
    qty: int = 1
    title: str = ""  # a field called ``title`` is data, not documentation


class Command(BaseModel):
    order_id: str = "o-1"


def shaped(
    *,
    data: type[BaseModel] = Order,
    names: tuple[str, ...] = ("reserve", "charge", "ship"),
    compensated: bool = True,
    pivot: str | None = None,
    group: bool = False,
    service: str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
) -> Saga[BaseModel]:
    """A saga of three steps, the first compensated, with the variations under test."""
    saga: Saga[BaseModel] = Saga("shaped", data, deadline=5 if timeout else None)
    first, second, third = names

    async def step(data: BaseModel, ctx: StepContext) -> None:
        return None

    if service is not None:
        saga.remote(first, service=service, command=Command, compensation=Command)
    else:
        declared = saga.step(name=first, retry=retry, timeout=timeout)(step)
        if compensated:
            declared.compensate(step)
    if group:
        with saga.parallel("both"):
            saga.step(name=second)(step)
            saga.step(name=third)(step)
    else:
        saga.step(name=second, pivot=pivot == second)(step)
        saga.step(name=third)(step)
    return saga


class TestFingerprint:
    def test_stable_and_short(self) -> None:
        """The same declaration has the same fingerprint, sealed or not: 16 hex digits."""
        one, two = shaped(), shaped()
        before = one.fingerprint
        one.seal()
        assert one.fingerprint == before == two.fingerprint
        assert len(before) == 16
        int(before, 16)

    def test_same_in_another_process(self) -> None:
        """The fingerprint does not depend on the process (no hash seeds, no object ids)."""
        code = "from tests.unit.test_definition import shaped; print(shaped().fingerprint)"
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONHASHSEED": "12345"}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == shaped().fingerprint

    @pytest.mark.parametrize(
        "change",
        [
            {"names": ("reserve_stock", "charge", "ship")},  # a rename
            {"names": ("charge", "reserve", "ship")},  # a new order
            {"compensated": False},  # a compensation removed
            {"pivot": "charge"},  # a kind changed
            {"group": True},  # steps grouped to run in parallel
            {"service": "stock"},  # local became remote
            {"data": Grown},  # a field added to the data model
        ],
    )
    def test_what_changes_it(self, change: dict[str, Any]) -> None:
        """Every change a saga in flight depends on gives another fingerprint, and
        describe_changes names it."""
        base, changed = shaped(), shaped(**change)
        assert changed.fingerprint != base.fingerprint
        assert describe_changes(base.outline(), changed.outline())

    def test_what_does_not_change_it(self) -> None:
        """Step code, policies, timeouts, the deadline and the data model's documentation,
        defaults and constraints change nothing a saga in flight depends on."""
        base = shaped().fingerprint
        assert shaped(retry=Retry(attempts=9), timeout=3.0).fingerprint == base
        assert shaped(data=Documented).fingerprint == base

    def test_describe_changes(self) -> None:
        """One line per change, naming the steps."""
        base = shaped().outline()
        assert describe_changes(base, base) == []
        assert describe_changes(
            base, shaped(names=("reserve_stock", "charge", "ship")).outline()
        ) == [
            "step 'reserve' is gone",
            "step 'reserve_stock' is new",
        ]
        assert describe_changes(base, shaped(compensated=False).outline()) == [
            "step 'reserve' lost its compensation"
        ]
        assert describe_changes(base, shaped(pivot="charge").outline()) == [
            "step 'charge' was compensatable, is now pivot",
            "step 'ship' was compensatable, is now retriable",
        ]
        assert describe_changes(base, shaped(group=True).outline()) == [
            "step 'charge' moved from group None to 'both'",
            "step 'ship' moved from group None to 'both'",
        ]
        assert describe_changes(base, shaped(service="stock").outline()) == [
            "step 'reserve' was local, is now sent to service 'stock'"
        ]
        assert describe_changes(base, shaped(data=Grown).outline()) == [
            "the data model changed: field 'title' is new"
        ]

    def test_outline_is_a_copy(self) -> None:
        """The outline a sealed saga hands out can be changed without changing the saga."""
        saga = shaped()
        saga.seal()
        outline = saga.outline()
        outline["steps"].clear()
        assert [step["name"] for step in saga.outline()["steps"]] == ["reserve", "charge", "ship"]


class TestRemoteSteps:
    async def test_a_remote_step_is_a_command_not_a_function(self) -> None:
        """A remote step has no function of its own (its call is a command the orchestrator
        sends), so calling it directly says what to test instead; its compensation is a
        command too, which the step reports."""
        saga: Saga[Order] = Saga("remote-shape", Order)
        reserve = saga.remote("reserve", service="stock", command=Command, compensation=Command)
        notify = saga.remote("notify", service="mail", command=Command)
        assert reserve.action is None
        assert reserve.compensation is None
        assert reserve.has_compensation
        assert not notify.has_compensation
        with pytest.raises(TypeError, match="is remote.*'stock'.*participant's handler"):
            await reserve(Order())

    def test_a_remote_compensation_after_the_pivot_is_refused(self) -> None:
        saga: Saga[Order] = Saga("remote-pivot", Order)

        @saga.step(pivot=True)
        async def pay(order: Order) -> None:
            return None

        with pytest.raises(SagaDefinitionError, match="retriable step cannot be compensated"):
            saga.remote("ship", service="post", command=Command, compensation=Command)
        assert [step.name for step in saga.steps] == ["pay"], "the refused step is not kept"
