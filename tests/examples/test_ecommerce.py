"""The shop example runs end to end on the embedded default, in both styles, and always
balances its books."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from examples.ecommerce.__main__ import main
from examples.ecommerce.flows import DEADLINE
from examples.ecommerce.messages import OrderLine
from examples.ecommerce.shop import CATALOG, CUSTOMERS, audit, open_shop, outcome

from pysaga import EntryKind, SagaStatus
from pysaga.brokers.memory import MemoryBroker

STYLES = ("choreographed", "orchestrated")
SUMMARY = re.compile(r"^(\d+) orders: (.*)$", re.MULTILINE)
ROW = re.compile(
    r"^(o-\d{4}) .*?\d\.\d\d  (completed|declined|out of stock|cancelled)", re.MULTILINE
)
CANCELLED = {"o-0008": (4, Decimal("36.50")), "o-0016": (4, Decimal("33.50"))}
"""The demo's cancelled orders, and their units and amounts had they been paid."""

ROOT = Path(__file__).resolve().parents[2]


def summary_counts(output: str) -> Counter[str]:
    """The outcome counts in the summary line: ``20 orders: 10 completed, ...``."""
    match = SUMMARY.search(output)
    assert match is not None, output
    counts = Counter[str]()
    for part in match.group(2).split(", "):
        number, kind = part.split(" ", 1)
        counts[kind] = int(number)
    assert counts.total() == int(match.group(1))
    return counts


@pytest.mark.parametrize("style", STYLES)
def test_the_demo_shows_every_outcome_and_balances_its_books(
    style: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Twenty orders: some complete, some run out of stock, some are declined, two are
    cancelled; the books hold, the read model agrees, and a declined order's trace shows the
    stock released."""
    status = main(["--style", style, "--data-dir", str(tmp_path / "shop")])
    out = capsys.readouterr().out

    assert status == 0
    outcomes = dict(ROW.findall(out))
    assert len(outcomes) == 20
    # The two cancellations race their orders' charges: each nearly always wins (the order
    # is "cancelled"), but on a busy machine the charge may come first ("completed", and the
    # table says the cancellation came too late).
    late = [order_id for order_id in CANCELLED if outcomes.pop(order_id) == "completed"]
    others = Counter(outcomes.values())
    assert others == Counter({"completed": 8, "declined": 5, "out of stock": 5}), others
    assert summary_counts(out)["cancelled"] == 2 - len(late)
    assert out.count("cancelled too late: it was paid already") == len(late)
    units = sum(CANCELLED[order_id][0] for order_id in late)
    money = sum((CANCELLED[order_id][1] for order_id in late), Decimal("0.00"))
    assert (
        f"consistency: OK: stock 82 = {60 - units} left + {22 + units} sold; money 1220.00 = "
        f"{Decimal('944.00') - money} in accounts + {Decimal('276.00') + money} revenue; "
        "0 orders pending"
    ) in out.splitlines()
    assert "list_orders(status='pending'): 0 orders" in out
    assert "The trace of o-0005 (declined):" in out
    released = "handle PaymentFailed  [stock]" if style == "choreographed" else "ReleaseStock"
    assert released in out


def random_lines(rng: random.Random) -> list[OrderLine]:
    skus = rng.sample(sorted(CATALOG), k=rng.randint(1, 3))
    return [OrderLine(sku=s, qty=rng.randint(1, 3), unit_price=CATALOG[s][0]) for s in skus]


@pytest.mark.anyio
@pytest.mark.parametrize("style", STYLES)
async def test_the_books_balance_after_a_thousand_random_orders(style: str, tmp_path: Path) -> None:
    """1,000 concurrent orders with random refusals (short stock, short balances): every
    saga ends, and stock and money are conserved, nothing pending, the read model agrees."""
    rng = random.Random(style)
    async with open_shop(tmp_path, style=style) as shop:  # type: ignore[arg-type]
        ids = [
            await shop.app.place_order(rng.choice(sorted(CUSTOMERS)), random_lines(rng))
            for _ in range(1000)
        ]
        sagas = await shop.wait_until_settled(ids, within=120)
        books = await audit(shop, sagas)
        assert books.ok, books
        kinds = Counter(outcome(record) for record in sagas.values())
        assert set(kinds) == {"completed", "declined", "out of stock"}, kinds


@pytest.mark.anyio
@pytest.mark.parametrize("style", STYLES)
async def test_redelivered_messages_have_no_second_effect(style: str, tmp_path: Path) -> None:
    """Every delivery is duplicated: each service's inbox drops the copies, each effect
    happens once and each event is recorded once in the saga log."""
    hub = f"shop-dup-{style}"
    async with MemoryBroker(hub) as broker, open_shop(tmp_path, style=style, hub=hub) as shop:  # type: ignore[arg-type]
        broker.faults.duplicate(times=10_000, copies=2)
        rng = random.Random(5)
        ids = [
            await shop.app.place_order(rng.choice(sorted(CUSTOMERS)), random_lines(rng))
            for _ in range(40)
        ]
        sagas = await shop.wait_until_settled(ids)
        assert any(action == "duplicate" for action, _, _ in broker.faults.fired)
        assert (await audit(shop, sagas)).ok
        for order_id in ids:
            history = await shop.log.history(order_id)
            steps = [(e.kind, e.step) for e in history if e.kind is not EntryKind.SAGA_CLAIMED]
            if style == "choreographed":
                assert len(steps) == len(set(steps)), (order_id, steps)
            ends = [
                e
                for e in history
                if e.kind in (EntryKind.SAGA_COMPLETED, EntryKind.SAGA_COMPENSATED)
            ]
            assert len(ends) == 1


@pytest.mark.anyio
async def test_a_choreographed_saga_is_recorded_as_an_orchestrated_one(tmp_path: Path) -> None:
    """The same orders, placed one after the other (so that no race decides an outcome), end
    with the same record in the saga log whichever style ran them: the same status, the same
    failed step and reason, the same status for each step they share, and a history that
    ends with the same entry, and the same order in the read model, rejected for the same
    reason. The saga log, the inspection API and the demo read both alike."""
    rng = random.Random(11)
    baskets = [(rng.choice(sorted(CUSTOMERS)), random_lines(rng)) for _ in range(16)]
    baskets += [("dave", [OrderLine(sku="book", qty=2, unit_price=CATALOG["book"][0])])]
    seen: dict[str, dict[str, tuple[object, ...]]] = {}
    for style in STYLES:
        seen[style] = {}
        async with open_shop(tmp_path / style, style=style) as shop:  # type: ignore[arg-type]
            for number, (customer, lines) in enumerate(baskets):
                order_id = await shop.app.place_order(customer, lines, order_id=f"o-{number}")
                record = (await shop.wait_until_settled([order_id]))[order_id]
                failure = record.failure
                history = [e.kind for e in await shop.log.history(order_id)]
                seen[style][order_id] = (
                    record.name,
                    record.status,
                    outcome(record),
                    failure and (failure.step, failure.message, failure.business),
                    {
                        step: state.status
                        for step, state in record.steps.items()
                        if step in ("reserve_stock", "charge_payment")
                    },
                    history[-1],
                    shop.app.get_order(order_id),  # the order, and why it was rejected
                )
    choreographed, orchestrated = seen["choreographed"], seen["orchestrated"]
    for order_id, recorded in choreographed.items():
        # the saga's name is its flow's, the rest is the same
        assert recorded[1:] == orchestrated[order_id][1:], order_id
    outcomes = Counter(recorded[2] for recorded in choreographed.values())
    assert set(outcomes) == {"completed", "declined", "out of stock"}, outcomes


def test_the_trace_on_the_tracing_page_is_the_demos(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The shop's trace pasted in the tracing guide is the one the demo prints: the same spans
    at the same depths (siblings may come in another order from run to run)."""
    assert main(["--data-dir", str(tmp_path / "shop"), "--trace"]) == 0
    out = capsys.readouterr().out
    printed = out[out.index("The trace of o-0005 (declined):") :].split("\n\n")[0]
    page = (ROOT / "docs" / "guides" / "tracing-metrics.md").read_text(encoding="utf-8")
    pasted = page.split("<!-- shop-trace -->\n", 1)[1].split("```", 2)[1].split("\n", 1)[1]

    def spans(text: str) -> Counter[tuple[int, str]]:
        found: Counter[tuple[int, str]] = Counter()
        for line in text.splitlines():
            match = re.match(r"^([ │├└─]*)((?:send|process|handle) .+)$", line.strip("\n"))
            if match:
                found[(len(match.group(1).lstrip(" ")) // 3, match.group(2).strip())] += 1
        return found

    assert spans(pasted) == spans(printed)
    assert sum(spans(pasted).values()) > 20


@pytest.mark.anyio
async def test_a_lost_event_ends_in_the_deadline_mark_not_silence(tmp_path: Path) -> None:
    """A choreographed order whose payment event is lost on the way (to every service that
    listens for it) is not forgotten: once its deadline passed, the observer marks its saga
    FAILED, naming the last event it heard, for an operator. The other orders are unharmed."""
    from pysaga import _clock

    hub = "shop-lost-event"
    async with MemoryBroker(hub) as broker, open_shop(tmp_path, hub=hub) as shop:
        customer = sorted(CUSTOMERS)[0]
        line = [OrderLine(sku="book", qty=1, unit_price=CATALOG["book"][0])]
        healthy = await shop.app.place_order(customer, line)
        await shop.wait_until_settled([healthy])
        broker.faults.drop(
            lambda _, envelope: envelope is not None and envelope.type == "PaymentCompleted",
            times=100,
        )
        lost = await shop.app.place_order(customer, line)
        with anyio.fail_after(10):
            while (record := await shop.log.get(lost)) is None or not any(  # noqa: ASYNC110
                e.kind is EntryKind.STEP_SUCCEEDED and e.step == "reserve_stock"
                for e in await shop.log.history(lost)
            ):
                await anyio.sleep(0.05)
        assert record.status is SagaStatus.RUNNING  # silence: no payment event came
        previous = _clock.set_source(lambda: time.time() + DEADLINE + 1)
        try:
            with anyio.fail_after(20):  # the observer looks every few seconds
                while (  # noqa: ASYNC110 - the log is written by the shop's own tasks
                    record := await shop.log.get(lost)
                ) is None or not record.status.is_terminal:
                    await anyio.sleep(0.1)
        finally:
            _clock.set_source(previous)
        assert record.status is SagaStatus.FAILED
        assert record.failure is not None
        assert record.failure.type == "DeadlineExceeded"
        assert "StockReserved" in record.failure.message
        ended = await shop.log.get(healthy)
        assert ended is not None
        assert ended.status is SagaStatus.COMPLETED
