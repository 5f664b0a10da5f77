"""The documentation's code runs, and does what the pages say it does.

Every ``docs/snippets/*.py`` file is loaded as a fresh module (so its stand-in services start
empty) and run against a temporary directory or the in-memory saga log. The assertions check
the outcomes the pages describe, and the outputs and diagrams pasted into the pages are
compared with what the code produces today, so that they cannot drift apart.

A page marks a pasted block with an HTML comment on the line before its fence:
``<!-- output: <snippet> -->`` before a program's output, ``<!-- mermaid: <snippet>.<saga> -->``
before a diagram.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pysaga import EntryKind, SagaStatus, StepKind, StepStatus
from pysaga.stores.sqlite import SQLiteSagaLog
from pysaga.tracing import (
    METRIC_COMPENSATION_DURATION,
    METRIC_COMPENSATIONS,
    METRIC_SAGA_DURATION,
    METRIC_SAGAS,
    METRIC_STEP_DURATION,
    METRIC_STEPS,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"

_MARKED_BLOCK = re.compile(
    r"^<!-- (?P<kind>output|mermaid): (?P<key>[\w.]+)[^>]*-->\n```[^\n]*\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import ``docs/snippets/<name>.py`` afresh, as the module ``name``.

    Snippets import each other by plain name (``from first_saga import ...``), as they would
    next to each other in a reader's project; the fresh module is what such imports get.
    """
    monkeypatch.syspath_prepend(str(SNIPPETS))
    spec = importlib.util.spec_from_file_location(name, SNIPPETS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def marked_blocks(kind: str) -> dict[str, str]:
    """Every block marked ``<!-- kind: key -->`` in the docs, by key."""
    found: dict[str, str] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for match in _MARKED_BLOCK.finditer(page.read_text(encoding="utf-8")):
            if match["kind"] == kind:
                assert match["key"] not in found, f"{match['key']} is pasted twice"
                found[match["key"]] = match["body"]
    return found


def pasted_output(snippet: str) -> str:
    return marked_blocks("output")[snippet]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path gives the four slashes of an absolute URL


class TestTheDocsAreCovered:
    """Nothing in the docs escapes these tests."""

    TESTED = frozenset(
        {
            "first_saga",
            "testing_saga",
            "going_distributed",  # run as processes by tests/docs/test_going_distributed.py
            "place_order",
            "step_kinds",
            "recovery",
            "sqlite_log",
            "retries",
            "interceptors",
            "parallel_steps",
            "changing_sagas",
            "tracing_setup",
            "remote_steps",
            "brokers_howto",
            "inspecting",
            "operating",
            "postgres_log",  # run by tests/stores/test_postgres.py (it needs PostgreSQL)
            "outbox",  # run by tests/participants/test_outbox.py (it needs PostgreSQL)
            "choreography",  # run by tests/choreography/test_snippet.py
            "testing_kit",  # run under pytest by tests/testing_kit/test_docs_snippet.py
            "shop_http",  # run against a served shop by tests/examples/test_http.py
            "log_urls",  # run by tests/stores/test_log_urls.py
        }
    )

    def test_every_snippet_has_a_test(self) -> None:
        """Each file in docs/snippets is one this module runs."""
        assert {p.stem for p in SNIPPETS.glob("*.py")} == self.TESTED

    def test_every_diagram_on_the_site_is_checked(self) -> None:
        """Every mermaid block in the docs is marked with the saga it draws."""
        fences = sum(
            page.read_text(encoding="utf-8").count("```mermaid\n") for page in DOCS.rglob("*.md")
        )
        assert fences == len(marked_blocks("mermaid"))

    def test_every_pasted_output_names_a_snippet(self) -> None:
        """Each pasted output belongs to a snippet that exists."""
        assert set(marked_blocks("output")) <= self.TESTED

    @pytest.mark.parametrize("key", sorted(marked_blocks("mermaid")))
    def test_pasted_diagram_is_what_to_mermaid_draws(
        self, key: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A diagram pasted into a page equals the saga's to_mermaid() today."""
        module_name, saga_name = key.split(".")
        if module_name == "ecommerce":  # the example's saga, declared over its services
            drawing = _shop_diagram(saga_name)
        else:
            drawing = getattr(load(module_name, monkeypatch), saga_name).to_mermaid()
        assert marked_blocks("mermaid")[key] == drawing


def _shop_diagram(name: str) -> str:
    """A flow of the e-commerce example, drawn (docs/examples/ecommerce.md)."""
    from examples.ecommerce import flows

    drawing: str = getattr(flows, name).to_mermaid()
    return drawing


@pytest.mark.anyio
class TestFirstSaga:
    """docs/getting-started/first-saga.md"""

    async def test_output_is_the_one_on_the_page(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Running the tutorial prints exactly what the tutorial shows."""
        first_saga = load("first_saga", monkeypatch)
        await first_saga.main(sqlite_url(tmp_path / "trips.db"))
        assert pasted_output("first_saga") == capsys.readouterr().out

    async def test_lisbon_completes_and_tokyo_is_undone(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The affordable trip completes; the declined one leaves no booking behind."""
        first_saga = load("first_saga", monkeypatch)
        lisbon_id, tokyo_id = await first_saga.main(sqlite_url(tmp_path / "trips.db"))

        async with SQLiteSagaLog(tmp_path / "trips.db") as log:  # what the file kept
            lisbon, tokyo = await log.get(lisbon_id), await log.get(tokyo_id)
        assert lisbon is not None
        assert tokyo is not None
        assert lisbon.status == SagaStatus.COMPLETED
        assert tokyo.status == SagaStatus.COMPENSATED
        assert tokyo.failure is not None
        assert tokyo.failure.business
        assert tokyo.failure.step == "take_payment"
        assert {name: state.status for name, state in tokyo.steps.items()} == {
            "book_flight": StepStatus.COMPENSATED,
            "book_hotel": StepStatus.COMPENSATED,
            "take_payment": StepStatus.FAILED,
        }
        assert [f"{lisbon_id}/book_flight"] == list(first_saga.flights.bookings)
        assert [f"{lisbon_id}/book_hotel"] == list(first_saga.hotels.bookings)
        assert [f"{lisbon_id}/take_payment"] == list(first_saga.payments.charges)
        assert first_saga.outbox == ["Ada: FL-1 to Lisbon, HT-1 3 nights, paid PAY-1"]

    def test_step_kinds_are_as_the_tutorial_says(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Flight and hotel are compensatable, payment is the pivot, the e-mail retriable."""
        first_saga = load("first_saga", monkeypatch)
        assert {step.name: step.kind for step in first_saga.book_trip.steps} == {
            "book_flight": StepKind.COMPENSATABLE,
            "book_hotel": StepKind.COMPENSATABLE,
            "take_payment": StepKind.PIVOT,
            "send_itinerary": StepKind.RETRIABLE,
        }


class TestTestingSaga:
    """docs/getting-started/testing.md"""

    def test_its_tests_pass_under_pytest(self) -> None:
        """The page's test file, run by pytest on its own, collects four tests that all pass,
        on each async backend installed (anyio's plugin runs them on every one: asyncio, and
        trio where it is installed, as it is in the dev environment)."""
        from anyio.pytest_plugin import get_available_backends

        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", str(SNIPPETS / "testing_saga.py")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{4 * len(get_available_backends())} passed" in result.stdout


@pytest.mark.anyio
class TestPlaceOrder:
    """The taste on the home page and in the README."""

    async def test_one_order_completes_and_one_is_undone(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The cheap order completes; the declined one gives its book back."""
        place_order = load("place_order", monkeypatch)
        await place_order.main("memory://")

        out = capsys.readouterr().out
        assert (
            out
        ) == "completed compensated step 'take_payment': BusinessError: payment declined\n"
        assert place_order.stock["book"] == 4  # 5, less the one book of the completed order
        assert place_order.confirmed == ["o-1"]
        assert len(place_order.reserved) == 1

    def test_readme_shows_the_snippets(self) -> None:
        """The README's code is the snippets the tests run, character for character."""
        wanted = [
            ("place_order", "saga"),
            ("remote_steps", "saga"),
            ("remote_steps", "stock"),
            ("choreography", "flow"),
        ]
        sections = []
        for snippet, name in wanted:
            source = (SNIPPETS / f"{snippet}.py").read_text(encoding="utf-8")
            pattern = rf"\[start:{name}\]\n(.*?)\n[^\n]*\[end:{name}\]"
            section = re.search(pattern, source, re.DOTALL)
            assert section is not None
            sections.append(section[1] + "\n")
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        blocks = re.findall(r"^```python\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
        assert sections == blocks


class TestStepKinds:
    """docs/concepts/sagas-and-steps.md"""

    def test_compensating_a_retriable_step_is_refused_at_declaration(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The declaration error quoted on the page is the one pysaga raises."""
        step_kinds = load("step_kinds", monkeypatch)
        message = step_kinds.declare_a_mistake()
        page = (DOCS / "concepts" / "sagas-and-steps.md").read_text(encoding="utf-8")
        assert message.startswith("compensation of step 'send_contract' in saga 'grant-loan'")
        assert message in " ".join(page.split())  # quoted on the page, across line breaks
        assert step_kinds.send_contract.compensation is None


@pytest.mark.anyio
class TestRecovery:
    """docs/concepts/saga-log.md"""

    async def test_a_second_orchestrator_finishes_the_saga_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The in-doubt debit runs again with its key, and the money moves once."""
        recovery = load("recovery", monkeypatch)
        outcome = await recovery.main(sqlite_url(tmp_path / "transfers.db"))

        assert pasted_output("recovery") == capsys.readouterr().out
        assert outcome.status == SagaStatus.COMPLETED
        assert outcome.data.debited
        assert outcome.data.notified
        assert recovery.bank.balance == 70
        assert [f"{outcome.saga_id}/debit"] * 2 == recovery.bank.keys_seen

        async with SQLiteSagaLog(tmp_path / "transfers.db") as log:
            history = await log.history(outcome.saga_id)
        debit_starts = [
            (e.attempt, e.owner)
            for e in history
            if e.kind is EntryKind.STEP_STARTED and e.step == "debit"
        ]
        assert debit_starts == [(1, "first"), (2, "second")]
        claims = [e.owner for e in history if e.kind is EntryKind.SAGA_CLAIMED]
        assert claims == ["second"]


@pytest.mark.anyio
class TestSQLiteLog:
    """docs/concepts/sqlite-durability.md"""

    async def test_concurrent_sagas_share_commits(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """200 sagas of two steps write 3 times each, in fewer commits than writes."""
        sqlite_log = load("sqlite_log", monkeypatch)
        writes, commits = await sqlite_log.main(str(tmp_path))

        assert writes == 600
        assert commits < writes // 2
        out = capsys.readouterr().out
        assert f"200 sagas completed: 600 writes in {commits} commits\n" == out
        pasted = pasted_output("sqlite_log")
        assert pasted.startswith("200 sagas completed: 600 writes in ")

    def test_the_urls_on_the_page_open_the_logs_they_say(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The URL and object forms shown on the page configure the log as described."""
        sqlite_log = load("sqlite_log", monkeypatch)
        default, on_disk, by_object = sqlite_log.default, sqlite_log.on_disk, sqlite_log.by_object
        assert (default.log.path, default.log.synchronous) == ("signups.db", "normal")
        assert (on_disk.log.path, on_disk.log.synchronous) == ("/var/lib/shop/sagas.db", "full")
        assert by_object.log is sqlite_log.log
        assert by_object.log.synchronous == "full"


@pytest.mark.anyio
class TestInterceptors:
    """docs/guides/interceptors.md"""

    async def test_every_attempt_goes_through_the_interceptors(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        interceptors = load("interceptors", monkeypatch)
        with caplog.at_level("INFO", logger="shop.audit"):
            await interceptors.main()
        logged = "".join(f"{r.getMessage()}\n" for r in caplog.records if r.name == "shop.audit")
        assert pasted_output("interceptors") == logged
        assert interceptors.slow == []  # nothing here takes a second


@pytest.mark.anyio
class TestRetries:
    """docs/guides/retries-timeouts-deadlines.md"""

    async def test_flaky_stuck_and_late(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Retries get through, a hung step is timed out and undone, a late saga compensates."""
        retries = load("retries", monkeypatch)
        outcomes = await retries.main("memory://")

        assert pasted_output("retries") == capsys.readouterr().out
        flaky, stuck, late = (
            outcomes["flaky courier"],
            outcomes["stuck printer"],
            outcomes["slow warehouse"],
        )
        assert flaky.status == SagaStatus.COMPLETED
        assert retries.courier.calls == 4  # 3 for the flaky parcel (2 dropped), 1 for the next
        assert stuck.status == SagaStatus.COMPENSATED
        assert stuck.failure is not None
        assert (stuck.failure.step, stuck.failure.type) == ("print_label", "TimeoutError")
        assert f"{stuck.saga_id}/book_courier" not in retries.courier.bookings
        assert f"{flaky.saga_id}/book_courier" in retries.courier.bookings
        assert {f"{flaky.saga_id}/print_label"} == retries.printer.printed
        assert late.status == SagaStatus.COMPENSATED
        assert late.failure is not None
        assert (late.failure.step, late.failure.type) == ("pick_from_shelf", "DeadlineExceeded")

    def test_policies_are_as_declared(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The page's policy table matches the defaults the steps got."""
        retries = load("retries", monkeypatch)
        assert retries.book_courier.retry.attempts == 5
        assert (ConnectionError,) == retries.book_courier.retry.retry_on
        assert retries.book_courier.compensation_retry.attempts is None
        assert retries.print_label.compensation_retry.attempts == 10  # the default budget
        assert retries.hand_over.retry.attempts == 3  # the pivot's default
        assert retries.express.deadline == 0.5


@pytest.mark.anyio
class TestParallelSteps:
    """docs/guides/parallel-steps.md"""

    async def test_all_yes_completes_and_one_no_undoes_the_others(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The group runs at once; when the band says no, venue and caterer are cancelled."""
        parallel = load("parallel_steps", monkeypatch)
        party, gala = await parallel.main("memory://")

        assert pasted_output("parallel_steps") == capsys.readouterr().out
        assert parallel.most_in_flight == 3
        assert party.status == SagaStatus.COMPLETED
        assert (
            party.data.venue,
            party.data.catering,
            party.data.music,
            party.data.signed,
        ) == ("venue-1", "caterer-1", "band-1", True)
        assert gala.status == SagaStatus.COMPENSATED
        assert gala.failure is not None
        assert gala.failure.step == "book_band"
        for supplier in (parallel.venue, parallel.caterer, parallel.band):
            assert all(key.startswith(party.saga_id) for key in supplier.bookings)
            assert len(supplier.bookings) == 1


@pytest.mark.anyio
class TestChangingSagas:
    """docs/guides/changing-sagas.md"""

    async def test_held_then_drained_and_migrated(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The renamed step under version 1 holds both orders; with version 1 back beside
        version 2, one finishes on version 1, and the aborted one is undone on version 1 and
        run again on version 2. Nothing ran twice; nothing stayed reserved but the
        completed orders."""
        changing = load("changing_sagas", monkeypatch)
        versions = await changing.main(sqlite_url(tmp_path / "shipping.db"))

        assert pasted_output("changing_sagas") == capsys.readouterr().out
        assert [(v.version, dict(v.counts)) for v in versions] == [
            (1, {SagaStatus.COMPLETED: 1, SagaStatus.COMPENSATED: 1}),
            (2, {SagaStatus.COMPLETED: 1}),
        ]
        assert [v.fingerprint for v in versions] == [
            changing.ship_order.fingerprint,
            changing.ship_order_v2.fingerprint,
        ]
        assert changing.edited.fingerprint == changing.ship_order_v2.fingerprint
        assert sorted(changing.reserved) == ["order-a/reserve", "order-b2/reserve_stock"]
        async with SQLiteSagaLog(tmp_path / "shipping.db") as log:
            kinds = [e.kind for e in await log.history("order-b")]
        assert kinds.count(EntryKind.SAGA_HELD) == 1
        assert kinds.count(EntryKind.STEP_SUCCEEDED) == 1  # reserve, once, by deploy 1


_RUN_TRACING = textwrap.dedent(
    """
    import json, sys
    import anyio
    sys.path.insert(0, sys.argv[1])
    import tracing_setup

    result = anyio.run(tracing_setup.main)
    spans = [
        {
            "name": span.name,
            "parent": span.parent.span_id if span.parent else None,
            "id": span.context.span_id,
            "attributes": dict(span.attributes or {}),
            "error": not span.status.is_ok,
        }
        for span in result["spans"]
    ]
    print("JSON:" + json.dumps({"spans": spans, "metrics": sorted(result["metrics"])}))
    """
)


class TestTracing:
    """docs/guides/tracing-metrics.md (in a subprocess: OpenTelemetry providers are global)."""

    def test_spans_and_metrics_are_the_documented_ones(self, tmp_path: Path) -> None:
        """Spans nest under the saga's span, carry the documented attributes, and the
        metrics are the six documented names; the page shows the program's real output."""
        result = subprocess.run(
            [sys.executable, "-c", _RUN_TRACING, str(SNIPPETS)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        printed, _, data = result.stdout.rpartition("JSON:")
        assert pasted_output("tracing_setup") == printed
        found = json.loads(data)

        spans = found["spans"]
        saga_spans = [s for s in spans if s["name"] == "saga place-order"]
        assert len(saga_spans) == 2
        saga_ids = {s["id"] for s in saga_spans}
        for span in spans:
            if span in saga_spans:
                assert span["parent"] is None
                assert {"saga.id", "saga.name", "saga.version", "saga.status"} <= set(
                    span["attributes"]
                )
            else:
                assert span["parent"] in saga_ids
                assert {
                    "saga.id",
                    "saga.name",
                    "step.name",
                    "step.attempt",
                    "step.outcome",
                } <= set(span["attributes"])
        declined = next(s for s in spans if s["attributes"].get("step.outcome") == "failed")
        assert declined["name"] == "step take_payment"
        assert declined["error"]
        compensated = next(s for s in saga_spans if s["attributes"]["saga.status"] == "compensated")
        assert "BusinessError" in compensated["attributes"]["saga.failure"]
        assert Counter(s["name"] for s in spans) == Counter(
            {
                "saga place-order": 2,
                "step reserve_stock": 2,
                "step take_payment": 2,
                "step confirm_order": 1,
                "compensate reserve_stock": 1,
            }
        )
        assert (
            sorted(
                [
                    METRIC_COMPENSATION_DURATION,
                    METRIC_COMPENSATIONS,
                    METRIC_SAGA_DURATION,
                    METRIC_SAGAS,
                    METRIC_STEP_DURATION,
                    METRIC_STEPS,
                ]
            )
            == found["metrics"]
        )


@pytest.mark.anyio
class TestRemoteSteps:
    """docs/guides/remote-steps.md"""

    async def test_output_is_the_one_on_the_page(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The three orders end as the page shows, and only the first one is charged."""
        remote_steps = load("remote_steps", monkeypatch)
        await remote_steps.main("memory://docs-remote-steps")
        assert pasted_output("remote_steps") == capsys.readouterr().out
        assert remote_steps.levels == {"book": 1}
        assert len(remote_steps.reservations) == 1, "the refused order's stock was released"

    def test_the_steps_are_remote(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Both steps are commands to services; the payment is the pivot."""
        remote_steps = load("remote_steps", monkeypatch)
        steps = remote_steps.place_order.steps
        assert [(s.name, s.remote.service, s.kind) for s in steps] == [
            ("reserve_stock", "stock", StepKind.COMPENSATABLE),
            ("charge_card", "payments", StepKind.PIVOT),
        ]


@pytest.mark.anyio
class TestBrokersHowto:
    """docs/guides/brokers.md"""

    async def test_dead_letters_are_reported_as_the_page_shows(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The good message is handled; the two bad ones reach the dead-letter reader."""
        howto = load("brokers_howto", monkeypatch)
        assert await howto.main() == ["book"]
        printed = capsys.readouterr().out
        assert sorted(pasted_output("brokers_howto").splitlines()) == sorted(printed.splitlines())

    def test_the_brokers_on_the_page_can_be_built(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each construction example makes the broker it says (nothing connects yet)."""
        from pysaga.brokers.kafka import KafkaBroker
        from pysaga.brokers.memory import MemoryBroker
        from pysaga.brokers.rabbitmq import RabbitMQBroker

        howto = load("brokers_howto", monkeypatch)
        assert isinstance(howto.choose(), RabbitMQBroker)
        assert isinstance(howto.rabbitmq(), RabbitMQBroker)
        assert isinstance(howto.kafka(), KafkaBroker)
        faulty = howto.faulty()
        assert isinstance(faulty, MemoryBroker)
        assert [rule.action for rule in faulty.faults._rules] == ["duplicate", "delay", "reorder"]


@pytest.mark.anyio
class TestInspecting:
    """docs/guides/inspecting-sagas.md"""

    async def test_output_is_the_one_on_the_page(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Counts, no stuck saga, and the declined trip's timeline, as the page shows."""
        inspecting = load("inspecting", monkeypatch)
        await inspecting.main(sqlite_url(tmp_path / "trips.db"))
        assert pasted_output("inspecting") == capsys.readouterr().out

    async def test_operator_actions_do_what_the_page_says(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A retried compensation refunds, an abort cuts a hanging step short and
        compensates, a resolve is recorded with who did it; the output is the page's."""
        operating = load("operating", monkeypatch)
        await operating.main(sqlite_url(tmp_path / "shop.db"))
        assert pasted_output("operating") == capsys.readouterr().out
        assert operating.Bank.refunds == ["o-1", "o-2"]
