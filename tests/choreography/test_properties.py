"""Property: whatever the services refuse and however often the broker repeats an event,
every choreographed purchase ends as its refusals say, each effect happens once, the stock
comes back for every order that did not complete, and the log shows each event once."""

from __future__ import annotations

import uuid

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysaga import ChoreographyObserver, SagaStatus
from pysaga.brokers.memory import MemoryBroker
from pysaga.stores.memory import InMemorySagaLog

from .purchase import Purchase, order, wait_history, wait_until_ended

# (no stock?, card declined?) per order
orders = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6)
repeats = st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=6)


def run(refusals: list[tuple[bool, bool]], copies: list[int]) -> None:
    async def main() -> None:
        purchase = Purchase(uuid.uuid4().hex[:8])
        log = InMemorySagaLog()
        async with MemoryBroker() as broker:
            for extra in copies:
                if extra:
                    broker.faults.duplicate(None, times=1, copies=extra)
            orders, stock, payments = purchase.services(broker)
            async with (
                ChoreographyObserver(purchase.flow, log=log, broker=broker),
                orders,
                stock,
                payments,
            ):
                ids = []
                for n, (no_stock, declined) in enumerate(refusals):
                    event = order(n, qty=5_000 if no_stock else 2, amount=9_999 if declined else 10)
                    ids.append(await purchase.flow.start(broker, event))
                for saga_id, (no_stock, declined) in zip(ids, refusals, strict=True):
                    record = await wait_until_ended(log, saga_id)
                    expected = 4 if no_stock or not declined else 6
                    history = await wait_history(log, saga_id, expected)
                    assert record.status is (
                        SagaStatus.COMPLETED
                        if not no_stock and not declined
                        else SagaStatus.COMPENSATED
                    )
                    pairs = [(e.kind, e.step) for e in history]
                    assert len(pairs) == len(set(pairs)) == expected, pairs
        ledger = purchase.ledger
        assert ledger.repeated() == []
        completed = sum(1 for no_stock, declined in refusals if not no_stock and not declined)
        assert ledger.stock == 1_000 - 2 * completed

    anyio.run(main)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(orders, repeats)
def test_every_purchase_ends_as_its_refusals_say(
    refusals: list[tuple[bool, bool]], copies: list[int]
) -> None:
    run(refusals, copies)
